//! Blobs by sha256: layers, configs and manifests, written atomically and verified when read.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, DigestReader, DigestWriter};
use crate::layout::Layout;

/// A blob problem. Every variant names the digest it is about.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} is not in the store")]
    Missing(Digest),
    #[error("blob {digest} is corrupt: its content hashes to {actual}")]
    Corrupt { digest: Digest, actual: Digest },
    #[error("content does not match the expected digest {expected}: it hashes to {actual}")]
    Mismatch { expected: Digest, actual: Digest },
    #[error("content of {expected} has {actual} bytes, not the expected {size}")]
    SizeMismatch {
        expected: Digest,
        size: u64,
        actual: u64,
    },
    #[error("blob store I/O at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The digest and size of stored content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub digest: Digest,
    pub size: u64,
}

/// The blob area of a store.
#[derive(Debug, Clone)]
pub struct Blobs {
    layout: Layout,
}

impl Blobs {
    pub fn new(layout: Layout) -> Self {
        Self { layout }
    }

    /// Stores the content of `reader` and returns its digest. Idempotent: `Ok` means the content
    /// is stored at this digest, not that this call wrote it. Atomic (temp file, fsync, rename),
    /// so readers never see a partial blob. Streams: memory use does not grow with the size.
    pub fn put(&self, reader: impl Read) -> Result<Stored, BlobError> {
        self.put_checked(reader, None)
    }

    /// Stores bytes (configs, manifests) and returns their digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Stored, BlobError> {
        self.put(bytes)
    }

    /// Stores content that must hash to `expected` (and have `size` bytes when given). On a
    /// mismatch nothing is stored.
    pub fn put_expected(
        &self,
        reader: impl Read,
        expected: Digest,
        size: Option<u64>,
    ) -> Result<Stored, BlobError> {
        let stored = self.put_checked(reader, Some((expected, size)))?;
        Ok(stored)
    }

    fn put_checked(
        &self,
        mut reader: impl Read,
        expected: Option<(Digest, Option<u64>)>,
    ) -> Result<Stored, BlobError> {
        let mut writer = self.writer()?;
        let tmp_dir = self.layout.tmp();
        io::copy(&mut reader, &mut writer).map_err(io_at(&tmp_dir))?;
        if let Some((expected, expected_size)) = expected {
            let (digest, size) = writer.inner.current();
            if digest != expected {
                return Err(BlobError::Mismatch {
                    expected,
                    actual: digest,
                });
            }
            if let Some(expected_size) =
                expected_size.filter(|expected_size| *expected_size != size)
            {
                return Err(BlobError::SizeMismatch {
                    expected,
                    size: expected_size,
                    actual: size,
                });
            }
        }
        writer.commit()
    }

    /// A writer for a new blob whose digest is known only at the end (e.g. a layer being
    /// compressed). Nothing is visible in the store until [`BlobWriter::commit`].
    pub fn writer(&self) -> Result<BlobWriter, BlobError> {
        let tmp_dir = self.layout.tmp();
        let temp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&tmp_dir)
            .map_err(io_at(&tmp_dir))?;
        Ok(BlobWriter {
            blobs: self.clone(),
            inner: DigestWriter::new(io::BufWriter::with_capacity(1 << 20, temp)),
        })
    }

    /// Whether the blob is present (not whether it is intact: see [`Blobs::verify`]).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.layout.blob(digest).is_file()
    }

    /// The path of a blob, for readers that need a file (e.g. to mmap or to hard-link).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.layout.blob(digest)
    }

    /// Size of a stored blob.
    pub fn size(&self, digest: &Digest) -> Result<u64, BlobError> {
        let path = self.layout.blob(digest);
        match fs::metadata(&path) {
            Ok(metadata) => Ok(metadata.len()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                Err(BlobError::Missing(*digest))
            }
            Err(error) => Err(io_at(&path)(error)),
        }
    }

    /// Opens a blob for streaming. The reader verifies the digest when it reaches the end and
    /// fails the last read with [`BlobError::Corrupt`] (as an `io::Error` of kind `InvalidData`)
    /// if the content does not match, so a corrupt blob is never silently used.
    pub fn open(&self, digest: &Digest) -> Result<VerifyingReader, BlobError> {
        let path = self.layout.blob(digest);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::Missing(*digest));
            }
            Err(error) => return Err(io_at(&path)(error)),
        };
        Ok(VerifyingReader {
            expected: *digest,
            inner: Some(DigestReader::new(BufReader::with_capacity(1 << 20, file))),
        })
    }

    /// Reads a whole (small) blob, verified.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, BlobError> {
        let path = self.layout.blob(digest);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::Missing(*digest));
            }
            Err(error) => return Err(io_at(&path)(error)),
        };
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(BlobError::Corrupt {
                digest: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    /// Re-hashes a blob.
    pub fn verify(&self, digest: &Digest) -> Result<(), BlobError> {
        let mut reader = self.open(digest)?;
        io::copy(&mut reader, &mut io::sink())
            .map(|_| ())
            .map_err(|error| read_error(error, &self.path(digest)))
    }

    /// Every blob digest present (file names that are not digests are ignored).
    pub fn list(&self) -> Result<Vec<Digest>, BlobError> {
        let dir = self.layout.blobs();
        let mut digests = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_at(&dir))? {
            let entry = entry.map_err(io_at(&dir))?;
            let digest = entry
                .file_name()
                .to_str()
                .and_then(|name| format!("sha256:{name}").parse::<Digest>().ok());
            digests.extend(digest);
        }
        digests.sort();
        Ok(digests)
    }

    /// Removes a blob (garbage collection). Removing an absent blob is not an error.
    pub fn remove(&self, digest: &Digest) -> Result<(), BlobError> {
        let path = self.layout.blob(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_at(&path)(error)),
        }
    }
}

/// A blob being written: see [`Blobs::writer`].
#[derive(Debug)]
pub struct BlobWriter {
    blobs: Blobs,
    inner: DigestWriter<io::BufWriter<tempfile::NamedTempFile>>,
}

impl BlobWriter {
    /// Makes the blob visible under its digest (fsync, rename). Idempotent like [`Blobs::put`].
    pub fn commit(self) -> Result<Stored, BlobError> {
        let tmp_dir = self.blobs.layout.tmp();
        let (digest, size, buffered) = self.inner.finish();
        let temp = buffered.into_inner().map_err(|error| BlobError::Io {
            path: tmp_dir.clone(),
            source: error.into_error(),
        })?;
        let path = self.blobs.layout.blob(&digest);
        if !path.exists() {
            temp.as_file().sync_all().map_err(io_at(temp.path()))?;
            temp.persist(&path).map_err(|error| BlobError::Io {
                path: path.clone(),
                source: error.error,
            })?;
            sync_directory(&self.blobs.layout.blobs())?;
        }
        Ok(Stored { digest, size })
    }
}

impl io::Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Makes a rename in `dir` durable.
fn sync_directory(dir: &Path) -> Result<(), BlobError> {
    File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(io_at(dir))
}

/// A blob reader that checks the content against its digest at the end.
#[derive(Debug)]
pub struct VerifyingReader {
    expected: Digest,
    inner: Option<DigestReader<BufReader<File>>>,
}

/// Turns the error of a read from a [`VerifyingReader`] back into a [`BlobError`]: the
/// corruption it reported, or an I/O error at `path`.
pub fn read_error(error: io::Error, path: &Path) -> BlobError {
    if error.get_ref().is_some_and(|inner| inner.is::<BlobError>()) {
        if let Some(Ok(blob)) = error
            .into_inner()
            .map(|inner| inner.downcast::<BlobError>())
        {
            return *blob;
        }
        return BlobError::Io {
            path: path.to_path_buf(),
            source: io::Error::other("unreadable blob error"),
        };
    }
    io_at(path)(error)
}

impl Read for VerifyingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(0);
        };
        let read = inner.read(buf)?;
        if read == 0 && !buf.is_empty() {
            let inner = self.inner.take().map(DigestReader::finish);
            if let Some((actual, _)) = inner.filter(|(actual, _)| *actual != self.expected) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    BlobError::Corrupt {
                        digest: self.expected,
                        actual,
                    },
                ));
            }
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs() -> (tempfile::TempDir, Blobs) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        for path in layout.directories() {
            fs::create_dir_all(path).unwrap();
        }
        (dir, Blobs::new(layout))
    }

    #[test]
    fn put_is_idempotent_and_content_addressed() {
        let (_dir, blobs) = blobs();
        let first = blobs.put_bytes(b"hello").unwrap();
        let second = blobs.put(&b"hello"[..]).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.digest, Digest::of(b"hello"));
        assert_eq!(blobs.read(&first.digest).unwrap(), b"hello");
        assert_eq!(blobs.list().unwrap(), vec![first.digest]);
        assert_eq!(
            fs::read_dir(blobs.layout.tmp()).unwrap().count(),
            0,
            "no temp files left"
        );
    }

    #[test]
    fn put_expected_refuses_other_content_and_stores_nothing() {
        let (_dir, blobs) = blobs();
        let error = blobs
            .put_expected(&b"evil"[..], Digest::of(b"good"), None)
            .unwrap_err();
        assert!(matches!(error, BlobError::Mismatch { .. }), "{error}");
        assert!(blobs.list().unwrap().is_empty());
        let error = blobs
            .put_expected(&b"good"[..], Digest::of(b"good"), Some(3))
            .unwrap_err();
        assert!(matches!(error, BlobError::SizeMismatch { .. }), "{error}");
    }

    #[test]
    fn a_corrupt_blob_is_an_error_naming_its_digest() {
        let (_dir, blobs) = blobs();
        let stored = blobs.put_bytes(b"original").unwrap();
        fs::write(blobs.path(&stored.digest), b"tampered").unwrap();
        let error = blobs.read(&stored.digest).unwrap_err();
        assert!(
            error.to_string().contains(&stored.digest.to_string()),
            "{error}"
        );
        let mut reader = blobs.open(&stored.digest).unwrap();
        let error = io::copy(&mut reader, &mut io::sink()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("is corrupt"), "{error}");
        assert!(matches!(
            blobs.verify(&stored.digest),
            Err(BlobError::Corrupt { .. })
        ));
    }

    #[test]
    fn missing_blobs_are_reported_as_missing() {
        let (_dir, blobs) = blobs();
        let digest = Digest::of(b"absent");
        assert!(matches!(blobs.read(&digest), Err(BlobError::Missing(d)) if d == digest));
        assert!(matches!(blobs.open(&digest), Err(BlobError::Missing(_))));
        blobs.remove(&digest).unwrap();
    }
}
