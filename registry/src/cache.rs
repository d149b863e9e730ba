//! Build cache through a registry or a directory: `kiln build --cache-to` and `--cache-from`.
//!
//! Owns the export format, the `--cache-to`/`--cache-from` specs (parsed as docker buildx
//! parses them), and moving build-cache records between a store and a registry repository or an
//! OCI layout directory. Does not own the records themselves (`kiln-cache`'s
//! [`kiln_cache::buildcache`]) nor which steps hit: the builder looks records up by cache key,
//! so records imported before a build make its steps hit without running them.
//!
//! # Format
//!
//! A cache is an OCI artifact that a plain distribution registry stores like any image: an OCI
//! image manifest (`application/vnd.oci.image.manifest.v1+json`) whose
//!
//! - `config` is a JSON blob of media type [`MEDIA_TYPE_CACHE_CONFIG`]
//!   (`application/vnd.kiln.buildcache.v1+json`, also the manifest's `artifactType`), a
//!   [`CacheConfig`]:
//!   ```json
//!   {"version": 1,
//!    "layers": [{"diffId": "sha256:…", "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
//!                "digest": "sha256:…", "size": 123}],
//!    "records": [{"key": "sha256:…", "definition": "sha256:…", "description": "RUN make",
//!                 "inputs": {"/src/a.c": "sha256:…"}, "size": 4096,
//!                 "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
//!                            "digest": "sha256:…", "size": 812},
//!                 "layers": ["sha256:<diff ID>", …]}]}
//!   ```
//!   `layers` lists every layer once, by diff ID, with the blob that carries it (gzip, as
//!   `docker push` sends layers; a layer stored compressed goes as it is). A record's `layers`
//!   is its whole chain, bottom-most first, by diff ID; `config` is the image config after the
//!   step; `key`, `definition`, `description`, `inputs` and `size` are the store's record
//!   ([`kiln_cache::buildcache::CacheRecord`]) as they are.
//! - `layers` are the blobs: first every layer blob, then every record's config blob (media
//!   type `application/vnd.oci.image.config.v1+json`), each once. A distribution registry only
//!   checks that the blobs a manifest names exist, so this is pushed and pulled as an image is,
//!   and garbage collection of the registry keeps every blob the cache needs.
//!
//! In a registry the manifest is tagged `ref`'s tag (`latest` by default). In a directory it is
//! an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`) whose `index.json` names
//! the manifest with the annotation `org.opencontainers.image.ref.name` = the `tag` option
//! (`latest` by default); other entries of an existing index are kept, and blobs are shared.
//!
//! With `cache-mounts=true` the config also lists `cacheMounts`: every `RUN
//! --mount=type=cache` directory of the store (`{"id": "<hex sha256 of the mount id>", "mode",
//! "uid", "gid", "mediaType", "digest", "size"}`), each a gzip layer tar of its content, appended
//! to the manifest's `layers`. BuildKit cannot export these. An import creates the ones the
//! store does not have (a local cache mount always wins) as the builder does, whole or not at
//! all.
//!
//! `type=inline` (BuildKit's cache metadata inside a pushed image's config) is refused: it needs
//! the builder to write it into the image config as the image is made.
//!
//! # Which records (`mode`)
//!
//! - `max`: every record the build used or made, in all its stages
//!   ([`Store::build_cache_used_since`] the build's start).
//! - `min` (the default, as BuildKit's): only the steps of the final image: those records whose
//!   layer chain and history are a prefix of the final image's.
//!
//! # Import
//!
//! Before the build, for each record whose key the store has not (with all its content): the
//! layers it needs that the store has not are fetched, verified and unpacked into snapshots by
//! the code `kiln pull` uses, its config blob is stored (verified), and the record inserted,
//! under the store's ingest lock. Layers shared by records or with images are fetched once.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use kiln_cache::buildcache::{CacheRecord, NewCacheRecord};
use kiln_cache::digest::Digest;
use kiln_cache::image::{self, Descriptor, ImageConfig, Index, Manifest};
use kiln_cache::layer::Compression;
use kiln_cache::reference::Reference;
use kiln_cache::store::{Store, StoreError};

use crate::client::{ClientOptions, Registry, pull_scope, push_scope};
use crate::error::RegistryError;
use crate::pool;
use crate::progress::Progress;
use crate::pull::{BlobSource, Hashing, RegistrySource, install_layers};

/// The media type of a cache's config blob, and the cache manifest's `artifactType`.
pub const MEDIA_TYPE_CACHE_CONFIG: &str = "application/vnd.kiln.buildcache.v1+json";

/// The version of [`CacheConfig`] this code writes and reads.
pub const CACHE_VERSION: u32 = 1;

/// The annotation naming a manifest in an OCI layout's `index.json`.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The largest cache config or manifest read (both are in memory).
const METADATA_LIMIT: u64 = 64 << 20;

/// The config blob of a cache: which layers and records it holds. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheConfig {
    pub version: u32,
    pub layers: Vec<CacheLayer>,
    pub records: Vec<CacheEntry>,
    /// `RUN --mount=type=cache` directories (`cache-mounts=true`); absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_mounts: Vec<CacheMount>,
}

/// A `RUN --mount=type=cache` directory as a cache carries it: a gzip layer tar of its content
/// (written as layers are, so deterministic) and the directory's own mode and owner.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheMount {
    /// The hex sha256 of the mount's id: the directory's name under the store's
    /// `cache-mounts/`.
    pub id: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// A layer of a cache: its diff ID and the blob that carries it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheLayer {
    pub diff_id: Digest,
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// A build-cache record as a cache carries it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    pub key: Digest,
    pub definition: Digest,
    pub description: String,
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    pub size: u64,
    /// The image config after the step.
    pub config: Descriptor,
    /// The layer chain after the step, bottom-most first, by diff ID.
    pub layers: Vec<Digest>,
}

/// Which records an export holds (`mode=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The final image's steps (BuildKit's default).
    #[default]
    Min,
    /// Every step the build used or made, in every stage.
    Max,
}

/// Where a cache is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A registry repository and tag (`type=registry,ref=REF`).
    Registry(Reference),
    /// An OCI layout directory and the tag naming the cache in it (`type=local`).
    Local { directory: PathBuf, tag: String },
}

impl std::fmt::Display for Location {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Registry(reference) => {
                write!(formatter, "{}", reference.clone().with_default_tag())
            }
            Location::Local { directory, tag } => {
                write!(formatter, "{}:{tag}", directory.display())
            }
        }
    }
}

/// A `--cache-to` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheExport {
    pub location: Location,
    pub mode: Mode,
    /// `ignore-error=true`: a failed export is a warning, not a failed build.
    pub ignore_error: bool,
    /// `cache-mounts=true`: also export the store's `RUN --mount=type=cache` directories
    /// (BuildKit cannot). An import fills those the importing store does not have.
    pub cache_mounts: bool,
}

/// A `--cache-from` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheImport {
    pub location: Location,
}

/// A `--cache-to` or `--cache-from` spec that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheSpecError {
    #[error("invalid cache spec {spec:?}: expected comma-separated KEY=VALUE fields")]
    Field { spec: String },
    #[error("invalid cache spec {spec:?}: unknown type {kind:?} (kiln supports registry, local)")]
    UnknownType { spec: String, kind: String },
    #[error("invalid cache spec {spec:?}: unknown key {key:?} for type={kind}")]
    UnknownKey {
        spec: String,
        kind: &'static str,
        key: String,
    },
    #[error("invalid cache spec {spec:?}: type={kind} needs {key}=")]
    Missing {
        spec: String,
        kind: &'static str,
        key: &'static str,
    },
    #[error("invalid cache spec {spec:?}: invalid {key} {value:?} (expected {expected})")]
    Value {
        spec: String,
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("invalid cache spec {spec:?}")]
    Reference {
        spec: String,
        #[source]
        source: kiln_cache::reference::ReferenceError,
    },
    /// `type=inline`: the cache inside the pushed image's config, which needs `--push`.
    #[error(
        "--cache-to/--cache-from type=inline is not supported: kiln build does not push images; use type=registry or type=local"
    )]
    Inline,
}

/// The `KEY=VALUE` fields of a spec; a spec without `=` is a registry reference, as buildx
/// reads `--cache-from user/app:cache`.
fn fields(spec: &str) -> Result<Vec<(String, String)>, CacheSpecError> {
    if !spec.contains('=') {
        return Ok(vec![
            ("type".to_string(), "registry".to_string()),
            ("ref".to_string(), spec.to_string()),
        ]);
    }
    spec.split(',')
        .filter(|field| !field.is_empty())
        .map(|field| {
            let (key, value) = field.split_once('=').ok_or_else(|| CacheSpecError::Field {
                spec: spec.to_string(),
            })?;
            let value = value
                .strip_prefix('"')
                .and_then(|value| value.strip_suffix('"'))
                .unwrap_or(value);
            Ok((key.trim().to_ascii_lowercase(), value.to_string()))
        })
        .collect()
}

fn boolean(spec: &str, key: &'static str, value: &str) -> Result<bool, CacheSpecError> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(CacheSpecError::Value {
            spec: spec.to_string(),
            key,
            value: other.to_string(),
            expected: "true or false",
        }),
    }
}

/// The parsed fields common to both directions.
struct Parsed {
    location: Location,
    mode: Option<Mode>,
    ignore_error: bool,
    cache_mounts: bool,
}

/// `export`: which of `dest=`/`src=` names the directory.
fn parse(spec: &str, export: bool) -> Result<Parsed, CacheSpecError> {
    let fields = fields(spec)?;
    let kind = fields
        .iter()
        .find(|(key, _)| key == "type")
        .map(|(_, value)| value.as_str())
        .unwrap_or("registry");
    let kind: &'static str = match kind {
        "registry" => "registry",
        "local" => "local",
        "inline" => return Err(CacheSpecError::Inline),
        other => {
            return Err(CacheSpecError::UnknownType {
                spec: spec.to_string(),
                kind: other.to_string(),
            });
        }
    };
    let directory_key = if export { "dest" } else { "src" };
    let mut reference = None;
    let mut directory = None;
    let mut tag = None;
    let mut mode = None;
    let mut ignore_error = false;
    let mut cache_mounts = false;
    for (key, value) in &fields {
        match (kind, key.as_str()) {
            (_, "type") => {}
            ("registry", "ref") => reference = Some(value.clone()),
            ("local", key) if key == directory_key => directory = Some(PathBuf::from(value)),
            ("local", "tag") => tag = Some(value.clone()),
            (_, "mode") if export => {
                mode = Some(match value.as_str() {
                    "min" => Mode::Min,
                    "max" => Mode::Max,
                    other => {
                        return Err(CacheSpecError::Value {
                            spec: spec.to_string(),
                            key: "mode",
                            value: other.to_string(),
                            expected: "min or max",
                        });
                    }
                });
            }
            (_, "ignore-error") if export => ignore_error = boolean(spec, "ignore-error", value)?,
            (_, "cache-mounts") if export => cache_mounts = boolean(spec, "cache-mounts", value)?,
            // buildx's switches for what kiln always writes: an OCI image manifest (not an
            // index) with OCI media types. Saying `true` is harmless; `false` asks for a
            // format kiln does not write.
            ("registry", key @ ("image-manifest" | "oci-mediatypes")) if export => {
                if !boolean(spec, "image-manifest/oci-mediatypes", value)? {
                    return Err(CacheSpecError::Value {
                        spec: spec.to_string(),
                        key: if key == "image-manifest" {
                            "image-manifest"
                        } else {
                            "oci-mediatypes"
                        },
                        value: value.clone(),
                        expected: "true: kiln always exports an OCI image manifest",
                    });
                }
            }
            (kind, other) => {
                return Err(CacheSpecError::UnknownKey {
                    spec: spec.to_string(),
                    kind,
                    key: other.to_string(),
                });
            }
        }
    }
    let location = match kind {
        "registry" => {
            let reference = reference.ok_or_else(|| CacheSpecError::Missing {
                spec: spec.to_string(),
                kind,
                key: "ref",
            })?;
            let reference =
                Reference::parse(&reference).map_err(|source| CacheSpecError::Reference {
                    spec: spec.to_string(),
                    source,
                })?;
            Location::Registry(reference)
        }
        _ => Location::Local {
            directory: directory.ok_or_else(|| CacheSpecError::Missing {
                spec: spec.to_string(),
                kind,
                key: directory_key,
            })?,
            tag: tag.unwrap_or_else(|| "latest".to_string()),
        },
    };
    Ok(Parsed {
        location,
        mode,
        ignore_error,
        cache_mounts,
    })
}

impl std::str::FromStr for CacheExport {
    type Err = CacheSpecError;

    /// `type=registry,ref=REF[,mode=min|max][,ignore-error=BOOL][,cache-mounts=BOOL]`,
    /// `type=local,dest=DIR[,tag=TAG][,mode=...]`, or a bare `REF`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let parsed = parse(spec, true)?;
        Ok(CacheExport {
            location: parsed.location,
            mode: parsed.mode.unwrap_or_default(),
            ignore_error: parsed.ignore_error,
            cache_mounts: parsed.cache_mounts,
        })
    }
}

impl std::str::FromStr for CacheImport {
    type Err = CacheSpecError;

    /// `type=registry,ref=REF`, `type=local,src=DIR[,tag=TAG]`, or a bare `REF`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        Ok(CacheImport {
            location: parse(spec, false)?.location,
        })
    }
}

/// Why an export or import failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The manifest found is not a kiln build cache.
    #[error("{location} is not a kiln build cache (its config is {media_type})")]
    NotACache {
        location: String,
        media_type: String,
    },
    #[error(
        "{location}: build cache format version {version} is not supported (kiln reads {CACHE_VERSION})"
    )]
    Version { location: String, version: u32 },
    /// A cache that contradicts itself (a record naming a layer it does not list).
    #[error("{location}: malformed build cache: {what}")]
    Malformed { location: String, what: String },
    #[error("{location}: {what} is not valid JSON of the expected shape")]
    Json {
        location: String,
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A file of a cache directory could not be read or written.
    #[error("cache directory: {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A cache mount that could not be packed or unpacked.
    #[error("cache mount {id}")]
    Mount {
        id: String,
        #[source]
        source: kiln_cache::layer::LayerError,
    },
    /// Content of a cache directory that does not hash to its name.
    #[error("{path} is corrupt: its content hashes to {actual}")]
    Corrupt { path: PathBuf, actual: Digest },
}

impl From<kiln_cache::blob::BlobError> for CacheError {
    fn from(error: kiln_cache::blob::BlobError) -> Self {
        CacheError::Store(StoreError::Blob(error))
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, CacheError> {
    image::canonical_json(value).map_err(|source| CacheError::Json {
        location: String::new(),
        what: "the cache kiln wrote".to_string(),
        source,
    })
}

/// The records of this build that an export with `mode` holds: see the module docs. `since` is
/// when the build started (seconds, [`kiln_cache::buildcache::now`]), `image` the built image.
pub fn select_records(
    store: &Store,
    mode: Mode,
    image: &Digest,
    since: i64,
) -> Result<Vec<CacheRecord>, CacheError> {
    let used = store.build_cache_used_since(since)?;
    if mode == Mode::Max {
        return Ok(used);
    }
    let final_image = store.image(image)?;
    let history =
        |config: &Digest| -> Result<Vec<Option<String>>, CacheError> {
            let config: ImageConfig = serde_json::from_slice(&store.blobs().read(config)?)
                .map_err(|source| CacheError::Json {
                    location: "the store".to_string(),
                    what: format!("image config {config}"),
                    source,
                })?;
            Ok(config
                .history
                .into_iter()
                .map(|entry| entry.created_by)
                .collect())
        };
    let final_history = history(image)?;
    let mut selected = Vec::new();
    for record in used {
        let layers_prefix = record.layers.len() <= final_image.layers.len()
            && record
                .layers
                .iter()
                .zip(&final_image.layers)
                .all(|(record, final_layer)| record.chain_id == final_layer.chain_id);
        if !layers_prefix {
            continue;
        }
        let record_history = history(&record.config)?;
        if final_history.starts_with(&record_history) {
            selected.push(record);
        }
    }
    Ok(selected)
}

/// What an export did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// The cache manifest's digest.
    pub digest: Digest,
    pub records: usize,
    /// Blobs written (the rest the destination had).
    pub written: usize,
    /// Blobs the cache names.
    pub blobs: usize,
}

/// Where an export writes.
trait Sink: Sync {
    /// Whether the destination has the blob already.
    fn has(&self, digest: &Digest) -> Result<bool, CacheError>;
    /// Writes a blob.
    fn put(&self, descriptor: &Descriptor, content: &mut dyn Read) -> Result<(), CacheError>;
    /// Writes the manifest last and names it; returns its digest.
    fn finish(&self, manifest: &[u8]) -> Result<Digest, CacheError>;
}

struct RegistrySink<'a> {
    registry: &'a Registry,
    repository: String,
    tag: String,
    scopes: Vec<String>,
}

impl Sink for RegistrySink<'_> {
    fn has(&self, digest: &Digest) -> Result<bool, CacheError> {
        Ok(self
            .registry
            .blob_exists(&self.repository, digest, &self.scopes)?
            .is_some())
    }

    fn put(&self, descriptor: &Descriptor, content: &mut dyn Read) -> Result<(), CacheError> {
        let location = self
            .registry
            .start_upload(&self.repository, None, &self.scopes)?
            .ok_or_else(|| {
                self.registry
                    .protocol("the registry mounted a blob not asked to")
            })?;
        self.registry.upload(
            &location,
            &descriptor.digest,
            descriptor.size,
            content,
            self.registry.upload,
            &self.scopes,
        )?;
        Ok(())
    }

    fn finish(&self, manifest: &[u8]) -> Result<Digest, CacheError> {
        Ok(self.registry.put_manifest(
            &self.repository,
            &self.tag,
            manifest,
            image::MEDIA_TYPE_OCI_MANIFEST,
            &self.scopes,
        )?)
    }
}

/// An OCI image layout directory.
struct Layout {
    directory: PathBuf,
    tag: String,
}

impl Layout {
    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.directory.join("blobs/sha256").join(digest.hex())
    }

    /// Writes `path` whole or not at all (temp file in the same directory, fsync, rename).
    fn write_atomic(&self, path: &Path, content: &mut dyn Read) -> Result<Digest, CacheError> {
        let parent = path.parent().unwrap_or(&self.directory);
        fs::create_dir_all(parent).map_err(io_at(parent))?;
        let mut temp = tempfile::NamedTempFile::new_in(parent).map_err(io_at(parent))?;
        let mut hashing = kiln_cache::digest::DigestWriter::new(temp.as_file_mut());
        io::copy(content, &mut hashing).map_err(io_at(path))?;
        let (digest, _, _) = hashing.finish();
        temp.as_file().sync_all().map_err(io_at(path))?;
        temp.persist(path).map_err(|error| CacheError::Io {
            path: path.to_path_buf(),
            source: error.error,
        })?;
        Ok(digest)
    }

    fn index_path(&self) -> PathBuf {
        self.directory.join("index.json")
    }

    /// The layout's index, if it has one.
    fn index(&self) -> Result<Option<Index>, CacheError> {
        let path = self.index_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_at(&path)(error)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| CacheError::Json {
                location: self.directory.display().to_string(),
                what: "index.json".to_string(),
                source,
            })
    }

    /// Reads a blob whole (a manifest or config), verified against its digest.
    fn small_blob(&self, digest: &Digest) -> Result<Vec<u8>, CacheError> {
        let path = self.blob_path(digest);
        let mut bytes = Vec::new();
        fs::File::open(&path)
            .and_then(|file| file.take(METADATA_LIMIT).read_to_end(&mut bytes))
            .map_err(io_at(&path))?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(CacheError::Corrupt { path, actual });
        }
        Ok(bytes)
    }
}

impl Sink for Layout {
    fn has(&self, digest: &Digest) -> Result<bool, CacheError> {
        Ok(self.blob_path(digest).is_file())
    }

    fn put(&self, descriptor: &Descriptor, content: &mut dyn Read) -> Result<(), CacheError> {
        let path = self.blob_path(&descriptor.digest);
        let actual = self.write_atomic(&path, content)?;
        if actual != descriptor.digest {
            let _ = fs::remove_file(&path);
            return Err(CacheError::Corrupt { path, actual });
        }
        Ok(())
    }

    fn finish(&self, manifest: &[u8]) -> Result<Digest, CacheError> {
        let digest = Digest::of(manifest);
        self.write_atomic(&self.blob_path(&digest), &mut &manifest[..])?;
        let mut index = self.index()?.unwrap_or(Index {
            schema_version: 2,
            media_type: Some(image::MEDIA_TYPE_OCI_INDEX.to_string()),
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
        });
        index
            .manifests
            .retain(|entry| entry.annotations.get(REF_NAME) != Some(&self.tag));
        let mut descriptor = Descriptor::new(
            image::MEDIA_TYPE_OCI_MANIFEST,
            digest,
            manifest.len() as u64,
        );
        descriptor
            .annotations
            .insert(REF_NAME.to_string(), self.tag.clone());
        index.manifests.push(descriptor);
        self.write_atomic(
            &self.directory.join("oci-layout"),
            &mut &br#"{"imageLayoutVersion":"1.0.0"}"#[..],
        )?;
        self.write_atomic(&self.index_path(), &mut json(&index)?.as_slice())?;
        Ok(digest)
    }
}

impl BlobSource for Layout {
    fn origin(&self) -> String {
        self.directory.display().to_string()
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn Read>, RegistryError> {
        let path = self.blob_path(digest);
        fs::File::open(&path)
            .map(|file| Box::new(file) as Box<dyn Read>)
            .map_err(|source| RegistryError::Read {
                registry: self.origin(),
                what: format!("blob {digest}"),
                source,
            })
    }
}

/// Connects to the registry of a cache reference.
fn connect(reference: &Reference, options: &ClientOptions) -> Result<Registry, RegistryError> {
    Registry::connect(reference.domain(), options, None)
}

/// Exports `records` (from [`select_records`]) to `location`: layer blobs (gzip variants of
/// layers stored uncompressed, made once and kept by the store), config blobs, with
/// `cache_mounts` a layer tar of each cache-mount directory of the store, the cache config,
/// then the manifest, skipping blobs the destination has. The manifest goes last, so a reader
/// never finds a cache naming missing blobs. Takes the store's ingest lock while it reads. A
/// cache mount that a build is writing meanwhile is exported as the tar walk finds it (cache
/// mounts are best-effort content, as in BuildKit).
pub fn export(
    store: &Store,
    records: &[CacheRecord],
    location: &Location,
    cache_mounts: bool,
    options: &ClientOptions,
) -> Result<Exported, CacheError> {
    let _ingest = store.ingest()?;
    let mounts = if cache_mounts {
        pack_cache_mounts(store)?
    } else {
        Vec::new()
    };
    let mut layers: Vec<CacheLayer> = Vec::new();
    let mut seen_layers = BTreeSet::new();
    let mut configs: Vec<Descriptor> = Vec::new();
    let mut seen_configs = BTreeSet::new();
    let mut entries = Vec::with_capacity(records.len());
    // By key: the same records give the same cache config and manifest digest, whatever order
    // the build used them in.
    let mut sorted: Vec<&CacheRecord> = records.iter().collect();
    sorted.sort_by_key(|record| record.key);
    sorted.dedup_by_key(|record| record.key);
    for record in sorted {
        for layer in &record.layers {
            if seen_layers.insert(layer.diff_id) {
                let blob = store.layer_blob(layer, Compression::Gzip)?;
                layers.push(CacheLayer {
                    diff_id: layer.diff_id,
                    media_type: blob.media_type,
                    digest: blob.digest,
                    size: blob.size,
                });
            }
        }
        let config = Descriptor::new(
            image::MEDIA_TYPE_OCI_CONFIG,
            record.config,
            store.blobs().size(&record.config)?,
        );
        if seen_configs.insert(record.config) {
            configs.push(config.clone());
        }
        entries.push(CacheEntry {
            key: record.key,
            definition: record.definition,
            description: record.description.clone(),
            inputs: record.inputs.clone(),
            size: record.size,
            config,
            layers: record.layers.iter().map(|layer| layer.diff_id).collect(),
        });
    }
    let record_count = entries.len();
    let cache_config = json(&CacheConfig {
        version: CACHE_VERSION,
        layers: layers.clone(),
        records: entries,
        cache_mounts: mounts.clone(),
    })?;
    let cache_config_descriptor = Descriptor::new(
        MEDIA_TYPE_CACHE_CONFIG,
        Digest::of(&cache_config),
        cache_config.len() as u64,
    );
    let mut blobs: Vec<Descriptor> = layers
        .iter()
        .map(|layer| Descriptor::new(&layer.media_type, layer.digest, layer.size))
        .collect();
    blobs.extend(configs);
    let mut seen_mounts = BTreeSet::new();
    blobs.extend(
        mounts
            .iter()
            .filter(|mount| seen_mounts.insert(mount.digest))
            .map(|mount| Descriptor::new(&mount.media_type, mount.digest, mount.size)),
    );
    let mut manifest = serde_json::to_value(Manifest::oci(
        cache_config_descriptor.clone(),
        blobs.clone(),
    ))
    .map_err(|source| CacheError::Json {
        location: location.to_string(),
        what: "the cache manifest".to_string(),
        source,
    })?;
    manifest["artifactType"] = serde_json::Value::String(MEDIA_TYPE_CACHE_CONFIG.to_string());
    let manifest = json(&manifest)?;

    let registry;
    let sink: Box<dyn Sink> = match location {
        Location::Registry(reference) => {
            let reference = reference.clone().with_default_tag();
            registry = connect(&reference, options)?;
            let repository = reference.path().to_string();
            Box::new(RegistrySink {
                registry: &registry,
                scopes: vec![push_scope(&repository)],
                repository,
                tag: reference.tag().unwrap_or("latest").to_string(),
            })
        }
        Location::Local { directory, tag } => Box::new(Layout {
            directory: directory.clone(),
            tag: tag.clone(),
        }),
    };
    let concurrency = options.concurrency.max(1);
    let stored = store.blobs().clone();
    let results = pool::run(blobs.clone(), concurrency, |descriptor| {
        if sink.has(&descriptor.digest)? {
            return Ok(false);
        }
        let mut content = stored.open(&descriptor.digest)?;
        sink.put(&descriptor, &mut content)?;
        Ok::<_, CacheError>(true)
    });
    let mut written = 0;
    for result in results {
        match result {
            Some(Ok(true)) => written += 1,
            Some(Ok(false)) => {}
            Some(Err(error)) => return Err(error),
            None => {
                return Err(CacheError::Malformed {
                    location: location.to_string(),
                    what: "a blob export did not run".to_string(),
                });
            }
        }
    }
    if !sink.has(&cache_config_descriptor.digest)? {
        sink.put(&cache_config_descriptor, &mut cache_config.as_slice())?;
        written += 1;
    }
    let digest = sink.finish(&manifest)?;
    Ok(Exported {
        digest,
        records: record_count,
        written,
        blobs: blobs.len() + 1,
    })
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Imported {
    /// The cache manifest's digest.
    pub digest: Option<Digest>,
    /// Records inserted into the store.
    pub records: usize,
    /// Records the store had already.
    pub present: usize,
    /// Cache-mount directories created.
    pub mounts: usize,
    /// Cache-mount directories the store had already (kept as they are).
    pub mounts_present: usize,
}

/// Where an import reads: the manifest, small blobs, and layer blobs.
enum Origin<'a> {
    Registry(RegistrySource<'a>, String),
    Local(Layout),
}

impl Origin<'_> {
    fn blob_source(&self) -> &dyn BlobSource {
        match self {
            Origin::Registry(source, _) => source,
            Origin::Local(layout) => layout,
        }
    }

    fn small_blob(&self, digest: &Digest) -> Result<Vec<u8>, CacheError> {
        match self {
            Origin::Registry(source, _) => {
                Ok(source
                    .registry
                    .small_blob(source.repository, digest, source.scopes)?)
            }
            Origin::Local(layout) => layout.small_blob(digest),
        }
    }

    /// The cache manifest: `None` when there is none at that name.
    fn manifest(&self) -> Result<Option<(Digest, Vec<u8>)>, CacheError> {
        match self {
            Origin::Registry(source, tag) => Ok(source
                .registry
                .manifest(source.repository, tag, source.scopes)?
                .map(|fetched| (fetched.digest, fetched.bytes))),
            Origin::Local(layout) => {
                let Some(index) = layout.index()? else {
                    return Ok(None);
                };
                let Some(entry) = index
                    .manifests
                    .iter()
                    .find(|entry| entry.annotations.get(REF_NAME) == Some(&layout.tag))
                else {
                    return Ok(None);
                };
                let bytes = layout.small_blob(&entry.digest)?;
                Ok(Some((entry.digest, bytes)))
            }
        }
    }
}

/// Imports the cache at `location` into the store (see the module docs). `Ok` with
/// `digest: None` when there is no cache there (a first build: BuildKit carries on too).
/// Idempotent: records the store has are left as they are.
pub fn import(
    store: &mut Store,
    location: &Location,
    options: &ClientOptions,
    progress: &dyn Progress,
) -> Result<Imported, CacheError> {
    let registry;
    let repository;
    let scopes;
    let origin = match location {
        Location::Registry(reference) => {
            let reference = reference.clone().with_default_tag();
            registry = connect(&reference, options)?;
            repository = reference.path().to_string();
            scopes = vec![pull_scope(&repository)];
            let wanted = reference
                .digest()
                .or(reference.tag())
                .unwrap_or("latest")
                .to_string();
            Origin::Registry(
                RegistrySource {
                    registry: &registry,
                    repository: &repository,
                    scopes: &scopes,
                },
                wanted,
            )
        }
        Location::Local { directory, tag } => Origin::Local(Layout {
            directory: directory.clone(),
            tag: tag.clone(),
        }),
    };
    let name = location.to_string();
    let Some((digest, bytes)) = origin.manifest()? else {
        return Ok(Imported::default());
    };
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|source| CacheError::Json {
        location: name.clone(),
        what: format!("manifest {digest}"),
        source,
    })?;
    if manifest.config.media_type != MEDIA_TYPE_CACHE_CONFIG {
        return Err(CacheError::NotACache {
            location: name,
            media_type: manifest.config.media_type,
        });
    }
    let config_bytes = origin.small_blob(&manifest.config.digest)?;
    #[derive(serde::Deserialize)]
    struct VersionProbe {
        version: u32,
    }
    let probe: VersionProbe =
        serde_json::from_slice(&config_bytes).map_err(|source| CacheError::Json {
            location: name.clone(),
            what: "the cache config".to_string(),
            source,
        })?;
    if probe.version != CACHE_VERSION {
        return Err(CacheError::Version {
            location: name,
            version: probe.version,
        });
    }
    let config: CacheConfig =
        serde_json::from_slice(&config_bytes).map_err(|source| CacheError::Json {
            location: name.clone(),
            what: "the cache config".to_string(),
            source,
        })?;
    let layers: BTreeMap<Digest, Descriptor> = config
        .layers
        .iter()
        .map(|layer| {
            (
                layer.diff_id,
                Descriptor::new(&layer.media_type, layer.digest, layer.size),
            )
        })
        .collect();
    let _ingest = store.ingest()?;
    let mut imported = Imported {
        digest: Some(digest),
        ..Imported::default()
    };
    for entry in &config.records {
        if store.build_cache_complete(&entry.key)? {
            imported.present += 1;
            continue;
        }
        let chain = entry
            .layers
            .iter()
            .map(|diff_id| {
                layers
                    .get(diff_id)
                    .map(|descriptor| (descriptor.clone(), *diff_id))
                    .ok_or_else(|| CacheError::Malformed {
                        location: name.clone(),
                        what: format!(
                            "record {} names layer {diff_id}, which the cache does not list",
                            entry.key
                        ),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let records = install_layers(
            store,
            &chain,
            origin.blob_source(),
            options.concurrency.max(1),
            progress,
        )?;
        if !store.blobs().contains(&entry.config.digest) {
            let bytes = origin.small_blob(&entry.config.digest)?;
            store.blobs().put_expected(
                bytes.as_slice(),
                entry.config.digest,
                Some(entry.config.size),
            )?;
        }
        store.build_cache_insert(&NewCacheRecord {
            key: entry.key,
            definition: entry.definition,
            description: &entry.description,
            inputs: &entry.inputs,
            config: entry.config.digest,
            layers: &records,
            size: entry.size,
        })?;
        imported.records += 1;
    }
    for mount in &config.cache_mounts {
        if unpack_cache_mount(store, mount, origin.blob_source(), &name)? {
            imported.mounts += 1;
        } else {
            imported.mounts_present += 1;
        }
    }
    Ok(imported)
}

/// The directory of the store's cache mounts (the builder's `cache-mounts/`).
fn cache_mounts_dir(store: &Store) -> PathBuf {
    store.layout().root().join("cache-mounts")
}

/// Writes a gzip layer tar of every cache-mount directory of the store into the store's blobs
/// (garbage collection removes them once nothing needs them), sorted by id. The caller holds
/// the ingest lock.
fn pack_cache_mounts(store: &Store) -> Result<Vec<CacheMount>, CacheError> {
    use std::os::unix::fs::MetadataExt;
    let parent = cache_mounts_dir(store);
    let entries = match fs::read_dir(&parent) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_at(&parent)(error)),
    };
    let mut mounts = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_at(&parent))?;
        let name = entry.file_name().to_string_lossy().to_string();
        // `new-*` are being made, `<hex>.lock` are flocks: only whole `<hex>` directories.
        if format!("sha256:{name}").parse::<Digest>().is_err() {
            continue;
        }
        let path = entry.path();
        let metadata = fs::symlink_metadata(&path).map_err(io_at(&path))?;
        if !metadata.is_dir() {
            continue;
        }
        let mut writer = store.blobs().writer()?;
        kiln_cache::layer::write_layer(
            kiln_cache::layer::LayerSource::Directory(&path),
            &mut writer,
            &kiln_cache::layer::WriteOptions {
                compression: Compression::Gzip,
                source_date_epoch: None,
            },
        )
        .map_err(|source| CacheError::Mount {
            id: name.clone(),
            source,
        })?;
        let stored = writer.commit()?;
        mounts.push(CacheMount {
            id: name,
            mode: metadata.mode() & 0o7777,
            uid: metadata.uid(),
            gid: metadata.gid(),
            media_type: Compression::Gzip.media_type().to_string(),
            digest: stored.digest,
            size: stored.size,
        });
    }
    mounts.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(mounts)
}

/// Creates the cache-mount directory `mount` describes when the store has none of that id
/// (a local cache mount always wins): unpacked into `cache-mounts/new-*` with the store's
/// hostile-archive safety, verified against its digest, then renamed into place, as the
/// builder creates them, so a build sees it whole or not at all. Returns whether it was made.
fn unpack_cache_mount(
    store: &Store,
    mount: &CacheMount,
    source: &dyn BlobSource,
    location: &str,
) -> Result<bool, CacheError> {
    use std::os::unix::fs::PermissionsExt;
    // The id names a directory: only a hex digest may (never `..` or a path).
    let id: Digest = format!("sha256:{}", mount.id)
        .parse()
        .map_err(|_| CacheError::Malformed {
            location: location.to_string(),
            what: format!("cache mount id {:?} is not a hex sha256", mount.id),
        })?;
    let parent = cache_mounts_dir(store);
    let target = parent.join(id.hex());
    if target.exists() {
        return Ok(false);
    }
    fs::create_dir_all(&parent).map_err(io_at(&parent))?;
    let staging = tempfile::Builder::new()
        .prefix("new-")
        .tempdir_in(&parent)
        .map_err(io_at(&parent))?;
    let mut raw = Hashing {
        inner: source.open(&mount.digest)?,
        digest: kiln_cache::digest::DigestWriter::new(io::sink()),
    };
    let unpacked = kiln_cache::layer::decompress(&mut raw).and_then(|tar| {
        kiln_cache::layer::apply_layer(
            staging.path(),
            tar,
            &kiln_cache::layer::ApplyOptions::new(kiln_cache::layer::Whiteouts::Apply),
        )
    });
    // Read to the end whatever happened: the digest tells corruption from hostility.
    let drained = io::copy(&mut raw, &mut io::sink());
    let (actual, _, _) = raw.digest.finish();
    if actual != mount.digest {
        return Err(RegistryError::DigestMismatch {
            registry: source.origin(),
            what: "cache mount",
            expected: mount.digest,
            actual,
        }
        .into());
    }
    drained.map_err(|error| RegistryError::Read {
        registry: source.origin(),
        what: format!("cache mount {}", mount.digest),
        source: error,
    })?;
    unpacked.map_err(|source| CacheError::Mount {
        id: mount.id.clone(),
        source,
    })?;
    fs::set_permissions(
        staging.path(),
        fs::Permissions::from_mode(mount.mode & 0o7777),
    )
    .map_err(io_at(staging.path()))?;
    // Without the privilege to give it away (not root), the directory stays the caller's, as
    // unpacked layers do.
    match std::os::unix::fs::chown(staging.path(), Some(mount.uid), Some(mount.gid)) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {}
        Err(error) => return Err(io_at(staging.path())(error)),
    }
    let staged = staging.keep();
    if fs::rename(&staged, &target).is_err() {
        // Another build made it first: keep theirs.
        let _ = fs::remove_dir_all(&staged);
        return Ok(false);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_as_buildx_reads_them() {
        let export: CacheExport = "type=registry,ref=localhost:5000/app:cache,mode=max"
            .parse()
            .unwrap();
        assert_eq!(export.mode, Mode::Max);
        assert_eq!(
            export.location.to_string(),
            "localhost:5000/app:cache".to_string()
        );
        let export: CacheExport = "type=local,dest=/tmp/cache".parse().unwrap();
        assert_eq!(export.mode, Mode::Min);
        assert_eq!(
            export.location,
            Location::Local {
                directory: PathBuf::from("/tmp/cache"),
                tag: "latest".to_string()
            }
        );
        let import: CacheImport = "localhost:5000/app:cache".parse().unwrap();
        assert!(matches!(import.location, Location::Registry(_)));
        let import: CacheImport = "type=local,src=/tmp/cache,tag=v1".parse().unwrap();
        assert_eq!(import.location.to_string(), "/tmp/cache:v1");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let error = |spec: &str, export: bool| {
            if export {
                spec.parse::<CacheExport>().unwrap_err().to_string()
            } else {
                spec.parse::<CacheImport>().unwrap_err().to_string()
            }
        };
        assert!(error("type=s3,bucket=x", true).contains("unknown type \"s3\""));
        assert!(error("type=registry,ref=a,colour=red", true).contains("unknown key \"colour\""));
        assert!(error("type=registry,mode=max", true).contains("needs ref="));
        assert!(error("type=local,src=/x", true).contains("unknown key \"src\""));
        assert!(error("type=local,dest=/x", false).contains("unknown key \"dest\""));
        assert!(error("type=registry,ref=a,mode=max", false).contains("unknown key \"mode\""));
        assert!(error("type=registry,ref=a,mode=all", true).contains("invalid mode \"all\""));
        assert!(error("type=inline", true).contains("not supported"));
        assert!(error("type=registry,ref=a,image-manifest=false", true).contains("kiln always"));
        let export: CacheExport = "type=registry,ref=a,image-manifest=true,oci-mediatypes=true"
            .parse()
            .unwrap();
        assert_eq!(export.mode, Mode::Min);
        assert!(error("type=registry,ref=UPPER/Case", false).contains("invalid cache spec"));
    }

    #[test]
    fn the_cache_config_round_trips_with_its_documented_field_names() {
        let digest = Digest::of(b"x");
        let config = CacheConfig {
            version: CACHE_VERSION,
            layers: vec![CacheLayer {
                diff_id: digest,
                media_type: image::MEDIA_TYPE_OCI_LAYER_GZIP.to_string(),
                digest,
                size: 1,
            }],
            records: vec![CacheEntry {
                key: digest,
                definition: digest,
                description: "RUN true".to_string(),
                inputs: BTreeMap::new(),
                size: 0,
                config: Descriptor::new(image::MEDIA_TYPE_OCI_CONFIG, digest, 1),
                layers: vec![digest],
            }],
            cache_mounts: Vec::new(),
        };
        let bytes = json(&config).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"diffId\""), "{text}");
        assert!(text.contains("\"mediaType\""), "{text}");
        assert_eq!(
            serde_json::from_slice::<CacheConfig>(&bytes).unwrap(),
            config
        );
    }
}
