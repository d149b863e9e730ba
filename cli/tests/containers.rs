//! `kiln run`, `ps` and `rm` with real namespaces, on a busybox image made from Debian's
//! `busybox-static`. Skipped with a printed reason when not root or when busybox is missing.
#![allow(clippy::print_stderr)]

mod common;

use std::fs;

use common::kiln;
use predicates::prelude::*;

/// A store with `busybox:latest` imported, or None (with the reason printed).
fn busybox_store() -> Option<tempfile::TempDir> {
    common::busybox_store(&["CMD [\"sh\"]", "ENV GREETING=hello"], &[])
}

#[test]
fn run_executes_the_command_with_the_image_config_and_passes_the_exit_code() {
    let Some(dir) = busybox_store() else { return };
    kiln(&dir)
        .args([
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "echo $GREETING $$; exit 7",
        ])
        .assert()
        .code(7)
        .stdout("hello 1\n");
    kiln(&dir)
        .args(["run", "--rm", "busybox", "nosuchcommand"])
        .assert()
        .code(127)
        .stderr(predicate::str::contains(
            "executable file not found in $PATH",
        ));
    kiln(&dir)
        .args([
            "run",
            "--rm",
            "-u",
            "app",
            "-w",
            "/work",
            "-e",
            "GREETING=hi",
            "-h",
            "box",
            "busybox",
            "sh",
            "-c",
            "id -u; pwd; echo $GREETING; hostname",
        ])
        .assert()
        .success()
        .stdout("1000\n/work\nhi\nbox\n");
    kiln(&dir)
        .args(["run", "--rm", "-i", "busybox"])
        .write_stdin("echo from stdin\n")
        .assert()
        .success()
        .stdout("from stdin\n");
}

#[test]
fn containers_without_rm_are_listed_and_removed() {
    let Some(dir) = busybox_store() else { return };
    kiln(&dir)
        .args(["run", "--name", "job", "busybox", "true"])
        .assert()
        .success();
    kiln(&dir)
        .args(["ps"])
        .assert()
        .success()
        .stdout(predicate::str::contains("job").not());
    let listing = kiln(&dir)
        .args(["ps", "-a", "--format", "{{.Names}} {{.Status}}"])
        .output()
        .unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    assert!(listing.starts_with("job Exited (0) "), "{listing}");
    kiln(&dir)
        .args(["run", "--name", "job", "busybox", "true"])
        .assert()
        .code(125)
        .stderr(predicate::str::contains("is already in use"));
    kiln(&dir)
        .args(["rmi", "busybox"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("being used by container"));
    kiln(&dir)
        .args(["rm", "job"])
        .assert()
        .success()
        .stdout("job\n");
    kiln(&dir).args(["ps", "-aq"]).assert().success().stdout("");
    assert_eq!(
        fs::read_dir(dir.path().join("store/containers"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn unsupported_options_are_refused_clearly() {
    let Some(dir) = busybox_store() else { return };
    kiln(&dir)
        .args(["run", "-p", "80:80", "busybox"])
        .assert()
        .code(125)
        .stderr(predicate::str::contains(
            "-p/--publish is not supported yet: bridge network",
        ));
    kiln(&dir)
        .args(["run", "--network", "bridge", "busybox"])
        .assert()
        .code(125);
    kiln(&dir)
        .args(["run", "-v", "not/a/volume/name:/x", "busybox"])
        .assert()
        .code(125);
    // Without `--pull never` kiln would try Docker Hub (tests/runtime_robustness.rs pulls
    // from a local registry instead).
    kiln(&dir)
        .args(["run", "--pull", "never", "nosuchimage"])
        .assert()
        .code(125)
        .stderr("kiln: No such image: nosuchimage:latest\n");
}

#[test]
fn limits_and_security_options_reach_the_container() {
    let Some(dir) = busybox_store() else { return };
    kiln(&dir)
        .args([
            "run",
            "--name",
            "hog",
            "-m",
            "32m",
            "busybox",
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=256M",
            "count=1",
        ])
        .assert()
        .code(137);
    kiln(&dir)
        .args([
            "inspect",
            "--format",
            "{{.State.ExitCode}} {{.State.OOMKilled}}",
            "hog",
        ])
        .assert()
        .success()
        .stdout("137 true\n");
    kiln(&dir)
        .args([
            "run",
            "--rm",
            "--ulimit",
            "nofile=512:1024",
            "--pids-limit",
            "50",
            "--cpus",
            "0.5",
            "busybox",
            "sh",
            "-c",
            "ulimit -n",
        ])
        .assert()
        .success()
        .stdout("512\n");
    kiln(&dir)
        .args([
            "run",
            "--rm",
            "--cap-drop",
            "CHOWN",
            "busybox",
            "chown",
            "1000",
            "/tmp",
        ])
        .assert()
        .code(1);
    kiln(&dir)
        .args(["run", "--rm", "busybox", "sh", "-c", "unshare -U true"])
        .assert()
        .failure();
    kiln(&dir)
        .args(["run", "--rm", "-m", "12q", "busybox", "true"])
        .assert()
        .code(125)
        .stderr(predicate::str::contains("invalid size"));
    kiln(&dir)
        .args([
            "run",
            "--rm",
            "--security-opt",
            "apparmor=x",
            "busybox",
            "true",
        ])
        .assert()
        .code(125);
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

#[test]
fn ps_columns_sizes_and_format_placeholders_are_dockers() {
    let Some(dir) = busybox_store() else { return };
    kiln(&dir)
        .args(["volume", "create", "data"])
        .assert()
        .success();
    kiln(&dir)
        .args([
            "run",
            "--name",
            "writer",
            "-l",
            "team=a",
            "-v",
            "data:/data",
            "busybox",
            "sh",
            "-c",
            "echo hello > /f",
        ])
        .assert()
        .success();
    kiln(&dir)
        .args(["create", "--name", "fresh", "busybox", "true"])
        .assert()
        .success();

    // Docker's header and columns; COMMAND quotes arguments that hold spaces and is cut at
    // 20 characters; -s adds SIZE: the writable layer (6 bytes of /f; the runtime's mount
    // targets weigh nothing), then with the image.
    let table = stdout_of(kiln(&dir).args(["ps", "-a", "-s"]));
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0]
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "CONTAINER ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "PORTS",
            "NAMES",
            "SIZE"
        ]
    );
    assert!(
        lines[1].contains("\"true\"") && lines[1].contains("fresh"),
        "{table}"
    );
    assert!(lines[1].contains(" 0B (virtual "), "{table}");
    assert!(lines[2].contains("\"sh -c 'echo hello >…\""), "{table}");
    assert!(lines[2].contains(" 6B (virtual "), "{table}");

    let format = "{{.Names}}|{{.Command}}|{{.Size}}|{{.Labels}}|{{.Mounts}}|{{.LocalVolumes}}|{{.State}}|{{.CreatedAt}}";
    let rows = stdout_of(kiln(&dir).args(["ps", "-a", "--no-trunc", "--format", format]));
    let writer: Vec<&str> = rows.lines().nth(1).unwrap().split('|').collect();
    assert_eq!(writer[0], "writer");
    assert_eq!(writer[1], "\"sh -c 'echo hello > /f'\"");
    assert!(writer[2].starts_with("6B (virtual "), "{rows}");
    assert_eq!(&writer[3..7], ["team=a", "data", "1", "exited"]);
    // Go's time.Time.String() in UTC.
    let created = writer[7];
    assert!(
        created.ends_with(" +0000 UTC") && created.len() == 29,
        "{created}"
    );

    // -n, -l: the last created, stopped ones too; --no-trunc: full IDs.
    assert_eq!(
        stdout_of(kiln(&dir).args(["ps", "-l", "--format", "{{.Names}}"])),
        "fresh\n"
    );
    assert_eq!(
        stdout_of(kiln(&dir).args(["ps", "-n", "2", "--format", "{{.Names}}"])),
        "fresh\nwriter\n"
    );
    let ids = stdout_of(kiln(&dir).args(["ps", "-aq", "--no-trunc"]));
    assert!(ids.lines().all(|id| id.len() == 64), "{ids}");
    let ids = stdout_of(kiln(&dir).args(["ps", "-aq"]));
    assert!(ids.lines().all(|id| id.len() == 12), "{ids}");
}

#[test]
fn inspect_shows_the_command_split_and_the_limits_as_docker_does() {
    let Some(dir) = common::busybox_store(
        &["ENTRYPOINT [\"echo\", \"ep\"]", "CMD [\"c1\", \"c2\"]"],
        &[],
    ) else {
        return;
    };
    let split = |args: &[&str]| {
        let id = stdout_of(kiln(&dir).arg("create").args(args));
        let shown = stdout_of(kiln(&dir).args([
            "inspect",
            "-f",
            "{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{json .Path}} {{json .Args}}",
            id.trim(),
        ]));
        kiln(&dir).args(["rm", id.trim()]).assert().success();
        shown
    };
    // The outputs of Docker 20.10 for the same image and flags.
    assert_eq!(
        split(&["busybox"]),
        "[\"echo\",\"ep\"] [\"c1\",\"c2\"] \"echo\" [\"ep\",\"c1\",\"c2\"]\n"
    );
    assert_eq!(
        split(&["busybox", "x"]),
        "[\"echo\",\"ep\"] [\"x\"] \"echo\" [\"ep\",\"x\"]\n"
    );
    assert_eq!(
        split(&["--entrypoint", "", "busybox", "echo", "hi"]),
        "null [\"echo\",\"hi\"] \"echo\" [\"hi\"]\n"
    );
    assert_eq!(
        split(&["--entrypoint", "id", "busybox"]),
        "[\"id\"] null \"id\" []\n"
    );
    assert_eq!(
        split(&["--entrypoint", "id", "busybox", "-u"]),
        "[\"id\"] [\"-u\"] \"id\" [\"-u\"]\n"
    );

    kiln(&dir)
        .args([
            "create",
            "--name",
            "limited",
            "-m",
            "64m",
            "--cpus",
            "1.5",
            "--cpu-shares",
            "512",
            "--pids-limit",
            "100",
            "--ulimit",
            "nofile=1024:2048",
            "--cap-add",
            "NET_ADMIN",
            "--cap-drop",
            "chown",
            "--security-opt",
            "no-new-privileges",
            "busybox",
        ])
        .assert()
        .success();
    let host = stdout_of(kiln(&dir).args(["inspect", "-f", "{{json .HostConfig}}", "limited"]));
    let host: serde_json::Value = serde_json::from_str(&host).unwrap();
    assert_eq!(host["Memory"], 64 << 20);
    assert_eq!(
        host["MemorySwap"],
        128 << 20,
        "Docker's default: twice the memory"
    );
    assert_eq!(host["NanoCpus"], 1_500_000_000_i64);
    assert_eq!(host["CpuShares"], 512);
    assert_eq!(host["PidsLimit"], 100);
    assert_eq!(
        host["Ulimits"],
        serde_json::json!([{"Name": "nofile", "Soft": 1024, "Hard": 2048}])
    );
    assert_eq!(host["CapAdd"], serde_json::json!(["CAP_NET_ADMIN"]));
    assert_eq!(host["CapDrop"], serde_json::json!(["CAP_CHOWN"]));
    assert_eq!(
        host["SecurityOpt"],
        serde_json::json!(["no-new-privileges"])
    );
    assert_eq!(host["Privileged"], false);
}

#[test]
fn the_image_config_is_honoured_as_docker_honours_it() {
    let Some(dir) = common::busybox_store(
        &[
            "ENTRYPOINT [\"echo\", \"ep\"]",
            "CMD [\"c1\", \"c2\"]",
            "WORKDIR /new/dir",
            "USER app",
            "STOPSIGNAL SIGUSR1",
        ],
        &[],
    ) else {
        return;
    };
    let run = |args: &[&str]| stdout_of(kiln(&dir).args(["run", "--rm"]).args(args));
    // ENTRYPOINT + CMD; arguments replace CMD; --entrypoint resets CMD; --entrypoint ''
    // leaves the arguments alone.
    assert_eq!(run(&["busybox"]), "ep c1 c2\n");
    assert_eq!(run(&["busybox", "x", "y"]), "ep x y\n");
    assert_eq!(run(&["--entrypoint", "echo", "busybox"]), "\n");
    assert_eq!(run(&["--entrypoint", "", "busybox", "echo", "hi"]), "hi\n");
    // WORKDIR made when missing (root's, as Docker makes it), USER with its HOME.
    assert_eq!(
        run(&[
            "--entrypoint",
            "sh",
            "busybox",
            "-c",
            "pwd; stat -c %U /new/dir; id -un; echo $HOME"
        ]),
        "/new/dir\nroot\napp\n/home/app\n"
    );
    // STOPSIGNAL is what `stop` sends.
    kiln(&dir)
        .args([
            "run",
            "-d",
            "--name",
            "stopper",
            "--entrypoint",
            "sh",
            "busybox",
            "-c",
            "trap 'exit 5' USR1; while true; do sleep 0.1; done",
        ])
        .assert()
        .success();
    std::thread::sleep(std::time::Duration::from_millis(300));
    kiln(&dir).args(["stop", "stopper"]).assert().success();
    assert_eq!(
        stdout_of(kiln(&dir).args(["inspect", "-f", "{{.State.ExitCode}}", "stopper"])),
        "5\n"
    );
    kiln(&dir).args(["rm", "stopper"]).assert().success();

    // A shell-form ENTRYPOINT ignores CMD and arguments.
    let Some(shell) = common::busybox_store(&["ENTRYPOINT echo shell", "CMD [\"c1\"]"], &[]) else {
        return;
    };
    kiln(&shell)
        .args(["run", "--rm", "busybox", "more"])
        .assert()
        .success()
        .stdout("shell\n");
}
