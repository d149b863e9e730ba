//! The build context: which files COPY/ADD sources name, what their content is (for cache
//! keys), and the tar stream that puts them into an image.
//!
//! Paths are relative to the context root, cleaned as Go's `filepath.Clean` does, and never
//! leave it: `..` above the root stays at the root (as BuildKit's context resolution does),
//! and symlinks are resolved inside the context (a symlink named as a source is followed, with
//! chroot semantics; symlinks inside a copied directory are copied as symlinks). Files the
//! `.dockerignore` excludes are invisible: a source naming one is "not found".
//!
//! Only what a COPY/ADD selects is read, and files are hashed in parallel (rayon). A file's
//! content digest is computed once: a stat cache keyed by device and inode, checked against
//! size, mtime and ctime, remembers it for the rest of the build and, once
//! [`Context::remember_hashes`] is in use, across builds (see the `statcache` module).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use kiln_cache::digest::{Digest, DigestWriter};
use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

use crate::chmod::Chmod;
use crate::ignore::Matcher;
use crate::statcache::{self, FileKey, FileStamp, Remembered};

/// How many symlinks one source resolution follows (Linux's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// Why a context path cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("\"{0}\": not found")]
    NotFound(String),
    #[error("no source files were specified")]
    NoSources,
    #[error("invalid wildcard pattern {0:?}")]
    BadPattern(String),
    #[error("too many levels of symbolic links resolving {0:?}")]
    SymlinkLoop(String),
    #[error("reading the build context at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unpacking the build context archive: {0}")]
    Archive(#[source] kiln_cache::layer::LayerError),
}

/// Whether `magic` (the first bytes of a stream, up to 512) starts a tar archive, plain or
/// compressed (gzip, bzip2, xz, zstd), as `docker build -` tells a context archive from a
/// Dockerfile.
pub fn is_archive_start(magic: &[u8]) -> bool {
    magic.starts_with(&[0x1f, 0x8b])
        || magic.starts_with(b"BZh")
        || magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0])
        || magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || (magic.len() >= 262 && &magic[257..262] == b"ustar")
}

/// Unpacks a context archive (tar, possibly compressed) into `directory`, with the store's
/// hostile-archive rules: nothing lands outside `directory`, whatever the entry names and
/// links say. Owners are not kept (a context's files are read, not owned).
pub fn unpack_archive(reader: impl Read, directory: &Path) -> Result<(), ContextError> {
    let tar = kiln_cache::layer::decompress(reader).map_err(ContextError::Archive)?;
    let options = kiln_cache::layer::ApplyOptions {
        whiteouts: kiln_cache::layer::Whiteouts::Apply,
        preserve_ownership: false,
        devices: kiln_cache::layer::DeviceNodes::Skip,
        xattrs: false,
    };
    kiln_cache::layer::apply_layer(directory, tar, &options)
        .map(drop)
        .map_err(ContextError::Archive)
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ContextError + '_ {
    move |source| ContextError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A local build context: a directory and its `.dockerignore`.
#[derive(Debug)]
pub struct Context {
    root: PathBuf,
    ignore: Option<Matcher>,
    /// The stat cache: content digests by device and inode.
    hashes: Mutex<HashMap<FileKey, Remembered>>,
    /// How many files were read to be hashed (stat cache misses).
    files_hashed: AtomicUsize,
}

/// The stat cache of a context kept in a store between builds, from
/// [`Context::remember_hashes`]: written back by [`RememberedHashes::save`], or when dropped.
#[derive(Debug)]
#[must_use = "the digests are saved when this is saved or dropped"]
pub struct RememberedHashes<'a> {
    context: &'a Context,
    file: Option<PathBuf>,
    /// [`Context::files_hashed`] when the cache was loaded: unchanged, there is nothing new.
    hashed_before: usize,
}

impl RememberedHashes<'_> {
    /// Writes the context's stat cache back to the store now. See [`Self::save_at`].
    pub fn save(self) -> io::Result<()> {
        self.save_at(SystemTime::now())
    }

    /// Writes the context's stat cache back to the store as if the time were `now`: files
    /// that changed less than two seconds before `now` are left out (their next build reads
    /// them again). Atomic; the cache stays bounded (see the `statcache` module). Nothing is
    /// written when no file was hashed since the cache was loaded.
    pub fn save_at(mut self, now: SystemTime) -> io::Result<()> {
        self.write(now)
    }

    fn write(&mut self, now: SystemTime) -> io::Result<()> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        if self.context.files_hashed() == self.hashed_before {
            return Ok(());
        }
        let hashes = self
            .context
            .hashes
            .lock()
            .map_err(|_| io::Error::other("the stat cache lock is poisoned"))?;
        statcache::save(&file, &hashes, now)
    }
}

impl Drop for RememberedHashes<'_> {
    fn drop(&mut self) {
        // Best effort: a cache that cannot be written only costs the next build a rehash.
        let _ = self.write(SystemTime::now());
    }
}

/// A source matched in the context: its cleaned relative path (`""` for the root) and the
/// host path it resolves to (symlinks followed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The path the source resolves to, relative to the context root (symlinks followed).
    pub relative: String,
    /// The cleaned relative path as the source was named or matched, before any symlink was
    /// followed: a copy takes this path's last component as its name (`COPY link.txt /dir/`
    /// makes `/dir/link.txt` with the target's content, as BuildKit does).
    pub named: String,
    pub host: PathBuf,
    pub is_dir: bool,
}

/// Owner and mode changes applied to copied entries (`--chown`, `--chmod`).
#[derive(Debug, Clone, Default)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    /// The mode change for every copied file and directory.
    pub mode: Option<Chmod>,
}

impl Context {
    pub fn new(root: impl Into<PathBuf>, ignore: Option<Matcher>) -> Context {
        Context {
            root: root.into(),
            ignore,
            hashes: Mutex::new(HashMap::new()),
            files_hashed: AtomicUsize::new(0),
        }
    }

    /// Loads the digests this context's files had in earlier builds from `directory` (a
    /// store's `context-hashes/`), and returns the handle that writes them back, with the ones
    /// this build computes. A missing or damaged cache is no error: files are hashed again.
    /// A digest is reused only while the file's device, inode, size, mtime and ctime are
    /// unchanged.
    pub fn remember_hashes(&self, directory: &Path) -> RememberedHashes<'_> {
        let file = statcache::file_for(directory, &self.root);
        if let Some(file) = &file {
            let loaded = statcache::load(file);
            if let Ok(mut hashes) = self.hashes.lock() {
                if hashes.is_empty() {
                    *hashes = loaded;
                } else {
                    for (key, remembered) in loaded {
                        hashes.entry(key).or_insert(remembered);
                    }
                }
            }
        }
        RememberedHashes {
            context: self,
            file,
            hashed_before: self.files_hashed(),
        }
    }

    /// How many files this context has read to hash them: the stat cache's misses.
    pub fn files_hashed(&self) -> usize {
        self.files_hashed.load(Ordering::Relaxed)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn excluded(&self, relative: &str) -> bool {
        !relative.is_empty()
            && self
                .ignore
                .as_ref()
                .is_some_and(|matcher| matcher.matches(relative))
    }

    /// The sources a COPY/ADD source pattern names, sorted by path. A pattern with wildcards
    /// (`*`, `?`, `[...]`, Go `filepath.Match` syntax) may match nothing (BuildKit's
    /// AllowEmptyWildcard); a plain path must exist (and not be excluded).
    pub fn sources(&self, pattern: &str) -> Result<Vec<Source>, ContextError> {
        let cleaned = kiln_parser::path::clean(&format!("/{pattern}"));
        let relative = cleaned.trim_start_matches('/').to_string();
        if !has_wildcards(&relative) {
            return Ok(vec![self.resolve(&relative)?]);
        }
        let mut matches = Vec::new();
        let components: Vec<&str> = relative.split('/').collect();
        self.walk_pattern(&self.root.clone(), String::new(), &components, &mut matches)?;
        matches.sort_by(|a, b| a.relative.cmp(&b.relative));
        Ok(matches)
    }

    fn walk_pattern(
        &self,
        dir: &Path,
        prefix: String,
        components: &[&str],
        out: &mut Vec<Source>,
    ) -> Result<(), ContextError> {
        let Some((first, rest)) = components.split_first() else {
            return Ok(());
        };
        let mut names: Vec<String> = fs::read_dir(dir)
            .map_err(io_at(dir))?
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in names {
            if !glob_match(first, &name)? {
                continue;
            }
            let relative = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let source = match self.resolve(&relative) {
                Ok(source) => source,
                // Left out by the .dockerignore (and holding nothing re-included).
                Err(ContextError::NotFound(_)) if self.excluded(&relative) => continue,
                Err(error) => return Err(error),
            };
            if rest.is_empty() {
                out.push(source);
            } else if source.is_dir {
                self.walk_pattern(&source.host, relative, rest, out)?;
            }
        }
        Ok(())
    }

    /// Resolves a cleaned relative path inside the context, following symlinks with chroot
    /// semantics. A path the `.dockerignore` excludes is not found, unless it is a directory
    /// holding a re-included (`!`) path: BuildKit sends the parents of what it sends, so such
    /// a directory exists in its context (with only the re-included content).
    fn resolve(&self, relative: &str) -> Result<Source, ContextError> {
        if !self.excluded(relative) {
            return self.follow(relative);
        }
        let not_found = || ContextError::NotFound(relative.to_string());
        if !self.ignore.as_ref().is_some_and(Matcher::has_exclusions) {
            return Err(not_found());
        }
        match self.follow(relative) {
            Ok(source)
                if source.is_dir
                    && !self.collect(&source.host, &source.relative, "")?.is_empty() =>
            {
                Ok(source)
            }
            Ok(_) | Err(ContextError::NotFound(_)) => Err(not_found()),
            Err(error) => Err(error),
        }
    }

    /// Follows a cleaned relative path inside the context, symlinks with chroot semantics,
    /// without looking at the `.dockerignore`.
    fn follow(&self, relative: &str) -> Result<Source, ContextError> {
        let mut resolved: Vec<String> = Vec::new();
        let mut pending: Vec<String> = relative
            .split('/')
            .rev()
            .filter(|name| !name.is_empty())
            .map(str::to_string)
            .collect();
        let mut links = 0;
        while let Some(name) = pending.pop() {
            match name.as_str() {
                "." => continue,
                ".." => {
                    resolved.pop();
                    continue;
                }
                _ => {}
            }
            let mut path = self.root.clone();
            path.extend(&resolved);
            path.push(&name);
            let metadata = match fs::symlink_metadata(&path) {
                Ok(metadata) => metadata,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    return Err(ContextError::NotFound(relative.to_string()));
                }
                Err(error) => return Err(io_at(&path)(error)),
            };
            if metadata.file_type().is_symlink() {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(ContextError::SymlinkLoop(relative.to_string()));
                }
                let target = fs::read_link(&path).map_err(io_at(&path))?;
                let target = target.to_string_lossy().to_string();
                if target.starts_with('/') {
                    resolved.clear();
                }
                pending.extend(
                    target
                        .split('/')
                        .rev()
                        .filter(|name| !name.is_empty())
                        .map(str::to_string),
                );
                continue;
            }
            if !pending.is_empty() && !metadata.is_dir() {
                return Err(ContextError::NotFound(relative.to_string()));
            }
            resolved.push(name);
        }
        let mut host = self.root.clone();
        host.extend(&resolved);
        let metadata = fs::metadata(&host).map_err(io_at(&host))?;
        Ok(Source {
            relative: resolved.join("/"),
            named: relative.to_string(),
            host,
            is_dir: metadata.is_dir(),
        })
    }

    /// The entries of a directory source, recursively, sorted, without excluded ones (by the
    /// `.dockerignore`, or by `exclude`, `--exclude` patterns matched against the path relative
    /// to the source): (path relative to the source, host path, metadata). Symlinks are not
    /// followed.
    fn entries(
        &self,
        source: &Source,
        exclude: Option<&Matcher>,
    ) -> Result<Vec<(String, PathBuf, fs::Metadata)>, ContextError> {
        let mut out = self.collect(&source.host, &source.relative, "")?;
        if let Some(exclude) = exclude {
            out.retain(|(relative, _, _)| !exclude.matches(relative));
        }
        Ok(out)
    }

    /// The entries under `dir`, depth first in name order. Entries are stat'ed relative to
    /// their directory (no path walk from `/` per file) and subdirectories are walked in
    /// parallel on rayon's pool; the order of the result does not depend on that.
    fn collect(
        &self,
        dir: &Path,
        context_prefix: &str,
        prefix: &str,
    ) -> Result<Vec<(String, PathBuf, fs::Metadata)>, ContextError> {
        let mut found: Vec<fs::DirEntry> = fs::read_dir(dir)
            .map_err(io_at(dir))?
            .collect::<Result<_, _>>()
            .map_err(io_at(dir))?;
        found.sort_by_key(fs::DirEntry::file_name);
        let has_exceptions = self.ignore.as_ref().is_some_and(Matcher::has_exclusions);
        // (relative, host, metadata, path in the context, excluded itself) of what may stay.
        let mut kept = Vec::with_capacity(found.len());
        for entry in found {
            let name = entry.file_name().to_string_lossy().to_string();
            let host = entry.path();
            // Not followed: DirEntry::metadata is lstat relative to the open directory.
            let metadata = entry.metadata().map_err(io_at(&host))?;
            // The path from the context root: for `.dockerignore` matches and subdirectories.
            let in_context = if self.ignore.is_none() && !metadata.is_dir() {
                String::new()
            } else if context_prefix.is_empty() {
                name.clone()
            } else {
                format!("{context_prefix}/{name}")
            };
            let excluded = self.excluded(&in_context);
            // A directory excluded by a pattern may still hold re-included (`!`) files.
            if excluded && !(metadata.is_dir() && has_exceptions) {
                continue;
            }
            let relative = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            kept.push((relative, host, metadata, in_context, excluded));
        }
        let inner: Vec<Vec<(String, PathBuf, fs::Metadata)>> = kept
            .par_iter()
            .map(|(relative, host, metadata, in_context, _)| {
                if metadata.is_dir() {
                    self.collect(host, in_context, relative)
                } else {
                    Ok(Vec::new())
                }
            })
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(kept.len() + inner.iter().map(Vec::len).sum::<usize>());
        for ((relative, host, metadata, _, excluded), inner) in kept.into_iter().zip(inner) {
            if excluded && inner.is_empty() {
                continue;
            }
            out.push((relative, host, metadata));
            out.extend(inner);
        }
        Ok(out)
    }

    /// The content digests of `files` (host path and metadata of regular files), in order:
    /// from the stat cache for files whose device, inode, size, mtime and ctime are unchanged,
    /// otherwise read and hashed, in parallel on rayon's pool.
    fn file_digests(&self, files: &[(&Path, &fs::Metadata)]) -> Result<Vec<Digest>, ContextError> {
        let stamps: Vec<(FileKey, FileStamp)> = files
            .iter()
            .map(|(_, metadata)| FileStamp::of(metadata))
            .collect();
        let mut digests: Vec<Option<Digest>> = vec![None; files.len()];
        if let Ok(mut hashes) = self.hashes.lock() {
            for ((key, stamp), digest) in stamps.iter().zip(&mut digests) {
                if let Some(remembered) = hashes.get_mut(key)
                    && remembered.stamp == *stamp
                {
                    remembered.used = true;
                    *digest = Some(remembered.digest);
                }
            }
        }
        let missing: Vec<usize> = (0..files.len())
            .filter(|index| digests[*index].is_none())
            .collect();
        if missing.is_empty() {
            return Ok(digests.into_iter().flatten().collect());
        }
        let computed: Vec<(usize, Digest)> = missing
            .into_par_iter()
            .map(|index| Ok((index, hash_file(files[index].0)?)))
            .collect::<Result<_, ContextError>>()?;
        self.files_hashed
            .fetch_add(computed.len(), Ordering::Relaxed);
        if let Ok(mut hashes) = self.hashes.lock() {
            for (index, digest) in &computed {
                let (key, stamp) = stamps[*index];
                hashes.insert(
                    key,
                    Remembered {
                        stamp,
                        digest: *digest,
                        used: true,
                    },
                );
            }
        }
        for (index, digest) in computed {
            digests[index] = Some(digest);
        }
        Ok(digests.into_iter().flatten().collect())
    }

    /// The digest of what copying `source` puts in an image: for a file its content and mode;
    /// for a directory every entry's relative path, type, mode, link target and content
    /// (never mtimes or host owners: COPY sets owners). Each file's digest also goes into
    /// `inputs` under its context path, for cache-miss explanations.
    pub fn digest(
        &self,
        source: &Source,
        exclude: Option<&Matcher>,
        inputs: &mut BTreeMap<String, String>,
    ) -> Result<Digest, ContextError> {
        let metadata = fs::metadata(&source.host).map_err(io_at(&source.host))?;
        let mut entries = vec![(String::new(), source.host.clone(), metadata)];
        if source.is_dir {
            entries.extend(self.entries(source, exclude)?);
        }
        let files: Vec<(&Path, &fs::Metadata)> = entries
            .iter()
            .filter(|(_, _, metadata)| metadata.is_file())
            .map(|(_, host, metadata)| (host.as_path(), metadata))
            .collect();
        let mut file_digests = self.file_digests(&files)?.into_iter();
        let mut hasher = Sha256::new();
        // One line per entry, written into one buffer (no allocation per entry but the inputs).
        let mut line = String::new();
        for (relative, host, metadata) in &entries {
            let kind = metadata.file_type();
            let mode = metadata.permissions().mode() & 0o7777;
            line.clear();
            // Writing to a String cannot fail.
            if kind.is_symlink() {
                let target = fs::read_link(host).map_err(io_at(host))?;
                let _ = writeln!(line, "l {relative} {mode:o} {}", target.display());
            } else if kind.is_dir() {
                let _ = writeln!(line, "d {relative} {mode:o}");
            } else if kind.is_file() {
                let digest = file_digests.next().ok_or_else(|| {
                    io_at(host)(io::Error::other("the file list changed while hashing"))
                })?;
                let _ = write!(line, "f {relative} {mode:o} ");
                let start = line.len();
                push_digest(&mut line, &digest);
                let shown = if source.relative.is_empty() {
                    relative.to_string()
                } else if relative.is_empty() {
                    source.relative.clone()
                } else {
                    format!("{}/{relative}", source.relative)
                };
                inputs.insert(shown, line[start..].to_string());
                line.push('\n');
            } else {
                let _ = writeln!(line, "o {relative} {mode:o} {}", metadata.rdev());
            }
            hasher.update(line.as_bytes());
        }
        Ok(Digest::from_bytes(hasher.finalize().into()))
    }

    /// Appends `source` to `archive`: a file as `name`, a directory's content under `name`
    /// (`""`: at the top), with `ownership` applied and mtimes kept (clamped to `clamp`, a
    /// `SOURCE_DATE_EPOCH`, when given).
    pub fn append(
        &self,
        source: &Source,
        name: &str,
        ownership: &Ownership,
        clamp: Option<i64>,
        exclude: Option<&Matcher>,
        archive: &mut tar::Builder<impl Write>,
    ) -> Result<(), ContextError> {
        let metadata = fs::metadata(&source.host).map_err(io_at(&source.host))?;
        if !source.is_dir {
            return append_entry(archive, name, &source.host, &metadata, ownership, clamp);
        }
        if !name.is_empty() {
            // The directory itself (`--parents`, or a named directory), then its content.
            append_entry(archive, name, &source.host, &metadata, ownership, clamp)?;
        }
        for (relative, host, metadata) in self.entries(source, exclude)? {
            let entry_name = if name.is_empty() {
                relative
            } else {
                format!("{name}/{relative}")
            };
            append_entry(archive, &entry_name, &host, &metadata, ownership, clamp)?;
        }
        Ok(())
    }
}

/// Appends `digest` as its `Display` shows it (`sha256:<hex>`), without allocating.
fn push_digest(line: &mut String, digest: &Digest) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    line.push_str("sha256:");
    for byte in digest.as_bytes() {
        line.push(char::from(HEX[usize::from(byte >> 4)]));
        line.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
}

/// The sha256 of a file's content.
fn hash_file(path: &Path) -> Result<Digest, ContextError> {
    let mut file = fs::File::open(path).map_err(io_at(path))?;
    let mut hasher = DigestWriter::new(io::sink());
    io::copy(&mut file, &mut hasher).map_err(io_at(path))?;
    let (digest, _, _) = hasher.finish();
    Ok(digest)
}

/// One tar entry for a host file, directory or symlink with the copy's ownership.
fn append_entry(
    archive: &mut tar::Builder<impl Write>,
    name: &str,
    host: &Path,
    metadata: &fs::Metadata,
    ownership: &Ownership,
    clamp: Option<i64>,
) -> Result<(), ContextError> {
    let kind = metadata.file_type();
    let mut header = tar::Header::new_gnu();
    header.set_uid(u64::from(ownership.uid));
    header.set_gid(u64::from(ownership.gid));
    let mtime = metadata.mtime().max(0);
    let mtime = clamp.map_or(mtime, |clamp| mtime.min(clamp.max(0)));
    header.set_mtime(mtime as u64);
    let own_mode = metadata.permissions().mode() & 0o7777;
    let mode = match &ownership.mode {
        Some(chmod) if !kind.is_symlink() => chmod.apply(own_mode, kind.is_dir()),
        _ => own_mode,
    };
    header.set_mode(mode);
    let output = |error| ContextError::Io {
        path: host.to_path_buf(),
        source: error,
    };
    if kind.is_symlink() {
        let target = fs::read_link(host).map_err(io_at(host))?;
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        archive
            .append_link(&mut header, name, &target)
            .map_err(output)?;
    } else if kind.is_dir() {
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        archive
            .append_data(&mut header, format!("{name}/"), io::empty())
            .map_err(output)?;
    } else if kind.is_file() {
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(metadata.size());
        let file = fs::File::open(host).map_err(io_at(host))?;
        archive
            .append_data(&mut header, name, file.take(metadata.size()))
            .map_err(output)?;
    }
    // Sockets, fifos and devices in a build context are skipped, as BuildKit does.
    Ok(())
}

/// Whether a path has Go `filepath.Match` wildcards.
pub fn has_wildcards(path: &str) -> bool {
    path.contains(['*', '?', '['])
}

/// Go's `filepath.Match` for one path component: `*` (any run of characters), `?` (one
/// character), `[...]` classes with ranges and `^` negation, `\` escapes.
pub fn glob_match(pattern: &str, name: &str) -> Result<bool, ContextError> {
    let bad = || ContextError::BadPattern(pattern.to_string());
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    // Classic backtracking over the last `*`.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if p < pattern.len() {
            match pattern[p] {
                '*' => {
                    star = Some((p, n));
                    p += 1;
                    continue;
                }
                '?' if n < name.len() => {
                    p += 1;
                    n += 1;
                    continue;
                }
                '[' if n < name.len() => {
                    let (matched, next) = class_match(&pattern, p, name[n]).ok_or_else(bad)?;
                    if matched {
                        p = next;
                        n += 1;
                        continue;
                    }
                }
                '\\' => {
                    let escaped = *pattern.get(p + 1).ok_or_else(bad)?;
                    if n < name.len() && name[n] == escaped {
                        p += 2;
                        n += 1;
                        continue;
                    }
                }
                literal
                    if n < name.len() && literal == name[n] && literal != '[' && literal != '?' =>
                {
                    p += 1;
                    n += 1;
                    continue;
                }
                '[' => {
                    // Validate the class even when there is no character left to match.
                    class_match(&pattern, p, '\0').ok_or_else(bad)?;
                }
                _ => {}
            }
        } else if n == name.len() {
            return Ok(true);
        }
        match star {
            Some((star_p, star_n)) if star_n < name.len() => {
                star = Some((star_p, star_n + 1));
                p = star_p + 1;
                n = star_n + 1;
            }
            _ => {
                // Check the rest of the pattern is well formed, as Go reports ErrBadPattern.
                let mut rest = p;
                while rest < pattern.len() {
                    match pattern[rest] {
                        '[' => rest = class_match(&pattern, rest, '\0').ok_or_else(bad)?.1,
                        '\\' => {
                            pattern.get(rest + 1).ok_or_else(bad)?;
                            rest += 2;
                        }
                        _ => rest += 1,
                    }
                }
                return Ok(false);
            }
        }
    }
}

/// Matches `c` against the class starting at `pattern[start] == '['`; returns whether it
/// matched and the index after `]`, or None for a malformed class.
fn class_match(pattern: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negated = pattern.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let current = *pattern.get(i)?;
        if current == ']' && !first {
            i += 1;
            break;
        }
        first = false;
        let mut low = current;
        if low == '\\' {
            i += 1;
            low = *pattern.get(i)?;
        }
        i += 1;
        let mut high = low;
        if pattern.get(i) == Some(&'-') && pattern.get(i + 1).is_some_and(|next| *next != ']') {
            high = *pattern.get(i + 1)?;
            i += 2;
            if high == '\\' {
                high = *pattern.get(i)?;
                i += 1;
            }
        }
        if low <= c && c <= high {
            matched = true;
        }
    }
    Some((matched != negated, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_follows_go_filepath_match() {
        let cases = [
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*/b", "abc/b", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("*.rs", "main.rs", true),
            ("*.rs", "main.rc", false),
            ("[a-ζ]*", "α", true),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(
                glob_match(pattern, name).unwrap(),
                expected,
                "{pattern} vs {name}"
            );
        }
        for bad in ["[", "[^", "[^bc", "a[", "ab[-c]x\\"] {
            assert!(
                glob_match(bad, "a").is_err(),
                "{bad} should be a bad pattern"
            );
        }
    }

    #[test]
    fn sources_resolve_inside_the_context() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("src/sub")).unwrap();
        fs::write(root.join("src/a.rs"), "a").unwrap();
        fs::write(root.join("src/b.rs"), "b").unwrap();
        fs::write(root.join("src/sub/c.rs"), "c").unwrap();
        fs::write(root.join("secret"), "s").unwrap();
        std::os::unix::fs::symlink("/src/a.rs", root.join("abs-link")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/passwd", root.join("escape")).unwrap();
        let ignore = Matcher::parse("secret\n").unwrap();
        let context = Context::new(root, Some(ignore));
        let names = |pattern: &str| -> Vec<String> {
            context
                .sources(pattern)
                .unwrap()
                .into_iter()
                .map(|source| source.relative)
                .collect()
        };
        assert_eq!(names("src/*.rs"), ["src/a.rs", "src/b.rs"]);
        assert_eq!(names("src/*/*.rs"), ["src/sub/c.rs"]);
        assert_eq!(names("../src/a.rs"), ["src/a.rs"]);
        assert_eq!(names("abs-link"), ["src/a.rs"]);
        // A link keeps its own name for the copy.
        assert_eq!(context.sources("abs-link").unwrap()[0].named, "abs-link");
        assert!(matches!(
            context.sources("secret"),
            Err(ContextError::NotFound(_))
        ));
        // A link climbing out of the context stays inside it (there is no etc/passwd here).
        assert!(matches!(
            context.sources("escape"),
            Err(ContextError::NotFound(_))
        ));
        assert!(names("*.none").is_empty());
    }

    #[test]
    fn digests_cover_content_and_mode_not_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("d")).unwrap();
        fs::write(root.join("d/f"), "one").unwrap();
        let digest = |context: &Context| {
            let source = context.sources("d").unwrap().remove(0);
            context.digest(&source, None, &mut BTreeMap::new()).unwrap()
        };
        let first = digest(&Context::new(root, None));
        let file = fs::File::options()
            .write(true)
            .open(root.join("d/f"))
            .unwrap();
        file.set_modified(std::time::SystemTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(
            digest(&Context::new(root, None)),
            first,
            "mtime is not content"
        );
        fs::write(root.join("d/f"), "two").unwrap();
        assert_ne!(digest(&Context::new(root, None)), first);
        fs::set_permissions(root.join("d/f"), fs::Permissions::from_mode(0o600)).unwrap();
        let before_mode = digest(&Context::new(root, None));
        fs::set_permissions(root.join("d/f"), fs::Permissions::from_mode(0o644)).unwrap();
        assert_ne!(digest(&Context::new(root, None)), before_mode);
    }
}
