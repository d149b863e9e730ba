//! `kiln build` and `kiln builder prune|du`: the CLI side of the builder (flags, progress
//! rendering, errors pointing at the Dockerfile).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use kiln_builder::build::{
    BuildError, BuildNetwork, BuildOptions, ImageSource, NamedContext, Sandbox, build,
};
use kiln_builder::context::{self, Context};
use kiln_builder::export::{self, Destination, Output};
use kiln_builder::ignore;
use kiln_cache::buildcache::PruneOptions;
use kiln_cache::layer::Compression;
use kiln_cache::reference::Reference;
use kiln_registry::PullPolicy;

use super::{Global, open_store};
use crate::progress::{Display, Mode};
use crate::{Exit, INIT_MARKER, human, output};

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Name and optionally a tag (NAME[:TAG]); repeatable
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile; `-` for stdin). May be outside the context
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// A build argument, NAME=VALUE or NAME to take it from the environment (repeatable)
    #[arg(long = "build-arg", value_name = "NAME[=VALUE]")]
    build_args: Vec<String>,
    /// The stage to build (default: the last one)
    #[arg(long)]
    target: Option<String>,
    /// Set metadata on the image (KEY=VALUE)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Do not use the build cache
    #[arg(long = "no-cache")]
    no_cache: bool,
    /// Do not use the cache for these stages (name or index; repeatable)
    #[arg(long = "no-cache-filter", value_name = "STAGE", value_delimiter = ',')]
    no_cache_filter: Vec<String>,
    /// Pull every image the build names, even when the store has it (default: pull only
    /// missing images)
    #[arg(long)]
    pull: bool,
    /// Print only the image ID on success
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Write the image ID to this file
    #[arg(long = "iidfile", value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// Write build result metadata (JSON) to this file
    #[arg(long = "metadata-file", value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    /// Progress output: auto, plain, tty, rawjson or quiet
    #[arg(long, default_value = "auto")]
    progress: String,
    /// Network of RUN steps: default (the host's, kiln has no bridge yet), host or none
    #[arg(long, default_value = "default")]
    network: String,
    /// A secret for RUN --mount=type=secret: id=ID[,src=FILE|,env=VARIABLE] (repeatable)
    #[arg(long = "secret", value_name = "id=ID,src=FILE")]
    secrets: Vec<String>,
    /// The target platform: only this machine's (e.g. linux/amd64); kiln runs no emulator
    #[arg(long, value_name = "PLATFORM", value_delimiter = ',')]
    platform: Vec<String>,
    /// An SSH agent socket for RUN --mount=type=ssh: default ($SSH_AUTH_SOCK) or ID=SOCKET
    /// (repeatable)
    #[arg(long = "ssh", value_name = "default|ID=SOCKET")]
    ssh: Vec<String>,
    /// Only check the Dockerfile (lint warnings, as `kiln check`), without building
    #[arg(long)]
    check: bool,
    /// Say why each step that ran could not come from the cache (the input that changed)
    #[arg(long = "explain-cache")]
    explain_cache: bool,
    /// Accepted for compatibility: kiln never leaves intermediate containers
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    rm: Option<String>,
    /// Accepted for compatibility: kiln never leaves intermediate containers
    #[arg(long = "force-rm")]
    force_rm: bool,
    /// Output destination: type=image|local|tar|oci|docker[,dest=PATH|-][,name=NAME], or DIR
    /// (local) or - (tar to stdout)
    #[arg(short = 'o', long = "output", value_name = "OUTPUT")]
    output: Option<String>,
    /// Additional build contexts: NAME=DIR, NAME=docker-image://REF or NAME=oci-layout://DIR
    /// (repeatable)
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    build_contexts: Vec<String>,
    /// Export the build cache: type=registry,ref=REF or type=local,dest=DIR, with
    /// [,mode=min|max][,cache-mounts=true][,ignore-error=true] (repeatable)
    #[arg(long = "cache-to", value_name = "SPEC")]
    cache_to: Vec<String>,
    /// Import a build cache first: type=registry,ref=REF, type=local,src=DIR or REF (repeatable)
    #[arg(long = "cache-from", value_name = "SPEC")]
    cache_from: Vec<String>,
    /// The build context: a directory, a tar archive (plain or compressed), or `-` to read a
    /// context archive or a Dockerfile (no context) from stdin
    context: String,
}

/// `kiln build`'s [`ImageSource`]: images from the registry, as `--pull` says (every image
/// the build names once per build with `--pull`, else only missing ones).
#[derive(Debug)]
struct Pulls {
    policy: PullPolicy,
    client: kiln_registry::ClientOptions,
    /// Names already brought in during this build.
    done: Mutex<BTreeSet<String>>,
}

impl ImageSource for Pulls {
    fn ensure(
        &self,
        store: &mut kiln_cache::store::Store,
        name: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if self.done.lock().is_ok_and(|done| done.contains(name)) {
            return Ok(());
        }
        kiln_registry::ensure_image(
            store,
            name,
            self.policy,
            &self.client,
            &kiln_registry::PullOptions::default(),
            &kiln_registry::Silent,
        )?;
        if let Ok(mut done) = self.done.lock() {
            done.insert(name.to_string());
        }
        Ok(())
    }
}

fn network(text: &str) -> Result<BuildNetwork, String> {
    match text {
        "default" | "host" => Ok(BuildNetwork::Host),
        "none" => Ok(BuildNetwork::None),
        other => Err(format!(
            "network mode {other:?} not supported by kiln build: use default, host or none"
        )),
    }
}

pub fn run(global: &Global, args: BuildArgs) -> Exit {
    let network = match network(&args.network) {
        Ok(network) => network,
        Err(message) => return output::error(message),
    };
    let mode = match Mode::parse(&args.progress, args.quiet) {
        Ok(mode) => mode,
        Err(message) => return output::error(message),
    };
    let quiet = mode == Mode::Quiet;
    if args.check {
        let context = PathBuf::from(&args.context);
        let file = match (&args.file, args.context.as_str()) {
            (Some(file), _) => Some(file.clone()),
            (None, "-") => Some(PathBuf::from("-")),
            (None, _) => None,
        };
        return super::check::run(super::check::Args::for_build(
            file,
            args.build_args.clone(),
            context,
        ));
    }
    for platform in &args.platform {
        if !kiln_builder::build::is_host_platform(platform) {
            return output::error(format!(
                "platform {platform:?} is not supported: kiln builds for this machine's platform ({}) only, with no emulation",
                kiln_registry::Platform::host()
            ));
        }
    }
    let ssh = match ssh_sockets(&args.ssh) {
        Ok(ssh) => ssh,
        Err(message) => return output::error(message),
    };
    let export = match args.output.as_deref().map(Output::parse).transpose() {
        Ok(export) => export.unwrap_or(Output::Image),
        Err(error) => return output::error_of(&error),
    };
    // The context and the Dockerfile.
    // A context archive (on stdin or as a file) is unpacked into a temporary directory.
    let unpacked = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(error) => return output::error(format!("creating a context directory: {error}")),
    };
    let mut stdin_text = None;
    let context_dir = if args.context == "-" {
        let mut stdin = std::io::stdin().lock();
        let mut magic = Vec::with_capacity(512);
        if let Err(error) = (&mut stdin).take(512).read_to_end(&mut magic) {
            return output::error(format!("reading stdin: {error}"));
        }
        if context::is_archive_start(&magic) {
            if let Err(error) =
                context::unpack_archive(magic.as_slice().chain(stdin), unpacked.path())
            {
                return output::error_of(&error);
            }
            Some(unpacked.path().to_path_buf())
        } else {
            let mut text = String::from_utf8_lossy(&magic).to_string();
            if let Err(error) = stdin.read_to_string(&mut text) {
                return output::error(format!("reading the Dockerfile from stdin: {error}"));
            }
            stdin_text = Some(text);
            None
        }
    } else {
        let dir = PathBuf::from(&args.context);
        if args.context.contains("://") || args.context.starts_with("git@") {
            return output::error(format!(
                "context {}: URL and git contexts are not supported yet; clone or download it and give the directory",
                args.context
            ));
        }
        if dir.is_file() {
            let unpack = std::fs::File::open(&dir)
                .map_err(|error| format!("{}: {error}", args.context))
                .and_then(|file| {
                    context::unpack_archive(file, unpacked.path()).map_err(|error| {
                        format!("unable to prepare context: {}: {error}", args.context)
                    })
                });
            if let Err(message) = unpack {
                return output::error(message);
            }
            Some(unpacked.path().to_path_buf())
        } else if dir.is_dir() {
            Some(dir)
        } else {
            return output::error(format!(
                "unable to prepare context: path {:?} not found or not a directory",
                args.context
            ));
        }
    };
    let from_archive = context_dir.as_deref() == Some(unpacked.path());
    let dockerfile_path = match (&context_dir, &args.file) {
        (_, Some(file)) if file == Path::new("-") => None,
        // In an archive, -f names a path inside it.
        (Some(dir), Some(file)) if from_archive => Some(dir.join(file)),
        (_, Some(file)) => Some(file.clone()),
        (Some(dir), None) => Some(dir.join("Dockerfile")),
        (None, None) => None,
    };
    let (name, text) = match (stdin_text, &dockerfile_path) {
        (Some(text), _) => ("Dockerfile".to_string(), text),
        (None, Some(path)) => match super::read_dockerfile(path) {
            Ok(read) => read,
            Err(message) => return output::error(message),
        },
        (None, None) => {
            let mut text = String::new();
            if let Err(error) = std::io::stdin().read_to_string(&mut text) {
                return output::error(format!("reading the Dockerfile from stdin: {error}"));
            }
            ("Dockerfile".to_string(), text)
        }
    };
    let empty_context;
    let context = match &context_dir {
        Some(dir) => {
            let beside = dockerfile_path.as_deref().unwrap_or(Path::new(""));
            let matcher = match ignore::read_for(beside, dir) {
                Ok(matcher) => matcher,
                Err(error) => return output::error_of(&error),
            };
            Context::new(dir, matcher)
        }
        None => {
            empty_context = match tempfile::tempdir() {
                Ok(dir) => dir,
                Err(error) => return output::error(format!("creating an empty context: {error}")),
            };
            Context::new(empty_context.path(), None)
        }
    };
    let mut build_args = BTreeMap::new();
    for arg in &args.build_args {
        if let Some((name, value)) = super::name_value(arg) {
            build_args.insert(name, value);
        }
    }
    let mut tags = Vec::new();
    for tag in &args.tags {
        match Reference::parse(tag) {
            Ok(reference) if reference.digest().is_none() => tags.push(reference),
            Ok(_) => {
                return output::error(format!("invalid tag {tag:?}: a tag cannot carry a digest"));
            }
            Err(error) => return output::error(format!("invalid tag {tag:?}: {error}")),
        }
    }
    let mut labels = BTreeMap::new();
    for label in &args.labels {
        let (key, value) = label
            .split_once('=')
            .map_or((label.clone(), String::new()), |(k, v)| {
                (k.into(), v.into())
            });
        labels.insert(key, value);
    }
    let source_date_epoch = build_args
        .get("SOURCE_DATE_EPOCH")
        .cloned()
        .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok())
        .filter(|value| !value.is_empty());
    let source_date_epoch = match source_date_epoch.map(|value| value.parse::<i64>()) {
        None => None,
        Some(Ok(epoch)) => Some(epoch),
        Some(Err(_)) => {
            return output::error("invalid SOURCE_DATE_EPOCH: expected seconds since the epoch");
        }
    };
    let mut secrets = BTreeMap::new();
    for secret in &args.secrets {
        match read_secret(secret) {
            Ok((id, value)) => {
                secrets.insert(id, value);
            }
            Err(message) => return output::error(message),
        }
    }
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(error) => {
            return output::error(format!(
                "cannot find the kiln binary for RUN steps: {error}"
            ));
        }
    };
    let mut store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let mut named_contexts = BTreeMap::new();
    for spec in &args.build_contexts {
        match named_context(&mut store, spec) {
            Ok((name, named)) => {
                named_contexts.insert(name, named);
            }
            Err(message) => return output::error(message),
        }
    }
    let build_cache = match super::registry::BuildCache::prepare(
        global,
        &mut store,
        &args.cache_from,
        &args.cache_to,
        quiet,
    ) {
        Ok(build_cache) => build_cache,
        Err(exit) => return exit,
    };
    let options = BuildOptions {
        dockerfile_name: name.clone(),
        dockerfile: text.clone(),
        context,
        build_args,
        target: args.target.clone(),
        tags: if export.tags_in_store() {
            tags.clone()
        } else {
            Vec::new()
        },
        labels,
        no_cache: args.no_cache,
        no_cache_filter: args.no_cache_filter.clone(),
        network,
        source_date_epoch,
        sandbox: Sandbox {
            program,
            args: vec![INIT_MARKER.to_string()],
        },
        // Layers stay uncompressed in the store, as BuildKit keeps snapshots and Buildah diffs:
        // gzip of a 200 MB layer costs seconds on every build and nothing local reads it
        // (`save` writes layers uncompressed, as `docker save` does).
        compression: Compression::None,
        secrets,
        ssh,
        named_contexts,
        images: Some(Box::new(Pulls {
            policy: if args.pull {
                PullPolicy::Always
            } else {
                PullPolicy::Missing
            },
            client: super::registry::client_options(global),
            done: Mutex::new(BTreeSet::new()),
        })),
    };
    let mut progress = Display::start(mode, args.explain_cache);
    let result = build(&mut store, &options, &progress);
    let built = match result {
        Ok(built) => built,
        Err(error) => {
            progress.finish(Some(&error.to_string()));
            return report(&name, &text, error);
        }
    };
    if let Err(error) = export::export(
        &store,
        &built.image,
        &export,
        &tags,
        &mut std::io::stdout().lock(),
    ) {
        progress.finish(Some(&error.to_string()));
        return output::error_of(&error);
    }
    if !quiet {
        let kind = match &export {
            Output::Image | Output::Docker { .. } => "image",
            Output::Local(_) => "client directory",
            Output::Tar(_) => "client tarball",
            Output::Oci { .. } => "oci image format",
        };
        let mut lines = vec![format!("writing image {} done", built.image)];
        let named = if export.tags_in_store() {
            tags.as_slice()
        } else {
            &[]
        };
        for tag in named {
            lines.push(format!("naming to {} done", tag.clone().with_default_tag()));
        }
        progress.exported(kind, &lines);
    } else if !matches!(
        export,
        Output::Tar(Destination::Stdout)
            | Output::Oci {
                destination: Destination::Stdout,
                ..
            }
            | Output::Docker {
                destination: Some(Destination::Stdout),
                ..
            }
    ) {
        // The ID on stdout, unless stdout carries the exported archive.
        output::out(&format!("{}\n", built.image));
    }
    progress.finish(None);
    if let Err(exit) = build_cache.finish(&store, &built.image) {
        return exit;
    }
    if let Some(path) = &args.iidfile
        && let Err(error) = std::fs::write(path, built.image.to_string())
    {
        return output::error(format!("writing {}: {error}", path.display()));
    }
    if let Some(path) = &args.metadata_file {
        let mut metadata = serde_json::json!({
            "containerimage.config.digest": built.image.to_string(),
            "containerimage.digest": built.manifest.to_string(),
            "kiln.steps.executed": built.executed,
            "kiln.steps.cached": built.cached,
        });
        if !tags.is_empty() {
            metadata["image.name"] = serde_json::Value::String(
                tags.iter()
                    .map(|tag| tag.clone().with_default_tag().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        let text = serde_json::to_string_pretty(&metadata).unwrap_or_default();
        if let Err(error) = std::fs::write(path, text + "\n") {
            return output::error(format!("writing {}: {error}", path.display()));
        }
    }
    Exit::Success
}

/// `--build-context NAME=VALUE`: a directory, `docker-image://REF` (an image of the store) or
/// `oci-layout://DIR[:TAG]` (loaded into the store, then used as an image).
fn named_context(
    store: &mut kiln_cache::store::Store,
    spec: &str,
) -> Result<(String, NamedContext), String> {
    let (name, value) = spec
        .split_once('=')
        .filter(|(name, value)| !name.is_empty() && !value.is_empty())
        .ok_or_else(|| format!("invalid --build-context {spec:?}: expected NAME=VALUE"))?;
    let name = name.to_ascii_lowercase();
    if let Some(reference) = value.strip_prefix("docker-image://") {
        return Ok((name, NamedContext::Image(reference.to_string())));
    }
    if let Some(layout) = value.strip_prefix("oci-layout://") {
        // DIR, DIR:TAG or DIR@DIGEST: the tag or digest picks an image of the layout.
        let (directory, wanted) = match layout.rsplit_once(['@', ':']) {
            Some((directory, wanted)) if !wanted.contains('/') => (directory, Some(wanted)),
            _ => (layout, None),
        };
        let loaded = kiln_cache::archive::load_layout(
            store,
            Path::new(directory),
            &kiln_cache::archive::LoadOptions::default(),
        )
        .map_err(|error| format!("--build-context {name}: loading {directory}: {error}"))?;
        let chosen = loaded
            .iter()
            .find(|image| {
                wanted.is_none_or(|wanted| {
                    image.id.to_string().ends_with(wanted)
                        || image.tags.iter().any(|tag| tag.tag() == Some(wanted))
                })
            })
            .or(loaded.first())
            .ok_or_else(|| format!("--build-context {name}: {directory} holds no image"))?;
        return Ok((name, NamedContext::Image(chosen.id.to_string())));
    }
    if value.contains("://") || value.starts_with("git@") {
        return Err(format!(
            "--build-context {name}: URL and git contexts are not supported yet; clone or download it and give the directory"
        ));
    }
    let directory = PathBuf::from(value);
    if !directory.is_dir() {
        return Err(format!(
            "--build-context {name}: {value:?} is not a directory"
        ));
    }
    let matcher = ignore::read_for(Path::new(""), &directory)
        .map_err(|error| format!("--build-context {name}: {error}"))?;
    Ok((
        name,
        NamedContext::Directory(Context::new(directory, matcher)),
    ))
}

/// Renders a build error once, pointing at the Dockerfile where it can.
fn report(name: &str, text: &str, error: BuildError) -> Exit {
    match error {
        BuildError::Parse(error) => {
            output::err(&error.render(name, text));
            Exit::Failure
        }
        BuildError::At {
            span,
            message,
            hint,
            ..
        } => {
            output::err(&kiln_parser::error::render(
                name,
                text,
                span,
                &message,
                hint.as_deref(),
            ));
            Exit::Failure
        }
        BuildError::UnknownTarget(_) | BuildError::NoStages => {
            output::err(&format!("kiln: {error}\n"));
            Exit::Failure
        }
        other @ (BuildError::Store(_)
        | BuildError::Blob(_)
        | BuildError::Json(_)
        | BuildError::Panicked) => output::error_of(&other),
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum BuilderCommand {
    /// Remove build cache
    Prune(PruneArgs),
    /// Show the build cache's records and disk usage
    Du(DuArgs),
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Remove all build cache (kiln's cache is only its own: same as without -a)
    #[arg(short = 'a', long)]
    all: bool,
    /// Do not prompt for confirmation (kiln never prompts)
    #[arg(short = 'f', long)]
    force: bool,
    /// Keep at most this much build cache (e.g. 2gb)
    #[arg(long = "keep-storage", value_name = "SIZE")]
    keep_storage: Option<String>,
    /// Filters: until=DURATION (e.g. 24h) removes records unused for that long
    #[arg(long = "filter", value_name = "FILTER")]
    filters: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct DuArgs {
    /// Show every record
    #[arg(long)]
    verbose: bool,
}

pub fn builder(global: &Global, command: BuilderCommand) -> Exit {
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    match command {
        BuilderCommand::Prune(args) => {
            let mut options = PruneOptions::default();
            if let Some(size) = &args.keep_storage {
                match kiln_cache::units::ram_in_bytes(size) {
                    Some(bytes) => options.keep_storage = Some(bytes),
                    None => return output::error(format!("invalid --keep-storage {size:?}")),
                }
            }
            for filter in &args.filters {
                match filter.split_once('=') {
                    Some(("until", value)) => match parse_duration(value) {
                        Some(duration) => options.unused_for = Some(duration.as_secs()),
                        None => return output::error(format!("invalid until filter {value:?}")),
                    },
                    _ => {
                        return output::error(format!(
                            "invalid filter {filter:?}: kiln supports until=DURATION"
                        ));
                    }
                }
            }
            let _ = (args.all, args.force);
            match store.prune_build_cache(&options) {
                Ok((removed, freed)) => {
                    output::out(&format!(
                        "Deleted {removed} build cache records\nTotal:\t{}\n",
                        human::size(freed)
                    ));
                    Exit::Success
                }
                Err(error) => output::error_of(&error),
            }
        }
        BuilderCommand::Du(args) => {
            let records = match store.build_cache_records() {
                Ok(records) => records,
                Err(error) => return output::error_of(&error),
            };
            let mut text = String::new();
            if args.verbose {
                for record in &records {
                    text.push_str(&format!(
                        "ID:\t{}\nDescription:\t{}\nSize:\t{}\n\n",
                        &record.key.hex()[..25],
                        record.description,
                        human::size(record.size)
                    ));
                }
            }
            let total: u64 = records.iter().map(|record| record.size).sum();
            text.push_str(&format!(
                "Records:\t{}\nTotal:\t{}\n",
                records.len(),
                human::size(total)
            ));
            output::out(&text);
            Exit::Success
        }
    }
}

/// Go durations as `--filter until=` takes them: `90s`, `30m`, `24h`, `1h30m`.
fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut number = String::new();
    let mut any = false;
    for c in text.chars() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let value: f64 = number.parse().ok()?;
        number.clear();
        total += value
            * match c {
                's' => 1.0,
                'm' => 60.0,
                'h' => 3600.0,
                'd' => 86400.0,
                _ => return None,
            };
        any = true;
    }
    (number.is_empty() && any).then(|| Duration::from_secs_f64(total))
}

/// `--ssh default|ID[=SOCKET]` values (repeatable, or comma-separated): agent sockets by id.
/// A bare id (`default` above all) means `$SSH_AUTH_SOCK`. kiln forwards sockets only, not
/// key files (BuildKit's `ID=KEYFILE`).
fn ssh_sockets(specs: &[String]) -> Result<BTreeMap<String, PathBuf>, String> {
    use std::os::unix::fs::FileTypeExt as _;
    let mut sockets = BTreeMap::new();
    for spec in specs.iter().flat_map(|spec| spec.split(',')) {
        let (id, path) = match spec.split_once('=') {
            Some((id, path)) => (id, PathBuf::from(path)),
            None => match std::env::var_os("SSH_AUTH_SOCK").filter(|value| !value.is_empty()) {
                Some(path) => (spec, PathBuf::from(path)),
                None => {
                    return Err(format!(
                        "--ssh {spec}: SSH_AUTH_SOCK is not set (start an agent or give {spec}=SOCKET)"
                    ));
                }
            },
        };
        if id.is_empty() {
            return Err(format!(
                "invalid --ssh {spec:?}: expected default or ID=SOCKET"
            ));
        }
        let metadata = std::fs::metadata(&path)
            .map_err(|error| format!("--ssh {id}: {}: {error}", path.display()))?;
        if !metadata.file_type().is_socket() {
            return Err(format!(
                "--ssh {id}: {} is not a socket (kiln forwards SSH agent sockets, not key files)",
                path.display()
            ));
        }
        let path = std::path::absolute(&path)
            .map_err(|error| format!("--ssh {id}: {}: {error}", path.display()))?;
        sockets.insert(id.to_string(), path);
    }
    Ok(sockets)
}

/// `--secret id=ID[,src=FILE|,env=VAR][,type=file|env]`, as docker buildx takes it (a bare
/// `id` reads the environment variable of that name, then the file of that name).
fn read_secret(spec: &str) -> Result<(String, Vec<u8>), String> {
    let mut id = None;
    let mut source = None;
    let mut env = None;
    let mut kind = None;
    for field in spec.split(',') {
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| format!("invalid --secret {spec:?}: expected KEY=VALUE fields"))?;
        match key {
            "id" => id = Some(value.to_string()),
            "src" | "source" => source = Some(value.to_string()),
            "env" => env = Some(value.to_string()),
            "type" => kind = Some(value.to_string()),
            other => {
                return Err(format!(
                    "invalid --secret {spec:?}: unknown field {other:?}"
                ));
            }
        }
    }
    let id = id
        .or_else(|| source.clone())
        .or_else(|| env.clone())
        .ok_or_else(|| format!("invalid --secret {spec:?}: an id is needed"))?;
    if kind.as_deref() == Some("env") && env.is_none() {
        env = source.take().or_else(|| Some(id.clone()));
    }
    if let Some(name) = env {
        return std::env::var(&name)
            .map(String::into_bytes)
            .map(|value| (id.clone(), value))
            .map_err(|_| format!("secret {id}: environment variable {name} is not set"));
    }
    let path = source.unwrap_or_else(|| id.clone());
    std::fs::read(&path)
        .map(|value| (id.clone(), value))
        .map_err(|error| format!("secret {id}: reading {path}: {error}"))
}
