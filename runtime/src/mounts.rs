//! The container's own mounts: bind mounts (host paths and volumes, which are bind mounts of
//! their data directory) and tmpfs file systems, and the copy-up that fills an empty volume
//! from the image before it is mounted.
//!
//! Every destination is resolved inside the container root (`RESOLVE_IN_ROOT`, see
//! [`crate::root`]) and created when missing, so a symlink planted in the image (`/data ->
//! /../../etc`) lands the mount inside the root, never on the host. The kernel mounts on the
//! inode that was resolved (`/proc/self/fd/N`), not on a path looked up again.
//!
//! Not here: the store's volumes (names, metadata), which the caller turns into host paths.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::mount::{MsFlags, mount};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstat, fstatat, futimens,
    mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat, symlinkat};
use serde::{Deserialize, Serialize};

use crate::container::remount_read_only;
use crate::error::{ContainerError, RuntimeError};
use crate::root::{Root, fd_path};
use crate::spec::{BindMount, Spec};

/// A tmpfs mounted into the container (Docker's `--tmpfs` and `--mount type=tmpfs`).
/// `noexec`, `nosuid` and `nodev` unless `exec`, `suid`, `dev` say otherwise (Docker's
/// defaults for both flags).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsMount {
    /// Absolute path inside the container, resolved inside the root; created when missing.
    pub destination: String,
    /// Size limit in bytes; `None` is the kernel's default (half of the RAM).
    pub size: Option<u64>,
    /// Permission bits of the tmpfs root (`mode=1770`); `None` is the kernel's 1777.
    pub mode: Option<u32>,
    /// Mount read-only.
    pub read_only: bool,
    /// Allow executing files (`exec`).
    pub exec: bool,
    /// Honour set-user-ID bits (`suid`).
    pub suid: bool,
    /// Allow device nodes (`dev`).
    pub dev: bool,
    /// Other tmpfs data options, validated, as given: `uid=N`, `gid=N`, `nr_inodes=N`,
    /// `nr_blocks=N`, `mpol=...`.
    pub data: Vec<String>,
}

/// tmpfs data options Docker lets through besides `size` and `mode` (moby `MergeTmpfsOptions`).
const TMPFS_DATA_KEYS: [&str; 5] = ["uid", "gid", "nr_inodes", "nr_blocks", "mpol"];

impl TmpfsMount {
    /// Parses Docker's tmpfs option list (the part after `--tmpfs /path:`): comma-separated
    /// `rw`, `ro`, `exec`, `noexec`, `suid`, `nosuid`, `dev`, `nodev`, the no-op propagation
    /// words `private`/`rprivate`, `size=64m` (bytes, or k/m/g/t suffixes; percentages are
    /// refused), `mode=1770` (octal) and the data keys `uid`, `gid`, `nr_inodes`, `nr_blocks`,
    /// `mpol`. Later options win, as in Docker.
    pub fn parse(destination: &str, options: &str) -> Result<TmpfsMount, RuntimeError> {
        let mut tmpfs = TmpfsMount {
            destination: destination.to_string(),
            ..TmpfsMount::default()
        };
        for option in options.split(',').filter(|option| !option.is_empty()) {
            let invalid = || RuntimeError::TmpfsOption(option.to_string());
            match option.split_once('=') {
                None => match option {
                    "rw" => tmpfs.read_only = false,
                    "ro" => tmpfs.read_only = true,
                    "exec" => tmpfs.exec = true,
                    "noexec" => tmpfs.exec = false,
                    "suid" => tmpfs.suid = true,
                    "nosuid" => tmpfs.suid = false,
                    "dev" => tmpfs.dev = true,
                    "nodev" => tmpfs.dev = false,
                    // Every mount of a container is private already.
                    "private" | "rprivate" => {}
                    _ => return Err(invalid()),
                },
                Some(("size", size)) => tmpfs.size = Some(parse_size(size).ok_or_else(invalid)?),
                Some(("mode", mode)) => {
                    tmpfs.mode = Some(
                        u32::from_str_radix(mode, 8)
                            .ok()
                            .filter(|mode| *mode <= 0o7777)
                            .ok_or_else(invalid)?,
                    );
                }
                Some((key, value))
                    if TMPFS_DATA_KEYS.contains(&key)
                        && !value.is_empty()
                        && value.bytes().all(|byte| {
                            byte.is_ascii_alphanumeric() || b":-_.".contains(&byte)
                        }) =>
                {
                    tmpfs
                        .data
                        .retain(|kept| !kept.starts_with(&format!("{key}=")));
                    tmpfs.data.push(option.to_string());
                }
                Some(_) => return Err(invalid()),
            }
        }
        Ok(tmpfs)
    }

    /// The option string Docker would show for this tmpfs (`rw,noexec,size=65536k`), without
    /// the defaults it adds itself.
    fn mount_data(&self) -> String {
        let mut data = Vec::new();
        if let Some(size) = self.size {
            data.push(format!("size={size}"));
        }
        if let Some(mode) = self.mode {
            data.push(format!("mode={mode:o}"));
        }
        data.extend(self.data.iter().cloned());
        data.join(",")
    }

    fn flags(&self) -> MsFlags {
        let mut flags = MsFlags::empty();
        if !self.exec {
            flags |= MsFlags::MS_NOEXEC;
        }
        if !self.suid {
            flags |= MsFlags::MS_NOSUID;
        }
        if !self.dev {
            flags |= MsFlags::MS_NODEV;
        }
        if self.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        flags
    }
}

/// The kernel's tmpfs size syntax without percentages: bytes, or a `k`, `m`, `g`, `t` suffix
/// (either case).
fn parse_size(text: &str) -> Option<u64> {
    let (number, multiplier) = match text.as_bytes().last()?.to_ascii_lowercase() {
        b'k' => (&text[..text.len() - 1], 1u64 << 10),
        b'm' => (&text[..text.len() - 1], 1 << 20),
        b'g' => (&text[..text.len() - 1], 1 << 30),
        b't' => (&text[..text.len() - 1], 1 << 40),
        _ => (text, 1),
    };
    number.parse::<u64>().ok()?.checked_mul(multiplier)
}

/// One mount to make, bind or tmpfs.
enum Planned<'a> {
    Bind(&'a BindMount),
    Tmpfs(&'a TmpfsMount),
}

impl Planned<'_> {
    fn destination(&self) -> &str {
        match self {
            Planned::Bind(bind) => &bind.destination,
            Planned::Tmpfs(tmpfs) => &tmpfs.destination,
        }
    }
}

/// The number of components of a destination: Docker mounts shallower paths first, so
/// `/data` is mounted before `/data/cache` whatever the order of the flags.
fn depth(destination: &str) -> usize {
    destination
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .count()
}

/// Makes every bind and tmpfs mount of `spec` under `root`, parents first (stable for equal
/// depths). Runs in the container's mount namespace, before `pivot_root`.
pub(crate) fn mount_all(root: &Root, spec: &Spec) -> Result<(), ContainerError> {
    let mut planned: Vec<Planned<'_>> = spec
        .mounts
        .iter()
        .map(Planned::Bind)
        .chain(spec.tmpfs.iter().map(Planned::Tmpfs))
        .collect();
    planned.sort_by_key(|mount| depth(mount.destination()));
    for mount in planned {
        match mount {
            Planned::Bind(bind) => mount_bind(root, bind)?,
            Planned::Tmpfs(tmpfs) => mount_tmpfs(root, tmpfs)?,
        }
    }
    Ok(())
}

fn mount_bind(root: &Root, bind: &BindMount) -> Result<(), ContainerError> {
    let destination = &bind.destination;
    if bind.copy_up && bind.source.is_dir() {
        copy_up(root, &bind.source, destination)?;
    }
    let target = if bind.source.is_dir() {
        root.create_dir_all(destination)?
    } else {
        root.create_file(destination)?
    };
    mount(
        Some(&bind.source),
        &fd_path(target.as_fd()),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|errno| ContainerError::setup(format!("bind mount {destination}"), errno))?;
    if bind.read_only {
        // The fd above is the covered inode; resolve again to reach the new mount.
        let mounted = root
            .open(destination, OFlag::O_PATH)
            .map_err(|errno| ContainerError::setup(format!("open {destination}"), errno))?;
        remount_read_only(&fd_path(mounted.as_fd()))?;
    }
    Ok(())
}

fn mount_tmpfs(root: &Root, tmpfs: &TmpfsMount) -> Result<(), ContainerError> {
    let destination = &tmpfs.destination;
    let target = root.create_dir_all(destination)?;
    let data = tmpfs.mount_data();
    mount(
        Some("tmpfs"),
        &fd_path(target.as_fd()),
        Some("tmpfs"),
        tmpfs.flags(),
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(|errno| ContainerError::setup(format!("mount tmpfs on {destination}"), errno))
}

/// Deepest directory nesting copied up; deeper trees fail rather than exhaust fds or stack.
const MAX_COPY_DEPTH: usize = 128;

/// Docker's `copyExistingContents`: when the volume directory `source` is empty and the
/// image has a directory at `destination`, copies that directory's content, then its owner
/// and mode onto `source`. Reads the image only through fds resolved inside the root and
/// never follows a symlink of the image (symlinks are copied as symlinks). Regular files,
/// directories, symlinks and FIFOs are copied with mode, owner and times; device nodes and
/// sockets are skipped; hard links become separate files; extended attributes are not copied.
fn copy_up(root: &Root, source: &Path, destination: &str) -> Result<(), ContainerError> {
    let shown = source.display().to_string();
    let volume = nix::fcntl::open(
        source,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| ContainerError::setup(format!("open {shown}"), errno))?;
    let mut entries = nix::dir::Dir::from_fd(
        nix::unistd::dup(&volume)
            .map_err(|errno| ContainerError::setup(format!("dup {shown}"), errno))?,
    )
    .map_err(|errno| ContainerError::setup(format!("read {shown}"), errno))?;
    let empty = entries
        .iter()
        .filter_map(Result::ok)
        .all(|entry| matches!(entry.file_name().to_bytes(), b"." | b".."));
    if !empty {
        return Ok(());
    }
    let image_dir = match root.open(
        destination,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOCTTY,
    ) {
        Ok(fd) => fd,
        // Nothing (or no directory) in the image there: nothing to copy.
        Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(()),
        Err(errno) => {
            return Err(ContainerError::setup(format!("open {destination}"), errno));
        }
    };
    copy_directory(image_dir.as_fd(), volume.as_fd(), destination, 0)?;
    copy_attributes(image_dir.as_fd(), volume.as_fd(), destination)
}

/// Owner, mode and times of `from` onto `to` (both open fds of the same file type).
fn copy_attributes(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    shown: &str,
) -> Result<(), ContainerError> {
    let stat =
        fstat(from).map_err(|errno| ContainerError::setup(format!("stat {shown}"), errno))?;
    fchown(
        to,
        Some(Uid::from_raw(stat.st_uid)),
        Some(Gid::from_raw(stat.st_gid)),
    )
    .map_err(|errno| ContainerError::setup(format!("chown {shown}"), errno))?;
    fchmod(to, Mode::from_bits_truncate(stat.st_mode & 0o7777))
        .map_err(|errno| ContainerError::setup(format!("chmod {shown}"), errno))?;
    futimens(
        to,
        &TimeSpec::new(stat.st_atime, stat.st_atime_nsec),
        &TimeSpec::new(stat.st_mtime, stat.st_mtime_nsec),
    )
    .map_err(|errno| ContainerError::setup(format!("set times of {shown}"), errno))
}

fn open_in(
    dir: BorrowedFd<'_>,
    name: &Path,
    flags: OFlag,
    shown: &str,
) -> Result<OwnedFd, ContainerError> {
    openat(
        dir,
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|errno| ContainerError::setup(format!("open {shown}"), errno))
}

/// Copies the entries of directory `from` into the empty directory `to`.
fn copy_directory(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    shown: &str,
    depth: usize,
) -> Result<(), ContainerError> {
    if depth > MAX_COPY_DEPTH {
        return Err(ContainerError::BadPath {
            path: shown.to_string(),
            reason: format!(
                "nested more than {MAX_COPY_DEPTH} directories deep to copy into a volume"
            ),
        });
    }
    let listing = nix::unistd::dup(from)
        .and_then(nix::dir::Dir::from_fd)
        .map_err(|errno| ContainerError::setup(format!("read {shown}"), errno))?;
    let names: Vec<std::ffi::OsString> = listing
        .into_iter()
        .filter_map(Result::ok)
        .map(|entry| std::ffi::OsStr::from_bytes(entry.file_name().to_bytes()).to_os_string())
        .filter(|name| name != "." && name != "..")
        .collect();
    for name in names {
        let name = Path::new(&name);
        let path = format!("{}/{}", shown.trim_end_matches('/'), name.display());
        let stat = fstatat(from, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|errno| ContainerError::setup(format!("stat {path}"), errno))?;
        let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        let mode = Mode::from_bits_truncate(stat.st_mode & 0o7777);
        if kind == SFlag::S_IFDIR {
            mkdirat(to, name, Mode::from_bits_truncate(0o700))
                .map_err(|errno| ContainerError::setup(format!("mkdir {path}"), errno))?;
            let source = open_in(from, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, &path)?;
            let target = open_in(to, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, &path)?;
            copy_directory(source.as_fd(), target.as_fd(), &path, depth + 1)?;
            copy_attributes(source.as_fd(), target.as_fd(), &path)?;
        } else if kind == SFlag::S_IFREG {
            let source = open_in(from, name, OFlag::O_RDONLY, &path)?;
            let target = open_in(
                to,
                name,
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
                &path,
            )?;
            let mut reader = std::fs::File::from(source);
            let mut writer = std::fs::File::from(target);
            std::io::copy(&mut reader, &mut writer)
                .map_err(|error| ContainerError::setup(format!("copy {path}"), &error))?;
            copy_attributes(reader.as_fd(), writer.as_fd(), &path)?;
        } else if kind == SFlag::S_IFLNK || kind == SFlag::S_IFIFO {
            if kind == SFlag::S_IFLNK {
                let link = readlinkat(from, name)
                    .map_err(|errno| ContainerError::setup(format!("readlink {path}"), errno))?;
                symlinkat(link.as_os_str(), to, name)
                    .map_err(|errno| ContainerError::setup(format!("symlink {path}"), errno))?;
            } else {
                mknodat(to, name, SFlag::S_IFIFO, mode, 0)
                    .map_err(|errno| ContainerError::setup(format!("mkfifo {path}"), errno))?;
                fchmodat(to, name, mode, FchmodatFlags::FollowSymlink)
                    .map_err(|errno| ContainerError::setup(format!("chmod {path}"), errno))?;
            }
            fchownat(
                to,
                name,
                Some(Uid::from_raw(stat.st_uid)),
                Some(Gid::from_raw(stat.st_gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|errno| ContainerError::setup(format!("chown {path}"), errno))?;
            utimensat(
                to,
                name,
                &TimeSpec::new(stat.st_atime, stat.st_atime_nsec),
                &TimeSpec::new(stat.st_mtime, stat.st_mtime_nsec),
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|errno| ContainerError::setup(format!("set times of {path}"), errno))?;
        }
        // Device nodes and sockets are not copied into a volume on the host.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpfs_options_parse_as_docker_accepts_them() {
        let tmpfs = TmpfsMount::parse("/run", "rw,exec,size=64m,mode=1770,uid=1000").unwrap();
        assert_eq!(tmpfs.size, Some(64 << 20));
        assert_eq!(tmpfs.mode, Some(0o1770));
        assert!(tmpfs.exec && !tmpfs.suid && !tmpfs.dev && !tmpfs.read_only);
        assert_eq!(tmpfs.data, ["uid=1000"]);
        assert_eq!(tmpfs.mount_data(), "size=67108864,mode=1770,uid=1000");
        assert_eq!(tmpfs.flags(), MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
        let defaults = TmpfsMount::parse("/tmp", "").unwrap();
        assert_eq!(
            defaults.flags(),
            MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
        );
        assert_eq!(defaults.mount_data(), "");
        for bad in [
            "size=10%", "size=big", "mode=999", "bogus", "foo=1", "uid=1,2",
        ] {
            assert!(TmpfsMount::parse("/x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shallower_destinations_mount_first() {
        assert_eq!(depth("/"), 0);
        assert_eq!(depth("/data"), 1);
        assert_eq!(depth("/data/./cache/"), 2);
    }
}
