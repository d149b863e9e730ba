//! Detached containers: `run -d`, `ps`, `logs`, `stop`, `kill`, `wait`, `start`, `rm -f`, with
//! real namespaces on a busybox image made from Debian's `busybox-static`. Skipped with a
//! printed reason when not root or when busybox is missing.
#![allow(clippy::print_stderr)]

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command as Process;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use common::kiln;
use predicates::prelude::*;

/// A store with `busybox:latest` imported, or None (with the reason printed).
fn busybox_store() -> Option<tempfile::TempDir> {
    common::busybox_store(&["CMD [\"sh\"]", "ENV GREETING=hello"], &[])
}

/// `kiln run -d ARGS...`: returns the full container ID it printed.
fn run_detached(dir: &tempfile::TempDir, args: &[&str]) -> String {
    let started = Instant::now();
    let output = kiln(dir).args(["run", "-d"]).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Returns at once, not when the container ends.
    assert!(started.elapsed() < Duration::from_secs(5));
    let id = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert_eq!(id.len(), 64, "{id:?}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    id
}

fn stdout_of(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// No monitor process and no cgroup of this container is left.
fn assert_nothing_left(id: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let monitors: Vec<String> = fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| fs::read(entry.ok()?.path().join("cmdline")).ok())
            .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
            .filter(|cmdline| cmdline.contains("__kiln-monitor") && cmdline.contains(id))
            .collect();
        let cgroups: Vec<PathBuf> = ["memory", "pids", "cpu", "freezer", "unified", ""]
            .iter()
            .map(|controller| {
                PathBuf::from("/sys/fs/cgroup")
                    .join(controller)
                    .join("kiln")
                    .join(id)
            })
            .filter(|path| path.exists())
            .collect();
        if monitors.is_empty() && cgroups.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {monitors:?} {cgroups:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn detached_container_runs_logs_and_records_its_exit() {
    let Some(dir) = busybox_store() else { return };
    let id = run_detached(
        &dir,
        &[
            "--name",
            "chatty",
            "busybox",
            "sh",
            "-c",
            "echo out one; echo err one >&2; sleep 0.2; echo out two; sleep 1; exit 3",
        ],
    );
    kiln(&dir)
        .args(["ps"])
        .assert()
        .success()
        .stdout(predicate::str::contains(&id[..12]).and(predicate::str::contains("Up ")));
    // `logs -f` ends when the container exits.
    let started = Instant::now();
    kiln(&dir)
        .args(["logs", "-f", "chatty"])
        .assert()
        .success()
        .stdout("out one\nout two\n")
        .stderr("err one\n");
    assert!(started.elapsed() < Duration::from_secs(10));
    kiln(&dir)
        .args(["wait", "chatty"])
        .assert()
        .success()
        .stdout("3\n");
    kiln(&dir)
        .args(["ps", "-a"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Exited (3)"));
    kiln(&dir)
        .args(["logs", "--tail", "1", "chatty"])
        .assert()
        .success()
        .stdout("out two\n")
        .stderr("");
    let stamped = stdout_of(kiln(&dir).args(["logs", "-t", "chatty"]));
    let first = stamped.lines().next().unwrap();
    let (time, text) = first.split_once(' ').unwrap();
    assert!(time.ends_with('Z') && time.contains('T'), "{first}");
    assert_eq!(text, "out one");
    // The log is Docker's json-file format.
    let log = dir
        .path()
        .join("store/containers")
        .join(&id)
        .join(format!("{id}-json.log"));
    let log = fs::read_to_string(&log).unwrap();
    // stdout and stderr are separate pipes, so their lines may interleave either way.
    let entries: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(entries.len(), 3);
    let first_out = entries.iter().find(|e| e["stream"] == "stdout").unwrap();
    assert_eq!(first_out["log"], "out one\n");
    let err = entries.iter().find(|e| e["stream"] == "stderr").unwrap();
    assert_eq!(err["log"], "err one\n");
    assert!(err["time"].as_str().unwrap().ends_with('Z'));
    // `start` runs it again, appending to the same log.
    kiln(&dir)
        .args(["start", "chatty"])
        .assert()
        .success()
        .stdout("chatty\n");
    kiln(&dir)
        .args(["wait", "chatty"])
        .assert()
        .success()
        .stdout("3\n");
    kiln(&dir)
        .args(["logs", "chatty"])
        .assert()
        .stdout("out one\nout two\nout one\nout two\n");
    kiln(&dir).args(["rm", "chatty"]).assert().success();
    assert_nothing_left(&id);
}

#[test]
fn stop_and_kill_end_a_detached_container_with_docker_exit_codes() {
    let Some(dir) = busybox_store() else { return };
    // A PID 1 that handles SIGTERM ends with the code it chooses (143, as a shell's default).
    let trapping = run_detached(
        &dir,
        &[
            "busybox",
            "sh",
            "-c",
            "trap 'exit 143' TERM; sleep 1000 & wait",
        ],
    );
    // A PID 1 without a handler ignores SIGTERM (as in Docker): killed after `-t`.
    let ignoring = run_detached(&dir, &["busybox", "sleep", "1000"]);
    let killed = run_detached(&dir, &["busybox", "sleep", "1000"]);
    std::thread::sleep(Duration::from_millis(300));
    kiln(&dir).args(["stop", &trapping]).assert().success();
    kiln(&dir)
        .args(["wait", &trapping])
        .assert()
        .stdout("143\n");
    let started = Instant::now();
    kiln(&dir)
        .args(["stop", "-t", "1", &ignoring])
        .assert()
        .success();
    assert!(started.elapsed() < Duration::from_secs(5));
    kiln(&dir)
        .args(["wait", &ignoring])
        .assert()
        .stdout("137\n");
    kiln(&dir)
        .args(["kill", "-s", "KILL", &killed])
        .assert()
        .success();
    kiln(&dir).args(["wait", &killed]).assert().stdout("137\n");
    kiln(&dir)
        .args(["kill", &killed])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("is not running"));
    kiln(&dir)
        .args(["rm", &trapping, &ignoring, &killed])
        .assert()
        .success();
    for id in [trapping, ignoring, killed] {
        assert_nothing_left(&id);
    }
}

#[test]
fn rm_force_kills_a_running_container_and_run_rm_removes_it_after_exit() {
    let Some(dir) = busybox_store() else { return };
    let running = run_detached(&dir, &["busybox", "sleep", "1000"]);
    kiln(&dir)
        .args(["rm", &running])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("container is running"));
    kiln(&dir).args(["rm", "-f", &running]).assert().success();
    assert_nothing_left(&running);
    // `wait` gives the exit code of a --rm container although its record goes with it.
    let removed = run_detached(&dir, &["--rm", "busybox", "sh", "-c", "sleep 1; exit 3"]);
    kiln(&dir)
        .args(["wait", &removed])
        .assert()
        .success()
        .stdout("3\n");
    assert_nothing_left(&removed);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stdout_of(kiln(&dir).args(["ps", "-aq"])).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the --rm container is still listed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!dir.path().join("store/containers").join(&removed).exists());
}

#[test]
fn run_detached_reports_setup_errors_with_docker_exit_codes() {
    let Some(dir) = busybox_store() else { return };
    // As Docker: the start fails synchronously, with 127 for a missing command.
    kiln(&dir)
        .args(["run", "-d", "--name", "broken", "busybox", "nosuchcommand"])
        .assert()
        .code(127)
        .stdout("")
        .stderr(predicate::str::contains("executable file not found"));
    kiln(&dir)
        .args(["ps", "-a"])
        .assert()
        .stdout(predicate::str::contains("Exited (127)"));
    kiln(&dir)
        .args(["logs", "broken"])
        .assert()
        .stderr(predicate::str::contains("executable file not found"));
    kiln(&dir)
        .args(["run", "-d", "--rm", "busybox", "nosuchcommand"])
        .assert()
        .code(127);
    kiln(&dir).args(["rm", "broken"]).assert().success();
    assert!(stdout_of(kiln(&dir).args(["ps", "-aq"])).is_empty());
}

#[test]
fn inspect_shows_the_pid_of_the_container_process() {
    let Some(dir) = busybox_store() else { return };
    let id = run_detached(&dir, &["busybox", "sleep", "1000"]);
    let inspect: serde_json::Value =
        serde_json::from_str(&stdout_of(kiln(&dir).args(["inspect", &id]))).unwrap();
    let state = &inspect[0]["State"];
    assert_eq!(state["Running"], true);
    assert_eq!(state["Status"], "running");
    let pid = state["Pid"].as_i64().unwrap();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(cmdline, b"sleep\x001000\x00");
    kiln(&dir).args(["rm", "-f", &id]).assert().success();
    assert_nothing_left(&id);
}

#[test]
fn a_killed_monitor_takes_its_container_down_and_rm_cleans_up() {
    let Some(dir) = busybox_store() else { return };
    let id = run_detached(&dir, &["busybox", "sleep", "1000"]);
    let inspect: serde_json::Value =
        serde_json::from_str(&stdout_of(kiln(&dir).args(["inspect", &id]))).unwrap();
    let container_pid = inspect[0]["State"]["Pid"].as_i64().unwrap();
    let monitor = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains("__kiln-monitor") && cmdline.contains(&id))
                .then(|| entry.file_name().to_string_lossy().into_owned())
        })
        .next()
        .expect("a monitor process");
    assert!(
        Process::new("kill")
            .args(["-9", &monitor])
            .status()
            .unwrap()
            .success()
    );
    // Parent-death signals take the init and the container's PID 1 down with the monitor.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::metadata(format!("/proc/{container_pid}")).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the container outlived its monitor"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kiln(&dir)
        .args(["ps", "-a"])
        .assert()
        .stdout(predicate::str::contains("Exited (137)"));
    kiln(&dir).args(["rm", &id]).assert().success();
    assert_nothing_left(&id);
}

#[test]
fn logs_since_and_until_take_dockers_time_forms() {
    let Some(dir) = busybox_store() else { return };
    let id = run_detached(
        &dir,
        &[
            "--name",
            "timed",
            "busybox",
            "sh",
            "-c",
            "echo early; sleep 1.2; echo late; sleep 1000",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stdout_of(kiln(&dir).args(["logs", "timed"])).contains("late") {
        assert!(Instant::now() < deadline, "no late line");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stamped = stdout_of(kiln(&dir).args(["logs", "-t", "timed"]));
    let times: Vec<&str> = stamped
        .lines()
        .map(|line| line.split(' ').next().unwrap())
        .collect();
    let logs = |args: &[&str]| stdout_of(kiln(&dir).arg("logs").args(args).arg("timed"));
    assert_eq!(logs(&["--since", times[1]]), "late\n");
    assert_eq!(logs(&["--until", times[0]]), "early\n");
    // A date, a date-time without seconds, a zone offset, a Go duration, Unix seconds.
    assert_eq!(logs(&["--since", "2000-01-01"]), "early\nlate\n");
    assert_eq!(logs(&["--until", "2000-01-01T10:00"]), "");
    assert_eq!(logs(&["--until", "2000-01-01T10:00:00+02:00"]), "");
    assert_eq!(logs(&["--since", "1h30m"]), "early\nlate\n");
    assert_eq!(logs(&["--since", "946684800.5"]), "early\nlate\n");
    assert_eq!(logs(&["--tail", "0"]), "");
    assert_eq!(logs(&["-n", "1"]), "late\n");
    // As Docker's daemon: a negative or unreadable --tail shows everything.
    assert_eq!(logs(&["--tail", "-3"]), "early\nlate\n");
    assert_eq!(logs(&["--tail", "x"]), "early\nlate\n");
    // inspect's LogPath is the json-file log itself.
    let path = stdout_of(kiln(&dir).args(["inspect", "-f", "{{.LogPath}}", "timed"]));
    assert!(
        fs::read_to_string(path.trim())
            .unwrap()
            .contains("\"log\":\"late\\n\"")
    );
    kiln(&dir)
        .args(["logs", "--since", "bogus", "timed"])
        .assert()
        .code(125)
        .stderr(
            "kiln: invalid value for \"since\": failed to parse value as time or duration: \"bogus\"\n",
        );
    kiln(&dir).args(["rm", "-f", &id]).assert().success();
    assert_nothing_left(&id);
}
