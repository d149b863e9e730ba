//! Volumes and mounts of `kiln run` (`-v`, `--mount`, `--tmpfs`, `--volumes-from`, image
//! `VOLUME`s), `kiln volume ...`, and `--add-host`/`--dns`, against real namespaces on a busybox
//! image. Skipped with a printed reason when not root or when busybox is missing.
#![allow(clippy::print_stderr)]

mod common;

use std::fs;

use common::kiln;
use predicates::prelude::*;
use serde_json::Value;

fn busybox_store() -> Option<tempfile::TempDir> {
    common::busybox_store(&["CMD [\"sh\"]"], &[])
}

/// stdout of a successful kiln command.
fn stdout(dir: &tempfile::TempDir, args: &[&str]) -> String {
    let output = kiln(dir).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "kiln {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// No mount of the host refers to the test's directory: every container mount lived and died
/// in the container's own mount namespace.
fn assert_nothing_mounted(dir: &tempfile::TempDir) {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = dir.path().display().to_string();
    assert!(
        !mounts.contains(&path),
        "left mounted on the host: {}",
        mounts
            .lines()
            .filter(|line| line.contains(&path))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn volume_names(dir: &tempfile::TempDir) -> Vec<String> {
    stdout(dir, &["volume", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_named_volume_keeps_its_data_after_rm_for_the_next_container() {
    let Some(dir) = busybox_store() else { return };
    kiln(&dir)
        .args([
            "run",
            "--name",
            "writer",
            "-v",
            "data:/data",
            "busybox",
            "sh",
            "-c",
            "echo kept > /data/file",
        ])
        .assert()
        .success();
    assert_eq!(volume_names(&dir), ["data"]);
    // In use: refused, with Docker's message and exit code.
    kiln(&dir)
        .args(["volume", "rm", "data"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "remove data: volume is in use - [",
        ));
    let mounts: Value = serde_json::from_str(&stdout(
        &dir,
        &["inspect", "-f", "{{json .Mounts}}", "writer"],
    ))
    .unwrap();
    assert_eq!(mounts[0]["Type"], "volume");
    assert_eq!(mounts[0]["Name"], "data");
    assert_eq!(mounts[0]["Destination"], "/data");
    assert_eq!(mounts[0]["Driver"], "local");
    assert_eq!(mounts[0]["RW"], true);
    assert!(
        mounts[0]["Source"]
            .as_str()
            .unwrap()
            .ends_with("/volumes/data/_data")
    );
    assert_eq!(
        stdout(
            &dir,
            &["inspect", "-f", "{{json .HostConfig.Binds}}", "writer"]
        ),
        "[\"data:/data\"]\n"
    );
    // `rm -v` keeps named volumes.
    kiln(&dir).args(["rm", "-v", "writer"]).assert().success();
    kiln(&dir)
        .args([
            "run",
            "--rm",
            "-v",
            "data:/data",
            "busybox",
            "cat",
            "/data/file",
        ])
        .assert()
        .success()
        .stdout("kept\n");
    kiln(&dir)
        .args([
            "run",
            "--rm",
            "--mount",
            "source=data,target=/d,readonly",
            "busybox",
            "sh",
            "-c",
            "cat /d/file; echo x > /d/new",
        ])
        .assert()
        .failure()
        .stdout("kept\n")
        .stderr(predicate::str::contains("Read-only file system"));
    kiln(&dir)
        .args(["volume", "rm", "data"])
        .assert()
        .success()
        .stdout("data\n");
    assert!(volume_names(&dir).is_empty());
    assert_nothing_mounted(&dir);
}

#[test]
fn an_image_volume_gets_the_image_content_and_rm_v_removes_it() {
    let Some(dir) = busybox_store() else { return };
    // An image whose VOLUME directory has content owned by app (1000) with mode 0750.
    kiln(&dir)
        .args([
            "run",
            "--name",
            "maker",
            "busybox",
            "sh",
            "-c",
            "mkdir /seed && echo from-image > /seed/hello && ln -s hello /seed/link && \
             chown -R 1000:1000 /seed && chmod 750 /seed && chmod 640 /seed/hello",
        ])
        .assert()
        .success();
    kiln(&dir)
        .args(["commit", "-c", "VOLUME /seed", "maker", "seeded:1"])
        .assert()
        .success();
    kiln(&dir)
        .args([
            "run",
            "--name",
            "user",
            "seeded:1",
            "sh",
            "-c",
            "cat /seed/link; stat -c '%u:%g %a' /seed /seed/hello; echo new > /seed/written",
        ])
        .assert()
        .success()
        .stdout("from-image\n1000:1000 750\n1000:1000 640\n");
    let anonymous = volume_names(&dir);
    assert_eq!(anonymous.len(), 1);
    assert_eq!(anonymous[0].len(), 64);
    let inspected: Value =
        serde_json::from_str(&stdout(&dir, &["volume", "inspect", &anonymous[0]])).unwrap();
    assert_eq!(inspected[0]["Driver"], "local");
    assert_eq!(inspected[0]["Scope"], "local");
    assert_eq!(inspected[0]["Labels"]["com.docker.volume.anonymous"], "");
    // --volumes-from shares the anonymous volume, written data included; :ro is enforced.
    kiln(&dir)
        .args([
            "run",
            "--rm",
            "--volumes-from",
            "user:ro",
            "busybox",
            "sh",
            "-c",
            "cat /seed/written; touch /seed/nope",
        ])
        .assert()
        .failure()
        .stdout("new\n")
        .stderr(predicate::str::contains("Read-only file system"));
    // nocopy: a new volume stays empty.
    kiln(&dir)
        .args([
            "run",
            "--rm",
            "-v",
            "empty:/seed:nocopy",
            "seeded:1",
            "sh",
            "-c",
            "ls -A /seed; touch /seed/mine",
        ])
        .assert()
        .success()
        .stdout("");
    // A volume with content is never filled from the image.
    kiln(&dir)
        .args([
            "run",
            "--rm",
            "-v",
            "empty:/seed",
            "seeded:1",
            "ls",
            "-A",
            "/seed",
        ])
        .assert()
        .success()
        .stdout("mine\n");
    kiln(&dir).args(["rm", "-v", "user"]).assert().success();
    assert_eq!(volume_names(&dir), ["empty"]);
    // run --rm removes the container's anonymous volumes too, not the named ones.
    kiln(&dir)
        .args([
            "run",
            "--rm",
            "-v",
            "/scratch",
            "-v",
            "named:/named",
            "seeded:1",
            "true",
        ])
        .assert()
        .success();
    assert_eq!(volume_names(&dir), ["empty", "named"]);
    assert_nothing_mounted(&dir);
}

#[test]
fn tmpfs_mounts_are_tmpfs_with_the_size_and_mode_asked_for() {
    let Some(dir) = busybox_store() else { return };
    let output = stdout(
        &dir,
        &[
            "run",
            "--rm",
            "--tmpfs",
            "/scratch:size=1m",
            "--mount",
            "type=tmpfs,target=/scratch/inner,tmpfs-size=2m,tmpfs-mode=1770",
            "busybox",
            "sh",
            "-c",
            "grep ' /scratch' /proc/mounts; stat -c %a /scratch/inner; \
             dd if=/dev/zero of=/scratch/big bs=1k count=2048 2>/dev/null || echo full",
        ],
    );
    let lines: Vec<&str> = output.lines().collect();
    assert!(
        lines[0].starts_with("tmpfs /scratch tmpfs rw,nosuid,nodev,noexec,"),
        "{output}"
    );
    assert!(lines[0].contains("size=1024k"), "{output}");
    assert!(lines[1].starts_with("tmpfs /scratch/inner tmpfs ") && lines[1].contains("size=2048k"));
    assert!(lines[1].contains("mode=1770"), "{output}");
    assert_eq!(&lines[2..], ["1770", "full"]);
    kiln(&dir)
        .args([
            "run",
            "--name",
            "scratchy",
            "--tmpfs",
            "/run:exec",
            "busybox",
            "true",
        ])
        .assert()
        .success();
    assert_eq!(
        stdout(
            &dir,
            &["inspect", "-f", "{{json .HostConfig.Tmpfs}}", "scratchy"]
        ),
        "{\"/run\":\"exec\"}\n"
    );
    assert!(volume_names(&dir).is_empty());
    assert_nothing_mounted(&dir);
}

#[test]
fn a_symlink_in_the_image_cannot_take_a_mount_outside_the_root() {
    let Some(dir) = busybox_store() else { return };
    // If the destination were resolved on the host, the mounts would land in `escaped` beside
    // the store (inside the test's temp dir, so a failure cannot harm the host).
    let escaped = dir.path().join("escaped");
    let target = format!("/../../../../../../..{}", escaped.display());
    kiln(&dir)
        .args([
            "run",
            "--name",
            "maker",
            "busybox",
            "sh",
            "-c",
            &format!(
                "mkdir -p {path} {path}-tmpfs && ln -s {target} /evil && ln -s {target}-tmpfs /evil-tmpfs",
                path = escaped.display()
            ),
        ])
        .assert()
        .success();
    kiln(&dir)
        .args(["commit", "maker", "evil:1"])
        .assert()
        .success();
    kiln(&dir)
        .args([
            "run",
            "--rm",
            "-v",
            "esc:/evil",
            "--tmpfs",
            "/evil-tmpfs",
            "evil:1",
            "sh",
            "-c",
            "echo inside > /evil/file && touch /evil-tmpfs/file",
        ])
        .assert()
        .success();
    assert!(!escaped.exists());
    assert!(!dir.path().join("escaped-tmpfs").exists());
    let data = dir.path().join("store/volumes/esc/_data/file");
    assert_eq!(fs::read_to_string(data).unwrap(), "inside\n");
    assert_nothing_mounted(&dir);
}

#[test]
fn bad_mount_specs_and_unknown_sources_are_kiln_errors() {
    let Some(dir) = busybox_store() else { return };
    let refused = |args: &[&str], message: &str| {
        kiln(&dir)
            .arg("run")
            .args(args)
            .args(["busybox", "true"])
            .assert()
            .code(125)
            .stderr(predicate::str::contains(message));
    };
    refused(
        &["-v", "a:b:c:d"],
        "invalid volume specification: 'a:b:c:d'",
    );
    refused(&["-v", "data:/d:bogus"], "invalid mode: bogus");
    refused(
        &["-v", "bad/name:/d"],
        "includes invalid characters for a local volume name",
    );
    refused(
        &["--mount", "type=volume"],
        "\"--mount\" flag: target is required",
    );
    refused(
        &["--mount", "type=bind,target=/x"],
        "field Source must not be empty",
    );
    refused(&["--mount", "type=nfs,target=/x"], "mount type unknown");
    refused(
        &["--tmpfs", "/t:size=lots"],
        "invalid tmpfs option \"size=lots\"",
    );
    refused(
        &["-v", "x1:/d", "--tmpfs", "/d"],
        "Duplicate mount point: /d",
    );
    refused(&["--volumes-from", "nosuch"], "no such container: nosuch");
    refused(&["--add-host", "foo"], "bad format for add-host: \"foo\"");
    refused(
        &["--add-host", "gw:host-gateway"],
        "host-gateway needs bridge networking",
    );
    refused(
        &["--dns", "resolver"],
        "IP address is not correctly formatted: resolver",
    );
    // Nothing was created by the refused runs.
    kiln(&dir).args(["ps", "-aq"]).assert().success().stdout("");
    assert!(volume_names(&dir).is_empty());
}

#[test]
fn add_host_and_dns_options_reach_etc_hosts_and_resolv_conf() {
    let Some(dir) = busybox_store() else { return };
    let output = stdout(
        &dir,
        &[
            "run",
            "--rm",
            "-h",
            "box",
            "--add-host",
            "db:10.1.2.3",
            "--add-host",
            "v6=2001:db8::1",
            "--dns",
            "9.9.9.9",
            "--dns-search",
            "example.com",
            "--dns-option",
            "ndots:2",
            "busybox",
            "sh",
            "-c",
            "tail -n 3 /etc/hosts; cat /etc/resolv.conf",
        ],
    );
    assert_eq!(
        output,
        "10.1.2.3\tdb\n2001:db8::1\tv6\n127.0.0.1\tbox\n\
         nameserver 9.9.9.9\nsearch example.com\noptions ndots:2\n"
    );
}

#[test]
fn volume_commands_create_list_filter_inspect_and_prune() {
    let Some(dir) = busybox_store() else { return };
    assert_eq!(
        stdout(&dir, &["volume", "create", "--label", "team=web", "alpha"]),
        "alpha\n"
    );
    // Idempotent, as Docker.
    assert_eq!(stdout(&dir, &["volume", "create", "alpha"]), "alpha\n");
    let generated = stdout(&dir, &["volume", "create"]);
    assert_eq!(generated.trim().len(), 64);
    kiln(&dir)
        .args(["volume", "create", "-d", "nfs", "x1"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("plugin \"nfs\" not found"));
    kiln(&dir)
        .args(["volume", "create", "-o", "type=tmpfs", "x2"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("not supported"));
    kiln(&dir)
        .args([
            "run", "--name", "user1", "-v", "beta:/b", "-v", "/anon", "busybox", "true",
        ])
        .assert()
        .success();
    assert_eq!(
        stdout(
            &dir,
            &[
                "volume",
                "ls",
                "--format",
                "{{.Name}}",
                "-f",
                "label=team=web"
            ]
        ),
        "alpha\n"
    );
    assert_eq!(
        stdout(&dir, &["volume", "ls", "-q", "-f", "name=bet"]),
        "beta\n"
    );
    let dangling = stdout(&dir, &["volume", "ls", "-q", "-f", "dangling=true"]);
    // Sorted by name.
    let mut expected = ["alpha".to_string(), generated.trim().to_string()];
    expected.sort();
    assert_eq!(dangling, format!("{}\n", expected.join("\n")));
    let table = stdout(&dir, &["volume", "ls", "-f", "name=alpha"]);
    assert!(
        table == "DRIVER    VOLUME NAME\nlocal     alpha\n",
        "{table}"
    );
    assert_eq!(
        stdout(
            &dir,
            &[
                "volume",
                "inspect",
                "-f",
                "{{.Name}} {{.Driver}} {{.Scope}} {{.Labels}}",
                "alpha"
            ]
        ),
        "alpha local local map[team:web]\n"
    );
    let inspected: Value =
        serde_json::from_str(&stdout(&dir, &["volume", "inspect", "alpha"])).unwrap();
    let object = inspected[0].as_object().unwrap();
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "CreatedAt",
            "Driver",
            "Labels",
            "Mountpoint",
            "Name",
            "Options",
            "Scope"
        ]
    );
    kiln(&dir)
        .args(["volume", "inspect", "nosuch"])
        .assert()
        .code(1)
        .stderr("Error: No such volume: nosuch\n");
    kiln(&dir)
        .args(["volume", "rm", "-f", "nosuch"])
        .assert()
        .success();
    // Without -a, prune removes only unused anonymous volumes: none here (the anonymous one is
    // used by `c`).
    let pruned = stdout(&dir, &["volume", "prune", "-f"]);
    assert_eq!(pruned, "Total reclaimed space: 0B\n");
    kiln(&dir).args(["rm", "user1"]).assert().success();
    let pruned = stdout(&dir, &["volume", "prune", "-f"]);
    assert!(
        pruned.starts_with("Deleted Volumes:\n") && pruned.lines().count() == 4,
        "{pruned}"
    );
    assert_eq!(volume_names(&dir).len(), 3);
    let pruned = stdout(&dir, &["volume", "prune", "-a", "-f"]);
    assert!(
        pruned.contains("alpha\n") && pruned.contains("beta\n"),
        "{pruned}"
    );
    assert!(volume_names(&dir).is_empty());
}
