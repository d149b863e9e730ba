//! `kiln save` and `kiln load` over real stores: streaming, files, messages, exit codes, and
//! interoperability with skopeo, umoci and (when an engine answers) Docker.
//!
//! Interop tests print why and return early when their tool is not installed.
#![allow(clippy::print_stderr)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use assert_cmd::Command;

/// A directory with a root file system tarball and any number of stores.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        fs::create_dir_all(rootfs.join("etc")).unwrap();
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        fs::write(rootfs.join("etc/motd"), "hello from a kiln test\n").unwrap();
        fs::write(rootfs.join("bin/tool"), vec![7u8; 4096]).unwrap();
        std::os::unix::fs::symlink("tool", rootfs.join("bin/alias")).unwrap();
        run(Process::new("tar")
            .args(["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "-C"])
            .arg(&rootfs)
            .arg("-czf")
            .arg(dir.path().join("rootfs.tgz"))
            .arg("."));
        Fixture { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// kiln on the store `store` of this fixture.
    fn kiln(&self, store: &str) -> Command {
        let mut command = Command::cargo_bin("kiln").unwrap();
        command
            .arg("--root")
            .arg(self.path(store))
            .env("SOURCE_DATE_EPOCH", "1700000000");
        command
    }

    /// Imports the fixture's root file system into `store` as `reference`; returns the ID.
    fn import(&self, store: &str, reference: &str, message: &str) -> String {
        let output = stdout(
            self.kiln(store)
                .args(["import", "-m", message])
                .arg(self.path("rootfs.tgz"))
                .arg(reference),
        );
        String::from_utf8(output).unwrap().trim().to_string()
    }
}

fn run(command: &mut Process) {
    let status = command.status().unwrap();
    assert!(status.success(), "{command:?}");
}

/// Runs kiln, asserts success and an empty stderr, returns stdout.
fn stdout(command: &mut Command) -> Vec<u8> {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

fn have(tool: &str) -> bool {
    let found = Process::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        eprintln!("skipped: {tool} is not installed");
    }
    found
}

#[test]
fn save_streams_to_stdout_the_same_bytes_it_writes_with_o() {
    let fixture = Fixture::new();
    fixture.import("store", "busybox:latest", "one");
    let streamed = stdout(fixture.kiln("store").args(["save", "busybox:latest"]));
    let file = fixture.path("busybox.tar");
    let printed = stdout(
        fixture
            .kiln("store")
            .args(["save", "-o"])
            .arg(&file)
            .arg("busybox"),
    );
    assert!(printed.is_empty());
    assert_eq!(fs::read(&file).unwrap(), streamed);
    let again = stdout(
        fixture
            .kiln("store")
            .args(["image", "save", "busybox:latest"]),
    );
    assert_eq!(again, streamed, "deterministic");
}

#[test]
fn saving_an_unknown_image_exits_125_and_writes_nothing() {
    let fixture = Fixture::new();
    fixture.import("store", "busybox:latest", "one");
    let file = fixture.path("out.tar");
    let output = fixture
        .kiln("store")
        .args(["save", "-o"])
        .arg(&file)
        .args(["busybox", "nosuch:1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(125));
    assert_eq!(text(output.stderr), "kiln: no such image: nosuch:1\n");
    assert!(!file.exists());
    let leftovers: Vec<_> = fs::read_dir(fixture.dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .filter(|name| name.to_string_lossy().starts_with(".kiln_temp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let output = fixture
        .kiln("store")
        .args(["save", "nosuch"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(125));
    assert!(output.stdout.is_empty());
}

#[test]
fn save_refuses_to_write_to_a_terminal() {
    let fixture = Fixture::new();
    if !have("script") {
        return;
    }
    // `script` runs the command with a pseudo-terminal as its stdout.
    let kiln = assert_cmd::cargo::cargo_bin("kiln");
    let command = format!(
        "{} --root {} save busybox",
        kiln.display(),
        fixture.path("store").display()
    );
    let output = Process::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains("cowardly refusing to save to a terminal. Use the -o flag or redirect"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn load_prints_what_it_loaded_as_docker_does_and_nothing_with_q() {
    let fixture = Fixture::new();
    let id = fixture.import("source", "busybox:latest", "one");
    stdout(
        fixture
            .kiln("source")
            .args(["tag", "busybox", "team/app:2"]),
    );
    let file = fixture.path("images.tar");
    stdout(
        fixture
            .kiln("source")
            .args(["save", "-o"])
            .arg(&file)
            .args(["busybox", "team/app:2"]),
    );

    let printed = text(stdout(
        fixture.kiln("target").args(["load", "-i"]).arg(&file),
    ));
    assert_eq!(
        printed,
        "Loaded image: busybox:latest\nLoaded image: team/app:2\n"
    );
    let images = text(stdout(fixture.kiln("target").args([
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}} {{.ID}}",
    ])));
    assert_eq!(
        images,
        format!("busybox:latest {0}\nteam/app:2 {0}\n", &id[7..19])
    );

    let quiet = stdout(
        fixture
            .kiln("quiet")
            .args(["image", "load", "-q", "-i"])
            .arg(&file),
    );
    assert!(quiet.is_empty());
    let from_stdin = text(stdout(
        fixture
            .kiln("stdin")
            .arg("load")
            .write_stdin(fs::read(&file).unwrap()),
    ));
    assert_eq!(from_stdin, printed);
}

#[test]
fn load_reports_untagged_images_by_id_and_tags_it_takes_from_other_images() {
    let fixture = Fixture::new();
    let first = fixture.import("source", "app:1", "first");
    let by_id = fixture.path("by-id.tar");
    stdout(
        fixture
            .kiln("source")
            .args(["save", "-o"])
            .arg(&by_id)
            .arg(&first[7..19]),
    );
    let printed = text(stdout(
        fixture.kiln("target").args(["load", "-i"]).arg(&by_id),
    ));
    assert_eq!(printed, format!("Loaded image ID: {first}\n"));

    let second = fixture.import("other", "app:1", "second");
    assert_ne!(first, second);
    let file = fixture.path("second.tar");
    stdout(
        fixture
            .kiln("other")
            .args(["save", "-o"])
            .arg(&file)
            .arg("app:1"),
    );
    stdout(fixture.kiln("target").args(["tag", &first, "app:1"]));
    let printed = text(stdout(
        fixture.kiln("target").args(["load", "-i"]).arg(&file),
    ));
    assert_eq!(
        printed,
        format!(
            "The image app:1 already exists, renaming the old one with ID {first} to empty string\nLoaded image: app:1\n"
        )
    );
}

/// Extracts an archive into a new directory with the system's tar.
fn extract(archive: &Path, into: &Path) {
    fs::create_dir_all(into).unwrap();
    run(Process::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(into));
}

#[test]
fn load_reads_an_oci_layout_directory() {
    let fixture = Fixture::new();
    let id = fixture.import("source", "layout:1", "one");
    let file = fixture.path("layout.tar");
    stdout(
        fixture
            .kiln("source")
            .args(["save", "-o"])
            .arg(&file)
            .arg("layout:1"),
    );
    let layout = fixture.path("layout");
    extract(&file, &layout);
    let printed = text(stdout(
        fixture.kiln("target").args(["load", "-i"]).arg(&layout),
    ));
    assert_eq!(printed, "Loaded image: layout:1\n");
    let inspected = text(stdout(
        fixture
            .kiln("target")
            .args(["inspect", "--format", "{{.Id}}", "layout:1"]),
    ));
    assert_eq!(inspected.trim(), id);
}

#[test]
fn loading_an_archive_with_a_corrupt_config_exits_125_naming_the_digest() {
    let fixture = Fixture::new();
    let id = fixture.import("source", "corrupt:1", "one");
    let file = fixture.path("good.tar");
    stdout(
        fixture
            .kiln("source")
            .args(["save", "-o"])
            .arg(&file)
            .arg("corrupt:1"),
    );
    let layout = fixture.path("tampered");
    extract(&file, &layout);
    let config = layout.join("blobs/sha256").join(&id[7..]);
    let mut bytes = fs::read(&config).unwrap();
    bytes.push(b' ');
    fs::write(&config, bytes).unwrap();
    let tampered = fixture.path("tampered.tar");
    run(Process::new("tar")
        .arg("-cf")
        .arg(&tampered)
        .arg("-C")
        .arg(&layout)
        .arg("."));
    let output = fixture
        .kiln("target")
        .args(["load", "-i"])
        .arg(&tampered)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(125));
    let message = text(output.stderr);
    assert!(
        message.contains(&id) && message.contains("corrupt"),
        "{message}"
    );
    assert!(output.stdout.is_empty());
    let images = text(stdout(fixture.kiln("target").args(["images", "-q"])));
    assert!(images.is_empty(), "nothing recorded: {images}");
}

#[test]
fn skopeo_reads_saved_archives_as_oci_and_docker_archives_and_kiln_loads_what_skopeo_writes() {
    if !have("skopeo") {
        return;
    }
    let fixture = Fixture::new();
    let id = fixture.import("source", "interop:1", "one");
    let file = fixture.path("interop.tar");
    stdout(
        fixture
            .kiln("source")
            .args(["save", "-o"])
            .arg(&file)
            .arg("interop:1"),
    );
    let inspect = |reference: String| -> serde_json::Value {
        let output = Process::new("skopeo")
            .args(["inspect", "--config", &reference])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{reference}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let oci = inspect(format!("oci-archive:{}:1", file.display()));
    let docker = inspect(format!("docker-archive:{}", file.display()));
    let diff_ids = text(stdout(fixture.kiln("source").args([
        "inspect",
        "--format",
        "{{json .RootFS.Layers}}",
        "interop:1",
    ])));
    let expected: serde_json::Value = serde_json::from_str(&diff_ids).unwrap();
    for config in [&oci, &docker] {
        assert_eq!(config["rootfs"]["diff_ids"], expected);
        assert_eq!(config["history"][0]["comment"], "one");
    }

    // skopeo's own archives, both kinds, load into kiln with the same image ID.
    for (transport, name, loaded) in [
        (
            "docker-archive",
            "from-skopeo.tar:copied:1",
            "Loaded image: copied:1\n",
        ),
        (
            "oci-archive",
            "from-skopeo-oci.tar:docker.io/library/copied:2",
            "Loaded image: copied:2\n",
        ),
    ] {
        let destination = format!("{transport}:{}", fixture.path(name).display());
        let output = Process::new("skopeo")
            .args([
                "copy",
                "-q",
                &format!("oci-archive:{}:1", file.display()),
                &destination,
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let archive = fixture.path(name.split(':').next().unwrap());
        let printed = text(stdout(
            fixture.kiln(transport).args(["load", "-i"]).arg(&archive),
        ));
        assert_eq!(printed, loaded, "{transport}");
        let inspected = text(stdout(fixture.kiln(transport).args([
            "inspect",
            "--format",
            "{{.Id}}",
            loaded.trim_start_matches("Loaded image: ").trim(),
        ])));
        assert_eq!(inspected.trim(), id, "{transport}");
    }
}

#[test]
fn umoci_unpacks_a_saved_archive() {
    if !have("umoci") {
        return;
    }
    let fixture = Fixture::new();
    fixture.import("source", "unpack:latest", "one");
    let file = fixture.path("unpack.tar");
    stdout(
        fixture
            .kiln("source")
            .args(["save", "-o"])
            .arg(&file)
            .arg("unpack"),
    );
    let layout = fixture.path("layout");
    extract(&file, &layout);
    let bundle = fixture.path("bundle");
    let output = Process::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        fs::read_to_string(bundle.join("rootfs/etc/motd")).unwrap(),
        "hello from a kiln test\n"
    );
    assert_eq!(
        fs::read_link(bundle.join("rootfs/bin/alias")).unwrap(),
        Path::new("tool")
    );
}

#[test]
fn docker_loads_saved_archives_and_kiln_loads_docker_save() {
    let engine = Process::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|output| output.status.success());
    if !engine {
        eprintln!("skipped: no Docker engine answers `docker info`");
        return;
    }
    let fixture = Fixture::new();
    let id = fixture.import("source", "kiln-interop-test:1", "one");
    let file = fixture.path("to-docker.tar");
    stdout(
        fixture
            .kiln("source")
            .args(["save", "-o"])
            .arg(&file)
            .arg("kiln-interop-test:1"),
    );
    let output = Process::new("docker")
        .arg("load")
        .arg("-i")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("Loaded image: kiln-interop-test:1"));
    let back = fixture.path("from-docker.tar");
    run(Process::new("docker")
        .args(["save", "-o"])
        .arg(&back)
        .arg("kiln-interop-test:1"));
    let _ = Process::new("docker")
        .args(["rmi", "kiln-interop-test:1"])
        .output();
    let printed = text(stdout(
        fixture.kiln("target").args(["load", "-i"]).arg(&back),
    ));
    assert_eq!(printed, "Loaded image: kiln-interop-test:1\n");
    let inspected = text(stdout(fixture.kiln("target").args([
        "inspect",
        "--format",
        "{{.Id}}",
        "kiln-interop-test:1",
    ])));
    assert_eq!(inspected.trim(), id);
}
