//! `exec`, `top`, `pause`/`unpause`, `stats` and `rename` against real detached containers
//! (busybox from Debian's `busybox-static`). Skipped with a printed reason when not root or
//! when busybox is missing.
#![allow(clippy::print_stderr)]

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use common::kiln;
use predicates::prelude::*;

/// A store with `busybox:latest` (ENV GREETING=hello, CMD sh), or None with the reason printed.
fn busybox_store() -> Option<tempfile::TempDir> {
    common::busybox_store(&["CMD [\"sh\"]", "ENV GREETING=hello"], &[])
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

/// `kiln run -d ARGS...`: the full container ID it printed.
fn run_detached(dir: &tempfile::TempDir, args: &[&str]) -> String {
    let output = kiln(dir).args(["run", "-d"]).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let id = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert_eq!(id.len(), 64, "{id:?}");
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

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn exec_joins_the_containers_namespaces_cgroup_and_defaults() {
    let Some(dir) = busybox_store() else { return };
    let _cleanup = Cleanup {
        dir: &dir,
        names: &["box"],
    };
    let id = run_detached(
        &dir,
        &[
            "--name",
            "box",
            "--hostname",
            "boxhost",
            "-w",
            "/srv",
            "busybox",
            "sleep",
            "1000",
        ],
    );
    // UTS and PID namespaces: the container's host name, and its PID 1 is the container's
    // command (the container's /proc, seen from inside its PID namespace).
    kiln(&dir)
        .args(["exec", "box", "hostname"])
        .assert()
        .success()
        .stdout("boxhost\n");
    kiln(&dir)
        .args(["exec", "box", "cat", "/proc/1/cmdline"])
        .assert()
        .success()
        .stdout("sleep\u{0}1000\u{0}");
    // Mount namespace: a file written by one exec is seen by the next (the container's
    // overlay), and it lands in the container's upper directory on the host.
    kiln(&dir)
        .args(["exec", "box", "sh", "-c", "echo inside > /mark"])
        .assert()
        .success();
    let upper = dir.path().join("store/containers").join(&id).join("upper");
    assert_eq!(fs::read_to_string(upper.join("mark")).unwrap(), "inside\n");
    // The container's env (image ENV) plus -e, its working directory, its user (root).
    let env = stdout_of(kiln(&dir).args(["exec", "-e", "EXTRA=1", "box", "env"]));
    for wanted in [
        "GREETING=hello",
        "EXTRA=1",
        "HOSTNAME=boxhost",
        "HOME=/root",
    ] {
        assert!(env.lines().any(|line| line == wanted), "{wanted}: {env}");
    }
    kiln(&dir)
        .args([
            "exec",
            "-e",
            "GREETING=bye",
            "box",
            "sh",
            "-c",
            "echo $GREETING",
        ])
        .assert()
        .stdout("bye\n");
    kiln(&dir)
        .args(["exec", "box", "pwd"])
        .assert()
        .stdout("/srv\n");
    kiln(&dir)
        .args(["exec", "-w", "/etc", "box", "pwd"])
        .assert()
        .stdout("/etc\n");
    kiln(&dir)
        .args(["exec", "box", "id"])
        .assert()
        .stdout(predicate::str::starts_with("uid=0(root) gid=0(root)"));
    // -u resolves through the container's own /etc/passwd.
    kiln(&dir)
        .args(["exec", "-u", "app", "box", "id"])
        .assert()
        .stdout(predicate::str::starts_with("uid=1000(app) gid=1000(app)"));
    // The kiln binary is out of reach: /proc/self/exe is the command; only 0, 1, 2 are open.
    kiln(&dir)
        .args(["exec", "box", "readlink", "/proc/self/exe"])
        .assert()
        .stdout("/bin/busybox\n");
    kiln(&dir)
        .args(["exec", "box", "sh", "-c", "ls /proc/$$/fd; exit 0"])
        .assert()
        .stdout("0\n1\n2\n");
    // The container's confinement: Docker's default capabilities and seccomp filter; with
    // --privileged, every capability and no filter.
    let status = stdout_of(kiln(&dir).args(["exec", "box", "cat", "/proc/self/status"]));
    let field = |status: &str, name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(field(&status, "CapEff:"), "00000000a80425fb");
    assert_eq!(field(&status, "CapBnd:"), "00000000a80425fb");
    assert_eq!(field(&status, "Seccomp:"), "2");
    let privileged =
        stdout_of(kiln(&dir).args(["exec", "--privileged", "box", "cat", "/proc/self/status"]));
    assert_ne!(field(&privileged, "CapEff:"), "00000000a80425fb");
    assert_eq!(field(&privileged, "Seccomp:"), "0");
    // The cgroup: an exec'd process is in the container's cgroup, seen from the host.
    kiln(&dir)
        .args(["exec", "-d", "box", "sleep", "567"])
        .assert()
        .success()
        .stdout("");
    let pids = host_pids_running(b"sleep\x00567\x00");
    assert_eq!(pids.len(), 1, "{pids:?}");
    let cgroups = fs::read_to_string(format!("/proc/{}/cgroup", pids[0])).unwrap();
    assert!(cgroups.contains(&format!("/kiln/{id}")), "{cgroups}");
    kiln(&dir).args(["rm", "-f", "box"]).assert().success();
    wait_until("the exec'd process to end with its container", || {
        host_pids_running(b"sleep\x00567\x00").is_empty()
    });
}

#[test]
fn exec_passes_exit_codes_and_stdin_through() {
    let Some(dir) = busybox_store() else { return };
    let _cleanup = Cleanup {
        dir: &dir,
        names: &["codes"],
    };
    run_detached(
        &dir,
        &["--name", "codes", "-u", "app", "busybox", "sleep", "1000"],
    );
    kiln(&dir)
        .args(["exec", "codes", "sh", "-c", "exit 3"])
        .assert()
        .code(3);
    kiln(&dir)
        .args(["exec", "codes", "nosuchcommand"])
        .assert()
        .code(127)
        .stderr(predicate::str::contains("executable file not found"));
    kiln(&dir)
        .args(["exec", "codes", "/etc/passwd"])
        .assert()
        .code(126);
    // The container's user is the exec's default.
    kiln(&dir)
        .args(["exec", "codes", "id", "-u"])
        .assert()
        .stdout("1000\n");
    kiln(&dir)
        .args(["exec", "-w", "relative", "codes", "true"])
        .assert()
        .code(125)
        .stderr(predicate::str::contains("absolute path"));
    kiln(&dir)
        .args(["exec", "nosuchcontainer", "true"])
        .assert()
        .code(125);
    // stdin reaches the command only with -i.
    kiln(&dir)
        .args(["exec", "-i", "codes", "cat"])
        .write_stdin("through stdin\n")
        .assert()
        .success()
        .stdout("through stdin\n");
    kiln(&dir)
        .args(["exec", "codes", "cat"])
        .write_stdin("not passed\n")
        .assert()
        .success()
        .stdout("");
    // -d returns at once; the command goes on running in the container.
    let started = Instant::now();
    kiln(&dir)
        .args([
            "exec",
            "-d",
            "-u",
            "0",
            "codes",
            "sh",
            "-c",
            "sleep 0.5; echo late > /late",
        ])
        .assert()
        .success();
    assert!(started.elapsed() < Duration::from_millis(500));
    wait_until("the detached exec to finish", || {
        kiln(&dir)
            .args(["exec", "codes", "cat", "/late"])
            .output()
            .unwrap()
            .stdout
            == b"late\n"
    });
    // SIGTERM to kiln reaches the command (not PID 1 of its namespace, so it dies: 143).
    let mut child = Process::new(assert_cmd::cargo::cargo_bin("kiln"))
        .arg("--root")
        .arg(dir.path().join("store"))
        .args(["exec", "codes", "sleep", "300"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the exec'd sleep to start", || {
        !host_pids_running(b"sleep\x00300\x00").is_empty()
    });
    let status = Process::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    // A stopped container cannot be exec'd into.
    kiln(&dir)
        .args(["stop", "-t", "0", "codes"])
        .assert()
        .success();
    kiln(&dir)
        .args(["exec", "codes", "true"])
        .assert()
        .code(125)
        .stderr(predicate::str::contains("is not running"));
    kiln(&dir).args(["rm", "codes"]).assert().success();
}

/// The counter the container below writes, read from its upper directory on the host.
fn counter(upper: &std::path::Path) -> u64 {
    fs::read_to_string(upper.join("count"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn pause_freezes_the_container_and_unpause_resumes_it() {
    let Some(dir) = busybox_store() else { return };
    let _cleanup = Cleanup {
        dir: &dir,
        names: &["ticker"],
    };
    let id = run_detached(
        &dir,
        &[
            "--name",
            "ticker",
            "busybox",
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo $i > /count; sleep 0.02; done",
        ],
    );
    let upper: PathBuf = dir.path().join("store/containers").join(&id).join("upper");
    wait_until("the counter to start", || counter(&upper) > 2);
    kiln(&dir)
        .args(["pause", "ticker"])
        .assert()
        .success()
        .stdout("ticker\n");
    let frozen_at = counter(&upper);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        counter(&upper),
        frozen_at,
        "the counter advanced while paused"
    );
    kiln(&dir)
        .args(["ps"])
        .assert()
        .stdout(predicate::str::contains("(Paused)"));
    kiln(&dir)
        .args(["ps", "--format", "{{.State}}"])
        .assert()
        .stdout("paused\n");
    let inspect: serde_json::Value =
        serde_json::from_str(&stdout_of(kiln(&dir).args(["inspect", "ticker"]))).unwrap();
    assert_eq!(inspect[0]["State"]["Paused"], true);
    assert_eq!(inspect[0]["State"]["Status"], "paused");
    assert_eq!(inspect[0]["State"]["Running"], true);
    kiln(&dir)
        .args(["pause", "ticker"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("already paused"));
    kiln(&dir)
        .args(["exec", "ticker", "true"])
        .assert()
        .code(125)
        .stderr(predicate::str::contains("paused"));
    kiln(&dir)
        .args(["unpause", "ticker"])
        .assert()
        .success()
        .stdout("ticker\n");
    wait_until("the counter to advance again", || {
        counter(&upper) > frozen_at + 2
    });
    kiln(&dir)
        .args(["ps", "--format", "{{.State}}"])
        .assert()
        .stdout("running\n");
    kiln(&dir)
        .args(["unpause", "ticker"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("not paused"));
    // A paused container still stops (thawed so the signals take effect) and kills.
    kiln(&dir).args(["pause", "ticker"]).assert().success();
    let started = Instant::now();
    kiln(&dir)
        .args(["stop", "-t", "1", "ticker"])
        .assert()
        .success();
    assert!(started.elapsed() < Duration::from_secs(8));
    kiln(&dir).args(["wait", "ticker"]).assert().stdout("137\n");
    kiln(&dir).args(["start", "ticker"]).assert().success();
    kiln(&dir).args(["pause", "ticker"]).assert().success();
    kiln(&dir).args(["kill", "ticker"]).assert().success();
    kiln(&dir).args(["wait", "ticker"]).assert().stdout("137\n");
    kiln(&dir)
        .args(["pause", "ticker"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("is not running"));
    kiln(&dir).args(["rm", "ticker"]).assert().success();
}

#[test]
fn top_lists_the_containers_processes_with_host_pids() {
    let Some(dir) = busybox_store() else { return };
    let _cleanup = Cleanup {
        dir: &dir,
        names: &["busy"],
    };
    run_detached(
        &dir,
        &[
            "--name",
            "busy",
            "busybox",
            "sh",
            "-c",
            "sleep 1001 & sleep 1002 & wait",
        ],
    );
    kiln(&dir)
        .args(["exec", "-d", "busy", "sleep", "1003"])
        .assert()
        .success();
    wait_until("the processes to start", || {
        !host_pids_running(b"sleep\x001002\x00").is_empty()
            && !host_pids_running(b"sleep\x001003\x00").is_empty()
    });
    let top = stdout_of(kiln(&dir).args(["top", "busy"]));
    let mut lines = top.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    );
    // docker's layout: columns at least 20 wide.
    assert!(
        top.starts_with(&format!("{:<20}{:<20}", "UID", "PID")),
        "{top}"
    );
    let rows: Vec<Vec<&str>> = lines
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 4, "{top}");
    for wanted in ["sleep 1001", "sleep 1002", "sleep 1003", "sh -c"] {
        let row = rows
            .iter()
            .find(|row| row[7..].join(" ").starts_with(wanted))
            .unwrap_or_else(|| panic!("no {wanted} in {top}"));
        assert_eq!(row[0], "root");
        assert_eq!(row[5], "?");
        // Host pids, as docker shows them.
        let pid: i32 = row[1].parse().unwrap();
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(
            String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .starts_with(wanted)
        );
    }
    // With ps options, the host's ps runs (where there is one) and only the container's
    // lines are kept.
    if Process::new("ps")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
    {
        let top = stdout_of(kiln(&dir).args(["top", "busy", "-o", "pid,args"]));
        let mut lines = top.lines();
        assert_eq!(
            lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
            ["PID", "COMMAND"]
        );
        assert_eq!(
            lines
                .filter(|line| line.split_whitespace().nth(1) == Some("sleep"))
                .count(),
            3
        );
    } else {
        eprintln!("skipped the ps-options part: no ps on this host");
    }
    kiln(&dir).args(["rm", "-f", "busy"]).assert().success();
    kiln(&dir).args(["top", "busy"]).assert().code(1).stderr(
        predicate::str::contains("No such container")
            .or(predicate::str::contains("no such container")),
    );
}

#[test]
fn stats_reads_plausible_numbers_from_the_cgroups() {
    let Some(dir) = busybox_store() else { return };
    let _cleanup = Cleanup {
        dir: &dir,
        names: &["idle", "spin"],
    };
    let idle = run_detached(
        &dir,
        &[
            "--name",
            "idle",
            "-m",
            "64m",
            "busybox",
            "sh",
            "-c",
            "sleep 1000 & sleep 1000 & wait",
        ],
    );
    run_detached(
        &dir,
        &[
            "--name",
            "spin",
            "busybox",
            "sh",
            "-c",
            "while :; do :; done",
        ],
    );
    let started = Instant::now();
    let json = stdout_of(kiln(&dir).args([
        "stats",
        "--no-stream",
        "--format",
        "{{json .}}",
        "idle",
        "spin",
    ]));
    assert!(started.elapsed() < Duration::from_secs(5));
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{json}");
    let percent = |text: &serde_json::Value| -> f64 {
        text.as_str()
            .unwrap()
            .trim_end_matches('%')
            .parse()
            .unwrap()
    };
    let idle_row = &rows[0];
    assert_eq!(idle_row["Name"], "idle");
    assert_eq!(idle_row["Container"], "idle");
    assert_eq!(idle_row["ID"], &idle[..12]);
    assert_eq!(idle_row["PIDs"], "3");
    let memory = idle_row["MemUsage"].as_str().unwrap();
    assert!(memory.ends_with(" / 64MiB"), "{memory}");
    assert!(!memory.starts_with("0B"), "{memory}");
    assert!(percent(&idle_row["MemPerc"]) > 0.0);
    assert!(percent(&idle_row["CPUPerc"]) < 10.0, "{idle_row}");
    assert_eq!(idle_row["NetIO"], "0B / 0B");
    let spin_row = &rows[1];
    assert_eq!(spin_row["PIDs"], "1");
    let cpu = percent(&spin_row["CPUPerc"]);
    assert!(cpu > 30.0 && cpu < 110.0, "{spin_row}");
    kiln(&dir).args(["rm", "-f", "spin"]).assert().success();
    // The default table: docker's columns; without names, the running containers.
    let table = stdout_of(kiln(&dir).args(["stats", "--no-stream", "--no-trunc"]));
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for column in [
        "CONTAINER ID",
        "NAME",
        "CPU %",
        "MEM USAGE / LIMIT",
        "MEM %",
        "NET I/O",
        "BLOCK I/O",
        "PIDS",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 1, "{table}");
    assert!(rows[0].starts_with(&idle), "{table}");
    kiln(&dir)
        .args(["stop", "-t", "0", "idle"])
        .assert()
        .success();
    // A stopped container named explicitly shows zeros.
    kiln(&dir)
        .args([
            "stats",
            "--no-stream",
            "--format",
            "{{.Name}} {{.MemUsage}} {{.PIDs}}",
            "idle",
        ])
        .assert()
        .success()
        .stdout("idle 0B / 0B 0\n");
    kiln(&dir).args(["rm", "idle"]).assert().success();
}

#[test]
fn stats_streams_until_its_output_is_closed() {
    let Some(dir) = busybox_store() else { return };
    let _cleanup = Cleanup {
        dir: &dir,
        names: &["streamed"],
    };
    run_detached(&dir, &["--name", "streamed", "busybox", "sleep", "1000"]);
    let mut child = Process::new(assert_cmd::cargo::cargo_bin("kiln"))
        .arg("--root")
        .arg(dir.path().join("store"))
        .args(["stats", "--format", "{{.Name}}"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buffer = [0u8; 256];
    while seen.matches("streamed").count() < 2 {
        let read = std::io::Read::read(&mut stdout, &mut buffer).unwrap();
        assert!(read > 0, "stats ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    drop(stdout);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stats kept running with its output closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    kiln(&dir).args(["rm", "-f", "streamed"]).assert().success();
}

#[test]
fn rename_changes_the_name_and_keeps_names_unique() {
    let Some(dir) = busybox_store() else { return };
    let _cleanup = Cleanup {
        dir: &dir,
        names: &["first", "second", "renamed"],
    };
    let first = run_detached(&dir, &["--name", "first", "busybox", "sleep", "1000"]);
    run_detached(&dir, &["--name", "second", "busybox", "true"]);
    kiln(&dir)
        .args(["rename", "first", "renamed"])
        .assert()
        .success()
        .stdout("");
    kiln(&dir)
        .args(["ps", "--format", "{{.Names}}"])
        .assert()
        .stdout("renamed\n");
    // The running container answers to its new name, not the old one.
    kiln(&dir)
        .args(["exec", "renamed", "true"])
        .assert()
        .success();
    kiln(&dir)
        .args(["exec", "first", "true"])
        .assert()
        .code(125);
    kiln(&dir)
        .args(["inspect", "--format", "{{.Name}}", &first])
        .assert()
        .stdout("/renamed\n");
    kiln(&dir)
        .args(["rename", "renamed", "second"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("\"/second\" is already in use"));
    kiln(&dir)
        .args(["rename", "renamed", "renamed"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("same name as its current name"));
    kiln(&dir)
        .args(["rename", "renamed", "bad name!"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
        ));
    kiln(&dir)
        .args(["rename", "nosuch", "other"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("nosuch"));
    kiln(&dir)
        .args(["rename", "renamed", ""])
        .assert()
        .code(1)
        .stderr("Error: Neither old nor new names may be empty\n");
    // The freed name can be taken again.
    kiln(&dir)
        .args(["rename", "renamed", "first"])
        .assert()
        .success();
    let mut names: Vec<String> = stdout_of(kiln(&dir).args(["ps", "-a", "--format", "{{.Names}}"]))
        .lines()
        .map(str::to_string)
        .collect();
    names.sort();
    assert_eq!(names, ["first", "second"]);
    kiln(&dir)
        .args(["rm", "-f", "first", "second"])
        .assert()
        .success();
}

#[test]
fn exec_t_runs_the_command_on_a_terminal_of_the_container() {
    let Some(dir) = busybox_store() else { return };
    let _cleanup = Cleanup {
        dir: &dir,
        names: &["term"],
    };
    run_detached(&dir, &["--name", "term", "busybox", "sleep", "1000"]);
    // Without -t, no terminal (Docker's default).
    kiln(&dir)
        .args(["exec", "term", "tty"])
        .assert()
        .code(1)
        .stdout("not a tty\n");
    // -t without -i works too (Docker allows it): a terminal of the container's devpts, on
    // stdout and stderr alike; the terminal turns \n into \r\n.
    let output = stdout_of(kiln(&dir).args(["exec", "-t", "term", "tty"]));
    assert!(
        output.starts_with("/dev/pts/") && output.ends_with("\r\n"),
        "{output:?}"
    );
    let output = stdout_of(kiln(&dir).args([
        "exec",
        "-t",
        "term",
        "sh",
        "-c",
        "test -t 0 && test -t 1 && test -t 2 && echo yes; echo err >&2",
    ]));
    assert_eq!(output, "yes\r\nerr\r\n");
    // Exit codes pass through, and a failed start is reported as without -t.
    kiln(&dir)
        .args(["exec", "-t", "term", "sh", "-c", "exit 5"])
        .assert()
        .code(5);
    kiln(&dir)
        .args(["exec", "-t", "term", "nosuchcommand"])
        .assert()
        .code(127);
    // -it needs a terminal to read from, as with Docker.
    kiln(&dir)
        .args(["exec", "-it", "term", "true"])
        .write_stdin("")
        .assert()
        .code(125)
        .stderr(predicate::str::contains("the input device is not a TTY"));
    // Nothing of the exec is left in the container.
    let listed = stdout_of(kiln(&dir).args(["top", "term"]));
    assert_eq!(listed.lines().count(), 2, "{listed}");
}

#[test]
fn exec_it_relays_input_and_the_callers_window_size() {
    let Some(dir) = busybox_store() else { return };
    let _cleanup = Cleanup {
        dir: &dir,
        names: &["talk"],
    };
    run_detached(&dir, &["--name", "talk", "busybox", "sleep", "1000"]);
    let (text, code) = common::run_on_pty(
        &dir,
        &[
            "exec",
            "-it",
            "talk",
            "sh",
            "-c",
            "stty size; read line; echo got:$line; exit 6",
        ],
        &[b"hello\r"],
    );
    assert_eq!(code, 6, "{text:?}");
    // The caller's size (31x97, set by the test on its pty) and the typed line, echoed by
    // the container's terminal, then the command's answer.
    assert!(text.contains("31 97\r\n"), "{text:?}");
    assert!(text.contains("hello"), "{text:?}");
    assert!(text.contains("got:hello\r\n"), "{text:?}");
}

/// A hash of a file's content.
fn content_hash(path: &std::path::Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    fs::read(path).unwrap().hash(&mut hasher);
    hasher.finish()
}

/// The container command of the CVE-2019-5736 test: scans `/proc` for a process that is not
/// busybox (the one `kiln exec` starts in the container, while it still runs kiln code),
/// keeps its exe open (a plain read open, which CAP_SYS_PTRACE allows even though that
/// process is non-dumpable), records its path in `/held`, then tries for 5 s to reopen it
/// for writing through `/proc/self/fd` (the shell's `>>`: O_WRONLY|O_APPEND, writing
/// nothing) as runc's exploit did: while kiln runs the binary the kernel says ETXTBSY, once
/// the exec has ended it would open, were it not read-only. Successes go to `/opened`,
/// failures to `/errors`, and `/verdict` gets a line per attempt. A failed `exec 3<` (the
/// process ended) ends the inner shell; the outer loop restarts it. `/stop` ends both.
const EXE_PROBE: &str = r#"while [ ! -e /stop ]; do sh -c '
  while [ ! -e /stop ]; do
    for p in /proc/[0-9]*; do
      case $p in /proc/1|/proc/$$) continue;; esac
      [ -r $p/exe ] || continue
      exec 3< $p/exe
      t=$(readlink /proc/$$/fd/3)
      case $t in */busybox) exec 3<&-; continue;; esac
      echo "$t" >> /held
      i=0
      while [ $i -lt 100 ]; do
        if { true >> /proc/$$/fd/3; } 2>> /errors; then echo "OPENED $t" >> /opened; break; fi
        i=$((i+1)); sleep 0.05
      done
      echo "tried $t" >> /verdict
      exec 3<&-
    done
  done'; done"#;

/// The runc CVE-2019-5736 class: a container process with CAP_SYS_PTRACE may open
/// `/proc/<pid>/exe` of the process that joins the container for `exec` while it still runs
/// kiln code (non-dumpable does not stop that capability), and once kiln no longer runs,
/// reopen it for writing and replace the host's kiln binary. Kiln runs that process from a
/// read-only bind mount of its binary, so the reopen fails with EROFS.
///
/// `exec` runs from a copy of the kiln binary in the test's temp dir, so that once each exec
/// ends nothing runs that file (the detached container's monitor runs the original) and the
/// kernel's ETXTBSY no longer hides the difference: without the read-only mount the reopen
/// succeeds (and a real exploit would then write to it). Bounded: at most 60 execs or 30 s
/// to catch the process, 10 s for the verdict.
#[test]
fn exec_never_exposes_a_writable_kiln_binary_to_a_ptrace_capable_container() {
    let Some(dir) = busybox_store() else { return };
    let _cleanup = Cleanup {
        dir: &dir,
        names: &["prober"],
    };
    let original = assert_cmd::cargo::cargo_bin("kiln");
    let binary = dir.path().join("kiln-for-exec");
    fs::copy(&original, &binary).unwrap();
    let before = (content_hash(&original), content_hash(&binary));
    let exec_with_copy = |args: &[&str]| {
        let mut command = Command::new(&binary);
        command.arg("--root").arg(dir.path().join("store"));
        command.args(["exec", "prober"]).args(args);
        command
    };
    let id = run_detached(
        &dir,
        &[
            "--name",
            "prober",
            "--cap-add",
            "SYS_PTRACE",
            "busybox",
            "sh",
            "-c",
            EXE_PROBE,
        ],
    );
    let upper = dir.path().join("store/containers").join(&id).join("upper");
    let read = |name: &str| fs::read_to_string(upper.join(name)).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut execs = 0;
    while execs < 60 && Instant::now() < deadline && read("held").is_empty() {
        exec_with_copy(&["true"]).assert().success();
        execs += 1;
    }
    let held = read("held");
    let verdict_deadline = Instant::now() + Duration::from_secs(10);
    while !held.is_empty() && read("verdict").is_empty() && Instant::now() < verdict_deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    exec_with_copy(&["touch", "/stop"]).assert().success();
    let (verdict, errors, opened) = (read("verdict"), read("errors"), read("opened"));
    kiln(&dir).args(["rm", "-f", "prober"]).assert().success();
    assert!(
        held.contains("kiln-for-exec"),
        "the probe never caught the exec'd process in {execs} execs: {held:?}"
    );
    assert!(!verdict.is_empty(), "the probe gave no verdict: {errors}");
    assert_eq!(opened, "", "the kiln binary was opened for writing");
    assert!(errors.contains("Read-only file system"), "{errors}");
    assert_eq!(
        (content_hash(&original), content_hash(&binary)),
        before,
        "the kiln binary changed"
    );
}
