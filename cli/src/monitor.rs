//! The monitor of a detached container: kiln re-executed as `__kiln-monitor STORE ID` by
//! `run -d` and `start`, in a session of its own with stdio on `/dev/null` (stdout is a pipe
//! to the starting CLI until the container is recorded as running).
//!
//! It reads the container's sandbox spec (`spec.json`, written by `run -d`), runs the
//! container with stdout and stderr on pipes, and writes each line to the json-file log as
//! Docker does. Once the command was executed it records the container as running (`Pid` the
//! container's PID 1, `MonitorPid` its own) and prints `ready`; if setup fails first (command
//! not found: 127...) it prints `error CODE MESSAGE` instead. The CLI waits for that line, so
//! a `ps` right after `run -d` sees the container up and `run -d` reports setup errors with
//! Docker's exit codes. At the end it records the exit (code, OOM kill, time); with `--rm` it
//! removes the container instead.
//!
//! Signals: `stop` and `kill` signal the container's PID 1 directly (found through its
//! cgroup); SIGINT/SIGTERM/SIGHUP/SIGQUIT sent to the monitor are forwarded by
//! `kiln_runtime::run`. If the monitor is killed, the container dies with it (parent-death
//! signals) and `ps` shows it exited (137) once the monitor's pid is gone.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};

use kiln_cache::container::{ContainerState, LogEntry, LogStream, Status};
use kiln_cache::store::Store;
use kiln_runtime::{Io, Spec};

use crate::{INIT_MARKER, output};

/// The hidden first argument with which kiln re-executes itself as a container's monitor.
pub const MONITOR_MARKER: &str = "__kiln-monitor";

/// The sandbox spec of a detached container, in its directory: `start` reuses it.
pub const SPEC_FILE: &str = "spec.json";

/// The line the monitor prints once the container is recorded as running.
pub const READY: &str = "ready\n";

/// How the start of a detached container failed, as its monitor reports it to the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    /// Docker's exit code for it (125, 126, 127).
    pub code: i32,
    pub message: String,
}

impl StartFailure {
    /// The line the monitor prints for it.
    fn line(&self) -> String {
        format!("error {} {}\n", self.code, self.message.replace('\n', " "))
    }

    /// Reads what the monitor printed: `Ok` for [`READY`]; a monitor that printed nothing
    /// died before it could say why.
    pub fn from_line(line: &str) -> Result<(), StartFailure> {
        if line == READY {
            return Ok(());
        }
        let parsed = line
            .trim_end()
            .strip_prefix("error ")
            .and_then(|rest| rest.split_once(' '))
            .and_then(|(code, message)| Some((code.parse().ok()?, message)));
        Err(match parsed {
            Some((code, message)) => StartFailure {
                code,
                message: message.to_string(),
            },
            None => StartFailure {
                code: 125,
                message: "the container monitor ended before starting the container".into(),
            },
        })
    }
}

/// Entry of the monitor process (`args`: the program's arguments after the marker).
pub fn main(args: &[OsString]) -> ExitCode {
    let [root, id] = args else {
        return ExitCode::from(125);
    };
    let Some(id) = id.to_str() else {
        return ExitCode::from(125);
    };
    match supervise(PathBuf::from(root), id) {
        Ok(()) => ExitCode::SUCCESS,
        Err(()) => ExitCode::from(125),
    }
}

fn supervise(root: PathBuf, id: &str) -> Result<(), ()> {
    let store = Store::open(&root).map_err(drop)?;
    let record = store.container(id).map_err(drop)?;
    let log_path = store.container_log_path(&record.id);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(drop)?;
    let log = Arc::new(Mutex::new(log));
    let fail = |code: i32, message: String| {
        append(
            &log,
            &LogEntry::now(LogStream::Stderr, format!("kiln: {message}\n")),
        );
        output::out(&StartFailure { code, message }.line());
    };
    let spec: Spec = match std::fs::read(store.container_dir(&record.id).join(SPEC_FILE))
        .map_err(|error| error.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|error| error.to_string()))
    {
        Ok(spec) => spec,
        Err(message) => {
            fail(125, format!("reading the container's spec: {message}"));
            return Err(());
        }
    };
    let program = std::env::current_exe().map_err(drop)?;
    let pipes = std::io::pipe().and_then(|out| Ok((out, std::io::pipe()?)));
    let ((out_read, out_write), (err_read, err_write)) = match pipes {
        Ok(pipes) => pipes,
        Err(error) => {
            fail(125, format!("creating the log pipes: {error}"));
            return Err(());
        }
    };
    let copiers = [
        copy_lines(out_read, LogStream::Stdout, Arc::clone(&log)),
        copy_lines(err_read, LogStream::Stderr, Arc::clone(&log)),
    ];
    let io = Io {
        stdin: Stdio::null(),
        stdout: out_write.into(),
        stderr: err_write.into(),
    };
    let mut running = None;
    let result = kiln_runtime::run_notifying(&spec, &program, &[INIT_MARKER], io, &mut |pid| {
        let state = ContainerState {
            status: Status::Running,
            pid,
            monitor_pid: std::process::id() as i32,
            started_at: Some(kiln_cache::import::creation_time()),
            ..ContainerState::default()
        };
        let _ = store.set_container_state(&record.id, &state);
        running = Some(state);
        output::out(READY);
    });
    for copier in copiers {
        let _ = copier.join();
    }
    let (code, oom_killed) = match &result {
        Ok(outcome) => (outcome.code(), outcome.oom_killed),
        Err(error) => {
            fail(error.exit_code(), error.to_string());
            (error.exit_code(), false)
        }
    };
    if record.config.auto_remove {
        let _ = kiln_runtime::remove_cgroup(&record.id);
        return store.remove_container(&record.id).map_err(drop);
    }
    let finished = ContainerState {
        status: Status::Exited,
        exit_code: code,
        oom_killed,
        finished_at: Some(kiln_cache::import::creation_time()),
        ..running.unwrap_or_default()
    };
    store
        .set_container_state(&record.id, &finished)
        .map_err(drop)
}

/// Appends one entry; the log is opened with O_APPEND and each entry is one write.
fn append(log: &Mutex<File>, entry: &LogEntry) {
    let mut file = log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let _ = file.write_all(entry.to_line().as_bytes());
}

/// Copies `pipe` to the log line by line until every writer has closed it.
fn copy_lines(
    pipe: impl Read + Send + 'static,
    stream: LogStream,
    log: Arc<Mutex<File>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => append(
                    &log,
                    &LogEntry::now(stream, String::from_utf8_lossy(&line).into_owned()),
                ),
            }
        }
    })
}
