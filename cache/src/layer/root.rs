//! A snapshot root opened as a directory descriptor, and the descriptor-relative operations
//! that keep every change inside it.
//!
//! Resolution is chroot-like: symlinks met on the way are followed, but `..` and absolute
//! targets are clamped at the root by `openat2(RESOLVE_IN_ROOT)`, so a symlink to `/etc`
//! resolves to `<root>/etc`. Magic links (`/proc/self/...`) are refused outright. Everything
//! else here takes a directory descriptor plus one name, never a path with a `/` in it, so the
//! final component is never followed unless the function says so.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::name::EntryPath;

/// How often a resolution is retried when the kernel reports a concurrent rename (`EAGAIN`).
const RESOLVE_ATTEMPTS: usize = 16;

/// Flags for opening a directory we will create entries in and set metadata on.
fn directory_flags() -> OFlag {
    OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC
}

/// An open snapshot root.
#[derive(Debug)]
pub(crate) struct Root {
    fd: OwnedFd,
}

impl Root {
    /// Opens `path` as the root. `path` itself is trusted (it is the caller's snapshot
    /// directory), so a symlink there is followed.
    pub(crate) fn open(path: &Path) -> io::Result<Root> {
        let fd = nix::fcntl::open(path, directory_flags(), Mode::empty())?;
        Ok(Root { fd })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens the directory `path`, resolved inside the root (chroot semantics, see the module
    /// documentation). `ENOENT` if a component is missing, `ENOTDIR` if one is not a directory.
    pub(crate) fn open_directory(&self, path: &EntryPath) -> io::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(directory_flags())
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        resolve(self.fd(), path.syscall_path(), how)
    }

    /// Like [`Root::open_directory`], but the last component must be a directory itself, not a
    /// symlink to one (`ELOOP` otherwise). Used to come back to a directory created earlier.
    pub(crate) fn open_directory_no_follow(&self, path: &EntryPath) -> io::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(directory_flags() | OFlag::O_NOFOLLOW)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        resolve(self.fd(), path.syscall_path(), how)
    }

    /// Opens the directory `path` inside the root, creating missing directories (mode 0755,
    /// owned by the caller) as `mkdir -p` would, each relative to its resolved parent.
    pub(crate) fn ensure_directory(&self, path: &EntryPath) -> io::Result<OwnedFd> {
        match self.open_directory(path) {
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {}
            other => return other,
        }
        let mut current = nix::unistd::dup(self.fd())?;
        let mut prefix = EntryPath::root();
        let mut creating = false;
        for component in path.components() {
            prefix = prefix.join(component);
            if !creating {
                match self.open_directory(&prefix) {
                    Ok(fd) => {
                        current = fd;
                        continue;
                    }
                    Err(error) if error.raw_os_error() == Some(libc::ENOENT) => creating = true,
                    Err(error) => return Err(error),
                }
            }
            // EEXIST here means a dangling symlink (or a race): refuse rather than follow it.
            nix::sys::stat::mkdirat(&current, component, Mode::from_bits_truncate(0o755))?;
            current = openat(
                &current,
                component,
                directory_flags() | OFlag::O_NOFOLLOW,
                Mode::empty(),
            )?;
        }
        Ok(current)
    }
}

fn resolve(root: BorrowedFd<'_>, path: &Path, how: OpenHow) -> io::Result<OwnedFd> {
    let mut attempts = 0;
    loop {
        match openat2(root, path, how) {
            Err(Errno::EAGAIN) if attempts < RESOLVE_ATTEMPTS => attempts += 1,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// `lstat` of `name` in `directory`; `None` if nothing is there.
pub(crate) fn lstat_at(directory: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<FileStat>> {
    match fstatat(directory, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::ENOENT) => Ok(None),
        Err(errno) => Err(errno.into()),
    }
}

pub(crate) fn is_directory(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// Removes `name` from `directory`, recursively if it is a directory, without following any
/// symlink (a symlink is removed, not its target). Nothing there is not an error.
pub(crate) fn remove_all_at(directory: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let Some(stat) = lstat_at(directory, name)? else {
        return Ok(());
    };
    if is_directory(&stat) {
        let child = openat(
            directory,
            name,
            directory_flags() | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )?;
        for child_name in list_directory(child.as_fd())? {
            remove_all_at(child.as_fd(), &child_name)?;
        }
        drop(child);
        unlinkat(directory, name, UnlinkatFlags::RemoveDir)?;
    } else {
        unlinkat(directory, name, UnlinkatFlags::NoRemoveDir)?;
    }
    Ok(())
}

/// The names in a directory, without `.` and `..`, in no particular order.
pub(crate) fn list_directory(directory: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut stream = nix::dir::Dir::from_fd(nix::unistd::dup(directory)?)?;
    let mut names = Vec::new();
    for entry in stream.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// A path naming `name` inside the directory open as `directory`, through `/proc/self/fd`,
/// for the few calls that have no descriptor-relative form (`lsetxattr` on a symlink, fifo or
/// device node). The magic link is the directory we resolved; `name` is looked up in it, and
/// callers use the non-following (`l*`) form of the call.
pub(crate) fn proc_path(directory: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut path = PathBuf::from(format!("/proc/self/fd/{}", directory.as_raw_fd()));
    path.push(name);
    path
}
