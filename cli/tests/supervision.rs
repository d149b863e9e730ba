//! Process supervision: `create`/`start`/`restart`, stop signals and timeouts, restart
//! policies, `-t` (driven through a pty the test opens), `--init`, and `attach`, with real
//! namespaces on a busybox image. Skipped with a printed reason when not root or when busybox
//! is missing.
#![allow(clippy::print_stderr)]

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use common::{kiln, run_on_pty};
use predicates::prelude::*;

fn busybox_store() -> Option<tempfile::TempDir> {
    common::busybox_store(&["CMD [\"sh\"]"], &[])
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

fn inspect(dir: &tempfile::TempDir, id: &str) -> serde_json::Value {
    let text = stdout_of(kiln(dir).args(["inspect", id]));
    serde_json::from_str::<serde_json::Value>(&text).unwrap()[0].clone()
}

/// Removes the container (`rm -f`) when dropped, so a failing test leaves nothing running.
struct Removal<'a>(&'a tempfile::TempDir, String);

impl Drop for Removal<'_> {
    fn drop(&mut self) {
        let _ = kiln(self.0).args(["rm", "-f", &self.1]).output();
    }
}

/// Polls `check` for up to 10 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// No monitor process and no cgroup of this container is left.
fn assert_nothing_left(id: &str) {
    eventually("the container's processes and cgroups to go", || {
        let monitors = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| std::fs::read(entry.ok()?.path().join("cmdline")).ok())
            .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
            .any(|cmdline| cmdline.contains("__kiln-monitor") && cmdline.contains(id));
        let cgroups = ["memory", "pids", "cpu", "freezer", "unified", ""]
            .iter()
            .any(|controller| {
                PathBuf::from("/sys/fs/cgroup")
                    .join(controller)
                    .join("kiln")
                    .join(id)
                    .exists()
            });
        !monitors && !cgroups
    });
}

#[test]
fn create_records_a_container_that_start_runs() {
    let Some(dir) = busybox_store() else { return };
    let id = stdout_of(kiln(&dir).args(["create", "--name", "later", "busybox", "sleep", "100"]))
        .trim()
        .to_string();
    let _removal_id = Removal(&dir, id.clone());
    assert_eq!(id.len(), 64, "{id}");
    kiln(&dir)
        .args(["ps", "-a"])
        .assert()
        .stdout(predicate::str::contains("Created"));
    assert_eq!(inspect(&dir, "later")["State"]["Status"], "created");
    kiln(&dir)
        .args(["start", "later"])
        .assert()
        .success()
        .stdout("later\n");
    kiln(&dir)
        .args(["ps"])
        .assert()
        .stdout(predicate::str::contains(&id[..12]).and(predicate::str::contains("Up ")));
    // `restart` stops it (SIGTERM is ignored by a PID 1 without a handler: -t 0 kills) and
    // starts it again.
    kiln(&dir)
        .args(["restart", "-t", "0", "later"])
        .assert()
        .success();
    assert_eq!(inspect(&dir, "later")["State"]["Running"], true);
    kiln(&dir).args(["rm", "-f", "later"]).assert().success();
    assert_nothing_left(&id);
}

#[test]
fn run_and_rm_conflicts_and_bad_policies_are_refused() {
    let Some(dir) = busybox_store() else { return };
    kiln(&dir)
        .args(["run", "--rm", "--restart", "always", "busybox", "true"])
        .assert()
        .code(125)
        .stderr(predicate::str::contains(
            "Conflicting options: --restart and --rm",
        ));
    kiln(&dir)
        .args(["run", "--restart", "always:3", "busybox", "true"])
        .assert()
        .code(125)
        .stderr(predicate::str::contains(
            "maximum retry count cannot be used",
        ));
    assert!(stdout_of(kiln(&dir).args(["ps", "-aq"])).is_empty());
}

#[test]
fn stop_uses_the_stop_signal_and_the_stop_timeout() {
    let Some(dir) = busybox_store() else { return };
    // The trap answers SIGUSR1 only: `stop` must send it, not SIGTERM.
    let id = stdout_of(kiln(&dir).args([
        "run",
        "-d",
        "--stop-signal",
        "USR1",
        "busybox",
        "sh",
        "-c",
        "trap 'echo got usr1; exit 7' USR1; while true; do sleep 0.1; done",
    ]))
    .trim()
    .to_string();
    let _removal_id = Removal(&dir, id.clone());
    std::thread::sleep(Duration::from_millis(300));
    kiln(&dir).args(["stop", &id]).assert().success();
    kiln(&dir).args(["wait", &id]).assert().stdout("7\n");
    kiln(&dir).args(["logs", &id]).assert().stdout("got usr1\n");
    assert_eq!(inspect(&dir, &id)["Config"]["StopSignal"], "USR1");
    // A PID 1 that ignores the signal is killed after --stop-timeout (1 s), not 10 s.
    let slow = stdout_of(kiln(&dir).args([
        "run",
        "-d",
        "--stop-timeout",
        "1",
        "busybox",
        "sleep",
        "1000",
    ]))
    .trim()
    .to_string();
    let _removal_slow = Removal(&dir, slow.clone());
    let started = Instant::now();
    kiln(&dir).args(["stop", &slow]).assert().success();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    kiln(&dir).args(["wait", &slow]).assert().stdout("137\n");
    kiln(&dir).args(["rm", &id, &slow]).assert().success();
    assert_nothing_left(&id);
    assert_nothing_left(&slow);
}

#[test]
fn on_failure_restarts_as_often_as_allowed() {
    let Some(dir) = busybox_store() else { return };
    let id = stdout_of(kiln(&dir).args([
        "run",
        "-d",
        "--restart",
        "on-failure:2",
        "busybox",
        "sh",
        "-c",
        "echo run; exit 3",
    ]))
    .trim()
    .to_string();
    let _removal_id = Removal(&dir, id.clone());
    // `wait` returns when the monitor is done: after the last restart.
    kiln(&dir).args(["wait", &id]).assert().stdout("3\n");
    let state = inspect(&dir, &id);
    assert_eq!(state["RestartCount"], 2);
    assert_eq!(state["State"]["Status"], "exited");
    assert_eq!(state["HostConfig"]["RestartPolicy"]["Name"], "on-failure");
    kiln(&dir)
        .args(["logs", &id])
        .assert()
        .stdout("run\nrun\nrun\n");
    kiln(&dir).args(["rm", &id]).assert().success();
    assert_nothing_left(&id);
}

#[test]
fn restart_always_comes_back_until_stopped() {
    let Some(dir) = busybox_store() else { return };
    let id = stdout_of(kiln(&dir).args([
        "run",
        "-d",
        "--restart",
        "always",
        "busybox",
        "sh",
        "-c",
        "sleep 0.3; exit 0",
    ]))
    .trim()
    .to_string();
    let _removal_id = Removal(&dir, id.clone());
    eventually("two restarts", || {
        inspect(&dir, &id)["RestartCount"].as_u64().unwrap_or(0) >= 2
    });
    kiln(&dir).args(["stop", "-t", "1", &id]).assert().success();
    let after = inspect(&dir, &id);
    assert_eq!(after["State"]["Status"], "exited");
    let count = after["RestartCount"].clone();
    std::thread::sleep(Duration::from_millis(800));
    let later = inspect(&dir, &id);
    assert_eq!(
        later["State"]["Status"], "exited",
        "stop must end the restarts"
    );
    assert_eq!(later["RestartCount"], count);
    kiln(&dir).args(["rm", &id]).assert().success();
    assert_nothing_left(&id);
}

#[test]
fn tty_gives_the_container_a_terminal_of_the_callers_size() {
    let Some(dir) = busybox_store() else { return };
    let (text, code) = run_on_pty(
        &dir,
        &[
            "run",
            "--rm",
            "-t",
            "busybox",
            "sh",
            "-c",
            "tty; stty size; echo to-stderr >&2; exit 4",
        ],
        &[],
    );
    assert_eq!(code, 4, "{text}");
    // The container's pty turns \n into \r\n (and the test's own pty, not in raw mode
    // without -i, once more); stdout and stderr are merged, as with Docker.
    assert!(text.contains("/dev/pts/0\r"), "{text:?}");
    assert!(text.contains("31 97\r"), "{text:?}");
    assert!(text.contains("to-stderr\r"), "{text:?}");
}

#[test]
fn interactive_tty_takes_input_and_restores_the_terminal() {
    let Some(dir) = busybox_store() else { return };
    let (text, code) = run_on_pty(
        &dir,
        &[
            "run",
            "--rm",
            "-it",
            "busybox",
            "sh",
            "-c",
            "read line; echo got:$line",
        ],
        &[b"hello\r"],
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("got:hello"), "{text:?}");
}

#[test]
fn init_is_pid_1_reaps_orphans_and_forwards_sigterm() {
    let Some(dir) = busybox_store() else { return };
    // As Docker's `docker-init -- CMD`: the init is PID 1, the command PID 2. The init's
    // command line is rewritten in the memory of its own (the kiln binary's) so it is cut to
    // that length; this one fits.
    kiln(&dir)
        .args(["run", "--rm", "--init", "busybox", "ps", "-o", "pid,args"])
        .assert()
        .success()
        .stdout(
            predicate::str::is_match(r"\n +1 kiln-init -- ps -o pid,args\n +2 ps -o pid,args\n$")
                .unwrap(),
        );
    // The orphan (its parent sh exits at once) is reparented to PID 1, which must reap it:
    // no zombie is left while the command goes on.
    kiln(&dir)
        .args([
            "run",
            "--rm",
            "--init",
            "busybox",
            "sh",
            "-c",
            "sh -c 'sleep 0.2 &'; sleep 1; ps -o stat,args | grep -c '^Z' || true",
        ])
        .assert()
        .success()
        .stdout("0\n");
    // SIGTERM to the container reaches the command (PID 2), whose trap decides the exit code.
    let id = stdout_of(kiln(&dir).args([
        "run",
        "-d",
        "--init",
        "busybox",
        "sh",
        "-c",
        "trap 'exit 42' TERM; while true; do sleep 0.1; done",
    ]))
    .trim()
    .to_string();
    let _removal_id = Removal(&dir, id.clone());
    std::thread::sleep(Duration::from_millis(300));
    kiln(&dir).args(["stop", "-t", "5", &id]).assert().success();
    kiln(&dir).args(["wait", &id]).assert().stdout("42\n");
    kiln(&dir).args(["rm", &id]).assert().success();
    assert_nothing_left(&id);
}

#[test]
fn attach_sees_new_output_and_sends_input() {
    let Some(dir) = busybox_store() else { return };
    let id = stdout_of(kiln(&dir).args([
        "run",
        "-d",
        "-i",
        "busybox",
        "sh",
        "-c",
        "while read line; do echo echo:$line; done; exit 5",
    ]))
    .trim()
    .to_string();
    let _removal_id = Removal(&dir, id.clone());
    let mut attach = Process::new(assert_cmd::cargo::cargo_bin("kiln"))
        .arg("--root")
        .arg(dir.path().join("store"))
        .args(["attach", &id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut stdin = attach.stdin.take().unwrap();
    stdin.write_all(b"one\n").unwrap();
    drop(stdin);
    let mut stdout = attach.stdout.take().unwrap();
    let mut line = [0u8; 9];
    stdout.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"echo:one\n");
    // The container's stdin stays open after this client's input ended (run -d -i): it
    // is still running; stopping it ends the attach with its exit code.
    assert_eq!(inspect(&dir, &id)["State"]["Running"], true);
    kiln(&dir).args(["kill", &id]).assert().success();
    let status = attach.wait().unwrap();
    assert_eq!(status.code(), Some(137));
    kiln(&dir).args(["rm", &id]).assert().success();
    assert_nothing_left(&id);
}

#[test]
fn start_attach_interactive_runs_a_created_container_with_input() {
    let Some(dir) = busybox_store() else { return };
    let id = stdout_of(kiln(&dir).args([
        "create",
        "-i",
        "busybox",
        "sh",
        "-c",
        "echo start; cat; exit 3",
    ]))
    .trim()
    .to_string();
    let _removal_id = Removal(&dir, id.clone());
    kiln(&dir)
        .args(["start", "-a", "-i", &id])
        .write_stdin("piped\n")
        .assert()
        .code(3)
        .stdout("start\npiped\n");
    kiln(&dir).args(["rm", &id]).assert().success();
    assert_nothing_left(&id);
}

#[test]
fn detach_keys_leave_a_tty_container_running() {
    let Some(dir) = busybox_store() else { return };
    let id = stdout_of(kiln(&dir).args(["run", "-dit", "busybox", "sh"]))
        .trim()
        .to_string();
    let _removal_id = Removal(&dir, id.clone());
    let (text, code) = run_on_pty(
        &dir,
        &["attach", &id],
        &[b"echo hi-$((1+2))\r", b"\x10\x11"],
    );
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("hi-3"), "{text:?}");
    assert!(text.contains("read escape sequence"), "{text:?}");
    assert_eq!(inspect(&dir, &id)["State"]["Running"], true);
    kiln(&dir).args(["rm", "-f", &id]).assert().success();
    assert_nothing_left(&id);
}
