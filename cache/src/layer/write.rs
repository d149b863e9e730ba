//! Writing a layer tar from a directory tree or an overlayfs upper directory.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tar::{Builder, EntryType, Header};

use super::compression::{Compression, Compressor};
use super::{LayerError, WHITEOUT_OPAQUE, WHITEOUT_PREFIX};
use crate::digest::{Digest, DigestWriter};

/// Where a layer's entries come from.
#[derive(Debug, Clone, Copy)]
pub enum LayerSource<'a> {
    /// A whole tree (a rootfs, or a build context copy): every entry is content.
    Directory(&'a Path),
    /// An overlayfs upper directory: a char device 0:0 (or an empty file carrying
    /// `trusted.overlay.whiteout`) is a deletion and becomes a `.wh.<name>` entry; a directory
    /// with `trusted.overlay.opaque=y` (or `user.overlay.opaque=y`, for `userxattr` mounts)
    /// gets a `.wh..wh..opq` entry right after its own. The overlay must have been mounted
    /// with `redirect_dir=off,metacopy=off`: a redirect or metacopy xattr is an error.
    OverlayUpper(&'a Path),
}

/// How to write a layer.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub compression: Compression,
    /// `SOURCE_DATE_EPOCH`: when set, every mtime later than it is clamped to it (earlier ones
    /// are kept), as BuildKit does with `rewrite-timestamp`.
    pub source_date_epoch: Option<i64>,
}

/// The identities of a written layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerDigests {
    /// sha256 of the uncompressed tar: the image config's `rootfs.diff_ids` entry.
    pub diff_id: Digest,
    /// sha256 of the bytes written to `out`: the manifest's layer digest.
    pub digest: Digest,
    /// Number of bytes written to `out`.
    pub size: u64,
}

/// Xattrs that are never layer content: overlayfs bookkeeping (would make overlay treat a
/// lower layer as a redirect or a whiteout) and host SELinux labels (machine-specific).
fn is_excluded_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name == b"security.selinux"
}

const OVERLAY_OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];
const OVERLAY_WHITEOUT_XATTRS: [&str; 2] = ["trusted.overlay.whiteout", "user.overlay.whiteout"];
const OVERLAY_UNSUPPORTED_XATTRS: [&str; 4] = [
    "trusted.overlay.redirect",
    "user.overlay.redirect",
    "trusted.overlay.metacopy",
    "user.overlay.metacopy",
];

/// The USTAR name and linkname fields hold 100 bytes; longer ones go into PAX records.
const USTAR_NAME_LENGTH: usize = 100;

/// Writes a layer tar of `source` to `out` and returns its digests.
///
/// Deterministic: the same tree (content, modes, owners, xattrs, hardlink structure, mtimes
/// after clamping) gives the same bytes on any machine with the same kiln build. Entries are
/// emitted depth-first, each directory before its children, children sorted by their entry
/// name's bytes (an opaque marker first); names are relative without `./`, directories end in
/// `/`; uname/gname are empty and ownership is numeric; atime/ctime and sub-second mtimes are
/// dropped, mtimes before 1970 become 0; xattrs are PAX `SCHILY.xattr.*` records, sorted, and
/// names or link targets over 100 bytes are PAX `path`/`linkpath` records. The second and
/// later paths of a multiply-linked inode (same device and inode) become hardlink entries to
/// the first. Symlinks are stored, never followed; sockets are skipped (as Docker does); the
/// root directory itself has no entry.
///
/// `out` receives the compressed stream and is flushed, not closed. On error, what was
/// written to `out` is garbage and the caller discards it.
pub fn write_layer(
    source: LayerSource<'_>,
    out: impl Write,
    options: &WriteOptions,
) -> Result<LayerDigests, LayerError> {
    let (root, overlay) = match source {
        LayerSource::Directory(path) => (path, false),
        LayerSource::OverlayUpper(path) => (path, true),
    };
    let compressed = DigestWriter::new(out);
    let compressor =
        Compressor::new(options.compression, compressed).map_err(LayerError::Output)?;
    let uncompressed = BufWriter::with_capacity(256 * 1024, DigestWriter::new(compressor));
    let mut writer = LayerWriter {
        builder: Builder::new(uncompressed),
        overlay,
        source_date_epoch: options.source_date_epoch,
        hardlinks: HashMap::new(),
    };
    writer.write_tree(root)?;

    let uncompressed = writer.builder.into_inner().map_err(LayerError::Output)?;
    let hashed = uncompressed
        .into_inner()
        .map_err(|error| LayerError::Output(error.into_error()))?;
    let (diff_id, _, compressor) = hashed.finish();
    let compressed = compressor.finish().map_err(LayerError::Output)?;
    let (digest, size, mut out) = compressed.finish();
    out.flush().map_err(LayerError::Output)?;
    Ok(LayerDigests {
        diff_id,
        digest,
        size,
    })
}

/// Writes the uncompressed layer tar of `source` to `out`, as [`write_layer`] does, without
/// computing any digest: for callers that hash what they store themselves (a build step's
/// layer, hashed once by the blob writer). `out` is flushed, not closed.
pub fn write_layer_tar(
    source: LayerSource<'_>,
    out: impl Write,
    source_date_epoch: Option<i64>,
) -> Result<(), LayerError> {
    let (root, overlay) = match source {
        LayerSource::Directory(path) => (path, false),
        LayerSource::OverlayUpper(path) => (path, true),
    };
    let mut writer = LayerWriter {
        builder: Builder::new(BufWriter::with_capacity(256 * 1024, out)),
        overlay,
        source_date_epoch,
        hardlinks: HashMap::new(),
    };
    writer.write_tree(root)?;
    let mut out = writer.builder.into_inner().map_err(LayerError::Output)?;
    out.flush().map_err(LayerError::Output)
}

struct LayerWriter<W: Write> {
    builder: Builder<W>,
    overlay: bool,
    source_date_epoch: Option<i64>,
    /// (device, inode) of multiply-linked files already written → their entry name.
    hardlinks: HashMap<(u64, u64), Vec<u8>>,
}

/// A directory child, with the name its entry will have.
struct Child {
    path: PathBuf,
    /// The entry name: the relative path (`.wh.<name>` for a whiteout), `/`-terminated for a
    /// directory.
    entry_name: Vec<u8>,
    metadata: Metadata,
    whiteout: bool,
}

impl<W: Write> LayerWriter<W> {
    fn write_tree(&mut self, root: &Path) -> Result<(), LayerError> {
        // An explicit stack rather than recursion: trees can be deeper than a thread's stack.
        let mut pending = self.children(root, b"")?;
        pending.reverse();
        while let Some(child) = pending.pop() {
            if child.whiteout {
                self.write_marker(&child.path, child.entry_name, &child.metadata)?;
                continue;
            }
            self.write_entry(&child)?;
            if child.metadata.is_dir() {
                if self.overlay && is_opaque(&child.path)? {
                    let mut marker = child.entry_name.clone();
                    marker.extend_from_slice(WHITEOUT_OPAQUE.as_bytes());
                    self.write_marker(&child.path, marker, &child.metadata)?;
                }
                let mut children = self.children(&child.path, &child.entry_name)?;
                children.reverse();
                pending.extend(children);
            }
        }
        Ok(())
    }

    /// The children of `directory`, sorted by entry name; `prefix` is the directory's entry
    /// name (empty or ending in `/`).
    fn children(&self, directory: &Path, prefix: &[u8]) -> Result<Vec<Child>, LayerError> {
        let read_error = |source| LayerError::ReadSource {
            path: directory.to_path_buf(),
            source,
        };
        let mut children = Vec::new();
        for dir_entry in std::fs::read_dir(directory).map_err(read_error)? {
            let dir_entry = dir_entry.map_err(read_error)?;
            let path = dir_entry.path();
            // DirEntry::metadata is an lstat: symlinks are not followed.
            let metadata = dir_entry
                .metadata()
                .map_err(|source| LayerError::ReadSource {
                    path: path.clone(),
                    source,
                })?;
            if metadata.file_type().is_socket() {
                continue;
            }
            let whiteout = self.overlay && is_overlay_whiteout(&path, &metadata)?;
            let mut entry_name = prefix.to_vec();
            if whiteout {
                entry_name.extend_from_slice(WHITEOUT_PREFIX.as_bytes());
            }
            entry_name.extend_from_slice(dir_entry.file_name().as_bytes());
            if metadata.is_dir() {
                entry_name.push(b'/');
            }
            children.push(Child {
                path,
                entry_name,
                metadata,
                whiteout,
            });
        }
        children.sort_by(|a, b| a.entry_name.cmp(&b.entry_name));
        Ok(children)
    }

    fn write_entry(&mut self, child: &Child) -> Result<(), LayerError> {
        let Child {
            path,
            entry_name,
            metadata,
            ..
        } = child;
        let file_type = metadata.file_type();
        let mut pax = xattr_records(path, self.overlay)?;

        if !metadata.is_dir() && metadata.nlink() > 1 {
            let key = (metadata.dev(), metadata.ino());
            if let Some(target) = self.hardlinks.get(&key) {
                let target = target.clone();
                let header = self.header(
                    path,
                    EntryType::Link,
                    entry_name,
                    Some(&target),
                    metadata,
                    &mut pax,
                )?;
                return self.append(path, header, pax, io::empty());
            }
            self.hardlinks.insert(key, entry_name.clone());
        }

        if file_type.is_file() {
            let size = metadata.len();
            let mut header = self.header(
                path,
                EntryType::Regular,
                entry_name,
                None,
                metadata,
                &mut pax,
            )?;
            header.set_size(size);
            let read_error = |source| LayerError::ReadSource {
                path: path.clone(),
                source,
            };
            let file = File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(read_error)?;
            let mut content = ExactReader {
                inner: file.take(size),
                remaining: size,
            };
            self.append(path, header, pax, &mut content)?;
            if content.remaining != 0 {
                return Err(LayerError::SourceChanged { path: path.clone() });
            }
            return Ok(());
        }

        let (kind, link) = if file_type.is_dir() {
            (EntryType::Directory, None)
        } else if file_type.is_symlink() {
            let target = std::fs::read_link(path).map_err(|source| LayerError::ReadSource {
                path: path.clone(),
                source,
            })?;
            (EntryType::Symlink, Some(target.into_os_string().into_vec()))
        } else if file_type.is_fifo() {
            (EntryType::Fifo, None)
        } else if file_type.is_char_device() {
            (EntryType::Char, None)
        } else if file_type.is_block_device() {
            (EntryType::Block, None)
        } else {
            // Sockets were filtered out; nothing else exists on Linux.
            return Ok(());
        };
        let mut header =
            self.header(path, kind, entry_name, link.as_deref(), metadata, &mut pax)?;
        if file_type.is_char_device() || file_type.is_block_device() {
            let rdev = metadata.rdev();
            let field_error = |field, value| LayerError::HeaderField {
                path: path.clone(),
                field,
                value,
            };
            let major = nix::sys::stat::major(rdev);
            let minor = nix::sys::stat::minor(rdev);
            header
                .set_device_major(
                    u32::try_from(major).map_err(|_| field_error("device major", major))?,
                )
                .map_err(|_| field_error("device major", major))?;
            header
                .set_device_minor(
                    u32::try_from(minor).map_err(|_| field_error("device minor", minor))?,
                )
                .map_err(|_| field_error("device minor", minor))?;
        }
        self.append(path, header, pax, io::empty())
    }

    /// A whiteout (`.wh.<name>`) or opaque marker (`.wh..wh..opq`): an empty regular file
    /// carrying the permissions, owner and mtime of what it stands for, as Docker writes them.
    fn write_marker(
        &mut self,
        path: &Path,
        entry_name: Vec<u8>,
        metadata: &Metadata,
    ) -> Result<(), LayerError> {
        let mut pax = Vec::new();
        let mut header = self.header(
            path,
            EntryType::Regular,
            &entry_name,
            None,
            metadata,
            &mut pax,
        )?;
        header.set_mode(metadata.mode() & 0o777);
        self.append(path, header, pax, io::empty())
    }

    /// A USTAR header with everything but the size and checksum filled in. Long names and
    /// link targets add PAX records to `pax`.
    fn header(
        &self,
        path: &Path,
        kind: EntryType,
        entry_name: &[u8],
        link: Option<&[u8]>,
        metadata: &Metadata,
        pax: &mut Vec<(String, Vec<u8>)>,
    ) -> Result<Header, LayerError> {
        let mut header = Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(metadata.mode() & 0o7777);
        header.set_uid(u64::from(metadata.uid()));
        header.set_gid(u64::from(metadata.gid()));
        let mtime = match self.source_date_epoch {
            Some(epoch) => metadata.mtime().min(epoch),
            None => metadata.mtime(),
        };
        header.set_mtime(u64::try_from(mtime).unwrap_or(0));
        header.set_size(0);
        // Zero device numbers on every entry, as GNU tar and Go write them: readers differ on
        // empty fields.
        header
            .set_device_major(0)
            .and_then(|()| header.set_device_minor(0))
            .map_err(LayerError::Output)?;
        let old = header.as_old_mut();
        if entry_name.len() <= USTAR_NAME_LENGTH {
            old.name[..entry_name.len()].copy_from_slice(entry_name);
        } else {
            old.name.copy_from_slice(&entry_name[..USTAR_NAME_LENGTH]);
            pax.push(("path".to_string(), entry_name.to_vec()));
        }
        if let Some(link) = link {
            if link.contains(&0) {
                return Err(LayerError::ReadSource {
                    path: path.to_path_buf(),
                    source: io::Error::new(
                        io::ErrorKind::InvalidData,
                        "link target contains a NUL byte",
                    ),
                });
            }
            if link.len() <= USTAR_NAME_LENGTH {
                old.linkname[..link.len()].copy_from_slice(link);
            } else {
                old.linkname.copy_from_slice(&link[..USTAR_NAME_LENGTH]);
                pax.push(("linkpath".to_string(), link.to_vec()));
            }
        }
        Ok(header)
    }

    fn append(
        &mut self,
        path: &Path,
        mut header: Header,
        mut pax: Vec<(String, Vec<u8>)>,
        content: impl Read,
    ) -> Result<(), LayerError> {
        header.set_cksum();
        if !pax.is_empty() {
            // Sorted keys: the record order is part of the bytes.
            pax.sort();
            self.builder
                .append_pax_extensions(
                    pax.iter()
                        .map(|(key, value)| (key.as_str(), value.as_slice())),
                )
                .map_err(LayerError::Output)?;
        }
        self.builder.append(&header, content).map_err(|error| {
            // A read error comes from the source file, anything else from the output.
            match error
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<SourceReadError>())
            {
                Some(_) => LayerError::ReadSource {
                    path: path.to_path_buf(),
                    source: error,
                },
                None => LayerError::Output(error),
            }
        })
    }
}

/// Reads exactly what the header announced, tagging read errors so they are reported against
/// the source file rather than the output.
struct ExactReader<R> {
    inner: R,
    remaining: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("reading the source file failed: {0}")]
struct SourceReadError(io::Error);

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self
            .inner
            .read(buf)
            .map_err(|error| io::Error::new(error.kind(), SourceReadError(error)))?;
        self.remaining -= read as u64;
        Ok(read)
    }
}

fn is_overlay_whiteout(path: &Path, metadata: &Metadata) -> Result<bool, LayerError> {
    let file_type = metadata.file_type();
    if file_type.is_char_device() && metadata.rdev() == 0 {
        return Ok(true);
    }
    // Kernels since 6.7 can also represent a whiteout as an empty file with this xattr.
    if file_type.is_file() && metadata.len() == 0 {
        for name in OVERLAY_WHITEOUT_XATTRS {
            if get_xattr(path, name)?.is_some() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn is_opaque(path: &Path) -> Result<bool, LayerError> {
    for name in OVERLAY_OPAQUE_XATTRS {
        if get_xattr(path, name)?.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    Ok(false)
}

fn get_xattr(path: &Path, name: &str) -> Result<Option<Vec<u8>>, LayerError> {
    match xattr::get(path, name) {
        Ok(value) => Ok(value),
        Err(error) if error.raw_os_error() == Some(libc::ENOTSUP) => Ok(None),
        Err(source) => Err(LayerError::ReadSource {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The entry's xattrs as PAX records (`SCHILY.xattr.<name>`), excluding overlay bookkeeping
/// and SELinux labels. In an overlay upper directory, a redirect or metacopy xattr is an error.
fn xattr_records(path: &Path, overlay: bool) -> Result<Vec<(String, Vec<u8>)>, LayerError> {
    let read_error = |source| LayerError::ReadSource {
        path: path.to_path_buf(),
        source,
    };
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(error) if error.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(source) => return Err(read_error(source)),
    };
    let mut records = Vec::new();
    for name in names {
        let bytes = name.as_bytes();
        if overlay
            && OVERLAY_UNSUPPORTED_XATTRS
                .iter()
                .any(|unsupported| bytes == unsupported.as_bytes())
        {
            return Err(LayerError::OverlayFeature {
                path: path.to_path_buf(),
                xattr: name.to_string_lossy().into_owned(),
            });
        }
        if is_excluded_xattr(bytes) {
            continue;
        }
        let Some(key) = name.to_str() else {
            return Err(LayerError::XattrName {
                path: path.to_path_buf(),
                name: name.to_string_lossy().into_owned(),
            });
        };
        // Gone between list and get: it is not part of the tree any more.
        if let Some(value) = xattr::get(path, OsStr::new(key)).map_err(read_error)? {
            records.push((format!("SCHILY.xattr.{key}"), value));
        }
    }
    Ok(records)
}
