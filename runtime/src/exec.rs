//! `exec`: one more process in a running container.
//!
//! The caller ([`exec`], [`exec_detached`]) finds the container's PID 1 through its cgroup,
//! resolves the capabilities and compiles the seccomp filter as `run` does, and starts a
//! fresh process: the kiln binary re-executed with its exec marker, whose `main` calls
//! [`exec_main`] first. That process (the *exec parent*) is single-threaded and stays outside
//! the container: it starts a session of its own, makes itself non-dumpable (so nothing in
//! the container can open its `/proc/<pid>/exe`, the kiln binary), pins the container's PID 1
//! with a pidfd, opens its namespace files, joins its PID namespace for its children only
//! and forks. The child, now a process of the container's PID namespace, joins the
//! container's cgroup (through files opened on the host), then its cgroup, IPC, UTS, network
//! and mount namespaces (each only when it differs from the current one), checks that `/` is
//! the container's root, resolves the user through the container's own `/etc/passwd` and
//! `/etc/group`, and confines itself exactly as the container's PID 1 was confined
//! ([`crate::container::lock_down`]) before `execve`. The exec parent forwards
//! SIGINT/SIGTERM/SIGHUP/SIGQUIT to it, reaps it and reports back over a pipe, as the init of
//! `run` does.
//!
//! Non-dumpable does not stop a container process that holds `CAP_SYS_PTRACE`
//! (`--cap-add SYS_PTRACE`, `--privileged`): it may open `/proc/<pid>/exe` of the child while
//! the child still runs kiln code (the runc CVE-2019-5736 class). For such containers the
//! exec parent is started from a read-only bind mount of the kiln binary in a mount namespace
//! of its own ([`read_only_binary`]), so that file can never be opened for writing.
//!
//! Nothing is mounted or changed in the container: the process only joins what exists. No
//! host fd reaches the command (everything above 2 is close-on-exec), and `/proc/self/exe` of
//! the exec'd process is the command.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::unistd::{ForkResult, getppid, pipe2, setsid};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::container::{LockDown, container_env, lock_down};
use crate::error::{ContainerError, EXIT_ENGINE_ERROR, RuntimeError};
use crate::forward::Forwarding;
use crate::init::{FDS_ENV, FORWARDED_SIGNALS, PARENT_ENV, Report};
use crate::run::Io;
use crate::spec::{Exit, Seccomp, Spec};

/// What to run in a running container (`kiln exec`).
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// The running container's sandbox spec, as it was started. Its `id` names the cgroup
    /// (and so the container); its env, user, working directory, host name, capabilities,
    /// seccomp profile, no-new-privileges and ulimits are the exec'd process's too.
    pub container: Spec,
    /// The command and its arguments: `args[0]` is looked up in the container env's `PATH`
    /// inside the container root when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=value` entries added to the container's env; an entry replaces the container's
    /// entry with the same key (Docker's `ReplaceOrAppendEnvValues`).
    pub env: Vec<String>,
    /// `-u`: the user instead of the container's, resolved through the container's own
    /// `/etc/passwd` and `/etc/group`.
    pub user: Option<String>,
    /// `-w`: an absolute working directory, which must exist in the container (it is not
    /// created, as with Docker); default the container's.
    pub cwd: Option<String>,
    /// `--privileged`: every capability kiln holds and no seccomp filter.
    pub privileged: bool,
}

/// Why [`exec`] could not run the command to completion.
#[derive(Debug, Error)]
pub enum ExecError {
    /// The container has no PID 1 (never started, exited, or removed).
    #[error("container {id} is not running")]
    NotRunning {
        /// The container id.
        id: String,
    },
    /// The container is frozen (`pause`): a process joining it would freeze at once.
    #[error("container {id} is paused, unpause the container before exec")]
    Paused {
        /// The container id.
        id: String,
    },
    /// `-w` is not an absolute path (Docker's wording).
    #[error("the working directory '{cwd}' is invalid, it needs to be an absolute path")]
    RelativeWorkdir {
        /// The directory as given.
        cwd: String,
    },
    /// Starting the process failed: in the caller, the exec parent or the process itself
    /// ([`RuntimeError::exit_code`] has Docker's 126/127).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl ExecError {
    /// Docker's exit code for this failure: 127 command not found, 126 not executable, 125
    /// everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExecError::Runtime(error) => error.exit_code(),
            ExecError::NotRunning { .. }
            | ExecError::Paused { .. }
            | ExecError::RelativeWorkdir { .. } => EXIT_ENGINE_ERROR,
        }
    }
}

/// What the caller sends to the exec parent.
#[derive(Debug, Serialize, Deserialize)]
struct ExecMessage {
    /// The process: the container's spec with the exec's command, env, user, working
    /// directory and privileges in place of the container's.
    spec: Spec,
    /// The host pid of the container's PID 1, whose namespaces are joined.
    pid: i32,
    /// The files of the container's cgroup, one per hierarchy, that the process writes `0`
    /// to, to join (`tasks` on v1: see [`crate::cgroup::join_files`]).
    cgroup_procs: Vec<PathBuf>,
    /// The capability mask, resolved by the caller.
    capabilities: u64,
    /// The seccomp filter, compiled by the caller.
    seccomp: Option<crate::seccomp::Compiled>,
    /// With `spec.tty`: the inherited socket over which the process sends the master of its
    /// new terminal (same number in the exec parent and its child).
    #[serde(default)]
    console_fd: Option<RawFd>,
}

/// Runs `spec.args` in the running container `spec.container.id` and returns how it ended.
///
/// Starts `program program_args...` (the kiln binary with its exec marker; its `main` must
/// call [`exec_main`] first) with stdio per `io`. While the command runs,
/// SIGINT/SIGTERM/SIGHUP/SIGQUIT sent to this process are forwarded to it (through the exec
/// parent), as with [`crate::run`]. If this process dies, the exec parent gets SIGKILL and
/// the command dies with it (parent-death signals). The command also dies when the
/// container's PID 1 ends (the kernel empties a PID namespace whose init exits).
///
/// Errors: [`ExecError::NotRunning`], [`ExecError::Paused`], bad capabilities or seccomp
/// profile (checked before anything starts), and setup or `execve` failures of the process
/// ([`ExecError::exit_code`]: 127 not found, 126 not executable, 125 otherwise).
pub fn exec(
    spec: &ExecSpec,
    program: &Path,
    program_args: &[&str],
    io: Io,
) -> Result<Exit, ExecError> {
    let message = prepare(spec, program)?;
    let mut forwarding = Forwarding::install();
    let (mut child, reports) = spawn(program, program_args, io, &message, true)?;
    forwarding.target(child.id());
    let mut reports = serde_json::Deserializer::from_reader(reports).into_iter::<Report>();
    let mut report = reports.next();
    if let Some(Ok(Report::Started(_))) = report {
        report = reports.next();
    }
    let status = child
        .wait()
        .map_err(init_error(program, "waiting for the exec process"))?;
    drop(forwarding);
    final_report(program, report, status)
}

/// The command's exit from the exec parent's last report (`report`, read after the
/// [`Report::Started`] one) and its own exit `status`.
fn final_report(
    program: &Path,
    report: Option<Result<Report, serde_json::Error>>,
    status: std::process::ExitStatus,
) -> Result<Exit, ExecError> {
    match report {
        Some(Ok(Report::Exited(exit))) => Ok(exit),
        Some(Ok(Report::Failed(error))) => Err(RuntimeError::from(error).into()),
        Some(Ok(Report::Started(_))) => Err(died(program, format!("{status}, started twice"))),
        Some(Err(error)) if !error.is_eof() => Err(died(
            program,
            format!("{status}, unreadable report: {error}"),
        )),
        None | Some(Err(_)) => Err(died(program, status.to_string())),
    }
}

/// Starts `spec.args` in the running container and returns once it was executed, with its
/// host pid (`exec -d`). Its standard streams are `/dev/null`; the exec parent that reaps it
/// runs in a session of its own and outlives this process (it is reparented when this
/// process exits). Setup and `execve` failures are returned as by [`exec`].
pub fn exec_detached(
    spec: &ExecSpec,
    program: &Path,
    program_args: &[&str],
) -> Result<i32, ExecError> {
    let message = prepare(spec, program)?;
    let io = Io {
        stdin: std::process::Stdio::null(),
        stdout: std::process::Stdio::null(),
        stderr: std::process::Stdio::null(),
    };
    let (mut child, reports) = spawn(program, program_args, io, &message, false)?;
    let mut reports = serde_json::Deserializer::from_reader(reports).into_iter::<Report>();
    match reports.next() {
        Some(Ok(Report::Started(pid))) => Ok(pid),
        Some(Ok(Report::Failed(error))) => {
            let _ = child.wait();
            Err(RuntimeError::from(error).into())
        }
        Some(Ok(Report::Exited(_))) => Err(died(program, "exited before starting".into())),
        Some(Err(error)) if !error.is_eof() => {
            let _ = child.kill();
            let _ = child.wait();
            Err(died(program, format!("unreadable report: {error}")))
        }
        None | Some(Err(_)) => {
            let status = child
                .wait()
                .map_err(init_error(program, "waiting for the exec process"))?;
            Err(died(program, status.to_string()))
        }
    }
}

/// [`exec`] on a pseudo-terminal (`exec -t`): the command gets a new terminal of the
/// container's own devpts as its controlling terminal, stdin, stdout and stderr (so stdout
/// and stderr are merged, as with Docker's `-t`), copied to and from `streams` as
/// [`crate::pty::run_in_terminal`] does for `run -t`: the input, when it is a terminal, is in
/// raw mode from just before the command starts until this returns, on every path; the
/// command's terminal starts with the output's (or input's) size and follows SIGWINCH.
/// Without input (`-t` without `-i`) the command reads nothing. Returns once the command has
/// ended and every process holding its terminal has closed it (its output is then all
/// copied). Errors as [`exec`].
pub fn exec_in_terminal(
    spec: &ExecSpec,
    program: &Path,
    program_args: &[&str],
    streams: crate::pty::TerminalStreams,
) -> Result<Exit, ExecError> {
    let mut message = prepare(spec, program)?;
    let mut size_source = crate::pty::size_source(&streams);
    message.spec.tty = true;
    message.spec.console_size = size_source
        .as_ref()
        .and_then(|fd| crate::pty::window_size(fd.as_fd()));
    // The process sends its terminal's master through this socket (see `pty`).
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(init_error(program, "creating the terminal socket"))?;
    let theirs = crate::run::above_stdio(theirs.into())
        .map_err(init_error(program, "creating the terminal socket"))?;
    message.console_fd = Some(theirs.as_raw_fd());
    let raw = streams
        .input
        .as_ref()
        .and_then(|input| crate::pty::RawMode::enable(input.as_fd()).ok());
    let io = Io {
        stdin: std::process::Stdio::null(),
        stdout: std::process::Stdio::null(),
        stderr: std::process::Stdio::inherit(),
    };
    let mut forwarding = Forwarding::install();
    let (mut child, reports) = spawn(program, program_args, io, &message, true)?;
    drop(theirs);
    forwarding.target(child.id());
    let mut reports = serde_json::Deserializer::from_reader(reports).into_iter::<Report>();
    let mut report = reports.next();
    let mut relay = None;
    let mut pending = Some(streams);
    if let Some(Ok(Report::Started(_))) = report {
        // The master was sent before the command was executed, so it is already queued.
        let master = crate::pty::receive_fd(ours.as_fd()).ok().flatten();
        if let (Some(master), Some(streams)) = (master, pending.take()) {
            relay = Some(crate::pty::Relay::start(
                master,
                streams,
                size_source.take(),
            ));
        }
        report = reports.next();
    }
    let status = child
        .wait()
        .map_err(init_error(program, "waiting for the exec process"))?;
    drop(forwarding);
    if let Some(relay) = relay {
        relay.finish();
    }
    drop(raw);
    final_report(program, report, status)
}

/// Limits of one [`exec_captured`] run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capture {
    /// How long the command may run; then it is killed (SIGKILL to it and the processes it
    /// started in its process group).
    pub timeout: std::time::Duration,
    /// At most this many bytes of output are kept; the rest is read and dropped.
    pub max_output: usize,
}

/// How a command run by [`exec_captured`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapturedEnd {
    /// It ended by itself.
    Exited(Exit),
    /// It ran past [`Capture::timeout`] and was killed.
    TimedOut,
    /// The [`Cancel`] fired while it ran, and it was killed.
    Cancelled,
}

/// What [`exec_captured`] returns: how the command ended and its combined output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// How it ended.
    pub end: CapturedEnd,
    /// Its stdout and stderr, interleaved as written, at most [`Capture::max_output`] bytes.
    pub output: Vec<u8>,
    /// More output came than was kept.
    pub truncated: bool,
}

/// A one-way switch shared between threads: once [`Cancel::cancel`] is called, every
/// [`exec_captured`] run that was given it kills its command and returns, and every
/// [`Cancel::wait`] returns at once. Cheap to clone; clones share the switch.
#[derive(Debug, Clone)]
pub struct Cancel {
    /// Readable once cancelled: nothing ever reads the byte written to `write`.
    read: std::sync::Arc<OwnedFd>,
    write: std::sync::Arc<OwnedFd>,
}

impl Cancel {
    /// A switch that is not cancelled yet (a close-on-exec pipe).
    pub fn new() -> std::io::Result<Cancel> {
        let (read, write) = crate::run::pipe()?;
        nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        Ok(Cancel {
            read: std::sync::Arc::new(read),
            write: std::sync::Arc::new(write),
        })
    }

    /// Cancels. Idempotent.
    pub fn cancel(&self) {
        // A full pipe (cancelled many times over) is still readable: nothing to do.
        let _ = nix::unistd::write(self.write.as_fd(), b"c");
    }

    /// Whether it was cancelled.
    pub fn is_cancelled(&self) -> bool {
        !self.wait(std::time::Duration::ZERO)
    }

    /// Sleeps for `duration` or until cancelled; `true` when the time passed without a
    /// cancel.
    pub fn wait(&self, duration: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + duration;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut fds = [nix::poll::PollFd::new(
                self.read.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut fds, poll_timeout(left)) {
                Ok(0) if left.is_zero() => return true,
                Ok(0) | Err(Errno::EINTR) => {}
                Ok(_) | Err(_) => return false,
            }
        }
    }
}

/// A poll timeout of `duration`, rounded up to whole milliseconds (so a wait never ends
/// early and spins), at most `u16::MAX` ms (callers loop).
fn poll_timeout(duration: std::time::Duration) -> nix::poll::PollTimeout {
    let millis = duration.as_nanos().div_ceil(1_000_000);
    nix::poll::PollTimeout::from(u16::try_from(millis).unwrap_or(u16::MAX))
}

/// Runs `spec.args` in the running container with its output captured, within a time limit,
/// as Docker runs a healthcheck probe: stdin is `/dev/null`, stdout and stderr go to one pipe
/// of which at most `capture.max_output` bytes are kept. No signal is forwarded to it. When
/// `capture.timeout` passes, or `cancel` fires, before the command ends, the exec parent and
/// everything in its process group (the command and what it started, unless they left the
/// group) get SIGKILL and are reaped before this returns: nothing is left running. If this
/// process dies, the command dies too (parent-death signals).
///
/// Errors as [`exec`]: the command could not be started (not running, paused, not found...).
pub fn exec_captured(
    spec: &ExecSpec,
    program: &Path,
    program_args: &[&str],
    capture: Capture,
    cancel: &Cancel,
) -> Result<Captured, ExecError> {
    let deadline = std::time::Instant::now() + capture.timeout;
    let message = prepare(spec, program)?;
    let (output_read, output_write) =
        crate::run::pipe().map_err(init_error(program, "creating a pipe"))?;
    let stderr = output_write
        .try_clone()
        .map_err(init_error(program, "creating a pipe"))?;
    let io = Io {
        stdin: std::process::Stdio::null(),
        stdout: output_write.into(),
        stderr: stderr.into(),
    };
    let (mut child, reports) = spawn(program, program_args, io, &message, true)?;
    let mut captured = Captured {
        end: CapturedEnd::TimedOut,
        output: Vec::new(),
        truncated: false,
    };
    let mut output = Some(std::fs::File::from(output_read));
    let mut reports = Some(reports);
    let mut report_bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    let keep = |captured: &mut Captured, bytes: &[u8]| {
        let room = capture.max_output.saturating_sub(captured.output.len());
        captured
            .output
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        captured.truncated |= bytes.len() > room;
    };
    // Reads output and reports until the report pipe ends (the exec parent exited), the
    // deadline passes or the cancel fires.
    let ended = loop {
        let Some(report_pipe) = &reports else {
            break None;
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break Some(CapturedEnd::TimedOut);
        }
        let mut fds = vec![
            nix::poll::PollFd::new(report_pipe.as_fd(), nix::poll::PollFlags::POLLIN),
            nix::poll::PollFd::new(cancel.read.as_fd(), nix::poll::PollFlags::POLLIN),
        ];
        if let Some(pipe) = &output {
            fds.push(nix::poll::PollFd::new(
                pipe.as_fd(),
                nix::poll::PollFlags::POLLIN,
            ));
        }
        match nix::poll::poll(&mut fds, poll_timeout(left)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(errno) => {
                break Some(CapturedEnd::Exited(Exit::Code(-(errno as i32))));
            }
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|events| !events.is_empty()))
            .collect();
        if ready[1] {
            break Some(CapturedEnd::Cancelled);
        }
        if ready.get(2) == Some(&true)
            && let Some(pipe) = &mut output
        {
            match pipe.read(&mut buffer) {
                Ok(0) | Err(_) => output = None,
                Ok(count) => keep(&mut captured, &buffer[..count]),
            }
        }
        if ready[0]
            && let Some(pipe) = &mut reports
        {
            match pipe.read(&mut buffer) {
                Ok(0) | Err(_) => reports = None,
                Ok(count) => report_bytes.extend_from_slice(&buffer[..count]),
            }
        }
    };
    if let Some(end) = ended {
        // Timed out or cancelled (or poll failed): the exec parent is a session leader, so
        // its process group holds it, the command and the command's children.
        let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = child.kill();
        let _ = child.wait();
        captured.end = end;
        drain(output.as_mut(), &mut buffer, |bytes| {
            keep(&mut captured, bytes)
        });
        return Ok(captured);
    }
    let status = child
        .wait()
        .map_err(init_error(program, "waiting for the exec process"))?;
    // What the command wrote before it ended is in the pipe; a child it left running may
    // still hold the pipe open, so read only what is there.
    drain(output.as_mut(), &mut buffer, |bytes| {
        keep(&mut captured, bytes)
    });
    let mut reports = serde_json::Deserializer::from_slice(&report_bytes).into_iter::<Report>();
    let mut report = reports.next();
    if let Some(Ok(Report::Started(_))) = report {
        report = reports.next();
    }
    captured.end = CapturedEnd::Exited(final_report(program, report, status)?);
    Ok(captured)
}

/// Reads what is in `pipe` now, without waiting for more.
fn drain(pipe: Option<&mut std::fs::File>, buffer: &mut [u8], mut keep: impl FnMut(&[u8])) {
    let Some(pipe) = pipe else { return };
    if nix::fcntl::fcntl(&*pipe, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).is_err() {
        return;
    }
    while let Ok(count) = pipe.read(buffer) {
        if count == 0 {
            return;
        }
        keep(&buffer[..count]);
    }
}

fn init_error(program: &Path, step: &'static str) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let program = program.to_path_buf();
    move |source| RuntimeError::Init {
        step,
        program,
        source,
    }
}

fn died(program: &Path, status: String) -> ExecError {
    RuntimeError::InitDied {
        program: program.to_path_buf(),
        status,
    }
    .into()
}

/// Docker's `ReplaceOrAppendEnvValues`: an entry of `added` replaces the entry of `base`
/// with the same key, or is appended.
pub(crate) fn merge_env(base: &[String], added: &[String]) -> Vec<String> {
    let key = |entry: &str| {
        entry
            .split_once('=')
            .map_or(entry, |(key, _)| key)
            .to_string()
    };
    let mut env = base.to_vec();
    for entry in added {
        let wanted = key(entry);
        match env.iter_mut().find(|existing| key(existing) == wanted) {
            Some(existing) => existing.clone_from(entry),
            None => env.push(entry.clone()),
        }
    }
    env
}

/// Checks the request, finds the container's PID 1 and resolves what the process gets.
fn prepare(exec: &ExecSpec, program: &Path) -> Result<ExecMessage, ExecError> {
    let id = &exec.container.id;
    if exec.args.is_empty() {
        return Err(RuntimeError::NoCommand.into());
    }
    if let Some(cwd) = &exec.cwd
        && !cwd.starts_with('/')
    {
        return Err(ExecError::RelativeWorkdir { cwd: cwd.clone() });
    }
    let pid =
        crate::cgroup::container_pid(id).ok_or_else(|| ExecError::NotRunning { id: id.clone() })?;
    if crate::control::container_paused(id) {
        return Err(ExecError::Paused { id: id.clone() });
    }
    let mut spec = exec.container.clone();
    spec.args = exec.args.clone();
    spec.env = merge_env(&spec.env, &exec.env);
    if let Some(user) = exec.user.as_ref().filter(|user| !user.is_empty()) {
        spec.user = Some(user.clone());
    }
    if let Some(cwd) = &exec.cwd {
        spec.cwd = cwd.clone();
    }
    if exec.privileged {
        spec.privileged = true;
        spec.seccomp = Seccomp::Unconfined;
    }
    // The container's own `-t` is not the exec's: [`exec_in_terminal`] asks for a terminal.
    spec.tty = false;
    spec.console_size = None;
    let held =
        crate::caps::held().map_err(init_error(program, "reading kiln's own capabilities"))?;
    let capabilities = crate::caps::resolve(&spec, held)?;
    let seccomp = crate::seccomp::for_spec(&spec, capabilities).map_err(RuntimeError::from)?;
    let cgroup_procs = crate::cgroup::join_files(&crate::cgroup::existing_dirs(id));
    Ok(ExecMessage {
        spec,
        pid,
        cgroup_procs,
        capabilities,
        seccomp,
        console_fd: None,
    })
}

/// Starts the exec parent and sends it `message`; returns it and the report pipe.
/// `attached`: the exec parent dies with this process (parent-death signal).
fn spawn(
    program: &Path,
    program_args: &[&str],
    io: Io,
    message: &ExecMessage,
    attached: bool,
) -> Result<(Child, std::fs::File), RuntimeError> {
    let payload = serde_json::to_vec(message)
        .map_err(|error| init_error(program, "encoding the exec request")(error.into()))?;
    let (message_read, message_write) =
        crate::run::pipe().map_err(init_error(program, "creating a pipe"))?;
    let (report_read, report_write) =
        crate::run::pipe().map_err(init_error(program, "creating a pipe"))?;
    let inherited = [message_read.as_raw_fd(), report_write.as_raw_fd()];
    let console_fd = message.console_fd;
    let read_only = (message.capabilities & (1 << CAP_SYS_PTRACE) != 0)
        .then(|| std::ffi::CString::new(program.as_os_str().as_encoded_bytes()))
        .transpose()
        .map_err(|error| init_error(program, "naming the kiln binary")(error.into()))?;
    let mut command = Command::new(program);
    command
        .args(program_args)
        .env(FDS_ENV, format!("{},{}", inherited[0], inherited[1]))
        .env(PARENT_ENV, std::process::id().to_string())
        .stdin(io.stdin)
        .stdout(io.stdout)
        .stderr(io.stderr);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (fcntl, prctl, unshare, mount) on integers and on a string
    // made before the fork; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            for fd in inherited.into_iter().chain(console_fd) {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if attached && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(program) = &read_only {
                read_only_binary(program)?;
            }
            Ok(())
        })
    };
    let child = command
        .spawn()
        .map_err(init_error(program, "starting the exec process"))?;
    drop(message_read);
    drop(report_write);
    // The exec parent reads the whole message first; a write error (it died) shows up as a
    // missing report.
    let _ = std::fs::File::from(message_write).write_all(&payload);
    Ok((child, std::fs::File::from(report_read)))
}

/// The capability that lets a container process open `/proc/<pid>/exe` of a non-dumpable
/// process (`ptrace_may_access` lets `CAP_SYS_PTRACE` in the process's user namespace
/// through, and kiln uses no user namespace).
const CAP_SYS_PTRACE: u32 = 19;

/// Makes `program` (the kiln binary, about to be executed as the exec parent) read-only for
/// this process and everything it starts, without touching the host: a mount namespace of
/// its own (a slave of the host's, so host unmounts still reach it and nothing goes back),
/// and `program` bind-mounted read-only over itself there. After `execve(program)`, the
/// exec parent's and its child's `/proc/<pid>/exe` name the binary through that read-only
/// mount: opening it for writing, directly or by reopening an `O_PATH` fd, fails with
/// `EROFS`, and the mount cannot be made writable from the container (it is in no
/// namespace the container can reach). This is the CVE-2019-5736 (runc) class: a container
/// process with `CAP_SYS_PTRACE` may open `/proc/<pid>/exe` of the exec child while it
/// still runs kiln code, since non-dumpable does not stop that capability.
///
/// Why not a sealed memfd copy (runc 1.1): it costs a copy of the whole binary per exec
/// (tens to hundreds of megabytes); the bind mount costs one mount-table copy. runc 1.2
/// also prefers a read-only mount (an overlayfs or bind mount of the binary) over the copy.
///
/// Runs between `fork` and `execve`: only system calls on `program`, made before the fork.
fn read_only_binary(program: &std::ffi::CStr) -> std::io::Result<()> {
    let check = |result: libc::c_int| {
        if result == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let none = std::ptr::null::<libc::c_char>();
    // SAFETY: unshare and mount take integers, NUL-terminated strings that live across the
    // calls (`program`, literals) or null pointers where the kernel accepts them.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            program.as_ptr(),
            program.as_ptr(),
            none,
            libc::MS_BIND,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            none,
            program.as_ptr(),
            none,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
            std::ptr::null(),
        ))
    }
}

/// The entry of the re-executed exec parent. Call it first thing in `main` when the program
/// was started by [`exec`] or [`exec_detached`] with the exec marker argument, before any
/// thread exists. Never returns: exits 0 after reporting to the caller, or 125 (with one line
/// on stderr) when it was not started by them or cannot report (for `exec -d`, the caller has
/// usually gone by then; that is fine).
#[allow(
    clippy::exit,
    clippy::print_stderr,
    reason = "entry point of the re-executed exec parent: nobody to return to"
)]
pub fn exec_main() -> ! {
    let Some((message_pipe, report_pipe)) = crate::init::inherited_pipes() else {
        eprintln!("kiln exec: not started by kiln_runtime::exec (no {FDS_ENV})");
        std::process::exit(EXIT_ENGINE_ERROR);
    };
    let expected_parent = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|pid| pid.parse().ok());
    if expected_parent != Some(getppid().as_raw()) {
        // The caller died before the parent-death signal was armed.
        std::process::exit(EXIT_ENGINE_ERROR);
    }
    let mut pipe = std::fs::File::from(report_pipe);
    let report = match start_and_wait(message_pipe, &mut pipe) {
        Ok(exit) => Report::Exited(exit),
        Err(error) => Report::Failed(error),
    };
    let written = serde_json::to_writer(&mut pipe, &report)
        .map_err(std::io::Error::from)
        .and_then(|()| pipe.flush());
    match written {
        Ok(()) => std::process::exit(0),
        Err(error) => {
            eprintln!("kiln exec: cannot report to the caller: {error}");
            std::process::exit(EXIT_ENGINE_ERROR)
        }
    }
}

fn read_message(pipe: OwnedFd) -> Result<ExecMessage, ContainerError> {
    let mut bytes = Vec::new();
    std::fs::File::from(pipe)
        .read_to_end(&mut bytes)
        .map_err(|error| ContainerError::setup("reading the exec request", &error))?;
    serde_json::from_slice(&bytes).map_err(|error| ContainerError::BadSpec {
        detail: error.to_string(),
    })
}

fn start_and_wait(
    message_pipe: OwnedFd,
    report_pipe: &mut std::fs::File,
) -> Result<Exit, ContainerError> {
    let message = read_message(message_pipe)?;
    if crate::init::thread_count() != 1 {
        return Err(ContainerError::setup(
            "the exec process must be single-threaded (call exec_main first in main)",
            Errno::EINVAL,
        ));
    }
    // As the init of `run`: the terminal's signals reach only the caller, which forwards them.
    match setsid() {
        Ok(_) | Err(Errno::EPERM) => {}
        Err(errno) => return Err(ContainerError::setup("setsid", errno)),
    }
    let mut waited = SigSet::empty();
    waited.add(Signal::SIGCHLD);
    for signal in FORWARDED_SIGNALS {
        waited.add(signal);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&waited), None)
        .map_err(|errno| ContainerError::setup("blocking signals", errno))?;
    // Non-dumpable: a container process cannot open /proc/<pid>/exe (the kiln binary) or
    // ptrace this process or its child before the child's execve (runc does the same).
    set_dumpable(false)?;
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(40);
    let target = Target::open(&message)?;
    if let Some(pid_namespace) = &target.pid_namespace {
        // Only this process's future children enter it.
        setns(pid_namespace, CloneFlags::CLONE_NEWPID)
            .map_err(|errno| ContainerError::setup("joining the PID namespace", errno))?;
    }
    let (error_read, error_write) =
        pipe2(OFlag::O_CLOEXEC).map_err(|errno| ContainerError::setup("pipe", errno))?;

    // SAFETY: this process is single-threaded (checked above), so the child may run any code.
    let child = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            drop(error_read);
            start_in_container(&message, &target, last_cap, error_write)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(errno) => return Err(ContainerError::setup("fork", errno)),
    };
    drop(error_write);
    drop(target);
    if let Some(fd) = message.console_fd.filter(|fd| *fd > 2) {
        // SAFETY: the caller made this fd (the process's end of the terminal socket)
        // inheritable for this process alone and nothing here uses it; the child has its
        // own copy.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }

    crate::init::await_setup(child, error_read)?;
    // A failed write means the caller is gone (`exec -d`, or killed): go on reaping.
    let _ = serde_json::to_writer(&mut *report_pipe, &Report::Started(child.as_raw()))
        .map_err(std::io::Error::from)
        .and_then(|()| report_pipe.flush());
    crate::init::wait_forwarding(child, &waited)
}

fn set_dumpable(dumpable: bool) -> Result<(), ContainerError> {
    // SAFETY: integer-only prctl, no memory is passed.
    let result = unsafe {
        libc::prctl(
            libc::PR_SET_DUMPABLE,
            libc::c_ulong::from(dumpable),
            0,
            0,
            0,
        )
    };
    if result != 0 {
        return Err(ContainerError::setup("setting dumpable", Errno::last()));
    }
    Ok(())
}

/// Identity of a file: device and inode.
type FileId = (u64, u64);

/// The running container, pinned: its namespaces and cgroup, opened from the host.
#[derive(Debug)]
struct Target {
    /// The container's PID namespace, unless it is this process's.
    pid_namespace: Option<OwnedFd>,
    /// The other namespaces to join, in joining order, each only when it differs from this
    /// process's.
    namespaces: Vec<(OwnedFd, CloneFlags)>,
    /// The container's root directory, to check `/` against after joining.
    root: FileId,
    /// The container's cgroup join files (see [`crate::cgroup::join_files`]), open for
    /// writing.
    cgroup_procs: Vec<std::fs::File>,
}

/// Namespaces joined by the child, in order. The cgroup namespace comes first, after the
/// cgroup itself is joined; the mount namespace last (it changes `/`).
const NAMESPACES: [(&str, CloneFlags); 5] = [
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

fn file_id(metadata: &std::fs::Metadata) -> FileId {
    (metadata.dev(), metadata.ino())
}

impl Target {
    /// Opens everything of the container's PID 1 `message.pid` that the child joins. The pid
    /// is pinned with a pidfd and checked (PID 1 of its namespace, listed in the container's
    /// cgroup) before, and found alive after, the namespace files are opened: so they are
    /// that process's, not a reused pid's.
    fn open(message: &ExecMessage) -> Result<Target, ContainerError> {
        let pid = message.pid;
        let gone = || ContainerError::setup("the container's PID 1 is gone", Errno::ESRCH);
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if raw < 0 {
            return Err(gone());
        }
        // SAFETY: pidfd_open returned a new fd that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        if !is_container_pid1(pid, message.cgroup_procs.first()) {
            return Err(gone());
        }
        let open = |path: String| {
            std::fs::File::open(&path)
                .map(OwnedFd::from)
                .map_err(|error| ContainerError::setup(format!("open {path}"), &error))
        };
        let differs = |fd: &OwnedFd, name: &str| -> Result<bool, ContainerError> {
            let theirs = std::fs::File::from(fd.try_clone().map_err(|error| {
                ContainerError::setup(format!("dup the {name} namespace fd"), &error)
            })?)
            .metadata()
            .map_err(|error| {
                ContainerError::setup(format!("fstat the {name} namespace"), &error)
            })?;
            let ours = std::fs::metadata(format!("/proc/self/ns/{name}")).map_err(|error| {
                ContainerError::setup(format!("stat /proc/self/ns/{name}"), &error)
            })?;
            Ok(file_id(&theirs) != file_id(&ours))
        };
        let pid_namespace = open(format!("/proc/{pid}/ns/pid"))?;
        let pid_namespace = differs(&pid_namespace, "pid")?.then_some(pid_namespace);
        let mut namespaces = Vec::new();
        for (name, flag) in NAMESPACES {
            let fd = open(format!("/proc/{pid}/ns/{name}"))?;
            if differs(&fd, name)? {
                namespaces.push((fd, flag));
            }
        }
        let root = std::fs::metadata(format!("/proc/{pid}/root"))
            .map_err(|error| ContainerError::setup("stat the container's root", &error))?;
        let host_root =
            std::fs::metadata("/").map_err(|error| ContainerError::setup("stat /", &error))?;
        if file_id(&root) == file_id(&host_root) {
            // PID 1 has not switched to the container's root yet (`start` in progress):
            // joining now would give the command the host's file system.
            return Err(ContainerError::setup(
                "the container is still starting",
                Errno::EAGAIN,
            ));
        }
        // SAFETY: pidfd_send_signal with signal 0 only checks that the process lives; the
        // info pointer may be null.
        let alive = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if alive != 0 {
            return Err(gone());
        }
        let cgroup_procs = message
            .cgroup_procs
            .iter()
            .map(|path| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|error| {
                        ContainerError::setup(format!("open {}", path.display()), &error)
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Target {
            pid_namespace,
            namespaces,
            root: file_id(&root),
            cgroup_procs,
        })
    }
}

/// Whether `pid` is PID 1 of its PID namespace (`NSpid` ends in 1) and listed in `procs`
/// (`cgroup.procs` or `tasks`: a process's main thread has its pid as thread id).
fn is_container_pid1(pid: i32, procs: Option<&PathBuf>) -> bool {
    let pid1 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("NSpid:"))
                .and_then(|line| line.split_whitespace().last())
                .map(|inner| inner == "1")
        })
        .unwrap_or(false);
    let listed = procs
        .and_then(|path| std::fs::read_to_string(path).ok())
        .is_some_and(|text| text.lines().any(|line| line.trim() == pid.to_string()));
    pid1 && listed
}

/// Runs in the forked child. Never returns: either `execve` replaces this process, or the
/// error is written to `error_pipe` and the process exits with 125.
fn start_in_container(
    message: &ExecMessage,
    target: &Target,
    last_cap: u32,
    error_pipe: OwnedFd,
) -> ! {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        enter_and_exec(message, target, last_cap)
    }));
    let error = match outcome {
        Ok(Ok(never)) => match never {},
        Ok(Err(error)) => error,
        Err(payload) => ContainerError::Panic {
            message: payload
                .downcast_ref::<&str>()
                .map(|text| text.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default(),
        },
    };
    let mut pipe = std::fs::File::from(error_pipe);
    let _ = serde_json::to_writer(&mut pipe, &error);
    let _ = pipe.flush();
    // SAFETY: _exit ends this forked process at once, without running the parent's atexit
    // handlers or flushing buffers that belong to it.
    unsafe { libc::_exit(EXIT_ENGINE_ERROR) }
}

fn enter_and_exec(
    message: &ExecMessage,
    target: &Target,
    last_cap: u32,
) -> Result<Infallible, ContainerError> {
    let spec = &message.spec;
    crate::container::reset_signals()?;
    crate::container::set_parent_death_signal()?;
    // Writing 0 moves the writer. The files were opened on the host: after the mount
    // namespace is joined their paths would not resolve.
    for mut file in target.cgroup_procs.iter() {
        file.write_all(b"0")
            .map_err(|error| ContainerError::setup("joining the container's cgroup", &error))?;
    }
    for (fd, flag) in &target.namespaces {
        setns(fd.as_fd(), *flag).map_err(|errno| {
            ContainerError::setup(format!("joining the container's namespace {flag:?}"), errno)
        })?;
    }
    // setns(CLONE_NEWNS) makes the namespace's root this process's `/`; it must be the
    // container's, or nothing is executed.
    let root = std::fs::metadata("/").map_err(|error| ContainerError::setup("stat /", &error))?;
    if file_id(&root) != target.root {
        return Err(ContainerError::setup(
            "refusing to exec: / is not the container's root after joining its mount namespace",
            Errno::EXDEV,
        ));
    }
    let read = |path: &str| match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(error) => Err(ContainerError::setup(format!("reading {path}"), &error)),
    };
    let user = crate::user::resolve(
        spec.user.as_deref(),
        &read("/etc/passwd")?,
        &read("/etc/group")?,
    )?;
    nix::unistd::chdir(Path::new(&spec.cwd))
        .map_err(|errno| ContainerError::setup(format!("chdir to cwd ({:?})", spec.cwd), errno))?;
    if let Some(fd) = message.console_fd.filter(|fd| spec.tty && *fd > 2) {
        // SAFETY: the exec parent passed this inherited socket on to this process alone and
        // closed its own copy; nothing else here refers to it.
        let console = unsafe { OwnedFd::from_raw_fd(fd) };
        // A terminal of the container's own devpts (the mount namespace is joined), as
        // `run -t` makes one, owned by the command's user.
        crate::pty::attach_container_terminal(console, spec.console_size, user.uid)?;
    }
    lock_down(&LockDown {
        ulimits: &spec.ulimits,
        seccomp: message.seccomp.as_ref(),
        no_new_privileges: spec.no_new_privileges,
        capabilities: message.capabilities,
        last_cap,
        user: &user,
    })?;
    // Still non-dumpable (inherited from the exec parent), unless changing the user made
    // the kernel apply `fs.suid_dumpable` = 1: nothing in the container may open this
    // process's `/proc/<pid>/exe` or memory before `execve` (which resets it).
    // SAFETY: integer-only prctl, no memory is passed.
    if unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        set_dumpable(false)?;
    }
    let env = container_env(spec, &user);
    crate::container::exec(&spec.args, &env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_env_replaces_or_appends_as_docker_does() {
        let base = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        let added = vec!["A=2".to_string(), "B=3".to_string()];
        assert_eq!(merge_env(&base, &added), vec!["PATH=/bin", "A=2", "B=3"]);
        assert_eq!(merge_env(&base, &[]), base);
    }

    #[test]
    fn errors_before_the_start_are_kiln_errors() {
        assert_eq!(ExecError::NotRunning { id: "c".into() }.exit_code(), 125);
        assert_eq!(
            ExecError::RelativeWorkdir { cwd: "tmp".into() }.to_string(),
            "the working directory 'tmp' is invalid, it needs to be an absolute path"
        );
        let not_found = ExecError::from(RuntimeError::from(ContainerError::CommandNotFound {
            command: "x".into(),
        }));
        assert_eq!(not_found.exit_code(), 127);
    }
}
