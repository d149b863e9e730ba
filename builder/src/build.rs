//! `kiln build`: a Dockerfile and a context in, an image in the store out.
//!
//! **Model.** Each stage is a chain of states; a state is an image config plus the layers of
//! its file system. Instructions that only change the config (ENV, CMD, LABEL...) derive the
//! next state directly. Instructions that change files (RUN, COPY, ADD, WORKDIR creating its
//! directory) are *file-system steps*: each has a definition digest (the operation and its
//! parent state's key, what BuildKit calls the vertex digest) and a cache key (the definition
//! plus the content of its inputs: the selected context files, the source stage's key for
//! `COPY --from`). A step whose key has a record in the store's build cache is reused without
//! running; otherwise it runs (RUN in the runtime's sandbox over the parent's layer snapshots;
//! COPY/ADD by writing into an upper directory through [`kiln_cache::changes::ContainerFs`],
//! which resolves every destination inside the image root), its upper directory becomes a
//! layer ([`kiln_cache::changes::layer_from_upper`]) and the result is recorded.
//!
//! **ONBUILD.** The triggers of a stage's base (an image's `OnBuild`, or the ONBUILD lines of
//! the stage it is built FROM) are parsed at planning time, run right after FROM as if written
//! there (their errors point at the FROM line) and consumed: the stage's config has none.
//!
//! **Scheduling.** Only the stages the target needs are built (the target, the stages its
//! FROM and `COPY --from` name, transitively). Stages whose dependencies are built run at the
//! same time, each on its own thread with its own store handle.
//!
//! **Reproducibility.** Keys never include times. A config-only step's key is its parent's key
//! and the resulting runtime config. History entries of config-only steps take the time of the
//! state they apply to, so a fully cached rebuild gives the same image ID; with
//! `source_date_epoch` every time is that epoch and layer mtimes are clamped to it.
//!
//! Does not print: progress goes to a [`Progress`] sink as [`Event`]s.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln_cache::buildcache::{CacheRecord, NewCacheRecord};
use kiln_cache::changes::{
    ChangesError, ContainerFs, CopyOptions, CopySource, CopyTarget, PathKind, layer_from_upper,
};
use kiln_cache::digest::Digest;
use kiln_cache::image::{
    self, ContainerConfig, Descriptor, History, ImageConfig, Manifest, RootFs,
};
use kiln_cache::layer::{Compression, WriteOptions};
use kiln_cache::reference::Reference;
use kiln_cache::store::{LayerRecord, NewImage, Store, StoreError};
use kiln_parser::ast::{CommandLine, Dockerfile, Instruction, Span, Stage, Statement};
use kiln_parser::expand::Lexer;
use sha2::{Digest as _, Sha256};

use crate::chmod::Chmod;
use crate::config::{ConfigError, apply_with_args, command_vector};
use crate::context::{Context, ContextError, Ownership, Source, glob_match, has_wildcards};
use crate::ignore::Matcher;
use crate::remote;

/// Build arguments every Dockerfile may use without declaring them in the global scope, and
/// which are passed to RUN without appearing in history or cache keys.
const PROXY_ARGS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// The host name of RUN steps (BuildKit's).
const BUILD_HOSTNAME: &str = "buildkitsandbox";

/// How RUN steps reach the network by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BuildNetwork {
    /// The host's network namespace: kiln has no bridge network yet, and builds need to
    /// download (BuildKit's default network has outbound access too).
    #[default]
    Host,
    /// Only a loopback interface.
    None,
}

/// The program the runtime re-executes to create a sandbox (the kiln binary and its hidden
/// init marker).
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// What to build and how.
#[derive(Debug)]
pub struct BuildOptions {
    /// The Dockerfile as the user named it (for messages).
    pub dockerfile_name: String,
    pub dockerfile: String,
    pub context: Context,
    /// `--build-arg` values (a `K` without value already looked up by the caller).
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    /// Tags for the result (normalised by the caller).
    pub tags: Vec<Reference>,
    pub labels: BTreeMap<String, String>,
    pub no_cache: bool,
    /// Stages (names or indexes) whose steps never use the cache.
    pub no_cache_filter: Vec<String>,
    pub network: BuildNetwork,
    pub source_date_epoch: Option<i64>,
    pub sandbox: Sandbox,
    pub compression: Compression,
    /// `--secret` values by id, for `RUN --mount=type=secret`.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// `--ssh` agent sockets by id (`default` for a bare `--ssh default`), for
    /// `RUN --mount=type=ssh`: bound into the step, never part of layers, history or keys.
    pub ssh: BTreeMap<String, PathBuf>,
    /// `--build-context NAME=...` by lower-cased name: they replace the stage or image of that
    /// name in FROM, `COPY --from` and `RUN --mount=from=`.
    pub named_contexts: BTreeMap<String, NamedContext>,
    /// Where images the build names (FROM, `COPY --from`, `RUN --mount=from=`) come from
    /// before they are looked up in the store: a registry pull (`--pull`, or missing images).
    /// None: only the store's images.
    pub images: Option<Box<dyn ImageSource>>,
}

/// Brings the images a build needs into the store: kiln-builder knows no registry, the caller
/// does (`kiln build` pulls missing images, or every image with `--pull`).
pub trait ImageSource: Send + Sync + std::fmt::Debug {
    /// Makes `name` (a reference as the Dockerfile wrote it, build arguments expanded)
    /// resolvable in `store`, downloading it when the caller's policy says so. Called only for
    /// images of stages the target needs, once per name and build at most from each place
    /// that names it; an error fails the build at the line naming the image.
    fn ensure(
        &self,
        store: &mut Store,
        name: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

/// A `--build-context` value.
#[derive(Debug)]
pub enum NamedContext {
    /// A local directory (`NAME=DIR`), with its own `.dockerignore`.
    Directory(Context),
    /// An image of the store (`docker-image://REF`, or an `oci-layout://` the caller loaded).
    Image(String),
}

/// A step of the build, as progress shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A step starts: `[stage 2/5] RUN make`.
    Started { step: usize, name: String },
    /// Its result came from the cache.
    Cached { step: usize },
    /// Why it could not come from the cache (the changed input).
    Missed { step: usize, reason: String },
    /// A line of its output.
    Output { step: usize, line: String },
    /// It finished.
    Done { step: usize, elapsed: Duration },
    /// It failed (the build error follows).
    Failed { step: usize },
    /// A warning about the build (unused build arguments...).
    Warning { message: String },
}

/// Where progress events go. Called from several threads at once.
pub trait Progress: Sync {
    fn event(&self, event: Event);
}

/// What a finished build produced.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The image ID (config digest).
    pub image: Digest,
    pub manifest: Digest,
    /// File-system steps run and reused.
    pub executed: usize,
    pub cached: usize,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile does not parse.
    #[error("{}", .0.kind)]
    Parse(kiln_parser::ParseError),
    /// An instruction failed: points at the Dockerfile.
    #[error("{message}")]
    At {
        span: Span,
        message: String,
        hint: Option<String>,
        /// The exit code of a failed RUN.
        exit_code: Option<i32>,
    },
    #[error("the Dockerfile has no FROM instruction")]
    NoStages,
    #[error("target stage {0:?} could not be found")]
    UnknownTarget(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blob(#[from] kiln_cache::blob::BlobError),
    #[error("writing the image: {0}")]
    Json(#[from] serde_json::Error),
    #[error("build step thread panicked")]
    Panicked,
}

impl BuildError {
    fn at(span: Span, message: impl std::fmt::Display) -> BuildError {
        BuildError::At {
            span,
            message: message.to_string(),
            hint: None,
            exit_code: None,
        }
    }
}

/// The result of a state: its image config, layers and cache key.
#[derive(Debug, Clone)]
struct State {
    config: ImageConfig,
    layers: Vec<LayerRecord>,
    key: Digest,
    /// The time history entries of config-only steps get (RFC 3339).
    time: Option<String>,
    /// The build arguments the stage declared (with their values): a stage built FROM this one
    /// starts with them, as in BuildKit.
    args: BTreeMap<String, String>,
}

/// A stage as planned: its FROM resolved, its dependencies known.
#[derive(Debug)]
struct PlannedStage<'a> {
    stage: Stage<'a>,
    /// Lower-cased `AS` name.
    name: Option<String>,
    base: Base,
    /// The base name as FROM names it, build arguments expanded.
    image: String,
    /// The ONBUILD triggers of the base, parsed, in order: they run right after FROM.
    triggers: Vec<Statement>,
    /// Stages whose results this one needs (FROM, `COPY --from`, `RUN --mount=from=`).
    needs: BTreeSet<usize>,
}

#[derive(Debug, Clone)]
enum Base {
    Scratch,
    Stage(usize),
    Image(String),
    /// A `--build-context NAME=DIR`: scratch with the directory's files.
    Directory(String),
}

/// Shared state of one build.
struct Build<'a> {
    options: &'a BuildOptions,
    store_root: PathBuf,
    dockerfile: &'a Dockerfile,
    escape: char,
    progress: &'a dyn Progress,
    global_args: BTreeMap<String, String>,
    step_counter: Mutex<usize>,
    used_args: Mutex<BTreeSet<String>>,
    counts: Mutex<(usize, usize)>,
}

fn sha(parts: &[&[u8]]) -> Digest {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    Digest::from_bytes(hasher.finalize().into())
}

/// The key of a state that is a stored image: its manifest digest.
fn image_key(manifest: &Digest) -> Digest {
    sha(&[b"image", manifest.to_string().as_bytes()])
}

fn rfc3339(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn host_platform() -> (&'static str, &'static str) {
    ("linux", kiln_cache::import::host_architecture())
}

/// Whether `text` (`OS/ARCH[/VARIANT]`, or a bare `ARCH` for linux) names this machine's
/// platform; architecture aliases (`x86_64`, `aarch64`) count as their OCI names.
pub fn is_host_platform(text: &str) -> bool {
    let (os, arch) = host_platform();
    let lower = text.trim().to_ascii_lowercase();
    let parts: Vec<&str> = lower.split('/').collect();
    let (wanted_os, wanted_arch, variant) = match parts.as_slice() {
        [arch] => ("linux", *arch, None),
        [os, arch] => (*os, *arch, None),
        [os, arch, variant] => (*os, *arch, Some(*variant)),
        _ => return false,
    };
    let wanted_arch = match wanted_arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    // This machine's variant is the base one: arm64's v8; amd64 has none (v1).
    let variant_ok = matches!(
        (arch, variant),
        (_, None) | ("arm64", Some("v8")) | ("amd64", Some("v1"))
    );
    wanted_os == os && wanted_arch == arch && variant_ok
}

/// Builds the image `options` describe in the store at `store` and tags it.
pub fn build(
    store: &mut Store,
    options: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuildOutput, BuildError> {
    let dockerfile = kiln_parser::parse(&options.dockerfile).map_err(BuildError::Parse)?;
    let escape = dockerfile.directives.escape;
    let (os, arch) = host_platform();
    let platform = format!("{os}/{arch}");
    let mut predefined: BTreeMap<String, String> = [
        ("TARGETPLATFORM", platform.as_str()),
        ("TARGETOS", os),
        ("TARGETARCH", arch),
        ("TARGETVARIANT", ""),
        ("BUILDPLATFORM", platform.as_str()),
        ("BUILDOS", os),
        ("BUILDARCH", arch),
        ("BUILDVARIANT", ""),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect();
    // Global ARGs: usable in FROM lines (and, redeclared, inside stages).
    let lexer = Lexer::new(escape);
    let mut global_args = BTreeMap::new();
    let mut used = BTreeSet::new();
    for statement in dockerfile.global_statements() {
        if let Instruction::Arg(arg) = &statement.instruction {
            for declaration in &arg.args {
                let name = declaration.name.text.clone();
                let value = match options.build_args.get(&name) {
                    Some(value) => {
                        used.insert(name.clone());
                        Some(value.clone())
                    }
                    None => match &declaration.default {
                        Some(default) => {
                            let mut env = predefined.clone();
                            env.extend(global_args.clone());
                            Some(
                                lexer
                                    .expand_word(&default.text, &env)
                                    .map_err(|error| BuildError::at(default.span, error))?
                                    .value,
                            )
                        }
                        None => None,
                    },
                };
                if let Some(value) = value {
                    global_args.insert(name, value);
                }
            }
        }
    }
    predefined.extend(global_args);
    let build = Build {
        options,
        store_root: store.layout().root().to_path_buf(),
        dockerfile: &dockerfile,
        escape,
        progress,
        global_args: predefined,
        step_counter: Mutex::new(0),
        used_args: Mutex::new(used),
        counts: Mutex::new((0, 0)),
    };
    let mut stages = build.plan(store)?;
    let target = match &options.target {
        Some(target) => {
            let lower = target.to_ascii_lowercase();
            stages
                .iter()
                .position(|stage| stage.name.as_deref() == Some(lower.as_str()))
                .ok_or_else(|| BuildError::UnknownTarget(target.clone()))?
        }
        None => stages.len() - 1,
    };
    // Only what the target needs.
    let mut needed = needed_stages(&stages, target);
    // Base images of the needed stages come in (pulled) first; planning again then sees their
    // ONBUILD triggers.
    if build.ensure_bases(store, &stages, &needed)? {
        stages = build.plan(store)?;
        needed = needed_stages(&stages, target);
    }
    let _ingest = store.ingest()?;
    // The contexts' stat caches live in the store between builds; written back when dropped.
    let hashes_dir = store.layout().root().join("context-hashes");
    let _hashes: Vec<_> = std::iter::once(&options.context)
        .chain(
            options
                .named_contexts
                .values()
                .filter_map(|named| match named {
                    NamedContext::Directory(context) => Some(context),
                    NamedContext::Image(_) => None,
                }),
        )
        .map(|context| context.remember_hashes(&hashes_dir))
        .collect();
    let results: Mutex<HashMap<usize, State>> = Mutex::new(HashMap::new());
    let mut done: BTreeSet<usize> = BTreeSet::new();
    while !needed.is_subset(&done) {
        let ready: Vec<usize> = needed
            .iter()
            .copied()
            .filter(|index| !done.contains(index) && stages[*index].needs.is_subset(&done))
            .collect();
        if ready.is_empty() {
            // A cycle: plan() refuses stages that name later ones, so this cannot happen.
            return Err(BuildError::NoStages);
        }
        let outcomes: Vec<(usize, Result<State, BuildError>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = ready
                .iter()
                .map(|&index| {
                    let build = &build;
                    let stages = &stages;
                    let results = &results;
                    (
                        index,
                        scope.spawn(move || build.run_stage(stages, index, results)),
                    )
                })
                .collect();
            handles
                .into_iter()
                .map(|(index, handle)| (index, handle.join().unwrap_or(Err(BuildError::Panicked))))
                .collect()
        });
        for (index, outcome) in outcomes {
            let state = outcome?;
            results
                .lock()
                .map_err(|_| BuildError::Panicked)?
                .insert(index, state);
            done.insert(index);
        }
    }
    let unused: Vec<String> = {
        let used = build.used_args.lock().map_err(|_| BuildError::Panicked)?;
        options
            .build_args
            .keys()
            .filter(|name| !used.contains(*name) && !PROXY_ARGS.contains(&name.as_str()))
            .cloned()
            .collect()
    };
    if !unused.is_empty() {
        progress.event(Event::Warning {
            message: format!(
                "One or more build-args [{}] were not consumed",
                unused.join(" ")
            ),
        });
    }
    let mut state = results
        .lock()
        .map_err(|_| BuildError::Panicked)?
        .remove(&target)
        .ok_or(BuildError::NoStages)?;
    if !options.labels.is_empty() {
        let labels = state.config.config.labels.get_or_insert_with(BTreeMap::new);
        labels.extend(options.labels.clone());
    }
    let (executed, cached) = *build.counts.lock().map_err(|_| BuildError::Panicked)?;
    let (image, manifest) = write_image(store, &mut state, options.source_date_epoch)?;
    for tag in &options.tags {
        store.tag(&tag.clone().with_default_tag().to_string(), &image)?;
    }
    Ok(BuildOutput {
        image,
        manifest,
        executed,
        cached,
    })
}

/// The stages `target` needs, itself included (transitively, through FROM, `COPY --from` and
/// `RUN --mount=from=`).
fn needed_stages(stages: &[PlannedStage<'_>], target: usize) -> BTreeSet<usize> {
    let mut needed = BTreeSet::new();
    let mut pending = vec![target];
    while let Some(index) = pending.pop() {
        if needed.insert(index) {
            pending.extend(stages[index].needs.iter().copied());
        }
    }
    needed
}

/// Stores the final state as an image (config, manifest) and records it.
fn write_image(
    store: &mut Store,
    state: &mut State,
    source_date_epoch: Option<i64>,
) -> Result<(Digest, Digest), BuildError> {
    let config = &mut state.config;
    config.rootfs = RootFs {
        kind: "layers".to_string(),
        diff_ids: state.layers.iter().map(|layer| layer.diff_id).collect(),
    };
    let created = match source_date_epoch {
        Some(epoch) => Some(rfc3339(epoch)),
        None => config
            .history
            .iter()
            .filter_map(|entry| entry.created.clone())
            .max()
            .or_else(|| state.time.clone()),
    };
    config.created = created.clone();
    let config_blob = store.blobs().put_bytes(&image::canonical_json(config)?)?;
    let manifest = Manifest::oci(
        Descriptor::new(
            image::MEDIA_TYPE_OCI_CONFIG,
            config_blob.digest,
            config_blob.size,
        ),
        state
            .layers
            .iter()
            .map(|layer| Descriptor::new(&layer.media_type, layer.blob, layer.blob_size))
            .collect(),
    );
    let manifest_blob = store
        .blobs()
        .put_bytes(&image::canonical_json(&manifest)?)?;
    store.add_image(&NewImage {
        id: config_blob.digest,
        manifest: manifest_blob.digest,
        manifest_media_type: image::MEDIA_TYPE_OCI_MANIFEST.to_string(),
        created,
        layers: state.layers.clone(),
    })?;
    Ok((config_blob.digest, manifest_blob.digest))
}

/// What a file-system step does, before its inputs' content is known.
struct FsStep<'s> {
    statement: &'s Statement,
    /// History `created_by`.
    created_by: String,
    /// The operation, for the definition digest (no content).
    definition: serde_json::Value,
    /// Content inputs: name → digest.
    inputs: BTreeMap<String, String>,
}

impl Build<'_> {
    fn next_step(&self) -> usize {
        let mut counter = self.step_counter.lock().unwrap_or_else(|e| e.into_inner());
        *counter += 1;
        *counter
    }

    fn open_store(&self) -> Result<Store, BuildError> {
        Ok(Store::open(&self.store_root)?)
    }

    /// Asks [`BuildOptions::images`] for the base images of the `needed` stages, each shown as
    /// a step (`[internal] load metadata for NAME`). Says whether it asked for any.
    fn ensure_bases(
        &self,
        store: &mut Store,
        stages: &[PlannedStage<'_>],
        needed: &BTreeSet<usize>,
    ) -> Result<bool, BuildError> {
        let Some(images) = &self.options.images else {
            return Ok(false);
        };
        let mut asked = BTreeSet::new();
        for &index in needed {
            let planned = &stages[index];
            if let Base::Image(name) = &planned.base
                && asked.insert(name.clone())
            {
                let span = planned.stage.from.image.span;
                // As BuildKit shows it: the normalised reference.
                let shown = Reference::parse(name)
                    .map(|reference| reference.with_default_tag().to_string())
                    .unwrap_or_else(|_| name.clone());
                self.timed(format!("[internal] load metadata for {shown}"), |_| {
                    self.ensure_image(images.as_ref(), store, name, span)
                })?;
            }
        }
        Ok(!asked.is_empty())
    }

    /// Asks `images` for `name`, the failure pointing at `span`.
    fn ensure_image(
        &self,
        images: &dyn ImageSource,
        store: &mut Store,
        name: &str,
        span: Span,
    ) -> Result<(), BuildError> {
        images.ensure(store, name).map_err(|error| {
            let mut message = format!("failed to resolve source image {name}: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            BuildError::At {
                span,
                message,
                hint: Some(
                    "offline? `kiln load` or `kiln import` the image into the store first"
                        .to_string(),
                ),
                exit_code: None,
            }
        })
    }

    /// Resolves every stage's base, its base's ONBUILD triggers and its dependencies.
    fn plan(&self, store: &Store) -> Result<Vec<PlannedStage<'_>>, BuildError> {
        let lexer = Lexer::new(self.escape);
        let stages = self.dockerfile.stages();
        if stages.is_empty() {
            return Err(BuildError::NoStages);
        }
        let mut planned: Vec<PlannedStage<'_>> = Vec::new();
        for stage in stages {
            let image = lexer
                .expand_word(&stage.from.image.text, &self.global_args)
                .map_err(|error| BuildError::at(stage.from.image.span, error))?
                .value;
            if image.is_empty() {
                return Err(BuildError::at(
                    stage.from.image.span,
                    "base name should not be blank (is a build argument unset?)",
                ));
            }
            let lower = image.to_ascii_lowercase();
            let base = if let Some(named) = self.options.named_contexts.get(&lower) {
                match named {
                    NamedContext::Directory(_) => Base::Directory(lower.clone()),
                    NamedContext::Image(reference) => Base::Image(reference.clone()),
                }
            } else if lower == "scratch" {
                Base::Scratch
            } else if let Some(index) = planned
                .iter()
                .position(|earlier| earlier.name.as_deref() == Some(lower.as_str()))
            {
                Base::Stage(index)
            } else {
                Base::Image(image.clone())
            };
            let from_span = stage.from_statement.span;
            let triggers: Vec<Statement> = match &base {
                Base::Scratch | Base::Directory(_) => Vec::new(),
                // A stage's own ONBUILD lines (what it inherited, it consumed).
                Base::Stage(index) => planned[*index]
                    .stage
                    .statements
                    .iter()
                    .filter_map(|statement| {
                        if let Instruction::Onbuild(onbuild) = &statement.instruction {
                            Some((*onbuild.trigger).clone())
                        } else {
                            None
                        }
                    })
                    .collect(),
                Base::Image(name) => match store.resolve(name) {
                    // A missing image fails when the stage runs (only if it is needed).
                    Err(_) => Vec::new(),
                    Ok(id) => kiln_cache::changes::image_config(store, &id)
                        .map_err(|error| BuildError::at(from_span, error))?
                        .config
                        .on_build
                        .unwrap_or_default()
                        .iter()
                        .map(|expression| parse_trigger(expression, from_span))
                        .collect::<Result<_, _>>()?,
                },
            };
            let mut needs = BTreeSet::new();
            if let Base::Stage(index) = base {
                needs.insert(index);
            }
            for statement in triggers.iter().chain(stage.statements) {
                for (from, span) in statement_sources(statement) {
                    let from_value = lexer
                        .expand_word(&from, &self.global_args)
                        .map_err(|error| BuildError::at(span, error))?
                        .value
                        .to_ascii_lowercase();
                    if self.options.named_contexts.contains_key(&from_value) {
                        // A named context replaces a stage or image of that name.
                    } else if let Some(index) = stage_reference(&planned, &from_value) {
                        needs.insert(index);
                    } else if from_value.parse::<usize>().is_ok() {
                        return Err(BuildError::at(
                            span,
                            format!(
                                "invalid stage index {from_value}: only earlier stages can be named"
                            ),
                        ));
                    }
                }
            }
            planned.push(PlannedStage {
                name: stage
                    .from
                    .alias
                    .as_ref()
                    .map(|alias| alias.text.to_ascii_lowercase()),
                stage,
                base,
                image,
                triggers,
                needs,
            });
        }
        Ok(planned)
    }

    /// The base state of a stage.
    fn base_state(
        &self,
        store: &Store,
        planned: &PlannedStage<'_>,
        results: &Mutex<HashMap<usize, State>>,
    ) -> Result<State, BuildError> {
        // `FROM --platform=`: kiln runs no emulator, so only this machine's platform builds.
        if let Some(word) = &planned.stage.from.platform {
            let wanted = Lexer::new(self.escape)
                .expand_word(&word.text, &self.global_args)
                .map_err(|error| BuildError::at(word.span, error))?
                .value;
            if !is_host_platform(&wanted) {
                let (os, arch) = host_platform();
                return Err(BuildError::At {
                    span: word.span,
                    message: format!(
                        "platform {wanted:?} is not supported: kiln builds for this machine's platform ({os}/{arch}) only, with no emulation"
                    ),
                    hint: Some("use --platform=$BUILDPLATFORM or drop --platform".to_string()),
                    exit_code: None,
                });
            }
        }
        match &planned.base {
            Base::Stage(index) => results
                .lock()
                .map_err(|_| BuildError::Panicked)?
                .get(index)
                .cloned()
                .ok_or(BuildError::Panicked),
            Base::Scratch | Base::Directory(_) => {
                let (os, arch) = host_platform();
                Ok(State {
                    config: ImageConfig {
                        architecture: arch.to_string(),
                        os: os.to_string(),
                        config: ContainerConfig {
                            env: Some(vec![format!("PATH={}", kiln_runtime::DEFAULT_PATH)]),
                            // BuildKit gives a scratch stage the root as its working directory.
                            working_dir: Some("/".to_string()),
                            ..ContainerConfig::default()
                        },
                        ..ImageConfig::default()
                    },
                    layers: Vec::new(),
                    key: sha(&[b"scratch", arch.as_bytes()]),
                    time: self.options.source_date_epoch.map(rfc3339),
                    args: BTreeMap::new(),
                })
            }
            Base::Image(name) => {
                let span = planned.stage.from.image.span;
                let id = store.resolve(name).map_err(|error| BuildError::At {
                    span,
                    message: format!("failed to resolve source image {name}: {error}"),
                    hint: Some(
                        "kiln builds from images in its store: `kiln load` or `kiln import` it first"
                            .to_string(),
                    ),
                    exit_code: None,
                })?;
                let record = store.image(&id)?;
                let mut config = kiln_cache::changes::image_config(store, &id)
                    .map_err(|error| BuildError::at(span, error))?;
                let env = config.config.env.get_or_insert_with(Vec::new);
                if !env.iter().any(|entry| entry.starts_with("PATH=")) {
                    env.push(format!("PATH={}", kiln_runtime::DEFAULT_PATH));
                }
                let time = config.created.clone();
                Ok(State {
                    config,
                    layers: record.layers,
                    key: image_key(&record.manifest),
                    time: self.options.source_date_epoch.map(rfc3339).or(time),
                    args: BTreeMap::new(),
                })
            }
        }
    }

    fn run_stage(
        &self,
        stages: &[PlannedStage<'_>],
        index: usize,
        results: &Mutex<HashMap<usize, State>>,
    ) -> Result<State, BuildError> {
        let mut store = self.open_store()?;
        let planned = &stages[index];
        let mut state = self.base_state(&store, planned, results)?;
        let stage_label = planned
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{index}"));
        let no_cache = self.options.no_cache
            || self.options.no_cache_filter.iter().any(|filter| {
                filter.eq_ignore_ascii_case(&stage_label) || *filter == index.to_string()
            });
        // Build arguments declared in this stage (with their values), starting with those of
        // a stage it is built FROM.
        let mut args: BTreeMap<String, String> = std::mem::take(&mut state.args);
        // ONBUILD triggers of the base run first, as if written right after FROM, and are
        // consumed: the stage's image does not pass them on.
        let triggers = &planned.triggers;
        if state.config.config.on_build.take().is_some() {
            state.key = sha(&[state.key.as_bytes(), b"onbuild-consumed"]);
        }
        let total = triggers.len() + planned.stage.statements.len() + 1;
        {
            let step = self.next_step();
            self.progress.event(Event::Started {
                step,
                name: format!("[{stage_label} 1/{total}] FROM {}", planned.image),
            });
            self.progress.event(Event::Done {
                step,
                elapsed: Duration::ZERO,
            });
        }
        if let Base::Directory(name) = &planned.base {
            // A local named context as the base: its files on scratch, one layer.
            let from = planned.stage.from_statement;
            state = self.timed(format!("[{stage_label} 1/{total}] COPY {name} /"), |step| {
                self.copy_step(
                    &mut store,
                    stages,
                    results,
                    &state,
                    from,
                    step,
                    no_cache,
                    CopyRequest {
                        sources: vec![".".to_string()],
                        heredocs: &[],
                        destination: "/".to_string(),
                        chown: None,
                        chmod: None,
                        from: Some(name.clone()),
                        add: false,
                        parents: false,
                        excludes: Vec::new(),
                        checksum: None,
                        keep_git_dir: false,
                    },
                )
            })?;
        }
        let from_span = planned.stage.from_statement.span;
        let statements = triggers.iter().map(|trigger| (trigger, true)).chain(
            planned
                .stage
                .statements
                .iter()
                .map(|statement| (statement, false)),
        );
        // Whether this stage set CMD (an ENTRYPOINT after it keeps it).
        let mut cmd_set = false;
        for (position, (statement, is_trigger)) in statements.enumerate() {
            let label = format!(
                "[{stage_label} {}/{total}] {}{} {}",
                position + 2,
                if is_trigger { "ONBUILD " } else { "" },
                statement.keyword.text.to_ascii_uppercase(),
                statement.original.trim()
            );
            let outcome = self.dispatch(
                &mut store, stages, results, &mut state, &mut args, statement, label, no_cache,
                cmd_set,
            );
            cmd_set |= matches!(statement.instruction, Instruction::Cmd(_));
            match outcome {
                Ok(()) => {}
                // A trigger's text is not in this Dockerfile: point at the FROM that ran it.
                Err(BuildError::At {
                    message,
                    hint,
                    exit_code,
                    ..
                }) if is_trigger => {
                    return Err(BuildError::At {
                        span: from_span,
                        message: format!(
                            "ONBUILD {} {}: {message}",
                            statement.keyword.text.to_ascii_uppercase(),
                            statement.original.trim()
                        ),
                        hint,
                        exit_code,
                    });
                }
                Err(error) => return Err(error),
            }
        }
        state.args = args;
        Ok(state)
    }

    /// Applies one instruction of a stage to its state.
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &self,
        store: &mut Store,
        stages: &[PlannedStage<'_>],
        results: &Mutex<HashMap<usize, State>>,
        state: &mut State,
        args: &mut BTreeMap<String, String>,
        statement: &Statement,
        label: String,
        no_cache: bool,
        cmd_set: bool,
    ) -> Result<(), BuildError> {
        match &statement.instruction {
            Instruction::Arg(arg) => {
                for declaration in &arg.args {
                    let name = declaration.name.text.clone();
                    let value = if let Some(value) = self.options.build_args.get(&name) {
                        self.used_args
                            .lock()
                            .map_err(|_| BuildError::Panicked)?
                            .insert(name.clone());
                        Some(value.clone())
                    } else if let Some(default) = &declaration.default {
                        let env = self.visible_env(state, args);
                        Some(
                            Lexer::new(self.escape)
                                .expand_word(&default.text, &env)
                                .map_err(|error| BuildError::at(default.span, error))?
                                .value,
                        )
                    } else {
                        self.global_args.get(&name).cloned()
                    };
                    match value {
                        Some(value) => {
                            args.insert(name, value);
                        }
                        None => {
                            args.remove(&name);
                        }
                    }
                }
                state.key = sha(&[
                    state.key.as_bytes(),
                    b"arg",
                    serde_json::to_string(&args)?.as_bytes(),
                ]);
            }
            Instruction::Run(run) => {
                *state = self.timed(label, |step| {
                    let op = FsOp::Run(run);
                    self.fs_step(
                        store, stages, results, state, args, statement, op, step, no_cache,
                    )
                })?;
            }
            Instruction::Copy(copy) => {
                *state = self.timed(label, |step| {
                    let op = FsOp::Copy(copy);
                    self.fs_step(
                        store, stages, results, state, args, statement, op, step, no_cache,
                    )
                })?;
            }
            Instruction::Add(add) => {
                *state = self.timed(label, |step| {
                    let op = FsOp::Add(add);
                    self.fs_step(
                        store, stages, results, state, args, statement, op, step, no_cache,
                    )
                })?;
            }
            Instruction::Maintainer(author) => {
                let mut next = state.clone();
                next.config.author = Some(author.text.clone());
                self.config_history(&mut next, statement);
                next.key = sha(&[state.key.as_bytes(), b"maintainer", author.text.as_bytes()]);
                *state = next;
            }
            Instruction::From(_) => {}
            Instruction::Cmd(_)
            | Instruction::Label(_)
            | Instruction::Expose(_)
            | Instruction::Env(_)
            | Instruction::Entrypoint(_)
            | Instruction::Volume(_)
            | Instruction::User(_)
            | Instruction::Workdir(_)
            | Instruction::Onbuild(_)
            | Instruction::Stopsignal(_)
            | Instruction::Healthcheck(_)
            | Instruction::Shell(_) => {
                let mut next = state.clone();
                apply_with_args(&mut next.config.config, statement, self.escape, args)
                    .map_err(|error| config_error(statement, error))?;
                if cmd_set && matches!(statement.instruction, Instruction::Entrypoint(_)) {
                    // ENTRYPOINT resets only an inherited CMD, not one this stage set.
                    next.config.config.cmd = state.config.config.cmd.clone();
                }
                next.key = sha(&[
                    state.key.as_bytes(),
                    b"config",
                    &image::canonical_json(&next.config.config)?,
                ]);
                if matches!(statement.instruction, Instruction::Workdir(_)) {
                    // Its history entry comes with the directory it may create.
                    *state = self.timed(label, |step| {
                        self.workdir_step(store, &next, statement, step, no_cache)
                    })?;
                } else {
                    self.config_history(&mut next, statement);
                    *state = next;
                }
            }
        }
        Ok(())
    }

    /// The environment words of a stage see: the config's env over the declared args.
    fn visible_env(
        &self,
        state: &State,
        args: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut env = args.clone();
        env.extend(
            state
                .config
                .config
                .env
                .iter()
                .flatten()
                .filter_map(|pair| pair.split_once('='))
                .map(|(name, value)| (name.to_string(), value.to_string())),
        );
        env
    }

    /// Runs one numbered step, reporting its start, end or failure.
    fn timed<T>(
        &self,
        name: String,
        work: impl FnOnce(usize) -> Result<T, BuildError>,
    ) -> Result<T, BuildError> {
        let step = self.next_step();
        self.progress.event(Event::Started { step, name });
        let started = Instant::now();
        match work(step) {
            Ok(state) => {
                self.progress.event(Event::Done {
                    step,
                    elapsed: started.elapsed(),
                });
                Ok(state)
            }
            Err(error) => {
                self.progress.event(Event::Failed { step });
                Err(error)
            }
        }
    }

    fn config_history(&self, state: &mut State, statement: &Statement) {
        state.config.history.push(History {
            created: state.time.clone(),
            created_by: Some(instruction_text(statement)),
            comment: Some("buildkit.dockerfile.v0".to_string()),
            empty_layer: true,
            ..History::default()
        });
    }

    fn now(&self) -> String {
        match self.options.source_date_epoch {
            Some(epoch) => rfc3339(epoch),
            None => kiln_cache::import::creation_time(),
        }
    }

    /// Looks the step up in the cache or runs it; returns the next state.
    #[allow(clippy::too_many_arguments)]
    fn fs_step(
        &self,
        store: &mut Store,
        stages: &[PlannedStage<'_>],
        results: &Mutex<HashMap<usize, State>>,
        state: &State,
        args: &BTreeMap<String, String>,
        statement: &Statement,
        op: FsOp<'_>,
        step: usize,
        no_cache: bool,
    ) -> Result<State, BuildError> {
        let env = self.visible_env(state, args);
        let lexer = Lexer::new(self.escape);
        let expand = |word: &kiln_parser::ast::Word| -> Result<String, BuildError> {
            Ok(lexer
                .expand_word(&word.text, &env)
                .map_err(|error| BuildError::at(word.span, error))?
                .value)
        };
        // A COPY/ADD heredoc with an unquoted delimiter is expanded with the stage's ARG/ENV
        // values, quotes being plain characters (BuildKit's `ExpandRaw`: a `\` escape lexer
        // with `SkipProcessQuotes`, so `'$V'` expands too); `<<"EOF"` and `<<'EOF'` stay
        // verbatim. The expanded body is what the cache key sees.
        let expand_heredocs = |heredocs: &[kiln_parser::ast::Heredoc]| {
            let lexer = Lexer::new('\\');
            heredocs
                .iter()
                .map(|heredoc| {
                    let mut heredoc = heredoc.clone();
                    if heredoc.expand {
                        heredoc.content = lexer
                            .expand_word(&quotes_escaped(&heredoc.content), &env)
                            .map_err(|error| BuildError::at(heredoc.span, error))?
                            .value;
                    }
                    Ok(heredoc)
                })
                .collect::<Result<Vec<_>, BuildError>>()
        };
        match op {
            FsOp::Run(run) => {
                let process_env = self.run_env(state, args);
                let argv = self.run_argv(state, run);
                let network = match run.network {
                    Some(kiln_parser::ast::Network::None) => "none",
                    Some(kiln_parser::ast::Network::Host) => "host",
                    _ => match self.options.network {
                        BuildNetwork::Host => "host",
                        BuildNetwork::None => "none",
                    },
                };
                let mut mounts = self.run_mounts(store, stages, results, state, &env, run)?;
                if let Some(heredoc) = whole_heredoc(run)
                    && let Some(path) = script_path(heredoc)
                {
                    // As BuildKit: the script is a 0755 file bound read-only at
                    // /dev/pipes/<name> (inside the container's /dev tmpfs, so it never
                    // reaches the layer); its content is in the key.
                    mounts.definition.push(serde_json::json!({
                        "type": "heredoc-script",
                        "target": path,
                        "content": Digest::of(heredoc.content.as_bytes()).to_string(),
                    }));
                    mounts
                        .secrets
                        .push((path, heredoc.content.clone().into_bytes(), 0o755));
                }
                let mut process_env = process_env;
                let key_env: Vec<String> = process_env
                    .iter()
                    .filter(|entry| !is_proxy(entry))
                    .cloned()
                    .collect();
                process_env.extend(mounts.env.iter().cloned());
                let definition = serde_json::json!({
                    "op": "run",
                    "args": argv,
                    "env": key_env,
                    "user": state.config.config.user,
                    "cwd": state.config.config.working_dir,
                    "network": network,
                    "mounts": mounts.definition,
                });
                let created_by = format!("RUN {} # buildkit", argv.join(" "));
                let step_def = FsStep {
                    statement,
                    created_by,
                    definition,
                    inputs: BTreeMap::new(),
                };
                self.cached_or(store, state, step_def, step, no_cache, |store, upper| {
                    self.execute_run(
                        store,
                        state,
                        upper,
                        argv.clone(),
                        process_env.clone(),
                        network,
                        &mounts,
                        statement,
                        step,
                    )
                })
            }
            FsOp::Copy(copy) => {
                let sources: Vec<String> = copy
                    .paths
                    .sources
                    .iter()
                    .map(&expand)
                    .collect::<Result<_, _>>()?;
                let destination = expand(&copy.paths.destination)?;
                let chown = copy.chown.as_ref().map(&expand).transpose()?;
                let chmod = copy.chmod.as_ref().map(&expand).transpose()?;
                let from = copy.from.as_ref().map(&expand).transpose()?;
                let excludes = copy
                    .excludes
                    .iter()
                    .map(&expand)
                    .collect::<Result<_, _>>()?;
                let heredocs = expand_heredocs(&copy.paths.heredocs)?;
                self.copy_step(
                    store,
                    stages,
                    results,
                    state,
                    statement,
                    step,
                    no_cache,
                    CopyRequest {
                        sources,
                        heredocs: &heredocs,
                        destination,
                        chown,
                        chmod,
                        from,
                        add: false,
                        parents: copy.parents,
                        excludes,
                        checksum: None,
                        keep_git_dir: false,
                    },
                )
            }
            FsOp::Add(add) => {
                let sources: Vec<String> = add
                    .paths
                    .sources
                    .iter()
                    .map(&expand)
                    .collect::<Result<_, _>>()?;
                let destination = expand(&add.paths.destination)?;
                let chown = add.chown.as_ref().map(&expand).transpose()?;
                let chmod = add.chmod.as_ref().map(&expand).transpose()?;
                let excludes = add.excludes.iter().map(&expand).collect::<Result<_, _>>()?;
                let checksum = add.checksum.as_ref().map(&expand).transpose()?;
                let heredocs = expand_heredocs(&add.paths.heredocs)?;
                self.copy_step(
                    store,
                    stages,
                    results,
                    state,
                    statement,
                    step,
                    no_cache,
                    CopyRequest {
                        sources,
                        heredocs: &heredocs,
                        destination,
                        chown,
                        chmod,
                        from: None,
                        add: add.unpack != Some(false),
                        parents: false,
                        excludes,
                        checksum,
                        keep_git_dir: add.keep_git_dir,
                    },
                )
            }
        }
    }

    /// Resolves a RUN step's `--mount`s: cache directories in the store (persisting across
    /// builds, never part of the image), secrets, tmpfs, read-only binds of context paths.
    fn run_mounts(
        &self,
        store: &Store,
        stages: &[PlannedStage<'_>],
        results: &Mutex<HashMap<usize, State>>,
        state: &State,
        env: &BTreeMap<String, String>,
        run: &kiln_parser::ast::Run,
    ) -> Result<RunMounts<'_>, BuildError> {
        use kiln_parser::ast::MountKind;
        let lexer = Lexer::new(self.escape);
        let mut mounts = RunMounts::default();
        let workdir = state
            .config
            .config
            .working_dir
            .clone()
            .unwrap_or_else(|| "/".to_string());
        for mount in &run.mounts {
            let span = mount.span;
            let expand =
                |word: &Option<kiln_parser::ast::Word>| -> Result<Option<String>, BuildError> {
                    word.as_ref()
                        .map(|word| {
                            lexer
                                .expand_word(&word.text, env)
                                .map(|expansion| expansion.value)
                                .map_err(|error| BuildError::at(word.span, error))
                        })
                        .transpose()
                };
            let absolute = |path: String| {
                if path.starts_with('/') {
                    kiln_parser::path::clean(&path)
                } else {
                    kiln_parser::path::clean(&format!("{workdir}/{path}"))
                }
            };
            let target = expand(&mount.target)?.map(absolute);
            let number = |word: &Option<kiln_parser::ast::Word>,
                          radix: u32,
                          default: u32|
             -> Result<u32, BuildError> {
                match expand(word)? {
                    None => Ok(default),
                    Some(text) => u32::from_str_radix(&text, radix).map_err(|_| {
                        BuildError::at(span, format!("invalid number {text:?} in --mount"))
                    }),
                }
            };
            match mount.kind {
                MountKind::Cache => {
                    let target = target
                        .ok_or_else(|| BuildError::at(span, "a cache mount needs a target"))?;
                    let id = expand(&mount.id)?.unwrap_or_else(|| target.clone());
                    let (uid, gid, mode) = (
                        number(&mount.uid, 10, 0)?,
                        number(&mount.gid, 10, 0)?,
                        number(&mount.mode, 8, 0o755)?,
                    );
                    // `from=`: a new cache starts with that stage's or image's `source` path.
                    let from = expand(&mount.from)?;
                    let seed = match &from {
                        None => None,
                        Some(from) => {
                            let source = expand(&mount.source)?.unwrap_or_else(|| "/".to_string());
                            Some((
                                self.mount_source(store, stages, results, from, span)?,
                                source,
                            ))
                        }
                    };
                    // A cache is its id and how it starts (owner, mode, seed), as in BuildKit:
                    // the same id with another uid is another directory. The default start
                    // keeps the plain id.
                    let identity = match (&seed, (uid, gid, mode)) {
                        (None, (0, 0, 0o755)) => id.clone(),
                        (seed, _) => format!(
                            "{id}\0{uid}:{gid}:{mode:o}\0{}\0{}",
                            from.as_deref().unwrap_or(""),
                            seed.as_ref().map_or("", |(_, source)| source.as_str())
                        ),
                    };
                    let dir = store
                        .layout()
                        .root()
                        .join("cache-mounts")
                        .join(Digest::of(identity.as_bytes()).hex());
                    if !dir.is_dir() {
                        use std::os::unix::fs::PermissionsExt;
                        let parent = store.layout().root().join("cache-mounts");
                        let staging = tempfile::Builder::new()
                            .prefix("new-")
                            .tempdir_in({
                                fs::create_dir_all(&parent)
                                    .map_err(|source| BuildError::at(span, source))?;
                                &parent
                            })
                            .map_err(|source| BuildError::at(span, source))?;
                        fs::set_permissions(staging.path(), fs::Permissions::from_mode(mode))
                            .and_then(|()| {
                                std::os::unix::fs::chown(staging.path(), Some(uid), Some(gid))
                            })
                            .map_err(|source| BuildError::at(span, source))?;
                        match &seed {
                            Some((MountSource::Filesystem(_view, fs, _), source)) => {
                                let contents = format!("{}/.", source.trim_end_matches('/'));
                                fs.copy_out(
                                    &contents,
                                    CopyTarget::Path::<io::Sink>(staging.path()),
                                    &CopyOptions {
                                        archive: true,
                                        follow_link: true,
                                    },
                                )
                                .map_err(|error| BuildError::at(span, error))?;
                            }
                            Some((MountSource::Context(context), source)) => {
                                seed_from_context(context, source, staging.path())
                                    .map_err(|message| BuildError::at(span, message))?;
                            }
                            None => {}
                        }
                        // Another build may have made it first: keep theirs.
                        let staged = staging.keep();
                        if fs::rename(&staged, &dir).is_err() {
                            let _ = fs::remove_dir_all(&staged);
                        }
                    }
                    let sharing = mount.sharing.unwrap_or(kiln_parser::ast::Sharing::Shared);
                    match sharing {
                        kiln_parser::ast::Sharing::Locked => mounts.locked.push(dir.clone()),
                        kiln_parser::ast::Sharing::Private => {
                            mounts.private.push(PrivateCache {
                                bind: mounts.binds.len(),
                                dir: dir.clone(),
                                uid,
                                gid,
                                mode,
                            });
                        }
                        kiln_parser::ast::Sharing::Shared => {}
                    }
                    mounts.definition.push(serde_json::json!({
                        "type": "cache",
                        "target": target,
                        "id": id,
                        "sharing": format!("{sharing:?}"),
                    }));
                    mounts.binds.push(kiln_runtime::BindMount {
                        source: dir,
                        destination: target,
                        read_only: mount.is_read_only(),
                        copy_up: false,
                    });
                }
                MountKind::Tmpfs => {
                    let target = target
                        .ok_or_else(|| BuildError::at(span, "a tmpfs mount needs a target"))?;
                    let size = match expand(&mount.size)? {
                        None => None,
                        Some(text) => {
                            Some(kiln_cache::units::ram_in_bytes(&text).ok_or_else(|| {
                                BuildError::at(span, format!("invalid tmpfs size {text:?}"))
                            })?)
                        }
                    };
                    mounts
                        .definition
                        .push(serde_json::json!({"type": "tmpfs", "target": target, "size": size}));
                    mounts.tmpfs.push(kiln_runtime::TmpfsMount {
                        destination: target,
                        size,
                        mode: None,
                        read_only: false,
                        exec: true,
                        suid: false,
                        dev: false,
                        ..Default::default()
                    });
                }
                MountKind::Secret => {
                    let id = match (expand(&mount.id)?, &target) {
                        (Some(id), _) => id,
                        (None, Some(target)) => {
                            target.rsplit('/').next().unwrap_or_default().to_string()
                        }
                        (None, None) => {
                            return Err(BuildError::at(
                                span,
                                "a secret mount needs an id or a target",
                            ));
                        }
                    };
                    let Some(content) = self.options.secrets.get(&id) else {
                        if mount.required == Some(true) {
                            return Err(BuildError::at(
                                span,
                                format!(
                                    "secret {id} not found: give it with --secret id={id},src=FILE"
                                ),
                            ));
                        }
                        continue;
                    };
                    let env_name = expand(&mount.env)?;
                    mounts.definition.push(serde_json::json!({"type": "secret", "id": id, "target": target, "env": env_name}));
                    if let Some(name) = env_name {
                        mounts
                            .env
                            .push(format!("{name}={}", String::from_utf8_lossy(content)));
                        if target.is_none() {
                            continue;
                        }
                    }
                    let destination = target.unwrap_or_else(|| format!("/run/secrets/{id}"));
                    mounts.secrets.push((
                        destination,
                        content.clone(),
                        number(&mount.mode, 8, 0o400)?,
                    ));
                }
                MountKind::Bind => {
                    let target = target
                        .ok_or_else(|| BuildError::at(span, "a bind mount needs a target"))?;
                    let read_only = mount.is_read_only();
                    let source = expand(&mount.source)?.unwrap_or_else(|| ".".to_string());
                    let from = expand(&mount.from)?;
                    let origin = match &from {
                        None => MountSource::Context(&self.options.context),
                        Some(from) => self.mount_source(store, stages, results, from, span)?,
                    };
                    match origin {
                        MountSource::Context(context) => {
                            let found = context.sources(&source).map_err(|error| {
                                context_error(span, "RUN --mount", &source, error)
                            })?;
                            let [found] = found.as_slice() else {
                                return Err(BuildError::at(
                                    span,
                                    format!("bind mount source {source:?} must name one path"),
                                ));
                            };
                            let mut inputs = BTreeMap::new();
                            let digest =
                                context.digest(found, None, &mut inputs).map_err(|error| {
                                    context_error(span, "RUN --mount", &source, error)
                                })?;
                            mounts.definition.push(serde_json::json!({"type": "bind", "target": target, "source": found.relative, "from": from, "rw": !read_only, "content": digest.to_string()}));
                            if !read_only {
                                // Writes are discarded: the step gets a copy.
                                mounts.copies.push(PendingCopy {
                                    bind: mounts.binds.len(),
                                    origin: CopyOrigin::Context(context, found.clone()),
                                });
                            }
                            mounts.binds.push(kiln_runtime::BindMount {
                                source: found.host.clone(),
                                destination: target,
                                read_only,
                                copy_up: false,
                            });
                        }
                        MountSource::Filesystem(view, fs, key) => {
                            let path = kiln_parser::path::clean(&format!("/{source}"));
                            if fs
                                .kind(&path)
                                .map_err(|error| BuildError::at(span, error))?
                                == PathKind::Missing
                            {
                                return Err(BuildError::at(
                                    span,
                                    format!(
                                        "bind mount source {path:?}: not found in {}",
                                        from.clone().unwrap_or_default()
                                    ),
                                ));
                            }
                            mounts.definition.push(serde_json::json!({"type": "bind", "target": target, "source": path, "from": key.to_string(), "rw": !read_only}));
                            // The stage's files are copied out for the step (its snapshots
                            // are shared and must stay untouched).
                            mounts.copies.push(PendingCopy {
                                bind: mounts.binds.len(),
                                origin: CopyOrigin::Filesystem(view, fs, path),
                            });
                            mounts.binds.push(kiln_runtime::BindMount {
                                source: PathBuf::new(),
                                destination: target,
                                read_only,
                                copy_up: false,
                            });
                        }
                    }
                }
                MountKind::Ssh => {
                    // BuildKit's defaults: id `default`, `/run/buildkit/ssh_agent.N` (N counts
                    // the step's ssh mounts), SSH_AUTH_SOCK naming the first one.
                    let id = expand(&mount.id)?.unwrap_or_else(|| "default".to_string());
                    let target =
                        target.unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{}", mounts.ssh));
                    let Some(socket) = self.options.ssh.get(&id) else {
                        if mount.required == Some(true) {
                            return Err(BuildError::At {
                                span,
                                message: format!("no SSH agent socket with id {id:?} was given"),
                                hint: Some(if id == "default" {
                                    "give one with --ssh default (uses $SSH_AUTH_SOCK)".to_string()
                                } else {
                                    format!("give one with --ssh {id}=SOCKET")
                                }),
                                exit_code: None,
                            });
                        }
                        continue;
                    };
                    mounts
                        .definition
                        .push(serde_json::json!({"type": "ssh", "id": id, "target": target}));
                    if mounts.ssh == 0 {
                        mounts.env.push(format!("SSH_AUTH_SOCK={target}"));
                    }
                    mounts.ssh += 1;
                    mounts.binds.push(kiln_runtime::BindMount {
                        source: socket.clone(),
                        destination: target,
                        // Connecting writes nothing to the file system.
                        read_only: mount.is_read_only(),
                        copy_up: false,
                    });
                }
            }
        }
        Ok(mounts)
    }

    /// The environment of a RUN process: the config's env, then declared build args the env
    /// does not set, then proxy args.
    fn run_env(&self, state: &State, args: &BTreeMap<String, String>) -> Vec<String> {
        let mut env: Vec<String> = state.config.config.env.clone().unwrap_or_default();
        let set: BTreeSet<String> = env
            .iter()
            .filter_map(|entry| entry.split_once('=').map(|(name, _)| name.to_string()))
            .collect();
        for (name, value) in args {
            if !set.contains(name) {
                env.push(format!("{name}={value}"));
            }
        }
        for name in PROXY_ARGS {
            if let Some(value) = self.options.build_args.get(name)
                && !args.contains_key(name)
            {
                env.push(format!("{name}={value}"));
            }
        }
        env
    }

    /// The process a RUN starts: exec form as written; shell form through the config's
    /// shell, its heredocs appended; a lone `#!` heredoc executed directly from its mount.
    fn run_argv(&self, state: &State, run: &kiln_parser::ast::Run) -> Vec<String> {
        let config = &state.config.config;
        match &run.command {
            CommandLine::Exec(words) => words.iter().map(|word| word.text.clone()).collect(),
            CommandLine::Shell(text) => {
                if let Some(heredoc) = whole_heredoc(run) {
                    if let Some(path) = script_path(heredoc) {
                        // Executed directly: its `#!` line names the interpreter.
                        return vec![path];
                    }
                    return command_vector(
                        config,
                        &CommandLine::Shell(kiln_parser::ast::Word {
                            text: heredoc.content.clone(),
                            span: text.span,
                        }),
                    );
                }
                let mut full = text.text.clone();
                for heredoc in &run.heredocs {
                    full.push('\n');
                    full.push_str(&heredoc.content);
                    full.push_str(&heredoc.name);
                }
                command_vector(
                    config,
                    &CommandLine::Shell(kiln_parser::ast::Word {
                        text: full,
                        span: text.span,
                    }),
                )
            }
        }
    }

    /// The shared cache lookup / execute / record path of file-system steps. `execute` writes
    /// the step's changes into the upper dir it is given (over the parent's layers) and may
    /// change the config.
    fn cached_or(
        &self,
        store: &mut Store,
        state: &State,
        step_def: FsStep<'_>,
        step: usize,
        no_cache: bool,
        execute: impl FnOnce(&mut Store, &Path) -> Result<(), BuildError>,
    ) -> Result<State, BuildError> {
        let definition = sha(&[
            state.key.as_bytes(),
            &image::canonical_json(&step_def.definition)?,
        ]);
        let key = sha(&[
            definition.as_bytes(),
            serde_json::to_string(&step_def.inputs)?.as_bytes(),
        ]);
        if !no_cache && let Some(record) = store.build_cache_lookup(&key)? {
            let config: ImageConfig = serde_json::from_slice(&store.blobs().read(&record.config)?)?;
            self.progress.event(Event::Cached { step });
            if let Ok(mut counts) = self.counts.lock() {
                counts.1 += 1;
            }
            return Ok(State {
                time: config
                    .history
                    .last()
                    .and_then(|entry| entry.created.clone())
                    .or_else(|| state.time.clone()),
                config,
                layers: record.layers,
                key,
                args: state.args.clone(),
            });
        }
        if !no_cache {
            let reason = explain_miss(store, &definition, &step_def.inputs)?;
            self.progress.event(Event::Missed { step, reason });
        }
        let work = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(store.layout().tmp())
            .map_err(|source| {
                BuildError::at(
                    step_def.statement.span,
                    format!("creating a build directory: {source}"),
                )
            })?;
        let upper = work.path().join("upper");
        fs::create_dir(&upper).map_err(|source| {
            BuildError::at(
                step_def.statement.span,
                format!("creating {}: {source}", upper.display()),
            )
        })?;
        execute(store, work.path())?;
        let layer = layer_from_upper(
            store,
            &state.layers,
            &upper,
            &WriteOptions {
                compression: self.options.compression,
                source_date_epoch: self.options.source_date_epoch,
            },
        )
        .map_err(|error| BuildError::at(step_def.statement.span, error))?;
        let time = self.now();
        let mut next = state.clone();
        next.key = key;
        next.time = Some(time.clone());
        let empty_layer = layer.is_none();
        let size = layer.as_ref().map_or(0, |layer| layer.size);
        if let Some(layer) = layer {
            next.layers.push(layer);
        }
        next.config.history.push(History {
            created: Some(time),
            created_by: Some(step_def.created_by.clone()),
            comment: Some("buildkit.dockerfile.v0".to_string()),
            empty_layer,
            ..History::default()
        });
        let config_blob = store
            .blobs()
            .put_bytes(&image::canonical_json(&next.config)?)?;
        store.build_cache_insert(&NewCacheRecord {
            key,
            definition,
            description: &step_def.created_by,
            inputs: &step_def.inputs,
            config: config_blob.digest,
            layers: &next.layers,
            size,
        })?;
        if let Ok(mut counts) = self.counts.lock() {
            counts.0 += 1;
        }
        drop(work);
        Ok(next)
    }

    #[allow(clippy::too_many_arguments)]
    // The spec is filled field by field: it grows with the runtime, defaults suit a build.
    #[allow(clippy::field_reassign_with_default)]
    fn execute_run(
        &self,
        store: &Store,
        state: &State,
        work: &Path,
        argv: Vec<String>,
        env: Vec<String>,
        network: &str,
        mounts: &RunMounts<'_>,
        statement: &Statement,
        step: usize,
    ) -> Result<(), BuildError> {
        let id = format!(
            "kiln-build-{}",
            &sha(&[
                work.as_os_str().as_encoded_bytes(),
                &std::process::id().to_le_bytes()
            ])
            .hex()[..24]
        );
        // Locks of `sharing=locked` cache mounts, held while the step runs.
        let _locks = mounts.lock(statement.span)?;
        let mut binds = mounts.binds.clone();
        let _private_locks = mounts.take_private(work, &mut binds, statement.span)?;
        // Bind sources the step gets its own copy of.
        for (index, copy) in mounts.copies.iter().enumerate() {
            let name = format!("mount-{index}");
            let destination = work.join(&name);
            let at = |message: String| BuildError::at(statement.span, message);
            match &copy.origin {
                CopyOrigin::Filesystem(_view, fs, path) => fs
                    .copy_out(
                        path,
                        CopyTarget::Path::<io::Sink>(&destination),
                        &CopyOptions {
                            archive: true,
                            follow_link: true,
                        },
                    )
                    .map_err(|error| at(format!("copying {path} for a bind mount: {error}")))?,
                CopyOrigin::Context(context, source) => {
                    let mut spool = tempfile::tempfile_in(work)
                        .map_err(|error| at(format!("copying a bind mount source: {error}")))?;
                    {
                        let mut archive = tar::Builder::new(&mut spool);
                        context
                            .append(
                                source,
                                &name,
                                &Ownership::default(),
                                None,
                                None,
                                &mut archive,
                            )
                            .map_err(|error| at(error.to_string()))?;
                        archive
                            .finish()
                            .map_err(|error| at(format!("copying a bind mount source: {error}")))?;
                    }
                    use std::io::Seek;
                    spool
                        .rewind()
                        .map_err(|error| at(format!("copying a bind mount source: {error}")))?;
                    kiln_cache::layer::apply_layer(
                        work,
                        spool,
                        &kiln_cache::layer::ApplyOptions::new(kiln_cache::layer::Whiteouts::Apply),
                    )
                    .map_err(|error| at(format!("copying a bind mount source: {error}")))?;
                }
            }
            if let Some(bind) = binds.get_mut(copy.bind) {
                bind.source = destination;
            }
        }
        // Secrets go to files in the step's directory (never in the upper dir), bound read-only.
        for (index, (destination, content, mode)) in mounts.secrets.iter().enumerate() {
            let path = work.join(format!("secret-{index}"));
            fs::write(&path, content)
                .and_then(|()| {
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(&path, fs::Permissions::from_mode(*mode))
                })
                .map_err(|source| {
                    BuildError::at(statement.span, format!("writing a secret: {source}"))
                })?;
            binds.push(kiln_runtime::BindMount {
                source: path,
                destination: destination.clone(),
                read_only: true,
                copy_up: false,
            });
        }
        // Paths the image lacks that the runtime will create only as mount points: removed
        // from the layer afterwards when still empty, as BuildKit's mount stub cleaner does.
        let stubs = {
            let (_view, lower) = image_view(store, &state.layers)?;
            let mut stubs = BTreeSet::new();
            let destinations = binds
                .iter()
                .map(|bind| bind.destination.as_str())
                .chain(mounts.tmpfs.iter().map(|tmpfs| tmpfs.destination.as_str()));
            for destination in destinations {
                let mut prefix = String::new();
                for component in destination.split('/').filter(|c| !c.is_empty()) {
                    prefix = format!("{prefix}/{component}");
                    if matches!(lower.kind(&prefix), Ok(PathKind::Missing)) {
                        stubs.insert(prefix.clone());
                    }
                }
            }
            stubs
        };
        let work_dir = work.join("work");
        fs::create_dir_all(&work_dir).map_err(|source| {
            BuildError::at(
                statement.span,
                format!("creating {}: {source}", work_dir.display()),
            )
        })?;
        let config = &state.config.config;
        // Field by field: the spec grows with the runtime, and defaults are right for a build.
        let mut spec = kiln_runtime::Spec::default();
        spec.id = id;
        spec.container_dir = work.to_path_buf();
        spec.lower_dirs = state
            .layers
            .iter()
            .map(|layer| store.snapshot_path(&layer.chain_id))
            .collect();
        spec.upper_dir = work.join("upper");
        spec.work_dir = work_dir;
        spec.args = argv.clone();
        spec.env = env;
        spec.cwd = config
            .working_dir
            .clone()
            .filter(|dir| !dir.is_empty())
            .unwrap_or_else(|| "/".to_string());
        spec.user = config.user.clone().filter(|user| !user.is_empty());
        spec.hostname = BUILD_HOSTNAME.to_string();
        spec.network = if network == "none" {
            kiln_runtime::Network::None
        } else {
            kiln_runtime::Network::Host
        };
        spec.mounts = binds;
        spec.tmpfs = mounts.tmpfs.clone();
        let (out_reader, out_writer) = io::pipe().map_err(|source| {
            BuildError::at(statement.span, format!("creating a pipe: {source}"))
        })?;
        let err_writer = out_writer.try_clone().map_err(|source| {
            BuildError::at(statement.span, format!("creating a pipe: {source}"))
        })?;
        let io = kiln_runtime::Io {
            stdin: Stdio::null(),
            stdout: Stdio::from(out_writer),
            stderr: Stdio::from(err_writer),
        };
        let program = &self.options.sandbox.program;
        let init_args: Vec<&str> = self
            .options
            .sandbox
            .args
            .iter()
            .map(String::as_str)
            .collect();
        let outcome = std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                let mut lines = BufReader::new(out_reader);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match lines.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => self.progress.event(Event::Output {
                            step,
                            line: String::from_utf8_lossy(&line)
                                .trim_end_matches('\n')
                                .to_string(),
                        }),
                    }
                }
            });
            let outcome = kiln_runtime::run(&spec, program, &init_args, io);
            let _ = reader.join();
            outcome
        });
        // Deepest first, so a parent made only for a mount point is empty when it comes.
        let upper = work.join("upper");
        for stub in stubs.iter().rev() {
            let path = upper.join(stub.trim_start_matches('/'));
            match fs::symlink_metadata(&path) {
                Ok(metadata) if metadata.is_file() && metadata.len() == 0 => {
                    let _ = fs::remove_file(&path);
                }
                Ok(metadata) if metadata.is_dir() => {
                    // Fails, as it should, when the step put something there.
                    let _ = fs::remove_dir(&path);
                }
                Ok(_) | Err(_) => {}
            }
        }
        let shown = argv.join(" ");
        match outcome {
            Ok(outcome) if outcome.code() == 0 => Ok(()),
            Ok(outcome) => Err(BuildError::At {
                span: statement.span,
                message: format!(
                    "process \"{shown}\" did not complete successfully: exit code: {}",
                    outcome.code()
                ),
                hint: None,
                exit_code: Some(outcome.code()),
            }),
            Err(error) => Err(BuildError::At {
                span: statement.span,
                message: format!("process \"{shown}\" could not run: {error}"),
                hint: None,
                exit_code: Some(error.exit_code()),
            }),
        }
    }

    /// WORKDIR after its config change: creates the directory when the image lacks it (a
    /// cached file-system step) and records the instruction in history either way.
    fn workdir_step(
        &self,
        store: &mut Store,
        state: &State,
        statement: &Statement,
        step: usize,
        no_cache: bool,
    ) -> Result<State, BuildError> {
        let path = state
            .config
            .config
            .working_dir
            .clone()
            .unwrap_or_else(|| "/".to_string());
        let (_view, lower) = image_view(store, &state.layers)?;
        // An existing directory needs no layer.
        if path == "/" || matches!(lower.kind(&path), Ok(PathKind::Directory)) {
            if !state.layers.is_empty() {
                self.progress.event(Event::Cached { step });
            }
            let mut next = state.clone();
            self.config_history(&mut next, statement);
            return Ok(next);
        }
        // BuildKit creates it as the current USER (resolved in the image's passwd and group).
        let (uid, gid) = match state.config.config.user.as_deref() {
            Some(user) if !user.is_empty() => resolve_chown(&lower, user)
                .map_err(|message| BuildError::at(statement.span, message))?,
            _ => (0, 0),
        };
        let step_def = FsStep {
            statement,
            created_by: instruction_text(statement),
            definition: serde_json::json!({"op": "mkdir", "path": path, "owner": [uid, gid]}),
            inputs: BTreeMap::new(),
        };
        let mtime = self.options.source_date_epoch.unwrap_or(0).max(0) as u64;
        self.cached_or(store, state, step_def, step, no_cache, |store, work| {
            let fs = ContainerFs::over_layers(store, work.join("upper"), &state.layers);
            fs.make_dirs(&path, uid, gid, mtime)
                .map_err(|error| BuildError::at(statement.span, error))
        })
    }
}

/// A read-only view of `layers` (an empty upper dir over their snapshots). Keep the returned
/// directory alive as long as the view is used.
fn image_view(
    store: &Store,
    layers: &[LayerRecord],
) -> Result<(tempfile::TempDir, ContainerFs), BuildError> {
    let tmp = store.layout().tmp();
    let empty = tempfile::Builder::new()
        .prefix("view-")
        .tempdir_in(&tmp)
        .map_err(|source| StoreError::Io {
            path: tmp.clone(),
            source,
        })?;
    let fs = ContainerFs::over_layers(store, empty.path(), layers);
    Ok((empty, fs))
}

/// Where a `RUN --mount=from=` reads: a local context or another file system (a stage, an
/// image) with its key.
enum MountSource<'c> {
    Context(&'c Context),
    Filesystem(tempfile::TempDir, ContainerFs, Digest),
}

/// A bind whose source is copied into the step's directory when it runs.
#[derive(Debug)]
struct PendingCopy<'c> {
    /// Its index in [`RunMounts::binds`].
    bind: usize,
    origin: CopyOrigin<'c>,
}

#[derive(Debug)]
enum CopyOrigin<'c> {
    Context(&'c Context, Source),
    /// The view (kept alive), and the absolute path in it.
    Filesystem(tempfile::TempDir, ContainerFs, String),
}

/// A `sharing=private` cache mount: used directly when no other build holds it, otherwise
/// replaced by a fresh, empty directory for the step.
#[derive(Debug)]
struct PrivateCache {
    bind: usize,
    dir: PathBuf,
    uid: u32,
    gid: u32,
    mode: u32,
}

/// The `RUN --mount`s of a step, resolved.
#[derive(Debug, Default)]
struct RunMounts<'c> {
    /// Sources copied for the step when it runs (binds from stages, `rw` binds).
    copies: Vec<PendingCopy<'c>>,
    /// `sharing=private` caches.
    private: Vec<PrivateCache>,
    binds: Vec<kiln_runtime::BindMount>,
    tmpfs: Vec<kiln_runtime::TmpfsMount>,
    /// (destination, content, mode) of secret files.
    secrets: Vec<(String, Vec<u8>, u32)>,
    /// `secret,env=NAME` and `SSH_AUTH_SOCK`: variables for the process, never in keys or
    /// history.
    env: Vec<String>,
    /// How many ssh agent sockets the step has.
    ssh: usize,
    /// Cache directories to lock exclusively while the step runs (`sharing=locked`).
    locked: Vec<PathBuf>,
    /// What the cache key sees of them (no secret content, no host paths).
    definition: Vec<serde_json::Value>,
}

impl RunMounts<'_> {
    /// Takes each `sharing=private` cache: its lock when free (held while the step runs, and
    /// returned), else a fresh empty directory in `work` replaces it in `binds`.
    fn take_private(
        &self,
        work: &Path,
        binds: &mut [kiln_runtime::BindMount],
        span: Span,
    ) -> Result<Vec<fs::File>, BuildError> {
        let mut held = Vec::new();
        for (index, private) in self.private.iter().enumerate() {
            let path = private.dir.with_extension("lock");
            let io_error =
                |source: io::Error| BuildError::at(span, format!("{}: {source}", path.display()));
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io_error)?;
            match file.try_lock() {
                Ok(()) => held.push(file),
                Err(fs::TryLockError::WouldBlock) => {
                    use std::os::unix::fs::PermissionsExt;
                    let fresh = work.join(format!("private-{index}"));
                    fs::create_dir(&fresh)
                        .and_then(|()| {
                            fs::set_permissions(&fresh, fs::Permissions::from_mode(private.mode))
                        })
                        .and_then(|()| {
                            std::os::unix::fs::chown(&fresh, Some(private.uid), Some(private.gid))
                        })
                        .map_err(io_error)?;
                    if let Some(bind) = binds.get_mut(private.bind) {
                        bind.source = fresh;
                    }
                }
                Err(fs::TryLockError::Error(source)) => return Err(io_error(source)),
            }
        }
        Ok(held)
    }

    fn lock(&self, span: Span) -> Result<Vec<fs::File>, BuildError> {
        self.locked
            .iter()
            .map(|dir| {
                let path = dir.with_extension("lock");
                let file = fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .map_err(|source| {
                        BuildError::at(span, format!("{}: {source}", path.display()))
                    })?;
                file.lock().map_err(|source| {
                    BuildError::at(span, format!("locking {}: {source}", path.display()))
                })?;
                Ok(file)
            })
            .collect()
    }
}

/// A COPY or ADD with its words expanded.
struct CopyRequest<'a> {
    sources: Vec<String>,
    heredocs: &'a [kiln_parser::ast::Heredoc],
    destination: String,
    chown: Option<String>,
    chmod: Option<String>,
    from: Option<String>,
    /// ADD: unpack local archives, download URLs, check out git repositories.
    add: bool,
    /// `--parents`: keep each source's path (from the context root or a `/./` pivot).
    parents: bool,
    /// `--exclude` patterns (`.dockerignore` syntax).
    excludes: Vec<String>,
    /// ADD `--checksum=sha256:...` of a URL source.
    checksum: Option<String>,
    /// ADD `--keep-git-dir`.
    keep_git_dir: bool,
}

/// A source of a COPY or ADD, resolved.
enum Item {
    /// A path of the build context or a named context, with its `--parents` path.
    Context(Source, Option<String>),
    Heredoc(String, String),
    /// An absolute path in another stage or image, with its `--parents` path.
    Foreign(String, Option<String>),
    Download(remote::Download),
    /// An http(s) URL with a `--checksum`, downloaded only if the step runs.
    Url(String),
    /// A git checkout (an index into the step's checkouts).
    Checkout(usize),
}

/// An instruction as history records it: `WORKDIR /app`.
fn instruction_text(statement: &Statement) -> String {
    format!(
        "{} {}",
        statement.keyword.text.to_ascii_uppercase(),
        statement.original.trim()
    )
}

/// The instructions that change files.
#[derive(Debug, Clone, Copy)]
enum FsOp<'s> {
    Run(&'s kiln_parser::ast::Run),
    Copy(&'s kiln_parser::ast::Copy),
    Add(&'s kiln_parser::ast::Add),
}

/// Parses an ONBUILD trigger as recorded in an image config (`RUN echo hi`). Errors point at
/// the FROM line that brings it in; nested ONBUILD, FROM and MAINTAINER triggers are refused
/// by the parser, as Docker does.
fn parse_trigger(expression: &str, from_span: Span) -> Result<Statement, BuildError> {
    let text = format!("FROM scratch\nONBUILD {expression}\n");
    let invalid = |reason: String| {
        BuildError::at(
            from_span,
            format!("invalid ONBUILD trigger {expression:?} in the base image: {reason}"),
        )
    };
    let dockerfile = kiln_parser::parse(&text).map_err(|error| invalid(error.kind.to_string()))?;
    if let [_, statement] = dockerfile.statements.as_slice()
        && let Instruction::Onbuild(onbuild) = &statement.instruction
    {
        return Ok((*onbuild.trigger).clone());
    }
    Err(invalid("expected one instruction".to_string()))
}

/// The other stages or images an instruction reads (`COPY --from`, `RUN --mount=from=`),
/// unexpanded, with where they are written.
fn statement_sources(statement: &Statement) -> Vec<(String, Span)> {
    let words: Vec<&kiln_parser::ast::Word> =
        if let Instruction::Copy(copy) = &statement.instruction {
            copy.from.iter().collect()
        } else if let Instruction::Run(run) = &statement.instruction {
            run.mounts
                .iter()
                .filter_map(|mount| mount.from.as_ref())
                .collect()
        } else {
            Vec::new()
        };
    words
        .into_iter()
        .map(|word| (word.text.clone(), word.span))
        .collect()
}

fn stage_reference(planned: &[PlannedStage<'_>], name: &str) -> Option<usize> {
    if let Ok(index) = name.parse::<usize>() {
        return (index < planned.len()).then_some(index);
    }
    planned
        .iter()
        .position(|stage| stage.name.as_deref() == Some(name))
}

fn is_proxy(entry: &str) -> bool {
    entry
        .split_once('=')
        .is_some_and(|(name, _)| PROXY_ARGS.contains(&name))
}

fn config_error(statement: &Statement, error: ConfigError) -> BuildError {
    BuildError::at(statement.span, error)
}

/// Why a step missed the cache, from the last record with the same definition.
fn explain_miss(
    store: &Store,
    definition: &Digest,
    inputs: &BTreeMap<String, String>,
) -> Result<String, BuildError> {
    let Some(previous) = store.build_cache_same_definition(definition)? else {
        return Ok("no earlier build ran this step on the same previous steps".to_string());
    };
    Ok(describe_input_changes(&previous, inputs))
}

fn describe_input_changes(previous: &CacheRecord, inputs: &BTreeMap<String, String>) -> String {
    let mut changes = Vec::new();
    for (name, digest) in inputs {
        match previous.inputs.get(name) {
            None => changes.push(format!("{name} is new")),
            Some(old) if old != digest => changes.push(format!("{name} changed")),
            Some(_) => {}
        }
    }
    for name in previous.inputs.keys() {
        if !inputs.contains_key(name) {
            changes.push(format!("{name} is gone"));
        }
    }
    if changes.is_empty() {
        return "the step's inputs are unchanged but its cached result is gone (pruned)"
            .to_string();
    }
    let more = changes.len().saturating_sub(5);
    changes.truncate(5);
    let mut text = changes.join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

// ------------------------------------------------------------------------------------------
// COPY and ADD

/// Numeric owner of `--chown`, resolved in the image's `/etc/passwd` and `/etc/group`.
fn resolve_chown(fs: &ContainerFs, chown: &str) -> Result<(u32, u32), String> {
    let (user, group) = match chown.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (chown, None),
    };
    let lookup = |file: &str, name: &str, field: usize| -> Result<Option<(u32, u32)>, String> {
        let Some(text) = read_image_file(fs, file) else {
            return Ok(None);
        };
        Ok(text.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name) && fields.len() > field).then(|| {
                let first = fields.get(2).and_then(|id| id.parse().ok()).unwrap_or(0);
                let second = fields
                    .get(3)
                    .and_then(|id| id.parse().ok())
                    .unwrap_or(first);
                (first, second)
            })
        }))
    };
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => lookup("/etc/passwd", user, 3)?.ok_or_else(|| {
            format!("unable to find user {user}: no matching entries in passwd file")
        })?,
    };
    let gid = match group {
        None => {
            if user.parse::<u32>().is_ok() {
                uid
            } else {
                primary_gid
            }
        }
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup("/etc/group", group, 2)?
                .map(|(gid, _)| gid)
                .ok_or_else(|| {
                    format!("unable to find group {group}: no matching entries in group file")
                })?,
        },
    };
    Ok((uid, gid))
}

/// A small text file of the image (through the merged view), if it exists.
fn read_image_file(fs: &ContainerFs, path: &str) -> Option<String> {
    let mut archive = Vec::new();
    fs.copy_out(
        path,
        CopyTarget::Archive(&mut archive),
        &CopyOptions::default(),
    )
    .ok()?;
    let mut reader = tar::Archive::new(archive.as_slice());
    let mut entry = reader.entries().ok()?.next()?.ok()?;
    let mut text = String::new();
    entry.read_to_string(&mut text).ok()?;
    Some(text)
}

/// Whether a file starts like an archive ADD unpacks (tar, possibly compressed).
fn is_archive(path: &Path) -> bool {
    let mut magic = [0u8; 262];
    let Ok(mut file) = fs::File::open(path) else {
        return false;
    };
    let mut read = 0;
    while read < magic.len() {
        match file.read(&mut magic[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    let magic = &magic[..read];
    magic.starts_with(&[0x1f, 0x8b])
        || magic.starts_with(b"BZh")
        || magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0])
        || magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || (magic.len() >= 262 && &magic[257..262] == b"ustar")
}

/// The buffer on each side of the pipe that streams a COPY's tar into the image.
const COPY_BUFFER: usize = 256 * 1024;

/// The tar writer a COPY's sources are archived into (see `copy_archive` in `copy_step`).
type CopyArchive = tar::Builder<io::BufWriter<io::PipeWriter>>;

impl Build<'_> {
    #[allow(clippy::too_many_arguments)]
    fn copy_step(
        &self,
        store: &mut Store,
        stages: &[PlannedStage<'_>],
        results: &Mutex<HashMap<usize, State>>,
        state: &State,
        statement: &Statement,
        step: usize,
        no_cache: bool,
        request: CopyRequest<'_>,
    ) -> Result<State, BuildError> {
        let span = statement.span;
        let keyword = statement.keyword.text.to_ascii_uppercase();
        let workdir = state
            .config
            .config
            .working_dir
            .clone()
            .unwrap_or_else(|| "/".to_string());
        // Cleaned lexically before anything is resolved in the image, as BuildKit does
        // (`path.Join`): `/symlink/../` is `/`, whatever `/symlink` points at. Whether it
        // names a directory comes from the text as written (`dest_is_dir_syntax`).
        let destination = if request.destination.starts_with('/') {
            kiln_parser::path::clean(&request.destination)
        } else {
            kiln_parser::path::clean(&format!("{workdir}/{}", request.destination))
        };
        let dest_is_dir_syntax = request.destination.ends_with('/')
            || request.destination.ends_with("/.")
            || request.destination == "."
            || request.destination.is_empty();
        let (_view, image_fs) = image_view(store, &state.layers)?;
        let (uid, gid) = match &request.chown {
            Some(chown) => {
                resolve_chown(&image_fs, chown).map_err(|message| BuildError::at(span, message))?
            }
            None => (0, 0),
        };
        let mode = request
            .chmod
            .as_deref()
            .map(Chmod::parse)
            .transpose()
            .map_err(|error| BuildError::at(span, error))?;
        let ownership = Ownership {
            uid,
            gid,
            mode: mode.clone(),
        };
        let exclude = if request.excludes.is_empty() {
            None
        } else {
            Some(
                Matcher::parse(&request.excludes.join("\n"))
                    .map_err(|error| BuildError::at(span, format!("invalid --exclude: {error}")))?,
            )
        };
        let heredoc_names: BTreeSet<String> = request
            .heredocs
            .iter()
            .map(|heredoc| heredoc.name.clone())
            .collect();

        // Where the sources come from: heredocs, a context (the build's, a named one, a git
        // checkout), another stage or image, or downloads.
        let mut items = Vec::new();
        let mut inputs = BTreeMap::new();
        let mut several = request.sources.len() > 1;
        let mut foreign = None;
        let mut named_context = None;
        if let Some(from) = &request.from {
            match self.options.named_contexts.get(&from.to_ascii_lowercase()) {
                Some(NamedContext::Directory(context)) => named_context = Some(context),
                Some(NamedContext::Image(reference)) => {
                    foreign = Some(self.foreign_fs(store, stages, results, reference, span)?);
                }
                None => foreign = Some(self.foreign_fs(store, stages, results, from, span)?),
            }
        }
        let context = named_context.unwrap_or(&self.options.context);
        // Downloads and checkouts live as long as the step.
        let mut fetched: Vec<tempfile::TempDir> = Vec::new();
        let mut checkouts: Vec<Context> = Vec::new();
        let fetch_dir = |fetched: &mut Vec<tempfile::TempDir>| -> Result<PathBuf, BuildError> {
            let dir = tempfile::Builder::new()
                .prefix("fetch-")
                .tempdir_in(store.layout().tmp())
                .map_err(|source| BuildError::at(span, source))?;
            let path = dir.path().to_path_buf();
            fetched.push(dir);
            Ok(path)
        };
        let checksum = request
            .checksum
            .as_deref()
            .map(remote::parse_checksum)
            .transpose()
            .map_err(|error| BuildError::at(span, error))?;
        for source in &request.sources {
            if let Some(name) = source
                .strip_prefix("<<")
                .map(|name| name.trim_start_matches('-').trim_matches(['"', '\'']))
                && heredoc_names.contains(name)
            {
                let heredoc = request
                    .heredocs
                    .iter()
                    .find(|heredoc| heredoc.name == name)
                    .ok_or_else(|| BuildError::at(span, "heredoc not found"))?;
                inputs.insert(
                    format!("<<{name}"),
                    Digest::of(heredoc.content.as_bytes()).to_string(),
                );
                items.push(Item::Heredoc(name.to_string(), heredoc.content.clone()));
                continue;
            }
            if request.add && remote::is_git_url(source) {
                let git = remote::GitSource::parse(source);
                let dir = fetch_dir(&mut fetched)?;
                let checkout = remote::clone(&git, &dir, request.keep_git_dir)
                    .map_err(|error| BuildError::at(span, error))?;
                inputs.insert(
                    format!("git:{source}"),
                    format!("{} keep={}", checkout.commit, request.keep_git_dir),
                );
                checkouts.push(Context::new(checkout.root, None));
                items.push(Item::Checkout(checkouts.len() - 1));
                continue;
            }
            if request.add && remote::is_http_url(source) {
                if let Some(checksum) = &checksum {
                    // The checksum names the content: no download unless the step runs.
                    inputs.insert(format!("url:{source}"), checksum.to_string());
                    items.push(Item::Url(source.clone()));
                    continue;
                }
                let dir = fetch_dir(&mut fetched)?;
                let download = remote::download(source, &dir, checksum.as_ref())
                    .map_err(|error| BuildError::at(span, error))?;
                // The key is the content: a checksum given up front names the same thing.
                inputs.insert(format!("url:{source}"), download.digest.to_string());
                items.push(Item::Download(download));
                continue;
            }
            if request.checksum.is_some() {
                return Err(BuildError::at(
                    span,
                    "ADD --checksum can only be used with an http(s) URL source",
                ));
            }
            if let Some((_, source_fs, key)) = &foreign {
                inputs.insert(format!("from:{source}"), key.to_string());
                let path = kiln_parser::path::clean(&format!("/{source}"));
                let kept_from = parents_pivot(source);
                if has_wildcards(&path) {
                    let matched = foreign_matches(source_fs, &path)
                        .map_err(|error| BuildError::at(span, error))?;
                    // BuildKit's COPY and ADD set AllowEmptyWildcard: a wildcard matching
                    // nothing copies nothing, even as the only source.
                    several |= matched.len() > 1;
                    let base = wildcard_base(&path);
                    for matched in matched {
                        if exclude
                            .as_ref()
                            .is_some_and(|exclude| exclude.matches(relative_to(&matched, &base)))
                        {
                            continue;
                        }
                        let kept = request
                            .parents
                            .then(|| relative_to(&matched, &kept_from).to_string());
                        items.push(Item::Foreign(matched, kept));
                    }
                } else {
                    let kept = request
                        .parents
                        .then(|| relative_to(&path, &kept_from).to_string());
                    items.push(Item::Foreign(path, kept));
                }
                continue;
            }
            let matched = context
                .sources(source)
                .map_err(|error| context_error(span, &keyword, source, error))?;
            let wildcard = has_wildcards(source);
            if wildcard {
                // AllowEmptyWildcard, as above: only a plain path must exist.
                several |= matched.len() > 1;
            }
            let cleaned = kiln_parser::path::clean(&format!("/{source}"));
            let base = wildcard_base(&cleaned);
            let kept_from = parents_pivot(source);
            for matched in matched {
                let absolute = format!("/{}", matched.named);
                if wildcard
                    && exclude
                        .as_ref()
                        .is_some_and(|exclude| exclude.matches(relative_to(&absolute, &base)))
                {
                    continue;
                }
                let digest = context
                    .digest(&matched, exclude.as_ref(), &mut inputs)
                    .map_err(|error| context_error(span, &keyword, source, error))?;
                inputs.insert(
                    format!(
                        "{}:{}",
                        if matched.is_dir { "dir" } else { "file" },
                        matched.relative
                    ),
                    digest.to_string(),
                );
                let kept = request
                    .parents
                    .then(|| relative_to(&absolute, &kept_from).to_string());
                items.push(Item::Context(matched, kept));
            }
        }
        if request.parents {
            several = true;
        }
        if several && !dest_is_dir_syntax {
            return Err(BuildError::at(
                span,
                format!(
                    "When using {keyword} with more than one source file, the destination must be a directory and end with a /"
                ),
            ));
        }
        let definition = serde_json::json!({
            "op": keyword.to_ascii_lowercase(),
            "sources": request.sources,
            "destination": destination,
            "dirSyntax": dest_is_dir_syntax,
            "owner": [uid, gid],
            "chmod": request.chmod,
            "unpack": request.add,
            "parents": request.parents,
            "exclude": request.excludes,
            "keepGitDir": request.keep_git_dir,
            "clamp": self.options.source_date_epoch,
        });
        let created_by = format!("{keyword} {} # buildkit", statement.original.trim());
        let step_def = FsStep {
            statement,
            created_by,
            definition,
            inputs,
        };
        let clamp = self.options.source_date_epoch;
        let mtime = clamp.unwrap_or(0).max(0) as u64;
        self.cached_or(store, state, step_def, step, no_cache, |store, work| {
            let fs = ContainerFs::over_layers(store, work.join("upper"), &state.layers);
            let at = |error: ChangesError| BuildError::at(span, error);
            let existing_dir = matches!(fs.kind(&destination).map_err(at)?, PathKind::Directory);
            let into_dir = dest_is_dir_syntax || several || existing_dir;
            let spool_dir = work.to_path_buf();
            // Copies what `build` archives into `directory`: the tar is streamed through a
            // pipe to an unpacking thread, never spooled, so memory and disk stay flat
            // whatever the size of the sources.
            let copy_archive = |directory: &str,
                                build: &mut dyn FnMut(
                &mut CopyArchive,
            ) -> Result<(), BuildError>|
             -> Result<(), BuildError> {
                fs.make_dirs(directory, uid, gid, mtime).map_err(at)?;
                let (reader, writer) = io::pipe().map_err(|source| BuildError::at(span, source))?;
                let fs = &fs;
                std::thread::scope(|scope| {
                    let unpacker = scope.spawn(move || {
                        let mut reader = io::BufReader::with_capacity(COPY_BUFFER, reader);
                        let copied = fs.copy_in(
                            CopySource::Archive(&mut reader),
                            directory,
                            &CopyOptions {
                                archive: true,
                                follow_link: false,
                            },
                        );
                        // Read to the end whatever happened, so the writer never fails on a
                        // closed pipe and its own error (the first cause) is the one reported.
                        let _ = io::copy(&mut reader, &mut io::sink());
                        copied
                    });
                    let built = (|| {
                        let mut archive =
                            tar::Builder::new(io::BufWriter::with_capacity(COPY_BUFFER, writer));
                        build(&mut archive)?;
                        archive
                            .into_inner()
                            .and_then(|mut writer| io::Write::flush(&mut writer))
                            .map_err(|source| BuildError::at(span, source))
                    })();
                    // The builder is dropped by now: the unpacker sees the end of the stream.
                    let unpacked = unpacker.join().map_err(|_| BuildError::Panicked)?;
                    built?;
                    unpacked.map_err(at)
                })
            };
            // Where an entry goes: `--parents` keeps its path under the destination.
            let placement = |kept: &Option<String>, base: &str| -> (String, String) {
                match kept {
                    Some(kept) if !kept.is_empty() => {
                        let (parent, name) = split_destination(&format!("/{kept}"));
                        (
                            kiln_parser::path::clean(&format!("{destination}/{parent}")),
                            name,
                        )
                    }
                    _ if into_dir => (destination.clone(), base.to_string()),
                    _ => split_destination(&destination),
                }
            };
            for item in &items {
                match item {
                    Item::Heredoc(name, content) => {
                        let (directory, entry) = placement(&None, name);
                        let file_mode =
                            mode.as_ref().map_or(0o644, |mode| mode.apply(0o644, false));
                        copy_archive(&directory, &mut |archive| {
                            let mut header = tar::Header::new_gnu();
                            header.set_entry_type(tar::EntryType::Regular);
                            header.set_size(content.len() as u64);
                            header.set_mode(file_mode);
                            header.set_uid(u64::from(uid));
                            header.set_gid(u64::from(gid));
                            header.set_mtime(mtime);
                            archive
                                .append_data(&mut header, &entry, content.as_bytes())
                                .map_err(|source| BuildError::at(span, source))
                        })?;
                    }
                    Item::Download(_) | Item::Url(_) => {
                        let late;
                        let download = match item {
                            Item::Url(url) => {
                                late = remote::download(url, &spool_dir, checksum.as_ref())
                                    .map_err(|error| BuildError::at(span, error))?;
                                &late
                            }
                            Item::Download(download) => download,
                            Item::Heredoc(..)
                            | Item::Checkout(_)
                            | Item::Context(..)
                            | Item::Foreign(..) => continue,
                        };
                        let (directory, entry) = placement(&None, &download.file_name);
                        // Docker gives downloaded files mode 0600.
                        let file_mode =
                            mode.as_ref().map_or(0o600, |mode| mode.apply(0o600, false));
                        let file_mtime = download.mtime.map_or(mtime, |time| {
                            clamp.map_or(time, |clamp| time.min(clamp)).max(0) as u64
                        });
                        copy_archive(&directory, &mut |archive| {
                            let file = fs::File::open(&download.path)
                                .map_err(|source| BuildError::at(span, source))?;
                            let size = file
                                .metadata()
                                .map_err(|source| BuildError::at(span, source))?
                                .len();
                            let mut header = tar::Header::new_gnu();
                            header.set_entry_type(tar::EntryType::Regular);
                            header.set_size(size);
                            header.set_mode(file_mode);
                            header.set_uid(u64::from(uid));
                            header.set_gid(u64::from(gid));
                            header.set_mtime(file_mtime);
                            archive
                                .append_data(&mut header, &entry, file)
                                .map_err(|source| BuildError::at(span, source))
                        })?;
                    }
                    Item::Checkout(index) => {
                        let checkout = &checkouts[*index];
                        let root = Source {
                            relative: String::new(),
                            named: String::new(),
                            host: checkout.root().to_path_buf(),
                            is_dir: true,
                        };
                        copy_archive(&destination, &mut |archive| {
                            checkout
                                .append(&root, "", &ownership, clamp, exclude.as_ref(), archive)
                                .map_err(|error| context_error(span, &keyword, "", error))
                        })?;
                    }
                    Item::Context(source, kept) => {
                        if source.is_dir && kept.as_deref().is_none_or(str::is_empty) {
                            copy_archive(&destination, &mut |archive| {
                                context
                                    .append(
                                        source,
                                        "",
                                        &ownership,
                                        clamp,
                                        exclude.as_ref(),
                                        archive,
                                    )
                                    .map_err(|error| {
                                        context_error(span, &keyword, &source.relative, error)
                                    })
                            })?;
                        } else if request.add && kept.is_none() && is_archive(&source.host) {
                            fs.make_dirs(&destination, uid, gid, mtime).map_err(at)?;
                            let file = fs::File::open(&source.host).map_err(|error| {
                                BuildError::at(span, format!("{}: {error}", source.relative))
                            })?;
                            let tar = kiln_cache::layer::decompress(file).map_err(|error| {
                                BuildError::at(
                                    span,
                                    format!("unpacking {}: {error}", source.relative),
                                )
                            })?;
                            fs.copy_in(
                                CopySource::Archive(tar),
                                &destination,
                                &CopyOptions {
                                    archive: true,
                                    follow_link: false,
                                },
                            )
                            .map_err(at)?;
                        } else {
                            // The name as written, not the symlink target's.
                            let base = source
                                .named
                                .rsplit('/')
                                .next()
                                .unwrap_or(&source.named)
                                .to_string();
                            let (directory, entry) = placement(kept, &base);
                            copy_archive(&directory, &mut |archive| {
                                context
                                    .append(
                                        source,
                                        &entry,
                                        &ownership,
                                        clamp,
                                        exclude.as_ref(),
                                        archive,
                                    )
                                    .map_err(|error| {
                                        context_error(span, &keyword, &source.relative, error)
                                    })
                            })?;
                        }
                    }
                    Item::Foreign(path, kept) => {
                        let (_, source_fs, _) = foreign
                            .as_ref()
                            .ok_or_else(|| BuildError::at(span, "no source stage"))?;
                        let kind = source_fs.kind(path).map_err(at)?;
                        if kind == PathKind::Missing {
                            return Err(BuildError::at(
                                span,
                                format!("failed to compute cache key: \"{path}\": not found"),
                            ));
                        }
                        let mut exported = tempfile::tempfile_in(&spool_dir)
                            .map_err(|source| BuildError::at(span, source))?;
                        source_fs
                            .copy_out(
                                path,
                                CopyTarget::Archive(&mut exported),
                                &CopyOptions {
                                    archive: true,
                                    follow_link: true,
                                },
                            )
                            .map_err(at)?;
                        use std::io::Seek;
                        exported
                            .rewind()
                            .map_err(|source| BuildError::at(span, source))?;
                        let is_dir = kind == PathKind::Directory;
                        let base = path
                            .trim_end_matches('/')
                            .rsplit('/')
                            .next()
                            .unwrap_or("")
                            .to_string();
                        let (directory, entry) = match kept {
                            Some(kept) if !kept.is_empty() => placement(&Some(kept.clone()), &base),
                            _ if is_dir => (destination.clone(), String::new()),
                            _ => placement(&None, &base),
                        };
                        copy_archive(&directory, &mut |archive| {
                            rename_entries(
                                &mut exported,
                                &entry,
                                request.chown.is_some().then_some((uid, gid)),
                                mode.as_ref(),
                                exclude.as_ref(),
                                archive,
                            )
                            .map_err(|source| {
                                BuildError::at(span, format!("copying {path}: {source}"))
                            })
                        })?;
                    }
                }
            }
            Ok(())
        })
    }

    /// What a RUN mount's `from=` names: a named local context, or the file system of a named
    /// image context, an earlier stage or a stored image (with its key).
    fn mount_source(
        &self,
        store: &Store,
        stages: &[PlannedStage<'_>],
        results: &Mutex<HashMap<usize, State>>,
        from: &str,
        span: Span,
    ) -> Result<MountSource<'_>, BuildError> {
        let reference = match self.options.named_contexts.get(&from.to_ascii_lowercase()) {
            Some(NamedContext::Directory(context)) => return Ok(MountSource::Context(context)),
            Some(NamedContext::Image(reference)) => reference.as_str(),
            None => from,
        };
        let (view, fs, key) = self.foreign_fs(store, stages, results, reference, span)?;
        Ok(MountSource::Filesystem(view, fs, key))
    }

    /// The file system `COPY --from` reads: an earlier stage's result or a stored image; and
    /// its key.
    fn foreign_fs(
        &self,
        store: &Store,
        stages: &[PlannedStage<'_>],
        results: &Mutex<HashMap<usize, State>>,
        from: &str,
        span: Span,
    ) -> Result<(tempfile::TempDir, ContainerFs, Digest), BuildError> {
        let lower = from.to_ascii_lowercase();
        let (layers, key) = if let Some(index) = stage_reference(stages, &lower) {
            let state = results
                .lock()
                .map_err(|_| BuildError::Panicked)?
                .get(&index)
                .cloned()
                .ok_or(BuildError::Panicked)?;
            (state.layers, state.key)
        } else {
            if let Some(images) = &self.options.images {
                // This stage's thread has its own store handle; `images` takes a writable one.
                let mut own = self.open_store()?;
                self.ensure_image(images.as_ref(), &mut own, from, span)?;
            }
            let id = store.resolve(from).map_err(|error| BuildError::At {
                span,
                message: format!("failed to resolve source image {from}: {error}"),
                hint: Some(
                    "kiln builds from images in its store: `kiln load` or `kiln import` it first"
                        .to_string(),
                ),
                exit_code: None,
            })?;
            let record = store.image(&id)?;
            (record.layers, image_key(&record.manifest))
        };
        let (view, fs) = image_view(store, &layers)?;
        Ok((view, fs, key))
    }
}

/// The part of an absolute, clean `path` below `base` (`/a/b/c` below `/a` is `b/c`); the
/// whole path without its `/` when it is not below `base`.
fn relative_to<'p>(path: &'p str, base: &str) -> &'p str {
    let base = base.trim_end_matches('/');
    path.strip_prefix(base)
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        .unwrap_or(path)
        .trim_start_matches('/')
}

/// The directory a wildcard pattern's matches are relative to, for `--exclude`: its
/// components before the first one with wildcards (`/src/*/x` → `/src`).
fn wildcard_base(pattern: &str) -> String {
    let literal: Vec<&str> = pattern
        .split('/')
        .take_while(|component| !has_wildcards(component))
        .collect();
    let base = literal.join("/");
    if base.is_empty() {
        "/".to_string()
    } else {
        base
    }
}

/// What `COPY --parents` keeps of a source's path: everything below the last `/./` pivot
/// (`a/./b/c` keeps `b/c`), else the whole path from the root. Returns the absolute, clean
/// directory the kept path is relative to.
fn parents_pivot(source: &str) -> String {
    match source.rfind("/./") {
        Some(at) => kiln_parser::path::clean(&format!("/{}", &source[..at])),
        None => "/".to_string(),
    }
}

/// The absolute paths of another stage's file system that a wildcard `pattern` (absolute,
/// clean) matches, sorted; symlinked directories are followed inside the view.
fn foreign_matches(fs: &ContainerFs, pattern: &str) -> Result<Vec<String>, String> {
    let mut current = vec!["/".to_string()];
    let components: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
    for (index, component) in components.iter().enumerate() {
        let last = index + 1 == components.len();
        let mut next = Vec::new();
        for dir in &current {
            let join = |name: &str| {
                if dir == "/" {
                    format!("/{name}")
                } else {
                    format!("{dir}/{name}")
                }
            };
            if !has_wildcards(component) {
                let path = join(component);
                let kind = fs.kind(&path).map_err(|error| error.to_string())?;
                if kind != PathKind::Missing && (last || kind == PathKind::Directory) {
                    next.push(path);
                }
                continue;
            }
            let names = match fs.read_dir(dir) {
                Ok(names) => names,
                Err(ChangesError::NotFound(_) | ChangesError::NotADirectory(_)) => continue,
                Err(error) => return Err(error.to_string()),
            };
            for name in names {
                let name = name.to_string_lossy();
                if !glob_match(component, &name).map_err(|error| error.to_string())? {
                    continue;
                }
                let path = join(&name);
                if last || fs.kind(&path).map_err(|error| error.to_string())? == PathKind::Directory
                {
                    next.push(path);
                }
            }
        }
        current = next;
    }
    current.sort();
    Ok(current)
}

/// Copies a local context's `source` directory's content into `directory` (a new cache
/// mount seeded `from=` a named context).
fn seed_from_context(context: &Context, source: &str, directory: &Path) -> Result<(), String> {
    let found = context
        .sources(source)
        .map_err(|error| error.to_string())?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{source:?}: not found"))?;
    if !found.is_dir {
        return Err(format!("cache mount source {source:?} is not a directory"));
    }
    let mut spool = tempfile::tempfile().map_err(|error| error.to_string())?;
    {
        let mut archive = tar::Builder::new(&mut spool);
        context
            .append(&found, "", &Ownership::default(), None, None, &mut archive)
            .map_err(|error| error.to_string())?;
        archive.finish().map_err(|error| error.to_string())?;
    }
    use std::io::Seek;
    spool.rewind().map_err(|error| error.to_string())?;
    kiln_cache::layer::apply_layer(
        directory,
        spool,
        &kiln_cache::layer::ApplyOptions::new(kiln_cache::layer::Whiteouts::Apply),
    )
    .map(drop)
    .map_err(|error| error.to_string())
}

/// `text` with every unescaped `'` and `"` escaped by `\\`, so that expanding it gives the
/// quotes back as plain characters: BuildKit's `SkipProcessQuotes` on a lexer that only has
/// `RawQuotes`. Escape pairs already in `text` are kept as they are.
fn quotes_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                out.push(c);
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            '\'' | '"' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// The heredoc a shell-form RUN consists of alone (`RUN <<EOF` with one heredoc and nothing
/// else on the line), if any.
fn whole_heredoc(run: &kiln_parser::ast::Run) -> Option<&kiln_parser::ast::Heredoc> {
    let CommandLine::Shell(text) = &run.command else {
        return None;
    };
    let script = text.text.trim();
    match run.heredocs.as_slice() {
        [heredoc]
            if script.starts_with("<<")
                && script
                    .trim_start_matches("<<")
                    .trim_start_matches('-')
                    .trim_matches(['"', '\''])
                    == heredoc.name =>
        {
            Some(heredoc)
        }
        _ => None,
    }
}

/// Where a `RUN <<EOF` heredoc whose body starts with `#!` is mounted to be executed as a
/// script (BuildKit's `/dev/pipes/<name>`); `None` for a body that the shell runs.
fn script_path(heredoc: &kiln_parser::ast::Heredoc) -> Option<String> {
    heredoc
        .content
        .starts_with("#!")
        // A delimiter is one path component here, whatever it holds.
        .then(|| match heredoc.name.as_str() {
            "" | "." | ".." => "/dev/pipes/script".to_string(),
            name => format!("/dev/pipes/{}", name.replace(['/', '\0'], "_")),
        })
}

/// `/a/b/c` → (`/a/b`, `c`).
fn split_destination(destination: &str) -> (String, String) {
    let trimmed = destination.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((parent, name)) => (
            if parent.is_empty() {
                "/".to_string()
            } else {
                parent.to_string()
            },
            name.to_string(),
        ),
        None => ("/".to_string(), trimmed.to_string()),
    }
}

#[allow(clippy::wildcard_enum_match_arm)] // tar's EntryType is open-ended
/// Re-writes an exported archive (its top entry named after the source) with the top entry
/// renamed to `name` (`""`: a directory's content at the top), owners replaced when `owner` is
/// given and modes when `mode` is.
fn rename_entries(
    exported: &mut fs::File,
    name: &str,
    owner: Option<(u32, u32)>,
    mode: Option<&Chmod>,
    exclude: Option<&Matcher>,
    out: &mut tar::Builder<impl io::Write>,
) -> io::Result<()> {
    let mut archive = tar::Archive::new(exported);
    let mut top: Option<String> = None;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let top_name = top.get_or_insert_with(|| path.clone()).clone();
        let rest = path
            .strip_prefix(&top_name)
            .unwrap_or(&path)
            .trim_start_matches('/')
            .to_string();
        if !rest.is_empty() && exclude.is_some_and(|exclude| exclude.matches(&rest)) {
            continue;
        }
        let new_name = match (name.is_empty(), rest.is_empty()) {
            (true, true) => continue,
            (true, false) => rest,
            (false, true) => name.to_string(),
            (false, false) => format!("{name}/{rest}"),
        };
        let mut header = entry.header().clone();
        if let Some((uid, gid)) = owner {
            header.set_uid(u64::from(uid));
            header.set_gid(u64::from(gid));
        }
        if let Some(mode) = mode
            && header.entry_type() != tar::EntryType::Symlink
        {
            let own = header.mode()? & 0o7777;
            header.set_mode(mode.apply(own, header.entry_type() == tar::EntryType::Directory));
        }
        match header.entry_type() {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()?
                    .map(|target| target.into_owned())
                    .unwrap_or_default();
                if header.entry_type() == tar::EntryType::Link {
                    // Hardlink targets are paths in the archive: rename them the same way.
                    let target = target.to_string_lossy().trim_end_matches('/').to_string();
                    let rest = target
                        .strip_prefix(&top_name)
                        .unwrap_or(&target)
                        .trim_start_matches('/')
                        .to_string();
                    let renamed = if name.is_empty() {
                        rest
                    } else if rest.is_empty() {
                        name.to_string()
                    } else {
                        format!("{name}/{rest}")
                    };
                    out.append_link(&mut header, &new_name, renamed)?;
                } else {
                    out.append_link(&mut header, &new_name, target)?;
                }
            }
            tar::EntryType::Directory => {
                out.append_data(&mut header, format!("{new_name}/"), io::empty())?;
            }
            // Files, devices, fifos: the exported archive has no extension entries of its own
            // (the tar reader folds them into the entries they describe).
            _ => {
                out.append_data(&mut header, &new_name, &mut entry)?;
            }
        }
    }
    Ok(())
}

fn context_error(span: Span, keyword: &str, source: &str, error: ContextError) -> BuildError {
    match error {
        ContextError::NotFound(_) => BuildError::At {
            span,
            message: format!(
                "failed to compute cache key: failed to calculate checksum of ref: \"/{source}\": not found"
            ),
            hint: Some(format!(
                "{keyword} sources are paths in the build context; check the path and the .dockerignore"
            )),
            exit_code: None,
        },
        other @ (ContextError::NoSources
        | ContextError::Archive(_)
        | ContextError::BadPattern(_)
        | ContextError::SymlinkLoop(_)
        | ContextError::Io { .. }) => BuildError::at(span, other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heredoc_expansion_treats_quotes_as_plain_characters() {
        let env: BTreeMap<String, String> = [("V".to_string(), "x".to_string())].into();
        let lexer = Lexer::new('\\');
        let expand = |text: &str| {
            lexer
                .expand_word(&quotes_escaped(text), &env)
                .unwrap()
                .value
        };
        assert_eq!(expand("a='$V' b=\"$V\"\n"), "a='x' b=\"x\"\n");
        // Escapes still work as BuildKit's lexer has them: `\$` is a dollar, `\'` a quote.
        assert_eq!(expand("\\$V \\' it's\n"), "$V ' it's\n");
        assert_eq!(expand("${UNSET}[${V:-'d'}] ${UNSET:-'d'}"), "[x] 'd'");
    }

    #[test]
    fn destinations_split_into_parent_and_name() {
        assert_eq!(
            split_destination("/a/b/c"),
            ("/a/b".to_string(), "c".to_string())
        );
        assert_eq!(split_destination("/c"), ("/".to_string(), "c".to_string()));
        assert_eq!(
            split_destination("/a/b/"),
            ("/a".to_string(), "b".to_string())
        );
    }

    #[test]
    fn parents_keep_the_path_below_the_pivot() {
        assert_eq!(parents_pivot("a/b/c"), "/");
        assert_eq!(parents_pivot("./a/./b/c"), "/a");
        assert_eq!(relative_to("/a/b/c", "/a"), "b/c");
        assert_eq!(relative_to("/a/b/c", "/"), "a/b/c");
        assert_eq!(relative_to("/ab/c", "/a"), "ab/c");
        assert_eq!(wildcard_base("/src/*/x"), "/src");
        assert_eq!(wildcard_base("/*.rs"), "/");
    }

    #[test]
    fn misses_name_the_changed_inputs() {
        let previous = CacheRecord {
            key: Digest::of(b"k"),
            definition: Digest::of(b"d"),
            description: String::new(),
            inputs: [("a.txt", "1"), ("b.txt", "2"), ("gone.txt", "3")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            config: Digest::of(b"c"),
            layers: Vec::new(),
            size: 0,
            created: 0,
            last_used: 0,
        };
        let now: BTreeMap<String, String> = [("a.txt", "1"), ("b.txt", "9"), ("new.txt", "4")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            describe_input_changes(&previous, &now),
            "b.txt changed, new.txt is new, gone.txt is gone"
        );
    }
}
