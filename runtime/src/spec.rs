//! What a container is asked to be ([`Spec`]) and how it ended ([`Exit`]).
//!
//! Plain data: no I/O here except [`Spec::validate`], which only looks at the host paths the
//! spec names. The spec crosses a process boundary (it is sent as JSON to the re-executed
//! init), so every field is serialisable.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::RuntimeError;

/// Everything needed to start one container process.
///
/// Serialisable: `run` sends it to the re-executed init over a pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// Per-container directory owned by the caller. The runtime keeps here: `rootfs/` (the
    /// overlay mountpoint, mounted only inside the container's mount namespace, so it is an
    /// empty directory on the host), `hostname`, `hosts`, `resolv.conf` (bind-mounted into the
    /// container) and `empty-lower/` (the lower dir of an image with no layers). The caller
    /// removes the directory; `run` leaves nothing mounted in it.
    pub container_dir: PathBuf,
    /// Image layer snapshot directories, lowest (base) layer first. May be empty.
    pub lower_dirs: Vec<PathBuf>,
    /// Overlay upper directory: receives every write the container makes.
    pub upper_dir: PathBuf,
    /// Overlay work directory: empty, on the same filesystem as `upper_dir`.
    pub work_dir: PathBuf,
    /// The command: `args[0]` is looked up through the container env's `PATH` inside the
    /// container root when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=value` entries. `PATH`, `HOSTNAME` and `HOME` are added when missing, as Docker does.
    pub env: Vec<String>,
    /// Absolute working directory inside the container; created (owned by root) when missing.
    pub cwd: String,
    /// `name`, `uid`, `name:group`, `uid:gid` (Docker's `-u`), resolved through the
    /// container's own `/etc/passwd` and `/etc/group`. `None` is root.
    pub user: Option<String>,
    /// The container's host name (UTS namespace), also written to `/etc/hostname` and `/etc/hosts`.
    pub hostname: String,
    /// Network namespace choice.
    pub network: Network,
    /// Mount the root filesystem read-only (`--read-only`).
    pub read_only: bool,
    /// Host paths bind-mounted into the container (`-v HOST:CTR[:ro]`), in order.
    pub mounts: Vec<BindMount>,
}

/// Which network namespace the container gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// A new network namespace with only the loopback interface, brought up (`--network none`).
    None,
    /// The host's network namespace (`--network host`).
    Host,
}

/// A host path bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// Host path (file or directory). Must exist.
    pub source: PathBuf,
    /// Absolute path inside the container, resolved inside the container root; created
    /// (as a directory or an empty file, like the source) when missing.
    pub destination: String,
    /// Mount read-only.
    pub read_only: bool,
}

/// How the container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal number.
    Signal(i32),
}

impl Exit {
    /// The shell convention Docker uses: the exit code, or 128 + the signal number.
    pub fn code(&self) -> i32 {
        match *self {
            Exit::Code(code) => code,
            Exit::Signal(signal) => 128 + signal,
        }
    }
}

impl Spec {
    /// Checks what can be checked on the host before any process starts: the command is not
    /// empty, paths are absolute, directories exist, and no overlay directory contains a
    /// character that the overlay option string cannot carry.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        if self.args.is_empty() {
            return Err(RuntimeError::NoCommand);
        }
        if !self.cwd.starts_with('/') {
            return Err(RuntimeError::RelativePath {
                what: "working directory",
                path: PathBuf::from(&self.cwd),
            });
        }
        let overlay_dirs = self
            .lower_dirs
            .iter()
            .map(|dir| ("lower", dir))
            .chain([("upper", &self.upper_dir), ("work", &self.work_dir)]);
        for (role, dir) in overlay_dirs {
            if !dir.is_absolute() {
                return Err(RuntimeError::RelativePath {
                    what: role,
                    path: dir.clone(),
                });
            }
            if !dir.is_dir() {
                return Err(RuntimeError::MissingDirectory {
                    role,
                    path: dir.clone(),
                });
            }
            let text = dir.to_string_lossy();
            if text.contains([',', ':', '\\']) || text.contains('\n') {
                return Err(RuntimeError::UnsupportedOverlayPath { path: dir.clone() });
            }
        }
        if !self.container_dir.is_absolute() {
            return Err(RuntimeError::RelativePath {
                what: "container",
                path: self.container_dir.clone(),
            });
        }
        for mount in &self.mounts {
            if !mount.destination.starts_with('/') {
                return Err(RuntimeError::RelativePath {
                    what: "mount destination",
                    path: PathBuf::from(&mount.destination),
                });
            }
            if !mount.source.exists() {
                return Err(RuntimeError::MissingMountSource {
                    path: mount.source.clone(),
                });
            }
        }
        if self.hostname.is_empty() || self.hostname.len() > 64 || self.hostname.contains('\n') {
            return Err(RuntimeError::InvalidHostname {
                hostname: self.hostname.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_is_code_or_128_plus_signal() {
        assert_eq!(Exit::Code(3).code(), 3);
        assert_eq!(Exit::Signal(15).code(), 143);
        assert_eq!(Exit::Signal(9).code(), 137);
    }
}
