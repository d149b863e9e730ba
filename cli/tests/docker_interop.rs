//! `kiln save` / `kiln load` against a real Docker engine (`/usr/bin/docker`, 20.10 in the
//! reference setup): Docker's archives load into kiln and kiln's archives load into Docker, with
//! the same image IDs, the same diff IDs and the same file systems.
//!
//! Images are made without a network: a busybox root file system imported with `docker import`,
//! then `docker build` on top of it. Every test names its images after its process and itself,
//! and removes them when done.
//!
//! Each test prints why and returns early when no Docker engine answers, when not root (it mounts
//! kiln's snapshots with overlayfs and extracts tars with their owners), or when busybox-static is
//! not installed: the project's CI has none of them.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use assert_cmd::Command;
use kiln_cache::digest::Digest;

const DOCKER: &str = "/usr/bin/docker";

/// Why these tests cannot run here, if they cannot.
fn unavailable() -> Option<&'static str> {
    let root = Process::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0");
    if !root {
        return Some("not root");
    }
    let engine = Process::new(DOCKER)
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !engine {
        return Some("no Docker engine answers `/usr/bin/docker info`");
    }
    if !Path::new("/bin/busybox").is_file() {
        return Some("/bin/busybox (busybox-static) is not installed");
    }
    None
}

macro_rules! require_docker {
    () => {
        if let Some(reason) = unavailable() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

/// Runs a command, asserts success, returns stdout.
fn run(command: &mut Process) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn docker(args: &[&str]) -> String {
    run(Process::new(DOCKER).args(args).env("DOCKER_BUILDKIT", "1"))
}

/// Which of Docker 20.10's builders makes an image. Their layers have the same shape (the
/// overlay2 graph driver's diff); they differ in what `docker rmi` leaves behind.
#[derive(Debug, Clone, Copy)]
enum Builder {
    /// The reference builder. Its cache keeps the layers of an image after `docker rmi`.
    BuildKit,
    /// The classic builder: `docker rmi` deletes the image's intermediate images and so its
    /// layers, and a later `docker load` has to unpack every layer blob it is given.
    Classic,
}

/// Docker images to remove when the test ends, however it ends.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        let _ = Process::new(DOCKER)
            .args(["rmi", "-f"])
            .args(&self.0)
            .output();
    }
}

/// A temporary directory, a kiln store in it, and names for Docker images unique to one test.
struct Fixture {
    dir: tempfile::TempDir,
    prefix: String,
}

impl Fixture {
    fn new(test: &str) -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            prefix: format!("kiln-interop-{}-{test}", std::process::id()),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A Docker image name of this test.
    fn name(&self, image: &str) -> String {
        format!("{}/{image}", self.prefix)
    }

    fn kiln(&self) -> Command {
        let mut command = Command::cargo_bin("kiln").unwrap();
        command.arg("--root").arg(self.path("store"));
        command
    }

    /// Runs kiln, asserts success and an empty stderr, returns stdout.
    fn kiln_stdout(&self, args: &[&str]) -> String {
        let output = self.kiln().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "kiln {args:?}: {stderr}");
        assert!(stderr.is_empty(), "kiln {args:?}: {stderr}");
        String::from_utf8(output.stdout).unwrap()
    }

    /// A busybox root file system as a tar: `/bin/busybox` with its applets as symbolic links
    /// (not `busybox` itself, which would replace the binary with a link to itself), `/etc/passwd`
    /// and `/etc/group` for root, and a sticky `/tmp`.
    fn busybox_rootfs(&self) -> PathBuf {
        let rootfs = self.path("rootfs");
        for dir in ["bin", "etc", "root", "tmp"] {
            fs::create_dir_all(rootfs.join(dir)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        let applets = run(Process::new("/bin/busybox").arg("--list"));
        for applet in applets.lines().filter(|applet| *applet != "busybox") {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
        fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        let tar = self.path("rootfs.tar");
        run(Process::new("tar")
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "-C",
            ])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        tar
    }

    /// Imports busybox into Docker as `base:1`, then builds `multi:1` on it: a deleted file, a
    /// directory deleted and made again (an opaque directory in the layer), a hard link, a
    /// symbolic link, setuid, a non-root owner and a restrictive mode. Returns both names.
    fn docker_images(&self, builder: Builder, images: &mut Images) -> (String, String) {
        let base = self.name("base:1");
        let multi = self.name("multi:1");
        images.0.extend([base.clone(), multi.clone()]);
        let rootfs = self.busybox_rootfs();
        docker(&["import", rootfs.to_str().unwrap(), &base]);
        let context = self.path("context");
        fs::create_dir_all(&context).unwrap();
        fs::write(
            context.join("Dockerfile"),
            format!(
                "FROM {base}\n\
                 RUN mkdir -p /data/keep /data/opaque && echo one > /data/gone \
                 && echo old > /data/opaque/old && echo k > /data/keep/k && chmod 0640 /data/keep/k\n\
                 RUN rm /data/gone && rm -rf /data/opaque && mkdir /data/opaque \
                 && echo new > /data/opaque/new && ln /data/keep/k /data/keep/hard \
                 && ln -s ../keep/k /data/opaque/sym && chmod 4755 /data/opaque \
                 && chown 1000:1000 /data/opaque/new\n\
                 ENV GREETING=hello\n\
                 CMD [\"sh\", \"-c\", \"cat /data/opaque/sym /data/keep/hard; ls -A /data/opaque; \
                 test ! -e /data/gone && echo gone; echo $GREETING\"]\n"
            ),
        )
        .unwrap();
        let buildkit = match builder {
            Builder::BuildKit => "1",
            Builder::Classic => "0",
        };
        run(Process::new(DOCKER)
            .args(["build", "-q", "-t", &multi])
            .arg(&context)
            .env("DOCKER_BUILDKIT", buildkit));
        (base, multi)
    }
}

/// What `multi:1`'s command prints.
const MULTI_OUTPUT: &str = "k\nk\nnew\nsym\ngone\nhello\n";

/// A JSON value without the members Docker's `inspect` shows at their zero value (`""`, `false`,
/// `null`, empty): the image config omits them (Go's `omitempty`), `docker inspect` fills them in.
fn without_zero_values(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let Value::Object(members) = value else {
        return value;
    };
    Value::Object(
        members
            .into_iter()
            .map(|(key, value)| (key, without_zero_values(value)))
            .filter(|(_, value)| match value {
                Value::Null => false,
                Value::Bool(value) => *value,
                Value::String(value) => !value.is_empty(),
                Value::Array(values) => !values.is_empty(),
                Value::Object(members) => !members.is_empty(),
                Value::Number(_) => true,
            })
            .collect(),
    )
}

/// Paths Docker's init layer adds to every container that lacks them (moby `daemon/initlayer`,
/// and `.dockerenv`): `docker export` has them although the image may not.
const DOCKER_INIT_LAYER: &[&str] = &[
    ".dockerenv",
    "dev",
    "dev/console",
    "dev/pts",
    "dev/shm",
    "etc/hostname",
    "etc/hosts",
    "etc/mtab",
    "etc/resolv.conf",
    "proc",
    "sys",
];

/// A file system tree as one line per path: type, mode (with setuid/setgid/sticky), owner, then
/// the size and content digest of a file or the target of a symbolic link; and the groups of
/// paths that are hard links to one another. Times are left out: Docker's init layer touches
/// directories.
fn tree(root: &Path) -> (BTreeMap<String, String>, Vec<Vec<String>>) {
    let mut lines = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
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
            let kind = metadata.file_type();
            let what = if kind.is_dir() {
                pending.push(path.clone());
                "dir".to_string()
            } else if kind.is_symlink() {
                format!("-> {}", fs::read_link(&path).unwrap().display())
            } else if kind.is_file() {
                if metadata.nlink() > 1 {
                    inodes
                        .entry((metadata.dev(), metadata.ino()))
                        .or_default()
                        .push(name.clone());
                }
                format!(
                    "{} {}",
                    metadata.len(),
                    Digest::of(&fs::read(&path).unwrap())
                )
            } else {
                format!("special {:x}", metadata.rdev())
            };
            lines.insert(
                name,
                format!(
                    "{:o} {}:{} {what}",
                    metadata.mode() & 0o7777,
                    metadata.uid(),
                    metadata.gid()
                ),
            );
        }
    }
    let mut links: Vec<Vec<String>> = inodes
        .into_values()
        .map(|mut group| {
            group.sort();
            group
        })
        .collect();
    links.sort();
    (lines, links)
}

/// kiln's snapshots of an image mounted read-only with overlayfs, as a container sees them.
struct Mounted(PathBuf);

impl Mounted {
    fn new(lower_dirs: &str, target: PathBuf) -> Mounted {
        fs::create_dir_all(&target).unwrap();
        run(Process::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("ro,lowerdir={lower_dirs}"))
            .arg(&target));
        Mounted(target)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Process::new("umount").arg(&self.0).status();
    }
}

/// The first bytes of every layer blob an archive's `manifest.json` names.
fn layer_magic(archive: &Path, into: &Path) -> Vec<Vec<u8>> {
    fs::create_dir_all(into).unwrap();
    run(Process::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(into));
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(into.join("manifest.json")).unwrap()).unwrap();
    manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| fs::read(into.join(layer.as_str().unwrap())).unwrap()[..2].to_vec())
        .collect()
}

#[test]
fn docker_save_then_kiln_load_and_save_then_docker_load_keeps_image_and_file_system() {
    require_docker!();
    let fixture = Fixture::new("roundtrip");
    let mut images = Images(Vec::new());
    let (_, multi) = fixture.docker_images(Builder::Classic, &mut images);
    let from_docker = fixture.path("from-docker.tar");
    docker(&["save", "-o", from_docker.to_str().unwrap(), &multi]);

    assert_eq!(
        fixture.kiln_stdout(&["load", "-i", from_docker.to_str().unwrap()]),
        format!("Loaded image: {multi}\n")
    );
    let to_docker = fixture.path("to-docker.tar");
    fixture.kiln_stdout(&["save", "-o", to_docker.to_str().unwrap(), &multi]);
    // Docker 20.10 writes its layers uncompressed; kiln load stores them as they come and saves
    // them back the same (tar, not gzip).
    assert!(
        layer_magic(&to_docker, &fixture.path("to-docker"))
            .iter()
            .all(|magic| magic != &[0x1f, 0x8b]),
        "kiln keeps the uncompressed layers it loaded"
    );

    // Docker forgets the image and its own layers (`docker load` skips a layer whose chain ID
    // it has), then loads kiln's archive of it.
    docker(&["rmi", &multi]);
    let lower = fixture.kiln_stdout(&[
        "inspect",
        "--format",
        "{{.GraphDriver.Data.LowerDir}}",
        &multi,
    ]);
    let top_chain_id = Path::new(lower.split(':').next().unwrap())
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_owned();
    let layer_db = Path::new(docker(&["info", "--format", "{{.DockerRootDir}}"]).trim())
        .join("image")
        .join(docker(&["info", "--format", "{{.Driver}}"]).trim())
        .join("layerdb/sha256")
        .join(top_chain_id);
    assert!(
        !layer_db.exists(),
        "Docker still has {}",
        layer_db.display()
    );
    assert_eq!(
        docker(&["load", "-i", to_docker.to_str().unwrap()]),
        format!("Loaded image: {multi}\n")
    );
    assert_eq!(docker(&["run", "--rm", &multi]), MULTI_OUTPUT);

    // The same image: config bytes (the ID), diff IDs, and the config Docker shows.
    for format in ["{{.Id}}", "{{json .RootFS.Layers}}"] {
        assert_eq!(
            fixture.kiln_stdout(&["inspect", "--format", format, &multi]),
            docker(&["inspect", "--format", format, &multi]),
            "{format}"
        );
    }
    let config = |text: String| -> serde_json::Value {
        without_zero_values(serde_json::from_str(&text).unwrap())
    };
    assert_eq!(
        config(fixture.kiln_stdout(&["inspect", "--format", "{{json .Config}}", &multi])),
        config(docker(&["inspect", "--format", "{{json .Config}}", &multi]))
    );

    // The file system kiln unpacked is the one Docker exports from a container of the image.
    let container = docker(&["create", &multi]);
    let container = container.trim();
    let exported = fixture.path("exported");
    fs::create_dir_all(&exported).unwrap();
    let status = Process::new("bash")
        .args(["-o", "pipefail", "-c"])
        .arg(format!(
            "{DOCKER} export {container} | tar -xp --numeric-owner -C {}",
            exported.display()
        ))
        .status()
        .unwrap();
    let _ = Process::new(DOCKER).args(["rm", container]).output();
    assert!(status.success(), "docker export");
    let mounted = Mounted::new(lower.trim(), fixture.path("mounted"));
    let (kiln_tree, kiln_links) = tree(&mounted.0);
    let (mut docker_tree, docker_links) = tree(&exported);
    docker_tree.retain(|path, _| {
        !DOCKER_INIT_LAYER.contains(&path.as_str()) || kiln_tree.contains_key(path)
    });
    let differences: Vec<String> = kiln_tree
        .keys()
        .chain(docker_tree.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|path| kiln_tree.get(*path) != docker_tree.get(*path))
        .map(|path| {
            format!(
                "{path}: kiln {:?}, docker {:?}",
                kiln_tree.get(path),
                docker_tree.get(path)
            )
        })
        .collect();
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    assert_eq!(kiln_links, docker_links);
    assert_eq!(kiln_links, [["data/keep/hard", "data/keep/k"]]);
    // The whiteouts took effect rather than showing up as files.
    assert!(!kiln_tree.contains_key("data/gone"));
    assert!(!kiln_tree.contains_key("data/opaque/old"));
    assert_eq!(kiln_tree["data/opaque"], "4755 0:0 dir");
}

#[test]
fn docker_runs_an_image_kiln_imported_and_saved() {
    require_docker!();
    let fixture = Fixture::new("imported");
    let rootfs = fixture.busybox_rootfs();
    let name = fixture.name("imported:1");
    let _images = Images(vec![name.clone()]);
    let id = fixture.kiln_stdout(&["import", rootfs.to_str().unwrap(), &name]);
    let archive = fixture.path("imported.tar");
    fixture.kiln_stdout(&["save", "-o", archive.to_str().unwrap(), &name]);

    assert_eq!(
        docker(&["load", "-i", archive.to_str().unwrap()]),
        format!("Loaded image: {name}\n")
    );
    assert_eq!(docker(&["inspect", "--format", "{{.Id}}", &name]), id);
    assert_eq!(docker(&["run", "--rm", &name, "echo", "ok"]), "ok\n");
}

#[test]
fn gzipped_docker_save_of_two_images_sharing_layers_loads_with_both_tags() {
    require_docker!();
    let fixture = Fixture::new("shared");
    let mut images = Images(Vec::new());
    let (base, multi) = fixture.docker_images(Builder::BuildKit, &mut images);
    let archive = fixture.path("two.tar.gz");
    run(Process::new("bash")
        .args(["-o", "pipefail", "-c"])
        .arg(format!(
            "{DOCKER} save {multi} {base} | gzip > {}",
            archive.display()
        )));

    let printed = fixture.kiln_stdout(&["load", "-i", archive.to_str().unwrap()]);
    let mut printed: Vec<&str> = printed.lines().collect();
    printed.sort_unstable();
    let mut expected = vec![
        format!("Loaded image: {base}"),
        format!("Loaded image: {multi}"),
    ];
    expected.sort_unstable();
    assert_eq!(printed, expected);
    for image in [&base, &multi] {
        for format in ["{{.Id}}", "{{json .RootFS.Layers}}"] {
            assert_eq!(
                fixture.kiln_stdout(&["inspect", "--format", format, image]),
                docker(&["inspect", "--format", format, image]),
                "{image} {format}"
            );
        }
    }
    // The shared layer is one snapshot: base's only lower directory is multi's bottom one.
    let lower = |image: &str| {
        fixture.kiln_stdout(&[
            "inspect",
            "--format",
            "{{.GraphDriver.Data.LowerDir}}",
            image,
        ])
    };
    let multi_lower = lower(&multi);
    assert_eq!(
        multi_lower.trim().rsplit(':').next(),
        Some(lower(&base).trim())
    );
}
