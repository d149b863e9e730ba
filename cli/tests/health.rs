//! Healthchecks of detached containers, as Docker runs them: `--health-*` options and the
//! image's `HEALTHCHECK`, `State.Health` in inspect, the `(healthy)` suffix in `ps` and its
//! `health=` filter, timeouts, start periods, and a checker that stops with the container.
//! Real containers (busybox from Debian's `busybox-static`); skipped with a printed reason
//! when not root or when busybox is missing. Intervals are small and every wait polls
//! `inspect` against a deadline.
#![allow(clippy::print_stderr)]

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::kiln;
use serde_json::Value;

/// A store with `busybox:latest` (CMD sh) and the extra image config `changes`.
fn store_with(changes: &[&str]) -> Option<tempfile::TempDir> {
    let mut all = vec!["CMD [\"sh\"]"];
    all.extend_from_slice(changes);
    common::busybox_store(&all, &[])
}

/// Removes the named containers (`rm -f`) when dropped, so a failing test leaves nothing
/// running. Declared after the store, so it is dropped first.
struct Cleanup<'a> {
    dir: &'a tempfile::TempDir,
    names: &'a [&'a str],
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = kiln(self.dir).args(["rm", "-f"]).args(self.names).output();
    }
}

/// `kiln run -d ARGS...`, which must succeed.
fn run_detached(dir: &tempfile::TempDir, args: &[&str]) {
    let output = kiln(dir).args(["run", "-d"]).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "run -d {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn stdout_of(dir: &tempfile::TempDir, args: &[&str]) -> String {
    let output = kiln(dir).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The container's inspect object.
fn inspect(dir: &tempfile::TempDir, name: &str) -> Value {
    let text = stdout_of(dir, &["inspect", name]);
    let value: Value = serde_json::from_str(&text).unwrap();
    value[0].clone()
}

/// Polls the container's inspect object until `condition` holds (within 20 s); returns it.
fn wait_for(
    dir: &tempfile::TempDir,
    name: &str,
    what: &str,
    condition: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = inspect(dir, name);
        if condition(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; State: {:#}",
            value["State"]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn health_status(value: &Value) -> &str {
    value["State"]["Health"]["Status"].as_str().unwrap_or("")
}

/// The STATUS column of `ps` for the container named `name` (`--format`).
fn ps_status(dir: &tempfile::TempDir, name: &str) -> String {
    stdout_of(
        dir,
        &[
            "ps",
            "-a",
            "--filter",
            &format!("name=^/{name}$"),
            "--format",
            "{{.Status}}",
        ],
    )
    .trim()
    .to_string()
}

/// Names `ps` lists with `--filter FILTER`.
fn ps_names(dir: &tempfile::TempDir, filter: &str) -> Vec<String> {
    let text = stdout_of(dir, &["ps", "--filter", filter, "--format", "{{.Names}}"]);
    let mut names: Vec<String> = text.lines().map(str::to_string).collect();
    names.sort();
    names
}

/// Host pids whose command line is exactly `cmdline` (NUL-separated arguments).
fn host_pids_running(cmdline: &[u8]) -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            (fs::read(entry.path().join("cmdline")).ok()? == cmdline).then_some(pid)
        })
        .collect()
}

/// Host pids of the monitors of this store's containers.
fn monitors_of(dir: &tempfile::TempDir) -> Vec<i32> {
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline);
            (text.contains("__kiln-monitor") && text.contains(store)).then_some(pid)
        })
        .collect()
}

/// Host pids of exec parents (kiln re-executed for `exec` or a probe) started by one of
/// `monitors`: their environment names the process that started them.
fn exec_parents_of(monitors: &[i32]) -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
            if !String::from_utf8_lossy(&cmdline).contains("__kiln-exec") {
                return None;
            }
            let environ = fs::read(entry.path().join("environ")).ok()?;
            let started_by = environ
                .split(|byte| *byte == 0)
                .find_map(|entry| entry.strip_prefix(b"_KILN_INIT_PARENT="))
                .and_then(|pid| std::str::from_utf8(pid).ok()?.parse::<i32>().ok())?;
            monitors.contains(&started_by).then_some(pid)
        })
        .collect()
}

#[test]
fn a_passing_probe_makes_the_container_healthy() {
    let Some(dir) = store_with(&[]) else { return };
    let _cleanup = Cleanup {
        dir: &dir,
        names: &["ok", "slow"],
    };
    run_detached(
        &dir,
        &[
            "--name",
            "ok",
            "--health-cmd",
            "echo fine; echo oops >&2",
            "--health-interval",
            "200ms",
            "busybox",
            "sleep",
            "1000",
        ],
    );
    // An interval of an hour: it stays `starting`.
    run_detached(
        &dir,
        &[
            "--name",
            "slow",
            "--health-cmd",
            "true",
            "--health-interval",
            "1h",
            "busybox",
            "sleep",
            "1000",
        ],
    );
    let slow = inspect(&dir, "slow");
    assert_eq!(health_status(&slow), "starting", "{:#}", slow["State"]);
    assert_eq!(slow["State"]["Health"]["FailingStreak"], 0);
    assert!(ps_status(&dir, "slow").ends_with(" (health: starting)"));

    let ok = wait_for(&dir, "ok", "healthy", |value| {
        health_status(value) == "healthy"
    });
    let health = &ok["State"]["Health"];
    assert_eq!(health["FailingStreak"], 0);
    let log = health["Log"].as_array().unwrap();
    let last = log.last().unwrap();
    assert_eq!(last["ExitCode"], 0);
    // stdout and stderr of the probe, together.
    assert_eq!(last["Output"], "fine\noops\n");
    assert!(last["Start"].as_str().unwrap() <= last["End"].as_str().unwrap());
    // The check as Docker shows it in Config.
    assert_eq!(
        ok["Config"]["Healthcheck"]["Test"],
        serde_json::json!(["CMD-SHELL", "echo fine; echo oops >&2"])
    );
    assert_eq!(ok["Config"]["Healthcheck"]["Interval"], 200_000_000);
    let status = ps_status(&dir, "ok");
    assert!(
        status.starts_with("Up ") && status.ends_with(" (healthy)"),
        "{status:?}"
    );
    assert_eq!(
        stdout_of(&dir, &["inspect", "-f", "{{.State.Health.Status}}", "ok"]).trim(),
        "healthy"
    );
    assert_eq!(ps_names(&dir, "health=healthy"), ["ok"]);
    assert_eq!(ps_names(&dir, "health=starting"), ["slow"]);
    assert!(ps_names(&dir, "health=unhealthy").is_empty());
    assert!(ps_names(&dir, "health=none").is_empty());
}

#[test]
fn failing_probes_make_it_unhealthy_after_the_retries() {
    let Some(dir) = store_with(&[]) else { return };
    let _cleanup = Cleanup {
        dir: &dir,
        names: &["sick"],
    };
    run_detached(
        &dir,
        &[
            "--name",
            "sick",
            "--health-cmd",
            "echo bad; exit 3",
            "--health-interval",
            "100ms",
            "--health-retries",
            "2",
            "busybox",
            "sleep",
            "1000",
        ],
    );
    let first = wait_for(&dir, "sick", "a first failed probe", |value| {
        value["State"]["Health"]["FailingStreak"] == 1
    });
    // One failure of two allowed: still starting.
    assert_eq!(health_status(&first), "starting");
    let sick = wait_for(&dir, "sick", "unhealthy", |value| {
        health_status(value) == "unhealthy"
    });
    assert!(sick["State"]["Health"]["FailingStreak"].as_u64().unwrap() >= 2);
    assert_eq!(sick["State"]["Running"], true);
    assert!(ps_status(&dir, "sick").ends_with(" (unhealthy)"));
    assert_eq!(ps_names(&dir, "health=unhealthy"), ["sick"]);
    // Only the last five probes are kept.
    let many = wait_for(&dir, "sick", "seven failures", |value| {
        value["State"]["Health"]["FailingStreak"].as_u64() >= Some(7)
    });
    let log = many["State"]["Health"]["Log"].as_array().unwrap();
    assert_eq!(log.len(), 5);
    for entry in log {
        assert_eq!(entry["ExitCode"], 3);
        assert_eq!(entry["Output"], "bad\n");
    }
}

#[test]
fn a_probe_past_its_timeout_is_killed_and_fails() {
    let Some(dir) = store_with(&[]) else { return };
    let _cleanup = Cleanup {
        dir: &dir,
        names: &["stuck"],
    };
    run_detached(
        &dir,
        &[
            "--name",
            "stuck",
            "--health-cmd",
            "echo started; sleep 71",
            "--health-timeout",
            "300ms",
            "--health-interval",
            "100ms",
            "--health-retries",
            "1",
            "busybox",
            "sleep",
            "1000",
        ],
    );
    let stuck = wait_for(&dir, "stuck", "unhealthy", |value| {
        health_status(value) == "unhealthy"
    });
    let entry = &stuck["State"]["Health"]["Log"][0];
    assert_eq!(entry["ExitCode"], -1);
    // Docker's message, with what the probe printed before it was killed.
    assert_eq!(
        entry["Output"],
        "Health check exceeded timeout (300ms): started\n"
    );
    // Killed probes do not pile up: at most the one in flight is running.
    std::thread::sleep(Duration::from_millis(500));
    assert!(host_pids_running(b"sleep\x0071\x00").len() <= 1);
}

#[test]
fn failures_in_the_start_period_do_not_count_until_a_probe_passes() {
    let Some(dir) = store_with(&[]) else { return };
    let _cleanup = Cleanup {
        dir: &dir,
        names: &["warming", "booting"],
    };
    // Fails until /ready exists; an hour of start period.
    run_detached(
        &dir,
        &[
            "--name",
            "warming",
            "--health-cmd",
            "test -f /ready",
            "--health-interval",
            "100ms",
            "--health-start-period",
            "1h",
            "--health-start-interval",
            "100ms",
            "--health-retries",
            "1",
            "busybox",
            "sleep",
            "1000",
        ],
    );
    let warming = wait_for(&dir, "warming", "three failed probes", |value| {
        value["State"]["Health"]["Log"]
            .as_array()
            .is_some_and(|log| log.len() >= 3)
    });
    assert_eq!(health_status(&warming), "starting");
    assert_eq!(warming["State"]["Health"]["FailingStreak"], 0);
    assert_eq!(warming["State"]["Health"]["Log"][0]["ExitCode"], 1);
    stdout_of(&dir, &["exec", "warming", "touch", "/ready"]);
    wait_for(&dir, "warming", "healthy", |value| {
        health_status(value) == "healthy"
    });
    // A passing probe ended the start period: the next failure counts.
    stdout_of(&dir, &["exec", "warming", "rm", "/ready"]);
    let failed = wait_for(&dir, "warming", "unhealthy", |value| {
        health_status(value) == "unhealthy"
    });
    assert_eq!(failed["State"]["Health"]["FailingStreak"], 1);

    // A short start period: failures count once it is over.
    run_detached(
        &dir,
        &[
            "--name",
            "booting",
            "--health-cmd",
            "false",
            "--health-interval",
            "100ms",
            "--health-start-period",
            "1s",
            "--health-start-interval",
            "100ms",
            "--health-retries",
            "2",
            "busybox",
            "sleep",
            "1000",
        ],
    );
    let started = Instant::now();
    wait_for(&dir, "booting", "unhealthy", |value| {
        health_status(value) == "unhealthy"
    });
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "unhealthy within the start period ({:?})",
        started.elapsed()
    );
}

#[test]
fn the_images_healthcheck_applies_and_options_override_it() {
    let Some(dir) = store_with(&["HEALTHCHECK --interval=150ms --retries=1 CMD test -x /bin/sh"])
    else {
        return;
    };
    let _cleanup = Cleanup {
        dir: &dir,
        names: &["from-image", "overridden", "base", "committed"],
    };
    run_detached(&dir, &["--name", "from-image", "busybox", "sleep", "1000"]);
    let value = wait_for(&dir, "from-image", "healthy", |value| {
        health_status(value) == "healthy"
    });
    let check = &value["Config"]["Healthcheck"];
    assert_eq!(
        check["Test"],
        serde_json::json!(["CMD-SHELL", "test -x /bin/sh"])
    );
    assert_eq!(check["Interval"], 150_000_000);

    // --health-cmd replaces the image's test and keeps its interval and retries.
    run_detached(
        &dir,
        &[
            "--name",
            "overridden",
            "--health-cmd",
            "exit 1",
            "busybox",
            "sleep",
            "1000",
        ],
    );
    let value = wait_for(&dir, "overridden", "unhealthy", |value| {
        health_status(value) == "unhealthy"
    });
    assert_eq!(value["Config"]["Healthcheck"]["Retries"], 1);
    assert_eq!(value["Config"]["Healthcheck"]["Interval"], 150_000_000);

    // An exec-form check committed onto a new image.
    run_detached(&dir, &["--name", "base", "busybox", "sleep", "1000"]);
    stdout_of(
        &dir,
        &[
            "commit",
            "-c",
            "HEALTHCHECK --interval=100ms --retries=1 CMD [\"/bin/sh\", \"-c\", \"exit 4\"]",
            "base",
            "checked:latest",
        ],
    );
    run_detached(&dir, &["--name", "committed", "checked", "sleep", "1000"]);
    let value = wait_for(&dir, "committed", "unhealthy", |value| {
        health_status(value) == "unhealthy"
    });
    assert_eq!(
        value["Config"]["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "/bin/sh", "-c", "exit 4"])
    );
    assert_eq!(value["State"]["Health"]["Log"][0]["ExitCode"], 4);
}

#[test]
fn no_healthcheck_and_none_leave_the_container_without_health() {
    let Some(dir) = store_with(&["HEALTHCHECK --interval=100ms CMD true"]) else {
        return;
    };
    let _cleanup = Cleanup {
        dir: &dir,
        names: &["unchecked", "plain-base", "none"],
    };
    run_detached(
        &dir,
        &[
            "--name",
            "unchecked",
            "--no-healthcheck",
            "busybox",
            "sleep",
            "1000",
        ],
    );
    let value = inspect(&dir, "unchecked");
    assert_eq!(
        value["Config"]["Healthcheck"]["Test"],
        serde_json::json!(["NONE"])
    );
    // Give a checker, if one ran by mistake, time for a few probes.
    std::thread::sleep(Duration::from_millis(400));
    let value = inspect(&dir, "unchecked");
    assert!(
        value["State"].get("Health").is_none(),
        "{:#}",
        value["State"]
    );
    let status = ps_status(&dir, "unchecked");
    assert!(
        status.starts_with("Up ") && !status.contains('('),
        "{status:?}"
    );
    assert_eq!(ps_names(&dir, "health=none"), ["unchecked"]);

    let conflict = kiln(&dir)
        .args([
            "run",
            "-d",
            "--no-healthcheck",
            "--health-cmd",
            "true",
            "busybox",
        ])
        .output()
        .unwrap();
    assert_eq!(conflict.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&conflict.stderr)
            .contains("--no-healthcheck conflicts with --health-* options")
    );

    // HEALTHCHECK NONE in an image turns the base image's check off.
    run_detached(&dir, &["--name", "plain-base", "busybox", "sleep", "1000"]);
    stdout_of(
        &dir,
        &[
            "commit",
            "-c",
            "HEALTHCHECK NONE",
            "plain-base",
            "nocheck:latest",
        ],
    );
    run_detached(&dir, &["--name", "none", "nocheck", "sleep", "1000"]);
    std::thread::sleep(Duration::from_millis(400));
    let value = inspect(&dir, "none");
    assert!(
        value["State"].get("Health").is_none(),
        "{:#}",
        value["State"]
    );
    assert_eq!(ps_names(&dir, "health=none"), ["none", "unchecked"]);
}

#[test]
fn stopping_the_container_stops_its_checker_and_probe_at_once() {
    let Some(dir) = store_with(&[]) else { return };
    let _cleanup = Cleanup {
        dir: &dir,
        names: &["probed"],
    };
    run_detached(
        &dir,
        &[
            "--name",
            "probed",
            "--init",
            "--health-cmd",
            "sleep 83",
            "--health-interval",
            "100ms",
            "busybox",
            "sleep",
            "1000",
        ],
    );
    // Wait until a probe is in flight (it would run for 30 s, the default timeout).
    let deadline = Instant::now() + Duration::from_secs(20);
    while host_pids_running(b"sleep\x0083\x00").is_empty() {
        assert!(Instant::now() < deadline, "no probe started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let monitors = monitors_of(&dir);
    assert_eq!(monitors.len(), 1);
    assert!(!exec_parents_of(&monitors).is_empty());
    let began = Instant::now();
    stdout_of(&dir, &["stop", "probed"]);
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        began.elapsed()
    );
    // Nothing of the probe is left: not the command, not its exec parent.
    assert!(host_pids_running(b"sleep\x0083\x00").is_empty());
    assert!(exec_parents_of(&monitors).is_empty());
    assert!(monitors_of(&dir).is_empty());
    let value = inspect(&dir, "probed");
    assert_eq!(value["State"]["Status"], "exited");
    // Docker marks the health unhealthy once its monitor stops.
    assert_eq!(health_status(&value), "unhealthy");
    let status = ps_status(&dir, "probed");
    assert!(status.starts_with("Exited ("), "{status:?}");
    assert_eq!(ps_names(&dir, "health=unhealthy"), Vec::<String>::new());
    let all = stdout_of(
        &dir,
        &[
            "ps",
            "-a",
            "-f",
            "health=unhealthy",
            "--format",
            "{{.Names}}",
        ],
    );
    assert_eq!(all.trim(), "probed");
}
