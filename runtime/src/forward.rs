//! Signal forwarding in the process that calls `run` (Docker's sig-proxy).
//!
//! While at least one `run` is in progress, SIGINT, SIGTERM, SIGHUP and SIGQUIT delivered to
//! the calling process are passed to every running container init instead of taking their
//! usual action; the previous dispositions come back when the last `run` ends. Up to
//! [`SLOTS`] concurrent runs get forwarding; more still run, without it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};

use crate::init::FORWARDED_SIGNALS;

/// How many concurrent `run` calls can have their signals forwarded.
const SLOTS: usize = 64;

/// Pids of running inits; 0 is a free slot. Read by the signal handler, so atomics only.
static TARGETS: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];

struct Installed {
    users: usize,
    previous: Vec<SigAction>,
}

static INSTALLED: Mutex<Installed> = Mutex::new(Installed {
    users: 0,
    previous: Vec::new(),
});

extern "C" fn forward(signal: libc::c_int) {
    let saved = Errno::last_raw();
    for slot in &TARGETS {
        let pid = slot.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill(2) is async-signal-safe and takes integers only.
            unsafe { libc::kill(pid, signal) };
        }
    }
    Errno::set_raw(saved);
}

/// Forwarding for one `run`; ends when dropped.
#[derive(Debug)]
pub(crate) struct Forwarding {
    slot: Option<usize>,
}

impl Forwarding {
    /// Installs the handlers (if this is the first concurrent run). Signals arriving before
    /// [`Forwarding::target`] are swallowed.
    pub(crate) fn install() -> Self {
        let mut installed = INSTALLED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if installed.users == 0 {
            let action = SigAction::new(
                SigHandler::Handler(forward),
                SaFlags::SA_RESTART,
                SigSet::empty(),
            );
            installed.previous.clear();
            for signal in FORWARDED_SIGNALS {
                // SAFETY: the handler only loads atomics, calls kill(2) and restores errno,
                // all async-signal-safe.
                match unsafe { sigaction(signal, &action) } {
                    Ok(previous) => installed.previous.push(previous),
                    // Cannot fail for these valid signals; keep the slot order anyway.
                    Err(_) => installed.previous.push(SigAction::new(
                        SigHandler::SigDfl,
                        SaFlags::empty(),
                        SigSet::empty(),
                    )),
                }
            }
        }
        installed.users += 1;
        Forwarding { slot: None }
    }

    /// Starts forwarding to `pid`.
    pub(crate) fn target(&mut self, pid: u32) {
        let Ok(pid) = i32::try_from(pid) else { return };
        for (index, slot) in TARGETS.iter().enumerate() {
            if slot
                .compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                self.slot = Some(index);
                return;
            }
        }
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        if let Some(index) = self.slot {
            TARGETS[index].store(0, Ordering::SeqCst);
        }
        let mut installed = INSTALLED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        installed.users -= 1;
        if installed.users == 0 {
            let previous = std::mem::take(&mut installed.previous);
            for (signal, action) in FORWARDED_SIGNALS.into_iter().zip(previous) {
                // SAFETY: restores the disposition that was in place before the first run.
                let _ = unsafe { sigaction(signal, &action) };
            }
        }
    }
}

/// Signals the `--init` reaper leaves alone (tini's list): synchronous faults, which it could
/// only get from its own bugs, and the terminal's background read/write stops.
const NOT_FORWARDED: [nix::sys::signal::Signal; 9] = {
    use nix::sys::signal::Signal;
    [
        Signal::SIGFPE,
        Signal::SIGILL,
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGABRT,
        Signal::SIGTRAP,
        Signal::SIGSYS,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
    ]
};

/// Names the `--init` reaper `kiln-init` and rewrites its command line in place to
/// `kiln-init -- ARGS...`, so `ps` in the container shows what runs as PID 1 (Docker shows
/// `/sbin/docker-init -- ARGS...`) and not the host path of the kiln binary. The command
/// line memory is the original argv area (`/proc/self/stat` fields 48-49), so a long
/// command is cut to fit; `PR_SET_MM` would lift that limit but needs `CAP_SYS_RESOURCE`,
/// which containers and many hosts lack.
fn retitle(args: &[String]) {
    let _ = nix::sys::prctl::set_name(c"kiln-init");
    let Some((start, end)) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command name in parentheses, which may hold spaces.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // Field 48 (arg_start) is the 46th after the name (fields 1 and 2 come before).
            let start: usize = fields.get(45)?.parse().ok()?;
            let end: usize = fields.get(46)?.parse().ok()?;
            (start != 0 && end > start).then_some((start, end))
        })
    else {
        return;
    };
    let mut title = b"kiln-init\0--\0".to_vec();
    for arg in args {
        title.extend(arg.bytes().filter(|byte| *byte != 0));
        title.push(0);
    }
    let capacity = end - start;
    title.truncate(capacity - 1);
    title.resize(capacity, 0);
    // SAFETY: [start, end) is this process's own argv area on its initial stack (writable
    // memory the kernel set up at execve); this forked process never reads its argv again.
    unsafe { std::ptr::copy_nonoverlapping(title.as_ptr(), start as *mut u8, capacity) };
}

/// `--init`, in the container's PID 1 once it is confined: forks; the child (PID 2) runs
/// `exec` in a process group of its own (the terminal's foreground group with `tty`, as tini
/// does); this process stays PID 1, forwards every signal but [`NOT_FORWARDED`] and SIGCHLD
/// to the child, reaps every process that ends in the container (orphans are reparented to
/// it) and exits with the child's exit code, or 128 + its signal (tini's convention).
///
/// Returns only an error from `exec` (in the child, which then reports it as usual) or from
/// the fork itself. The reaper closes every fd above 2 (the setup error pipe included, so the
/// init sees the command's `execve` succeed or fail through the child's copy) and is not
/// dumpable, so the container cannot open its `/proc/1/exe` or `/proc/1/mem`.
pub(crate) fn run_as_init(
    tty: bool,
    args: &[String],
    exec: impl FnOnce() -> Result<std::convert::Infallible, crate::error::ContainerError>,
) -> Result<std::convert::Infallible, crate::error::ContainerError> {
    use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
    use nix::unistd::{ForkResult, fork};

    use crate::error::ContainerError;

    let mut forwarded = SigSet::all();
    for signal in NOT_FORWARDED {
        forwarded.remove(signal);
    }
    let mut previous = SigSet::empty();
    // Blocked before the fork, so a signal that arrives before the wait loop is not lost.
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&forwarded), Some(&mut previous))
        .map_err(|errno| ContainerError::setup("blocking signals for --init", errno))?;
    // Before the fork, so the command (which may be `ps`) never sees the old title; the
    // child's copy of the title is gone with its `execve`.
    retitle(args);
    // SAFETY: the container's PID 1 is single-threaded (the init checked it before forking
    // it), so the child may run any code.
    match unsafe { fork() } {
        Err(errno) => Err(ContainerError::setup("fork for --init", errno)),
        Ok(ForkResult::Child) => {
            // SAFETY: integer-only calls on this process and its terminal.
            unsafe {
                libc::setpgid(0, 0);
                if tty {
                    // SIGTTOU is still blocked here, so a background group may do this.
                    libc::tcsetpgrp(0, libc::getpgrp());
                }
            }
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&previous), None)
                .map_err(|errno| ContainerError::setup("unblocking signals", errno))?;
            exec()
        }
        Ok(ForkResult::Parent { child }) => reap(child.as_raw(), &forwarded),
    }
}

#[allow(
    clippy::exit,
    reason = "the --init reaper is the container's PID 1: its exit status is the container's"
)]
fn reap(child: libc::pid_t, forwarded: &nix::sys::signal::SigSet) -> ! {
    // SAFETY: close_range closes fds this process owns and no longer uses (it never returns
    // to the code that owned them); the standard streams stay.
    let closed = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
    if closed != 0 {
        for fd in 3..4096 {
            // SAFETY: as above; closing an fd that is not open fails harmlessly.
            unsafe { libc::close(fd) };
        }
    }
    // SAFETY: integer-only prctl.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong) };
    loop {
        // SAFETY: siginfo_t is plain old data; sigwaitinfo fills it for the call.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `forwarded` is a valid, initialised sigset for the duration of the call.
        let signal = unsafe { libc::sigwaitinfo(forwarded.as_ref(), &mut info) };
        if signal < 0 {
            continue;
        }
        if signal != libc::SIGCHLD {
            // SAFETY: integer-only kill; ESRCH (the child is gone) is fine.
            unsafe { libc::kill(child, signal) };
            continue;
        }
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid writes one int, which lives for the call.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == child {
                let code = if libc::WIFSIGNALED(status) {
                    128 + libc::WTERMSIG(status)
                } else {
                    libc::WEXITSTATUS(status)
                };
                // SAFETY: _exit ends this forked process without running handlers that
                // belong to the kiln process it was copied from.
                unsafe { libc::_exit(code) };
            }
        }
    }
}
