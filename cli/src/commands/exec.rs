//! Commands on running containers: `exec`, `top`, `pause`, `unpause`, `stats`; and `rename`.
//!
//! The runtime does the work (`kiln_runtime::exec`, the cgroup freezer, counters and process
//! lists); these handlers find the container in the store, and render docker's output.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use kiln_cache::container::ContainerRecord;
use kiln_cache::store::{Store, StoreError};
use kiln_runtime::{ExecSpec, Io, Spec, Usage};
use kiln_template::Format;
use serde_json::{Value, json};

use super::{Global, name_value, open_store};
use crate::monitor::SPEC_FILE;
use crate::{Exit, output};

/// The hidden first argument with which kiln re-executes itself as the parent of an exec'd
/// process.
pub const EXEC_MARKER: &str = "__kiln-exec";

#[derive(Debug, clap::Args)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    /// Detached mode: run the command in the background
    #[arg(short = 'd', long)]
    detach: bool,
    /// Keep STDIN open (pass kiln's stdin to the command)
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short = 't', long)]
    tty: bool,
    /// Set environment variables (NAME=VALUE, or NAME to take kiln's own value)
    #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<String>,
    /// Read environment variables from a file (NAME=VALUE lines, # comments)
    #[arg(long = "env-file", value_name = "FILE")]
    env_files: Vec<PathBuf>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// Username or UID (format: name|uid[:group|gid])
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Give extended privileges to the command
    #[arg(long)]
    privileged: bool,
    /// The container
    container: String,
    /// The command and its arguments
    #[arg(required = true)]
    command: Vec<String>,
}

/// `NAME=VALUE` entries of `--env-file`s then `-e`s; a bare `NAME` takes kiln's own value
/// and is dropped when kiln has none (docker's rule).
fn exec_env(args: &ExecArgs) -> Result<Vec<String>, String> {
    let mut entries = Vec::new();
    for path in &args.env_files {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        entries.extend(
            text.lines()
                .map(str::trim_start)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(str::to_string),
        );
    }
    entries.extend(args.env.iter().cloned());
    Ok(entries
        .iter()
        .filter_map(|entry| name_value(entry))
        .map(|(name, value)| format!("{name}={value}"))
        .collect())
}

/// The sandbox spec a container was started with (kept in its directory by `run`).
fn container_spec(store: &Store, record: &ContainerRecord) -> Result<Spec, String> {
    let path = store.container_dir(&record.id).join(SPEC_FILE);
    let bytes = std::fs::read(&path).map_err(|error| format!("{}: {error}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|error| format!("{}: {error}", path.display()))
}

fn exit_code(code: i32) -> Exit {
    Exit::Code(u8::try_from(code.clamp(0, 255)).unwrap_or(125))
}

/// `kiln exec`: runs a command in a running container and passes its exit code through
/// (126/127 when it cannot be executed, 125 for kiln's own errors); `-d` returns once it
/// was started. With `-t` the command runs on a new terminal of the container, copied to
/// kiln's stdout (stdout and stderr merged, as Docker's `-t`) and, with `-i`, from its
/// stdin (in raw mode when it is a terminal).
pub fn exec(global: &Global, args: ExecArgs) -> Exit {
    if args.tty
        && args.interactive
        && !args.detach
        && !std::io::IsTerminal::is_terminal(&std::io::stdin())
    {
        return output::error("the input device is not a TTY");
    }
    let env = match exec_env(&args) {
        Ok(env) => env,
        Err(message) => return output::error(message),
    };
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let record = match store.container(&args.container) {
        Ok(record) => record,
        Err(error) => return output::error_of(&error),
    };
    if kiln_runtime::container_pid(&record.id).is_none() {
        return output::error(format!("container {} is not running", record.id));
    }
    let container = match container_spec(&store, &record) {
        Ok(spec) => spec,
        Err(message) => return output::error(format!("reading the container's spec: {message}")),
    };
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(error) => return output::error(format!("cannot find the kiln binary: {error}")),
    };
    let spec = ExecSpec {
        container,
        args: args.command,
        env,
        user: args.user,
        cwd: args.workdir,
        privileged: args.privileged,
    };
    let result = if args.detach {
        kiln_runtime::exec_detached(&spec, &program, &[EXEC_MARKER]).map(|_| 0)
    } else if args.tty {
        exec_in_terminal(&spec, &program, args.interactive)
    } else {
        let stdin = if args.interactive {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        };
        let io = Io {
            stdin,
            ..Io::inherit()
        };
        kiln_runtime::exec(&spec, &program, &[EXEC_MARKER], io).map(|exit| exit.code())
    };
    match result {
        Ok(code) => exit_code(code),
        Err(error) => {
            output::error_of(&error);
            exit_code(error.exit_code())
        }
    }
}

/// `exec -t`: the command on a new terminal, copied to kiln's stdout and, with
/// `interactive`, from kiln's stdin.
fn exec_in_terminal(
    spec: &ExecSpec,
    program: &std::path::Path,
    interactive: bool,
) -> Result<i32, kiln_runtime::ExecError> {
    use std::os::fd::AsFd;
    let input = interactive
        .then(|| std::io::stdin().as_fd().try_clone_to_owned().ok())
        .flatten();
    let output = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| kiln_runtime::RuntimeError::Init {
            step: "duplicating stdout",
            program: program.to_path_buf(),
            source,
        })?;
    let streams = kiln_runtime::pty::TerminalStreams { input, output };
    kiln_runtime::exec_in_terminal(spec, program, &[EXEC_MARKER], streams).map(|exit| exit.code())
}

/// Runs `each` on the named container, reporting a failure as docker does (`Error response
/// from daemon: ...`, exit 1).
fn on_container(
    store: &Store,
    name: &str,
    each: &mut dyn FnMut(&ContainerRecord) -> Result<(), String>,
) -> Exit {
    let result = store
        .container(name)
        .map_err(|error| error.to_string())
        .and_then(|record| each(&record));
    match result {
        Ok(()) => Exit::Success,
        Err(message) => {
            output::err(&format!("Error response from daemon: {message}\n"));
            Exit::Failure
        }
    }
}

#[derive(Debug, clap::Args)]
#[command(trailing_var_arg = true)]
pub struct TopArgs {
    /// The container
    container: String,
    /// Options for the host's ps (default: docker's `-ef` columns, read from /proc)
    #[arg(allow_hyphen_values = true)]
    ps_options: Vec<String>,
}

/// `kiln top`: the container's processes, as docker shows them (the host's view: host pids,
/// host user names). Without ps options, docker's default `ps -ef` columns are built from
/// /proc, so no `ps` is needed; with options, the host's `ps` runs and its lines for the
/// container's processes are kept.
pub fn top(global: &Global, args: TopArgs) -> Exit {
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    on_container(&store, &args.container, &mut |record| {
        let (titles, rows) = if args.ps_options.is_empty() {
            let processes =
                kiln_runtime::container_processes(&record.id).map_err(|error| error.to_string())?;
            let titles = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"];
            let rows = processes.iter().map(ps_ef_row).collect();
            (titles.map(str::to_string).to_vec(), rows)
        } else {
            let table = kiln_runtime::container_ps(&record.id, &args.ps_options)
                .map_err(|error| error_text(&error))?;
            (table.titles, table.processes)
        };
        output::out(&top_table(&titles, &rows));
        Ok(())
    })
}

/// An error with its causes, `a: b: c`.
fn error_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// One line of `ps -ef` (procps): user names over 8 characters are cut to 7 and `+`, STIME
/// is the time today, the day this year, else the year; TIME is `[DD-]HH:MM:SS`.
fn ps_ef_row(process: &kiln_runtime::Process) -> Vec<String> {
    let user = match &process.user {
        Some(name) if name.chars().count() > 8 => {
            format!("{}+", name.chars().take(7).collect::<String>())
        }
        Some(name) => name.clone(),
        None => process.uid.to_string(),
    };
    let seconds = process.cpu_time.as_secs();
    let (days, hours, minutes) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60);
    let time = if days > 0 {
        format!("{days}-{hours:02}:{minutes:02}:{:02}", seconds % 60)
    } else {
        format!("{hours:02}:{minutes:02}:{:02}", seconds % 60)
    };
    vec![
        user,
        process.pid.to_string(),
        process.ppid.to_string(),
        process.cpu_percent.to_string(),
        start_time(process.started),
        process.tty.clone().unwrap_or_else(|| "?".into()),
        time,
        process.command.clone(),
    ]
}

/// procps's STIME: `HH:MM` today, `MonDD` this year, `YYYY` before (local time).
fn start_time(started: SystemTime) -> String {
    use chrono::Datelike;
    let started: chrono::DateTime<chrono::Local> = started.into();
    let now = chrono::Local::now();
    let format = if started.year() != now.year() {
        "%Y"
    } else if started.ordinal() != now.ordinal() {
        "%b%d"
    } else {
        "%H:%M"
    };
    started.format(format).to_string()
}

/// docker top's layout: `tabwriter.NewWriter(out, 20, 1, 3, ' ', 0)`, so every column but
/// the last is at least 20 characters wide and 3 wider than its widest cell.
fn top_table(titles: &[String], rows: &[Vec<String>]) -> String {
    let lines: Vec<&[String]> = std::iter::once(titles)
        .chain(rows.iter().map(Vec::as_slice))
        .collect();
    let columns = lines.iter().map(|line| line.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns.saturating_sub(1))
        .map(|column| {
            let widest = lines
                .iter()
                .filter_map(|line| line.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0);
            (widest + 3).max(20)
        })
        .collect();
    let mut out = String::new();
    for line in lines {
        for (index, cell) in line.iter().enumerate() {
            match widths.get(index).filter(|_| index + 1 < line.len()) {
                Some(width) => {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(width.saturating_sub(cell.chars().count())));
                }
                None => out.push_str(cell),
            }
        }
        out.push('\n');
    }
    out
}

#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    /// Containers to pause
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `kiln pause`: freezes every process of each container (cgroup freezer).
pub fn pause(global: &Global, args: PauseArgs) -> Exit {
    each_container(global, &args.containers, kiln_runtime::pause_container)
}

/// `kiln unpause`: thaws each container.
pub fn unpause(global: &Global, args: PauseArgs) -> Exit {
    each_container(global, &args.containers, kiln_runtime::unpause_container)
}

fn each_container(
    global: &Global,
    names: &[String],
    action: fn(&str) -> Result<(), kiln_runtime::ControlError>,
) -> Exit {
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let mut exit = Exit::Success;
    for name in names {
        let result = on_container(&store, name, &mut |record| {
            action(&record.id).map_err(|error| error_text(&error))?;
            output::out(&format!("{name}\n"));
            Ok(())
        });
        if result != Exit::Success {
            exit = result;
        }
    }
    exit
}

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Show all containers (default shows just running)
    #[arg(short = 'a', long)]
    all: bool,
    /// Disable streaming stats and only pull the first result
    #[arg(long = "no-stream")]
    no_stream: bool,
    /// Do not truncate output
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Format: table, json, or a Go template
    #[arg(long)]
    format: Option<String>,
    /// Containers (default: all running containers)
    containers: Vec<String>,
}

/// docker's default `stats` layout.
const STATS_FORMAT: &str = "table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}";

/// How long apart the two readings of a CPU percentage are.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// `kiln stats`: CPU, memory, network, block I/O and pids of containers, from their cgroups.
/// `--no-stream` prints one table (two readings a second apart, for the CPU percentage);
/// otherwise the table is printed again every second until interrupted (or the output is
/// closed). A container that is not running shows zeros, as with docker.
pub fn stats(global: &Global, args: StatsArgs) -> Exit {
    let format = match Format::parse_or_default(args.format.as_deref().unwrap_or(""), STATS_FORMAT)
    {
        Ok(format) => format,
        Err(error) => return output::error(format!("invalid --format: {error}")),
    };
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let mut previous: Vec<(String, Option<Usage>)> = Vec::new();
    loop {
        let targets = match stats_targets(&store, &args) {
            Ok(targets) => targets,
            Err(message) => {
                output::err(&format!("Error response from daemon: {message}\n"));
                return Exit::Failure;
            }
        };
        let mut readings: Vec<(String, Option<Usage>)> = targets
            .iter()
            .map(|(_, record)| {
                let usage = kiln_runtime::container_usage(&record.id).ok();
                (record.id.clone(), usage)
            })
            .collect();
        if previous.is_empty() {
            // The first CPU percentage needs a reading from a moment ago.
            std::thread::sleep(STATS_INTERVAL);
            previous = std::mem::take(&mut readings);
            readings = targets
                .iter()
                .map(|(_, record)| {
                    (
                        record.id.clone(),
                        kiln_runtime::container_usage(&record.id).ok(),
                    )
                })
                .collect();
        }
        let rows: Vec<Value> = targets
            .iter()
            .zip(&readings)
            .map(|((label, record), (_, usage))| {
                let before = previous
                    .iter()
                    .find(|(id, _)| *id == record.id)
                    .and_then(|(_, usage)| usage.as_ref());
                stats_row(label, record, usage.as_ref(), before, args.no_trunc)
            })
            .collect();
        let text = match format.render(&rows, &stats_header) {
            Ok(text) => text,
            Err(error) => return output::error_of(&error),
        };
        if args.no_stream {
            output::out(&text);
            return Exit::Success;
        }
        let clear = if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            "\x1b[2J\x1b[H"
        } else {
            ""
        };
        if output::out_checked(&format!("{clear}{text}")).is_err() {
            return Exit::Success;
        }
        previous = readings;
        std::thread::sleep(STATS_INTERVAL);
    }
}

/// The containers to show with the label of their `Container` field: the names given, or
/// every running container (every container with `-a`) by short id.
fn stats_targets(
    store: &Store,
    args: &StatsArgs,
) -> Result<Vec<(String, ContainerRecord)>, String> {
    if !args.containers.is_empty() {
        return args
            .containers
            .iter()
            .map(|name| {
                store
                    .container(name)
                    .map(|record| (name.clone(), record))
                    .map_err(|error: StoreError| error.to_string())
            })
            .collect();
    }
    let records = store.containers().map_err(|error| error.to_string())?;
    Ok(records
        .into_iter()
        .filter(|record| args.all || kiln_runtime::container_pid(&record.id).is_some())
        .map(|record| (record.short_id().to_string(), record))
        .collect())
}

fn stats_header(field: &str) -> Option<String> {
    Some(
        match field {
            "ID" => "CONTAINER ID",
            "Container" => "CONTAINER",
            "Name" => "NAME",
            "CPUPerc" => "CPU %",
            "MemUsage" => "MEM USAGE / LIMIT",
            "MemPerc" => "MEM %",
            "NetIO" => "NET I/O",
            "BlockIO" => "BLOCK I/O",
            "PIDs" => "PIDS",
            other => return Some(other.to_ascii_uppercase()),
        }
        .to_string(),
    )
}

/// One row of `stats`, with docker's units: binary for memory (`1.5MiB`), decimal with three
/// digits for I/O (`1.03kB`).
fn stats_row(
    label: &str,
    record: &ContainerRecord,
    usage: Option<&Usage>,
    previous: Option<&Usage>,
    no_trunc: bool,
) -> Value {
    let usage = usage.copied().unwrap_or_default();
    let cpu = previous.map_or(0.0, |previous| usage.cpu_percent(previous));
    json!({
        "Container": label,
        "ID": if no_trunc { record.id.clone() } else { record.short_id().to_string() },
        "Name": record.name,
        "CPUPerc": format!("{cpu:.2}%"),
        "MemUsage": format!("{} / {}", bytes_size(usage.memory), bytes_size(usage.memory_limit)),
        "MemPerc": format!("{:.2}%", usage.memory_percent()),
        "NetIO": format!("{} / {}", decimal_size(usage.net_rx), decimal_size(usage.net_tx)),
        "BlockIO": format!("{} / {}", decimal_size(usage.block_read), decimal_size(usage.block_write)),
        "PIDs": usage.pids.to_string(),
    })
}

/// docker/go-units `BytesSize`: binary units, `%.4g`.
fn bytes_size(bytes: u64) -> String {
    scaled(
        bytes,
        1024.0,
        &["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"],
        4,
    )
}

/// docker/go-units `HumanSizeWithPrecision(size, 3)`: decimal units, `%.3g`.
fn decimal_size(bytes: u64) -> String {
    scaled(bytes, 1000.0, &["B", "kB", "MB", "GB", "TB", "PB", "EB"], 3)
}

fn scaled(bytes: u64, base: f64, units: &[&str], precision: usize) -> String {
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= base && unit + 1 < units.len() {
        value /= base;
        unit += 1;
    }
    format!("{}{}", go_g(value, precision), units[unit])
}

/// Go's `%.{precision}g` for a non-negative value: `precision` significant digits, trailing
/// zeros dropped, exponent form when the exponent is below -4 or at least `precision`.
fn go_g(value: f64, precision: usize) -> String {
    if value == 0.0 {
        return "0".into();
    }
    let precision = precision.max(1);
    let scientific = format!("{:.*e}", precision - 1, value);
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let trim = |text: &str| {
        if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            text.to_string()
        }
    };
    if exponent < -4 || exponent >= precision as i32 {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exponent.abs())
    } else {
        let decimals = usize::try_from(precision as i32 - 1 - exponent).unwrap_or(0);
        trim(&format!("{value:.decimals$}"))
    }
}

#[derive(Debug, clap::Args)]
pub struct RenameArgs {
    /// The container
    container: String,
    /// Its new name
    new_name: String,
}

/// `kiln rename`: a new name for a container, running or not; names stay unique (the store
/// decides atomically). Docker's errors, exit 1.
pub fn rename(global: &Global, args: RenameArgs) -> Exit {
    let new_name = args.new_name.trim_start_matches('/');
    if args.container.is_empty() || new_name.is_empty() {
        output::err("Error: Neither old nor new names may be empty\n");
        return Exit::Failure;
    }
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    on_container(&store, &args.container, &mut |record| {
        if record.name == new_name {
            return Err("Renaming a container with the same name as its current name".into());
        }
        store
            .rename_container(&record.id, new_name)
            .map_err(|error| {
                let allocating = matches!(
                    error,
                    StoreError::NameInUse { .. } | StoreError::InvalidName(_)
                );
                if allocating {
                    format!("Error when allocating new name: {error}")
                } else {
                    error.to_string()
                }
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_docker_units() {
        assert_eq!(bytes_size(0), "0B");
        assert_eq!(bytes_size(1536 * 1024), "1.5MiB");
        assert_eq!(bytes_size(8 * 1024 * 1024 * 1024), "8GiB");
        assert_eq!(bytes_size(1000), "1000B");
        assert_eq!(decimal_size(1030), "1.03kB");
        assert_eq!(decimal_size(0), "0B");
        assert_eq!(decimal_size(999_999), "1e+03kB");
        assert_eq!(go_g(123.456, 4), "123.5");
    }

    #[test]
    fn top_columns_are_at_least_20_wide_with_3_spaces_of_padding() {
        let titles = vec!["UID".to_string(), "PID".into(), "CMD".into()];
        let rows = vec![vec![
            "a-very-long-user-name".to_string(),
            "7".into(),
            "sleep 1".into(),
        ]];
        let text = top_table(&titles, &rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("{:<24}{:<20}CMD", "UID", "PID"));
        assert_eq!(
            lines[1],
            format!("{:<24}{:<20}sleep 1", "a-very-long-user-name", "7")
        );
    }

    #[test]
    fn ps_ef_rows_cut_long_user_names_and_format_cpu_time() {
        let process = kiln_runtime::Process {
            pid: 42,
            ppid: 7,
            uid: 999,
            user: Some("systemd-resolve".into()),
            started: SystemTime::now(),
            cpu_time: Duration::from_secs(90_061),
            cpu_percent: 3,
            tty: None,
            command: "sleep 1000".into(),
        };
        let row = ps_ef_row(&process);
        assert_eq!(row[0], "systemd+");
        assert_eq!(row[5], "?");
        assert_eq!(row[6], "1-01:01:01");
        assert_eq!(row[7], "sleep 1000");
    }
}
