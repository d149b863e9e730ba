//! Reading archives in one pass, without extracting them.
//!
//! The outer tar is read as a stream (stdin works), and its entries are taken for what their
//! content says, not for what their names say: small JSON documents are kept in memory (configs,
//! manifests, indexes, `manifest.json`), and everything else is tried as a layer as it streams
//! by: hashed as it is (its digest), stored as a blob (as it is when gzip or zstd, otherwise
//! compressed as `LoadOptions::plain_layers` says, on threads of their own that follow behind
//! through spill files: see `Compressing`), decompressed, hashed again (its diff ID) and
//! applied into a fresh snapshot directory in the store's `tmp/`. Only when the whole archive has
//! been read are `manifest.json` or `index.json` consulted; then every digest is checked (blob
//! names, descriptors, the config's diff IDs) before anything is recorded. Entry names serve only
//! as keys; no file is ever created under an archive's name.
//!
//! This reads each byte once, in archive order, which matters because Docker 25+ and kiln write
//! `blobs/` before `manifest.json`. The cost: a blob that is not a layer of a loaded image (an
//! image of another platform, an attestation) is unpacked for nothing, and its snapshot discarded.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io::{self, Read, Write};
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;

use serde::Deserialize;

use super::{ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, ArchiveError, DockerItem, blob_path};
use crate::blob::Stored;
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
                    entries.insert(name, Entry::Link(target));
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

/// A [`Layer`] before its blob is known.
#[derive(Debug)]
struct Unpacked {
    digest: Digest,
    size: u64,
    media_type: &'static str,
    diff_id: Digest,
    unpacked: u64,
    snapshot: Option<tempfile::TempDir>,
}

impl Unpacked {
    fn with_blob(self, blob: Stored) -> Layer {
        Layer {
            digest: self.digest,
            size: self.size,
            blob,
            media_type: self.media_type,
            diff_id: self.diff_id,
            unpacked: self.unpacked,
            snapshot: self.snapshot,
        }
    }
}

/// A layer whose blob is still being compressed.
#[derive(Debug)]
struct Pending {
    unpacked: Unpacked,
    compressing: Compressing,
}

impl Pending {
    fn wait(self) -> Result<Entry, ArchiveError> {
        let blob = self.compressing.wait()?;
        Ok(Entry::Layer(Box::new(self.unpacked.with_blob(blob))))
    }
}

/// What reading an entry as a layer gave.
#[derive(Debug)]
enum Ingested {
    Done(Entry),
    Compressing(Pending),
}

#[derive(Debug, Default)]
struct Entries {
    map: BTreeMap<String, Entry>,
    json_bytes: usize,
    /// Layers still compressing, oldest first; they join `map` once their blob is stored.
    compressing: VecDeque<(String, Pending)>,
}

impl Drop for Entries {
    /// Loading stopped early: wait for the layers still compressing (their spill files are
    /// complete or closed, so this is bounded), so that no blob is written after [`load`]
    /// returns and releases the store's ingest lock. Their blobs are left to garbage collection.
    fn drop(&mut self) {
        for (_, pending) in self.compressing.drain(..) {
            let _ = pending.compressing.0.join();
        }
    }
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
        // One compressing thread per CPU at most (they are CPU-bound), and so at most that
        // many uncompressed layers in spill files.
        let limit = thread::available_parallelism().map_or(1, NonZeroUsize::get);
        while self.compressing.len() >= limit {
            self.settle_oldest()?;
        }
        let detected = DetectedCompression::detect(&head);
        match ingest_layer(
            store,
            options,
            detected,
            io::Cursor::new(head).chain(reader),
        )? {
            Ingested::Done(entry) => self.insert(name, entry),
            Ingested::Compressing(pending) => {
                self.forget_compressing(&name);
                self.compressing.push_back((name, pending));
            }
        }
        Ok(())
    }

    /// Records an entry under its name; a later entry of the same name replaces an earlier one,
    /// as it would when extracting the archive.
    fn insert(&mut self, name: String, entry: Entry) {
        self.forget_compressing(&name);
        self.map.insert(name, entry);
    }

    /// Forgets a layer of this name still compressing, waiting for its thread so that nothing
    /// goes on behind the caller's back. Its blob, if stored, is left to garbage collection.
    fn forget_compressing(&mut self, name: &str) {
        while let Some(position) = self
            .compressing
            .iter()
            .position(|(pending, _)| pending == name)
        {
            if let Some((_, pending)) = self.compressing.remove(position) {
                let _ = pending.compressing.wait();
            }
        }
    }

    /// Waits for the oldest layer still compressing, and records it.
    fn settle_oldest(&mut self) -> Result<(), ArchiveError> {
        if let Some((name, pending)) = self.compressing.pop_front() {
            let entry = pending.wait()?;
            self.map.insert(name, entry);
        }
        Ok(())
    }

    /// Waits for every layer still compressing. On an error, the others are still waited for.
    fn settle(&mut self) -> Result<(), ArchiveError> {
        let mut first_error = None;
        while !self.compressing.is_empty() {
            if let Err(error) = self.settle_oldest() {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
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
///
/// A layer that needs compressing (an uncompressed one, by default) is compressed on a thread
/// of its own, which follows the tar through a spill file while this thread goes on reading
/// the archive: see [`Compressing`].
fn ingest_layer(
    store: &Store,
    options: &LoadOptions,
    detected: DetectedCompression,
    reader: impl Read,
) -> Result<Ingested, ArchiveError> {
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
    let (spill, compressing) = if as_is {
        (None, None)
    } else {
        let (spill, compressing) = Compressing::start(store, stored)?;
        (Some(spill), Some(compressing))
    };
    let mut raw = Tee {
        inner: reader,
        copy: DigestWriter::new(Optional(raw_blob)),
    };
    let prepared = store.prepare_snapshot()?;
    let unpacked = unpack(&prepared, &mut raw, spill);
    // Whatever happened, read the entry to its end: its digest identifies it.
    io::copy(&mut raw, &mut io::sink()).map_err(ArchiveError::Read)?;
    let (digest, size, Optional(raw_blob)) = raw.copy.finish();
    let (stats, diff_id) = match unpacked {
        Ok(unpacked) => unpacked,
        Err(error) => {
            // The spill file was closed unfinished: the compressing thread stops with an
            // error, which says nothing more than `error` does.
            if let Some(compressing) = compressing {
                let _ = compressing.wait();
            }
            return Ok(Ingested::Done(Entry::NotALayer {
                error: Arc::new(error),
            }));
        }
    };
    let unpacked = Unpacked {
        digest,
        size,
        media_type: stored.media_type(),
        diff_id,
        unpacked: stats.bytes,
        snapshot: Some(prepared),
    };
    match (compressing, raw_blob) {
        (Some(compressing), _) => Ok(Ingested::Compressing(Pending {
            unpacked,
            compressing,
        })),
        (None, Some(writer)) => Ok(Ingested::Done(Entry::Layer(Box::new(
            unpacked.with_blob(writer.commit()?),
        )))),
        (None, None) => Err(ArchiveError::Write(io::Error::other("no blob writer"))),
    }
}

/// Decompresses, hashes (the diff ID), applies a layer stream and passes the tar on to a spill
/// file if there is one (closing it when the tar is complete).
fn unpack(
    prepared: &tempfile::TempDir,
    raw: &mut impl Read,
    spill: Option<SpillWriter>,
) -> Result<(ApplyStats, Digest), LayerError> {
    let tar = layer::decompress(raw)?;
    let mut diff = Tee {
        inner: tar,
        copy: DigestWriter::new(Optional(spill)),
    };
    let stats = layer::apply_layer(
        &prepared.path().join("fs"),
        &mut diff,
        &ApplyOptions::new(Whiteouts::Overlay),
    )?;
    // The tar may go on past its end-of-archive blocks; the diff ID covers every byte.
    io::copy(&mut diff, &mut io::sink()).map_err(LayerError::Archive)?;
    let (diff_id, _, Optional(spill)) = diff.copy.finish();
    spill
        .map(SpillWriter::finish)
        .transpose()
        .map_err(LayerError::Output)?;
    Ok((stats, diff_id))
}

/// How many bytes the spill file is written and read in at a time.
const CHUNK: usize = 1 << 20;

/// A layer being compressed into a blob on a thread of its own.
///
/// gzip at level 6 is much slower than reading, hashing and unpacking a layer (about 47 MB/s
/// against 150 MB/s here), so it must not hold up reading the archive, and layers must compress
/// in parallel. The archive is one stream, though, so what the compressor has not taken yet has
/// to wait somewhere: in a spill file (an anonymous file in the store's `tmp/`), not in memory.
/// The reading thread appends the layer's tar to it as it unpacks it; the compressing thread
/// follows behind, waiting when it catches up. Memory stays flat (a chunk buffer on each side
/// and the compressor's state); the disk holds at most the uncompressed tars of the layers
/// still compressing, and [`Entries::ingest`] lets no more than one per CPU compress at once.
///
/// The blob is a digest, so its bytes must depend on the layer's bytes only: the
/// [`Compressor`] feeds its encoder fixed-size chunks whatever the sizes of the writes it gets
/// (zlib-rs at level 6 does not write the same stream for the same bytes split differently), so
/// the blob does not depend on whether the archive came from a file or a pipe.
#[derive(Debug)]
struct Compressing(thread::JoinHandle<Result<Stored, ArchiveError>>);

impl Compressing {
    /// Starts the thread; returns the end to write the tar to.
    fn start(
        store: &Store,
        compression: Compression,
    ) -> Result<(SpillWriter, Compressing), ArchiveError> {
        let file = tempfile::tempfile_in(store.layout().tmp()).map_err(ArchiveError::Write)?;
        let spill = Arc::new(Spill {
            file,
            progress: Mutex::new(Progress::default()),
            grown: Condvar::new(),
        });
        let compressor =
            Compressor::new(compression, store.blobs().writer()?).map_err(LayerError::Output)?;
        let mut reader = SpillReader {
            spill: spill.clone(),
            offset: 0,
        };
        let thread = thread::Builder::new()
            .name("kiln-compress".to_string())
            .spawn(move || {
                let mut compressor = compressor;
                let mut buffer = Vec::with_capacity(CHUNK);
                loop {
                    buffer.clear();
                    (&mut reader)
                        .take(CHUNK as u64)
                        .read_to_end(&mut buffer)
                        .map_err(LayerError::Output)?;
                    if buffer.is_empty() {
                        break;
                    }
                    compressor.write_all(&buffer).map_err(LayerError::Output)?;
                }
                let writer = compressor.finish().map_err(LayerError::Output)?;
                Ok(writer.commit()?)
            })
            .map_err(ArchiveError::Write)?;
        let writer = SpillWriter {
            spill,
            buffer: Vec::with_capacity(CHUNK),
            written: 0,
            finished: false,
        };
        Ok((writer, Compressing(thread)))
    }

    /// Waits for the blob. A panic on the thread goes on here.
    fn wait(self) -> Result<Stored, ArchiveError> {
        match self.0.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// The file a layer's tar waits in for its compressor, and how far it is written.
#[derive(Debug)]
struct Spill {
    file: fs::File,
    progress: Mutex<Progress>,
    /// Signalled whenever `progress` changes.
    grown: Condvar,
}

#[derive(Debug, Default)]
struct Progress {
    /// Bytes written and readable.
    written: u64,
    /// `Some(true)` once the tar is complete, `Some(false)` if it never will be.
    end: Option<bool>,
}

impl Spill {
    fn update(&self, change: impl FnOnce(&mut Progress)) {
        // A poisoned lock only means the other side panicked, which `wait` passes on.
        let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut progress);
        self.grown.notify_all();
    }
}

/// The reading thread's end of a [`Spill`]. Dropped unfinished, it tells the compressor the tar
/// will never be complete.
struct SpillWriter {
    spill: Arc<Spill>,
    buffer: Vec<u8>,
    written: u64,
    finished: bool,
}

impl SpillWriter {
    fn flush_buffer(&mut self) -> io::Result<()> {
        self.spill.file.write_all_at(&self.buffer, self.written)?;
        self.written += self.buffer.len() as u64;
        self.buffer.clear();
        let written = self.written;
        self.spill.update(|progress| progress.written = written);
        Ok(())
    }

    /// Writes what is buffered and marks the tar complete.
    fn finish(mut self) -> io::Result<()> {
        self.flush_buffer()?;
        self.finished = true;
        self.spill.update(|progress| progress.end = Some(true));
        Ok(())
    }
}

impl Write for SpillWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let taken = buf.len().min(CHUNK - self.buffer.len());
        self.buffer.extend_from_slice(&buf[..taken]);
        if self.buffer.len() == CHUNK {
            self.flush_buffer()?;
        }
        Ok(taken)
    }

    /// Nothing to do: the compressor takes only what [`SpillWriter::finish`] completes.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SpillWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.spill.update(|progress| progress.end = Some(false));
        }
    }
}

/// The compressing thread's end of a [`Spill`]: reads what is written, waits for more.
struct SpillReader {
    spill: Arc<Spill>,
    offset: u64,
}

impl Read for SpillReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = {
            let mut progress = self
                .spill
                .progress
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            loop {
                match (progress.written - self.offset, progress.end) {
                    (0, Some(true)) => return Ok(0),
                    (0, Some(false)) => {
                        return Err(io::Error::other("the layer was not read to its end"));
                    }
                    (0, None) => {
                        progress = self
                            .spill
                            .grown
                            .wait(progress)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                    (available, _) => break available,
                }
            }
        };
        let wanted = buf
            .len()
            .min(usize::try_from(available).unwrap_or(usize::MAX));
        let read = self.spill.file.read_at(&mut buf[..wanted], self.offset)?;
        if read == 0 && wanted > 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.offset += read as u64;
        Ok(read)
    }
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
    entries.settle()?;
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

    fn text(bytes: usize) -> Vec<u8> {
        let mut data = Vec::with_capacity(bytes + 16);
        let mut state = 1u64;
        while data.len() < bytes {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            data.extend_from_slice(format!("{:x} ", state >> 44).as_bytes());
        }
        data
    }

    /// The blob of a layer compressed on its own thread is the layer compressed in `CHUNK`-sized
    /// writes, however the bytes were written to the spill file and however far ahead.
    #[test]
    fn spilled_layers_compress_to_the_same_bytes_however_they_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let data = text(3 * CHUNK + 12_345);
        let mut inline = Compressor::new(Compression::Gzip, Vec::new()).unwrap();
        for chunk in data.chunks(CHUNK) {
            inline.write_all(chunk).unwrap();
        }
        let expected = Digest::of(&inline.finish().unwrap());
        for write_size in [7, 999, 4096, CHUNK + 7, data.len()] {
            let (mut spill, compressing) = Compressing::start(&store, Compression::Gzip).unwrap();
            for piece in data.chunks(write_size) {
                spill.write_all(piece).unwrap();
            }
            spill.finish().unwrap();
            assert_eq!(compressing.wait().unwrap().digest, expected, "{write_size}");
        }
    }

    #[test]
    fn a_spill_file_closed_before_its_end_fails_its_compression() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let (mut spill, compressing) = Compressing::start(&store, Compression::Gzip).unwrap();
        spill.write_all(&text(CHUNK + 1)).unwrap();
        drop(spill);
        assert!(compressing.wait().is_err());
    }

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
