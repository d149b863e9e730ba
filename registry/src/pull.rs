//! `kiln pull`: a reference becomes an image in the store, exactly as if it had been loaded.
//!
//! The manifest (or index, from which this platform's manifest is chosen) and the config are
//! read into memory (they are small and bounded); layers are streamed: each response body is
//! hashed and written to a blob temp file while it is decompressed, hashed again (its diff ID)
//! and applied into a fresh snapshot directory with the store's hostile-archive safety
//! ([`kiln_cache::layer::apply_layer`]). Only when the blob's digest and size and the layer's
//! diff ID are right is the blob renamed into place; snapshots, the config, the manifest (byte
//! for byte as the registry sent it), the image record, the tag and the repo digest follow once
//! every layer is in. Nothing half-written is ever visible: an interrupted pull leaves only temp
//! files (collected by `kiln system prune`) and whole, verified blobs, which the next pull
//! unpacks instead of downloading again.
//!
//! Layers the store has (a snapshot at the same chain ID) are not downloaded. Up to
//! `concurrency` layers download at once. The store's ingest lock is held throughout, as
//! `kiln load` does.

use std::io::{self, Read, Write};

use kiln_cache::blob::{Blobs, Stored};
use kiln_cache::digest::{Digest, DigestWriter};
use kiln_cache::image::{self, Descriptor, Index, Manifest, RootFs};
use kiln_cache::layer::{self, ApplyOptions, ApplyStats, Whiteouts};
use kiln_cache::reference::Reference;
use kiln_cache::store::{LayerRecord, NewImage, Store};

use crate::client::{FetchedManifest, Registry, pull_scope};
use crate::error::RegistryError;
use crate::platform::Platform;
use crate::pool;
use crate::progress::{Counting, Event, Progress, Transfer};

/// Layer media types of foreign (non-distributable) layers, which kiln pulls like others.
const FOREIGN_LAYER_TYPES: &[&str] = &[
    image::MEDIA_TYPE_DOCKER_FOREIGN_LAYER,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
];

/// Whether a layer media type is a foreign (non-distributable) one.
pub fn is_foreign_layer(media_type: &str) -> bool {
    FOREIGN_LAYER_TYPES.contains(&media_type)
}

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// The platform to choose from an index; this machine's when absent.
    pub platform: Option<Platform>,
}

/// What a pull did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The image ID (config digest).
    pub id: Digest,
    /// The reference pulled, normalised, with the default tag added when it had neither tag
    /// nor digest.
    pub reference: Reference,
    /// The digest the reference resolved to on the registry (the index's, for an index).
    pub digest: Digest,
    /// The tag already named this image: nothing was downloaded or recorded anew.
    pub up_to_date: bool,
}

/// The parts of an image config that pulling needs.
#[derive(Debug, serde::Deserialize)]
struct ConfigView {
    #[serde(default)]
    created: Option<String>,
    rootfs: RootFs,
}

/// Whether fetched JSON is an index or a manifest, by its media type (header, then the
/// `mediaType` field, then its shape). Docker schema 1 and anything else is refused.
enum Kind {
    Index,
    Manifest,
}

fn kind_of(
    fetched: &FetchedManifest,
    registry: &Registry,
) -> Result<(Kind, String), RegistryError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        schema_version: Option<u32>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        layers: Option<serde_json::Value>,
    }
    let probe: Probe =
        serde_json::from_slice(&fetched.bytes).map_err(|source| RegistryError::Json {
            registry: registry.domain().to_string(),
            what: format!("manifest {}", fetched.digest),
            source,
        })?;
    let media_type = probe
        .media_type
        .clone()
        .filter(|media_type| !media_type.is_empty())
        .or_else(|| {
            Some(fetched.media_type.clone())
                .filter(|media_type| !media_type.is_empty() && media_type != "application/json")
        });
    let unsupported = |media_type: String| RegistryError::MediaType {
        digest: fetched.digest.to_string(),
        media_type,
    };
    match media_type.as_deref() {
        Some(image::MEDIA_TYPE_OCI_INDEX | image::MEDIA_TYPE_DOCKER_LIST) => {
            Ok((Kind::Index, media_type.unwrap_or_default()))
        }
        Some(image::MEDIA_TYPE_OCI_MANIFEST | image::MEDIA_TYPE_DOCKER_MANIFEST) => {
            Ok((Kind::Manifest, media_type.unwrap_or_default()))
        }
        Some(other) => Err(unsupported(other.to_string())),
        None if probe.schema_version == Some(2) && probe.manifests.is_some() => {
            Ok((Kind::Index, image::MEDIA_TYPE_OCI_INDEX.to_string()))
        }
        None if probe.schema_version == Some(2) && probe.layers.is_some() => {
            Ok((Kind::Manifest, image::MEDIA_TYPE_OCI_MANIFEST.to_string()))
        }
        None => Err(unsupported(format!(
            "(schema version {})",
            probe.schema_version.unwrap_or(0)
        ))),
    }
}

/// Where a layer's content comes from.
enum Source {
    /// Downloaded from the registry (or the directory) the layers come from.
    Remote,
    /// A verified blob already in the store, without a snapshot at this chain ID.
    Store,
}

/// A layer to fetch and unpack on a worker.
struct Job {
    descriptor: Descriptor,
    diff_id: Digest,
    source: Source,
    prepared: tempfile::TempDir,
}

/// A fetched, verified and unpacked layer, its snapshot not yet committed.
struct Fetched {
    blob: Stored,
    diff_id: Digest,
    unpacked: u64,
    prepared: tempfile::TempDir,
}

/// What to do with each layer of the image.
enum Plan {
    Existing(LayerRecord),
    Fetch(usize),
}

/// Pulls `reference` from `registry` into the store and tags it (a reference by digest is not
/// tagged); records the repo digest `NAME@DIGEST`. See the module documentation for the
/// guarantees.
pub fn pull(
    store: &mut Store,
    registry: &Registry,
    reference: &Reference,
    options: &PullOptions,
    progress: &dyn Progress,
) -> Result<Pulled, RegistryError> {
    let reference = reference.clone().with_default_tag();
    let repository = reference.path().to_string();
    let scopes = vec![pull_scope(&repository)];
    let wanted = reference
        .digest()
        .or(reference.tag())
        .unwrap_or(kiln_cache::reference::DEFAULT_TAG)
        .to_string();
    progress.event(Event::PullingFrom {
        tag: wanted.clone(),
        repository: repository.clone(),
    });
    let unknown = || RegistryError::ManifestUnknown {
        reference: reference.familiar(),
    };
    let top = registry
        .manifest(&repository, &wanted, &scopes)?
        .ok_or_else(unknown)?;
    let (kind, top_media_type) = kind_of(&top, registry)?;
    let (manifest_fetched, manifest_media_type) = match kind {
        Kind::Manifest => (top.clone(), top_media_type),
        Kind::Index => {
            let index: Index = parse(registry, &top.digest.to_string(), &top.bytes)?;
            let platform = options.platform.clone().unwrap_or_else(Platform::host);
            let chosen = platform.select(&index.manifests)?;
            let child = registry
                .manifest(&repository, &chosen.digest.to_string(), &scopes)?
                .ok_or_else(unknown)?;
            let (kind, media_type) = kind_of(&child, registry)?;
            if !matches!(kind, Kind::Manifest) {
                return Err(RegistryError::MediaType {
                    digest: child.digest.to_string(),
                    media_type: format!("{media_type} (an index inside an index)"),
                });
            }
            (child, media_type)
        }
    };
    let manifest: Manifest = parse(
        registry,
        &manifest_fetched.digest.to_string(),
        &manifest_fetched.bytes,
    )?;
    let id = manifest.config.digest;
    match manifest.config.media_type.as_str() {
        image::MEDIA_TYPE_OCI_CONFIG | image::MEDIA_TYPE_DOCKER_CONFIG => {}
        other => {
            return Err(RegistryError::MediaType {
                digest: id.to_string(),
                media_type: other.to_string(),
            });
        }
    }
    for layer in &manifest.layers {
        if layer::Compression::from_media_type(&layer.media_type).is_none()
            && !is_foreign_layer(&layer.media_type)
        {
            return Err(RegistryError::MediaType {
                digest: layer.digest.to_string(),
                media_type: layer.media_type.clone(),
            });
        }
    }
    let tagged = reference.digest().is_none().then(|| reference.to_string());
    let repo_digest = format!("{}@{}", reference.name(), top.digest);
    // The tag already names this image: Docker's "Image is up to date".
    if let Some(tagged) = &tagged
        && store.lookup_reference(tagged)? == Some(id)
        && store.image(&id).is_ok()
    {
        store.add_repo_digest(&repo_digest, &id)?;
        return Ok(Pulled {
            id,
            reference,
            digest: top.digest,
            up_to_date: true,
        });
    }
    let config = registry.small_blob(&repository, &id, &scopes)?;
    let view: ConfigView = parse(registry, &id.to_string(), &config)?;
    if view.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(RegistryError::LayerCount {
            image: id,
            layers: manifest.layers.len(),
            diff_ids: view.rootfs.diff_ids.len(),
        });
    }
    let _ingest = store.ingest()?;
    let wanted_layers: Vec<(Descriptor, Digest)> = manifest
        .layers
        .iter()
        .cloned()
        .zip(view.rootfs.diff_ids.iter().copied())
        .collect();
    let source = RegistrySource {
        registry,
        repository: &repository,
        scopes: &scopes,
    };
    let records = install_layers(
        store,
        &wanted_layers,
        &source,
        registry.concurrency,
        progress,
    )?;
    store
        .blobs()
        .put_expected(config.as_slice(), id, Some(manifest.config.size))?;
    let stored_manifest = store.blobs().put_expected(
        manifest_fetched.bytes.as_slice(),
        manifest_fetched.digest,
        None,
    )?;
    store.add_image(&NewImage {
        id,
        manifest: stored_manifest.digest,
        manifest_media_type,
        created: view.created,
        layers: records,
    })?;
    if let Some(tagged) = &tagged {
        store.tag(tagged, &id)?;
    }
    store.add_repo_digest(&repo_digest, &id)?;
    Ok(Pulled {
        id,
        reference,
        digest: top.digest,
        up_to_date: false,
    })
}

/// Where the blobs of layers being installed come from: a registry repository, or an OCI
/// layout directory (an imported build cache).
pub(crate) trait BlobSource: Sync {
    /// What to name in errors (the registry's domain, or the directory).
    fn origin(&self) -> String;
    /// Starts reading a blob; the bytes are unverified (the caller hashes them).
    fn open(&self, digest: &Digest) -> Result<Box<dyn Read>, RegistryError>;
}

/// A repository of a registry as a [`BlobSource`].
pub(crate) struct RegistrySource<'a> {
    pub registry: &'a Registry,
    pub repository: &'a str,
    pub scopes: &'a [String],
}

impl BlobSource for RegistrySource<'_> {
    fn origin(&self) -> String {
        self.registry.domain().to_string()
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn Read>, RegistryError> {
        Ok(Box::new(self.registry.blob(
            self.repository,
            digest,
            self.scopes,
        )?))
    }
}

/// Makes the layers `layers` (blob descriptor, diff ID; bottom-most first) snapshots of the
/// store and returns their records, in order. Layers whose chain ID the store has (with its
/// blob) are kept as they are; a blob the store has is unpacked from the store; the rest is
/// downloaded from `source` (at most `concurrency` at once), each blob verified against its
/// digest and size and its content against the diff ID before anything is committed. Shared by
/// `kiln pull` and the build-cache import. The caller holds the ingest lock
/// ([`Store::ingest`]) until whatever references the snapshots is recorded.
pub(crate) fn install_layers(
    store: &Store,
    layers: &[(Descriptor, Digest)],
    source: &dyn BlobSource,
    concurrency: usize,
    progress: &dyn Progress,
) -> Result<Vec<LayerRecord>, RegistryError> {
    let diff_ids: Vec<Digest> = layers.iter().map(|(_, diff_id)| *diff_id).collect();
    let chain = image::chain_ids(&diff_ids);
    let mut plans = Vec::with_capacity(layers.len());
    let mut jobs = Vec::new();
    for (position, (descriptor, diff_id)) in layers.iter().enumerate() {
        let existing = store
            .snapshot(&chain[position])?
            .filter(|existing| store.blobs().contains(&existing.blob));
        if let Some(existing) = existing {
            progress.event(Event::LayerExists(descriptor.digest));
            plans.push(Plan::Existing(existing));
            continue;
        }
        let from = if store.blobs().contains(&descriptor.digest) {
            Source::Store
        } else {
            Source::Remote
        };
        plans.push(Plan::Fetch(jobs.len()));
        jobs.push(Job {
            descriptor: descriptor.clone(),
            diff_id: *diff_id,
            source: from,
            prepared: store.prepare_snapshot()?,
        });
    }
    let blobs = store.blobs().clone();
    let results = pool::run(jobs, concurrency, |job| {
        fetch_layer(source, &blobs, job, progress)
    });
    let mut fetched = Vec::with_capacity(results.len());
    let mut first_error = None;
    for result in results {
        match result {
            Some(Ok(layer)) => fetched.push(Some(layer)),
            Some(Err(error)) => {
                first_error.get_or_insert(error);
                fetched.push(None);
            }
            None => fetched.push(None),
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    let mut records = Vec::with_capacity(plans.len());
    for (position, plan) in plans.into_iter().enumerate() {
        let record = match plan {
            Plan::Existing(record) => record,
            Plan::Fetch(job) => {
                let layer = fetched[job].take().ok_or_else(|| RegistryError::Protocol {
                    registry: source.origin(),
                    what: "a layer was not fetched".to_string(),
                })?;
                let record = LayerRecord {
                    chain_id: chain[position],
                    diff_id: layer.diff_id,
                    blob: layer.blob.digest,
                    media_type: layers[position].0.media_type.clone(),
                    blob_size: layer.blob.size,
                    size: layer.unpacked,
                };
                let parent = position.checked_sub(1).map(|parent| &chain[parent]);
                store.commit_snapshot(layer.prepared, &record, parent)?;
                record
            }
        };
        records.push(record);
    }
    Ok(records)
}

fn parse<'a, T: serde::Deserialize<'a>>(
    registry: &Registry,
    what: &str,
    bytes: &'a [u8],
) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|source| RegistryError::Json {
        registry: registry.domain().to_string(),
        what: what.to_string(),
        source,
    })
}

/// Passes the bytes read through on to a writer too.
struct Tee<R, W> {
    inner: R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.copy.write_all(&buf[..read])?;
        Ok(read)
    }
}

/// A reader that hashes what passes through (the diff ID of a decompressed layer, the digest
/// of a cache mount's blob).
pub(crate) struct Hashing<R> {
    pub inner: R,
    pub digest: DigestWriter<io::Sink>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.digest.write_all(&buf[..read])?;
        Ok(read)
    }
}

/// Decompresses and applies a layer stream into `prepared/fs`, returning what was applied
/// and the diff ID (every byte of the tar, also past its end-of-archive blocks).
fn unpack(
    prepared: &tempfile::TempDir,
    raw: &mut dyn Read,
) -> Result<(ApplyStats, Digest), layer::LayerError> {
    let tar = layer::decompress(raw)?;
    let mut diff = Hashing {
        inner: tar,
        digest: DigestWriter::new(io::sink()),
    };
    let stats = layer::apply_layer(
        &prepared.path().join("fs"),
        &mut diff,
        &ApplyOptions::new(Whiteouts::Overlay),
    )?;
    io::copy(&mut diff, &mut io::sink()).map_err(layer::LayerError::Archive)?;
    let (diff_id, _, _) = diff.digest.finish();
    Ok((stats, diff_id))
}

/// Fetches one layer (from the registry, or the store's own blob), verifies it and unpacks it.
fn fetch_layer(
    source: &dyn BlobSource,
    blobs: &Blobs,
    job: Job,
    progress: &dyn Progress,
) -> Result<Fetched, RegistryError> {
    let digest = job.descriptor.digest;
    let (blob, stats, diff_id) = match job.source {
        Source::Store => {
            let mut reader = blobs.open(&digest)?;
            let (stats, diff_id) =
                unpack(&job.prepared, &mut reader).map_err(|source| RegistryError::Layer {
                    blob: digest,
                    source,
                })?;
            io::copy(&mut reader, &mut io::sink())
                .map_err(|error| kiln_cache::blob::read_error(error, &blobs.path(&digest)))?;
            let blob = Stored {
                digest,
                size: blobs.size(&digest)?,
            };
            progress.event(Event::LayerExists(digest));
            (blob, stats, diff_id)
        }
        Source::Remote => {
            progress.event(Event::LayerPulling(digest));
            let body = Counting::new(
                source.open(&digest)?,
                digest,
                job.descriptor.size,
                Transfer::Download,
                progress,
            );
            let mut raw = Tee {
                inner: body,
                copy: DigestWriter::new(blobs.writer()?),
            };
            let unpacked = unpack(&job.prepared, &mut raw);
            // Read to the end whatever happened: the digest tells corruption from hostility.
            let drained = io::copy(&mut raw, &mut io::sink());
            let (actual, size, writer) = raw.copy.finish();
            let read_error = |error| RegistryError::Read {
                registry: source.origin(),
                what: format!("layer {digest}"),
                source: error,
            };
            drained.map_err(read_error)?;
            if actual != digest {
                return Err(RegistryError::DigestMismatch {
                    registry: source.origin(),
                    what: "layer",
                    expected: digest,
                    actual,
                });
            }
            if size != job.descriptor.size {
                return Err(RegistryError::SizeMismatch {
                    registry: source.origin(),
                    what: "layer",
                    expected: digest,
                    size: job.descriptor.size,
                    actual: size,
                });
            }
            let (stats, diff_id) = unpacked.map_err(|source| RegistryError::Layer {
                blob: digest,
                source,
            })?;
            if diff_id != job.diff_id {
                return Err(RegistryError::DiffIdMismatch {
                    blob: digest,
                    expected: job.diff_id,
                    actual: diff_id,
                });
            }
            let blob = writer.commit()?;
            progress.event(Event::LayerPulled(digest));
            (blob, stats, diff_id)
        }
    };
    if diff_id != job.diff_id {
        return Err(RegistryError::DiffIdMismatch {
            blob: digest,
            expected: job.diff_id,
            actual: diff_id,
        });
    }
    Ok(Fetched {
        blob,
        diff_id,
        unpacked: stats.bytes,
        prepared: job.prepared,
    })
}
