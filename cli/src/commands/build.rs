//! `kiln build` and `kiln builder prune|du`: the CLI side of the builder (flags, progress
//! rendering, errors pointing at the Dockerfile).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln_builder::build::{
    BuildError, BuildNetwork, BuildOptions, Event, NamedContext, Progress, Sandbox, build,
};
use kiln_builder::context::{self, Context};
use kiln_builder::export::{self, Destination, Output};
use kiln_builder::ignore;
use kiln_cache::buildcache::PruneOptions;
use kiln_cache::layer::Compression;
use kiln_cache::reference::Reference;

use super::{Global, open_store};
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
    /// Accepted for compatibility: base images come from the local store until registries land
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
    /// The build context: a directory, a tar archive (plain or compressed), or `-` to read a
    /// context archive or a Dockerfile (no context) from stdin
    context: String,
}

/// Plain progress lines, as BuildKit's `--progress plain` prints them (to stderr).
struct PlainProgress {
    start: Instant,
    explain: bool,
    quiet: bool,
    /// Step number → when it started.
    started: Mutex<BTreeMap<usize, Instant>>,
    warnings: Mutex<Vec<String>>,
}

impl Progress for PlainProgress {
    fn event(&self, event: Event) {
        if self.quiet {
            if let Event::Warning { message } = event
                && let Ok(mut warnings) = self.warnings.lock()
            {
                warnings.push(message);
            }
            return;
        }
        let text = match event {
            Event::Started { step, name } => {
                if let Ok(mut started) = self.started.lock() {
                    started.insert(step, Instant::now());
                }
                format!("#{step} {name}\n")
            }
            Event::Cached { step } => format!("#{step} CACHED\n"),
            Event::Missed { step, reason } => {
                if !self.explain {
                    return;
                }
                format!("#{step} cache miss: {reason}\n")
            }
            Event::Output { step, line } => {
                let since = self
                    .started
                    .lock()
                    .ok()
                    .and_then(|started| started.get(&step).map(Instant::elapsed))
                    .unwrap_or_default();
                format!("#{step} {:.3} {line}\n", since.as_secs_f64())
            }
            Event::Done { step, elapsed } => {
                format!("#{step} DONE {:.1}s\n", elapsed.as_secs_f64())
            }
            Event::Failed { step } => format!("#{step} ERROR\n"),
            Event::Warning { message } => {
                if let Ok(mut warnings) = self.warnings.lock() {
                    warnings.push(message);
                }
                return;
            }
        };
        output::err(&text);
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
    match args.progress.as_str() {
        "auto" | "plain" | "tty" | "rawjson" | "quiet" => {}
        other => {
            return output::error(format!(
                "invalid --progress {other:?}: use auto, plain, tty, rawjson or quiet"
            ));
        }
    }
    let quiet = args.quiet || args.progress == "quiet";
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
    if args.pull && !quiet {
        output::err(
            "#0 --pull: kiln has no registry client yet; base images come from the local store\n",
        );
    }
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
        named_contexts,
    };
    let progress = PlainProgress {
        start: Instant::now(),
        explain: args.explain_cache,
        quiet,
        started: Mutex::new(BTreeMap::new()),
        warnings: Mutex::new(Vec::new()),
    };
    let result = build(&mut store, &options, &progress);
    let warnings = progress
        .warnings
        .lock()
        .map(|w| w.clone())
        .unwrap_or_default();
    for warning in &warnings {
        output::err(&format!("[Warning] {warning}\n"));
    }
    let built = match result {
        Ok(built) => built,
        Err(error) => return report(&name, &text, error),
    };
    if let Err(error) = export::export(
        &store,
        &built.image,
        &export,
        &tags,
        &mut std::io::stdout().lock(),
    ) {
        return output::error_of(&error);
    }
    if !quiet {
        let step = progress.started.lock().map(|s| s.len()).unwrap_or(0) + 1;
        let kind = match &export {
            Output::Image | Output::Docker { .. } => "image",
            Output::Local(_) => "client directory",
            Output::Tar(_) => "client tarball",
            Output::Oci { .. } => "oci image format",
        };
        let mut lines = format!(
            "#{step} exporting to {kind}\n#{step} writing image {} done\n",
            built.image
        );
        let named = if export.tags_in_store() {
            tags.as_slice()
        } else {
            &[]
        };
        for tag in named {
            lines.push_str(&format!(
                "#{step} naming to {} done\n",
                tag.clone().with_default_tag()
            ));
        }
        lines.push_str(&format!(
            "#{step} DONE {:.1}s\n",
            progress.start.elapsed().as_secs_f64()
        ));
        output::err(&lines);
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
