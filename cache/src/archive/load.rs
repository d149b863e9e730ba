//! Reading archives in one pass, without extracting them.
//!
//! The outer tar is read as a stream (stdin works), and its entries are taken for what their
//! content says, not for what their names say: small JSON documents are kept in memory (configs,
//! manifests, indexes, `manifest.json`), and everything else is tried as a layer as it streams
//! by: hashed as it is (its digest), stored as a blob (as it is when gzip or zstd, otherwise
//! compressed as `LoadOptions::plain_layers` says), decompressed, hashed again (its diff ID) and
//! applied into a fresh snapshot directory in the store's `tmp/`. Only when the whole archive has
//! been read are `manifest.json` or `index.json` consulted; then every digest is checked (blob
//! names, descriptors, the config's diff IDs) before anything is recorded. Entry names serve only
//! as keys; no file is ever created under an archive's name.
//!
//! This reads each byte once, in archive order, which matters because Docker 25+ and kiln write
//! `blobs/` before `manifest.json`. The cost: a blob that is not a layer of a loaded image (an
//! image of another platform, an attestation) is unpacked for nothing, and its snapshot discarded.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::{ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, ArchiveError, DockerItem, blob_path};
use crate::blob::{BlobWriter, Stored};
use crate::digest::{Digest, DigestWriter};
use crate::image::{self, Descriptor, Index, Manifest, RootFs};
use crate::layer::{
    self, ApplyOptions, ApplyStats, Compression, Compressor, DetectedCompression, LayerError,
    Whiteouts,
};
use crate::reference::Reference;
use crate::store::{LayerRecord, NewImage, Store};

/// How to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// How to store layers that come uncompressed (or xz / bzip2, which have no OCI media type).
    /// gzip and zstd layers are always stored as they are, keeping their digests. With
    /// [`Compression::None`] an uncompressed layer keeps its digest too, at twice the disk.
    pub plain_layers: Compression,
}

impl Default for LoadOptions {
    /// Uncompressed layers become kiln's deterministic gzip, like the layers kiln writes.
    fn default() -> Self {
        LoadOptions {
            plain_layers: Compression::Gzip,
        }
    }
}

/// An image recorded by [`load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    pub id: Digest,
    /// The tags it was given, normalised (`docker.io/library/busybox:latest`).
    pub tags: Vec<Reference>,
    /// Tags that pointed at another image before, with that image's ID (Docker: "The image
    /// busybox:latest already exists, renaming the old one with ID ... to empty string").
    pub replaced: Vec<(Reference, Digest)>,
}

/// The most JSON one entry may hold, and all entries together. Configs and manifests are far
/// smaller; the limits keep a hostile archive from filling memory.
const JSON_LIMIT: usize = 16 << 20;
const JSON_TOTAL_LIMIT: usize = 256 << 20;
/// How many symbolic links to follow from one name.
const LINK_LIMIT: usize = 16;
/// How deep indexes may nest.
const INDEX_DEPTH: usize = 4;

/// Loads the images of an archive (Docker or OCI; plain, gzip, zstd, xz or bzip2) read from a
/// stream, records them and gives them their tags. Verifies every digest first: on a mismatch
/// (or any other error) nothing is recorded, and the content already written is left to garbage
/// collection. Holds the store's ingest lock throughout.
pub fn load(
    store: &mut Store,
    archive: impl Read,
    options: &LoadOptions,
) -> Result<Vec<LoadedImage>, ArchiveError> {
    let _ingest = store.ingest()?;
    let mut entries = Entries::default();
    {
        let tar = layer::decompress(archive)?;
        let mut archive = tar::Archive::new(tar);
        for entry in archive.entries().map_err(ArchiveError::Read)? {
            let entry = entry.map_err(ArchiveError::Read)?;
            let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            // A name that climbs out of the archive cannot be referenced by one that doesn't.
            let Some(name) = normalize(&raw_name) else {
                continue;
            };
            let kind = entry.header().entry_type();
            if kind.is_file() {
                entries.ingest(store, options, name, entry)?;
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name_bytes()
                    .map(|target| String::from_utf8_lossy(&target).into_owned())
                    .unwrap_or_default();
                // Symlink targets are relative to the link's directory, hardlink targets to
                // the archive root.
                let base = match name.rsplit_once('/') {
                    Some((parent, _)) if kind.is_symlink() => parent,
                    Some(_) | None => "",
                };
                if let Some(target) = normalize(&format!("{base}/{target}")) {
                    entries.map.insert(name, Entry::Link(target));
                }
            }
        }
    }
    finish(store, entries)
}

/// Loads the images of an OCI image layout directory (`oci-layout`, `index.json`,
/// `blobs/sha256/<hex>`), as [`load`] does an archive. Only `index.json`, `manifest.json` and
/// blobs whose names are sha256 digests are read, and never through a symbolic link.
pub fn load_layout(
    store: &mut Store,
    directory: &Path,
    options: &LoadOptions,
) -> Result<Vec<LoadedImage>, ArchiveError> {
    let _ingest = store.ingest()?;
    let layout_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveError::Layout { path, source }
    };
    let open = |path: &Path| -> Result<Option<fs::File>, ArchiveError> {
        match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(file) => {
                let metadata = file.metadata().map_err(layout_error(path))?;
                Ok(metadata.is_file().then_some(file))
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(layout_error(path)(error)),
        }
    };
    let mut entries = Entries::default();
    for name in ["index.json", "manifest.json"] {
        if let Some(file) = open(&directory.join(name))? {
            entries.ingest(store, options, name.to_string(), file)?;
        }
    }
    let blobs = directory.join("blobs").join("sha256");
    let mut digests = Vec::new();
    match fs::read_dir(&blobs) {
        Ok(listing) => {
            for entry in listing {
                let entry = entry.map_err(layout_error(&blobs))?;
                let digest = entry
                    .file_name()
                    .to_str()
                    .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok());
                digests.extend(digest);
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(layout_error(&blobs)(error)),
    }
    digests.sort();
    for digest in digests {
        if let Some(file) = open(&blobs.join(digest.hex()))? {
            entries.ingest(store, options, blob_path(&digest), file)?;
        }
    }
    finish(store, entries)
}

/// What an archive entry turned out to be.
#[derive(Debug)]
enum Entry {
    Json {
        digest: Digest,
        bytes: Vec<u8>,
    },
    Layer(Box<Layer>),
    /// Content that is neither JSON nor a layer kiln can apply.
    NotALayer {
        error: Arc<LayerError>,
    },
    /// A symbolic or hard link, with its target normalised to an entry name.
    Link(String),
}

/// A layer read from the archive: stored as a blob, unpacked into a snapshot not yet committed.
#[derive(Debug)]
struct Layer {
    /// Digest and size of the entry's bytes as the archive has them.
    digest: Digest,
    size: u64,
    /// The blob stored for it (the same bytes, or compressed).
    blob: Stored,
    media_type: &'static str,
    diff_id: Digest,
    /// Bytes of file content unpacked.
    unpacked: u64,
    /// Taken by the first image that commits this layer at a new chain ID.
    snapshot: Option<tempfile::TempDir>,
}

#[derive(Debug, Default)]
struct Entries {
    map: BTreeMap<String, Entry>,
    json_bytes: usize,
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

/// A writer that may be absent (then bytes are discarded).
struct Optional<W>(Option<W>);

impl<W: Write> Write for Optional<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            Some(inner) => inner.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.0 {
            Some(inner) => inner.flush(),
            None => Ok(()),
        }
    }
}

impl Entries {
    /// Reads one regular entry: JSON is kept, anything else is tried as a layer.
    fn ingest(
        &mut self,
        store: &Store,
        options: &LoadOptions,
        name: String,
        mut reader: impl Read,
    ) -> Result<(), ArchiveError> {
        let mut head = Vec::new();
        (&mut reader)
            .take(512)
            .read_to_end(&mut head)
            .map_err(ArchiveError::Read)?;
        let first = head.iter().find(|byte| !byte.is_ascii_whitespace());
        if matches!(first, Some(b'{' | b'[')) {
            let room = (JSON_LIMIT + 1).saturating_sub(head.len());
            (&mut reader)
                .take(room as u64)
                .read_to_end(&mut head)
                .map_err(ArchiveError::Read)?;
            if head.len() <= JSON_LIMIT
                && self.json_bytes + head.len() <= JSON_TOTAL_LIMIT
                && serde_json::from_slice::<serde::de::IgnoredAny>(&head).is_ok()
            {
                self.json_bytes += head.len();
                let digest = Digest::of(&head);
                self.map.insert(
                    name,
                    Entry::Json {
                        digest,
                        bytes: head,
                    },
                );
                return Ok(());
            }
        }
        let detected = DetectedCompression::detect(&head);
        let entry = ingest_layer(
            store,
            options,
            detected,
            io::Cursor::new(head).chain(reader),
        )?;
        self.map.insert(name, entry);
        Ok(())
    }

    /// The entry a name leads to, following links; with the name it was found under.
    fn resolve(&self, name: &str) -> Result<(String, &Entry), ArchiveError> {
        let missing = || ArchiveError::MissingEntry {
            name: name.to_string(),
        };
        let mut current = normalize(name).ok_or_else(missing)?;
        for _ in 0..LINK_LIMIT {
            match self.map.get(&current) {
                None => return Err(missing()),
                Some(Entry::Link(target)) => current = target.clone(),
                Some(entry) => return Ok((current, entry)),
            }
        }
        Err(ArchiveError::LinkLoop {
            name: name.to_string(),
        })
    }

    /// A JSON entry and its digest.
    fn json(&self, name: &str) -> Result<(Digest, &[u8]), ArchiveError> {
        match self.resolve(name)? {
            (_, Entry::Json { digest, bytes }) => Ok((*digest, bytes)),
            (_, Entry::Layer(_) | Entry::NotALayer { .. } | Entry::Link(_)) => {
                Err(ArchiveError::NotJson {
                    name: name.to_string(),
                })
            }
        }
    }

    /// A JSON blob of an OCI layout, checked against its descriptor.
    fn json_blob(
        &self,
        what: &'static str,
        descriptor: &Descriptor,
    ) -> Result<&[u8], ArchiveError> {
        let (digest, bytes) = self.json(&blob_path(&descriptor.digest))?;
        check(what, descriptor, digest, bytes.len() as u64)?;
        Ok(bytes)
    }

    /// The layer a name leads to (resolved name and layer). If the name is a blob path, the
    /// content must hash to it.
    fn layer(&self, name: &str) -> Result<(String, &Layer), ArchiveError> {
        let (resolved, entry) = self.resolve(name)?;
        let layer = match entry {
            Entry::Layer(layer) => layer,
            Entry::NotALayer { error, .. } => {
                return Err(ArchiveError::NotALayer {
                    name: name.to_string(),
                    source: Some(error.clone()),
                });
            }
            Entry::Json { .. } | Entry::Link(_) => {
                return Err(ArchiveError::NotALayer {
                    name: name.to_string(),
                    source: None,
                });
            }
        };
        if let Some(named) = digest_in_name(&resolved)
            && named != layer.digest
        {
            return Err(ArchiveError::DigestMismatch {
                what: "layer",
                expected: named,
                actual: layer.digest,
            });
        }
        Ok((resolved, layer))
    }
}

/// Checks content against its descriptor: digest, then size.
fn check(
    what: &'static str,
    descriptor: &Descriptor,
    actual: Digest,
    size: u64,
) -> Result<(), ArchiveError> {
    if actual != descriptor.digest {
        return Err(ArchiveError::DigestMismatch {
            what,
            expected: descriptor.digest,
            actual,
        });
    }
    if size != descriptor.size {
        return Err(ArchiveError::SizeMismatch {
            what,
            expected: descriptor.digest,
            size: descriptor.size,
            actual: size,
        });
    }
    Ok(())
}

/// Stores and unpacks one entry as a layer. A failure to read it as a layer is not an error
/// yet (the entry may be something else), but a failure to read the archive is.
fn ingest_layer(
    store: &Store,
    options: &LoadOptions,
    detected: DetectedCompression,
    reader: impl Read,
) -> Result<Entry, ArchiveError> {
    let (as_is, stored) = match detected {
        DetectedCompression::Gzip => (true, Compression::Gzip),
        DetectedCompression::Zstd => (true, Compression::Zstd),
        DetectedCompression::Plain if options.plain_layers == Compression::None => {
            (true, Compression::None)
        }
        DetectedCompression::Plain | DetectedCompression::Xz | DetectedCompression::Bzip2 => {
            (false, options.plain_layers)
        }
    };
    let raw_blob = if as_is {
        Some(store.blobs().writer()?)
    } else {
        None
    };
    let recompressed = if as_is {
        None
    } else {
        Some(Compressor::new(stored, store.blobs().writer()?).map_err(LayerError::Output)?)
    };
    let mut raw = Tee {
        inner: reader,
        copy: DigestWriter::new(Optional(raw_blob)),
    };
    let prepared = store.prepare_snapshot()?;
    let unpacked = unpack(&prepared, &mut raw, recompressed);
    // Whatever happened, read the entry to its end: its digest identifies it.
    io::copy(&mut raw, &mut io::sink()).map_err(ArchiveError::Read)?;
    let (digest, size, Optional(raw_blob)) = raw.copy.finish();
    let (stats, diff_id, recompressed) = match unpacked {
        Ok(unpacked) => unpacked,
        Err(error) => {
            return Ok(Entry::NotALayer {
                error: Arc::new(error),
            });
        }
    };
    let Some(writer) = recompressed.or(raw_blob) else {
        return Err(ArchiveError::Write(io::Error::other("no blob writer")));
    };
    let blob = writer.commit()?;
    Ok(Entry::Layer(Box::new(Layer {
        digest,
        size,
        blob,
        media_type: stored.media_type(),
        diff_id,
        unpacked: stats.bytes,
        snapshot: Some(prepared),
    })))
}

/// Decompresses, hashes (the diff ID), optionally recompresses and applies a layer stream.
fn unpack(
    prepared: &tempfile::TempDir,
    raw: &mut impl Read,
    recompressed: Option<Compressor<BlobWriter>>,
) -> Result<(ApplyStats, Digest, Option<BlobWriter>), LayerError> {
    let tar = layer::decompress(raw)?;
    let mut diff = Tee {
        inner: tar,
        copy: DigestWriter::new(Optional(recompressed)),
    };
    let stats = layer::apply_layer(
        &prepared.path().join("fs"),
        &mut diff,
        &ApplyOptions::new(Whiteouts::Overlay),
    )?;
    // The tar may go on past its end-of-archive blocks; the diff ID covers every byte.
    io::copy(&mut diff, &mut io::sink()).map_err(LayerError::Archive)?;
    let (diff_id, _, Optional(compressor)) = diff.copy.finish();
    let writer = compressor
        .map(Compressor::finish)
        .transpose()
        .map_err(LayerError::Output)?;
    Ok((stats, diff_id, writer))
}

/// A name made relative and free of `.` and `..` (lexically; nothing is resolved on disk).
/// `None` for a name that climbs above the root or is empty.
fn normalize(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// The digest an entry name claims for its content: `blobs/sha256/<hex>` (OCI, Docker 25+) or
/// `<hex>.json` (a config in Docker 1.10–24 archives).
fn digest_in_name(name: &str) -> Option<Digest> {
    let hex = name
        .strip_prefix("blobs/sha256/")
        .or_else(|| name.strip_suffix(".json").filter(|hex| !hex.contains('/')))?;
    format!("sha256:{hex}").parse().ok()
}

/// The parts of an image config that loading needs.
#[derive(Debug, Deserialize)]
struct ConfigView {
    #[serde(default)]
    created: Option<String>,
    rootfs: RootFs,
}

/// A manifest as the archive has it.
#[derive(Debug, Clone)]
struct Original {
    bytes: Vec<u8>,
    media_type: String,
    manifest: Manifest,
}

/// An image to record.
#[derive(Debug)]
struct Plan {
    id: Digest,
    config: Vec<u8>,
    created: Option<String>,
    diff_ids: Vec<Digest>,
    /// Resolved entry names of the layers, in order.
    layers: Vec<String>,
    original: Option<Original>,
    tags: Vec<Reference>,
}

fn parse<'a, T: Deserialize<'a>>(name: &str, bytes: &'a [u8]) -> Result<T, ArchiveError> {
    serde_json::from_slice(bytes).map_err(|source| ArchiveError::Json {
        name: name.to_string(),
        source,
    })
}

/// Plans every image, checks every digest, then records.
fn finish(store: &mut Store, mut entries: Entries) -> Result<Vec<LoadedImage>, ArchiveError> {
    let plans = if entries.map.contains_key("manifest.json") {
        docker_plans(&entries)?
    } else if entries.map.contains_key("index.json") {
        oci_plans(&entries)?
    } else {
        return Err(ArchiveError::NotAnImageArchive);
    };
    if plans.is_empty() {
        return Err(ArchiveError::NoImage);
    }
    let mut merged: Vec<Plan> = Vec::new();
    for plan in plans {
        match merged.iter_mut().find(|known| known.id == plan.id) {
            Some(known) => {
                for tag in plan.tags {
                    if !known.tags.contains(&tag) {
                        known.tags.push(tag);
                    }
                }
            }
            None => merged.push(plan),
        }
    }
    merged
        .into_iter()
        .map(|plan| record(store, &mut entries, plan))
        .collect()
}

/// Plans from a Docker archive's `manifest.json`. If the archive is also an OCI layout (Docker
/// 25+, kiln), the OCI manifest of an image is kept when the stored blobs match it.
fn docker_plans(entries: &Entries) -> Result<Vec<Plan>, ArchiveError> {
    let (_, bytes) = entries.json("manifest.json")?;
    let items: Vec<DockerItem> = parse("manifest.json", bytes)?;
    // index.json is only a help here: a broken one does not stop a Docker archive loading.
    let originals: Vec<(Original, Vec<Reference>)> = if entries.map.contains_key("index.json") {
        oci_manifests(entries).unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut plans = Vec::new();
    for item in items {
        let (config_name, _) = entries.resolve(&item.config)?;
        let (id, config) = entries.json(&item.config)?;
        if let Some(named) = digest_in_name(&config_name)
            && named != id
        {
            return Err(ArchiveError::DigestMismatch {
                what: "config",
                expected: named,
                actual: id,
            });
        }
        let mut layers = Vec::new();
        for name in &item.layers {
            layers.push(entries.layer(name)?.0);
        }
        let mut tags = Vec::new();
        for text in item.repo_tags.unwrap_or_default() {
            let reference = Reference::parse(&text)
                .map_err(|source| ArchiveError::Reference {
                    text: text.clone(),
                    source,
                })?
                .with_default_tag();
            tags.push(reference);
        }
        let original = originals
            .iter()
            .find(|(original, _)| original.manifest.config.digest == id)
            .map(|(original, _)| original.clone());
        plans.push(plan(entries, id, config, layers, original, tags)?);
    }
    Ok(plans)
}

/// Plans from an OCI layout's `index.json`.
fn oci_plans(entries: &Entries) -> Result<Vec<Plan>, ArchiveError> {
    let mut plans = Vec::new();
    for (original, tags) in oci_manifests(entries)? {
        let id = original.manifest.config.digest;
        let config = entries.json_blob("config", &original.manifest.config)?;
        let mut layers = Vec::new();
        for descriptor in &original.manifest.layers {
            let (name, layer) = entries.layer(&blob_path(&descriptor.digest))?;
            check("layer", descriptor, layer.digest, layer.size)?;
            layers.push(name);
        }
        plans.push(plan(entries, id, config, layers, Some(original), tags)?);
    }
    Ok(plans)
}

/// Checks a config against its layers and makes the plan.
fn plan(
    entries: &Entries,
    id: Digest,
    config: &[u8],
    layers: Vec<String>,
    original: Option<Original>,
    tags: Vec<Reference>,
) -> Result<Plan, ArchiveError> {
    let view: ConfigView = parse(&id.to_string(), config)?;
    if view.rootfs.diff_ids.len() != layers.len() {
        return Err(ArchiveError::LayerCount {
            image: id,
            layers: layers.len(),
            diff_ids: view.rootfs.diff_ids.len(),
        });
    }
    for (position, (name, expected)) in layers.iter().zip(&view.rootfs.diff_ids).enumerate() {
        let (_, layer) = entries.layer(name)?;
        if layer.diff_id != *expected {
            return Err(ArchiveError::DiffIdMismatch {
                name: name.clone(),
                position,
                expected: *expected,
                actual: layer.diff_id,
            });
        }
    }
    Ok(Plan {
        id,
        config: config.to_vec(),
        created: view.created,
        diff_ids: view.rootfs.diff_ids,
        layers,
        original,
        tags,
    })
}

/// The image manifests `index.json` leads to (one platform of each nested index: this
/// machine's), each with the tags its annotations give.
fn oci_manifests(entries: &Entries) -> Result<Vec<(Original, Vec<Reference>)>, ArchiveError> {
    let (_, bytes) = entries.json("index.json")?;
    let index: Index = parse("index.json", bytes)?;
    let mut found = Vec::new();
    for descriptor in &index.manifests {
        let tags = tags_of(descriptor)?;
        if let Some(original) = manifest_of(entries, descriptor, 0)? {
            found.push((original, tags));
        }
    }
    Ok(found)
}

/// The tags an index entry's annotations give: containerd's full name, else the OCI reference
/// name when it is a full name (Docker and skopeo write a bare tag there, which names nothing).
fn tags_of(descriptor: &Descriptor) -> Result<Vec<Reference>, ArchiveError> {
    if let Some(name) = descriptor.annotations.get(ANNOTATION_IMAGE_NAME) {
        let reference = Reference::parse(name).map_err(|source| ArchiveError::Reference {
            text: name.clone(),
            source,
        })?;
        return Ok(Vec::from_iter(
            Some(reference.with_default_tag()).filter(|reference| reference.digest().is_none()),
        ));
    }
    Ok(descriptor
        .annotations
        .get(ANNOTATION_REF_NAME)
        .filter(|name| name.contains(':') || name.contains('/'))
        .and_then(|name| Reference::parse(name).ok())
        .map(Reference::with_default_tag)
        .filter(|reference| reference.digest().is_none())
        .into_iter()
        .collect())
}

/// The image manifest a descriptor leads to; `None` for content that is not an image.
fn manifest_of(
    entries: &Entries,
    descriptor: &Descriptor,
    depth: usize,
) -> Result<Option<Original>, ArchiveError> {
    match descriptor.media_type.as_str() {
        image::MEDIA_TYPE_OCI_MANIFEST | image::MEDIA_TYPE_DOCKER_MANIFEST => {
            let bytes = entries.json_blob("manifest", descriptor)?;
            let manifest: Manifest = parse(&descriptor.digest.to_string(), bytes)?;
            Ok(Some(Original {
                bytes: bytes.to_vec(),
                media_type: descriptor.media_type.clone(),
                manifest,
            }))
        }
        image::MEDIA_TYPE_OCI_INDEX | image::MEDIA_TYPE_DOCKER_LIST if depth < INDEX_DEPTH => {
            let bytes = entries.json_blob("index", descriptor)?;
            let index: Index = parse(&descriptor.digest.to_string(), bytes)?;
            let architecture = crate::import::host_architecture();
            let matching: Vec<&Descriptor> = index
                .manifests
                .iter()
                .filter(|child| {
                    child.platform.as_ref().is_some_and(|platform| {
                        platform.os == "linux" && platform.architecture == architecture
                    })
                })
                .collect();
            let chosen = match (matching.first(), index.manifests.as_slice()) {
                (Some(first), _) => *first,
                (None, [only]) => only,
                (None, _) => {
                    return Err(ArchiveError::NoPlatform {
                        index: descriptor.digest,
                        platform: format!("linux/{architecture}"),
                    });
                }
            };
            manifest_of(entries, chosen, depth + 1)
        }
        _ => Ok(None),
    }
}

/// Commits an image's snapshots, stores its config and manifest, records it and tags it.
fn record(
    store: &mut Store,
    entries: &mut Entries,
    plan: Plan,
) -> Result<LoadedImage, ArchiveError> {
    let chain = image::chain_ids(&plan.diff_ids);
    let mut records = Vec::with_capacity(plan.layers.len());
    for (position, name) in plan.layers.iter().enumerate() {
        let Some(Entry::Layer(layer)) = entries.map.get_mut(name) else {
            return Err(ArchiveError::MissingEntry { name: name.clone() });
        };
        let chain_id = chain[position];
        // A snapshot already in the store keeps its blob: the store collects garbage by the
        // blobs of snapshots, so the manifest recorded must name that one.
        let existing = store
            .snapshot(&chain_id)?
            .filter(|existing| store.blobs().contains(&existing.blob));
        let record = match existing {
            Some(existing) => existing,
            None => {
                let record = LayerRecord {
                    chain_id,
                    diff_id: layer.diff_id,
                    blob: layer.blob.digest,
                    media_type: layer.media_type.to_string(),
                    blob_size: layer.blob.size,
                    size: layer.unpacked,
                };
                let prepared = match layer.snapshot.take() {
                    Some(prepared) => prepared,
                    // The same layer at a second chain ID needs a second snapshot.
                    None => snapshot_from_blob(store, &layer.blob.digest, &layer.diff_id)?,
                };
                let parent = position.checked_sub(1).map(|parent| &chain[parent]);
                store.commit_snapshot(prepared, &record, parent)?;
                record
            }
        };
        records.push(record);
    }
    let same_layers = |original: &Original| {
        original
            .manifest
            .layers
            .iter()
            .map(|layer| layer.digest)
            .eq(records.iter().map(|record| record.blob))
    };
    let (manifest, media_type) = match &plan.original {
        Some(original) if original.manifest.config.digest == plan.id && same_layers(original) => {
            (original.bytes.clone(), original.media_type.clone())
        }
        _ => {
            let layers = records
                .iter()
                .map(|record| {
                    let media_type = Compression::from_media_type(&record.media_type)
                        .map_or(record.media_type.as_str(), |compression| {
                            compression.media_type()
                        });
                    Descriptor::new(media_type, record.blob, record.blob_size)
                })
                .collect();
            let mut manifest = Manifest::oci(
                Descriptor::new(
                    image::MEDIA_TYPE_OCI_CONFIG,
                    plan.id,
                    plan.config.len() as u64,
                ),
                layers,
            );
            if let Some(original) = &plan.original {
                manifest.annotations = original.manifest.annotations.clone();
            }
            let bytes = image::canonical_json(&manifest).map_err(ArchiveError::Encode)?;
            (bytes, image::MEDIA_TYPE_OCI_MANIFEST.to_string())
        }
    };
    store
        .blobs()
        .put_expected(plan.config.as_slice(), plan.id, None)?;
    let manifest = store.blobs().put_bytes(&manifest)?;
    store.add_image(&NewImage {
        id: plan.id,
        manifest: manifest.digest,
        manifest_media_type: media_type,
        created: plan.created,
        layers: records,
    })?;
    let mut replaced = Vec::new();
    for tag in &plan.tags {
        let full = tag.to_string();
        let before = store.lookup_reference(&full)?;
        store.tag(&full, &plan.id)?;
        if let Some(before) = before
            && before != plan.id
        {
            replaced.push((tag.clone(), before));
        }
    }
    Ok(LoadedImage {
        id: plan.id,
        tags: plan.tags,
        replaced,
    })
}

/// Unpacks a stored layer blob into a new snapshot directory, checking its diff ID.
fn snapshot_from_blob(
    store: &Store,
    blob: &Digest,
    diff_id: &Digest,
) -> Result<tempfile::TempDir, ArchiveError> {
    let prepared = store.prepare_snapshot()?;
    let reader = store.blobs().open(blob)?;
    let mut tee = Tee {
        inner: layer::decompress(reader)?,
        copy: DigestWriter::new(io::sink()),
    };
    layer::apply_layer(
        &prepared.path().join("fs"),
        &mut tee,
        &ApplyOptions::new(Whiteouts::Overlay),
    )?;
    io::copy(&mut tee, &mut io::sink()).map_err(LayerError::Archive)?;
    let (actual, _, _) = tee.copy.finish();
    if actual != *diff_id {
        return Err(ArchiveError::DiffIdMismatch {
            name: blob.to_string(),
            position: 0,
            expected: *diff_id,
            actual,
        });
    }
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_lexically_and_never_climb_out() {
        assert_eq!(
            normalize("./blobs/sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(
            normalize("/abc//layer.tar").as_deref(),
            Some("abc/layer.tar")
        );
        assert_eq!(
            normalize("a/../b/layer.tar").as_deref(),
            Some("b/layer.tar")
        );
        assert_eq!(normalize("../etc/passwd"), None);
        assert_eq!(normalize("a/../../x"), None);
        assert_eq!(normalize("./"), None);
    }

    #[test]
    fn digests_are_read_from_blob_and_config_names_only() {
        let digest = Digest::of(b"x");
        assert_eq!(digest_in_name(&blob_path(&digest)), Some(digest));
        assert_eq!(
            digest_in_name(&format!("{}.json", digest.hex())),
            Some(digest)
        );
        assert_eq!(digest_in_name("manifest.json"), None);
        assert_eq!(digest_in_name(&format!("x/{}.json", digest.hex())), None);
        assert_eq!(digest_in_name("abc/layer.tar"), None);
    }
}
