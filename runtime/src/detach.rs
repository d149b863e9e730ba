//! Process plumbing for detached containers: starting the monitor in a session of its own,
//! signalling a running container, waiting for a process that is not our child.
//!
//! Knows nothing about the store or the monitor's job (logs, state): the CLI owns those. A
//! signal for a container goes straight to its PID 1 (found through its cgroup), not through
//! the monitor, so every signal works, SIGKILL included, and the monitor sees the container
//! end as it would any exit.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Starts `program args...` as a daemon: a new session (no controlling terminal, not in the
/// caller's process group, so the terminal's signals do not reach it), working directory `/`
/// (so it keeps no directory busy: paths in `args` must be absolute), stdin and stderr on
/// `/dev/null`, stdout a pipe back to the caller (for a readiness line: the caller reads it,
/// then drops the pipe). Returns its pid and that pipe. The caller does not wait for it: when
/// the caller exits, it is reparented to init (or the nearest subreaper), which reaps it.
pub fn spawn_detached(
    program: &Path,
    args: &[&std::ffi::OsStr],
) -> std::io::Result<(u32, std::process::ChildStdout)> {
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: runs in the forked child before exec; setsid(2) is async-signal-safe and
    // allocates nothing.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = command.spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout pipe"))?;
    Ok((child.id(), stdout))
}

/// A signal given as Docker accepts it: `KILL`, `SIGKILL`, `sigkill` or `9`.
pub fn parse_signal(text: &str) -> Option<i32> {
    if let Ok(number) = text.parse::<i32>() {
        return Signal::try_from(number).ok().map(|signal| signal as i32);
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>().ok().map(|signal| signal as i32)
}

/// Sends `signal` to the PID 1 of running container `id`. `Ok(false)`: the container is not
/// running. As for any PID 1 of a PID namespace, a signal it has no handler for is ignored,
/// except SIGKILL and SIGSTOP (Docker behaves the same: `stop` then waits and kills).
pub fn signal_container(id: &str, signal: i32) -> Result<bool, Errno> {
    let signal = Signal::try_from(signal)?;
    let Some(pid) = crate::cgroup::container_pid(id) else {
        return Ok(false);
    };
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(errno) => Err(errno),
    }
}

/// Whether process `pid` exists (a zombie counts until it is reaped).
pub fn process_exists(pid: i32) -> bool {
    pid > 0 && !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// Waits until process `pid` (any process, not only a child) has exited, or `timeout` has
/// passed (`None`: no limit). Returns whether it exited. Poll-free: a pidfd becomes readable
/// when the process ends.
pub fn wait_for_exit(pid: i32, timeout: Option<Duration>) -> bool {
    if pid <= 0 {
        return true;
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return !process_exists(pid);
    }
    // SAFETY: pidfd_open returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let deadline = timeout.map(|timeout| Instant::now() + timeout);
    loop {
        let wait_ms = match deadline {
            None => -1,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                i32::try_from(left.as_millis()).unwrap_or(i32::MAX)
            }
        };
        let mut poll = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, count 1.
        let ready = unsafe { libc::poll(&mut poll, 1, wait_ms) };
        if ready > 0 {
            return true;
        }
        if ready == 0 {
            return false;
        }
        if Errno::last() != Errno::EINTR {
            return !process_exists(pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_accepted_in_docker_spellings() {
        for text in ["KILL", "SIGKILL", "sigkill", "kill", "9"] {
            assert_eq!(parse_signal(text), Some(libc::SIGKILL), "{text}");
        }
        assert_eq!(parse_signal("TERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("NOPE"), None);
        assert_eq!(parse_signal("99"), None);
    }

    #[test]
    fn waiting_for_a_process_ends_when_it_exits_or_times_out() {
        let mut child = Command::new("sleep").arg("0.2").spawn().unwrap();
        let pid = child.id() as i32;
        assert!(!wait_for_exit(pid, Some(Duration::from_millis(10))));
        assert!(wait_for_exit(pid, Some(Duration::from_secs(5))));
        child.wait().unwrap();
        assert!(!process_exists(pid));
    }
}
