//! The image commands over a real store in a temporary directory: import, images, tag, rmi,
//! inspect, history, image prune, system check and df.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use assert_cmd::Command;
use predicates::prelude::*;

/// A store directory and a root file system tarball to import.
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
        let status = Process::new("tar")
            .args(["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "-C"])
            .arg(&rootfs)
            .args(["-czf"])
            .arg(dir.path().join("rootfs.tgz"))
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        Fixture { dir }
    }

    fn tarball(&self) -> PathBuf {
        self.dir.path().join("rootfs.tgz")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn kiln(&self) -> Command {
        let mut command = Command::cargo_bin("kiln").unwrap();
        command
            .arg("--root")
            .arg(self.root())
            .env_remove("SOURCE_DATE_EPOCH");
        command
    }

    fn import(&self, reference: &str, extra: &[&str]) -> String {
        let mut command = self.kiln();
        command.arg("import").args(extra).arg(self.tarball());
        if !reference.is_empty() {
            command.arg(reference);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }
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

#[test]
fn import_creates_a_one_layer_image_with_changes_and_message() {
    let fixture = Fixture::new();
    let id = fixture.import(
        "app:1",
        &[
            "-c",
            "CMD [\"/bin/tool\"]",
            "-c",
            "ENV GREETING=hi",
            "-m",
            "first import",
        ],
    );
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let images = stdout(fixture.kiln().arg("images"));
    let lines: Vec<&str> = images.lines().collect();
    assert!(
        lines[0].starts_with("REPOSITORY   TAG       IMAGE ID       CREATED"),
        "{images}"
    );
    assert!(lines[1].starts_with("app          1         "), "{images}");
    assert!(lines[1].contains(&id[7..19]), "{images}");
    let inspected = stdout(fixture.kiln().args([
        "inspect",
        "--format",
        "{{json .Config}}|{{.Comment}}|{{len .RootFS.Layers}}",
        "app:1",
    ]));
    assert_eq!(
        inspected,
        "{\"Cmd\":[\"/bin/tool\"],\"Env\":[\"GREETING=hi\"]}|first import|1\n"
    );
    let history = stdout(fixture.kiln().args(["history", "app:1"]));
    assert!(history.contains("first import"), "{history}");
    assert!(
        history.lines().nth(1).unwrap().starts_with(&id[7..19]),
        "{history}"
    );
}

#[test]
fn import_reads_stdin_and_is_reproducible_with_source_date_epoch() {
    let fixture = Fixture::new();
    let other = Fixture::new();
    let mut ids = Vec::new();
    for store in [&fixture, &other] {
        let output = store
            .kiln()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["import", "-", "repro:latest"])
            .write_stdin(fs::read(fixture.tarball()).unwrap())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        ids.push(String::from_utf8(output.stdout).unwrap());
    }
    assert_eq!(
        ids[0], ids[1],
        "same input, same time: same image ID on another store"
    );
}

#[test]
fn tag_and_rmi_follow_docker() {
    let fixture = Fixture::new();
    let id = fixture.import("app:1", &[]);
    fixture
        .kiln()
        .args(["tag", "app:1", "registry.example:5000/team/app:2"])
        .assert()
        .success();
    let repositories =
        stdout(
            fixture
                .kiln()
                .args(["images", "--format", "{{.Repository}}:{{.Tag}}"]),
        );
    assert_eq!(repositories, "app:1\nregistry.example:5000/team/app:2\n");
    fixture
        .kiln()
        .args(["rmi", &id[7..19]])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "image is referenced in multiple repositories",
        ));
    fixture
        .kiln()
        .args(["rmi", "app:1"])
        .assert()
        .success()
        .stdout("Untagged: app:1\n");
    fixture
        .kiln()
        .args(["rmi", "registry.example:5000/team/app:2"])
        .assert()
        .success()
        .stdout(format!(
            "Untagged: registry.example:5000/team/app:2\nDeleted: {id}\n"
        ));
    fixture
        .kiln()
        .args(["rmi", "app:1"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no such image: app:1"));
    fixture
        .kiln()
        .args(["tag", "nothing", "x"])
        .assert()
        .code(125);
    let again = fixture.import("app:1", &[]);
    fixture
        .kiln()
        .args(["tag", &again, "Upper"])
        .assert()
        .code(125)
        .stderr(predicate::str::contains(
            "repository name (library/Upper) must be lowercase",
        ));
}

#[test]
fn images_filters_and_quiet_output() {
    let fixture = Fixture::new();
    let tagged = fixture.import("web:1", &["-c", "LABEL tier=front"]);
    let dangling = fixture.import("", &[]);
    let quiet = stdout(fixture.kiln().args(["images", "-q", "--no-trunc"]));
    assert!(
        quiet.contains(&tagged) && quiet.contains(&dangling),
        "{quiet}"
    );
    let only_dangling = stdout(fixture.kiln().args(["images", "-q", "-f", "dangling=true"]));
    assert_eq!(only_dangling, format!("{}\n", &dangling[7..19]));
    let by_label = stdout(
        fixture
            .kiln()
            .args(["images", "-q", "-f", "label=tier=front"]),
    );
    assert_eq!(by_label, format!("{}\n", &tagged[7..19]));
    let by_reference = stdout(fixture.kiln().args(["images", "-q", "-f", "reference=w*"]));
    assert_eq!(by_reference, format!("{}\n", &tagged[7..19]));
    let none = stdout(fixture.kiln().args(["images", "-q", "-f", "reference=x*"]));
    assert_eq!(none, "");
    fixture
        .kiln()
        .args(["images", "-f", "nonsense"])
        .assert()
        .code(125);
}

#[test]
fn prune_removes_dangling_images_and_frees_their_content() {
    let fixture = Fixture::new();
    fixture.import("keep:1", &[]);
    let dangling = fixture.import("", &["-m", "different config, same layer"]);
    fixture
        .kiln()
        .args(["image", "prune", "-f"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("deleted: {dangling}")));
    assert_eq!(
        stdout(fixture.kiln().args(["images", "-q"]))
            .lines()
            .count(),
        1
    );
    fixture.kiln().args(["system", "check"]).assert().success();
}

#[test]
fn system_check_names_corrupt_blobs() {
    let fixture = Fixture::new();
    let id = fixture.import("app:1", &[]);
    let blob = fixture.root().join("blobs/sha256").join(&id[7..]);
    fs::write(&blob, b"{}").unwrap();
    fixture
        .kiln()
        .args(["system", "check"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!("blob {id} is corrupt")));
}

#[test]
fn a_hostile_tarball_is_refused_and_writes_nothing_outside() {
    let fixture = Fixture::new();
    let outside = fixture.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    // A tar entry named ../../outside/pwned, written by hand (tar tools refuse to).
    let mut archive = Vec::new();
    let mut header = [0u8; 512];
    let name = b"../../outside/pwned";
    header[..name.len()].copy_from_slice(name);
    header[100..108].copy_from_slice(b"0000644\0");
    header[108..116].copy_from_slice(b"0000000\0");
    header[116..124].copy_from_slice(b"0000000\0");
    header[124..136].copy_from_slice(b"00000000005\0");
    header[136..148].copy_from_slice(b"00000000000\0");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let checksum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
    archive.extend_from_slice(&header);
    let mut data = [0u8; 512];
    data[..5].copy_from_slice(b"pwned");
    archive.extend_from_slice(&data);
    archive.extend_from_slice(&[0u8; 1024]);
    let path: &Path = &fixture.dir.path().join("evil.tar");
    fs::write(path, archive).unwrap();
    fixture
        .kiln()
        .arg("import")
        .arg(path)
        .arg("evil:1")
        .assert()
        .code(125)
        .stderr(predicate::str::contains(".."));
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    assert_eq!(stdout(fixture.kiln().args(["images", "-q"])), "");
    fixture.kiln().args(["system", "check"]).assert().success();
}

#[test]
fn system_df_counts_images() {
    let fixture = Fixture::new();
    fixture.import("app:1", &[]);
    let df = stdout(fixture.kiln().args(["system", "df"]));
    assert!(df.starts_with("TYPE            TOTAL     ACTIVE    SIZE      RECLAIMABLE\nImages          1         1 "), "{df}");
}

/// Serves `body` once over HTTP on a free loopback port (status 200, or 404 for other paths);
/// returns the URL.
fn serve_once(body: Vec<u8>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let mut stream = stream.unwrap();
            let mut request_line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            reader.read_line(&mut request_line).unwrap();
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap() == 0 || header == "\r\n" {
                    break;
                }
            }
            if request_line.starts_with("GET /rootfs.tgz ") {
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .unwrap();
                stream.write_all(&body).unwrap();
            } else {
                stream
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .unwrap();
            }
        }
    });
    format!("http://127.0.0.1:{port}")
}

#[test]
fn import_downloads_a_url() {
    let fixture = Fixture::new();
    let base = serve_once(fs::read(fixture.tarball()).unwrap());
    let url = format!("{base}/rootfs.tgz");
    let output = fixture
        .kiln()
        .args(["import", &url, "web:1"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let history = stdout(
        fixture
            .kiln()
            .args(["history", "--format", "{{.Comment}}", "web:1"]),
    );
    assert_eq!(history, format!("Imported from {url}\n"));
    fixture
        .kiln()
        .args(["import", &format!("{base}/missing.tgz")])
        .assert()
        .code(125)
        .stderr(predicate::str::contains("404"));
}

#[test]
fn version_and_info_report_the_store_with_format() {
    let fixture = Fixture::new();
    fixture.import("app:1", &[]);
    let version = stdout(fixture.kiln().args([
        "version",
        "--format",
        "{{.Client.StoreVersion}} {{.Client.Os}}",
    ]));
    assert_eq!(version, "1 linux\n");
    let text = stdout(fixture.kiln().arg("version"));
    assert!(
        text.contains("Store version:") && text.contains("Cgroup version:"),
        "{text}"
    );
    let info = stdout(fixture.kiln().args([
        "info",
        "--format",
        "{{.Images}} {{.Driver}} {{json .StoreVersion}}",
    ]));
    assert_eq!(info, "1 overlay 1\n");
    let text = stdout(fixture.kiln().arg("info"));
    assert!(
        text.contains(&format!("Root Dir: {}", fixture.root().display())),
        "{text}"
    );
}

#[test]
fn system_prune_removes_unused_images_with_all() {
    let fixture = Fixture::new();
    fixture.import("app:1", &[]);
    let dangling = fixture.import("", &["-m", "other"]);
    let pruned = stdout(fixture.kiln().args(["system", "prune", "-f"]));
    assert!(pruned.contains(&format!("deleted: {dangling}")), "{pruned}");
    assert!(pruned.contains("Total reclaimed space:"), "{pruned}");
    assert_eq!(
        stdout(fixture.kiln().args(["images", "-q"]))
            .lines()
            .count(),
        1
    );
    stdout(fixture.kiln().args(["system", "prune", "-a", "-f"]));
    assert_eq!(stdout(fixture.kiln().args(["images", "-q"])), "");
    assert_eq!(
        fs::read_dir(fixture.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        0,
        "every blob collected"
    );
    fixture.kiln().args(["system", "check"]).assert().success();
}
