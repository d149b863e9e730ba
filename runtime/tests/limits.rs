//! Resource limits against real cgroups (v1 here; v2 where the host has v2 controllers) and
//! `--ulimit`, as root with a busybox root filesystem.
//!
//! Every container gets `kiln/<id>` cgroups with a test-unique id; only the container's
//! PID 1 joins them, never this test process. Each test checks that its cgroups are gone
//! afterwards.

mod common;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use common::{Fixture, RunOutput, fixture};
use kiln_runtime::{BindMount, Exit, Resources, Ulimit};

/// Every `kiln/<id>` directory of `id` on this host, v1 and v2.
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let v1 = entry.path().join("kiln").join(id);
        if v1.exists() {
            dirs.push(v1);
        }
    }
    let v2 = PathBuf::from("/sys/fs/cgroup/kiln").join(id);
    if v2.exists() && !dirs.contains(&v2) {
        dirs.push(v2);
    }
    dirs
}

/// The container's cgroup directory of `controller` (v1) or the unified one (v2).
fn cgroup_dir(controller: &str, id: &str) -> PathBuf {
    let v1 = PathBuf::from("/sys/fs/cgroup").join(controller);
    if v1.is_dir() {
        v1.join("kiln").join(id)
    } else {
        PathBuf::from("/sys/fs/cgroup/kiln").join(id)
    }
}

fn is_v2() -> bool {
    std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .is_ok_and(|controllers| !controllers.trim().is_empty())
}

/// Runs the fixture's spec on a thread and gives up (panicking) after `timeout`: a runaway
/// container is then still bounded by its pids limit and killed when this process exits.
fn run_with_timeout(f: &Fixture, timeout: Duration) -> RunOutput {
    let spec = f.spec.clone();
    let scratch = f.dir.path().to_path_buf();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(common::run_spec(&spec, &scratch));
    });
    receiver
        .recv_timeout(timeout)
        .expect("the container did not finish in time")
}

#[test]
fn a_process_allocating_beyond_the_memory_limit_is_oom_killed_with_137() {
    let Some(mut f) = fixture() else { return };
    f.spec.resources = Resources {
        memory: Some(32 << 20),
        // No swap to fall back on, so the limit is hit rather than swapped around.
        memory_swap: Some(32 << 20),
        ..Resources::default()
    };
    // busybox dd allocates (and fills) one block of `bs` bytes.
    f.spec.args = vec![
        "dd".into(),
        "if=/dev/zero".into(),
        "of=/dev/null".into(),
        "bs=256M".into(),
        "count=1".into(),
    ];
    let output = run_with_timeout(&f, Duration::from_secs(60));
    let outcome = output.result.as_ref().expect("run failed");
    assert_eq!(outcome.exit, Exit::Signal(9), "stderr: {}", output.stderr);
    assert_eq!(outcome.code(), 137);
    assert!(outcome.oom_killed);
    assert_eq!(cgroup_dirs(&f.spec.id), Vec::<PathBuf>::new());
}

#[test]
fn a_container_within_its_memory_limit_is_not_reported_oom_killed() {
    let Some(mut f) = fixture() else { return };
    f.spec.resources.memory = Some(64 << 20);
    f.sh("dd if=/dev/zero of=/dev/null bs=1M count=4 2>/dev/null; echo fine");
    let output = f.run();
    assert!(!output.result.as_ref().unwrap().oom_killed);
    assert_eq!(output.success(), "fine\n");
}

#[test]
fn the_pids_limit_stops_a_fork_loop_and_everything_is_cleaned_up() {
    let Some(mut f) = fixture() else { return };
    f.spec.resources.pids_limit = Some(20);
    // Records how many background sleeps it started; the shell gives up at the first fork
    // that fails. Without the limit it would start all 100.
    f.sh("for i in $(seq 100); do sleep 5 & echo $i > /tmp/started; done");
    let start = std::time::Instant::now();
    let output = run_with_timeout(&f, Duration::from_secs(60));
    let elapsed = start.elapsed();
    let exit = output.exit();
    assert_ne!(exit.code(), 0, "the loop ran to the end");
    assert!(
        output.stderr.contains("can't fork") || output.stderr.contains("Resource temporarily"),
        "stderr: {}",
        output.stderr
    );
    let started: u32 = std::fs::read_to_string(f.path("upper/tmp/started"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // PID 1 plus the sleeps: at most 20 processes.
    assert!(started <= 19, "{started} sleeps started");
    // The sleeps died with the PID namespace when the shell exited; nobody waited 5 s.
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert_eq!(cgroup_dirs(&f.spec.id), Vec::<PathBuf>::new());
}

#[test]
fn cpu_quota_shares_and_cpuset_are_written_to_the_containers_cgroup() {
    let Some(mut f) = fixture() else { return };
    f.spec.resources = Resources {
        cpus: Some(1.5),
        cpu_shares: Some(512),
        cpuset_cpus: Some("0".into()),
        ..Resources::default()
    };
    f.spec.mounts = vec![BindMount {
        source: f.path("host"),
        destination: "/sync".into(),
        read_only: false,
        copy_up: false,
    }];
    // The container waits while the test reads its cgroup files from the host side.
    f.sh("cat /proc/self/cgroup | grep -c ':/$'; touch /sync/ready; \
          while [ ! -e /sync/go ]; do sleep 0.05; done; echo done");
    let spec = f.spec.clone();
    let scratch = f.dir.path().to_path_buf();
    let runner = std::thread::spawn(move || common::run_spec(&spec, &scratch));
    assert!(common::wait_for_file(
        &f.path("host/ready"),
        Duration::from_secs(10)
    ));
    let id = &f.spec.id;
    let read = |controller: &str, file: &str| {
        std::fs::read_to_string(cgroup_dir(controller, id).join(file))
            .unwrap_or_else(|error| panic!("{controller}/{file}: {error}"))
            .trim()
            .to_string()
    };
    if is_v2() {
        assert_eq!(read("cpu", "cpu.max"), "150000 100000");
        assert_eq!(read("cpu", "cpu.weight"), "20");
        assert_eq!(read("cpuset", "cpuset.cpus"), "0");
    } else {
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "150000");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(read("cpu", "cpu.shares"), "512");
        assert_eq!(read("cpuset", "cpuset.cpus"), "0");
        // The container's processes are in it, this test process is not.
        let procs = read("cpu", "cgroup.procs");
        assert!(procs.lines().count() >= 1, "{procs}");
        let me = std::process::id().to_string();
        assert!(!procs.lines().any(|pid| pid == me), "{procs}");
    }
    std::fs::write(f.path("host/go"), "").unwrap();
    let output = runner.join().unwrap();
    // Every hierarchy's line shows `/`: the container has its own cgroup namespace rooted
    // at its cgroup.
    let lines = std::fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .count();
    assert_eq!(output.success(), format!("{lines}\ndone\n"));
    assert_eq!(cgroup_dirs(id), Vec::<PathBuf>::new());
}

#[test]
fn the_cpuset_confines_the_container_to_its_cpus() {
    let Some(mut f) = fixture() else { return };
    f.spec.resources.cpuset_cpus = Some("0".into());
    f.sh("grep Cpus_allowed_list /proc/self/status | tr -d ' \\t'");
    assert_eq!(f.run().success(), "Cpus_allowed_list:0\n");
}

#[test]
fn no_kiln_cgroup_directories_remain_after_runs_that_fail_or_are_killed() {
    let Some(mut f) = fixture() else { return };
    f.spec.resources.pids_limit = Some(50);
    f.spec.args = vec!["no-such-command".into()];
    assert_eq!(f.run().result.unwrap_err().exit_code(), 127);
    assert_eq!(cgroup_dirs(&f.spec.id), Vec::<PathBuf>::new());

    // PID 1 killed from the host.
    let token = format!("kiln-test-cgroup-kill-{}", std::process::id());
    f.spec.args = vec![
        "sh".into(),
        "-c".into(),
        "sleep 30 & sleep 30; true".into(),
        token.clone(),
    ];
    let spec = f.spec.clone();
    let scratch = f.dir.path().to_path_buf();
    let runner = std::thread::spawn(move || common::run_spec(&spec, &scratch));
    let pid = common::find_container_pid1(&token, Duration::from_secs(10)).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(runner.join().unwrap().exit(), Exit::Signal(9));
    assert_eq!(cgroup_dirs(&f.spec.id), Vec::<PathBuf>::new());

    // The init (the container's parent) killed: the container dies of its parent-death
    // signal and `run` removes the cgroup anyway.
    let spec = f.spec.clone();
    let scratch = f.dir.path().to_path_buf();
    let runner = std::thread::spawn(move || common::run_spec(&spec, &scratch));
    let pid = common::find_container_pid1(&token, Duration::from_secs(10)).unwrap();
    let init = common::parent_of(pid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(runner.join().unwrap().result.is_err());
    assert_eq!(cgroup_dirs(&f.spec.id), Vec::<PathBuf>::new());
}

#[test]
fn a_limit_below_dockers_minimum_fails_before_anything_starts() {
    let Some(mut f) = fixture() else { return };
    f.spec.resources.memory = Some(1 << 20);
    let error = f.run().result.unwrap_err();
    assert_eq!(error.to_string(), "minimum memory limit allowed is 6MB");
    assert_eq!(error.exit_code(), 125);
    assert!(!f.path("container/rootfs").exists());
}

#[test]
fn ulimit_nofile_is_visible_in_the_container() {
    let Some(mut f) = fixture() else { return };
    // Below this process's hard limit: raising a hard limit needs CAP_SYS_RESOURCE, which
    // kiln does not always hold.
    f.spec.ulimits = vec!["nofile=512:1024".parse::<Ulimit>().unwrap()];
    f.sh("ulimit -n; ulimit -Hn");
    assert_eq!(f.run().success(), "512\n1024\n");
}

#[test]
fn ulimits_apply_to_non_root_users_too() {
    let Some(mut f) = fixture() else { return };
    f.spec.user = Some("app".into());
    f.spec.ulimits = vec!["core=0".parse::<Ulimit>().unwrap()];
    f.sh("ulimit -c; ulimit -Hc");
    assert_eq!(f.run().success(), "0\n0\n");
}
