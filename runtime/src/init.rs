//! The re-executed init: the process `run` starts, outside the container's PID namespace.
//!
//! It reads the [`InitMessage`] from an inherited pipe, starts a new session (so the
//! terminal's job-control signals reach only the caller, which forwards them, as with Docker),
//! blocks the signals it forwards, creates the PID namespace and forks the container's PID 1
//! ([`crate::container`]). Then it forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT to the container,
//! reaps it, and writes [`Report`]s to the report pipe: [`Report::Started`] once the command
//! was executed, then exactly one final report (exit status or setup error).
//!
//! It must be single-threaded (`unshare(CLONE_NEWPID)` + `fork`), which is why it is a fresh
//! process and why [`init_main`] must be the first thing `main` does.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getppid, pipe2, setsid};
use serde::{Deserialize, Serialize};

use crate::error::{ContainerError, EXIT_ENGINE_ERROR};
use crate::spec::{Exit, Spec};

/// Environment variable carrying `SPEC_FD,REPORT_FD` to the init.
pub(crate) const FDS_ENV: &str = "_KILN_INIT_FDS";
/// Environment variable carrying the pid of the process that called `run`.
pub(crate) const PARENT_ENV: &str = "_KILN_INIT_PARENT";

/// Signals the init passes on to the container.
pub(crate) const FORWARDED_SIGNALS: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Identity of a namespace: device and inode of its `/proc/self/ns/*` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NamespaceId {
    dev: u64,
    ino: u64,
}

impl NamespaceId {
    /// The mount namespace of the calling process.
    pub(crate) fn of_mount_namespace() -> std::io::Result<Self> {
        let metadata = std::fs::metadata("/proc/self/ns/mnt")?;
        Ok(NamespaceId {
            dev: metadata.dev(),
            ino: metadata.ino(),
        })
    }
}

/// What `run` sends to the init.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InitMessage {
    /// The container to run.
    pub(crate) spec: Spec,
    /// The caller's (host's) mount namespace: the container must end up in another one
    /// before it mounts anything.
    pub(crate) host_mount_ns: NamespaceId,
    /// The container's capabilities (bounding set; also effective and permitted for root),
    /// resolved from the spec by the caller.
    pub(crate) capabilities: u64,
    /// The seccomp filter to install before `execve`, compiled by the caller.
    pub(crate) seccomp: Option<crate::seccomp::Compiled>,
    /// `cgroup.procs` files of the container's cgroup, which its PID 1 joins first thing.
    pub(crate) cgroup_procs: Vec<std::path::PathBuf>,
    /// With `Spec::tty`: the inherited unix socket over which the container's PID 1 sends
    /// its terminal's master to the caller (same number in the init and the container).
    #[serde(default)]
    pub(crate) console_fd: Option<RawFd>,
}

/// What the init sends back: at most one `Started`, then exactly one `Exited` or `Failed`
/// (concatenated JSON values).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Report {
    /// The container's command was executed; its PID 1 has this pid in the init's (the
    /// host's) PID namespace.
    Started(i32),
    /// The container's command ran and ended so.
    Exited(Exit),
    /// The container could not be set up or its command could not be executed.
    Failed(ContainerError),
}

/// The entry of the re-executed init process. Call it first thing in `main` when the program
/// was started by [`crate::run`] with the init marker argument, before any thread exists.
/// Never returns: exits 0 after reporting to the caller, or 125 (with one line on stderr) when
/// it was not started by `run` or cannot report.
///
/// This and the container process it forks are the only places in the runtime that exit or
/// print: there is no caller left to return an error to.
#[allow(
    clippy::exit,
    clippy::print_stderr,
    reason = "entry point of the re-executed init process: nobody to return to"
)]
pub fn init_main() -> ! {
    let Some((spec_pipe, report_pipe)) = inherited_pipes() else {
        eprintln!("kiln init: not started by kiln_runtime::run (no {FDS_ENV})");
        std::process::exit(EXIT_ENGINE_ERROR);
    };
    let expected_parent = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|pid| pid.parse().ok());
    if expected_parent != Some(getppid().as_raw()) {
        // The caller died before the parent-death signal was armed: nobody wants this container.
        std::process::exit(EXIT_ENGINE_ERROR);
    }
    let mut pipe = std::fs::File::from(report_pipe);
    let report = supervise(spec_pipe, &mut pipe);
    let written = serde_json::to_writer(&mut pipe, &report)
        .map_err(std::io::Error::from)
        .and_then(|()| pipe.flush());
    match written {
        Ok(()) => std::process::exit(0),
        Err(error) => {
            eprintln!("kiln init: cannot report to the caller: {error}");
            std::process::exit(EXIT_ENGINE_ERROR)
        }
    }
}

pub(crate) fn inherited_pipes() -> Option<(OwnedFd, OwnedFd)> {
    let value = std::env::var(FDS_ENV).ok()?;
    let (spec, report) = value.split_once(',')?;
    let spec: RawFd = spec.parse().ok()?;
    let report: RawFd = report.parse().ok()?;
    if spec <= 2 || report <= 2 || spec == report {
        return None;
    }
    for fd in [spec, report] {
        // SAFETY: F_GETFD only checks that the fd is open; it does not take ownership.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return None;
        }
    }
    // SAFETY: `run` created these two pipe ends for this process and nothing else in it
    // refers to them; they are open (checked above) and distinct.
    let (spec, report) = unsafe { (OwnedFd::from_raw_fd(spec), OwnedFd::from_raw_fd(report)) };
    for fd in [&spec, &report] {
        // The container process must not inherit them through exec.
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).ok()?;
    }
    Some((spec, report))
}

fn supervise(spec_pipe: OwnedFd, report_pipe: &mut std::fs::File) -> Report {
    match start_and_wait(spec_pipe, report_pipe) {
        Ok(exit) => Report::Exited(exit),
        Err(error) => Report::Failed(error),
    }
}

fn read_message(spec_pipe: OwnedFd) -> Result<InitMessage, ContainerError> {
    let mut bytes = Vec::new();
    std::fs::File::from(spec_pipe)
        .read_to_end(&mut bytes)
        .map_err(|error| ContainerError::setup("reading the spec pipe", &error))?;
    serde_json::from_slice(&bytes).map_err(|error| ContainerError::BadSpec {
        detail: error.to_string(),
    })
}

pub(crate) fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|entries| entries.count())
        .unwrap_or(0)
}

fn start_and_wait(
    spec_pipe: OwnedFd,
    report_pipe: &mut std::fs::File,
) -> Result<Exit, ContainerError> {
    let message = read_message(spec_pipe)?;
    if thread_count() != 1 {
        return Err(ContainerError::setup(
            "the init must be single-threaded (call init_main first in main)",
            Errno::EINVAL,
        ));
    }
    // A new session: the caller's terminal no longer sends job-control signals here; the
    // caller forwards them instead (Docker's sig-proxy). EPERM: already a session leader.
    match setsid() {
        Ok(_) | Err(Errno::EPERM) => {}
        Err(errno) => return Err(ContainerError::setup("setsid", errno)),
    }
    // Blocked before fork, so no signal is lost between fork and the wait loop; the child
    // restores an empty mask.
    let mut waited = SigSet::empty();
    waited.add(Signal::SIGCHLD);
    for signal in FORWARDED_SIGNALS {
        waited.add(signal);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&waited), None)
        .map_err(|errno| ContainerError::setup("blocking signals", errno))?;

    unshare(CloneFlags::CLONE_NEWPID)
        .map_err(|errno| ContainerError::setup("unshare the PID namespace", errno))?;
    let (error_read, error_write) =
        pipe2(OFlag::O_CLOEXEC).map_err(|errno| ContainerError::setup("pipe", errno))?;

    // SAFETY: this process is single-threaded (checked above), so the child may run any code.
    let child = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(error_read);
            crate::container::start(&message, error_write)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(errno) => return Err(ContainerError::setup("fork", errno)),
    };
    drop(error_write);
    if let Some(fd) = message.console_fd.filter(|fd| *fd > 2) {
        // SAFETY: `run` made this fd (the container's end of the terminal socket) inheritable
        // for this process alone and nothing here uses it; the container has its own copy.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }

    // End of file without a message: the container's command was executed.
    await_setup(child, error_read)?;
    // A failed write means the caller is gone; the parent-death signal follows.
    let _ = serde_json::to_writer(&mut *report_pipe, &Report::Started(child.as_raw()))
        .map_err(std::io::Error::from)
        .and_then(|()| report_pipe.flush());
    wait_forwarding(child, &waited)
}

/// Waits for the setup of `child` to end: end of file on `error_read` (close-on-exec) means
/// its command was executed; a message is its setup error, and the child is reaped.
pub(crate) fn await_setup(child: Pid, error_read: OwnedFd) -> Result<(), ContainerError> {
    let mut bytes = Vec::new();
    if let Err(error) = std::fs::File::from(error_read).read_to_end(&mut bytes) {
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        return Err(ContainerError::setup(
            "reading the setup error pipe",
            &error,
        ));
    }
    if !bytes.is_empty() {
        let _ = waitpid(child, None);
        return Err(
            serde_json::from_slice(&bytes).unwrap_or_else(|_| ContainerError::Panic {
                message: String::from_utf8_lossy(&bytes).into_owned(),
            }),
        );
    }
    Ok(())
}

pub(crate) fn wait_forwarding(child: Pid, waited: &SigSet) -> Result<Exit, ContainerError> {
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Exit::Code(code)),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(Exit::Signal(signal as i32)),
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(ContainerError::setup("waiting for the container", errno)),
        }
        let signal = waited
            .wait()
            .map_err(|errno| ContainerError::setup("waiting for signals", errno))?;
        if signal != Signal::SIGCHLD {
            // ESRCH: it exited meanwhile; the next waitpid reports it.
            let _ = kill(child, signal);
        }
    }
}
