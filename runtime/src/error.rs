//! Errors of the runtime: [`RuntimeError`] for the caller of `run`, [`ContainerError`] for
//! failures inside the re-executed init and the container setup.
//!
//! A [`ContainerError`] happens in another process and is sent back as JSON, so it carries an
//! errno number instead of an `io::Error`.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Exit code Docker uses when the engine itself fails (bad input, setup error).
pub const EXIT_ENGINE_ERROR: i32 = 125;
/// Exit code Docker uses when the command exists but cannot be executed.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// Exit code Docker uses when the command is not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Why `run` could not run the container's command to completion.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The spec has no command.
    #[error("no command specified")]
    NoCommand,
    /// A path that must be absolute is not.
    #[error("{what} path {path} is not absolute")]
    RelativePath {
        /// Which path.
        what: &'static str,
        /// The path as given.
        path: PathBuf,
    },
    /// An overlay directory does not exist.
    #[error("{role} directory {path} does not exist")]
    MissingDirectory {
        /// `lower`, `upper` or `work`.
        role: &'static str,
        /// The missing path.
        path: PathBuf,
    },
    /// A bind mount source does not exist.
    #[error("bind source path does not exist: {path}")]
    MissingMountSource {
        /// The missing host path.
        path: PathBuf,
    },
    /// An overlay directory path contains `,`, `:` or `\`, which the overlay mount options
    /// cannot carry unescaped.
    #[error("overlay directory {path} contains ',', ':' or '\\', which overlayfs cannot take")]
    UnsupportedOverlayPath {
        /// The offending path.
        path: PathBuf,
    },
    /// The host name is empty, too long or has a newline.
    #[error("invalid hostname {hostname:?}")]
    InvalidHostname {
        /// The host name as given.
        hostname: String,
    },
    /// Preparing the container directory on the host failed.
    #[error("preparing {path}")]
    ContainerDir {
        /// The file or directory being written.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Starting the init program, talking to it or waiting for it failed.
    #[error("{step} (container init {program})")]
    Init {
        /// What was being done, e.g. `starting`.
        step: &'static str,
        /// The init program.
        program: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The init program ended without reporting how the container ended.
    #[error("container init {program} ended without a report ({status})")]
    InitDied {
        /// The init program.
        program: PathBuf,
        /// Its wait status, rendered.
        status: String,
    },
    /// The container id cannot name a cgroup directory.
    #[error("invalid container id {id:?}: use letters, digits, '_', '.' and '-' (at most 128)")]
    InvalidId {
        /// The id as given.
        id: String,
    },
    /// A `--ulimit` value is malformed or inconsistent.
    #[error("invalid ulimit {value:?}: {reason}")]
    InvalidUlimit {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A resource limit is out of range.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// A `--cap-add`/`--cap-drop` name is not a capability (Docker's wording).
    #[error("unknown capability: {name:?}")]
    UnknownCapability {
        /// The name, normalised (`CAP_` prefix, upper case).
        name: String,
    },
    /// `--cap-add` names a capability that kiln itself does not hold, so it cannot be given.
    #[error("cannot add capability {name}: kiln itself does not hold it")]
    CapabilityNotHeld {
        /// The capability.
        name: String,
    },
    /// The seccomp profile cannot be used.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// A limit needs a cgroup controller that this host does not provide.
    #[error("cannot apply {limit}: the cgroup {controller} controller is not available")]
    CgroupControllerMissing {
        /// The controller, e.g. `pids`.
        controller: &'static str,
        /// The limit, e.g. `pids limit`.
        limit: &'static str,
    },
    /// Creating, configuring or removing the container's cgroup failed.
    #[error("cgroup: {step} {path}")]
    Cgroup {
        /// What was being done, e.g. `writing`.
        step: &'static str,
        /// The cgroup file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The container's cgroup exists and still has processes: another container with this
    /// id is running.
    #[error("cgroup {path} is in use by running processes")]
    CgroupInUse {
        /// The cgroup directory.
        path: PathBuf,
    },
    /// Setting up or starting the container failed inside the init.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// An `--add-host` value is not `HOST:IP` (Docker's wording).
    #[error("bad format for add-host: {0:?}")]
    AddHostFormat(String),
    /// An `--add-host` address is not an IP address (Docker's wording).
    #[error("invalid IP address in add-host: {0:?}")]
    AddHostAddress(String),
    /// `--add-host HOST:host-gateway`: there is no bridge network, so no gateway to name.
    #[error(
        "invalid add-host {0:?}: host-gateway needs bridge networking, which kiln does not have; give an IP address"
    )]
    HostGateway(String),
    /// A `--dns` value is not an IP address (Docker's wording).
    #[error("IP address is not correctly formatted: {0}")]
    DnsAddress(String),
    /// A `--dns-search` or `--dns-option` value is empty or has white space.
    #[error("invalid DNS search domain or option {0:?}")]
    DnsWord(String),
    /// A tmpfs option kiln does not know, or a malformed one (Docker's wording).
    #[error("invalid tmpfs option {0:?}")]
    TmpfsOption(String),
}

/// A resource limit Docker would refuse (messages as Docker's daemon words them).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LimitError {
    /// `-m` below 6 MiB.
    #[error("minimum memory limit allowed is 6MB")]
    MemoryTooLow,
    /// `--memory-swap` without `-m`.
    #[error("you should always set the memory limit when using the memoryswap limit")]
    SwapWithoutMemory,
    /// `--memory-swap` below `-m`.
    #[error("minimum memoryswap limit should be larger than memory limit")]
    SwapBelowMemory,
    /// `--cpus` not a positive number of at least 0.01.
    #[error("range of CPUs is from 0.01 upwards")]
    Cpus,
    /// `--cpuset-cpus` not a list like `0-2,4`.
    #[error("invalid value {cpus:?} for cpuset cpus")]
    Cpuset {
        /// The value as given.
        cpus: String,
    },
    /// `--cpu-shares 1` (the kernel's minimum is 2).
    #[error("cpu shares must be at least 2")]
    CpuShares,
}

/// A seccomp profile kiln cannot turn into a filter.
#[derive(Debug, Error)]
pub enum SeccompError {
    /// The text is not a Docker seccomp profile.
    #[error("decoding seccomp profile: {detail}")]
    Json {
        /// The decoder's message (line and column included).
        detail: String,
    },
    /// An action kiln does not know.
    #[error("seccomp profile: unknown action {action:?}")]
    UnknownAction {
        /// The action as written.
        action: String,
    },
    /// `SCMP_ACT_NOTIFY` needs a listener, which kiln does not provide.
    #[error("seccomp profile: action {action} is not supported")]
    UnsupportedAction {
        /// The action as written.
        action: String,
    },
    /// An argument comparison kiln does not know.
    #[error("seccomp profile: unknown comparison {op:?}")]
    UnknownOperator {
        /// The operator as written.
        op: String,
    },
    /// A flag kiln does not know.
    #[error("seccomp profile: unknown flag {flag:?}")]
    UnknownFlag {
        /// The flag as written.
        flag: String,
    },
    /// Filters are only built for x86_64 so far.
    #[error("seccomp filters are not supported on {arch} yet (use seccomp=unconfined)")]
    UnsupportedArchitecture {
        /// The host architecture.
        arch: &'static str,
    },
    /// The BPF compiler refused the rules (too large, bad argument index).
    #[error("compiling the seccomp filter")]
    Compile {
        /// The compiler's error.
        #[source]
        source: seccompiler::BackendError,
    },
}

impl RuntimeError {
    /// The exit code Docker's CLI gives this failure: 127 when the command is not found, 126
    /// when it cannot be executed, 125 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            RuntimeError::Container(error) => error.exit_code(),
            RuntimeError::NoCommand
            | RuntimeError::RelativePath { .. }
            | RuntimeError::MissingDirectory { .. }
            | RuntimeError::MissingMountSource { .. }
            | RuntimeError::UnsupportedOverlayPath { .. }
            | RuntimeError::InvalidHostname { .. }
            | RuntimeError::ContainerDir { .. }
            | RuntimeError::Init { .. }
            | RuntimeError::InitDied { .. }
            | RuntimeError::InvalidId { .. }
            | RuntimeError::InvalidUlimit { .. }
            | RuntimeError::Limit(_)
            | RuntimeError::UnknownCapability { .. }
            | RuntimeError::CapabilityNotHeld { .. }
            | RuntimeError::Seccomp(_)
            | RuntimeError::CgroupControllerMissing { .. }
            | RuntimeError::Cgroup { .. }
            | RuntimeError::CgroupInUse { .. }
            | RuntimeError::AddHostFormat(_)
            | RuntimeError::AddHostAddress(_)
            | RuntimeError::HostGateway(_)
            | RuntimeError::DnsAddress(_)
            | RuntimeError::DnsWord(_)
            | RuntimeError::TmpfsOption(_) => EXIT_ENGINE_ERROR,
        }
    }
}

/// An errno value that survives serialisation; displays as the system's description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errno(pub i32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(nix::errno::Errno::from_raw(self.0).desc())
    }
}

impl std::error::Error for Errno {}

impl From<nix::errno::Errno> for Errno {
    fn from(errno: nix::errno::Errno) -> Self {
        Errno(errno as i32)
    }
}

impl From<&std::io::Error> for Errno {
    fn from(error: &std::io::Error) -> Self {
        Errno(error.raw_os_error().unwrap_or(libc::EIO))
    }
}

/// A failure inside the container init: while creating namespaces, assembling the root
/// filesystem, switching user, or executing the command. Messages follow runc's/Docker's
/// wording where one exists.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum ContainerError {
    /// `args[0]` has no `/` and no executable of that name is in the container's `PATH`.
    #[error("exec: {command:?}: executable file not found in $PATH")]
    CommandNotFound {
        /// The command as given.
        command: String,
    },
    /// `args[0]` names a path that does not exist (or whose interpreter does not exist).
    #[error("exec: {command:?}: stat {path}: {errno}")]
    CommandMissing {
        /// The command as given.
        command: String,
        /// The path that was tried.
        path: String,
        /// Why it failed.
        errno: Errno,
    },
    /// The command exists but cannot be executed (no execute permission, not a valid binary).
    #[error("exec: {command:?}: {errno}")]
    CommandNotExecutable {
        /// The command as given.
        command: String,
        /// Why `execve` refused it.
        errno: Errno,
    },
    /// A user name given to `-u` is not in the container's `/etc/passwd`.
    #[error("unable to find user {user}: no matching entries in passwd file")]
    UnknownUser {
        /// The user name.
        user: String,
    },
    /// A group name given to `-u` is not in the container's `/etc/group`.
    #[error("unable to find group {group}: no matching entries in group file")]
    UnknownGroup {
        /// The group name.
        group: String,
    },
    /// A uid or gid is outside the range Linux accepts.
    #[error("invalid user {user:?}: ids must be between 0 and 2147483647")]
    InvalidUser {
        /// The user spec as given.
        user: String,
    },
    /// A mount target or the working directory exists but has the wrong type.
    #[error("{path}: {reason}")]
    BadPath {
        /// The path inside the container.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Safety stop: after `unshare(CLONE_NEWNS)` the process was still in the host's mount
    /// namespace, so no mount was attempted.
    #[error("refusing to mount: still in the host's mount namespace after unshare")]
    SameMountNamespace,
    /// Safety stop: the directory opened as the container root is not the overlay mount.
    #[error("refusing to populate {path}: it is not the freshly mounted {expected}")]
    NotMounted {
        /// The directory.
        path: String,
        /// The filesystem expected there.
        expected: String,
    },
    /// The spec sent to the init could not be read.
    #[error("reading the container spec: {detail}")]
    BadSpec {
        /// The decoder's message.
        detail: String,
    },
    /// A system call failed during setup.
    #[error("{step}: {errno}")]
    Setup {
        /// What was being done, naming the paths involved.
        step: String,
        /// The error.
        errno: Errno,
    },
    /// The setup code panicked (a bug); the message is the panic payload.
    #[error("container setup panicked: {message}")]
    Panic {
        /// The panic message.
        message: String,
    },
}

impl ContainerError {
    /// Builds a [`ContainerError::Setup`] from a step description and an error.
    pub(crate) fn setup(step: impl Into<String>, errno: impl Into<Errno>) -> Self {
        ContainerError::Setup {
            step: step.into(),
            errno: errno.into(),
        }
    }

    /// 127 for a missing command, 126 for one that cannot be executed, 125 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ContainerError::CommandNotFound { .. } | ContainerError::CommandMissing { .. } => {
                EXIT_NOT_FOUND
            }
            ContainerError::CommandNotExecutable { .. } => EXIT_NOT_EXECUTABLE,
            ContainerError::UnknownUser { .. }
            | ContainerError::UnknownGroup { .. }
            | ContainerError::InvalidUser { .. }
            | ContainerError::BadPath { .. }
            | ContainerError::SameMountNamespace
            | ContainerError::NotMounted { .. }
            | ContainerError::BadSpec { .. }
            | ContainerError::Setup { .. }
            | ContainerError::Panic { .. } => EXIT_ENGINE_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_failures_map_to_docker_exit_codes() {
        let not_found = ContainerError::CommandNotFound {
            command: "nope".into(),
        };
        assert_eq!(not_found.exit_code(), 127);
        assert_eq!(
            not_found.to_string(),
            "exec: \"nope\": executable file not found in $PATH"
        );
        let denied = ContainerError::CommandNotExecutable {
            command: "/etc/passwd".into(),
            errno: Errno(libc::EACCES),
        };
        assert_eq!(denied.exit_code(), 126);
        assert_eq!(
            denied.to_string(),
            "exec: \"/etc/passwd\": Permission denied"
        );
        assert_eq!(RuntimeError::NoCommand.exit_code(), 125);
    }
}
