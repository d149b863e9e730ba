//! Process plumbing for detached containers: starting the monitor in a session of its own,
//! signalling a running container, waiting for a process that is not our child.
//!
//! Knows nothing about the store or the monitor's job (logs, state): the CLI owns those. A
//! signal for a container goes straight to its PID 1 (found through its cgroup), not through
//! the monitor, so every signal works, SIGKILL included, and the monitor sees the container
//! end as it would any exit.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
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

/// Sends `signal` to the PID 1 of running container `id`, then thaws the container if it is
/// paused (as Docker does), so the signal takes effect. `Ok(false)`: the container is not
/// running. As for any PID 1 of a PID namespace, a signal it has no handler for is ignored,
/// except SIGKILL and SIGSTOP (Docker behaves the same: `stop` then waits and kills).
pub fn signal_container(id: &str, signal: i32) -> Result<bool, Errno> {
    let signal = Signal::try_from(signal)?;
    let Some(pid) = crate::cgroup::container_pid(id) else {
        return Ok(false);
    };
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) => {
            // A paused container acts on the signal once thawed; Docker resumes it too.
            crate::control::thaw_container(id);
            Ok(true)
        }
        Err(Errno::ESRCH) => Ok(false),
        Err(errno) => Err(errno),
    }
}

/// Whether process `pid` is alive. A zombie (ended, not reaped yet) is not: a killed monitor
/// or `kiln run` is reparented to the host's init, which may take seconds to reap it, and its
/// container is gone all the same.
pub fn process_exists(pid: i32) -> bool {
    if pid <= 0 || matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH)) {
        return false;
    }
    // `/proc/<pid>/stat`: `pid (comm) state ...`; comm may hold spaces and parentheses, so the
    // state is the first field after the last `)`.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next()),
            Some("Z" | "X")
        ),
        // Gone between the two looks, or no /proc: trust the signal check.
        Err(error) => error.kind() != std::io::ErrorKind::NotFound,
    }
}

/// When process `pid` started, in clock ticks after boot (`/proc/<pid>/stat` field 22): with
/// the pid, it names one process for as long as the system runs. None when there is no such
/// process.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after `comm` start with field 3 (state); starttime is field 22.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Whether `pid` is alive ([`process_exists`]) and is still the process that started at
/// `start` ([`process_start_time`]; 0 skips that check), not a later one given a reused pid.
pub fn process_alive_since(pid: i32, start: u64) -> bool {
    process_exists(pid) && (start == 0 || process_start_time(pid) == Some(start))
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

/// The streams of an attach connection (first byte of each frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AttachStream {
    /// Client to monitor: input for the container.
    Stdin = 0,
    /// Monitor to client: the container's stdout (or its terminal, with `-t`).
    Stdout = 1,
    /// Monitor to client: the container's stderr.
    Stderr = 2,
    /// Monitor to client: the container ended; payload its exit code (i32, big-endian).
    Exit = 3,
    /// Client to monitor: the client's terminal size (rows, cols as u16, big-endian).
    Resize = 4,
}

/// Frames on the attach socket: stream byte, payload length (u32, big-endian), payload.
/// Docker's stdcopy framing, with two more streams (exit, resize).
fn write_frame(
    mut writer: impl std::io::Write,
    stream: AttachStream,
    payload: &[u8],
) -> std::io::Result<()> {
    let length = u32::try_from(payload.len()).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(stream as u8);
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(payload);
    writer.write_all(&frame)
}

/// The next frame; `None` at end of file. A frame larger than 1 MiB or of an unknown stream
/// is an error (a confused or hostile peer).
fn read_frame(mut reader: impl std::io::Read) -> std::io::Result<Option<(AttachStream, Vec<u8>)>> {
    let mut header = [0u8; 5];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let stream = match header[0] {
        0 => AttachStream::Stdin,
        1 => AttachStream::Stdout,
        2 => AttachStream::Stderr,
        3 => AttachStream::Exit,
        4 => AttachStream::Resize,
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unknown attach stream {other}"),
            ));
        }
    };
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if length > 1 << 20 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "attach frame too large",
        ));
    }
    let mut payload = vec![0u8; length];
    reader.read_exact(&mut payload)?;
    Ok(Some((stream, payload)))
}

#[derive(Debug, Default)]
struct Shared {
    clients: Mutex<Vec<UnixStream>>,
    /// Where client input goes: the container's stdin pipe or terminal master.
    input: Mutex<Option<Arc<OwnedFd>>>,
    /// The container's terminal master, for resizes.
    terminal: Mutex<Option<Arc<OwnedFd>>>,
    /// Close the input when a client's input ends (Docker's `StdinOnce`).
    stdin_once: std::sync::atomic::AtomicBool,
    connected: Condvar,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The monitor's side of `attach`: a unix socket (mode 0600) in the container directory that
/// any number of clients connect to. Each gets the container's output from the moment it
/// connects (framed, see [`AttachStream`]) and the exit code when the container ends; what
/// clients send as [`AttachStream::Stdin`] goes to the current input, if any.
///
/// Threads: one accepting connections and one per client reading its input, for the life of
/// the process (a monitor ends with its container). Writes to a client that does not read
/// for 5 s drop that client, so a stuck client never stalls the container's output.
#[derive(Debug, Clone)]
pub struct AttachServer {
    shared: Arc<Shared>,
}

impl AttachServer {
    /// Listens on `path`, replacing a stale socket left there by an earlier monitor.
    pub fn listen(path: &Path) -> std::io::Result<AttachServer> {
        match std::fs::remove_file(path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            Ok(()) | Err(_) => {}
        }
        let listener = {
            let (_dir, short) = socket_path(path)?;
            UnixListener::bind(&short)?
        };
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let server = AttachServer {
            shared: Arc::new(Shared::default()),
        };
        let shared = Arc::clone(&server.shared);
        std::thread::spawn(move || {
            for connection in listener.incoming() {
                let Ok(connection) = connection else { continue };
                let _ = connection.set_write_timeout(Some(Duration::from_secs(5)));
                let Ok(reader) = connection.try_clone() else {
                    continue;
                };
                lock(&shared.clients).push(connection);
                shared.connected.notify_all();
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || serve_input(&shared, reader));
            }
        });
        Ok(server)
    }

    /// Sets where client input goes (`None`: discarded) and the terminal that resizes apply to.
    pub fn set_target(&self, input: Option<OwnedFd>, terminal: Option<OwnedFd>) {
        *lock(&self.shared.input) = input.map(Arc::new);
        *lock(&self.shared.terminal) = terminal.map(Arc::new);
    }

    /// With `once` (Docker's `StdinOnce`), the end of a client's input (an empty
    /// [`AttachStream::Stdin`] frame) closes the input, so the container reads end of file.
    pub fn set_stdin_once(&self, once: bool) {
        self.shared
            .stdin_once
            .store(once, std::sync::atomic::Ordering::SeqCst);
    }

    /// Sends output to every client.
    pub fn send(&self, stream: AttachStream, bytes: &[u8]) {
        lock(&self.shared.clients)
            .retain(|mut client| write_frame(&mut client, stream, bytes).is_ok());
    }

    /// Tells every client the container ended with `code`, disconnects them and drops the
    /// input target.
    pub fn end(&self, code: i32) {
        let clients = std::mem::take(&mut *lock(&self.shared.clients));
        for mut client in clients {
            let _ = write_frame(&mut client, AttachStream::Exit, &code.to_be_bytes());
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
        self.set_target(None, None);
    }

    /// Waits until at least one client is connected, at most `timeout`. Returns whether one is.
    pub fn wait_for_client(&self, timeout: Duration) -> bool {
        let clients = lock(&self.shared.clients);
        let (clients, _) = self
            .shared
            .connected
            .wait_timeout_while(clients, timeout, |clients| clients.is_empty())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        !clients.is_empty()
    }
}

fn serve_input(shared: &Shared, mut reader: UnixStream) {
    while let Ok(Some((stream, payload))) = read_frame(&mut reader) {
        match stream {
            AttachStream::Stdin
                if payload.is_empty()
                    && shared.stdin_once.load(std::sync::atomic::Ordering::SeqCst) =>
            {
                lock(&shared.input).take();
            }
            AttachStream::Stdin => {
                let input = lock(&shared.input).clone();
                if let Some(input) = input {
                    let _ = crate::pty::write_all(input.as_fd(), &payload);
                }
            }
            AttachStream::Resize if payload.len() == 4 => {
                let terminal = lock(&shared.terminal).clone();
                if let Some(terminal) = terminal {
                    let size = crate::pty::WindowSize {
                        rows: u16::from_be_bytes([payload[0], payload[1]]),
                        cols: u16::from_be_bytes([payload[2], payload[3]]),
                    };
                    let _ = crate::pty::set_window_size(terminal.as_fd(), size);
                }
            }
            AttachStream::Resize
            | AttachStream::Stdout
            | AttachStream::Stderr
            | AttachStream::Exit => {}
        }
    }
}

/// Docker's `--detach-keys`: comma-separated keys, each one character or `ctrl-X` (X a
/// letter or one of `@[\]^_`). `None` for a value Docker would refuse.
pub fn parse_detach_keys(text: &str) -> Option<Vec<u8>> {
    text.split(',')
        .map(|key| {
            let lower = key.to_ascii_lowercase();
            match lower.strip_prefix("ctrl-") {
                Some(rest) if rest.len() == 1 => {
                    let byte = rest.as_bytes()[0];
                    match byte {
                        b'a'..=b'z' => Some(byte - b'a' + 1),
                        b'@' => Some(0),
                        b'[' => Some(27),
                        b'\\' => Some(28),
                        b']' => Some(29),
                        b'^' => Some(30),
                        b'_' => Some(31),
                        _ => None,
                    }
                }
                Some(_) => None,
                None if key.len() == 1 => Some(key.as_bytes()[0]),
                None => None,
            }
        })
        .collect()
}

/// The client side of an attach: which streams and how.
#[derive(Debug)]
pub struct AttachOptions {
    /// The caller's input, sent to the container (`None`: `--no-stdin`). Put in raw mode
    /// while attached when it is a terminal and `tty` is set.
    pub input: Option<OwnedFd>,
    /// Receives the container's stdout (everything, with a terminal).
    pub output: OwnedFd,
    /// Receives the container's stderr.
    pub error: OwnedFd,
    /// The container has a terminal: raw mode, resizes, detach keys.
    pub tty: bool,
    /// The detach sequence (Docker honours it only with a terminal; so does kiln).
    pub detach_keys: Vec<u8>,
    /// `--sig-proxy` without a terminal: SIGINT, SIGTERM, SIGHUP and SIGQUIT received while
    /// attached go to this host pid (the container's PID 1).
    pub proxy_signals_to: Option<i32>,
}

/// How an attach ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachEnd {
    /// The container ended with this exit code.
    Exited(i32),
    /// The user typed the detach keys; the container goes on.
    Detached,
    /// The monitor closed the connection without an exit code (it was killed).
    Lost,
}

/// Connects to the attach socket at `path` (see [`AttachServer`]).
pub fn connect_attach(path: &Path) -> std::io::Result<UnixStream> {
    let (_dir, short) = socket_path(path)?;
    UnixStream::connect(short)
}

/// A unix socket path must fit in 108 bytes; a longer one is reached through an fd of its
/// directory (`/proc/self/fd/N/NAME`), which must stay open while the path is used.
fn socket_path(path: &Path) -> std::io::Result<(Option<OwnedFd>, std::path::PathBuf)> {
    if path.as_os_str().len() < 100 {
        return Ok((None, path.to_path_buf()));
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok((None, path.to_path_buf()));
    };
    let dir = nix::fcntl::open(
        parent,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let short = Path::new("/proc/self/fd")
        .join(std::os::fd::AsRawFd::as_raw_fd(&dir).to_string())
        .join(name);
    Ok((Some(dir), short))
}

/// Streams between `connection` and the caller's streams until the container ends, the user
/// detaches, or the monitor goes away. The input terminal's mode is restored on every path.
pub fn attach(connection: UnixStream, options: AttachOptions) -> std::io::Result<AttachEnd> {
    let raw = match (&options.input, options.tty) {
        (Some(input), true) => crate::pty::RawMode::enable(input.as_fd()).ok(),
        _ => None,
    };
    let mut forwarding = None;
    if let Some(pid) = options.proxy_signals_to.filter(|_| !options.tty) {
        let mut installed = crate::forward::Forwarding::install();
        installed.target(pid as u32);
        forwarding = Some(installed);
    }
    let (stop_read, stop) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let stop_read = Arc::new(stop_read);
    let detached = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    if options.tty {
        let size_source = [
            Some(options.output.as_fd()),
            options.input.as_ref().map(AsFd::as_fd),
        ]
        .into_iter()
        .flatten()
        .find(|fd| crate::pty::window_size(*fd).is_some())
        .and_then(|fd| fd.try_clone_to_owned().ok());
        if let Some(source) = size_source {
            let send_size = |connection: &UnixStream, size: crate::pty::WindowSize| {
                let mut payload = size.rows.to_be_bytes().to_vec();
                payload.extend_from_slice(&size.cols.to_be_bytes());
                let _ = write_frame(connection, AttachStream::Resize, &payload);
            };
            if let Some(size) = crate::pty::window_size(source.as_fd()) {
                send_size(&connection, size);
            }
            let resizer = connection.try_clone()?;
            if let Some(thread) =
                crate::pty::follow_window_size(source, Arc::clone(&stop_read), move |size| {
                    send_size(&resizer, size)
                })
            {
                threads.push(thread);
            }
        }
    }
    if let Some(input) = options.input {
        let sender = connection.try_clone()?;
        let keys = if options.tty {
            options.detach_keys.clone()
        } else {
            Vec::new()
        };
        let stop_read = Arc::clone(&stop_read);
        let detached = Arc::clone(&detached);
        threads.push(std::thread::spawn(move || {
            send_input(&input, &sender, &keys, &stop_read, &detached);
        }));
    }
    let mut end = AttachEnd::Lost;
    let mut reader = std::io::BufReader::new(connection.try_clone()?);
    while let Ok(Some((stream, payload))) = read_frame(&mut reader) {
        match stream {
            AttachStream::Stdout => {
                let _ = crate::pty::write_all(options.output.as_fd(), &payload);
            }
            AttachStream::Stderr => {
                let _ = crate::pty::write_all(options.error.as_fd(), &payload);
            }
            AttachStream::Exit => {
                let code = payload.get(..4).map_or(0, |bytes| {
                    i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
                });
                end = AttachEnd::Exited(code);
                break;
            }
            AttachStream::Stdin | AttachStream::Resize => {}
        }
    }
    if detached.load(std::sync::atomic::Ordering::SeqCst) {
        end = AttachEnd::Detached;
    }
    let _ = nix::unistd::write(&stop, b"s");
    let _ = connection.shutdown(std::net::Shutdown::Both);
    for thread in threads {
        let _ = thread.join();
    }
    drop(forwarding);
    drop(raw);
    Ok(end)
}

/// Copies `input` to the connection as stdin frames until end of file or `stop`; the detach
/// sequence `keys` (when not empty) ends the attach instead of being sent, and a partial
/// match is sent once it stops matching (Docker's escape proxy).
fn send_input(
    input: &OwnedFd,
    connection: &UnixStream,
    keys: &[u8],
    stop: &OwnedFd,
    detached: &std::sync::atomic::AtomicBool,
) {
    let mut buffer = [0u8; 4096];
    let mut matched = 0;
    while crate::pty::wait_readable(input.as_fd(), stop.as_fd()) {
        let count = match nix::unistd::read(input, &mut buffer) {
            Ok(0) => break,
            Ok(count) => count,
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(_) => break,
        };
        let mut out = Vec::with_capacity(count);
        for &byte in &buffer[..count] {
            if !keys.is_empty() && byte == keys[matched] {
                matched += 1;
                if matched == keys.len() {
                    if !out.is_empty() {
                        let _ = write_frame(connection, AttachStream::Stdin, &out);
                    }
                    detached.store(true, std::sync::atomic::Ordering::SeqCst);
                    let _ = connection.shutdown(std::net::Shutdown::Both);
                    return;
                }
                continue;
            }
            out.extend_from_slice(&keys[..matched]);
            matched = 0;
            out.push(byte);
        }
        if !out.is_empty() && write_frame(connection, AttachStream::Stdin, &out).is_err() {
            return;
        }
    }
    // End of input: an empty frame says so (the monitor closes the container's stdin only
    // for a StdinOnce container, as Docker does).
    let _ = write_frame(connection, AttachStream::Stdin, &[]);
    let _ = connection.shutdown(std::net::Shutdown::Write);
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
    fn detach_keys_take_dockers_syntax() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q"), Some(vec![16, 17]));
        assert_eq!(
            parse_detach_keys("a,ctrl-@,ctrl-["),
            Some(vec![b'a', 0, 27])
        );
        assert_eq!(parse_detach_keys("ctrl-1"), None);
        assert_eq!(parse_detach_keys("shift-a"), None);
    }

    #[test]
    fn frames_round_trip_and_refuse_unknown_streams() {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, AttachStream::Stderr, b"oops").unwrap();
        write_frame(&mut bytes, AttachStream::Exit, &3i32.to_be_bytes()).unwrap();
        let mut reader = bytes.as_slice();
        let (stream, payload) = read_frame(&mut reader).unwrap().unwrap();
        assert_eq!(
            (stream, payload.as_slice()),
            (AttachStream::Stderr, &b"oops"[..])
        );
        let (stream, payload) = read_frame(&mut reader).unwrap().unwrap();
        assert_eq!((stream, payload), (AttachStream::Exit, vec![0, 0, 0, 3]));
        assert!(read_frame(&mut reader).unwrap().is_none());
        assert!(read_frame(&[9u8, 0, 0, 0, 0][..]).is_err());
    }

    #[test]
    fn attach_gets_output_sends_input_and_ends_with_the_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attach.sock");
        let server = AttachServer::listen(&path).unwrap();
        let (input_read, input_write) = nix::unistd::pipe().unwrap();
        server.set_target(Some(input_write), None);
        let (client_in, client_in_write) = nix::unistd::pipe().unwrap();
        let (output_read, output) = nix::unistd::pipe().unwrap();
        let (_error_read, error) = nix::unistd::pipe().unwrap();
        let connection = connect_attach(&path).unwrap();
        assert!(server.wait_for_client(Duration::from_secs(5)));
        let client = std::thread::spawn(move || {
            attach(
                connection,
                AttachOptions {
                    input: Some(client_in),
                    output,
                    error,
                    tty: false,
                    detach_keys: vec![16, 17],
                    proxy_signals_to: None,
                },
            )
        });
        crate::pty::write_all(client_in_write.as_fd(), b"typed").unwrap();
        let mut received = [0u8; 5];
        let mut file = std::fs::File::from(input_read);
        std::io::Read::read_exact(&mut file, &mut received).unwrap();
        assert_eq!(&received, b"typed");
        server.send(AttachStream::Stdout, b"shown");
        let mut shown = [0u8; 5];
        let mut output_file = std::fs::File::from(output_read);
        std::io::Read::read_exact(&mut output_file, &mut shown).unwrap();
        assert_eq!(&shown, b"shown");
        server.end(7);
        assert_eq!(client.join().unwrap().unwrap(), AttachEnd::Exited(7));
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

    #[test]
    fn a_reused_pid_is_not_the_process_that_started_earlier() {
        let me = std::process::id() as i32;
        let start = process_start_time(me).unwrap();
        assert!(process_alive_since(me, start));
        assert!(process_alive_since(me, 0));
        assert!(!process_alive_since(me, start + 1));
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let child_start = process_start_time(child.id() as i32).unwrap();
        assert!(child_start >= start);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(process_start_time(child.id() as i32), None);
    }

    #[test]
    fn a_zombie_does_not_count_as_alive() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        assert!(wait_for_exit(pid, Some(Duration::from_secs(5))));
        // Exited but not reaped yet: a zombie.
        assert!(
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap()
                .contains(") Z ")
        );
        assert!(!process_exists(pid));
        child.wait().unwrap();
        assert!(process_exists(std::process::id() as i32));
    }
}
