//! Applying a layer tar into a snapshot directory, whatever the archive holds.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstat, futimens, mknodat,
    utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat, linkat, symlinkat};
use tar::EntryType;

use super::name::{EntryPath, WhiteoutName};
use super::root::{Root, is_directory, list_directory, lstat_at, proc_path, remove_all_at};
use super::{LayerError, Operation, UnsafeNameReason, WHITEOUT_META_PREFIX};

/// How whiteout entries (`.wh.<name>`, `.wh..wh..opq`) are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// The root is one layer's own snapshot, used as an overlayfs lowerdir: represent
    /// whiteouts the way overlayfs reads them. `.wh.<name>` becomes a char device 0:0 named
    /// `<name>`; `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory. Needs
    /// `CAP_MKNOD` and `CAP_SYS_ADMIN` (for `trusted.*`).
    Overlay,
    /// As [`Whiteouts::Overlay`], for overlays mounted with `userxattr` (rootless): the opaque
    /// marker is `user.overlay.opaque=y`.
    OverlayUserXattr,
    /// The root holds the lower layers' content (flattening): `.wh.<name>` deletes `<name>`
    /// (recursively, never following a symlink) and `.wh..wh..opq` deletes everything in its
    /// directory that this layer did not put there.
    Apply,
}

/// What to do with char and block device entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceNodes {
    /// `mknod` them (needs `CAP_MKNOD`; failing is an error).
    Create,
    /// Leave them out, counting them in [`ApplyStats::skipped_devices`] (rootless, as Docker
    /// does in a user namespace). Fifos are always created.
    Skip,
}

/// How to apply a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOptions {
    pub whiteouts: Whiteouts,
    /// Give entries the archive's numeric uid/gid (`fchown`/`lchown`). Needs `CAP_CHOWN`;
    /// without it, everything belongs to the caller.
    pub preserve_ownership: bool,
    pub devices: DeviceNodes,
    /// Set the archive's PAX `SCHILY.xattr.*` attributes. Overlay bookkeeping attributes
    /// (`trusted.overlay.*`, `user.overlay.*`) from the archive are always dropped: only
    /// whiteout entries may produce them. Attributes the filesystem or our privileges refuse
    /// (`ENOTSUP`, `EPERM`) are counted in [`ApplyStats::skipped_xattrs`], not errors.
    pub xattrs: bool,
}

impl ApplyOptions {
    /// Options suited to the calling process: ownership preserved and device nodes created
    /// when running as root (effective uid 0), both off otherwise.
    pub fn new(whiteouts: Whiteouts) -> ApplyOptions {
        let root = nix::unistd::geteuid().is_root();
        ApplyOptions {
            whiteouts,
            preserve_ownership: root,
            devices: if root {
                DeviceNodes::Create
            } else {
                DeviceNodes::Skip
            },
            xattrs: true,
        }
    }
}

/// What [`apply_layer`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Entries created or updated (whiteouts, skipped and metadata-only entries excluded).
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
    /// Whiteout and opaque entries applied.
    pub whiteouts: u64,
    /// Extended attributes the filesystem or our privileges refused.
    pub skipped_xattrs: u64,
    /// Device entries left out under [`DeviceNodes::Skip`].
    pub skipped_devices: u64,
}

/// Applies an uncompressed layer tar stream into `root` (an existing snapshot directory),
/// honouring whiteouts as `options.whiteouts` says. Use [`decompress`](super::decompress) first
/// for a compressed blob.
///
/// **Never creates, changes or removes anything outside `root`, whatever the archive holds.**
/// Every parent directory is resolved inside the root with
/// `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` (chroot semantics, as Docker's chrooted
/// unpacker has: a symlink `a -> /etc` makes `a/passwd` mean `<root>/etc/passwd`), entries are
/// created relative to that descriptor, the final component is never followed, and an
/// existing entry in the way is unlinked (recursively for a directory, never through a symlink)
/// rather than opened, except that a directory entry over an existing directory merges into it.
/// Hostile input is handled this way:
///
/// - **Errors** (nothing further is applied): a name or hardlink target with a `..` component,
///   a NUL byte, a component over 255 bytes or a total over `PATH_MAX`; a whiteout naming
///   `.`, `..` or nothing (`.wh.`, `.wh..`, `.wh...`); a non-directory entry for the root
///   itself (an entry with an empty name names nothing and is skipped); a hardlink whose
///   target does not exist in the root or is a directory; a parent path going through a
///   dangling symlink or a non-directory; unknown entry types; a truncated or malformed
///   archive.
/// - **Neutralised** (confined to the root and applied): absolute names and hardlink targets
///   (taken relative to the root); symlinked parents and symlink chains (`..` clamps at the
///   root); a symlink, file or device where a directory is expected (replaced, not followed);
///   symlink targets are stored verbatim, since a symlink only matters when followed, and
///   nothing here follows one out of the root; archive xattrs under `trusted.overlay.*` /
///   `user.overlay.*` (dropped).
///
/// Known limit: tar-rs reads a GNU long-name or PAX header entry into memory whole before
/// we see the name, so an archive with a multi-gigabyte long name costs that much memory
/// before it is refused.
///
/// Not atomic: on error, the root is left partially applied and the caller discards it.
/// Directory modes and mtimes are set after all entries, so creating children does not
/// disturb them. Whiteouts only affect content of lower layers, as the OCI spec requires: a
/// whiteout for a path this same layer created is ignored.
pub fn apply_layer(
    root: &Path,
    tar: impl Read,
    options: &ApplyOptions,
) -> Result<ApplyStats, LayerError> {
    let handle = Root::open(root).map_err(|source| LayerError::Root {
        path: root.to_path_buf(),
        source,
    })?;
    let mut applier = Applier {
        root: handle,
        options,
        unpacked: HashSet::new(),
        directories: HashMap::new(),
        stats: ApplyStats::default(),
        buffer: vec![0; 256 * 1024],
    };
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(LayerError::Archive)? {
        let mut entry = entry.map_err(LayerError::Archive)?;
        applier.entry(&mut entry)?;
    }
    applier.finish_directories()?;
    Ok(applier.stats)
}

/// The metadata of one archive entry, read from its header and PAX records.
struct Metadata {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// A directory whose mode and mtime are set at the end, and the inode it must still be.
struct DeferredDirectory {
    mode: u32,
    mtime: i64,
    device: u64,
    inode: u64,
}

struct Applier<'a> {
    root: Root,
    options: &'a ApplyOptions,
    /// Paths this layer created: whiteouts do not delete them.
    unpacked: HashSet<EntryPath>,
    directories: HashMap<EntryPath, DeferredDirectory>,
    stats: ApplyStats,
    buffer: Vec<u8>,
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Applier<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), LayerError> {
        let raw_name = entry.path_bytes().into_owned();
        let unsafe_name = |reason| LayerError::UnsafeName {
            path: lossy(&raw_name),
            reason,
        };
        let path = EntryPath::parse(&raw_name).map_err(unsafe_name)?;
        let mut kind = entry.header().entry_type();
        // Old (V7) archives mark directories by a trailing slash on a regular-file entry.
        if kind == EntryType::Regular && raw_name.ends_with(b"/") {
            kind = EntryType::Directory;
        }
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        // AUFS bookkeeping (`.wh..wh.plnk/...`) is not content.
        if is_aufs_metadata(&path) {
            return Ok(());
        }

        // An entry with an empty name names no path at all: skipped, as moby's Unpack skips a
        // root entry over the existing root directory (Buildah's add-dir-not-dir archive has
        // one). Any other name for the root (`.`, `/`) is an error unless it is a directory.
        if raw_name.is_empty() {
            return Ok(());
        }
        let metadata = read_metadata(entry)?;
        let Some((parent, name)) = path.split() else {
            if kind != EntryType::Directory {
                return Err(unsafe_name(UnsafeNameReason::Root));
            }
            let directory = self.root.open_directory(&path).map_err(|source| {
                LayerError::apply(path.as_path(), Operation::ResolveParent, source)
            })?;
            return self.directory_metadata(&path, directory, &metadata);
        };
        match WhiteoutName::classify(name).map_err(unsafe_name)? {
            WhiteoutName::None => {}
            WhiteoutName::Meta => return Ok(()),
            WhiteoutName::Opaque => return self.opaque(&parent, &path),
            WhiteoutName::Delete(target) => return self.whiteout(&parent, target, &path),
        }

        let parent_fd = self.root.ensure_directory(&parent).map_err(|source| {
            LayerError::apply(path.as_path(), Operation::ResolveParent, source)
        })?;
        let parent_fd = parent_fd.as_fd();
        match kind {
            EntryType::Directory => self.directory(parent_fd, name, &path, &metadata)?,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(parent_fd, name, &path, &metadata, entry)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .filter(|target| !target.is_empty())
                    .ok_or_else(|| LayerError::MissingLinkTarget {
                        path: path.as_path().to_path_buf(),
                    })?
                    .into_owned();
                self.symlink(parent_fd, name, &path, &metadata, &target)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .filter(|target| !target.is_empty())
                    .ok_or_else(|| LayerError::MissingLinkTarget {
                        path: path.as_path().to_path_buf(),
                    })?
                    .into_owned();
                self.hardlink(parent_fd, name, &path, &target)?;
            }
            EntryType::Fifo => {
                self.node(parent_fd, name, &path, &metadata, SFlag::S_IFIFO, 0)?;
            }
            EntryType::Char | EntryType::Block => {
                if self.options.devices == DeviceNodes::Skip {
                    self.stats.skipped_devices += 1;
                    return Ok(());
                }
                let (major, minor) = device_numbers(entry.header())?;
                let node_kind = if kind == EntryType::Char {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                };
                let device = nix::sys::stat::makedev(major, minor);
                self.node(parent_fd, name, &path, &metadata, node_kind, device)?;
            }
            EntryType::GNULongName
            | EntryType::GNULongLink
            | EntryType::XHeader
            | EntryType::XGlobalHeader
            | EntryType::__Nonexhaustive(_) => {
                return Err(LayerError::UnsupportedEntryType {
                    path: path.as_path().to_path_buf(),
                    kind: char::from(kind.as_byte()),
                });
            }
        }
        self.unpacked.insert(path);
        self.stats.entries += 1;
        Ok(())
    }

    /// Removes whatever is at `name` so that a new entry can take its place.
    fn clear(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &EntryPath,
    ) -> Result<(), LayerError> {
        remove_all_at(parent, name)
            .map_err(|source| LayerError::apply(path.as_path(), Operation::Remove, source))
    }

    fn directory(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &EntryPath,
        metadata: &Metadata,
    ) -> Result<(), LayerError> {
        let error = |operation, source: Errno| LayerError::apply(path.as_path(), operation, source);
        let existing = lstat_at(parent, name)
            .map_err(|source| LayerError::apply(path.as_path(), Operation::Remove, source))?;
        match existing {
            Some(stat) if is_directory(&stat) => {}
            Some(_) => {
                self.clear(parent, name, path)?;
                mkdir(parent, name).map_err(|errno| error(Operation::CreateDirectory, errno))?;
            }
            None => {
                mkdir(parent, name).map_err(|errno| error(Operation::CreateDirectory, errno))?
            }
        }
        let directory = openat(
            parent,
            name,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| error(Operation::CreateDirectory, errno))?;
        self.directory_metadata(path, directory, metadata)
    }

    /// Owner and xattrs now; mode and mtime at the end (see [`Applier::finish_directories`]).
    fn directory_metadata(
        &mut self,
        path: &EntryPath,
        directory: OwnedFd,
        metadata: &Metadata,
    ) -> Result<(), LayerError> {
        let directory = File::from(directory);
        self.set_owner_fd(&directory, path, metadata)?;
        self.set_xattrs_fd(&directory, path, metadata)?;
        let stat = fstat(&directory)
            .map_err(|source| LayerError::apply(path.as_path(), Operation::SetMode, source))?;
        self.directories.insert(
            path.clone(),
            DeferredDirectory {
                mode: metadata.mode,
                mtime: metadata.mtime,
                device: stat.st_dev,
                inode: stat.st_ino,
            },
        );
        if path.is_root() {
            self.stats.entries += 1;
        }
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &EntryPath,
        metadata: &Metadata,
        content: &mut R,
    ) -> Result<(), LayerError> {
        self.clear(parent, name, path)?;
        let fd = openat(
            parent,
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|source| LayerError::apply(path.as_path(), Operation::CreateFile, source))?;
        let mut file = File::from(fd);
        loop {
            let read = match content.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(LayerError::Archive(error)),
            };
            file.write_all(&self.buffer[..read]).map_err(|source| {
                LayerError::apply(path.as_path(), Operation::WriteFile, source)
            })?;
            self.stats.bytes += read as u64;
        }
        // Owner before mode (chown clears setuid/setgid), xattrs after owner (chown clears
        // security.capability), times last.
        self.set_owner_fd(&file, path, metadata)?;
        fchmod(&file, Mode::from_bits_truncate(metadata.mode))
            .map_err(|source| LayerError::apply(path.as_path(), Operation::SetMode, source))?;
        self.set_xattrs_fd(&file, path, metadata)?;
        let time = timespec(metadata.mtime);
        futimens(&file, &time, &time)
            .map_err(|source| LayerError::apply(path.as_path(), Operation::SetTimes, source))
    }

    fn symlink(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &EntryPath,
        metadata: &Metadata,
        target: &[u8],
    ) -> Result<(), LayerError> {
        if target.contains(&0) {
            return Err(LayerError::UnsafeName {
                path: lossy(target),
                reason: UnsafeNameReason::Nul,
            });
        }
        self.clear(parent, name, path)?;
        // The target is stored verbatim: it may point anywhere, and is only resolved (inside
        // the root) when a later entry's parent goes through it.
        symlinkat(OsStr::from_bytes(target), parent, name).map_err(|source| {
            LayerError::apply(path.as_path(), Operation::CreateSymlink, source)
        })?;
        self.set_metadata_at(parent, name, path, metadata, None)
    }

    fn hardlink(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &EntryPath,
        raw_target: &[u8],
    ) -> Result<(), LayerError> {
        let unsafe_target = |reason| LayerError::UnsafeName {
            path: lossy(raw_target),
            reason,
        };
        let target = EntryPath::parse(raw_target).map_err(unsafe_target)?;
        let Some((target_parent, target_name)) = target.split() else {
            return Err(unsafe_target(UnsafeNameReason::Root));
        };
        let operation = || Operation::CreateHardlink {
            target: target.as_path().to_path_buf(),
        };
        let target_directory = self
            .root
            .open_directory(&target_parent)
            .map_err(|source| LayerError::apply(path.as_path(), operation(), source))?;
        if target == *path {
            // A link to itself: nothing to do, and clearing first would lose the file.
            return match lstat_at(parent, name) {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(LayerError::apply(
                    path.as_path(),
                    operation(),
                    Errno::ENOENT,
                )),
                Err(source) => Err(LayerError::apply(path.as_path(), operation(), source)),
            };
        }
        self.clear(parent, name, path)?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself, as tar does.
        linkat(
            &target_directory,
            target_name,
            parent,
            name,
            AtFlags::empty(),
        )
        .map_err(|source| LayerError::apply(path.as_path(), operation(), source))
    }

    fn node(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &EntryPath,
        metadata: &Metadata,
        kind: SFlag,
        device: libc::dev_t,
    ) -> Result<(), LayerError> {
        self.clear(parent, name, path)?;
        mknodat(
            parent,
            name,
            kind,
            Mode::from_bits_truncate(metadata.mode & 0o777),
            device,
        )
        .map_err(|source| LayerError::apply(path.as_path(), Operation::CreateNode, source))?;
        self.set_metadata_at(parent, name, path, metadata, Some(metadata.mode))
    }

    /// Owner, mode (unless `None`: symlinks have none), xattrs and mtime of `name` in
    /// `parent`, none of them following a symlink.
    fn set_metadata_at(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &EntryPath,
        metadata: &Metadata,
        mode: Option<u32>,
    ) -> Result<(), LayerError> {
        if self.options.preserve_ownership {
            let (uid, gid) = ids(path, metadata)?;
            fchownat(
                parent,
                name,
                Some(uid),
                Some(gid),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|source| LayerError::apply(path.as_path(), Operation::SetOwner, source))?;
        }
        if let Some(mode) = mode {
            fchmodat(
                parent,
                name,
                Mode::from_bits_truncate(mode),
                FchmodatFlags::NoFollowSymlink,
            )
            .map_err(|source| LayerError::apply(path.as_path(), Operation::SetMode, source))?;
        }
        if self.options.xattrs && !metadata.xattrs.is_empty() {
            let target = proc_path(parent, name);
            for (key, value) in &metadata.xattrs {
                // xattr::set is lsetxattr: the final component is not followed.
                let result = xattr::set(&target, key, value);
                self.xattr_result(result, path, key)?;
            }
        }
        let time = timespec(metadata.mtime);
        utimensat(parent, name, &time, &time, UtimensatFlags::NoFollowSymlink)
            .map_err(|source| LayerError::apply(path.as_path(), Operation::SetTimes, source))
    }

    fn set_owner_fd(
        &self,
        file: &File,
        path: &EntryPath,
        metadata: &Metadata,
    ) -> Result<(), LayerError> {
        if !self.options.preserve_ownership {
            return Ok(());
        }
        let (uid, gid) = ids(path, metadata)?;
        fchown(file, Some(uid), Some(gid))
            .map_err(|source| LayerError::apply(path.as_path(), Operation::SetOwner, source))
    }

    fn set_xattrs_fd(
        &mut self,
        file: &File,
        path: &EntryPath,
        metadata: &Metadata,
    ) -> Result<(), LayerError> {
        if !self.options.xattrs {
            return Ok(());
        }
        for (key, value) in &metadata.xattrs {
            let result = xattr::FileExt::set_xattr(file, key, value);
            self.xattr_result(result, path, key)?;
        }
        Ok(())
    }

    fn xattr_result(
        &mut self,
        result: io::Result<()>,
        path: &EntryPath,
        key: &str,
    ) -> Result<(), LayerError> {
        match result {
            Ok(()) => Ok(()),
            Err(error) if matches!(error.raw_os_error(), Some(libc::ENOTSUP | libc::EPERM)) => {
                self.stats.skipped_xattrs += 1;
                Ok(())
            }
            Err(source) => Err(LayerError::apply(
                path.as_path(),
                Operation::SetXattr {
                    name: key.to_string(),
                },
                source,
            )),
        }
    }

    /// `.wh.<target>` in `parent`.
    fn whiteout(
        &mut self,
        parent: &EntryPath,
        target: &OsStr,
        path: &EntryPath,
    ) -> Result<(), LayerError> {
        // OCI image spec: whiteouts only apply to lower layers, never to this layer's entries.
        if self.unpacked.contains(&parent.join(target)) {
            return Ok(());
        }
        let resolve_error =
            |source| LayerError::apply(path.as_path(), Operation::ResolveParent, source);
        match self.options.whiteouts {
            Whiteouts::Apply => {
                let directory = match self.root.open_directory(parent) {
                    Ok(directory) => directory,
                    // Nothing there, so nothing to delete.
                    Err(error)
                        if matches!(error.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) =>
                    {
                        return Ok(());
                    }
                    Err(error) => return Err(resolve_error(error)),
                };
                remove_all_at(directory.as_fd(), target).map_err(|source| {
                    LayerError::apply(path.as_path(), Operation::Remove, source)
                })?;
            }
            Whiteouts::Overlay | Whiteouts::OverlayUserXattr => {
                let directory = self.root.ensure_directory(parent).map_err(resolve_error)?;
                remove_all_at(directory.as_fd(), target).map_err(|source| {
                    LayerError::apply(path.as_path(), Operation::Remove, source)
                })?;
                mknodat(
                    &directory,
                    target,
                    SFlag::S_IFCHR,
                    Mode::empty(),
                    nix::sys::stat::makedev(0, 0),
                )
                .map_err(|source| {
                    LayerError::apply(path.as_path(), Operation::CreateWhiteout, source)
                })?;
            }
        }
        self.stats.whiteouts += 1;
        Ok(())
    }

    /// `.wh..wh..opq` in `directory`.
    fn opaque(&mut self, directory: &EntryPath, path: &EntryPath) -> Result<(), LayerError> {
        let resolve_error =
            |source| LayerError::apply(path.as_path(), Operation::ResolveParent, source);
        let xattr_name = match self.options.whiteouts {
            Whiteouts::Apply => {
                let handle = match self.root.open_directory(directory) {
                    Ok(handle) => handle,
                    Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                    Err(error) => return Err(resolve_error(error)),
                };
                self.prune(handle.as_fd(), directory).map_err(|source| {
                    LayerError::apply(path.as_path(), Operation::Remove, source)
                })?;
                self.stats.whiteouts += 1;
                return Ok(());
            }
            Whiteouts::Overlay => "trusted.overlay.opaque",
            Whiteouts::OverlayUserXattr => "user.overlay.opaque",
        };
        let handle = File::from(
            self.root
                .ensure_directory(directory)
                .map_err(resolve_error)?,
        );
        xattr::FileExt::set_xattr(&handle, xattr_name, b"y")
            .map_err(|source| LayerError::apply(path.as_path(), Operation::MarkOpaque, source))?;
        self.stats.whiteouts += 1;
        Ok(())
    }

    /// Deletes everything under `directory` that this layer did not create.
    fn prune(&self, handle: BorrowedFd<'_>, directory: &EntryPath) -> io::Result<()> {
        for name in list_directory(handle)? {
            let child = directory.join(&name);
            if !self.unpacked.contains(&child) {
                remove_all_at(handle, &name)?;
                continue;
            }
            if let Some(stat) = lstat_at(handle, &name)?
                && is_directory(&stat)
            {
                let child_handle = openat(
                    handle,
                    name.as_os_str(),
                    OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                self.prune(child_handle.as_fd(), &child)?;
            }
        }
        Ok(())
    }

    /// Sets the deferred modes and mtimes, deepest directories first (so a restrictive mode on
    /// a parent cannot block reaching its children), each only if the path still leads to the
    /// very directory this layer created or merged into.
    fn finish_directories(&mut self) -> Result<(), LayerError> {
        let mut directories: Vec<_> = self.directories.drain().collect();
        directories.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (path, deferred) in directories {
            let handle = match self.root.open_directory_no_follow(&path) {
                Ok(handle) => handle,
                // Replaced by a later entry of this layer: its metadata no longer applies.
                Err(error)
                    if matches!(
                        error.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                    ) =>
                {
                    continue;
                }
                Err(source) => {
                    return Err(LayerError::apply(
                        path.as_path(),
                        Operation::SetMode,
                        source,
                    ));
                }
            };
            let stat = fstat(&handle)
                .map_err(|source| LayerError::apply(path.as_path(), Operation::SetMode, source))?;
            if (stat.st_dev, stat.st_ino) != (deferred.device, deferred.inode) {
                continue;
            }
            fchmod(&handle, Mode::from_bits_truncate(deferred.mode))
                .map_err(|source| LayerError::apply(path.as_path(), Operation::SetMode, source))?;
            let time = timespec(deferred.mtime);
            futimens(&handle, &time, &time)
                .map_err(|source| LayerError::apply(path.as_path(), Operation::SetTimes, source))?;
        }
        Ok(())
    }
}

/// Whether a component of `path` is AUFS bookkeeping (`.wh..wh.*`, other than a final
/// `.wh..wh..opq`).
fn is_aufs_metadata(path: &EntryPath) -> bool {
    let mut components = path.components().peekable();
    while let Some(component) = components.next() {
        let is_last = components.peek().is_none();
        let bytes = component.as_bytes();
        if bytes.starts_with(WHITEOUT_META_PREFIX.as_bytes())
            && !(is_last && bytes == super::WHITEOUT_OPAQUE.as_bytes())
        {
            return true;
        }
    }
    false
}

fn mkdir(parent: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
    nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(0o700))
}

fn timespec(seconds: i64) -> TimeSpec {
    TimeSpec::new(seconds, 0)
}

fn ids(path: &EntryPath, metadata: &Metadata) -> Result<(Uid, Gid), LayerError> {
    let out_of_range = || {
        LayerError::apply(
            path.as_path(),
            Operation::SetOwner,
            io::Error::new(
                io::ErrorKind::InvalidData,
                "uid or gid does not fit in 32 bits",
            ),
        )
    };
    let uid = u32::try_from(metadata.uid).map_err(|_| out_of_range())?;
    let gid = u32::try_from(metadata.gid).map_err(|_| out_of_range())?;
    Ok((Uid::from_raw(uid), Gid::from_raw(gid)))
}

/// A numeric header field, with an empty one (all NUL or spaces, as some writers leave
/// uid/gid) read as 0, as Go's archive/tar does.
fn lenient(parsed: io::Result<u64>, raw: &[u8]) -> Result<u64, LayerError> {
    match parsed {
        Ok(value) => Ok(value),
        Err(_) if raw.iter().all(|&byte| byte == 0 || byte == b' ') => Ok(0),
        Err(error) => Err(LayerError::Archive(error)),
    }
}

/// The device numbers of a char or block entry (empty fields read as 0).
fn device_numbers(header: &tar::Header) -> Result<(u64, u64), LayerError> {
    let (raw_major, raw_minor) = match (header.as_ustar(), header.as_gnu()) {
        (Some(ustar), _) => (ustar.dev_major, ustar.dev_minor),
        (None, Some(gnu)) => (gnu.dev_major, gnu.dev_minor),
        (None, None) => ([0; 8], [0; 8]),
    };
    let major = header
        .device_major()
        .map(|major| u64::from(major.unwrap_or(0)));
    let minor = header
        .device_minor()
        .map(|minor| u64::from(minor.unwrap_or(0)));
    Ok((lenient(major, &raw_major)?, lenient(minor, &raw_minor)?))
}

/// Mode, owner, mtime (a PAX `mtime` record wins over the header's) and xattrs of an entry.
fn read_metadata<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Metadata, LayerError> {
    let header = entry.header();
    let old = header.as_old();
    let mode = lenient(header.mode().map(u64::from), &old.mode)? & 0o7777;
    let uid = lenient(header.uid(), &old.uid)?;
    let gid = lenient(header.gid(), &old.gid)?;
    let mut mtime = i64::try_from(lenient(header.mtime(), &old.mtime)?).unwrap_or(i64::MAX);
    let mut xattrs = Vec::new();
    if let Some(extensions) = entry.pax_extensions().map_err(LayerError::Archive)? {
        for extension in extensions {
            let extension = extension.map_err(LayerError::Archive)?;
            let Ok(key) = extension.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                if name.starts_with("trusted.overlay.")
                    || name.starts_with("user.overlay.")
                    || name.is_empty()
                {
                    continue;
                }
                xattrs.push((name.to_string(), extension.value_bytes().to_vec()));
            } else if key == "mtime"
                && let Some(seconds) = extension
                    .value()
                    .ok()
                    .and_then(|value| value.split('.').next())
                    .and_then(|seconds| seconds.parse::<i64>().ok())
            {
                mtime = seconds;
            }
        }
    }
    Ok(Metadata {
        // Masked to 0o7777 above.
        mode: u32::try_from(mode).unwrap_or(0),
        uid,
        gid,
        mtime,
        xattrs,
    })
}
