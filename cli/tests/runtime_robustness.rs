//! What the runtime must survive, as Docker users expect it to: the CLI interrupted or killed
//! while a `--rm` container runs, a killed monitor, containers started and stopped by several
//! kiln processes at once, bad input; and `run`'s automatic pull (`--pull`). Real namespaces
//! on a busybox image made from Debian's `busybox-static`; skipped with a printed reason when
//! not root, when busybox is missing, or (for the pull tests) when `docker-registry` is.
#![allow(clippy::print_stderr)]

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use common::{LoopbackRegistry, kiln};
use predicates::prelude::*;

fn busybox_store() -> Option<tempfile::TempDir> {
    common::busybox_store(&["CMD [\"sh\"]"], &[])
}

/// `kiln --root DIR/store ARGS...` as a child process (to signal it), output discarded.
fn spawn_kiln(dir: &tempfile::TempDir, args: &[&str]) -> Child {
    Process::new(assert_cmd::cargo::cargo_bin("kiln"))
        .arg("--root")
        .arg(dir.path().join("store"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn stdout_of(command: &mut assert_cmd::Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Waits until container `name` runs its command; returns its full ID and the host pid of its
/// PID 1.
fn wait_running(dir: &tempfile::TempDir, name: &str) -> (String, i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = stdout_of(
            kiln(dir)
                .args(["ps", "-q", "--no-trunc", "--filter"])
                .arg(format!("name=^/{name}$")),
        );
        if let Some(id) = found.lines().next() {
            let pid: i32 = stdout_of(kiln(dir).args(["inspect", "-f", "{{.State.Pid}}", id]))
                .trim()
                .parse()
                .unwrap();
            // The command runs once PID 1 is no longer kiln's init binary, or (`--init`) once
            // a child of kiln's init is something else.
            let not_kiln = |pid: &str| {
                fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|exe| !exe.to_string_lossy().contains("kiln"))
            };
            let children =
                fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            if pid > 0 && (not_kiln(&pid.to_string()) || children.split_whitespace().any(not_kiln))
            {
                return (id.to_string(), pid);
            }
        }
        assert!(Instant::now() < deadline, "container {name} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends signal `name` (`INT`, `KILL`, ...) to `pid` with the host's `kill`.
fn signal(pid: i32, name: &str) {
    let status = Process::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// Whether `pid` is a live process (not a zombie waiting for the host's init to reap it).
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

/// Nothing of container `id` (whose PID 1 was `pid`) is left: no process, no cgroup in any
/// hierarchy, no mount under the store, no directory in the store, no record (`ps -a`).
fn assert_nothing_left(dir: &tempfile::TempDir, id: &str, pid: i32) {
    let store = dir.path().join("store");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = Vec::new();
        if alive(pid) {
            left.push(format!("process {pid}"));
        }
        for hierarchy in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let cgroup = hierarchy.path().join("kiln").join(id);
            if cgroup.exists() {
                left.push(cgroup.display().to_string());
            }
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        left.extend(
            mountinfo
                .lines()
                .filter(|line| line.contains(&*store.to_string_lossy()))
                .map(str::to_string),
        );
        if store.join("containers").join(id).exists() {
            left.push(format!("store dir of {id}"));
        }
        if stdout_of(kiln(dir).args(["ps", "-a", "-q", "--no-trunc"])).contains(id) {
            left.push(format!("record of {id}"));
        }
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left behind: {left:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn arguments_after_the_image_belong_to_the_container() {
    let Some(dir) = busybox_store() else { return };
    // `-ld` and `-c` are kiln flags too (`--label`, `--cpu-shares`): after the image they
    // are the command's, as with Docker.
    kiln(&dir)
        .args(["run", "--rm", "--entrypoint", "ls", "busybox", "-ld", "/"])
        .assert()
        .success()
        .stdout(predicate::str::starts_with("d"));
    kiln(&dir)
        .args([
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            "busybox",
            "-c",
            "echo $0 ran",
        ])
        .assert()
        .success()
        .stdout("sh ran\n");
    kiln(&dir)
        .args(["run", "--rm", "busybox", "--rm"])
        .assert()
        .code(127)
        .stderr(predicate::str::contains(
            "exec: \"--rm\": executable file not found",
        ));
}

#[test]
fn supplementary_groups_start_with_the_primary_group_as_docker_sets_them() {
    let Some(dir) = busybox_store() else { return };
    for (user, expected) in [
        (None, "uid=0(root) gid=0(root) groups=0(root)\n"),
        (
            Some("app"),
            "uid=1000(app) gid=1000(app) groups=1000(app)\n",
        ),
        (Some("1000:0"), "uid=1000(app) gid=0(root) groups=0(root)\n"),
        (Some("4242"), "uid=4242 gid=0(root) groups=0(root)\n"),
    ] {
        let mut command = kiln(&dir);
        command.args(["run", "--rm"]);
        if let Some(user) = user {
            command.args(["-u", user]);
        }
        command
            .args(["busybox", "id"])
            .assert()
            .success()
            .stdout(expected);
    }
}

#[test]
fn run_rm_cleans_up_when_the_cli_gets_sigint_or_sigterm() {
    let Some(dir) = busybox_store() else { return };
    for (number, sig) in [(2, "INT"), (15, "TERM")] {
        // With --init the signal reaches `sleep`, which dies of it: 128 + signal.
        let name = format!("init-{sig}");
        let mut child = spawn_kiln(
            &dir,
            &[
                "run", "--rm", "--init", "--name", &name, "busybox", "sleep", "1000",
            ],
        );
        let (id, pid) = wait_running(&dir, &name);
        signal(child.id() as i32, sig);
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(128 + number), "{name}");
        assert_nothing_left(&dir, &id, pid);

        // Without --init a shell as PID 1 that traps the signal decides its exit code.
        let name = format!("trap-{sig}");
        let mut child = spawn_kiln(
            &dir,
            &[
                "run",
                "--rm",
                "--name",
                &name,
                "busybox",
                "sh",
                "-c",
                "trap 'exit 7' INT TERM; sleep 1000 & wait",
            ],
        );
        let (id, pid) = wait_running(&dir, &name);
        // The shell must have set its traps before the signal comes.
        std::thread::sleep(Duration::from_millis(300));
        signal(child.id() as i32, sig);
        assert_eq!(child.wait().unwrap().code(), Some(7), "{name}");
        assert_nothing_left(&dir, &id, pid);
    }
}

#[test]
fn run_rm_cleans_up_when_the_container_process_is_killed() {
    let Some(dir) = busybox_store() else { return };
    let mut child = spawn_kiln(
        &dir,
        &[
            "run", "--rm", "--name", "victim", "busybox", "sleep", "1000",
        ],
    );
    let (id, pid) = wait_running(&dir, "victim");
    signal(pid, "KILL");
    assert_eq!(child.wait().unwrap().code(), Some(137));
    assert_nothing_left(&dir, &id, pid);
}

#[test]
fn a_killed_run_rm_cli_leaves_state_that_the_next_command_repairs() {
    let Some(dir) = busybox_store() else { return };
    let mut child = spawn_kiln(
        &dir,
        &[
            "run", "--rm", "--name", "orphan", "busybox", "sleep", "1000",
        ],
    );
    let (id, pid) = wait_running(&dir, "orphan");
    child.kill().unwrap();
    child.wait().unwrap();
    // The container dies with its CLI (parent-death signal); `ps` then finds the record of a
    // `--rm` container whose CLI is gone and removes it, cgroup included, as Docker's daemon
    // removes a --rm container when it exits.
    assert_nothing_left(&dir, &id, pid);
    kiln(&dir).args(["system", "check"]).assert().success();

    // Without --rm the record stays, reported as killed, and can be started again.
    let mut child = spawn_kiln(&dir, &["run", "--name", "kept", "busybox", "sleep", "1000"]);
    let (id, pid) = wait_running(&dir, "kept");
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "the container outlived its CLI");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = stdout_of(kiln(&dir).args([
        "ps",
        "-a",
        "--filter",
        "name=kept",
        "--format",
        "{{.Status}}",
    ]));
    assert!(status.starts_with("Exited (137)"), "{status}");
    for hierarchy in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        assert!(
            !hierarchy.path().join("kiln").join(&id).exists(),
            "cgroup of {id} left"
        );
    }
    kiln(&dir).args(["start", "kept"]).assert().success();
    let (_, pid) = wait_running(&dir, "kept");
    kiln(&dir).args(["rm", "-f", "kept"]).assert().success();
    assert_nothing_left(&dir, &id, pid);
}

#[test]
fn a_killed_monitor_is_reported_at_once_and_the_container_starts_again() {
    let Some(dir) = busybox_store() else { return };
    let id =
        stdout_of(kiln(&dir).args(["run", "-d", "--name", "watched", "busybox", "sleep", "1000"]))
            .trim()
            .to_string();
    let (_, pid) = wait_running(&dir, "watched");
    let monitor: i32 = stdout_of(kiln(&dir).args(["inspect", "-f", "{{.State.Pid}}", &id]))
        .trim()
        .parse::<i32>()
        .ok()
        .and_then(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // PID 1's parent is kiln's init, whose parent is the monitor.
            let parent = |stat: &str| -> Option<i32> {
                stat.rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()
            };
            let init = parent(&stat)?;
            parent(&fs::read_to_string(format!("/proc/{init}/stat")).ok()?)
        })
        .unwrap();
    let cmdline = fs::read(format!("/proc/{monitor}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("__kiln-monitor"),
        "not the monitor: {}",
        String::from_utf8_lossy(&cmdline)
    );
    signal(monitor, "KILL");
    // The very next command sees the exit, even while the dead monitor is not reaped yet.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = stdout_of(kiln(&dir).args([
            "ps",
            "-a",
            "--filter",
            "name=watched",
            "--format",
            "{{.Status}}",
        ]));
        if status.starts_with("Exited (137)") {
            break;
        }
        assert!(Instant::now() < deadline, "still {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    kiln(&dir).args(["start", "watched"]).assert().success();
    kiln(&dir)
        .args(["exec", "watched", "echo", "back"])
        .assert()
        .success()
        .stdout("back\n");
    kiln(&dir).args(["rm", "-f", "watched"]).assert().success();
    assert_nothing_left(&dir, &id, pid);
}

#[test]
fn eight_kiln_processes_at_once_start_and_stop_containers_without_corrupting_state() {
    let Some(dir) = busybox_store() else { return };
    let root = dir.path().join("store");
    let kiln_at = |args: Vec<String>| {
        let root = root.clone();
        std::thread::spawn(move || {
            Process::new(assert_cmd::cargo::cargo_bin("kiln"))
                .arg("--root")
                .arg(&root)
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        })
    };
    let all = |make: &dyn Fn(usize) -> Vec<String>| {
        let threads: Vec<_> = (0..8).map(|index| kiln_at(make(index))).collect();
        threads
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .collect::<Vec<_>>()
    };
    let words = |text: &str| text.split(' ').map(str::to_string).collect::<Vec<_>>();
    for (index, output) in all(&|index| words(&format!("run --rm busybox echo {index}")))
        .iter()
        .enumerate()
    {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("{index}\n")
        );
    }
    for output in all(&|index| words(&format!("run -d --name box{index} busybox sleep 1000"))) {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let running = stdout_of(kiln(&dir).args(["ps", "-q"]));
    assert_eq!(running.lines().count(), 8, "{running}");
    for output in all(&|index| words(&format!("stop -t 1 box{index}"))) {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let states = stdout_of(kiln(&dir).args(["ps", "-a", "--format", "{{.Names}} {{.State}}"]));
    assert_eq!(states.matches(" exited\n").count(), 8, "{states}");
    for output in all(&|index| words(&format!("start box{index}"))) {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(stdout_of(kiln(&dir).args(["ps", "-q"])).lines().count(), 8);
    for output in all(&|index| words(&format!("rm -f box{index}"))) {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(stdout_of(kiln(&dir).args(["ps", "-a", "-q"])), "");
    kiln(&dir).args(["system", "check"]).assert().success();
    let containers: Vec<PathBuf> = fs::read_dir(root.join("containers"))
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    assert!(containers.is_empty(), "{containers:?}");
}

#[test]
fn bad_input_gives_one_line_errors_with_dockers_exit_codes() {
    let Some(dir) = busybox_store() else { return };
    let cases: [(&[&str], i32, &str); 12] = [
        (
            &["--pull", "never", "nosuchimage"],
            125,
            "kiln: No such image: nosuchimage:latest\n",
        ),
        (
            &["--pull", "sometimes", "busybox"],
            125,
            "kiln: invalid pull option: 'sometimes': must be one of \"always\", \"missing\" or \"never\"\n",
        ),
        (
            &["busybox", "nosuchcommand"],
            127,
            "kiln: exec: \"nosuchcommand\": executable file not found in $PATH\n",
        ),
        (
            &["busybox", "/etc/passwd"],
            126,
            "kiln: exec: \"/etc/passwd\": Permission denied\n",
        ),
        (
            &["-v", "/tmp:/x:zz", "busybox", "true"],
            125,
            "kiln: invalid mode: zz\n",
        ),
        (
            &["--mount", "type=foo,target=/x", "busybox", "true"],
            125,
            "kiln: invalid mount config for type \"foo\": mount type unknown\n",
        ),
        (
            &["-u", "nosuch", "busybox", "true"],
            125,
            "kiln: unable to find user nosuch: no matching entries in passwd file\n",
        ),
        (
            &["-u", "app:nosuch", "busybox", "true"],
            125,
            "kiln: unable to find group nosuch: no matching entries in group file\n",
        ),
        (
            &["-m", "1k", "busybox", "true"],
            125,
            "kiln: minimum memory limit allowed is 6MB\n",
        ),
        (
            &["--restart", "sometimes", "busybox", "true"],
            125,
            "kiln: invalid restart policy: invalid restart policy 'sometimes'\n",
        ),
        (
            &["-p", "80:80", "busybox", "true"],
            125,
            "kiln: -p/--publish is not supported yet: bridge network (port publishing) is a later kiln feature; with --network host the container's ports are the host's\n",
        ),
        (
            &["--entrypoint", "", "busybox"],
            125,
            "kiln: no command specified: the image has no ENTRYPOINT or CMD; give one after the image name\n",
        ),
    ];
    for (args, code, message) in cases {
        kiln(&dir)
            .arg("run")
            .arg("--rm")
            .args(args)
            .assert()
            .code(code)
            .stdout("")
            .stderr(message);
    }
    // None of them left a container behind.
    assert_eq!(stdout_of(kiln(&dir).args(["ps", "-a", "-q"])), "");
}

#[test]
fn run_pulls_a_missing_image_from_its_registry_then_runs_it() {
    let Some(source) = busybox_store() else {
        return;
    };
    let Some(registry) = LoopbackRegistry::start() else {
        return;
    };
    let name = format!("{}/busybox", registry.domain);
    kiln(&source)
        .args(["tag", "busybox", &name])
        .assert()
        .success();
    kiln(&source).args(["push", &name]).assert().success();

    let fresh = tempfile::tempdir().unwrap();
    kiln(&fresh)
        .args(["run", "--pull", "never", &name, "true"])
        .assert()
        .code(125)
        .stderr(format!("kiln: No such image: {name}:latest\n"));
    let output = kiln(&fresh)
        .args(["run", "--rm", &name, "echo", "pulled and ran"])
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // Docker's lines, on stderr: stdout is the container's.
    assert_eq!(String::from_utf8_lossy(&output.stdout), "pulled and ran\n");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines[0],
        format!("Unable to find image '{name}:latest' locally")
    );
    assert_eq!(lines[1], "latest: Pulling from busybox");
    assert!(stderr.contains(": Pull complete\n"), "{stderr}");
    assert!(
        lines.iter().any(|line| line.starts_with("Digest: sha256:")),
        "{stderr}"
    );
    assert_eq!(
        lines.last().unwrap(),
        &format!("Status: Downloaded newer image for {name}:latest")
    );
    // Now stored: no pull, no lines.
    kiln(&fresh)
        .args(["run", "--rm", &name, "true"])
        .assert()
        .success()
        .stderr("");
    // `create` pulls as well; `--pull always` asks the registry, which has nothing newer.
    let created = tempfile::tempdir().unwrap();
    kiln(&created)
        .args(["create", "--name", "made", &name, "true"])
        .timeout(Duration::from_secs(120))
        .assert()
        .success()
        .stderr(predicate::str::contains("Unable to find image"));
    kiln(&created)
        .args(["run", "--rm", "--pull", "always", &name, "true"])
        .timeout(Duration::from_secs(120))
        .assert()
        .success()
        .stderr(predicate::str::ends_with(format!(
            "Status: Image is up to date for {name}:latest\n"
        )));
}
