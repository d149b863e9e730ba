//! What the container CLI tests share: a store with a busybox image made from Debian's
//! `busybox-static`, and the `kiln` command pointed at it.
#![allow(clippy::print_stderr, dead_code)]

use std::fs;
use std::path::PathBuf;
use std::process::Command as Process;

use assert_cmd::Command;

/// Whether the tests run as root (euid 0): containers need it.
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .map(|line| line.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// A store with `busybox:latest` imported with the `-c` `changes`, its rootfs holding `extra`
/// files (path, content) besides busybox, `/etc/passwd` and `/etc/group` (root and `app`
/// 1000:1000); or None, with the reason printed, when the test cannot run here.
pub fn busybox_store(changes: &[&str], extra: &[(&str, &str)]) -> Option<tempfile::TempDir> {
    if !is_root() {
        eprintln!("skipped: containers need root (euid 0)");
        return None;
    }
    let busybox = PathBuf::from("/bin/busybox");
    if !busybox.is_file() {
        eprintln!("skipped: /bin/busybox is missing (apt-get install busybox-static)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::copy(&busybox, rootfs.join("bin/busybox")).unwrap();
    let list = Process::new(&busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout)
        .unwrap()
        .lines()
        .filter(|applet| *applet != "busybox")
    {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(rootfs.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    for (path, content) in extra {
        let path = rootfs.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
    let tar = Process::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let mut import = kiln(&dir);
    import.arg("import");
    for change in changes {
        import.args(["-c", change]);
    }
    import
        .args(["-", "busybox:latest"])
        .write_stdin(tar.stdout)
        .assert()
        .success();
    Some(dir)
}

/// `kiln --root <dir>/store`.
pub fn kiln(dir: &tempfile::TempDir) -> Command {
    let mut command = Command::cargo_bin("kiln").unwrap();
    command.arg("--root").arg(dir.path().join("store"));
    command
}

/// Runs kiln with a new pty (size 31x97) as its stdin, stdout and stderr; returns everything
/// written to the terminal and kiln's exit status.
pub fn run_on_pty(dir: &tempfile::TempDir, args: &[&str], input: &[&[u8]]) -> (String, i32) {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    let (master, slave) = kiln_runtime::pty::open_pair().unwrap();
    kiln_runtime::pty::set_window_size(
        master.as_fd(),
        kiln_runtime::pty::WindowSize { rows: 31, cols: 97 },
    )
    .unwrap();
    let mut command = Process::new(assert_cmd::cargo::cargo_bin("kiln"));
    command
        .arg("--root")
        .arg(dir.path().join("store"))
        .args(args)
        .stdin(std::process::Stdio::from(slave.try_clone().unwrap()))
        .stdout(std::process::Stdio::from(slave.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(slave));
    let mut child = command.spawn().unwrap();
    drop(command);
    let mut writer = fs::File::from(master.try_clone().unwrap());
    let reader = std::thread::spawn(move || {
        let mut master = fs::File::from(master);
        let mut bytes = Vec::new();
        let mut buffer = [0u8; 4096];
        // EIO once kiln (the last user of the slave) is gone.
        while let Ok(count) = master.read(&mut buffer) {
            if count == 0 {
                break;
            }
            bytes.extend_from_slice(&buffer[..count]);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    });
    for chunk in input {
        std::thread::sleep(std::time::Duration::from_millis(500));
        writer.write_all(chunk).unwrap();
    }
    let status = child.wait().unwrap();
    drop(writer);
    (reader.join().unwrap(), status.code().unwrap_or(-1))
}
