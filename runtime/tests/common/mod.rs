//! Shared fixtures for the sandbox tests: a busybox root filesystem in a temp dir, used as
//! the only overlay lower dir, with fresh upper/work/container dirs per test.
//!
//! Everything lives under one `TempDir`; nothing outside it is written.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the fixture"
)]

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_runtime::{Exit, Io, Network, Outcome, RuntimeError, Spec};

pub const BUSYBOX: &str = "/bin/busybox";
pub const INIT: &str = env!("CARGO_BIN_EXE_kiln-runtime-test-init");
pub const INIT_ARGS: &[&str] = &["__kiln-init"];

/// Why the sandbox tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: namespaces, mounts and pivot_root need root".into());
    }
    if !Path::new(BUSYBOX).is_file() {
        return Some(format!("{BUSYBOX} missing: apt-get install busybox-static"));
    }
    None
}

/// Returns a fixture, or `None` after printing why the test is skipped.
#[allow(clippy::print_stderr, reason = "tests report why they skip")]
pub fn fixture() -> Option<Fixture> {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return None;
    }
    Some(Fixture::new())
}

/// A temp dir with `lower/` (busybox rootfs), `upper/`, `work/`, `container/`, `host/`.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub spec: Spec,
}

pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
    nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
    app:x:1000:1000:app:/home/app:/bin/sh\n";
pub const GROUP: &str = "root:x:0:\nnogroup:x:65534:\napp:x:1000:\nextra:x:2000:app\n";

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let lower = root.join("lower");
        build_busybox_rootfs(&lower);
        for sub in ["upper", "work", "container", "host"] {
            std::fs::create_dir(root.join(sub)).unwrap();
        }
        let spec = Spec {
            id: unique_id(),
            container_dir: root.join("container"),
            lower_dirs: vec![lower],
            upper_dir: root.join("upper"),
            work_dir: root.join("work"),
            args: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            user: None,
            hostname: "box".into(),
            network: Network::None,
            read_only: false,
            mounts: vec![],
            tmpfs: vec![],
            extra_hosts: vec![],
            dns: Default::default(),
            resources: Default::default(),
            ulimits: vec![],
            cap_add: vec![],
            cap_drop: vec![],
            privileged: false,
            seccomp: Default::default(),
            no_new_privileges: false,
            tty: false,
            console_size: None,
            init: false,
        };
        Fixture { dir, spec }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Sets the command to `sh -c SCRIPT`.
    pub fn sh(&mut self, script: &str) -> &mut Self {
        self.spec.args = vec!["sh".into(), "-c".into(), script.into()];
        self
    }

    /// Runs the spec with stdout and stderr captured in files.
    pub fn run(&self) -> RunOutput {
        run_spec(&self.spec, self.dir.path())
    }
}

/// A container id unique to this test process and call (it names the cgroup `kiln/<id>`).
pub fn unique_id() -> String {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("kiln-test-{}-{n}", std::process::id())
}

pub struct RunOutput {
    pub result: Result<Outcome, RuntimeError>,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    /// The exit status; panics (with the output) on a runtime error.
    pub fn exit(&self) -> Exit {
        match &self.result {
            Ok(outcome) => outcome.exit,
            Err(error) => panic!(
                "run failed: {error}\nstdout: {}\nstderr: {}",
                self.stdout, self.stderr
            ),
        }
    }

    /// Asserts exit 0 and returns stdout.
    pub fn success(self) -> String {
        match self.result {
            Ok(Outcome {
                exit: Exit::Code(0),
                ..
            }) => self.stdout,
            other => panic!(
                "expected exit 0, got {other:?}\nstdout: {}\nstderr: {}",
                self.stdout, self.stderr
            ),
        }
    }
}

static OUTPUT_COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn run_spec(spec: &Spec, scratch: &Path) -> RunOutput {
    let n = OUTPUT_COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let stdout_path = scratch.join(format!("stdout-{n}"));
    let stderr_path = scratch.join(format!("stderr-{n}"));
    let io = Io {
        stdin: std::process::Stdio::null(),
        stdout: File::create(&stdout_path).unwrap().into(),
        stderr: File::create(&stderr_path).unwrap().into(),
    };
    let result = kiln_runtime::run(spec, Path::new(INIT), INIT_ARGS, io);
    RunOutput {
        result,
        stdout: std::fs::read_to_string(&stdout_path).unwrap(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap(),
    }
}

/// `bin/busybox` copied from the host, every applet as a symlink to it, passwd and group.
pub fn build_busybox_rootfs(rootfs: &Path) {
    for dir in ["bin", "etc", "tmp", "root", "home/app"] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), PASSWD).unwrap();
    std::fs::write(rootfs.join("etc/group"), GROUP).unwrap();
}

/// The host pid of the container's PID 1 whose command line contains `token`.
pub fn find_container_pid1(token: &str, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if !String::from_utf8_lossy(&cmdline).contains(token) {
                continue;
            }
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            let is_pid1 = status
                .lines()
                .find(|line| line.starts_with("NSpid:"))
                .is_some_and(|line| {
                    let ids: Vec<&str> = line.split_whitespace().skip(1).collect();
                    ids.len() == 2 && ids[1] == "1"
                });
            if is_pid1 {
                return Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Waits until `path` exists.
pub fn wait_for_file(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The parent pid of `pid`, from /proc.
pub fn parent_of(pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
