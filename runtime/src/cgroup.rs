//! The container's cgroup: `kiln/<id>` in each cgroup v1 hierarchy (memory, cpu, cpuacct,
//! cpuset, pids, freezer, devices), or in the unified hierarchy when cgroup v2 has
//! controllers at its root. Created and configured by the caller of `run` before the init
//! starts; the container's PID 1 joins it itself, before it creates its cgroup namespace and
//! long before `execve` (so the calling process never enters a limited cgroup); removed by
//! the caller after the init ends.
//!
//! Host settings are never changed: only directories under `kiln/` are created and written
//! (on v2, controllers must already be enabled at the root; kiln enables them only in
//! `kiln/cgroup.subtree_control`). Nothing here writes to `/proc/sys`.
//!
//! The device allow-list ([`crate::devices::DEFAULT_RULES`], unless privileged) is written to
//! the v1 devices controller, or on v2 attached to `kiln/<id>` as a BPF device program.
//!
//! Not here: compiling and loading that program (`devices`). Freezing
//! (`pause`), statistics and process listing are in `control`, joining from `exec` in `exec`;
//! they find the directories through [`controller_dir`] and [`existing_dirs`].

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::RuntimeError;
use crate::spec::Resources;

/// Root of the cgroup file systems.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// kiln's sub-hierarchy in every cgroup tree.
const KILN: &str = "kiln";
/// The CFS period Docker uses for `--cpus`.
const CPU_PERIOD: u64 = 100_000;

/// The v1 controllers a container gets a cgroup in, where the host mounts them (`blkio`
/// only for its I/O counters, read by `stats`).
const V1_CONTROLLERS: [&str; 8] = [
    "memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "devices", "blkio",
];

/// Which cgroup layout the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    /// Per-controller v1 hierarchies: controller name → mount point.
    V1(Vec<(&'static str, PathBuf)>),
    /// The unified hierarchy with these controllers enabled at its root.
    V2 {
        root: PathBuf,
        controllers: Vec<String>,
    },
}

fn detect() -> Layout {
    let root = Path::new(CGROUP_ROOT);
    if let Ok(controllers) = std::fs::read_to_string(root.join("cgroup.controllers"))
        && !controllers.trim().is_empty()
    {
        let enabled = std::fs::read_to_string(root.join("cgroup.subtree_control"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        return Layout::V2 {
            root: root.to_path_buf(),
            controllers: enabled,
        };
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    Layout::V1(v1_mounts(&mountinfo))
}

/// The v1 controllers of [`V1_CONTROLLERS`] and where they are mounted, from mountinfo
/// (so co-mounted controllers such as `cpu,cpuacct` share one directory).
fn v1_mounts(mountinfo: &str) -> Vec<(&'static str, PathBuf)> {
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split_whitespace();
        if right.next() != Some("cgroup") {
            continue;
        }
        let options = right.nth(1).unwrap_or("");
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        for controller in V1_CONTROLLERS {
            if options.split(',').any(|option| option == controller)
                && !found.iter().any(|(known, _)| *known == controller)
            {
                found.push((controller, PathBuf::from(unescape(mount_point))));
            }
        }
    }
    found
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal.
fn unescape(text: &str) -> String {
    text.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// One file write of the configuration.
type Setting = (&'static str, String);

/// A created container cgroup. Dropping it removes it (see [`Cgroup::remove`]).
#[derive(Debug)]
pub(crate) struct Cgroup {
    /// `kiln/<id>` directories, one per distinct hierarchy.
    dirs: Vec<PathBuf>,
    /// Where the OOM kill counter is: v1 `memory.oom_control`, v2 `memory.events`.
    oom_file: Option<PathBuf>,
    removed: bool,
}

fn io_error(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.to_path_buf();
    move |source| RuntimeError::Cgroup { step, path, source }
}

fn write(path: &Path, value: &str) -> Result<(), RuntimeError> {
    std::fs::write(path, value).map_err(io_error("writing", path))
}

/// `mkdir`, where an existing directory is fine (another container made `kiln/` first).
fn make_dir(path: &Path) -> Result<bool, RuntimeError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(error) => Err(io_error("creating", path)(error)),
    }
}

fn missing(controller: &'static str, limit: &'static str) -> RuntimeError {
    RuntimeError::CgroupControllerMissing { controller, limit }
}

/// The v1 settings per controller for `resources`. `memsw`: the kernel accounts swap.
fn v1_settings(
    resources: &Resources,
    memsw: bool,
    privileged: bool,
) -> Result<Vec<(&'static str, Setting)>, RuntimeError> {
    let mut settings = Vec::new();
    if let Some(memory) = resources.memory {
        settings.push(("memory", ("memory.limit_in_bytes", memory.to_string())));
        let swap = match resources.memory_swap {
            Some(-1) => Some("-1".to_string()),
            Some(total) => Some(total.to_string()),
            None => memsw.then(|| memory.saturating_mul(2).to_string()),
        };
        if let Some(swap) = swap {
            if !memsw {
                return Err(missing("memory (swap accounting)", "memory-swap limit"));
            }
            settings.push(("memory", ("memory.memsw.limit_in_bytes", swap)));
        }
    }
    if let Some(cpus) = resources.cpus {
        settings.push(("cpu", ("cpu.cfs_period_us", CPU_PERIOD.to_string())));
        settings.push(("cpu", ("cpu.cfs_quota_us", cpu_quota(cpus).to_string())));
    }
    if let Some(shares) = resources.cpu_shares.filter(|shares| *shares > 0) {
        settings.push(("cpu", ("cpu.shares", shares.to_string())));
    }
    if let Some(cpus) = &resources.cpuset_cpus {
        settings.push(("cpuset", ("cpuset.cpus", cpus.clone())));
    }
    if let Some(limit) = resources.pids_limit {
        settings.push(("pids", ("pids.max", pids_max(limit))));
    }
    if !privileged {
        settings.push(("devices", ("devices.deny", "a".into())));
        for rule in &crate::devices::DEFAULT_RULES {
            settings.push(("devices", ("devices.allow", rule.to_string())));
        }
    }
    Ok(settings)
}

/// The v2 settings per controller for `resources`.
fn v2_settings(resources: &Resources) -> Vec<(&'static str, Setting)> {
    let mut settings = Vec::new();
    if let Some(memory) = resources.memory {
        settings.push(("memory", ("memory.max", memory.to_string())));
        // v2 limits swap alone; Docker's value is memory plus swap.
        let swap = match resources.memory_swap {
            Some(-1) => Some("max".to_string()),
            Some(total) => Some((total as u64).saturating_sub(memory).to_string()),
            None => Some(memory.to_string()),
        };
        if let Some(swap) = swap {
            settings.push(("memory", ("memory.swap.max", swap)));
        }
    }
    if let Some(cpus) = resources.cpus {
        settings.push((
            "cpu",
            ("cpu.max", format!("{} {CPU_PERIOD}", cpu_quota(cpus))),
        ));
    }
    if let Some(shares) = resources.cpu_shares.filter(|shares| *shares > 0) {
        settings.push(("cpu", ("cpu.weight", shares_to_weight(shares).to_string())));
    }
    if let Some(cpus) = &resources.cpuset_cpus {
        settings.push(("cpuset", ("cpuset.cpus", cpus.clone())));
    }
    if let Some(limit) = resources.pids_limit {
        settings.push(("pids", ("pids.max", pids_max(limit))));
    }
    settings
}

fn cpu_quota(cpus: f64) -> u64 {
    (cpus * CPU_PERIOD as f64).round() as u64
}

fn pids_max(limit: i64) -> String {
    if limit > 0 {
        limit.to_string()
    } else {
        "max".into()
    }
}

/// runc's conversion of v1 shares (2..=262144) to v2 weight (1..=10000).
fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// The limit a controller carries, for the missing-controller error.
fn limit_name(controller: &str) -> &'static str {
    match controller {
        "memory" => "memory limit",
        "cpu" => "cpu limit",
        "cpuset" => "cpuset",
        "pids" => "pids limit",
        _ => "device rules",
    }
}

fn controller_name(controller: &str) -> &'static str {
    V1_CONTROLLERS
        .iter()
        .find(|known| **known == controller)
        .copied()
        .unwrap_or("unknown")
}

impl Cgroup {
    /// Creates `kiln/<id>` and applies `resources`. A limit whose controller the host lacks
    /// is an error; controllers not needed by a limit are used where present. A leftover
    /// `kiln/<id>` without processes (from a run whose caller was killed) is replaced; one
    /// with processes is [`RuntimeError::CgroupInUse`]. On error, whatever was created is
    /// removed.
    pub(crate) fn create(
        id: &str,
        resources: &Resources,
        privileged: bool,
    ) -> Result<Cgroup, RuntimeError> {
        let mut cgroup = Cgroup {
            dirs: Vec::new(),
            oom_file: None,
            removed: false,
        };
        match detect() {
            Layout::V1(mounts) => cgroup.create_v1(id, &mounts, resources, privileged)?,
            Layout::V2 { root, controllers } => {
                cgroup.create_v2(id, &root, &controllers, resources, privileged)?
            }
        }
        Ok(cgroup)
    }

    fn create_v1(
        &mut self,
        id: &str,
        mounts: &[(&'static str, PathBuf)],
        resources: &Resources,
        privileged: bool,
    ) -> Result<(), RuntimeError> {
        let memory_mount = mounts.iter().find(|(name, _)| *name == "memory");
        let memsw = memory_mount
            .is_some_and(|(_, mount)| mount.join("memory.memsw.limit_in_bytes").exists());
        let settings = v1_settings(resources, memsw, privileged)?;
        for (controller, _) in &settings {
            // Device rules are a default, not a request: skipped without the controller.
            if *controller != "devices" && !mounts.iter().any(|(name, _)| name == controller) {
                return Err(missing(controller_name(controller), limit_name(controller)));
            }
        }
        for (controller, mount) in mounts {
            let dir = mount.join(KILN).join(id);
            let parent = mount.join(KILN);
            if !self.dirs.contains(&dir) {
                make_dir(&parent)?;
                if *controller == "cpuset" {
                    // A new v1 cpuset is empty and cannot take tasks: copy the parent's.
                    inherit_cpuset(mount, &parent)?;
                }
                create_leaf(&dir)?;
                self.dirs.push(dir.clone());
                if *controller == "cpuset" {
                    inherit_cpuset(&parent, &dir)?;
                }
            }
            for (wanted, (file, value)) in &settings {
                if wanted == controller {
                    write(&dir.join(file), value)?;
                }
            }
            if *controller == "memory" {
                self.oom_file = Some(dir.join("memory.oom_control"));
            }
        }
        Ok(())
    }

    fn create_v2(
        &mut self,
        id: &str,
        root: &Path,
        enabled: &[String],
        resources: &Resources,
        privileged: bool,
    ) -> Result<(), RuntimeError> {
        let settings = v2_settings(resources);
        for (controller, _) in &settings {
            if !enabled.iter().any(|name| name == controller) {
                return Err(missing(controller_name(controller), limit_name(controller)));
            }
        }
        let parent = root.join(KILN);
        make_dir(&parent)?;
        let wanted: Vec<String> = ["memory", "cpu", "cpuset", "pids", "io"]
            .iter()
            .filter(|name| enabled.iter().any(|enabled| enabled == *name))
            .map(|name| format!("+{name}"))
            .collect();
        if !wanted.is_empty() {
            write(&parent.join("cgroup.subtree_control"), &wanted.join(" "))?;
        }
        let dir = parent.join(id);
        create_leaf(&dir)?;
        self.dirs.push(dir.clone());
        for (_, (file, value)) in &settings {
            write(&dir.join(file), value)?;
        }
        if !privileged {
            // v2 has no devices files: the same rules as a BPF device program, attached
            // before any process joins (the container's PID 1 joins after `create`).
            crate::devices::attach_device_filter(&dir, &crate::devices::DEFAULT_RULES).map_err(
                |error| RuntimeError::Cgroup {
                    step: "attaching the device allow-list to",
                    path: dir.clone(),
                    source: std::io::Error::other(error),
                },
            )?;
        }
        if enabled.iter().any(|name| name == "memory") {
            self.oom_file = Some(dir.join("memory.events"));
        }
        Ok(())
    }

    /// The files the container's PID 1 writes `0` to, to join: see [`join_files`].
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        join_files(&self.dirs)
    }

    /// Whether the OOM killer killed a process in this cgroup (the `oom_kill` counter of v1
    /// `memory.oom_control` or v2 `memory.events`). False without a memory controller.
    pub(crate) fn oom_killed(&self) -> bool {
        let Some(file) = &self.oom_file else {
            return false;
        };
        let text = std::fs::read_to_string(file).unwrap_or_default();
        oom_kill_count(&text) > 0
    }

    /// Kills whatever is left in the cgroup and removes its directories. Idempotent. Waits
    /// (up to 5 s) for killed processes to be reaped, since a cgroup with processes cannot
    /// be removed.
    pub(crate) fn remove(&mut self) -> Result<(), RuntimeError> {
        if self.removed {
            return Ok(());
        }
        let result = remove_dirs(&self.dirs);
        self.removed = result.is_ok();
        result
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

/// The file of each cgroup directory in `dirs` that a single-threaded process writes `0` to,
/// to move itself there: `tasks` on v1, `cgroup.procs` on v2.
///
/// Why `tasks` on v1: writing to `cgroup.procs` moves a whole thread group, which takes the
/// global `cgroup_threadgroup_rwsem` for writing, and that waits for an RCU grace period
/// (measured at 5 to 25 ms per container start on the 2-core machines under load). Writing
/// `0` to `tasks` moves only the calling thread, which since Linux 6.0 ("cgroup: Optimize
/// single thread migration") skips that lock; for a process with one thread (the container's
/// PID 1 and an exec'd process are forked from single-threaded processes and join before
/// they could start threads) the result is the same: the process is in the cgroup and its
/// children are born there. On v2, `cgroup.threads` only moves threads within one threaded
/// domain, so `cgroup.procs` it is.
pub(crate) fn join_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    dirs.iter()
        .map(|dir| {
            let tasks = dir.join("tasks");
            if tasks.exists() {
                tasks
            } else {
                dir.join("cgroup.procs")
            }
        })
        .collect()
}

/// Copies `cpuset.cpus` and `cpuset.mems` from `from` to `to` where `to`'s are empty.
fn inherit_cpuset(from: &Path, to: &Path) -> Result<(), RuntimeError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let current = std::fs::read_to_string(to.join(file)).unwrap_or_default();
        if !current.trim().is_empty() {
            continue;
        }
        let source = from.join(file);
        let value = std::fs::read_to_string(&source).map_err(io_error("reading", &source))?;
        write(&to.join(file), value.trim())?;
    }
    Ok(())
}

/// Creates the container's own cgroup directory, replacing an abandoned one.
fn create_leaf(dir: &Path) -> Result<(), RuntimeError> {
    if make_dir(dir)? {
        return Ok(());
    }
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    if !procs.trim().is_empty() {
        return Err(RuntimeError::CgroupInUse {
            path: dir.to_path_buf(),
        });
    }
    std::fs::remove_dir(dir).map_err(io_error("removing stale", dir))?;
    make_dir(dir)?;
    Ok(())
}

fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}

fn remove_dirs(dirs: &[PathBuf]) -> Result<(), RuntimeError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    for dir in dirs {
        loop {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(error) if error.kind() == ErrorKind::NotFound => break,
                Err(error) if error.raw_os_error() == Some(libc::EBUSY) => {
                    if Instant::now() > deadline {
                        return Err(io_error("removing", dir)(error));
                    }
                    kill_all(dir);
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(error) => return Err(io_error("removing", dir)(error)),
            }
        }
    }
    Ok(())
}

/// SIGKILL to every process listed in the cgroup, thawed first: a frozen (paused) process
/// only dies once it runs again.
fn kill_all(dir: &Path) {
    thaw_dir(dir);
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs
        .lines()
        .filter_map(|line| line.trim().parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Removes the cgroup of container `id` in every hierarchy, killing what is left in it:
/// for `rm` of a container whose `run` was killed before it could clean up. Idempotent: a
/// missing cgroup is not an error.
pub fn remove_cgroup(id: &str) -> Result<(), RuntimeError> {
    if id.is_empty() || id.contains('/') || id.starts_with('.') {
        return Err(RuntimeError::InvalidId { id: id.into() });
    }
    remove_dirs(&container_dirs(id))
}

/// The directories of container `id`'s cgroup, one per hierarchy (they may not exist).
fn container_dirs(id: &str) -> Vec<PathBuf> {
    match detect() {
        Layout::V1(mounts) => {
            let mut dirs: Vec<PathBuf> = Vec::new();
            for (_, mount) in mounts {
                let dir = mount.join(KILN).join(id);
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
            dirs
        }
        Layout::V2 { root, .. } => vec![root.join(KILN).join(id)],
    }
}

/// Thaws a frozen cgroup directory: v1 `freezer.state`, v2 `cgroup.freeze`. Nothing happens
/// for a directory without either file.
pub(crate) fn thaw_dir(dir: &Path) {
    let v1 = dir.join("freezer.state");
    if v1.exists() {
        let _ = std::fs::write(&v1, "THAWED");
    }
    let v2 = dir.join("cgroup.freeze");
    if v2.exists() {
        let _ = std::fs::write(&v2, "0");
    }
}

/// Whether `id` can name a cgroup directory without leaving `kiln/`.
pub(crate) fn safe_id(id: &str) -> bool {
    !(id.is_empty() || id.contains('/') || id.starts_with('.'))
}

/// A container's cgroup directory for one controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ControllerDir {
    /// `<mount>/kiln/<id>`.
    pub(crate) path: PathBuf,
    /// Whether it is in the unified (v2) hierarchy, whose file names differ from v1's.
    pub(crate) unified: bool,
}

/// Where container `id`'s cgroup is for v1 controller `controller` (`freezer`, `memory`,
/// `cpuacct`, `blkio`, `pids`...): the directory in the v1 hierarchy that has it, or the
/// unified directory on v2 (whatever the controller; the caller checks for the files it
/// needs). `None` when the id is unsafe, the host lacks the controller or the directory does
/// not exist (the container is not running).
pub(crate) fn controller_dir(id: &str, controller: &str) -> Option<ControllerDir> {
    if !safe_id(id) {
        return None;
    }
    let dir = match detect() {
        Layout::V1(mounts) => ControllerDir {
            path: mounts
                .iter()
                .find(|(name, _)| *name == controller)
                .map(|(_, mount)| mount.join(KILN).join(id))?,
            unified: false,
        },
        Layout::V2 { root, .. } => ControllerDir {
            path: root.join(KILN).join(id),
            unified: true,
        },
    };
    dir.path.is_dir().then_some(dir)
}

/// The existing cgroup directories of container `id`, one per hierarchy.
pub(crate) fn existing_dirs(id: &str) -> Vec<PathBuf> {
    if !safe_id(id) {
        return Vec::new();
    }
    container_dirs(id)
        .into_iter()
        .filter(|dir| dir.is_dir())
        .collect()
}

/// The host pid of the PID 1 of running container `id`: the process in its cgroup whose pid
/// in its own PID namespace is 1 (`NSpid` in `/proc/<pid>/status`). `None` when the
/// container is not running (no cgroup, or PID 1 not started or gone).
pub fn container_pid(id: &str) -> Option<i32> {
    if id.is_empty() || id.contains('/') || id.starts_with('.') {
        return None;
    }
    container_dirs(id).iter().find_map(|dir| {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
        procs
            .lines()
            .filter_map(|line| line.trim().parse::<i32>().ok())
            .find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|status| {
                        status
                            .lines()
                            .find(|line| line.starts_with("NSpid:"))
                            .and_then(|line| line.split_whitespace().last())
                            .map(|inner| inner == "1")
                    })
                    .unwrap_or(false)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_mounts_come_from_mountinfo_including_co_mounted_controllers() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
33 25 0:29 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
34 25 0:30 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
        assert_eq!(
            v1_mounts(mountinfo),
            vec![
                ("cpu", PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")),
                ("cpuacct", PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")),
                ("memory", PathBuf::from("/sys/fs/cgroup/memory")),
                ("pids", PathBuf::from("/sys/fs/cgroup/pids")),
            ]
        );
    }

    #[test]
    fn docker_limits_become_v1_files() {
        let resources = Resources {
            memory: Some(64 << 20),
            cpus: Some(1.5),
            cpu_shares: Some(512),
            cpuset_cpus: Some("0".into()),
            pids_limit: Some(20),
            ..Resources::default()
        };
        let settings = v1_settings(&resources, true, true).unwrap();
        let shown: Vec<String> = settings
            .iter()
            .map(|(_, (file, value))| format!("{file}={value}"))
            .collect();
        assert_eq!(
            shown,
            vec![
                "memory.limit_in_bytes=67108864",
                // Docker's default swap: as much again as memory.
                "memory.memsw.limit_in_bytes=134217728",
                "cpu.cfs_period_us=100000",
                "cpu.cfs_quota_us=150000",
                "cpu.shares=512",
                "cpuset.cpus=0",
                "pids.max=20",
            ]
        );
        // Without swap accounting the default swap is skipped, an explicit one refused.
        assert_eq!(v1_settings(&resources, false, true).unwrap().len(), 6);
        let explicit = Resources {
            memory_swap: Some(-1),
            ..resources
        };
        assert!(v1_settings(&explicit, false, true).is_err());
        // Unprivileged containers get the device allow-list.
        let devices = v1_settings(&Resources::default(), true, false).unwrap();
        assert_eq!(devices[0].1, ("devices.deny", "a".to_string()));
        assert_eq!(devices.len(), 1 + crate::devices::DEFAULT_RULES.len());
        assert_eq!(devices[1].1, ("devices.allow", "c *:* m".to_string()));
    }

    #[test]
    fn docker_limits_become_v2_files() {
        let resources = Resources {
            memory: Some(64 << 20),
            memory_swap: Some(96 << 20),
            cpus: Some(0.5),
            cpu_shares: Some(1024),
            pids_limit: Some(0),
            ..Resources::default()
        };
        let shown: Vec<String> = v2_settings(&resources)
            .iter()
            .map(|(_, (file, value))| format!("{file}={value}"))
            .collect();
        assert_eq!(
            shown,
            vec![
                "memory.max=67108864",
                "memory.swap.max=33554432",
                "cpu.max=50000 100000",
                "cpu.weight=39",
                "pids.max=max",
            ]
        );
    }

    /// The v2 path attaches Docker's allow-list to an unprivileged container's cgroup and
    /// nothing to a privileged one's. Run on a test directory of the host's cgroup2
    /// hierarchy (standing in for its root), whatever the controllers are bound to.
    #[test]
    #[allow(clippy::print_stderr, reason = "skip reasons")]
    fn v2_containers_get_the_device_program_unless_privileged() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (cgroup2 directories, BPF programs)");
            return;
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let Some(unified) = mountinfo.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next() == Some("cgroup2"))
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        }) else {
            eprintln!("skipped: no cgroup2 hierarchy is mounted");
            return;
        };
        let root = unified.join(format!("kiln-test-v2-devices-{}", std::process::id()));
        std::fs::create_dir(&root).unwrap();
        for (privileged, programs) in [(false, 1), (true, 0)] {
            let mut cgroup = Cgroup {
                dirs: Vec::new(),
                oom_file: None,
                removed: false,
            };
            let result = cgroup.create_v2("c", &root, &[], &Resources::default(), privileged);
            let attached = crate::devices::attached_device_programs(&root.join(KILN).join("c"));
            cgroup.remove().unwrap();
            result.unwrap();
            assert_eq!(attached.unwrap(), programs, "privileged: {privileged}");
        }
        std::fs::remove_dir(root.join(KILN)).unwrap();
        std::fs::remove_dir(&root).unwrap();
    }

    #[test]
    fn oom_kills_are_counted_from_v1_and_v2_files() {
        assert_eq!(
            oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            2
        );
        assert_eq!(
            oom_kill_count("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n"),
            1
        );
        assert_eq!(oom_kill_count("oom_kill_disable 0\nunder_oom 0\n"), 0);
    }
}
