//! The persistent half of the build context's stat cache: the content digests of context
//! files, kept in the store between builds so that an unchanged file is never read twice.
//!
//! One file per context directory, `ROOT/context-hashes/<sha256 of the context's canonical
//! path, hex>`: a header (`KILNCTXH`, a format version, the entry count), fixed-size entries
//! (device, inode, size, mtime, ctime, content digest) and a sha256 of everything before it.
//!
//! Contracts:
//! - A remembered digest is used only when device, inode, size, mtime and ctime (seconds and
//!   nanoseconds) all match the file as it is now (checked by the caller, [`crate::context`]).
//! - Racy files are never written: an entry whose mtime or ctime is less than
//!   [`RACY_WINDOW`] older than the moment of writing is dropped, since a file changed again
//!   within one timestamp tick after it was hashed would look unchanged (git's "racy clean"
//!   problem). Such files are simply read again by the next build.
//! - Atomic: written to a temporary file in the same directory and renamed over the old one,
//!   so concurrent builds of one context read an old or a new file, never a torn one; the last
//!   writer wins, and either result is correct.
//! - Robust: a file that is short, long, of another format version or whose checksum does not
//!   match is ignored (every file is then hashed again); it is never an error.
//! - Bounded: at most [`MAX_ENTRIES`] entries per context, and at most [`MAX_CONTEXTS`] context
//!   files of [`MAX_TOTAL_BYTES`] in all (the least recently written go first), so contexts
//!   that are built once (an archive unpacked to a temporary directory) cannot pile up.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_cache::digest::Digest;
use sha2::{Digest as _, Sha256};

/// How recent a file's mtime or ctime may be, relative to the moment the cache is written,
/// for its digest to be left out of the cache.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);
/// The most entries one context's cache file keeps (about 88 bytes each).
pub const MAX_ENTRIES: usize = 200_000;
/// The most context cache files a store keeps.
pub const MAX_CONTEXTS: usize = 64;
/// The most bytes the context cache files of a store take together (the newest file is kept
/// whatever its size, up to [`MAX_ENTRIES`]).
pub const MAX_TOTAL_BYTES: u64 = 128 << 20;

const MAGIC: &[u8; 8] = b"KILNCTXH";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 8;
const ENTRY: usize = 8 * 7 + 32;
const TRAILER: usize = 32;

/// A file's identity: device and inode.
pub(crate) type FileKey = (u64, u64);

/// What must be unchanged for a cached content digest to stay valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl FileStamp {
    pub fn of(metadata: &fs::Metadata) -> (FileKey, FileStamp) {
        (
            (metadata.dev(), metadata.ino()),
            FileStamp {
                size: metadata.size(),
                mtime: (metadata.mtime(), metadata.mtime_nsec()),
                ctime: (metadata.ctime(), metadata.ctime_nsec()),
            },
        )
    }

    /// Whether the file changed too close to `now` for its digest to be trusted later.
    fn is_racy(&self, now: SystemTime) -> bool {
        let limit = now
            .checked_sub(RACY_WINDOW)
            .and_then(|limit| limit.duration_since(UNIX_EPOCH).ok())
            .map_or((0, 0), |limit| {
                (limit.as_secs() as i64, i64::from(limit.subsec_nanos()))
            });
        self.mtime >= limit || self.ctime >= limit
    }
}

/// A digest in the stat cache, and whether this build looked it up or computed it (the
/// entries kept first when the cache is written).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Remembered {
    pub stamp: FileStamp,
    pub digest: Digest,
    pub used: bool,
}

/// The cache file of the context at `root` inside `directory`, or None when the context's
/// path cannot be made absolute.
pub(crate) fn file_for(directory: &Path, root: &Path) -> Option<PathBuf> {
    let canonical = fs::canonicalize(root).ok()?;
    let name = Digest::of(canonical.as_os_str().as_encoded_bytes()).hex();
    Some(directory.join(name))
}

/// The entries of a cache file; empty when it is missing or not a whole, valid cache file.
pub(crate) fn load(path: &Path) -> HashMap<FileKey, Remembered> {
    let Ok(bytes) = fs::read(path) else {
        return HashMap::new();
    };
    parse(&bytes).unwrap_or_default()
}

fn parse(bytes: &[u8]) -> Option<HashMap<FileKey, Remembered>> {
    let body_len = bytes.len().checked_sub(TRAILER)?;
    let (body, checksum) = bytes.split_at(body_len);
    if body.len() < HEADER || &body[..8] != MAGIC {
        return None;
    }
    let version = u32::from_le_bytes(body[8..12].try_into().ok()?);
    let count = usize::try_from(u64::from_le_bytes(body[12..20].try_into().ok()?)).ok()?;
    if version != VERSION
        || count > MAX_ENTRIES
        || body.len() != HEADER + count * ENTRY
        || Sha256::digest(body).as_slice() != checksum
    {
        return None;
    }
    let mut entries = HashMap::with_capacity(count);
    for entry in body[HEADER..].chunks_exact(ENTRY) {
        let word = |index: usize| -> [u8; 8] {
            let mut word = [0; 8];
            word.copy_from_slice(&entry[index * 8..index * 8 + 8]);
            word
        };
        let signed = |index: usize| i64::from_le_bytes(word(index));
        let mut digest = [0; 32];
        digest.copy_from_slice(&entry[56..88]);
        entries.insert(
            (u64::from_le_bytes(word(0)), u64::from_le_bytes(word(1))),
            Remembered {
                stamp: FileStamp {
                    size: u64::from_le_bytes(word(2)),
                    mtime: (signed(3), signed(4)),
                    ctime: (signed(5), signed(6)),
                },
                digest: Digest::from_bytes(digest),
                used: false,
            },
        );
    }
    Some(entries)
}

/// Writes the cache file at `path` (atomically) as of `now`: the entries this build used
/// first, then older ones, up to [`MAX_ENTRIES`], without racy ones. Then trims the
/// directory to [`MAX_CONTEXTS`] files.
pub(crate) fn save(
    path: &Path,
    entries: &HashMap<FileKey, Remembered>,
    now: SystemTime,
) -> io::Result<()> {
    let directory = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"))?;
    fs::create_dir_all(directory)?;
    let mut kept: Vec<(&FileKey, &Remembered)> = entries
        .iter()
        .filter(|(_, remembered)| !remembered.stamp.is_racy(now))
        .collect();
    // Used entries first; a stable order otherwise, so equal caches are equal files.
    kept.sort_unstable_by_key(|(key, remembered)| (!remembered.used, **key));
    kept.truncate(MAX_ENTRIES);
    let mut body = Vec::with_capacity(HEADER + kept.len() * ENTRY + TRAILER);
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(&VERSION.to_le_bytes());
    body.extend_from_slice(&(kept.len() as u64).to_le_bytes());
    for ((device, inode), remembered) in kept {
        let stamp = &remembered.stamp;
        for word in [*device, *inode, stamp.size] {
            body.extend_from_slice(&word.to_le_bytes());
        }
        for word in [stamp.mtime.0, stamp.mtime.1, stamp.ctime.0, stamp.ctime.1] {
            body.extend_from_slice(&word.to_le_bytes());
        }
        body.extend_from_slice(remembered.digest.as_bytes());
    }
    let checksum = Sha256::digest(&body);
    body.extend_from_slice(&checksum);
    let mut temp = tempfile::Builder::new()
        .prefix(".new-")
        .tempfile_in(directory)?;
    temp.write_all(&body)?;
    // No fsync: a cache lost in a crash only costs a rehash, and a torn file fails its checksum.
    temp.persist(path).map_err(|error| error.error)?;
    trim(directory, path);
    Ok(())
}

/// Removes the least recently written cache files past [`MAX_CONTEXTS`] or [`MAX_TOTAL_BYTES`]
/// (never `keep`, the one just written), and temporary files left by crashed writers (after an
/// hour). Best effort: a file another build removes first is not an error.
fn trim(directory: &Path, keep: &Path) {
    trim_to(directory, keep, MAX_CONTEXTS, MAX_TOTAL_BYTES);
}

fn trim_to(directory: &Path, keep: &Path, max_files: usize, max_bytes: u64) {
    let Ok(read) = fs::read_dir(directory) else {
        return;
    };
    let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    let mut total = 0;
    let stale = SystemTime::now()
        .checked_sub(Duration::from_secs(3600))
        .unwrap_or(UNIX_EPOCH);
    for entry in read.flatten() {
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        let modified = metadata.modified().unwrap_or(UNIX_EPOCH);
        if entry.file_name().as_encoded_bytes().starts_with(b".new-") {
            if modified < stale {
                let _ = fs::remove_file(entry.path());
            }
            continue;
        }
        if entry.path() == keep {
            total += metadata.len();
        } else {
            files.push((modified, metadata.len(), entry.path()));
        }
    }
    // Newest first; `keep` is already counted.
    files.sort_by(|a, b| b.cmp(a));
    let mut count = 1;
    for (_, size, path) in files {
        count += 1;
        total += size;
        if count > max_files || total > max_bytes {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(count: u64) -> HashMap<FileKey, Remembered> {
        (0..count)
            .map(|index| {
                (
                    (1, index),
                    Remembered {
                        stamp: FileStamp {
                            size: index,
                            mtime: (1_000, index as i64),
                            ctime: (1_000, 5),
                        },
                        digest: Digest::of(&index.to_le_bytes()),
                        used: index % 2 == 0,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_saved_cache_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hashes").join("one");
        save(&path, &sample(10), SystemTime::now()).unwrap();
        let loaded = load(&path);
        assert_eq!(loaded.len(), 10);
        for (key, remembered) in sample(10) {
            let found = loaded[&key];
            assert_eq!(found.stamp, remembered.stamp);
            assert_eq!(found.digest, remembered.digest);
        }
    }

    #[test]
    fn damaged_caches_load_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one");
        save(&path, &sample(3), SystemTime::now()).unwrap();
        let good = fs::read(&path).unwrap();
        let mut flipped = good.clone();
        flipped[HEADER + 5] ^= 1;
        for bad in [
            &good[..good.len() - 1],
            &good[..10],
            &[][..],
            &flipped[..],
            &[good.as_slice(), b"x"].concat()[..],
        ] {
            fs::write(&path, bad).unwrap();
            assert!(load(&path).is_empty(), "{} bytes loaded", bad.len());
        }
    }

    #[test]
    fn racy_entries_are_not_saved() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one");
        let changed_at = UNIX_EPOCH + Duration::from_secs(1_000);
        save(&path, &sample(4), changed_at + Duration::from_secs(1)).unwrap();
        assert!(load(&path).is_empty(), "changed a second before the save");
        save(&path, &sample(4), changed_at + Duration::from_secs(3)).unwrap();
        assert_eq!(load(&path).len(), 4);
    }

    #[test]
    fn the_directory_stays_under_its_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let old = UNIX_EPOCH + Duration::from_secs(1_000_000);
        for index in 0..3 {
            let path = dir.path().join(format!("old{index}"));
            fs::write(&path, vec![0; 400]).unwrap();
            let file = fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(old + Duration::from_secs(index)).unwrap();
        }
        fs::write(dir.path().join("new"), vec![0; 500]).unwrap();
        trim_to(dir.path(), &dir.path().join("new"), 10, 1_000);
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        // 500 + 400 bytes fit in 1,000: the newest old file stays, the older ones go.
        assert_eq!(left, ["new", "old2"]);
    }

    #[test]
    fn the_directory_keeps_the_newest_contexts() {
        let dir = tempfile::tempdir().unwrap();
        for index in 0..MAX_CONTEXTS + 3 {
            save(
                &dir.path().join(format!("context{index}")),
                &sample(1),
                SystemTime::now(),
            )
            .unwrap();
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), MAX_CONTEXTS);
    }
}
