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
        .stderr(predicate::str::contains("bridge networking"));
    kiln(&dir)
        .args(["run", "--network", "bridge", "busybox"])
        .assert()
        .code(125);
    kiln(&dir)
        .args(["run", "-v", "not/a/volume/name:/x", "busybox"])
        .assert()
        .code(125);
    kiln(&dir)
        .args(["run", "nosuchimage"])
        .assert()
        .code(125)
        .stderr(predicate::str::contains("unable to find image"));
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
