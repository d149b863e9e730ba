//! Steering and watching a running container through its cgroup: freezing and thawing it
//! (`pause`/`unpause`), reading its resource counters (`stats`) and listing its processes
//! (`top`), on cgroup v1 and v2.
//!
//! Writes only the freezer files of the container's own cgroup; everything else is read from
//! the cgroup files and `/proc`. Knows nothing of the store: the caller names the container
//! by its id (its cgroup `kiln/<id>`). Rendering (units, columns, local times) is the
//! caller's.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use thiserror::Error;

use crate::cgroup::{ControllerDir, container_pid, controller_dir, existing_dirs};

/// How long a freeze may take before it is given up (and the cgroup thawed again).
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a container could not be paused, resumed or observed.
#[derive(Debug, Error)]
pub enum ControlError {
    /// The container has no PID 1 (Docker's wording).
    #[error("container {id} is not running")]
    NotRunning {
        /// The container id.
        id: String,
    },
    /// `pause` of a frozen container.
    #[error("container {id} is already paused")]
    AlreadyPaused {
        /// The container id.
        id: String,
    },
    /// `unpause` of a container that is not frozen.
    #[error("container {id} is not paused")]
    NotPaused {
        /// The container id.
        id: String,
    },
    /// The host has no freezer (no v1 freezer controller, no v2 `cgroup.freeze`).
    #[error("cannot pause container {id}: the cgroup freezer is not available on this host")]
    NoFreezer {
        /// The container id.
        id: String,
    },
    /// A cgroup file could not be read or written.
    #[error("cgroup: {step} {path}")]
    Cgroup {
        /// What was being done.
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The container's processes did not all freeze in time; the cgroup was thawed again.
    #[error("container {id} did not freeze within {} seconds", FREEZE_TIMEOUT.as_secs())]
    FreezeTimeout {
        /// The container id.
        id: String,
    },
    /// `ps` could not be started.
    #[error("error running ps")]
    PsStart {
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `ps` failed.
    #[error("error running ps: {status}: {stderr}")]
    PsFailed {
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// `ps`'s output has no PID column (Docker's wording).
    #[error("couldn't find PID field in ps output")]
    NoPidColumn,
    /// A PID cell of `ps`'s output is not a number.
    #[error("unexpected pid '{text}' in ps output")]
    BadPid {
        /// The cell.
        text: String,
    },
}

fn cgroup_error(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ControlError {
    let path = path.to_path_buf();
    move |source| ControlError::Cgroup { step, path, source }
}

fn not_running(id: &str) -> ControlError {
    ControlError::NotRunning { id: id.into() }
}

/// The freezer of container `id`: the v1 `freezer` directory or the v2 directory, when it
/// has the freezer file.
fn freezer(id: &str) -> Option<ControllerDir> {
    let dir = controller_dir(id, "freezer")?;
    let file = if dir.unified {
        "cgroup.freeze"
    } else {
        "freezer.state"
    };
    dir.path.join(file).exists().then_some(dir)
}

fn frozen(dir: &ControllerDir) -> bool {
    if dir.unified {
        std::fs::read_to_string(dir.path.join("cgroup.freeze")).is_ok_and(|text| text.trim() == "1")
    } else {
        // FREEZING counts: some processes are frozen already.
        std::fs::read_to_string(dir.path.join("freezer.state"))
            .is_ok_and(|text| matches!(text.trim(), "FROZEN" | "FREEZING"))
    }
}

/// Whether running container `id` is paused (its cgroup frozen or freezing). False when it
/// is not running or the host has no freezer.
pub fn container_paused(id: &str) -> bool {
    freezer(id).is_some_and(|dir| frozen(&dir))
}

/// Freezes every process of running container `id` (Docker's `pause`) and returns once they
/// all are frozen. Processes that join later (nothing should: `exec` refuses a paused
/// container) freeze too. Errors: not running, already paused, no freezer, or a freeze
/// that does not complete within 10 s (the cgroup is thawed again then).
pub fn pause_container(id: &str) -> Result<(), ControlError> {
    if container_pid(id).is_none() {
        return Err(not_running(id));
    }
    let dir = freezer(id).ok_or_else(|| ControlError::NoFreezer { id: id.into() })?;
    if frozen(&dir) {
        return Err(ControlError::AlreadyPaused { id: id.into() });
    }
    let (file, value) = if dir.unified {
        (dir.path.join("cgroup.freeze"), "1")
    } else {
        (dir.path.join("freezer.state"), "FROZEN")
    };
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    let mut attempts = 0u32;
    loop {
        // v1 may stay FREEZING while a process is in an uninterruptible sleep; writing
        // FROZEN again retries the stragglers (runc does the same).
        if attempts.is_multiple_of(100) {
            std::fs::write(&file, value).map_err(cgroup_error("writing", &file))?;
        }
        attempts += 1;
        let done = if dir.unified {
            std::fs::read_to_string(dir.path.join("cgroup.events"))
                .is_ok_and(|events| events.lines().any(|line| line.trim() == "frozen 1"))
        } else {
            std::fs::read_to_string(&file).is_ok_and(|state| state.trim() == "FROZEN")
        };
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            crate::cgroup::thaw_dir(&dir.path);
            return Err(ControlError::FreezeTimeout { id: id.into() });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Thaws running container `id` (Docker's `unpause`). Errors: not running, not paused.
pub fn unpause_container(id: &str) -> Result<(), ControlError> {
    if container_pid(id).is_none() {
        return Err(not_running(id));
    }
    let dir = freezer(id)
        .filter(frozen)
        .ok_or_else(|| ControlError::NotPaused { id: id.into() })?;
    let (file, value) = if dir.unified {
        (dir.path.join("cgroup.freeze"), "0")
    } else {
        (dir.path.join("freezer.state"), "THAWED")
    };
    std::fs::write(&file, value).map_err(cgroup_error("writing", &file))
}

/// Thaws container `id` if it is frozen; nothing otherwise. For signals: a frozen process
/// acts on a signal only once thawed (Docker resumes a paused container it kills).
pub fn thaw_container(id: &str) {
    if let Some(dir) = freezer(id)
        && frozen(&dir)
    {
        crate::cgroup::thaw_dir(&dir.path);
    }
}

/// One reading of a container's resource counters, as Docker's stats API reports them.
/// Counters are cumulative: CPU % needs two readings ([`Usage::cpu_percent`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU time used by the container's processes, in nanoseconds.
    pub cpu_ns: u64,
    /// CPU time of the whole host (every CPU; user, nice, system, idle, iowait, irq and
    /// softirq of `/proc/stat`), in nanoseconds: Docker's `system_cpu_usage`.
    pub system_ns: u64,
    /// CPUs online on the host.
    pub online_cpus: u32,
    /// Memory in use, inactive page cache excluded (what Docker's CLI shows).
    pub memory: u64,
    /// The memory limit; the host's memory when the container has none (as Docker).
    pub memory_limit: u64,
    /// Bytes received on the container's own network interfaces (0 with the host network,
    /// as Docker).
    pub net_rx: u64,
    /// Bytes sent on the container's own network interfaces.
    pub net_tx: u64,
    /// Bytes read from block devices.
    pub block_read: u64,
    /// Bytes written to block devices.
    pub block_write: u64,
    /// Processes and threads (`pids.current`).
    pub pids: u64,
}

impl Usage {
    /// Docker's CPU %: the container's share of the host's CPU time between `previous` and
    /// this reading, times the online CPUs (so one busy CPU is 100%). 0 when either delta
    /// is not positive.
    pub fn cpu_percent(&self, previous: &Usage) -> f64 {
        let cpu = self.cpu_ns as f64 - previous.cpu_ns as f64;
        let system = self.system_ns as f64 - previous.system_ns as f64;
        if cpu > 0.0 && system > 0.0 {
            cpu / system * f64::from(self.online_cpus.max(1)) * 100.0
        } else {
            0.0
        }
    }

    /// Memory use as a percentage of the limit (0 without a limit).
    pub fn memory_percent(&self) -> f64 {
        if self.memory_limit == 0 {
            0.0
        } else {
            self.memory as f64 / self.memory_limit as f64 * 100.0
        }
    }
}

/// Reads a file of the container's cgroup; a missing file is `None`.
fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn number(text: Option<String>) -> Option<u64> {
    text.and_then(|text| text.trim().parse().ok())
}

/// The value of `key` in a `key value` file (`memory.stat`, `cpu.stat`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok()).flatten()
    })
}

/// Reads the resource counters of running container `id`.
pub fn container_usage(id: &str) -> Result<Usage, ControlError> {
    let pid = container_pid(id).ok_or_else(|| not_running(id))?;
    let (system_ns, online_cpus) = host_cpu();
    let mut usage = Usage {
        system_ns,
        online_cpus,
        ..Usage::default()
    };
    let host_memory = host_memory();
    if let Some(dir) = controller_dir(id, "cpuacct") {
        usage.cpu_ns = if dir.unified {
            read(&dir.path.join("cpu.stat"))
                .and_then(|stat| keyed(&stat, "usage_usec"))
                .unwrap_or(0)
                .saturating_mul(1000)
        } else {
            number(read(&dir.path.join("cpuacct.usage"))).unwrap_or(0)
        };
    }
    if let Some(dir) = controller_dir(id, "memory") {
        let (current, limit, inactive) = if dir.unified {
            ("memory.current", "memory.max", "inactive_file")
        } else {
            (
                "memory.usage_in_bytes",
                "memory.limit_in_bytes",
                "total_inactive_file",
            )
        };
        let used = number(read(&dir.path.join(current))).unwrap_or(0);
        let inactive = read(&dir.path.join("memory.stat"))
            .and_then(|stat| keyed(&stat, inactive))
            .unwrap_or(0);
        usage.memory = if inactive < used {
            used - inactive
        } else {
            used
        };
        // v2 "max" and v1's huge "unlimited" number both become the host's memory.
        usage.memory_limit = number(read(&dir.path.join(limit)))
            .unwrap_or(u64::MAX)
            .min(host_memory.unwrap_or(u64::MAX));
    }
    if let Some(dir) = controller_dir(id, "blkio") {
        (usage.block_read, usage.block_write) = block_io(&dir);
    }
    if let Some(dir) = controller_dir(id, "pids") {
        usage.pids = number(read(&dir.path.join("pids.current"))).unwrap_or_else(|| {
            read(&dir.path.join("cgroup.threads"))
                .or_else(|| read(&dir.path.join("tasks")))
                .map_or(0, |tasks| tasks.lines().count() as u64)
        });
    }
    (usage.net_rx, usage.net_tx) = network_io(pid);
    Ok(usage)
}

/// Host CPU time in nanoseconds (first seven fields of the `cpu` line of `/proc/stat`, as
/// Docker sums them) and the number of CPUs listed.
fn host_cpu() -> (u64, u32) {
    let stat = read(Path::new("/proc/stat")).unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .find(|line| line.starts_with("cpu "))
        .map(|line| {
            line.split_whitespace()
                .skip(1)
                .take(7)
                .filter_map(|field| field.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    let cpus = stat
        .lines()
        .filter(|line| {
            line.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    let nanos_per_tick = 1_000_000_000 / clock_ticks();
    (
        ticks.saturating_mul(nanos_per_tick),
        u32::try_from(cpus).unwrap_or(u32::MAX),
    )
}

/// `sysconf(_SC_CLK_TCK)`, the unit of `/proc` CPU times (100 on Linux).
fn clock_ticks() -> u64 {
    // SAFETY: sysconf takes an integer and returns one.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks)
        .ok()
        .filter(|ticks| *ticks > 0)
        .unwrap_or(100)
}

/// `MemTotal` of `/proc/meminfo` in bytes.
fn host_memory() -> Option<u64> {
    read(Path::new("/proc/meminfo"))?
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
}

/// Bytes read and written: v1 `blkio.io_service_bytes_recursive` (CFQ accounting) or its
/// BFQ twin, falling back to the throttle layer's counters when those have none, as
/// containerd does; v2 `io.stat`.
fn block_io(dir: &ControllerDir) -> (u64, u64) {
    if dir.unified {
        let stat = read(&dir.path.join("io.stat")).unwrap_or_default();
        return io_stat_totals(&stat);
    }
    for file in [
        "blkio.io_service_bytes_recursive",
        "blkio.bfq.io_service_bytes_recursive",
        "blkio.throttle.io_service_bytes_recursive",
    ] {
        let totals = blkio_totals(&read(&dir.path.join(file)).unwrap_or_default());
        if totals != (0, 0) {
            return totals;
        }
    }
    (0, 0)
}

/// Sums `MAJ:MIN Read N` and `MAJ:MIN Write N` lines of a v1 blkio file.
fn blkio_totals(text: &str) -> (u64, u64) {
    let mut totals = (0u64, 0u64);
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, op, value] = fields.as_slice() else {
            continue;
        };
        let value: u64 = value.parse().unwrap_or(0);
        match op.to_ascii_lowercase().as_str() {
            "read" => totals.0 += value,
            "write" => totals.1 += value,
            _ => {}
        }
    }
    totals
}

/// Sums `rbytes=` and `wbytes=` of every device line of v2 `io.stat`.
fn io_stat_totals(text: &str) -> (u64, u64) {
    let mut totals = (0u64, 0u64);
    for field in text.split_whitespace() {
        if let Some(value) = field.strip_prefix("rbytes=") {
            totals.0 += value.parse().unwrap_or(0);
        } else if let Some(value) = field.strip_prefix("wbytes=") {
            totals.1 += value.parse().unwrap_or(0);
        }
    }
    totals
}

/// Bytes received and sent on the interfaces of `pid`'s network namespace, loopback
/// excluded; (0, 0) when that namespace is this process's (the host network, for which
/// Docker reports nothing either).
fn network_io(pid: i32) -> (u64, u64) {
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net"));
    let ours = std::fs::metadata("/proc/self/ns/net");
    match (theirs, ours) {
        (Ok(theirs), Ok(ours)) if (theirs.dev(), theirs.ino()) != (ours.dev(), ours.ino()) => {
            net_dev_totals(&read(Path::new(&format!("/proc/{pid}/net/dev"))).unwrap_or_default())
        }
        _ => (0, 0),
    }
}

/// Sums received and sent bytes of `/proc/net/dev`, loopback excluded.
fn net_dev_totals(text: &str) -> (u64, u64) {
    let mut totals = (0u64, 0u64);
    for line in text.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let counters: Vec<u64> = counters
            .split_whitespace()
            .map(|field| field.parse().unwrap_or(0))
            .collect();
        if counters.len() >= 9 {
            totals.0 += counters[0];
            totals.1 += counters[8];
        }
    }
    totals
}

/// One process of a container, as the host sees it (`ps -ef`'s columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Host pid.
    pub pid: i32,
    /// Host pid of the parent (0 when the parent is outside the host's view).
    pub ppid: i32,
    /// Effective uid.
    pub uid: u32,
    /// The host's name for `uid` (host `/etc/passwd`, as the host's `ps` shows it).
    pub user: Option<String>,
    /// When it started.
    pub started: SystemTime,
    /// User plus system CPU time used.
    pub cpu_time: Duration,
    /// procps's `C`: CPU time over lifetime, in percent, at most 99.
    pub cpu_percent: u32,
    /// Its controlling terminal (`pts/0`), if any.
    pub tty: Option<String>,
    /// The command line, arguments joined by spaces; `[name]` when it has none.
    pub command: String,
}

/// The host pids of the processes of running container `id` (from its cgroup), ascending.
pub fn container_pids(id: &str) -> Result<Vec<i32>, ControlError> {
    if container_pid(id).is_none() {
        return Err(not_running(id));
    }
    let dir = existing_dirs(id)
        .into_iter()
        .next()
        .ok_or_else(|| not_running(id))?;
    let file = dir.join("cgroup.procs");
    let text = std::fs::read_to_string(&file).map_err(cgroup_error("reading", &file))?;
    let mut pids: Vec<i32> = text
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// The processes of running container `id`, by pid. A process that ends while it is being
/// read is left out.
pub fn container_processes(id: &str) -> Result<Vec<Process>, ControlError> {
    let pids = container_pids(id)?;
    let ticks = clock_ticks();
    let stat = read(Path::new("/proc/stat")).unwrap_or_default();
    let boot = stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|seconds| seconds.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let uptime = read(Path::new("/proc/uptime"))
        .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let passwd = read(Path::new("/etc/passwd")).unwrap_or_default();
    Ok(pids
        .into_iter()
        .filter_map(|pid| read_process(pid, ticks, boot, uptime, &passwd))
        .collect())
}

/// The fields of `/proc/<pid>/stat` after the command name, which may hold spaces and
/// parentheses (so the split is at the last `)`).
fn stat_fields(stat: &str) -> Option<(&str, Vec<&str>)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    Some((name, stat.get(close + 1..)?.split_whitespace().collect()))
}

fn read_process(pid: i32, ticks: u64, boot: u64, uptime: f64, passwd: &str) -> Option<Process> {
    let stat = read(Path::new(&format!("/proc/{pid}/stat")))?;
    let (name, fields) = stat_fields(&stat)?;
    // After the name: state(0) ppid(1) pgrp session tty_nr(4) ... utime(11) stime(12)
    // ... starttime(19).
    let field = |index: usize| fields.get(index).and_then(|text| text.parse::<u64>().ok());
    let ppid = fields.get(1)?.parse().ok()?;
    let tty = tty_name(field(4)?);
    let cpu_ticks = field(11)? + field(12)?;
    let start_ticks = field(19)?;
    let status = read(Path::new(&format!("/proc/{pid}/status")))?;
    let uid: u32 = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1)?.parse().ok())?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let command = if cmdline.is_empty() {
        format!("[{name}]")
    } else {
        cmdline
            .split(|byte| *byte == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let lifetime = (uptime - start_ticks as f64 / ticks as f64).max(0.0) as u64;
    let cpu_percent = (cpu_ticks * 100 / ticks)
        .checked_div(lifetime)
        .map_or(0, |percent| percent.min(99) as u32);
    let user = passwd.lines().find_map(|line| {
        let mut parts = line.split(':');
        let name = parts.next()?;
        (parts.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    });
    Some(Process {
        pid,
        ppid,
        uid,
        user,
        started: SystemTime::UNIX_EPOCH
            + Duration::from_secs(boot)
            + Duration::from_millis(start_ticks * 1000 / ticks),
        cpu_time: Duration::from_millis(cpu_ticks * 1000 / ticks),
        cpu_percent,
        tty,
        command,
    })
}

/// The name of a terminal from `tty_nr` (`pts/3`, `tty1`, `ttyS0`); `None` without one.
fn tty_name(tty_nr: u64) -> Option<String> {
    if tty_nr == 0 {
        return None;
    }
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    Some(match major {
        136..=143 => format!("pts/{}", minor + (major - 136) * 256),
        4 if minor < 64 => format!("tty{minor}"),
        4 => format!("ttyS{}", minor - 64),
        5 if minor == 0 => "tty".to_string(),
        5 if minor == 1 => "console".to_string(),
        _ => format!("{major}:{minor}"),
    })
}

/// `ps`'s table for a container, as Docker's `top` builds it: the column titles and, per
/// process of the container, its cells (the last one, the command, may hold spaces).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessTable {
    /// Column titles, as `ps` printed them.
    pub titles: Vec<String>,
    /// One row per process (or thread line) of the container.
    pub processes: Vec<Vec<String>>,
}

/// Runs the host's `ps` with `args` (Docker's `top CONTAINER [ps OPTIONS]`) and keeps the
/// lines of running container `id`'s processes, found through the `PID` column. As Docker:
/// `ps ARGS -q PIDS` first, then plain `ps ARGS` (some options cannot be combined with `-q`);
/// thread lines (`-` in the PID column) follow their process.
pub fn container_ps(id: &str, args: &[String]) -> Result<ProcessTable, ControlError> {
    let pids = container_pids(id)?;
    let list = pids
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let output = match Command::new("ps").args(args).args(["-q", &list]).output() {
        Ok(output) if output.status.success() => output,
        _ => Command::new("ps")
            .args(args)
            .output()
            .map_err(|source| ControlError::PsStart { source })?,
    };
    if !output.status.success() {
        return Err(ControlError::PsFailed {
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    parse_ps_output(&String::from_utf8_lossy(&output.stdout), &pids)
}

/// Docker's `parsePSOutput`.
fn parse_ps_output(text: &str, pids: &[i32]) -> Result<ProcessTable, ControlError> {
    let mut lines = text.split('\n');
    let titles: Vec<String> = lines
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let pid_index = titles
        .iter()
        .position(|title| title == "PID")
        .ok_or(ControlError::NoPidColumn)?;
    let mut table = ProcessTable {
        titles,
        processes: Vec::new(),
    };
    let mut previous_kept = false;
    for line in lines.filter(|line| !line.is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(cell) = fields.get(pid_index) else {
            continue;
        };
        let keep = if *cell == "-" {
            previous_kept
        } else {
            let pid: i32 = cell.parse().map_err(|_| ControlError::BadPid {
                text: cell.to_string(),
            })?;
            previous_kept = pids.contains(&pid);
            previous_kept
        };
        if keep {
            let last = table.titles.len().saturating_sub(1).min(fields.len());
            let mut row: Vec<String> = fields[..last].iter().map(|s| s.to_string()).collect();
            row.push(fields[last..].join(" "));
            table.processes.push(row);
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_output_keeps_the_containers_processes_and_their_threads() {
        let text = "\
UID PID PPID C STIME TTY TIME CMD
root 1 0 0 10:00 ? 00:00:01 /sbin/init
root 42 40 0 10:01 ? 00:00:00 sleep 1000
- - 40 0 10:01 ? 00:00:00 thread line
root 43 42 0 10:01 ? 00:00:00 sh -c echo hi
";
        let table = parse_ps_output(text, &[42]).unwrap();
        assert_eq!(table.titles.len(), 8);
        assert_eq!(
            table.processes,
            vec![
                vec![
                    "root",
                    "42",
                    "40",
                    "0",
                    "10:01",
                    "?",
                    "00:00:00",
                    "sleep 1000"
                ],
                vec!["-", "-", "40", "0", "10:01", "?", "00:00:00", "thread line"],
            ]
        );
        assert!(matches!(
            parse_ps_output("USER COMMAND\nroot x\n", &[1]),
            Err(ControlError::NoPidColumn)
        ));
        assert!(matches!(
            parse_ps_output("PID CMD\nabc x\n", &[1]),
            Err(ControlError::BadPid { .. })
        ));
    }

    #[test]
    fn counters_are_read_from_v1_and_v2_files() {
        let blkio = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:16 Read 1\nTotal 12289\n";
        assert_eq!(blkio_totals(blkio), (4097, 8192));
        let io = "8:0 rbytes=100 wbytes=200 rios=1 wios=2\n8:16 rbytes=1 wbytes=2\n";
        assert_eq!(io_stat_totals(io), (101, 202));
        let dev = "Inter-|   Receive |  Transmit\n face |bytes packets|bytes\n\
                   lo: 500 5 0 0 0 0 0 0 500 5 0 0 0 0 0 0\n\
                   eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n";
        assert_eq!(net_dev_totals(dev), (1000, 2000));
        assert_eq!(
            keyed("cache 5\ntotal_inactive_file 7\n", "total_inactive_file"),
            Some(7)
        );
        assert_eq!(
            keyed("usage_usec 12\nuser_usec 10\n", "usage_usec"),
            Some(12)
        );
    }

    #[test]
    fn cpu_percent_is_dockers_share_of_host_time_times_cpus() {
        let before = Usage {
            cpu_ns: 1_000,
            system_ns: 10_000,
            online_cpus: 2,
            ..Usage::default()
        };
        let after = Usage {
            cpu_ns: 2_000,
            system_ns: 20_000,
            ..before
        };
        assert!((after.cpu_percent(&before) - 20.0).abs() < 1e-9);
        assert_eq!(before.cpu_percent(&before), 0.0);
        let memory = Usage {
            memory: 25,
            memory_limit: 100,
            ..Usage::default()
        };
        assert!((memory.memory_percent() - 25.0).abs() < 1e-9);
    }

    #[test]
    fn proc_stat_names_may_hold_spaces_and_parentheses() {
        let (name, fields) = stat_fields("12 (a (b) c) S 1 12 12 0 -1").unwrap();
        assert_eq!(name, "a (b) c");
        assert_eq!(fields[0], "S");
        assert_eq!(fields[1], "1");
    }

    #[test]
    fn terminals_are_named_as_ps_names_them() {
        assert_eq!(tty_name(0), None);
        assert_eq!(tty_name((136 << 8) | 3).as_deref(), Some("pts/3"));
        assert_eq!(tty_name((4 << 8) | 1).as_deref(), Some("tty1"));
    }
}
