//! What a container is asked to be ([`Spec`]) and how it ended ([`Outcome`], [`Exit`]).
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// The container's id: names its cgroup `kiln/<id>` in every hierarchy, so it must be
    /// unique among running containers. ASCII letters, digits, `_`, `.` and `-`, starting
    /// with a letter or digit, at most 128 characters.
    pub id: String,
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
    /// Host paths bind-mounted into the container (`-v HOST:CTR[:ro]`, and volumes, which are
    /// bind mounts of their data directory). Mounted together with [`Spec::tmpfs`], parents
    /// before children (sorted by the depth of the destination, as Docker sorts them).
    pub mounts: Vec<BindMount>,
    /// tmpfs file systems mounted into the container (`--tmpfs`, `--mount type=tmpfs`).
    #[serde(default)]
    pub tmpfs: Vec<TmpfsMount>,
    /// Extra `/etc/hosts` entries (`--add-host`), written after the localhost block.
    #[serde(default)]
    pub extra_hosts: Vec<HostEntry>,
    /// `--dns`, `--dns-search`, `--dns-option`: when any is set, `/etc/resolv.conf` is
    /// rebuilt as Docker builds it.
    #[serde(default)]
    pub dns: Dns,
    /// cgroup limits (`-m`, `--memory-swap`, `--cpus`, `--cpu-shares`, `--cpuset-cpus`,
    /// `--pids-limit`). All `None`: the container still gets its own cgroup, unlimited.
    pub resources: Resources,
    /// Resource limits set with `setrlimit` before the command runs (`--ulimit`). Others are
    /// inherited from the process that called `run`.
    pub ulimits: Vec<Ulimit>,
    /// Capabilities added to Docker's default set (`--cap-add`): `NET_ADMIN`,
    /// `CAP_NET_ADMIN` (any case) or `ALL`.
    pub cap_add: Vec<String>,
    /// Capabilities removed from Docker's default set (`--cap-drop`), same names. When a
    /// capability is both added and dropped, the add wins (Docker's order: drop, then add).
    pub cap_drop: Vec<String>,
    /// `--privileged`: every capability kiln itself holds, no masked or read-only paths under
    /// `/proc` and `/sys` (and `/sys` read-write), no seccomp filter unless
    /// [`Seccomp::Profile`] is given, no device cgroup rules, and the host's device nodes
    /// copied into the container's `/dev`. Not user-namespace aware.
    pub privileged: bool,
    /// The system call filter (`--security-opt seccomp=...`).
    pub seccomp: Seccomp,
    /// `--security-opt no-new-privileges`: set `PR_SET_NO_NEW_PRIVS`, so setuid binaries and
    /// file capabilities grant nothing. Off by default, as in Docker.
    pub no_new_privileges: bool,
    /// `-t`: the container's PID 1 gets a new pseudo-terminal (created inside the container's
    /// own devpts, so `tty` shows `/dev/pts/0`) as its controlling terminal and stdin, stdout
    /// and stderr; the caller gets the master side ([`crate::Started::terminal`]) and the
    /// streams of [`crate::Io`] are not given to the container.
    #[serde(default)]
    pub tty: bool,
    /// The terminal's size when the container starts (with [`Spec::tty`]), so the command
    /// never sees 0x0; `None` leaves the kernel's 0x0.
    #[serde(default)]
    pub console_size: Option<crate::pty::WindowSize>,
    /// `--init`: the container's PID 1 is a minimal init forked by the runtime (not a
    /// program from the host) that starts the command as PID 2, forwards signals to it,
    /// reaps every orphan and exits with the command's status.
    #[serde(default)]
    pub init: bool,
}

/// cgroup limits of a container. Applied to `kiln/<id>` in each cgroup v1 hierarchy, or in
/// the unified hierarchy when cgroup v2 has controllers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Memory limit in bytes (`-m`). At least 6 MiB, as Docker requires.
    pub memory: Option<u64>,
    /// Memory plus swap in bytes (`--memory-swap`); -1 is unlimited swap. Needs `memory`.
    /// `None` with `memory` set gives Docker's default of twice `memory` (where the kernel
    /// accounts swap; otherwise no swap limit is written).
    pub memory_swap: Option<i64>,
    /// CPU quota in CPUs (`--cpus 1.5`): CFS quota of `cpus * 100000` µs per 100000 µs period.
    pub cpus: Option<f64>,
    /// Relative CPU weight (`--cpu-shares`), v1 `cpu.shares`; converted to `cpu.weight` on v2.
    pub cpu_shares: Option<u64>,
    /// CPUs the container may run on (`--cpuset-cpus 0-1,3`), written as given.
    pub cpuset_cpus: Option<String>,
    /// Maximum number of processes and threads (`--pids-limit`); 0 or negative is unlimited.
    pub pids_limit: Option<i64>,
}

/// One `--ulimit NAME=SOFT[:HARD]` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// Which resource.
    pub name: UlimitName,
    /// Soft limit; `u64::MAX` is unlimited.
    pub soft: u64,
    /// Hard limit, at least `soft`; `u64::MAX` is unlimited. Raising it above the current
    /// hard limit needs `CAP_SYS_RESOURCE` in the process that called `run`.
    pub hard: u64,
}

/// The resources Docker's `--ulimit` accepts, named as Docker names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(
    missing_docs,
    reason = "the names are setrlimit(2)'s RLIMIT_* resources"
)]
pub enum UlimitName {
    As,
    Core,
    Cpu,
    Data,
    Fsize,
    Locks,
    Memlock,
    Msgqueue,
    Nice,
    Nofile,
    Nproc,
    Rss,
    Rtprio,
    Rttime,
    Sigpending,
    Stack,
}

impl UlimitName {
    /// Every name, in Docker's spelling.
    pub const ALL: [(&'static str, UlimitName); 16] = [
        ("as", UlimitName::As),
        ("core", UlimitName::Core),
        ("cpu", UlimitName::Cpu),
        ("data", UlimitName::Data),
        ("fsize", UlimitName::Fsize),
        ("locks", UlimitName::Locks),
        ("memlock", UlimitName::Memlock),
        ("msgqueue", UlimitName::Msgqueue),
        ("nice", UlimitName::Nice),
        ("nofile", UlimitName::Nofile),
        ("nproc", UlimitName::Nproc),
        ("rss", UlimitName::Rss),
        ("rtprio", UlimitName::Rtprio),
        ("rttime", UlimitName::Rttime),
        ("sigpending", UlimitName::Sigpending),
        ("stack", UlimitName::Stack),
    ];

    /// Docker's name for it.
    pub fn as_str(self) -> &'static str {
        UlimitName::ALL
            .iter()
            .find(|(_, name)| *name == self)
            .map_or("", |(text, _)| text)
    }
}

impl std::str::FromStr for Ulimit {
    type Err = RuntimeError;

    /// Docker's `--ulimit` syntax: `nofile=1024:2048`, `nofile=1024` (soft = hard),
    /// `-1` for unlimited.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &'static str| RuntimeError::InvalidUlimit {
            value: text.to_string(),
            reason,
        };
        let (name, values) = text
            .split_once('=')
            .ok_or_else(|| invalid("expected NAME=SOFT[:HARD]"))?;
        let name = UlimitName::ALL
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, name)| *name)
            .ok_or_else(|| invalid("unknown resource name"))?;
        let value = |number: &str| -> Result<u64, RuntimeError> {
            if number == "-1" {
                return Ok(u64::MAX);
            }
            number
                .parse()
                .map_err(|_| invalid("limits must be numbers or -1"))
        };
        let (soft, hard) = match values.split_once(':') {
            Some((soft, hard)) => (value(soft)?, value(hard)?),
            None => (value(values)?, value(values)?),
        };
        let ulimit = Ulimit { name, soft, hard };
        ulimit.validate()?;
        Ok(ulimit)
    }
}

impl Ulimit {
    fn validate(&self) -> Result<(), RuntimeError> {
        if self.soft > self.hard {
            return Err(RuntimeError::InvalidUlimit {
                value: format!("{}={}:{}", self.name.as_str(), self.soft, self.hard),
                reason: "the soft limit is above the hard limit",
            });
        }
        Ok(())
    }
}

/// The container's seccomp filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Seccomp {
    /// Docker's default profile: an allow-list, `EPERM` for everything else, with the
    /// capability-dependent entries resolved against the container's capabilities (so
    /// `--cap-add SYS_ADMIN` also allows `mount`, `unshare`, `setns`...). Skipped when
    /// [`Spec::privileged`].
    #[default]
    Default,
    /// No filter (`seccomp=unconfined`).
    Unconfined,
    /// A profile in Docker's JSON format (the text of the file given to
    /// `--security-opt seccomp=FILE`), applied even when privileged.
    Profile(String),
}

/// Which network namespace the container gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// A new network namespace with only the loopback interface, brought up (`--network none`).
    #[default]
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
    /// Docker's volume copy-up: when `source` is an empty directory and `destination` is a
    /// directory in the image, the image's content there (files, modes, ownership) is copied
    /// into `source` before it is mounted. Never copies into a non-empty source.
    #[serde(default)]
    pub copy_up: bool,
}

pub use crate::mounts::TmpfsMount;

/// One `--add-host HOST:IP` line of `/etc/hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    /// The host name: no white space, not empty.
    pub name: String,
    /// Its address.
    pub address: std::net::IpAddr,
}

impl std::str::FromStr for HostEntry {
    type Err = RuntimeError;

    /// Docker's `--add-host` syntax: `HOST:IP` (split at the first `:`, so IPv6 addresses
    /// work) or `HOST=IP`; an IPv6 address may be in brackets. `host-gateway` is refused:
    /// kiln has no bridge network whose gateway it could name.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, address) = text
            .split_once(['=', ':'])
            .filter(|(name, _)| !name.is_empty() && !name.contains(char::is_whitespace))
            .ok_or_else(|| RuntimeError::AddHostFormat(text.to_string()))?;
        if address == "host-gateway" {
            return Err(RuntimeError::HostGateway(text.to_string()));
        }
        let bare = address
            .trim()
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(address.trim());
        let address = bare
            .parse()
            .map_err(|_| RuntimeError::AddHostAddress(address.to_string()))?;
        Ok(HostEntry {
            name: name.to_string(),
            address,
        })
    }
}

/// The container's resolver settings (`--dns`, `--dns-search`, `--dns-option`). Empty lists
/// take the host's values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// `nameserver` lines.
    pub servers: Vec<std::net::IpAddr>,
    /// The `search` domains; `["."]` means none.
    pub search: Vec<String>,
    /// The `options` words (`ndots:2`, `edns0`).
    pub options: Vec<String>,
}

impl Dns {
    /// Parses the three flags as Docker validates them: servers must be IP addresses, search
    /// domains and options single words.
    pub fn parse(
        servers: &[String],
        search: &[String],
        options: &[String],
    ) -> Result<Dns, RuntimeError> {
        let servers = servers
            .iter()
            .map(|server| {
                server
                    .trim()
                    .parse()
                    .map_err(|_| RuntimeError::DnsAddress(server.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for word in search.iter().chain(options) {
            if word.is_empty() || word.contains(char::is_whitespace) {
                return Err(RuntimeError::DnsWord(word.clone()));
            }
        }
        Ok(Dns {
            servers,
            search: search.to_vec(),
            options: options.to_vec(),
        })
    }

    /// No flag was given: the host's resolv.conf is used as is.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.search.is_empty() && self.options.is_empty()
    }
}

/// How the container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal number.
    Signal(i32),
}

/// How a container ended: its exit status, and whether the kernel's OOM killer killed a
/// process in its cgroup (Docker's `State.OOMKilled`; true for any OOM kill in the container,
/// not only of its first process, as in Docker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The command's exit status.
    pub exit: Exit,
    /// The OOM killer killed a process of the container.
    pub oom_killed: bool,
}

impl Outcome {
    /// The exit code Docker reports: see [`Exit::code`] (an OOM-killed PID 1 is 137).
    pub fn code(&self) -> i32 {
        self.exit.code()
    }
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
        for tmpfs in &self.tmpfs {
            if !tmpfs.destination.starts_with('/') {
                return Err(RuntimeError::RelativePath {
                    what: "mount destination",
                    path: PathBuf::from(&tmpfs.destination),
                });
            }
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
        if !valid_id(&self.id) {
            return Err(RuntimeError::InvalidId {
                id: self.id.clone(),
            });
        }
        self.resources.validate()?;
        for ulimit in &self.ulimits {
            ulimit.validate()?;
        }
        Ok(())
    }
}

fn valid_id(id: &str) -> bool {
    id.len() <= 128
        && id
            .bytes()
            .next()
            .is_some_and(|first| first.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-'))
}

/// Docker's minimum for `-m`.
pub(crate) const MINIMUM_MEMORY: u64 = 6 * 1024 * 1024;

impl Resources {
    /// Docker's checks (daemon `verifyPlatformContainerResources`), before any cgroup exists.
    pub(crate) fn validate(&self) -> Result<(), RuntimeError> {
        use crate::error::LimitError;
        if let Some(memory) = self.memory
            && memory < MINIMUM_MEMORY
        {
            return Err(LimitError::MemoryTooLow.into());
        }
        match (self.memory, self.memory_swap) {
            (None, Some(swap)) if swap != -1 => return Err(LimitError::SwapWithoutMemory.into()),
            (Some(memory), Some(swap)) if swap != -1 && (swap < 0 || (swap as u64) < memory) => {
                return Err(LimitError::SwapBelowMemory.into());
            }
            _ => {}
        }
        if let Some(cpus) = self.cpus
            && !(cpus.is_finite() && cpus >= 0.01)
        {
            return Err(LimitError::Cpus.into());
        }
        if let Some(cpuset) = &self.cpuset_cpus
            && (cpuset.is_empty()
                || !cpuset
                    .bytes()
                    .all(|byte| byte.is_ascii_digit() || byte == b',' || byte == b'-'))
        {
            return Err(LimitError::Cpuset {
                cpus: cpuset.clone(),
            }
            .into());
        }
        if self.cpu_shares == Some(1) {
            // The kernel's minimum is 2 (Docker passes 0 as "default").
            return Err(LimitError::CpuShares.into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulimits_parse_dockers_syntax() {
        let parsed: Ulimit = "nofile=1024:2048".parse().unwrap();
        assert_eq!(
            parsed,
            Ulimit {
                name: UlimitName::Nofile,
                soft: 1024,
                hard: 2048
            }
        );
        let unlimited: Ulimit = "core=-1".parse().unwrap();
        assert_eq!((unlimited.soft, unlimited.hard), (u64::MAX, u64::MAX));
        assert!("nofile=10:5".parse::<Ulimit>().is_err());
        assert!("files=10".parse::<Ulimit>().is_err());
        assert!("nofile".parse::<Ulimit>().is_err());
    }

    #[test]
    fn limits_are_checked_as_docker_checks_them() {
        let ok = Resources {
            memory: Some(64 << 20),
            memory_swap: Some(-1),
            cpus: Some(0.5),
            cpuset_cpus: Some("0-1,3".into()),
            ..Resources::default()
        };
        assert!(ok.validate().is_ok());
        let too_low = Resources {
            memory: Some(1 << 20),
            ..Resources::default()
        };
        assert_eq!(
            too_low.validate().unwrap_err().to_string(),
            "minimum memory limit allowed is 6MB"
        );
        let swap_alone = Resources {
            memory_swap: Some(1 << 30),
            ..Resources::default()
        };
        assert!(swap_alone.validate().is_err());
        let swap_low = Resources {
            memory: Some(64 << 20),
            memory_swap: Some(32 << 20),
            ..Resources::default()
        };
        assert!(swap_low.validate().is_err());
    }

    #[test]
    fn ids_name_a_cgroup_directory_safely() {
        assert!(valid_id("0123abcd"));
        assert!(valid_id("kiln-test.1_a"));
        assert!(!valid_id(""));
        assert!(!valid_id("../x"));
        assert!(!valid_id(".hidden"));
        assert!(!valid_id("a/b"));
    }

    #[test]
    fn exit_code_is_code_or_128_plus_signal() {
        assert_eq!(Exit::Code(3).code(), 3);
        assert_eq!(Exit::Signal(15).code(), 143);
        assert_eq!(Exit::Signal(9).code(), 137);
    }
}
