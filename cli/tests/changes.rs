//! `kiln diff`, `commit`, `export` and `cp` on containers run from a busybox image made from
//! Debian's `busybox-static`. Skipped with a printed reason when not root or when busybox is
//! missing.
#![allow(clippy::print_stderr)]

mod common;

use std::fs;
use std::path::Path;
use std::process::Command as Process;

use assert_cmd::Command;
use common::kiln;
use predicates::prelude::*;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n";

/// A store with `busybox:latest` imported, or None (with the reason printed).
fn busybox_store() -> Option<tempfile::TempDir> {
    common::busybox_store(&["CMD [\"sh\"]"], &[("home/app/profile", "export A=1\n")])
}

/// Runs a container named `name` that executes `script` and exits.
fn run(dir: &tempfile::TempDir, name: &str, script: &str) {
    kiln(dir)
        .args(["run", "--name", name, "busybox", "sh", "-c", script])
        .assert()
        .success();
}

fn stdout(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The names in a tar archive, as `tar -t` lists them.
fn tar_names(archive: &[u8]) -> Vec<String> {
    let mut tar = Process::new("tar")
        .args(["-tf", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut tar.stdin.take().unwrap(), archive).unwrap();
    let output = tar.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

const CHANGES: &str = "echo hello > /hello; mkdir -p /newdir/sub; echo f > /newdir/sub/f; \
                       echo 'extra:x:2:2::/:/bin/sh' >> /etc/passwd; rm /etc/group; \
                       rm -rf /home; mkdir /home; echo n > /home/new";

#[test]
fn diff_commit_run_history_and_export_show_the_containers_changes() {
    let Some(dir) = busybox_store() else { return };
    run(&dir, "changer", CHANGES);
    // /proc, /dev, /sys and the /etc files the runtime mounts are not changes (Docker's init
    // layer); /etc is changed because of what is below it; the emptied /home is opaque.
    kiln(&dir)
        .args(["diff", "changer"])
        .assert()
        .success()
        .stdout(
            "C /etc\n\
         D /etc/group\n\
         C /etc/passwd\n\
         A /hello\n\
         C /home\n\
         D /home/app\n\
         A /home/new\n\
         A /newdir\n\
         A /newdir/sub\n\
         A /newdir/sub/f\n",
        );

    let id = stdout(kiln(&dir).args([
        "commit",
        "-m",
        "added hello",
        "-a",
        "Tester <t@example.com>",
        "-c",
        "CMD [\"cat\",\"/hello\"]",
        "changer",
        "committed:v1",
    ]));
    assert!(id.starts_with("sha256:") && id.len() == 72, "{id}");
    kiln(&dir)
        .args(["run", "--rm", "committed:v1"])
        .assert()
        .success()
        .stdout("hello\n");
    kiln(&dir)
        .args([
            "run",
            "--rm",
            "committed:v1",
            "sh",
            "-c",
            "test ! -e /etc/group && test ! -e /home/app && cat /newdir/sub/f /home/new && \
             tail -n 1 /etc/passwd && ls /etc",
        ])
        .assert()
        .success()
        // The runtime's mount targets were not committed: /etc holds only what the image had.
        .stdout("f\nn\nextra:x:2:2::/:/bin/sh\nhostname\nhosts\npasswd\nresolv.conf\n");
    kiln(&dir)
        .args([
            "history",
            "--no-trunc",
            "--format",
            "{{.CreatedBy}}|{{.Comment}}",
            "committed:v1",
        ])
        .assert()
        .success()
        .stdout(predicate::str::starts_with(format!(
            "sh -c {CHANGES}|added hello\n"
        )));
    kiln(&dir)
        .args(["inspect", "--format", "{{.Author}}", "committed:v1"])
        .assert()
        .success()
        .stdout("Tester <t@example.com>\n");

    // A container of the committed image that changes nothing has no diff.
    kiln(&dir)
        .args(["run", "--name", "quiet", "committed:v1", "true"])
        .assert()
        .success();
    kiln(&dir)
        .args(["diff", "quiet"])
        .assert()
        .success()
        .stdout("");

    let exported = dir.path().join("export.tar");
    kiln(&dir)
        .args(["export", "-o"])
        .arg(&exported)
        .arg("changer")
        .assert()
        .success();
    let names = tar_names(&fs::read(&exported).unwrap());
    for expected in [
        "hello",
        "newdir/sub/f",
        "home/new",
        "etc/passwd",
        "bin/busybox",
    ] {
        assert!(
            names.iter().any(|name| name == expected),
            "{expected} missing: {names:?}"
        );
    }
    for gone in ["etc/group", "home/app/", "home/app/profile"] {
        assert!(!names.iter().any(|name| name == gone), "{gone} exported");
    }
    let streamed = kiln(&dir).args(["export", "changer"]).output().unwrap();
    assert!(streamed.status.success());
    assert_eq!(streamed.stdout, fs::read(&exported).unwrap());
}

#[test]
fn commit_without_changes_adds_an_empty_history_entry() {
    let Some(dir) = busybox_store() else { return };
    run(&dir, "nothing", "true");
    kiln(&dir)
        .args(["diff", "nothing"])
        .assert()
        .success()
        .stdout("");
    kiln(&dir)
        .args(["commit", "-m", "empty", "nothing", "same:1"])
        .assert()
        .success();
    kiln(&dir)
        .args(["inspect", "--format", "{{len .RootFS.Layers}}", "same:1"])
        .assert()
        .success()
        .stdout("1\n");
}

#[test]
fn cp_copies_files_and_directories_out_of_a_container() {
    let Some(dir) = busybox_store() else { return };
    run(&dir, "source", CHANGES);
    let host = tempfile::tempdir().unwrap();
    let out = host.path();
    let cp = |source: &str, destination: &Path| {
        kiln(&dir)
            .arg("cp")
            .arg(source)
            .arg(destination)
            .assert()
            .success();
    };
    cp("source:/hello", out);
    assert_eq!(fs::read_to_string(out.join("hello")).unwrap(), "hello\n");
    cp("source:/etc/passwd", &out.join("passwd.copy"));
    assert!(
        fs::read_to_string(out.join("passwd.copy"))
            .unwrap()
            .ends_with("extra:x:2:2::/:/bin/sh\n")
    );
    cp("source:/newdir", out);
    assert_eq!(fs::read_to_string(out.join("newdir/sub/f")).unwrap(), "f\n");
    cp("source:/newdir", &out.join("renamed"));
    assert!(out.join("renamed/sub/f").is_file());
    fs::create_dir(out.join("contents")).unwrap();
    cp("source:/newdir/.", &out.join("contents"));
    assert!(out.join("contents/sub/f").is_file());
    assert!(!out.join("contents/newdir").exists());

    let archive = kiln(&dir)
        .args(["cp", "source:/newdir", "-"])
        .output()
        .unwrap();
    assert!(archive.status.success());
    assert_eq!(
        tar_names(&archive.stdout),
        ["newdir/", "newdir/sub/", "newdir/sub/f"]
    );

    kiln(&dir)
        .args(["cp", "source:/etc/group"])
        .arg(out)
        .assert()
        .code(125)
        .stderr(predicate::str::contains(
            "could not find the file /etc/group",
        ));
    kiln(&dir)
        .args(["cp", "source:/hello", "source:/x"])
        .assert()
        .code(125)
        .stderr(predicate::str::contains(
            "copying between containers is not supported",
        ));
}

#[test]
fn cp_copies_files_directories_and_archives_into_a_container() {
    let Some(dir) = busybox_store() else { return };
    run(&dir, "target", "true");
    let host = tempfile::tempdir().unwrap();
    fs::write(host.path().join("file"), "file\n").unwrap();
    fs::create_dir_all(host.path().join("tree/sub")).unwrap();
    fs::write(host.path().join("tree/sub/leaf"), "leaf\n").unwrap();
    std::os::unix::fs::chown(host.path().join("file"), Some(1000), Some(1000)).unwrap();
    kiln(&dir)
        .arg("cp")
        .arg(host.path().join("file"))
        .arg("target:/home/app/")
        .assert()
        .success();
    kiln(&dir)
        .arg("cp")
        .arg("-a")
        .arg(host.path().join("file"))
        .arg("target:/home/kept")
        .assert()
        .success();
    kiln(&dir)
        .arg("cp")
        .arg(host.path().join("tree"))
        .arg("target:/opt")
        .assert()
        .success();
    let tar = Process::new("tar")
        .arg("-C")
        .arg(host.path())
        .args(["-cf", "-", "tree"])
        .output()
        .unwrap();
    kiln(&dir)
        .args(["cp", "-", "target:/home"])
        .write_stdin(tar.stdout)
        .assert()
        .success();
    kiln(&dir)
        .args(["diff", "target"])
        .assert()
        .success()
        .stdout(
            "C /home\n\
         C /home/app\n\
         A /home/app/file\n\
         A /home/kept\n\
         A /home/tree\n\
         A /home/tree/sub\n\
         A /home/tree/sub/leaf\n\
         A /opt\n\
         A /opt/sub\n\
         A /opt/sub/leaf\n",
        );
    kiln(&dir)
        .args(["commit", "target", "copied:1"])
        .assert()
        .success();
    kiln(&dir)
        .args([
            "run",
            "--rm",
            "copied:1",
            "sh",
            "-c",
            "stat -c '%u:%g %n' /home/app/file /home/kept; cat /opt/sub/leaf /home/tree/sub/leaf /home/app/profile",
        ])
        .assert()
        .success()
        .stdout("0:0 /home/app/file\n1000:1000 /home/kept\nleaf\nleaf\nexport A=1\n");
    kiln(&dir)
        .arg("cp")
        .arg(host.path().join("tree"))
        .arg("target:/home/app/profile")
        .assert()
        .code(125)
        .stderr(predicate::str::contains(
            "cannot copy a directory to a file",
        ));
}

#[test]
fn cp_through_container_symlinks_stays_inside_the_container() {
    let Some(dir) = busybox_store() else { return };
    run(
        &dir,
        "links",
        "ln -s /etc /link; mkdir /tmp; ln -s ../../../../../../../../tmp /escape",
    );
    let host = tempfile::tempdir().unwrap();
    // The container's /etc/passwd, not the host's.
    kiln(&dir)
        .args(["cp", "links:/link/passwd"])
        .arg(host.path().join("passwd"))
        .assert()
        .success();
    assert_eq!(
        fs::read_to_string(host.path().join("passwd")).unwrap(),
        PASSWD
    );
    kiln(&dir)
        .args(["cp", "links:/escape/../link/passwd", "-"])
        .assert()
        .success();

    let unique = format!("kiln-cp-test-{}", std::process::id());
    let source = host.path().join(&unique);
    fs::write(&source, "inside\n").unwrap();
    kiln(&dir)
        .arg("cp")
        .arg(&source)
        .arg("links:/link/")
        .assert()
        .success();
    kiln(&dir)
        .arg("cp")
        .arg(&source)
        .arg(format!("links:/escape/{unique}"))
        .assert()
        .success();
    assert!(!Path::new("/etc").join(&unique).exists());
    assert!(!Path::new("/tmp").join(&unique).exists());
    kiln(&dir)
        .args(["diff", "links"])
        .assert()
        .success()
        .stdout(format!(
            "A /escape\nC /etc\nA /etc/{unique}\nA /link\nA /tmp\nA /tmp/{unique}\n"
        ));
}

/// A one-entry ustar archive with a raw name (tar refuses to write some of these).
fn raw_tar(name: &[u8], kind: u8, link: &[u8], content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name);
    header[100..107].copy_from_slice(b"0000644");
    header[108..115].copy_from_slice(b"0000000");
    header[116..123].copy_from_slice(b"0000000");
    header[124..135].copy_from_slice(format!("{:011o}", content.len()).as_bytes());
    header[136..147].copy_from_slice(b"00000000000");
    header[156] = kind;
    header[157..157 + link.len()].copy_from_slice(link);
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&byte| u32::from(byte)).sum();
    header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(content);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar
}

#[test]
fn a_hostile_archive_into_a_container_is_refused_or_confined() {
    let Some(dir) = busybox_store() else { return };
    run(&dir, "victim", "true");
    let unique = format!("kiln-hostile-{}", std::process::id());
    let mut escape = raw_tar(
        format!("../../../../../../tmp/{unique}").as_bytes(),
        b'0',
        b"",
        b"x",
    );
    escape.extend([0; 1024]);
    kiln(&dir)
        .args(["cp", "-", "victim:/home"])
        .write_stdin(escape)
        .assert()
        .code(125)
        .stderr(predicate::str::contains("unsafe name"));
    assert!(!Path::new("/tmp").join(&unique).exists());

    let mut tar = raw_tar(b"root", b'2', b"/", b"");
    tar.extend(raw_tar(
        format!("root/etc/{unique}").as_bytes(),
        b'0',
        b"",
        b"pwned",
    ));
    tar.extend([0; 1024]);
    kiln(&dir)
        .args(["cp", "-", "victim:/home"])
        .write_stdin(tar)
        .assert()
        .success();
    assert!(!Path::new("/etc").join(&unique).exists());
    kiln(&dir)
        .args(["diff", "victim"])
        .assert()
        .success()
        .stdout(format!(
            "C /home\nA /home/etc\nA /home/etc/{unique}\nA /home/root\n"
        ));
}

#[test]
fn commit_of_a_running_container_pauses_it_only_while_reading_as_docker_does() {
    let Some(dir) = busybox_store() else { return };
    kiln(&dir)
        .args([
            "run",
            "-d",
            "--name",
            "busy",
            "busybox",
            "sh",
            "-c",
            "echo ready > /state; sleep 1000",
        ])
        .assert()
        .success();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !stdout(kiln(&dir).args(["diff", "busy"])).contains("A /state") {
        assert!(
            std::time::Instant::now() < deadline,
            "the container did not write"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = || stdout(kiln(&dir).args(["inspect", "-f", "{{.State.Status}}", "busy"]));
    // Docker's default is --pause=true: frozen while the upper dir is read, then thawed.
    kiln(&dir)
        .args(["commit", "busy", "snap:1"])
        .assert()
        .success();
    assert_eq!(status(), "running\n");
    kiln(&dir)
        .args(["run", "--rm", "snap:1", "cat", "/state"])
        .assert()
        .success()
        .stdout("ready\n");
    for flag in ["-p=false", "--pause=false", "-p", "--pause=true"] {
        kiln(&dir).args(["commit", flag, "busy"]).assert().success();
        assert_eq!(status(), "running\n", "{flag}");
    }
    // One paused by hand stays paused.
    kiln(&dir).args(["pause", "busy"]).assert().success();
    kiln(&dir).args(["commit", "busy"]).assert().success();
    assert_eq!(status(), "paused\n");
    kiln(&dir).args(["rm", "-f", "busy"]).assert().success();
}

#[test]
fn cp_into_a_running_container_reaches_its_live_root_and_volumes_and_stays_inside() {
    let Some(dir) = busybox_store() else { return };
    let host = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::create_dir(host.path().join("tree")).unwrap();
    fs::write(host.path().join("tree/file"), "in tree\n").unwrap();
    fs::write(host.path().join("note"), "note\n").unwrap();
    // A symlink inside the container naming a host directory: it must mean the container's
    // path of that name, never the host's.
    let escape = format!(
        "mkdir -p /tmp {0}; ln -s {0} /escape",
        outside.path().display()
    );
    kiln(&dir)
        .args(["volume", "create", "shared"])
        .assert()
        .success();
    kiln(&dir)
        .args([
            "run",
            "-d",
            "--name",
            "live",
            "-v",
            "shared:/data",
            "busybox",
            "sh",
            "-c",
            &format!("{escape}; sleep 1000"),
        ])
        .assert()
        .success();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !stdout(kiln(&dir).args(["diff", "live"])).contains("A /escape") {
        assert!(
            std::time::Instant::now() < deadline,
            "the container did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let cat = |path: &str| stdout(kiln(&dir).args(["exec", "live", "cat", path]));
    kiln(&dir)
        .args([
            "cp",
            &host.path().join("note").display().to_string(),
            "live:/tmp/",
        ])
        .assert()
        .success();
    assert_eq!(
        cat("/tmp/note"),
        "note\n",
        "seen by the running container at once"
    );
    kiln(&dir)
        .args([
            "cp",
            &host.path().join("tree").display().to_string(),
            "live:/data/",
        ])
        .assert()
        .success();
    assert_eq!(cat("/data/tree/file"), "in tree\n");
    // And out again, volume included, while it runs.
    let back = tempfile::tempdir().unwrap();
    kiln(&dir)
        .args(["cp", "live:/data/tree", &back.path().display().to_string()])
        .assert()
        .success();
    assert_eq!(
        fs::read_to_string(back.path().join("tree/file")).unwrap(),
        "in tree\n"
    );
    let volume = stdout(kiln(&dir).args(["volume", "inspect", "-f", "{{.Mountpoint}}", "shared"]));
    assert_eq!(
        fs::read_to_string(Path::new(volume.trim()).join("tree/file")).unwrap(),
        "in tree\n",
        "written into the volume"
    );
    let tar = Process::new("tar")
        .arg("-C")
        .arg(host.path().join("tree"))
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    kiln(&dir)
        .args(["cp", "-", "live:/escape"])
        .write_stdin(tar.stdout)
        .assert()
        .success();
    kiln(&dir)
        .args([
            "cp",
            &host.path().join("note").display().to_string(),
            "live:/escape/note",
        ])
        .assert()
        .success();
    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing written on the host through the container's symlink"
    );
    assert_eq!(cat(&format!("{}/note", outside.path().display())), "note\n");
    assert_eq!(
        cat(&format!("{}/file", outside.path().display())),
        "in tree\n"
    );
    kiln(&dir)
        .args([
            "cp",
            &host.path().join("note").display().to_string(),
            "live:/missing/note",
        ])
        .assert()
        .code(125);
    let container_dir = dir
        .path()
        .join("store/containers")
        .join(stdout(kiln(&dir).args(["inspect", "-f", "{{.Id}}", "live"])).trim());
    let staging: Vec<_> = fs::read_dir(&container_dir)
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("cp-"))
        .collect();
    assert!(staging.is_empty(), "staging left: {staging:?}");
    kiln(&dir).args(["rm", "-f", "live"]).assert().success();
}
