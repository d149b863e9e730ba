//! Pseudo-terminals for `-t`: the container side (a pty created inside the container's own
//! devpts and made its PID 1's controlling terminal), handing the master to the caller over a
//! unix socket, and the caller's side for a foreground container ([`run_in_terminal`]: raw
//! mode, window size, SIGWINCH, copying).
//!
//! The pty is created by the container's PID 1 after `pivot_root`, as runc does, so the
//! container sees `/dev/pts/0` and no host devpts. Not here: the monitor's use of the master
//! for detached containers (the CLI's monitor owns it), detach keys for foreground containers.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};
use serde::{Deserialize, Serialize};

use crate::error::{ContainerError, RuntimeError};
use crate::run::Io;
use crate::spec::{Outcome, Spec};

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    /// Lines.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// The size of the terminal `fd` refers to; `None` when it is not a terminal.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<WindowSize> {
    // SAFETY: winsize is plain old data; all-zero is a valid value.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into `size`, which lives for the call.
    let result = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    (result == 0).then_some(WindowSize {
        rows: size.ws_row,
        cols: size.ws_col,
    })
}

/// Sets the size of terminal `fd` (a master or a slave); the kernel sends SIGWINCH to the
/// terminal's foreground process group.
pub fn set_window_size(fd: BorrowedFd<'_>, size: WindowSize) -> std::io::Result<()> {
    let size = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from `size`, which lives for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Both ends of a new pseudo-terminal from the caller's `/dev/ptmx` (close-on-exec, and the
/// slave does not become this process's controlling terminal). For tests and tools that
/// drive a program through a terminal.
pub fn open_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    open_pair_at(Path::new("/dev/ptmx"))
}

fn open_pair_at(ptmx: &Path) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let master = nix::fcntl::open(
        ptmx,
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let mut unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int, which lives for the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &mut unlock) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // TIOCGPTPEER opens the slave through the master's own devpts instance, without a path
    // lookup that a container could redirect (Linux 4.13).
    // SAFETY: integer-only ioctl; returns a new fd or -1.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: TIOCGPTPEER returned a new fd that nothing else owns.
    Ok((master, unsafe { OwnedFd::from_raw_fd(slave) }))
}

/// In the container's PID 1, after `pivot_root`: creates the pty in the container's devpts,
/// sets its initial size, sends the master over `console` to the caller, and makes the slave
/// this process's controlling terminal (new session, `TIOCSCTTY`) and its stdin, stdout and
/// stderr. The slave is owned by `uid` (the command's user), as with Docker.
pub(crate) fn attach_container_terminal(
    console: OwnedFd,
    size: Option<WindowSize>,
    uid: u32,
) -> Result<(), ContainerError> {
    let (master, slave) = open_pair_at(Path::new("/dev/ptmx"))
        .map_err(|error| ContainerError::setup("creating the pseudo-terminal", &error))?;
    if let Some(size) = size {
        set_window_size(master.as_fd(), size)
            .map_err(|error| ContainerError::setup("setting the terminal size", &error))?;
    }
    nix::unistd::fchown(&slave, Some(nix::unistd::Uid::from_raw(uid)), None)
        .map_err(|errno| ContainerError::setup("chown of the terminal", errno))?;
    send_fd(console.as_fd(), master.as_fd())
        .map_err(|errno| ContainerError::setup("handing over the terminal", errno))?;
    drop(master);
    drop(console);
    make_controlling_terminal(slave)
}

/// New session with `slave` as its controlling terminal, on stdin, stdout and stderr.
fn make_controlling_terminal(slave: OwnedFd) -> Result<(), ContainerError> {
    match nix::unistd::setsid() {
        Ok(_) | Err(Errno::EPERM) => {}
        Err(errno) => return Err(ContainerError::setup("setsid", errno)),
    }
    // SAFETY: integer-only ioctl on an fd this process owns.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(ContainerError::setup(
            "making the terminal the controlling terminal",
            Errno::last(),
        ));
    }
    for target in 0..=2 {
        // SAFETY: dup2 onto the standard stream numbers; the old streams are replaced.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(ContainerError::setup(
                "terminal as standard stream",
                Errno::last(),
            ));
        }
    }
    if slave.as_raw_fd() <= 2 {
        // It is now one of the standard streams: keep it open.
        std::mem::forget(slave);
    }
    Ok(())
}

/// Sends `fd` as `SCM_RIGHTS` with one data byte.
pub(crate) fn send_fd(socket: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let fds = [fd.as_raw_fd()];
    let data = [IoSlice::new(b"t")];
    sendmsg::<()>(
        socket.as_raw_fd(),
        &data,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map(drop)
}

/// Receives one fd sent by [`send_fd`] (close-on-exec); `Ok(None)` at end of file.
pub(crate) fn receive_fd(socket: BorrowedFd<'_>) -> Result<Option<OwnedFd>, Errno> {
    let mut byte = [0u8; 1];
    let mut data = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut data,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut received = None;
    for control in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = control {
            for fd in fds {
                // SAFETY: the kernel installed this fd for us with the message; we own it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if received.is_none() {
                    received = Some(owned);
                }
            }
        }
    }
    Ok(received)
}

/// The caller's terminal in raw mode (no echo, no line editing, no signals from keys) until
/// dropped, when the previous settings come back (also on unwinding).
#[derive(Debug)]
pub struct RawMode {
    fd: OwnedFd,
    saved: Termios,
}

impl RawMode {
    /// Puts terminal `fd` in raw mode. Fails when `fd` is not a terminal.
    pub fn enable(fd: BorrowedFd<'_>) -> std::io::Result<RawMode> {
        let fd = fd.try_clone_to_owned()?;
        let saved = tcgetattr(&fd)?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&fd, SetArg::TCSANOW, &raw)?;
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(&self.fd, SetArg::TCSANOW, &self.saved);
    }
}

/// The caller's streams for [`run_in_terminal`].
#[derive(Debug)]
pub struct TerminalStreams {
    /// Copied to the container's terminal (`-i`); put in raw mode while the container runs
    /// when it is a terminal. `None`: the container gets no input.
    pub input: Option<OwnedFd>,
    /// Receives everything the container writes (stdout and stderr merged, as Docker's `-t`).
    /// When it is a terminal, its size is the container's and follows its SIGWINCH.
    pub output: OwnedFd,
}

/// Runs `spec` (which must have [`Spec::tty`]) in the foreground on a pseudo-terminal copied
/// to and from `streams` ([`crate::run`]'s contract otherwise). The input terminal is in raw
/// mode from just before the container starts until this returns, on every path; the
/// container's terminal starts with the output's (or input's) size and follows SIGWINCH.
/// Returns after the container has ended and all its output was copied.
pub fn run_in_terminal(
    spec: &Spec,
    init_program: &Path,
    init_args: &[&str],
    streams: TerminalStreams,
) -> Result<Outcome, RuntimeError> {
    let mut spec = spec.clone();
    spec.tty = true;
    let mut size_source = size_source(&streams);
    if spec.console_size.is_none() {
        spec.console_size = size_source.as_ref().and_then(|fd| window_size(fd.as_fd()));
    }
    let raw = streams
        .input
        .as_ref()
        .and_then(|input| RawMode::enable(input.as_fd()).ok());
    let mut relay = None;
    let mut pending = Some(streams);
    let io = Io {
        stdin: std::process::Stdio::null(),
        stdout: std::process::Stdio::null(),
        stderr: std::process::Stdio::inherit(),
    };
    let result = crate::run::run_started(&spec, init_program, init_args, io, &mut |started| {
        if let (Some(master), Some(streams)) = (started.terminal, pending.take()) {
            relay = Some(Relay::start(master, streams, size_source.take()));
        }
    });
    if let Some(relay) = relay {
        relay.finish();
    }
    drop(raw);
    result
}

/// The terminal whose size the container's terminal takes and follows: the output's, else
/// the input's; `None` when neither is a terminal.
pub(crate) fn size_source(streams: &TerminalStreams) -> Option<OwnedFd> {
    let sized = [
        Some(streams.output.as_fd()),
        streams.input.as_ref().map(AsFd::as_fd),
    ];
    sized
        .into_iter()
        .flatten()
        .find(|fd| window_size(*fd).is_some())
        .and_then(|fd| fd.try_clone_to_owned().ok())
}

/// Write end of the SIGWINCH self-pipe; -1 when no relay listens.
static WINCH_PIPE: AtomicI32 = AtomicI32::new(-1);
static WINCH_HANDLER: OnceLock<()> = OnceLock::new();

extern "C" fn on_winch(_: libc::c_int) {
    let saved = Errno::last_raw();
    let fd = WINCH_PIPE.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; a full pipe just drops the wake-up.
        unsafe { libc::write(fd, b"w".as_ptr().cast(), 1) };
    }
    Errno::set_raw(saved);
}

/// Copies between the caller's streams and a terminal master on threads; see [`run_in_terminal`].
pub(crate) struct Relay {
    output: JoinHandle<()>,
    others: Vec<JoinHandle<()>>,
    /// Written to stop the input and resize threads; `None` when none was started.
    stop: Option<OwnedFd>,
}

impl Relay {
    pub(crate) fn start(
        master: OwnedFd,
        streams: TerminalStreams,
        size_source: Option<OwnedFd>,
    ) -> Relay {
        let mut others = Vec::new();
        // Without a stop pipe (fd exhaustion), only the output is copied.
        let stop = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .ok()
            .map(|(stop_read, stop)| {
                let stop_read = std::sync::Arc::new(stop_read);
                if let (Some(input), Ok(master_in)) = (streams.input, master.try_clone()) {
                    let stop_read = std::sync::Arc::clone(&stop_read);
                    others.push(std::thread::spawn(move || {
                        copy_until_stopped(input.as_fd(), master_in.as_fd(), stop_read.as_fd());
                    }));
                }
                if let (Some(source), Ok(master_size)) = (size_source, master.try_clone()) {
                    let stop_read = std::sync::Arc::clone(&stop_read);
                    let resize = move |size| {
                        let _ = set_window_size(master_size.as_fd(), size);
                    };
                    if let Some(thread) = follow_window_size(source, stop_read, resize) {
                        others.push(thread);
                    }
                }
                stop
            });
        Relay {
            output: spawn_output(master, streams.output),
            others,
            stop,
        }
    }

    /// Waits for the output to be copied (end of file or EIO once the container's last
    /// terminal user is gone), then stops the input and resize threads.
    pub(crate) fn finish(self) {
        let _ = self.output.join();
        if let Some(stop) = &self.stop {
            let _ = nix::unistd::write(stop, b"s");
        }
        for thread in self.others {
            let _ = thread.join();
        }
    }
}

/// Calls `resize` with the size of terminal `source` on every SIGWINCH until `stop` is
/// readable. One follower at a time: a second one takes the signal over.
pub(crate) fn follow_window_size(
    source: OwnedFd,
    stop: std::sync::Arc<OwnedFd>,
    mut resize: impl FnMut(WindowSize) + Send + 'static,
) -> Option<JoinHandle<()>> {
    let (winch_read, winch_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).ok()?;
    WINCH_HANDLER.get_or_init(|| {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
        let action = SigAction::new(
            SigHandler::Handler(on_winch),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: the handler only loads an atomic, writes to a pipe and restores errno,
        // all async-signal-safe.
        let _ = unsafe { sigaction(nix::sys::signal::SIGWINCH, &action) };
    });
    WINCH_PIPE.store(winch_write.as_raw_fd(), Ordering::SeqCst);
    Some(std::thread::spawn(move || {
        let mut bytes = [0u8; 64];
        while wait_readable(winch_read.as_fd(), stop.as_fd()) {
            let _ = nix::unistd::read(&winch_read, &mut bytes);
            if let Some(size) = window_size(source.as_fd()) {
                resize(size);
            }
        }
        let _ = WINCH_PIPE.compare_exchange(
            winch_write.as_raw_fd(),
            -1,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        drop(winch_write);
    }))
}

fn spawn_output(master: OwnedFd, output: OwnedFd) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        loop {
            match nix::unistd::read(&master, &mut buffer) {
                Ok(0) => return,
                Ok(count) => {
                    if write_all(output.as_fd(), &buffer[..count]).is_err() {
                        return;
                    }
                }
                Err(Errno::EINTR) => {}
                // EIO: the slave side was closed by its last user.
                Err(_) => return,
            }
        }
    })
}

/// Writes all of `bytes` to `fd`.
pub(crate) fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> Result<(), Errno> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(0) => return Err(Errno::EPIPE),
            Ok(written) => bytes = &bytes[written..],
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno),
        }
    }
    Ok(())
}

/// Whether `fd` became readable before `stop` did.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, stop: BorrowedFd<'_>) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        let mut fds = [
            PollFd::new(fd, PollFlags::POLLIN),
            PollFd::new(stop, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                let stopped = fds[1].revents().is_some_and(|events| !events.is_empty());
                let ready = fds[0].revents().is_some_and(|events| !events.is_empty());
                return ready && !stopped;
            }
            Err(Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
}

fn copy_until_stopped(from: BorrowedFd<'_>, to: BorrowedFd<'_>, stop: BorrowedFd<'_>) {
    let mut buffer = [0u8; 8192];
    while wait_readable(from, stop) {
        match nix::unistd::read(from, &mut buffer) {
            Ok(0) => return,
            Ok(count) => {
                if write_all(to, &buffer[..count]).is_err() {
                    return;
                }
            }
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_carries_bytes_and_its_size() {
        let (master, slave) = open_pair().unwrap();
        let size = WindowSize {
            rows: 33,
            cols: 101,
        };
        set_window_size(master.as_fd(), size).unwrap();
        assert_eq!(window_size(slave.as_fd()), Some(size));
        write_all(master.as_fd(), b"hi\n").unwrap();
        let mut buffer = [0u8; 16];
        let count = nix::unistd::read(&slave, &mut buffer).unwrap();
        assert_eq!(&buffer[..count], b"hi\n");
    }

    #[test]
    fn raw_mode_is_restored_when_dropped() {
        let (_master, slave) = open_pair().unwrap();
        let before = tcgetattr(&slave).unwrap();
        {
            let _raw = RawMode::enable(slave.as_fd()).unwrap();
            let during = tcgetattr(&slave).unwrap();
            assert!(
                !during
                    .local_flags
                    .contains(nix::sys::termios::LocalFlags::ECHO)
            );
        }
        let after = tcgetattr(&slave).unwrap();
        assert_eq!(before.local_flags, after.local_flags);
        assert_eq!(before.input_flags, after.input_flags);
    }

    #[test]
    fn fds_cross_a_unix_socket() {
        let (left, right) = std::os::unix::net::UnixStream::pair().unwrap();
        let (master, _slave) = open_pair().unwrap();
        send_fd(left.as_fd(), master.as_fd()).unwrap();
        let received = receive_fd(right.as_fd()).unwrap().unwrap();
        assert!(window_size(received.as_fd()).is_some());
        drop(left);
        assert!(receive_fd(right.as_fd()).unwrap().is_none());
    }
}
