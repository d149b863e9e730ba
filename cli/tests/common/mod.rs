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

/// The build fixtures under `testdata/contexts/<case>/`, shared by `fixtures.rs` (kiln against
/// the expectations) and `differential.rs` (kiln against Docker).
///
/// A case directory holds `context/` (the build context, Dockerfile included) and
/// `expected.json`:
///
/// ```json
/// {
///   "description": "what the case pins, citing the Docker behaviour",
///   "dockerfile": "Dockerfile.other",        // -f, relative to context/ (optional)
///   "build_args": {"NAME": "value"},         // --build-arg NAME=value (optional)
///   "target": "stage",                       // --target (optional)
///   "secrets": {"id": "file beside expected.json"},  // --secret id=ID,src=FILE (optional)
///   "setup": {                               // applied to the temp copy of context/ (optional):
///     "chmod": {"path": "0600"},             //   what git cannot keep: modes,
///     "mkdir": ["empty/dir"],                //   empty directories,
///     "symlink": {"link": "target"},         //   symbolic links,
///     "tar": {"a.tar.gz": "dir beside expected.json"}  // archives (by extension: .tar, .tar.gz, .tar.bz2, .tar.xz, .tar.zst)
///   },
///   "config": {"Env": [...], "Cmd": null},   // image config members; null: absent
///   "files": {"/path": {"type": "file|dir|symlink", "mode": "0644", "uid": 0, "gid": 0,
///             "content": "text", "target": "link target"}},   // uid/gid default 0
///   "absent": ["/path"],
///   "error": "text of kiln's error",         // the build must fail (Docker too), saying this
///   "kiln_only": "why Docker 20.10 cannot build it (heredocs, # syntax=, ...)",
///   "known_failure": "the kiln bug this case exposes (reported, not failed)"
/// }
/// ```
///
/// The fixtures name their base image `kbase`: busybox from `scripts/busybox-rootfs.sh`.
pub mod contexts {
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};
    use std::process::Command as Process;

    use serde_json::Value;

    /// One fixture directory and its parsed `expected.json`.
    pub struct Case {
        pub name: String,
        pub dir: PathBuf,
        pub spec: Value,
    }

    /// The repository's `testdata/contexts`.
    pub fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/contexts")
    }

    /// Every case, sorted by name; `KILN_FIXTURE=NAME[,NAME]` keeps only those.
    pub fn cases() -> Vec<Case> {
        let only: Option<Vec<String>> = std::env::var("KILN_FIXTURE")
            .ok()
            .map(|names| names.split(',').map(str::to_string).collect());
        let mut cases = Vec::new();
        for entry in fs::read_dir(root()).expect("testdata/contexts") {
            let dir = entry.unwrap().path();
            if !dir.is_dir() {
                continue; // README.md
            }
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            if only.as_ref().is_some_and(|only| !only.contains(&name)) {
                continue;
            }
            let text = fs::read_to_string(dir.join("expected.json"))
                .unwrap_or_else(|error| panic!("{name}/expected.json: {error}"));
            let spec: Value = serde_json::from_str(&text)
                .unwrap_or_else(|error| panic!("{name}/expected.json: {error}"));
            cases.push(Case { name, dir, spec });
        }
        cases.sort_by(|a, b| a.name.cmp(&b.name));
        cases
    }

    /// The busybox base image's root file system tar (`scripts/busybox-rootfs.sh`), written to
    /// `into`; None, with the reason printed, when busybox-static is missing.
    pub fn base_rootfs(into: &Path) -> Option<PathBuf> {
        if !Path::new("/bin/busybox").is_file() {
            eprintln!("skipped: /bin/busybox is missing (apt-get install busybox-static)");
            return None;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/busybox-rootfs.sh");
        let output = Process::new(script).output().unwrap();
        assert!(
            output.status.success(),
            "busybox-rootfs.sh: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let tar = into.join("kbase.tar");
        fs::write(&tar, output.stdout).unwrap();
        Some(tar)
    }

    /// The `kiln` binary copied into `dir` and a store in `dir/store`: other builds sharing the
    /// target directory may replace `target/debug/kiln` while a long fixture run uses it.
    pub struct Kiln {
        binary: PathBuf,
        root: PathBuf,
    }

    impl Kiln {
        pub fn new(dir: &Path) -> Kiln {
            let binary = dir.join("kiln");
            fs::copy(assert_cmd::cargo::cargo_bin("kiln"), &binary).unwrap();
            Kiln {
                binary,
                root: dir.join("store"),
            }
        }

        /// `kiln --root DIR/store`.
        pub fn command(&self) -> Process {
            let mut command = Process::new(&self.binary);
            command.arg("--root").arg(&self.root);
            command
        }
    }

    impl Case {
        pub fn text(&self, key: &str) -> Option<&str> {
            self.spec.get(key).and_then(Value::as_str)
        }

        /// Copies `context/` to `into/<name>/context` (a build must never write into the
        /// repository) and applies `setup`; returns the copy.
        pub fn prepare(&self, into: &Path) -> PathBuf {
            let context = into.join(&self.name).join("context");
            fs::create_dir_all(&context).unwrap();
            let status = Process::new("cp")
                .arg("-a")
                .arg(self.dir.join("context/."))
                .arg(&context)
                .status()
                .unwrap();
            assert!(status.success(), "{}: copying the context", self.name);
            let setup = self.spec.get("setup");
            let members = |key: &str| -> Vec<(String, Value)> {
                setup
                    .and_then(|setup| setup.get(key))
                    .and_then(Value::as_object)
                    .map(|members| {
                        members
                            .iter()
                            .map(|(key, value)| (key.clone(), value.clone()))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            if let Some(dirs) = setup
                .and_then(|setup| setup.get("mkdir"))
                .and_then(Value::as_array)
            {
                for dir in dirs {
                    fs::create_dir_all(context.join(dir.as_str().unwrap())).unwrap();
                }
            }
            for (link, target) in members("symlink") {
                let link = context.join(link);
                fs::create_dir_all(link.parent().unwrap()).unwrap();
                std::os::unix::fs::symlink(target.as_str().unwrap(), link).unwrap();
            }
            for (archive, source) in members("tar") {
                let compression = match archive.rsplit('.').next() {
                    Some("gz") => "--gzip",
                    Some("zst") => "--zstd",
                    Some("bz2") => "--bzip2",
                    Some("xz") => "--xz",
                    _ => "--no-auto-compress",
                };
                let status = Process::new("tar")
                    .args(["--sort=name", "--mtime=@0", "--owner=0", "--group=0"])
                    .args(["--numeric-owner", compression, "-C"])
                    .arg(self.dir.join(source.as_str().unwrap()))
                    .arg("-cf")
                    .arg(context.join(&archive))
                    .arg(".")
                    .status()
                    .unwrap();
                assert!(status.success(), "{}: making {archive}", self.name);
            }
            for (path, mode) in members("chmod") {
                let mode = u32::from_str_radix(mode.as_str().unwrap(), 8).unwrap();
                fs::set_permissions(context.join(path), fs::Permissions::from_mode(mode)).unwrap();
            }
            context
        }

        /// The `build` arguments besides the context: -f, --build-arg, --target, --secret.
        pub fn build_flags(&self, context: &Path) -> Vec<String> {
            let mut flags = Vec::new();
            if let Some(file) = self.text("dockerfile") {
                flags.push("-f".to_string());
                flags.push(context.join(file).to_string_lossy().into_owned());
            }
            if let Some(args) = self.spec.get("build_args").and_then(Value::as_object) {
                for (name, value) in args {
                    flags.push("--build-arg".to_string());
                    flags.push(format!("{name}={}", value.as_str().unwrap()));
                }
            }
            if let Some(target) = self.text("target") {
                flags.push("--target".to_string());
                flags.push(target.to_string());
            }
            if let Some(secrets) = self.spec.get("secrets").and_then(Value::as_object) {
                for (id, file) in secrets {
                    flags.push("--secret".to_string());
                    let src = self.dir.join(file.as_str().unwrap());
                    flags.push(format!("id={id},src={}", src.display()));
                }
            }
            flags
        }

        /// What differs between `expected.json` and the built image: its `config` (the JSON of
        /// `inspect -f '{{json .Config}}'`) and its file system (exported to `rootfs`).
        pub fn problems(&self, config: &Value, rootfs: &Path) -> Vec<String> {
            let mut problems = Vec::new();
            if let Some(expected) = self.spec.get("config").and_then(Value::as_object) {
                for (key, want) in expected {
                    let got = normalise(config.get(key).cloned().unwrap_or(Value::Null));
                    if normalise(want.clone()) != got {
                        problems.push(format!("config {key}: expected {want}, got {got}"));
                    }
                }
            }
            if let Some(files) = self.spec.get("files").and_then(Value::as_object) {
                for (path, want) in files {
                    problems.extend(check_entry(rootfs, path, want));
                }
            }
            if let Some(absent) = self.spec.get("absent").and_then(Value::as_array) {
                for path in absent {
                    let path = path.as_str().unwrap();
                    if fs::symlink_metadata(inside(rootfs, path)).is_ok() {
                        problems.push(format!("{path}: expected absent, but it exists"));
                    }
                }
            }
            problems
        }
    }

    /// A config member with Docker's zero values (`""`, `[]`, `{}`, absent) all as `null`:
    /// Docker's image config omits them (Go's `omitempty`) and `docker inspect` shows some as
    /// `null`, some as `""`.
    pub fn normalise(value: Value) -> Value {
        let zero = match &value {
            Value::String(text) => text.is_empty(),
            Value::Array(values) => values.is_empty(),
            Value::Object(members) => members.is_empty(),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        };
        if zero { Value::Null } else { value }
    }

    fn inside(rootfs: &Path, path: &str) -> PathBuf {
        rootfs.join(path.trim_start_matches('/'))
    }

    fn check_entry(rootfs: &Path, path: &str, want: &Value) -> Vec<String> {
        let full = inside(rootfs, path);
        let Ok(metadata) = fs::symlink_metadata(&full) else {
            return vec![format!("{path}: missing")];
        };
        let mut problems = Vec::new();
        let kind = kind(&metadata);
        if let Some(expected) = want.get("type").and_then(Value::as_str)
            && expected != kind
        {
            problems.push(format!("{path}: expected a {expected}, found a {kind}"));
        }
        if let Some(mode) = want.get("mode").and_then(Value::as_str) {
            let expected = u32::from_str_radix(mode, 8).unwrap();
            let actual = metadata.mode() & 0o7777;
            if expected != actual {
                problems.push(format!(
                    "{path}: mode {actual:04o}, expected {expected:04o}"
                ));
            }
        }
        for (key, actual) in [("uid", metadata.uid()), ("gid", metadata.gid())] {
            let expected = want.get(key).and_then(Value::as_u64).unwrap_or(0);
            if u64::from(actual) != expected {
                problems.push(format!("{path}: {key} {actual}, expected {expected}"));
            }
        }
        if let Some(content) = want.get("content").and_then(Value::as_str) {
            match fs::read(&full) {
                Ok(bytes) if bytes == content.as_bytes() => {}
                Ok(bytes) => problems.push(format!(
                    "{path}: content {:?}, expected {content:?}",
                    String::from_utf8_lossy(&bytes)
                )),
                Err(error) => problems.push(format!("{path}: unreadable: {error}")),
            }
        }
        if let Some(target) = want.get("target").and_then(Value::as_str) {
            let actual = fs::read_link(&full).map(|link| link.to_string_lossy().into_owned());
            if actual.as_deref().ok() != Some(target) {
                problems.push(format!(
                    "{path}: link target {actual:?}, expected {target:?}"
                ));
            }
        }
        problems
    }

    fn kind(metadata: &fs::Metadata) -> &'static str {
        let kind = metadata.file_type();
        if kind.is_symlink() {
            "symlink"
        } else if kind.is_dir() {
            "dir"
        } else if kind.is_file() {
            "file"
        } else {
            "special"
        }
    }

    /// A file system tree, one line per path (relative, without the leading `/`): type, mode
    /// (with setuid/setgid/sticky), owner, and a file's size and content digest or a link's
    /// target. Times are left out: they legitimately differ between two builds.
    pub fn tree(root: &Path) -> BTreeMap<String, String> {
        let mut lines = BTreeMap::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let metadata = fs::symlink_metadata(&path).unwrap();
                let mut line = format!(
                    "{} {:04o} {}:{}",
                    kind(&metadata),
                    metadata.mode() & 0o7777,
                    metadata.uid(),
                    metadata.gid()
                );
                if metadata.file_type().is_symlink() {
                    line.push_str(&format!(" -> {}", fs::read_link(&path).unwrap().display()));
                } else if metadata.is_file() {
                    let bytes = fs::read(&path).unwrap();
                    line.push_str(&format!(
                        " {} {}",
                        bytes.len(),
                        kiln_cache::digest::Digest::of(&bytes).short()
                    ));
                } else if metadata.is_dir() {
                    pending.push(path);
                }
                lines.insert(name, line);
            }
        }
        lines
    }
}

/// A running `docker-registry serve` (Debian's distribution registry) on a free loopback port,
/// storing in its own temp dir, stopped (by its own pid) when dropped.
pub struct LoopbackRegistry {
    child: std::process::Child,
    /// `127.0.0.1:PORT`.
    pub domain: String,
    _dir: tempfile::TempDir,
}

impl LoopbackRegistry {
    /// Starts a registry without authentication; None, with the reason printed, when
    /// `docker-registry` is missing.
    pub fn start() -> Option<LoopbackRegistry> {
        Self::start_with(None)
    }

    /// Starts a registry; with `htpasswd` (`USER:BCRYPT` lines) it asks for Basic auth.
    pub fn start_with(htpasswd: Option<&str>) -> Option<LoopbackRegistry> {
        const BINARY: &str = "/usr/bin/docker-registry";
        if !std::path::Path::new(BINARY).is_file() {
            eprintln!("skipped: {BINARY} is missing (apt-get install docker-registry)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // A free port can be taken by another test's registry between our probe and its
        // bind: then ours exits, and another port is tried. Ours is up once its log says so.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut config = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            );
            if let Some(htpasswd) = htpasswd {
                let path = dir.path().join("htpasswd");
                fs::write(&path, htpasswd).unwrap();
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                    path.display()
                ));
            }
            let config_path = dir.path().join("config.yml");
            fs::write(&config_path, config).unwrap();
            let log_path = dir.path().join("registry.log");
            let mut child = Process::new(BINARY)
                .arg("serve")
                .arg(&config_path)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(fs::File::create(&log_path).unwrap())
                .spawn()
                .unwrap();
            let listening = format!("listening on 127.0.0.1:{port}");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                if fs::read_to_string(&log_path).is_ok_and(|log| log.contains(&listening)) {
                    return Some(LoopbackRegistry {
                        child,
                        domain: format!("127.0.0.1:{port}"),
                        _dir: dir,
                    });
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("docker-registry did not start");
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        panic!("docker-registry did not start on any of 5 free ports");
    }
}

impl Drop for LoopbackRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Like [`run_on_pty`], with no input, a terminal of `rows` x `cols`, and `DOCKER_CONFIG` set
/// to `dir/docker` (never the user's): returns everything kiln wrote and its exit status.
pub fn run_on_sized_pty(
    dir: &std::path::Path,
    args: &[&str],
    rows: u16,
    cols: u16,
) -> (String, i32) {
    use std::io::Read;
    use std::os::fd::AsFd;
    let (master, slave) = kiln_runtime::pty::open_pair().unwrap();
    kiln_runtime::pty::set_window_size(
        master.as_fd(),
        kiln_runtime::pty::WindowSize { rows, cols },
    )
    .unwrap();
    let mut command = Process::new(assert_cmd::cargo::cargo_bin("kiln"));
    command
        .arg("--root")
        .arg(dir.join("store"))
        .args(args)
        .env("DOCKER_CONFIG", dir.join("docker"))
        .stdin(std::process::Stdio::from(slave.try_clone().unwrap()))
        .stdout(std::process::Stdio::from(slave.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(slave));
    let mut child = command.spawn().unwrap();
    drop(command);
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
    let status = child.wait().unwrap();
    (reader.join().unwrap(), status.code().unwrap_or(-1))
}
