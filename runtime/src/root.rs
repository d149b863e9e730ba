//! Path resolution inside a container root, symlink-safe: every lookup is an `openat2` with
//! `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS` from the root's directory fd, so absolute
//! symlinks and `..` stay inside the root (chroot semantics) and `/proc` magic links are
//! refused.
//!
//! Mount targets are handed to `mount(2)` as `/proc/self/fd/N` of an fd opened this way, so
//! the kernel mounts on exactly the inode that was resolved, not on a path looked up again.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, SFlag, fstat, mkdirat};

use crate::error::ContainerError;

/// An open container root directory.
#[derive(Debug)]
pub(crate) struct Root {
    fd: OwnedFd,
}

/// The path of an fd as `mount(2)` and friends accept it.
pub(crate) fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The relative form of a container path: `/etc/passwd` → `etc/passwd`, `/` → `.`.
fn relative(path: &str) -> PathBuf {
    let relative: PathBuf = Path::new(path)
        .components()
        .filter(|component| !matches!(component, Component::RootDir | Component::CurDir))
        .collect();
    if relative.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        relative
    }
}

impl Root {
    /// Wraps an fd of the root directory (usually opened `O_PATH`).
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Root { fd }
    }

    /// The root directory's fd.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens `path` (absolute inside the container) with `flags` plus `O_CLOEXEC`.
    pub(crate) fn open(&self, path: &str, flags: OFlag) -> nix::Result<OwnedFd> {
        self.open_relative(&relative(path), flags)
    }

    fn open_relative(&self, path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        loop {
            match openat2(self.fd.as_fd(), path, how) {
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                result => return result,
            }
        }
    }

    /// Reads a whole file; a missing file reads as `None`. Refuses anything but regular
    /// files, so a FIFO or device planted in an image cannot block or have side effects.
    pub(crate) fn read_file(&self, path: &str) -> Result<Option<String>, ContainerError> {
        let probe = match self.open(path, OFlag::O_PATH) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(errno) => return Err(ContainerError::setup(format!("open {path}"), errno)),
        };
        let stat =
            fstat(&probe).map_err(|errno| ContainerError::setup(format!("stat {path}"), errno))?;
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(ContainerError::BadPath {
                path: path.into(),
                reason: "not a regular file".into(),
            });
        }
        let fd = self
            .open(path, OFlag::O_RDONLY | OFlag::O_NOCTTY)
            .map_err(|errno| ContainerError::setup(format!("open {path}"), errno))?;
        let mut text = String::new();
        std::fs::File::from(fd)
            .read_to_string(&mut text)
            .map_err(|error| ContainerError::setup(format!("read {path}"), &error))?;
        Ok(Some(text))
    }

    /// Resolves `path` to a directory, creating missing components (mode 0755, owned by the
    /// caller) one at a time. Each new component is created with `mkdirat` in its resolved
    /// parent, so creation never follows a symlink out of the root. Returns an `O_PATH` fd.
    pub(crate) fn create_dir_all(&self, path: &str) -> Result<OwnedFd, ContainerError> {
        let target = relative(path);
        let mut prefix = PathBuf::new();
        let mut current = self
            .open_relative(Path::new("."), OFlag::O_PATH | OFlag::O_DIRECTORY)
            .map_err(|errno| ContainerError::setup("open the container root", errno))?;
        for component in target.components() {
            prefix.push(component);
            current = match self.open_relative(&prefix, OFlag::O_PATH | OFlag::O_DIRECTORY) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    let name = component.as_os_str();
                    match mkdirat(current.as_fd(), name, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(errno) => {
                            return Err(ContainerError::setup(
                                format!("mkdir {}", show(&prefix)),
                                errno,
                            ));
                        }
                    }
                    self.open_relative(&prefix, OFlag::O_PATH | OFlag::O_DIRECTORY)
                        .map_err(|errno| {
                            ContainerError::setup(format!("open {}", show(&prefix)), errno)
                        })?
                }
                Err(Errno::ENOTDIR) => {
                    return Err(ContainerError::BadPath {
                        path: show(&prefix),
                        reason: "not a directory".into(),
                    });
                }
                Err(errno) => {
                    return Err(ContainerError::setup(
                        format!("open {}", show(&prefix)),
                        errno,
                    ));
                }
            };
        }
        Ok(current)
    }

    /// Resolves `path` to a regular file, creating an empty one (mode 0644) and its missing
    /// parent directories when it does not exist. Returns an `O_PATH` fd.
    pub(crate) fn create_file(&self, path: &str) -> Result<OwnedFd, ContainerError> {
        let target = relative(path);
        let opened = match self.open_relative(&target, OFlag::O_PATH) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                let parent = target.parent().unwrap_or(Path::new(""));
                let name = target.file_name().unwrap_or(OsStr::new("."));
                let parent_fd = self.create_dir_all(&format!("/{}", show(parent)))?;
                // O_EXCL|O_NOFOLLOW: a dangling symlink planted here fails instead of being
                // followed; the parent is already resolved inside the root.
                match nix::fcntl::openat(
                    parent_fd.as_fd(),
                    name,
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o644),
                ) {
                    Ok(_) | Err(Errno::EEXIST) => {}
                    Err(errno) => {
                        return Err(ContainerError::setup(format!("create {path}"), errno));
                    }
                }
                self.open_relative(&target, OFlag::O_PATH)
                    .map_err(|errno| ContainerError::setup(format!("open {path}"), errno))?
            }
            Err(errno) => return Err(ContainerError::setup(format!("open {path}"), errno)),
        };
        let stat =
            fstat(&opened).map_err(|errno| ContainerError::setup(format!("stat {path}"), errno))?;
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(ContainerError::BadPath {
                path: path.into(),
                reason: "exists and is not a regular file".into(),
            });
        }
        Ok(opened)
    }
}

fn show(path: &Path) -> String {
    format!("/{}", String::from_utf8_lossy(path.as_os_str().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths_become_relative() {
        assert_eq!(relative("/"), PathBuf::from("."));
        assert_eq!(relative("/etc/passwd"), PathBuf::from("etc/passwd"));
        assert_eq!(relative("//a/./b/"), PathBuf::from("a/b"));
    }

    #[test]
    fn absolute_symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("real")).unwrap();
        std::os::unix::fs::symlink("/real", rootfs.join("link")).unwrap();
        std::os::unix::fs::symlink("/../../..", rootfs.join("escape")).unwrap();
        let fd =
            nix::fcntl::open(&rootfs, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        let root = Root::new(fd);
        root.create_dir_all("/link/made").unwrap();
        assert!(rootfs.join("real/made").is_dir());
        root.create_file("/escape/tmp/file").unwrap();
        assert!(rootfs.join("tmp/file").is_file());
        assert_eq!(root.read_file("/link/../real/missing").unwrap(), None);
    }
}
