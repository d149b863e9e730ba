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
