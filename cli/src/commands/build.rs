//! `kiln build` and `kiln builder prune|du`: the CLI side of the builder (flags, progress
//! rendering, errors pointing at the Dockerfile).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln_builder::build::{
    BuildError, BuildNetwork, BuildOptions, Event, Progress, Sandbox, build,
};
use kiln_builder::context::Context;
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
    /// The build context: a directory, or `-` to read a Dockerfile from stdin (no context)
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
    // The context and the Dockerfile.
    let (context_dir, dockerfile_path, stdin_dockerfile) = if args.context == "-" {
        (None, None, true)
    } else {
        let dir = PathBuf::from(&args.context);
        if args.context.contains("://") || args.context.starts_with("git@") {
            return output::error(format!(
                "context {}: URL and git contexts are not supported yet; clone or download it and give the directory",
                args.context
            ));
        }
        if !dir.is_dir() {
            return output::error(format!(
                "unable to prepare context: path {:?} not found or not a directory",
                args.context
            ));
        }
        let file = args.file.clone().unwrap_or_else(|| dir.join("Dockerfile"));
        let stdin = file == Path::new("-");
        (Some(dir), (!stdin).then_some(file), stdin)
    };
    let (name, text) = if stdin_dockerfile {
        let mut text = String::new();
        if let Err(error) = std::io::stdin().read_to_string(&mut text) {
            return output::error(format!("reading the Dockerfile from stdin: {error}"));
        }
        ("Dockerfile".to_string(), text)
    } else {
        let path = dockerfile_path.clone().unwrap_or_default();
        match super::read_dockerfile(&path) {
            Ok(read) => read,
            Err(message) => return output::error(message),
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
        tags: tags.clone(),
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
    if !quiet {
        let step = progress.started.lock().map(|s| s.len()).unwrap_or(0) + 1;
        let mut lines = format!(
            "#{step} exporting to image\n#{step} writing image {} done\n",
            built.image
        );
        for tag in &tags {
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
    } else {
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
