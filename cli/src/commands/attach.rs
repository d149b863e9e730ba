//! Process supervision commands and options: `create`'s and `run`'s `-t`, `-i`, `--init`,
//! `--stop-signal`, `--stop-timeout`, `--restart` and `--health-*` (resolved into the
//! container's `Supervision`), `attach`, `start -a`, `restart`, and what `ps`/`inspect` show
//! of them.
//!
//! The work happens in the runtime (`kiln_runtime::pty`, `attach`) and in the container's
//! monitor (`crate::monitor`); these handlers parse, connect and render.

use std::io::BufRead;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use kiln_cache::container::{
    ContainerRecord, ContainerState, HealthStatus, RestartPolicy, RestartPolicyName, Status,
    Supervision,
};
use kiln_cache::image::{Healthcheck, ImageConfig};
use kiln_cache::store::Store;
use kiln_runtime::{AttachEnd, AttachOptions, Io, Outcome, RuntimeError, Spec};
use serde_json::{Value, json};

use super::container::{StartArgs, current_state, start_monitor, stop_container, supervisor};
use super::{Global, open_store};
use crate::monitor::{LISTENING, MONITOR_MARKER, StartFailure, WAIT_FOR_ATTACH};
use crate::{Exit, INIT_MARKER, output};

/// Docker's default detach keys: ctrl-p ctrl-q.
const DEFAULT_DETACH_KEYS: [u8; 2] = [16, 17];

/// How `run`/`create` was asked to start the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// `run` attached to kiln's stdio.
    Foreground,
    /// `run -d`.
    Detached,
    /// `create`: recorded, not started.
    Create,
}

impl RunMode {
    /// The mode of `run` (`detach`: `-d`) or `create` (`create_only`).
    pub fn of(detach: bool, create_only: bool) -> RunMode {
        match (create_only, detach) {
            (true, _) => RunMode::Create,
            (false, true) => RunMode::Detached,
            (false, false) => RunMode::Foreground,
        }
    }
}

/// The supervision options of `run` and `create`.
#[derive(Debug, Clone, clap::Args)]
pub struct SupervisionArgs {
    /// Run an init inside the container that forwards signals and reaps processes
    #[arg(long)]
    init: bool,
    /// Signal to stop the container
    #[arg(long = "stop-signal", value_name = "SIGNAL")]
    stop_signal: Option<String>,
    /// Timeout (in seconds) to stop a container
    #[arg(
        long = "stop-timeout",
        allow_hyphen_values = true,
        value_name = "SECONDS"
    )]
    stop_timeout: Option<i64>,
    /// Restart policy to apply when a container exits: no, on-failure[:N], always,
    /// unless-stopped
    #[arg(long, default_value = "no")]
    restart: String,
    /// Command to run to check health
    #[arg(long = "health-cmd", value_name = "COMMAND")]
    health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h)
    #[arg(long = "health-interval", value_name = "DURATION")]
    health_interval: Option<String>,
    /// Maximum time to allow one check to run (ms|s|m|h)
    #[arg(long = "health-timeout", value_name = "DURATION")]
    health_timeout: Option<String>,
    /// Start period for the container to initialize before counting retries (ms|s|m|h)
    #[arg(long = "health-start-period", value_name = "DURATION")]
    health_start_period: Option<String>,
    /// Time between running the check during the start period (ms|s|m|h)
    #[arg(long = "health-start-interval", value_name = "DURATION")]
    health_start_interval: Option<String>,
    /// Consecutive failures needed to report unhealthy
    #[arg(long = "health-retries", value_name = "N", allow_hyphen_values = true)]
    health_retries: Option<i64>,
    /// Disable any container-specified HEALTHCHECK
    #[arg(long = "no-healthcheck")]
    no_healthcheck: bool,
}

impl SupervisionArgs {
    /// Checks the options as Docker does and merges them with the image's `StopSignal` and
    /// `HEALTHCHECK` (Docker's create-time merge: a field not given comes from the image).
    pub fn resolve(
        &self,
        tty: bool,
        interactive: bool,
        auto_remove: bool,
        mode: RunMode,
        image: &ImageConfig,
    ) -> Result<Supervision, String> {
        let restart_policy: RestartPolicy = self
            .restart
            .parse()
            .map_err(|error| format!("invalid restart policy: {error}"))?;
        if auto_remove && restart_policy.name != RestartPolicyName::No {
            return Err("Conflicting options: --restart and --rm".into());
        }
        let stop_signal = self
            .stop_signal
            .clone()
            .or_else(|| image.config.stop_signal.clone());
        if let Some(signal) = &stop_signal
            && kiln_runtime::parse_signal(signal).is_none()
        {
            return Err(format!("Invalid signal: {signal}"));
        }
        if tty
            && interactive
            && mode == RunMode::Foreground
            && !std::io::IsTerminal::is_terminal(&std::io::stdin())
        {
            return Err("the input device is not a TTY".into());
        }
        Ok(Supervision {
            tty,
            open_stdin: interactive,
            // Docker sets StdinOnce when stdin is attached at create time; `run -d -i` keeps
            // it open for every client.
            stdin_once: interactive && mode == RunMode::Create,
            stop_signal,
            stop_timeout: self.stop_timeout,
            init: self.init,
            restart_policy,
            healthcheck: self.healthcheck(image)?,
        })
    }

    fn healthcheck(&self, image: &ImageConfig) -> Result<Option<Healthcheck>, String> {
        let given = self.health_cmd.is_some()
            || self.health_interval.is_some()
            || self.health_timeout.is_some()
            || self.health_start_period.is_some()
            || self.health_start_interval.is_some()
            || self.health_retries.is_some();
        if self.no_healthcheck {
            if given {
                return Err("--no-healthcheck conflicts with --health-* options".into());
            }
            return Ok(Some(Healthcheck {
                test: vec!["NONE".into()],
                ..Healthcheck::default()
            }));
        }
        let mut check = image.config.healthcheck.clone().unwrap_or_default();
        if let Some(command) = &self.health_cmd {
            check.test = vec!["CMD-SHELL".into(), command.clone()];
        }
        for (flag, name, text, field) in [
            (
                "--health-interval",
                "Interval",
                &self.health_interval,
                &mut check.interval,
            ),
            (
                "--health-timeout",
                "Timeout",
                &self.health_timeout,
                &mut check.timeout,
            ),
            (
                "--health-start-period",
                "StartPeriod",
                &self.health_start_period,
                &mut check.start_period,
            ),
            (
                "--health-start-interval",
                "StartInterval",
                &self.health_start_interval,
                &mut check.start_interval,
            ),
        ] {
            if let Some(text) = text {
                let nanos = go_duration(text)
                    .ok_or_else(|| format!("invalid argument {text:?} for \"{flag}\" flag"))?;
                // The daemon's check against container.MinimumDuration; 0 means "the
                // image's, else the default".
                if nanos != 0 && nanos < 1_000_000 {
                    return Err(format!("{name} in Healthcheck cannot be less than 1ms"));
                }
                if nanos != 0 {
                    *field = Some(nanos);
                }
            }
        }
        if let Some(retries) = self.health_retries {
            let retries = u32::try_from(retries)
                .map_err(|_| "--health-retries cannot be negative".to_string())?;
            if retries != 0 {
                check.retries = Some(retries);
            }
        }
        Ok((!check.test.is_empty()).then_some(check))
    }
}

/// Go's `time.ParseDuration` for non-negative values: `1h2m3.5s`, `500ms`, `10us`, `0`.
/// In nanoseconds.
fn go_duration(text: &str) -> Option<u64> {
    if text == "0" {
        return Some(0);
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|end| *end > 0)?;
        let (number, after) = rest.split_at(number_end);
        let number: f64 = number.parse().ok()?;
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += number * scale;
        rest = after;
    }
    Some(total as u64)
}

/// A foreground `run`: on a pseudo-terminal copied to and from kiln's own stdio with `-t`
/// (stdin only with `-i`), else with kiln's stdio inherited.
pub fn run_foreground(
    spec: &Spec,
    program: &Path,
    interactive: bool,
) -> Result<Outcome, RuntimeError> {
    if !spec.tty {
        return kiln_runtime::run(spec, program, &[INIT_MARKER], Io::inherit());
    }
    let input = interactive
        .then(|| std::io::stdin().as_fd().try_clone_to_owned().ok())
        .flatten();
    let output = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| RuntimeError::Init {
            step: "duplicating stdout",
            program: program.to_path_buf(),
            source,
        })?;
    kiln_runtime::pty::run_in_terminal(
        spec,
        program,
        &[INIT_MARKER],
        kiln_runtime::pty::TerminalStreams { input, output },
    )
}

/// ` (healthy)`, ` (unhealthy)` or ` (health: starting)` after `Up ...` in `ps`.
pub fn health_suffix(state: &ContainerState) -> String {
    match &state.health {
        Some(health) if state.status == Status::Running => match health.status {
            HealthStatus::Starting => " (health: starting)".into(),
            status @ (HealthStatus::Healthy | HealthStatus::Unhealthy) => {
                format!(" ({})", status.as_str())
            }
        },
        _ => String::new(),
    }
}

/// Adds the supervision settings and health to a container's inspect object (Docker's
/// `Config.Tty`, `OpenStdin`, `StdinOnce`, `StopSignal`, `StopTimeout`, `Healthcheck`,
/// `HostConfig.RestartPolicy`, `Init`, `State.Health`).
pub fn add_supervision(store: &Store, record: &ContainerRecord, value: &mut Value) {
    let supervision = store.container_supervision(&record.id).unwrap_or_default();
    let config = &mut value["Config"];
    config["Tty"] = json!(supervision.tty);
    config["OpenStdin"] = json!(supervision.open_stdin);
    config["StdinOnce"] = json!(supervision.stdin_once);
    if let Some(signal) = &supervision.stop_signal {
        config["StopSignal"] = json!(signal);
    }
    if let Some(timeout) = supervision.stop_timeout {
        config["StopTimeout"] = json!(timeout);
    }
    if let Some(check) = &supervision.healthcheck {
        config["Healthcheck"] = serde_json::to_value(check).unwrap_or(Value::Null);
    }
    let host = &mut value["HostConfig"];
    host["RestartPolicy"] = serde_json::to_value(supervision.restart_policy).unwrap_or(Value::Null);
    host["Init"] = json!(supervision.init);
    if let Some(health) = current_state(store, record).health {
        value["State"]["Health"] = serde_json::to_value(health).unwrap_or(Value::Null);
    }
}

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// Do not attach STDIN
    #[arg(long = "no-stdin")]
    no_stdin: bool,
    /// Proxy all received signals to the process
    #[arg(long = "sig-proxy", default_value_t = true, action = clap::ArgAction::Set)]
    sig_proxy: bool,
    /// Override the key sequence for detaching a container
    #[arg(long = "detach-keys", value_name = "KEYS")]
    detach_keys: Option<String>,
    /// The container
    container: String,
}

/// Docker's `attach`: the running container's output from now on, kiln's stdin to the
/// container's (when it was started with `-i`), until it ends (its exit code) or the detach
/// keys are typed (`read escape sequence`, exit 1, the container goes on).
pub fn attach(global: &Global, args: AttachArgs) -> Exit {
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let record = match store.container(&args.container) {
        Ok(record) => record,
        Err(error) => return output::error_of(&error),
    };
    if current_state(&store, &record).status != Status::Running {
        return output::error("You cannot attach to a stopped container, start it first");
    }
    let connection =
        match kiln_runtime::connect_attach(&crate::monitor::attach_socket(&store, &record.id)) {
            Ok(connection) => connection,
            Err(error) => {
                return output::error(format!("attaching to {}: {error}", args.container));
            }
        };
    session(
        &store,
        &record,
        connection,
        !args.no_stdin,
        args.detach_keys.as_deref(),
        args.sig_proxy,
    )
}

/// `start -a [-i] CONTAINER`: starts the container with its monitor waiting for this client,
/// so no output is missed; a running container is just attached to.
pub fn start_attached(global: &Global, args: &StartArgs) -> Exit {
    let [name] = args.containers.as_slice() else {
        return output::error("you cannot start and attach multiple containers at once");
    };
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let record = match store.container(name) {
        Ok(record) => record,
        Err(error) => return output::error_of(&error),
    };
    let connection = if current_state(&store, &record).status == Status::Running {
        kiln_runtime::connect_attach(&crate::monitor::attach_socket(&store, &record.id)).map_err(
            |error| StartFailure {
                code: 125,
                message: format!("attaching to {name}: {error}"),
            },
        )
    } else {
        let _ = store.set_container_stopped_by_hand(&record.id, false);
        start_waiting_for_attach(&store, &record.id)
    };
    match connection {
        Ok(connection) => session(
            &store,
            &record,
            connection,
            args.interactive,
            args.detach_keys.as_deref(),
            true,
        ),
        Err(failure) => {
            output::err(&format!("kiln: {}\n", failure.message));
            Exit::Code(u8::try_from(failure.code.clamp(0, 255)).unwrap_or(125))
        }
    }
}

/// Starts the monitor with [`WAIT_FOR_ATTACH`], connects once it listens, and waits until it
/// has started the container.
fn start_waiting_for_attach(
    store: &Store,
    id: &str,
) -> Result<std::os::unix::net::UnixStream, StartFailure> {
    let failure = |message: String| StartFailure { code: 125, message };
    let program = std::env::current_exe()
        .map_err(|error| failure(format!("cannot find the kiln binary: {error}")))?;
    let root = crate::monitor::absolute_root(store)
        .map_err(|error| failure(format!("resolving the store path: {error}")))?;
    let args = [
        std::ffi::OsStr::new(MONITOR_MARKER),
        root.as_os_str(),
        std::ffi::OsStr::new(id),
        std::ffi::OsStr::new(WAIT_FOR_ATTACH),
    ];
    let (_, lines) = kiln_runtime::spawn_detached(&program, &args)
        .map_err(|error| failure(format!("starting the container monitor: {error}")))?;
    let mut lines = std::io::BufReader::new(lines);
    let mut line = String::new();
    let _ = lines.read_line(&mut line);
    if line != LISTENING {
        StartFailure::from_line(&line)?;
    }
    let connection = kiln_runtime::connect_attach(&crate::monitor::attach_socket(store, id))
        .map_err(|error| failure(format!("attaching: {error}")))?;
    line.clear();
    let _ = lines.read_line(&mut line);
    StartFailure::from_line(&line)?;
    Ok(connection)
}

/// One attach session on `connection`, rendered as Docker's CLI does.
fn session(
    store: &Store,
    record: &ContainerRecord,
    connection: std::os::unix::net::UnixStream,
    stdin: bool,
    detach_keys: Option<&str>,
    sig_proxy: bool,
) -> Exit {
    let detach_keys = match detach_keys {
        None => DEFAULT_DETACH_KEYS.to_vec(),
        Some(text) => match kiln_runtime::parse_detach_keys(text) {
            Some(keys) => keys,
            None => return output::error(format!("invalid detach keys ({text}) provided")),
        },
    };
    let supervision = store.container_supervision(&record.id).unwrap_or_default();
    let duplicate = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned();
    let streams: std::io::Result<(Option<OwnedFd>, OwnedFd, OwnedFd)> = (|| {
        let input = if stdin && supervision.open_stdin {
            Some(duplicate(std::io::stdin().as_fd())?)
        } else {
            None
        };
        Ok((
            input,
            duplicate(std::io::stdout().as_fd())?,
            duplicate(std::io::stderr().as_fd())?,
        ))
    })();
    let (input, output_fd, error_fd) = match streams {
        Ok(streams) => streams,
        Err(error) => return output::error(format!("duplicating stdio: {error}")),
    };
    let options = AttachOptions {
        input,
        output: output_fd,
        error: error_fd,
        tty: supervision.tty,
        detach_keys,
        proxy_signals_to: sig_proxy
            .then(|| kiln_runtime::container_pid(&record.id))
            .flatten(),
    };
    match kiln_runtime::attach(connection, options) {
        Ok(AttachEnd::Exited(code)) => Exit::Code(u8::try_from(code.clamp(0, 255)).unwrap_or(125)),
        Ok(AttachEnd::Detached) => {
            output::err("read escape sequence\n");
            Exit::Failure
        }
        Ok(AttachEnd::Lost) => {
            let state = store
                .container(&record.id)
                .map(|after| current_state(store, &after))
                .unwrap_or_default();
            kiln_runtime::wait_for_exit(
                supervisor(&state),
                Some(std::time::Duration::from_secs(10)),
            );
            let code = store
                .container(&record.id)
                .map(|after| current_state(store, &after).exit_code)
                .unwrap_or(0);
            Exit::Code(u8::try_from(code.clamp(0, 255)).unwrap_or(125))
        }
        Err(error) => output::error(format!("attaching: {error}")),
    }
}

#[derive(Debug, clap::Args)]
pub struct RestartArgs {
    /// Seconds to wait for stop before killing the container
    #[arg(short = 't', long = "time", allow_hyphen_values = true)]
    time: Option<i64>,
    /// Containers to restart
    #[arg(required = true)]
    containers: Vec<String>,
}

/// Docker's `restart`: `stop` (stop signal, timeout, SIGKILL) then `start`, detached.
pub fn restart(global: &Global, args: RestartArgs) -> Exit {
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(error) => return output::error(format!("cannot find the kiln binary: {error}")),
    };
    let mut exit = Exit::Success;
    for name in &args.containers {
        let result = store
            .container(name)
            .map_err(|error| error.to_string())
            .and_then(|record| {
                stop_container(&store, &record, name, args.time)?;
                store
                    .set_container_stopped_by_hand(&record.id, false)
                    .map_err(|error| error.to_string())?;
                start_monitor(&store, &record.id, &program).map_err(|failure| failure.message)
            });
        match result {
            Ok(()) => output::out(&format!("{name}\n")),
            Err(message) => {
                output::err(&format!("Error response from daemon: {message}\n"));
                exit = Exit::Failure;
            }
        }
    }
    exit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_go_parses_them() {
        assert_eq!(go_duration("30s"), Some(30_000_000_000));
        assert_eq!(go_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(go_duration("500ms"), Some(500_000_000));
        assert_eq!(go_duration("1.5h"), Some(5_400_000_000_000));
        assert_eq!(go_duration("0"), Some(0));
        assert_eq!(go_duration("10"), None);
        assert_eq!(go_duration("-1s"), None);
        assert_eq!(go_duration("1d"), None);
    }
}
