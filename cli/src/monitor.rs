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
//!
//! Supervision (the container's `Supervision` record): with `-t` the container runs on a
//! pseudo-terminal whose master the monitor owns (its output is logged as stdout); with `-i`
//! the container's stdin is a pipe (or the terminal) that stays open. Clients of `attach`
//! and `start -a` connect to `attach.sock` in the container directory (see
//! `kiln_runtime::AttachServer`); with `--wait-for-attach` the monitor prints `listening`
//! and waits for the first client before it starts the container, so no output is missed.
//! The restart policy is applied when the container ends, with Docker's backoff (100 ms,
//! doubling up to 1 minute, back to 100 ms after a run of 10 s or more) and state
//! `restarting` in between; `stop` marks the container stopped by hand first, so it is
//! never restarted after a `stop`. The healthcheck runs from here too (see `health`).

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_cache::container::{
    ContainerRecord, ContainerState, LogEntry, LogStream, RestartPolicy, RestartPolicyName, Status,
    Supervision,
};
use kiln_cache::store::Store;
use kiln_runtime::{AttachServer, AttachStream, Io, Spec};

use crate::{INIT_MARKER, output};

/// The hidden first argument with which kiln re-executes itself as a container's monitor.
pub const MONITOR_MARKER: &str = "__kiln-monitor";

/// The sandbox spec of a detached container, in its directory: `start` reuses it.
pub const SPEC_FILE: &str = "spec.json";

/// The line the monitor prints once the container is recorded as running.
pub const READY: &str = "ready\n";

/// The line the monitor prints, with [`WAIT_FOR_ATTACH`], once clients can connect.
pub const LISTENING: &str = "listening\n";

/// The monitor's optional third argument: wait for an attach client before starting.
pub const WAIT_FOR_ATTACH: &str = "--wait-for-attach";

/// The attach socket in the container directory.
pub const ATTACH_SOCKET: &str = "attach.sock";

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
    let (root, id, wait_for_attach) = match args {
        [root, id] => (root, id, false),
        [root, id, flag] if flag == WAIT_FOR_ATTACH => (root, id, true),
        _ => return ExitCode::from(125),
    };
    let Some(id) = id.to_str() else {
        return ExitCode::from(125);
    };
    match supervise(PathBuf::from(root), id, wait_for_attach) {
        Ok(()) => ExitCode::SUCCESS,
        Err(()) => ExitCode::from(125),
    }
}

/// What every run of the container shares.
struct Monitor {
    store: Store,
    record: ContainerRecord,
    spec: Spec,
    supervision: Supervision,
    program: PathBuf,
    log: Arc<Mutex<File>>,
    server: AttachServer,
    /// The container's last health (kept across its runs, as Docker keeps its log).
    health: Mutex<Option<kiln_cache::container::Health>>,
}

impl Monitor {
    /// Logs a start failure and tells the CLI about it (it waits for one line).
    fn fail(&self, code: i32, message: String) {
        append(
            &self.log,
            &LogEntry::now(LogStream::Stderr, format!("kiln: {message}\n")),
        );
        output::out(&StartFailure { code, message }.line());
    }
}

fn supervise(root: PathBuf, id: &str, wait_for_attach: bool) -> Result<(), ()> {
    let store = Store::open(&root).map_err(drop)?;
    let record = store.container(id).map_err(drop)?;
    let log_path = store.container_log_path(&record.id);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(drop)?;
    let log = Arc::new(Mutex::new(log));
    let dir = store.container_dir(&record.id);
    let early_failure = |message: String| {
        append(
            &log,
            &LogEntry::now(LogStream::Stderr, format!("kiln: {message}\n")),
        );
        output::out(&StartFailure { code: 125, message }.line());
    };
    let spec: Spec = match std::fs::read(dir.join(SPEC_FILE))
        .map_err(|error| error.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|error| error.to_string()))
    {
        Ok(spec) => spec,
        Err(message) => {
            early_failure(format!("reading the container's spec: {message}"));
            return Err(());
        }
    };
    let supervision = match store.container_supervision(&record.id) {
        Ok(supervision) => supervision,
        Err(error) => {
            early_failure(format!("reading the container's settings: {error}"));
            return Err(());
        }
    };
    let server = match AttachServer::listen(&dir.join(ATTACH_SOCKET)) {
        Ok(server) => server,
        Err(error) => {
            early_failure(format!("creating the attach socket: {error}"));
            return Err(());
        }
    };
    let program = std::env::current_exe().map_err(drop)?;
    let health = Mutex::new(record.state.health.clone());
    let monitor = Monitor {
        store,
        record,
        spec,
        supervision,
        program,
        log,
        server,
        health,
    };
    monitor
        .server
        .set_stdin_once(monitor.supervision.stdin_once);
    if wait_for_attach {
        output::out(LISTENING);
        monitor.server.wait_for_client(Duration::from_secs(10));
    }
    restart_loop(&monitor)
}

/// When this process started (see [`ContainerState::supervisor_start`]); 0 if unknown.
pub(crate) fn own_start_time() -> u64 {
    kiln_runtime::process_start_time(std::process::id() as i32).unwrap_or(0)
}

/// Runs the container until it ends for good: once, or again and again as its restart
/// policy says.
fn restart_loop(monitor: &Monitor) -> Result<(), ()> {
    let id = &monitor.record.id;
    let store = &monitor.store;
    let mut restarts = Restarts::default();
    let mut first = true;
    loop {
        let began = Instant::now();
        let (result, running) = run_once(monitor, restarts.count, first);
        // A first start that fails is reported to `run -d`/`start` once the failure is
        // recorded (or the `--rm` container removed), so their next command sees it.
        let mut start_failure = None;
        let (code, oom_killed) = match &result {
            Ok(outcome) => (outcome.code(), outcome.oom_killed),
            Err(error) if first => {
                start_failure = Some((error.exit_code(), error.to_string()));
                (error.exit_code(), false)
            }
            Err(error) => {
                append(
                    &monitor.log,
                    &LogEntry::now(LogStream::Stderr, format!("kiln: {error}\n")),
                );
                (error.exit_code(), false)
            }
        };
        // Attached clients (`attach`, `start -a`) hear of the exit only once it is recorded,
        // so the command they run next (`rm`, `ps`, `inspect`) sees the container exited.
        let report = |monitor: &Monitor| {
            if let Some((code, message)) = start_failure.clone() {
                monitor.fail(code, message);
            }
            monitor.server.end(code);
        };
        if monitor.record.config.auto_remove {
            let _ = kiln_runtime::remove_cgroup(id);
            let removed = store.remove_container(id).map_err(drop);
            report(monitor);
            return removed;
        }
        // A container that never started is not restarted (Docker: the start fails).
        let never_started = first && running.is_none();
        let restart = !never_started
            && !store.container_stopped_by_hand(id)
            && restarts.should_restart(monitor.supervision.restart_policy, code);
        let previous = running.unwrap_or_else(|| ContainerState {
            monitor_pid: std::process::id() as i32,
            supervisor_start: own_start_time(),
            ..ContainerState::default()
        });
        let mut ended = ContainerState {
            status: Status::Exited,
            exit_code: code,
            oom_killed,
            finished_at: Some(kiln_cache::import::creation_time()),
            ..previous
        };
        if !restart {
            let recorded = store.set_container_state(id, &ended).map_err(drop);
            report(monitor);
            return recorded;
        }
        let delay = restarts.next(began.elapsed());
        ended.status = Status::Restarting;
        ended.restart_count = restarts.count;
        let _ = store.set_container_state(id, &ended);
        report(monitor);
        if stopped_while_waiting(store, id, delay) {
            ended.status = Status::Exited;
            return store.set_container_state(id, &ended).map_err(drop);
        }
        first = false;
    }
}

/// Waits `delay`; true as soon as the container is stopped by hand meanwhile.
fn stopped_while_waiting(store: &Store, id: &str, delay: Duration) -> bool {
    let deadline = Instant::now() + delay;
    loop {
        if store.container_stopped_by_hand(id) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Docker's restart manager: the count since the last manual start and the backoff.
#[derive(Debug, Default)]
struct Restarts {
    count: u32,
    delay: Duration,
}

impl Restarts {
    /// Whether `policy` restarts a container that ended with `code`.
    fn should_restart(&self, policy: RestartPolicy, code: i32) -> bool {
        match policy.name {
            RestartPolicyName::No => false,
            RestartPolicyName::Always | RestartPolicyName::UnlessStopped => true,
            RestartPolicyName::OnFailure => {
                code != 0
                    && (policy.maximum_retry_count == 0 || self.count < policy.maximum_retry_count)
            }
        }
    }

    /// Counts a restart and returns how long to wait before it: 100 ms, doubled each time up
    /// to a minute, back to 100 ms when the container ran for 10 s or more.
    fn next(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= Duration::from_secs(10) {
            self.delay = Duration::ZERO;
        }
        self.delay = if self.delay.is_zero() {
            Duration::from_millis(100)
        } else {
            (self.delay * 2).min(Duration::from_secs(60))
        };
        self.count += 1;
        self.delay
    }
}

/// One run of the container: its outcome, and its running state if it started.
fn run_once(
    monitor: &Monitor,
    restart_count: u32,
    first: bool,
) -> (
    Result<kiln_runtime::Outcome, kiln_runtime::RuntimeError>,
    Option<ContainerState>,
) {
    let fail = |error: std::io::Error| {
        (
            Err(kiln_runtime::RuntimeError::Init {
                step: "creating the container's stdio",
                program: monitor.program.clone(),
                source: error,
            }),
            None,
        )
    };
    let tty = monitor.spec.tty;
    let open_stdin = monitor.supervision.open_stdin;
    let mut copiers = Vec::new();
    let io = if tty {
        Io {
            stdin: Stdio::null(),
            stdout: Stdio::null(),
            stderr: Stdio::null(),
        }
    } else {
        let pipes = std::io::pipe().and_then(|out| Ok((out, std::io::pipe()?)));
        let ((out_read, out_write), (err_read, err_write)) = match pipes {
            Ok(pipes) => pipes,
            Err(error) => return fail(error),
        };
        let stdin = if open_stdin {
            match std::io::pipe() {
                Ok((read, write)) => {
                    monitor.server.set_target(Some(OwnedFd::from(write)), None);
                    Stdio::from(read)
                }
                Err(error) => return fail(error),
            }
        } else {
            Stdio::null()
        };
        copiers.push(copy_stream(out_read, LogStream::Stdout, monitor));
        copiers.push(copy_stream(err_read, LogStream::Stderr, monitor));
        Io {
            stdin,
            stdout: out_write.into(),
            stderr: err_write.into(),
        }
    };
    let mut running = None;
    let health = health::Checker::new(monitor);
    let result = kiln_runtime::run_started(
        &monitor.spec,
        &monitor.program,
        &[INIT_MARKER],
        io,
        &mut |started| {
            if let Some(master) = started.terminal {
                let input = open_stdin.then(|| master.try_clone().ok()).flatten();
                monitor.server.set_target(input, master.try_clone().ok());
                copiers.push(copy_stream(File::from(master), LogStream::Stdout, monitor));
            }
            let state = ContainerState {
                status: Status::Running,
                pid: started.pid,
                monitor_pid: std::process::id() as i32,
                supervisor_start: own_start_time(),
                started_at: Some(kiln_cache::import::creation_time()),
                restart_count,
                health: health.as_ref().map(health::Checker::initial),
                ..ContainerState::default()
            };
            let _ = monitor
                .store
                .set_container_state(&monitor.record.id, &state);
            if let Some(health) = &health {
                health.start();
            }
            running = Some(state);
            if first {
                output::out(READY);
            }
        },
    );
    if let Some(health) = health {
        let last = health.stop();
        *monitor
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(last.clone());
        if let Some(state) = &mut running {
            state.health = Some(last);
        }
    }
    for copier in copiers {
        let _ = copier.join();
    }
    (result, running)
}

/// The healthcheck of a running container, as Docker's daemon runs it (`daemon/health.go`).
///
/// A thread of the monitor probes the container while it runs: it waits an interval (the
/// start interval while the container is starting within its start period), runs the probe
/// in the container as `exec` does (its namespaces, cgroup, env, user and working directory;
/// `CMD-SHELL` through `/bin/sh -c`) with at most 4096 bytes of combined output kept and the
/// timeout enforced, and records the verdict in the container's `State.Health` (one atomic
/// update of the store, see [`Store::set_container_health`]): exit 0 is healthy, anything
/// else a failure; `retries` failures in a row make it unhealthy, except failures within the
/// start period while no probe has passed yet. The last 5 probes are kept. No probe runs
/// while the container is paused. [`Checker::stop`] ends the thread at once, killing a
/// probe in flight, and the health becomes unhealthy, as Docker's does when its monitor
/// stops.
mod health {
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use kiln_cache::container::{Health, HealthLog, HealthStatus};
    use kiln_cache::image::Healthcheck;
    use kiln_cache::store::Store;
    use kiln_runtime::{Cancel, Capture, Captured, CapturedEnd, ExecSpec};

    use crate::commands::exec::EXEC_MARKER;

    /// Docker's defaults (`daemon/health.go`).
    const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
    const DEFAULT_RETRIES: u32 = 3;
    /// Probes kept in `State.Health.Log`.
    const MAX_LOG_ENTRIES: usize = 5;
    /// Output bytes kept of one probe; more is dropped and `...` appended.
    const MAX_OUTPUT: usize = 4096;

    /// A container's healthcheck with Docker's defaults filled in.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(super) struct Probe {
        /// What runs in the container.
        pub(super) command: Vec<String>,
        pub(super) interval: Duration,
        pub(super) timeout: Duration,
        pub(super) start_period: Duration,
        pub(super) start_interval: Duration,
        pub(super) retries: u32,
    }

    impl Probe {
        /// The probe of `check`; `None` for no check: no test, `NONE`, or a test type other
        /// than `CMD` and `CMD-SHELL` (Docker ignores those too).
        pub(super) fn of(check: &Healthcheck) -> Option<Probe> {
            let (kind, rest) = check.test.split_first()?;
            let command: Vec<String> = match kind.as_str() {
                "CMD" => rest.to_vec(),
                "CMD-SHELL" => ["/bin/sh".to_string(), "-c".to_string()]
                    .into_iter()
                    .chain(rest.iter().cloned())
                    .collect(),
                _ => return None,
            };
            if command.is_empty() {
                return None;
            }
            let duration = |nanos: Option<u64>, default: Duration| match nanos {
                Some(nanos) if nanos > 0 => Duration::from_nanos(nanos),
                _ => default,
            };
            Some(Probe {
                command,
                interval: duration(check.interval, DEFAULT_INTERVAL),
                timeout: duration(check.timeout, DEFAULT_TIMEOUT),
                start_period: duration(check.start_period, Duration::ZERO),
                start_interval: duration(check.start_interval, DEFAULT_START_INTERVAL),
                retries: check
                    .retries
                    .filter(|retries| *retries > 0)
                    .unwrap_or(DEFAULT_RETRIES),
            })
        }

        /// How long to wait before the next probe, `elapsed` after the container started
        /// (Docker's `getInterval`): the interval once the start period is over; within it,
        /// what is left of it when that is shorter than the interval, else the start interval
        /// while the container is starting.
        pub(super) fn next_wait(&self, elapsed: Duration, status: HealthStatus) -> Duration {
            if elapsed >= self.start_period {
                return self.interval;
            }
            let remaining = self.start_period - elapsed;
            if remaining < self.interval {
                return remaining;
            }
            if status == HealthStatus::Starting {
                self.start_interval
            } else {
                self.interval
            }
        }

        /// Adds the verdict of a probe that started `since_start` after the container, as
        /// Docker's `handleProbeResult` does.
        pub(super) fn record(&self, health: &mut Health, entry: HealthLog, since_start: Duration) {
            let passed = entry.exit_code == 0;
            health.log.push(entry);
            let excess = health.log.len().saturating_sub(MAX_LOG_ENTRIES);
            health.log.drain(..excess);
            if passed {
                health.failing_streak = 0;
                health.status = HealthStatus::Healthy;
                return;
            }
            // A failure while starting within the start period does not count.
            if health.status == HealthStatus::Starting && since_start < self.start_period {
                return;
            }
            health.failing_streak += 1;
            if health.failing_streak >= self.retries {
                health.status = HealthStatus::Unhealthy;
            }
        }
    }

    /// Runs the container's healthcheck while it runs.
    pub struct Checker {
        probe: Probe,
        exec: ExecSpec,
        program: PathBuf,
        root: PathBuf,
        id: String,
        cancel: Cancel,
        initial: Health,
        thread: Mutex<Option<JoinHandle<Health>>>,
    }

    impl Checker {
        /// `None` when the container has no healthcheck. The health starts as `starting`
        /// with the log of the previous run kept (Docker's `initHealthMonitor`).
        pub fn new(monitor: &super::Monitor) -> Option<Checker> {
            let probe = Probe::of(monitor.supervision.healthcheck.as_ref()?)?;
            let cancel = match Cancel::new() {
                Ok(cancel) => cancel,
                Err(error) => {
                    super::append(
                        &monitor.log,
                        &kiln_cache::container::LogEntry::now(
                            kiln_cache::container::LogStream::Stderr,
                            format!("kiln: the healthcheck cannot run: {error}\n"),
                        ),
                    );
                    return None;
                }
            };
            let previous = monitor
                .health
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            Some(Checker {
                exec: ExecSpec {
                    container: monitor.spec.clone(),
                    args: probe.command.clone(),
                    env: Vec::new(),
                    user: None,
                    cwd: None,
                    privileged: false,
                },
                probe,
                program: monitor.program.clone(),
                root: monitor.store.layout().root().to_path_buf(),
                id: monitor.record.id.clone(),
                cancel,
                initial: Health {
                    status: HealthStatus::Starting,
                    failing_streak: 0,
                    log: previous.map(|health| health.log).unwrap_or_default(),
                },
                thread: Mutex::new(None),
            })
        }

        /// The health recorded when the container starts.
        pub fn initial(&self) -> Health {
            self.initial.clone()
        }

        /// Starts probing the container, which started just now.
        pub fn start(&self) {
            let started = Instant::now();
            let probe = self.probe.clone();
            let exec = self.exec.clone();
            let program = self.program.clone();
            let root = self.root.clone();
            let id = self.id.clone();
            let cancel = self.cancel.clone();
            let health = self.initial.clone();
            let thread = std::thread::spawn(move || {
                let store = Store::open(&root).ok();
                let mut health = health;
                loop {
                    let wait = probe.next_wait(started.elapsed(), health.status);
                    if !cancel.wait(wait) {
                        return health;
                    }
                    // Docker stops probing a paused container.
                    if kiln_runtime::container_paused(&id) {
                        continue;
                    }
                    let Some(entry) = run_probe(&probe, &exec, &program, &cancel) else {
                        return health;
                    };
                    let since_start = entry.1.saturating_duration_since(started);
                    probe.record(&mut health, entry.0, since_start);
                    if let Some(store) = &store {
                        let _ = store.set_container_health(&id, &health);
                    }
                }
            });
            *self
                .thread
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(thread);
        }

        /// Stops checking at once (the container ended): a probe in flight is killed and
        /// reaped before this returns. The last health, now unhealthy, as Docker's when its
        /// monitor stops.
        pub fn stop(self) -> Health {
            self.cancel.cancel();
            let thread = self
                .thread
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            let mut health = thread
                .and_then(|thread| thread.join().ok())
                .unwrap_or(self.initial);
            health.status = HealthStatus::Unhealthy;
            health
        }
    }

    /// Runs one probe: its log entry and when it started; `None` when cancelled meanwhile.
    fn run_probe(
        probe: &Probe,
        exec: &ExecSpec,
        program: &std::path::Path,
        cancel: &Cancel,
    ) -> Option<(HealthLog, Instant)> {
        let began = Instant::now();
        let start = now();
        let capture = Capture {
            timeout: probe.timeout,
            max_output: MAX_OUTPUT,
        };
        let result = kiln_runtime::exec_captured(exec, program, &[EXEC_MARKER], capture, cancel);
        let (exit_code, output) = match result {
            Ok(Captured {
                end: CapturedEnd::Cancelled,
                ..
            }) => return None,
            Ok(Captured {
                end: CapturedEnd::Exited(exit),
                output,
                truncated,
            }) => (exit.code(), output_text(&output, truncated)),
            Ok(Captured {
                end: CapturedEnd::TimedOut,
                output,
                truncated,
            }) => {
                let limit = go_duration_text(probe.timeout);
                let output = output_text(&output, truncated);
                let message = if output.is_empty() {
                    format!("Health check exceeded timeout ({limit})")
                } else {
                    format!("Health check exceeded timeout ({limit}): {output}")
                };
                (-1, message)
            }
            Err(_) if cancel.is_cancelled() => return None,
            Err(error) => (-1, error.to_string()),
        };
        Some((
            HealthLog {
                start,
                end: now(),
                exit_code,
                output,
            },
            began,
        ))
    }

    /// The probe's output as Docker keeps it: text, with `...` when some was dropped.
    fn output_text(output: &[u8], truncated: bool) -> String {
        let mut text = String::from_utf8_lossy(output).into_owned();
        if truncated {
            text.push_str("...");
        }
        text
    }

    fn now() -> String {
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    }

    /// Go's `time.Duration.String`: `30s`, `1.5s`, `1m0s`, `200ms`, `1h0m0s`.
    pub(super) fn go_duration_text(duration: Duration) -> String {
        let nanos = duration.as_nanos();
        let fraction = |value: u128, unit: u128, digits: usize| {
            let (whole, rest) = (value / unit, value % unit);
            if rest == 0 {
                whole.to_string()
            } else {
                let text = format!("{whole}.{rest:0digits$}");
                text.trim_end_matches('0').to_string()
            }
        };
        match nanos {
            0 => "0s".to_string(),
            1..1_000 => format!("{nanos}ns"),
            1_000..1_000_000 => format!("{}µs", fraction(nanos, 1_000, 3)),
            1_000_000..1_000_000_000 => format!("{}ms", fraction(nanos, 1_000_000, 6)),
            _ => {
                let hours = nanos / 3_600_000_000_000;
                let minutes = nanos / 60_000_000_000 % 60;
                let seconds = fraction(nanos % 60_000_000_000, 1_000_000_000, 9);
                match (hours, minutes) {
                    (0, 0) => format!("{seconds}s"),
                    (0, _) => format!("{minutes}m{seconds}s"),
                    _ => format!("{hours}h{minutes}m{seconds}s"),
                }
            }
        }
    }
}

/// Appends one entry; the log is opened with O_APPEND and each entry is one write.
fn append(log: &Mutex<File>, entry: &LogEntry) {
    let mut file = log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let _ = file.write_all(entry.to_line().as_bytes());
}

/// Copies `pipe` until every writer has closed it (or, for a terminal, until EIO): every
/// chunk goes to the attached clients as it comes, and each complete line to the log (a last
/// partial line at the end).
fn copy_stream(
    mut pipe: impl Read + Send + 'static,
    stream: LogStream,
    monitor: &Monitor,
) -> std::thread::JoinHandle<()> {
    let log = Arc::clone(&monitor.log);
    let server = monitor.server.clone();
    let attach_stream = match stream {
        LogStream::Stdout => AttachStream::Stdout,
        LogStream::Stderr => AttachStream::Stderr,
    };
    std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        let mut line = Vec::new();
        loop {
            let count = match pipe.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(count) => count,
            };
            server.send(attach_stream, &buffer[..count]);
            for &byte in &buffer[..count] {
                line.push(byte);
                if byte == b'\n' {
                    let text = String::from_utf8_lossy(&line).into_owned();
                    append(&log, &LogEntry::now(stream, text));
                    line.clear();
                }
            }
        }
        if !line.is_empty() {
            append(
                &log,
                &LogEntry::now(stream, String::from_utf8_lossy(&line).into_owned()),
            );
        }
    })
}

/// The store path a monitor for `store` is started with (it runs in `/`).
pub fn absolute_root(store: &Store) -> std::io::Result<PathBuf> {
    std::path::absolute(store.layout().root())
}

/// The attach socket of container `id`.
pub fn attach_socket(store: &Store, id: &str) -> PathBuf {
    store.container_dir(id).join(ATTACH_SOCKET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_backoff_is_dockers() {
        let mut restarts = Restarts::default();
        let quick = Duration::from_secs(1);
        assert_eq!(restarts.next(quick), Duration::from_millis(100));
        assert_eq!(restarts.next(quick), Duration::from_millis(200));
        assert_eq!(restarts.next(quick), Duration::from_millis(400));
        assert_eq!(
            restarts.next(Duration::from_secs(10)),
            Duration::from_millis(100)
        );
        for _ in 0..20 {
            restarts.next(quick);
        }
        assert_eq!(restarts.next(quick), Duration::from_secs(60));
    }

    fn check(test: &[&str]) -> kiln_cache::image::Healthcheck {
        kiln_cache::image::Healthcheck {
            test: test.iter().map(|word| word.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn probes_take_dockers_defaults_and_test_types() {
        let probe = health::Probe::of(&check(&["CMD-SHELL", "curl -f x"])).unwrap();
        assert_eq!(probe.command, ["/bin/sh", "-c", "curl -f x"]);
        assert_eq!(probe.interval, Duration::from_secs(30));
        assert_eq!(probe.timeout, Duration::from_secs(30));
        assert_eq!(probe.start_period, Duration::ZERO);
        assert_eq!(probe.start_interval, Duration::from_secs(5));
        assert_eq!(probe.retries, 3);
        let exec = health::Probe::of(&check(&["CMD", "/bin/true", "a b"])).unwrap();
        assert_eq!(exec.command, ["/bin/true", "a b"]);
        assert!(health::Probe::of(&check(&["NONE"])).is_none());
        assert!(health::Probe::of(&check(&[])).is_none());
        assert!(health::Probe::of(&check(&["CMD"])).is_none());
        assert!(health::Probe::of(&check(&["SOMETHING", "x"])).is_none());
    }

    fn entry(exit_code: i32) -> kiln_cache::container::HealthLog {
        kiln_cache::container::HealthLog {
            exit_code,
            ..Default::default()
        }
    }

    #[test]
    fn verdicts_follow_dockers_rules() {
        use kiln_cache::container::{Health, HealthStatus};
        let mut probe = health::Probe::of(&check(&["CMD", "x"])).unwrap();
        probe.retries = 2;
        probe.start_period = Duration::from_secs(10);
        let mut health = Health::default();
        // Failures within the start period while starting do not count.
        probe.record(&mut health, entry(1), Duration::from_secs(1));
        assert_eq!(
            (health.status, health.failing_streak),
            (HealthStatus::Starting, 0)
        );
        // After it they do, up to `retries`.
        probe.record(&mut health, entry(1), Duration::from_secs(11));
        assert_eq!(
            (health.status, health.failing_streak),
            (HealthStatus::Starting, 1)
        );
        probe.record(&mut health, entry(2), Duration::from_secs(12));
        assert_eq!(
            (health.status, health.failing_streak),
            (HealthStatus::Unhealthy, 2)
        );
        // A pass resets the streak; once healthy, failures count even in the start period.
        probe.record(&mut health, entry(0), Duration::from_secs(13));
        assert_eq!(
            (health.status, health.failing_streak),
            (HealthStatus::Healthy, 0)
        );
        probe.record(&mut health, entry(1), Duration::from_secs(1));
        assert_eq!(
            (health.status, health.failing_streak),
            (HealthStatus::Healthy, 1)
        );
        for _ in 0..5 {
            probe.record(&mut health, entry(7), Duration::from_secs(20));
        }
        assert_eq!(health.log.len(), 5);
        assert!(health.log.iter().all(|entry| entry.exit_code == 7));
    }

    #[test]
    fn the_wait_between_probes_is_dockers() {
        use kiln_cache::container::HealthStatus;
        let mut probe = health::Probe::of(&check(&["CMD", "x"])).unwrap();
        probe.interval = Duration::from_secs(30);
        probe.start_period = Duration::from_secs(60);
        probe.start_interval = Duration::from_secs(2);
        let starting = HealthStatus::Starting;
        assert_eq!(
            probe.next_wait(Duration::ZERO, starting),
            Duration::from_secs(2)
        );
        assert_eq!(
            probe.next_wait(Duration::ZERO, HealthStatus::Healthy),
            Duration::from_secs(30)
        );
        // The first probe after the start period comes when it ends.
        assert_eq!(
            probe.next_wait(Duration::from_secs(50), starting),
            Duration::from_secs(10)
        );
        assert_eq!(
            probe.next_wait(Duration::from_secs(60), starting),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn durations_print_as_go_prints_them() {
        let text = |nanos: u64| health::go_duration_text(Duration::from_nanos(nanos));
        assert_eq!(text(30_000_000_000), "30s");
        assert_eq!(text(1_500_000_000), "1.5s");
        assert_eq!(text(60_000_000_000), "1m0s");
        assert_eq!(text(90_000_000_000), "1m30s");
        assert_eq!(text(3_600_000_000_000), "1h0m0s");
        assert_eq!(text(300_000_000), "300ms");
        assert_eq!(text(1_500_000), "1.5ms");
        assert_eq!(text(2_000), "2µs");
        assert_eq!(text(0), "0s");
    }

    #[test]
    fn on_failure_counts_and_ignores_success() {
        let policy: RestartPolicy = "on-failure:2".parse().unwrap();
        let mut restarts = Restarts::default();
        assert!(!restarts.should_restart(policy, 0));
        assert!(restarts.should_restart(policy, 1));
        restarts.next(Duration::ZERO);
        assert!(restarts.should_restart(policy, 1));
        restarts.next(Duration::ZERO);
        assert!(!restarts.should_restart(policy, 1));
        let always: RestartPolicy = "always".parse().unwrap();
        assert!(restarts.should_restart(always, 0));
    }
}
