//! `kiln pull`, `push`, `login` and `logout` against a real registry (Debian's
//! `docker-registry`) on a free loopback port; skipped, saying why, when it is not installed.
#![allow(clippy::print_stderr)]

mod common;

use std::fs;
use std::path::Path;
use std::process::Command as Process;
use std::time::Duration;

use assert_cmd::Command;
use common::{LoopbackRegistry, busybox_store, kiln};
use predicates::prelude::*;

const USER: &str = "kiln";
const PASSWORD: &str = "kiln-test-password";
/// bcrypt of [`PASSWORD`] (cost 4), as `htpasswd -B` writes it.
const PASSWORD_BCRYPT: &str = "$2b$04$AXcrEKWOCe7qPzK8HLZ3ZuKQCgT6jVkp7NmntsirKoMEieYGolYmG";

/// A registry, with Basic auth for [`USER`] when `basic_auth`.
fn start_registry(basic_auth: bool) -> Option<LoopbackRegistry> {
    let htpasswd = format!("{USER}:{PASSWORD_BCRYPT}\n");
    LoopbackRegistry::start_with(basic_auth.then_some(htpasswd.as_str()))
}

/// `kiln --root DIR/store` with the Docker config in `DIR/docker` (never the user's).
fn kiln_at(dir: &Path) -> Command {
    let mut command = Command::cargo_bin("kiln").unwrap();
    command
        .arg("--root")
        .arg(dir.join("store"))
        .env("DOCKER_CONFIG", dir.join("docker"));
    command
}

fn stdout(command: &mut Command) -> String {
    let output = command.assert().success().get_output().stdout.clone();
    String::from_utf8(output).unwrap()
}

/// A store in a new temp dir with a one-file image imported as `name`.
fn small_image(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    fs::create_dir_all(&rootfs).unwrap();
    fs::write(rootfs.join("hello"), "hello from kiln\n").unwrap();
    let tar = Process::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    kiln_at(dir.path())
        .args(["import", "-", name])
        .write_stdin(tar.stdout)
        .assert()
        .success();
    dir
}

#[test]
fn push_then_pull_into_a_fresh_store_keeps_the_image_and_it_runs() {
    let Some(server) = start_registry(false) else {
        return;
    };
    let Some(source) = busybox_store(&["CMD [\"echo\", \"hi\"]"], &[]) else {
        return;
    };
    let name = format!("{}/tools/busybox:1.0", server.domain);
    kiln(&source)
        .args(["tag", "busybox", &name])
        .assert()
        .success();
    let id = stdout(kiln(&source).args(["images", "-q", "--no-trunc", &name]));

    let pushed = stdout(kiln(&source).args(["push", &name]));
    let lines: Vec<&str> = pushed.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "The push refers to repository [{}/tools/busybox]",
            server.domain
        )
    );
    assert!(lines[1].ends_with(": Preparing"), "{pushed}");
    assert!(lines[2].ends_with(": Pushed"), "{pushed}");
    assert!(lines[3].starts_with("1.0: digest: sha256:"), "{pushed}");
    let digest = lines[3].split_whitespace().nth(2).unwrap().to_string();

    let again = stdout(kiln(&source).args(["push", &name]));
    assert!(again.contains(": Layer already exists"), "{again}");
    assert!(again.contains(&digest), "the same digest: {again}");

    let fresh = tempfile::tempdir().unwrap();
    let pulled = stdout(kiln(&fresh).args(["pull", &name]));
    let lines: Vec<&str> = pulled.lines().collect();
    assert_eq!(lines[0], "1.0: Pulling from tools/busybox");
    assert!(pulled.contains(": Pull complete\n"), "{pulled}");
    assert!(pulled.contains(&format!("Digest: {digest}\n")), "{pulled}");
    assert!(
        pulled.contains(&format!("Status: Downloaded newer image for {name}\n")),
        "{pulled}"
    );
    assert_eq!(lines.last().unwrap(), &name);
    assert_eq!(
        stdout(kiln(&fresh).args(["images", "-q", "--no-trunc", &name])),
        id,
        "the same image ID"
    );
    let digests = stdout(kiln(&fresh).args(["images", "--digests", &name]));
    assert!(digests.contains(&digest), "{digests}");

    let quiet = stdout(kiln(&fresh).args(["pull", "-q", &name]));
    assert_eq!(quiet, format!("{name}\n"));
    let up_to_date = stdout(kiln(&fresh).args(["pull", &name]));
    assert!(
        up_to_date.contains(&format!("Status: Image is up to date for {name}")),
        "{up_to_date}"
    );

    kiln(&fresh)
        .args(["run", "--rm", &name])
        .timeout(Duration::from_secs(60))
        .assert()
        .success()
        .stdout("hi\n");
}

#[test]
fn an_image_copied_by_skopeo_from_a_kiln_archive_pulls_with_its_id() {
    let Some(server) = start_registry(false) else {
        return;
    };
    if !Path::new("/usr/bin/skopeo").is_file() {
        eprintln!("skipped: skopeo is missing (apt-get install skopeo)");
        return;
    }
    let source = small_image("skopeo-source:latest");
    let id = stdout(kiln_at(source.path()).args(["images", "-q", "--no-trunc", "skopeo-source"]));
    let archive = source.path().join("image.tar");
    kiln_at(source.path())
        .args(["save", "-o"])
        .arg(&archive)
        .arg("skopeo-source")
        .assert()
        .success();
    let copied = Process::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("docker-archive:{}", archive.display()))
        .arg(format!("docker://{}/copied:v2", server.domain))
        .output()
        .unwrap();
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    let fresh = tempfile::tempdir().unwrap();
    let name = format!("{}/copied:v2", server.domain);
    kiln_at(fresh.path())
        .args(["pull", "-q", &name])
        .assert()
        .success()
        .stdout(format!("{name}\n"));
    assert_eq!(
        stdout(kiln_at(fresh.path()).args(["images", "-q", "--no-trunc", &name])),
        id
    );
}

#[test]
fn login_stores_docker_credentials_that_push_uses_and_logout_removes_them() {
    let Some(server) = start_registry(true) else {
        return;
    };
    let name = format!("{}/private:latest", server.domain);
    let dir = small_image(&name);

    kiln_at(dir.path())
        .args(["push", &name])
        .assert()
        .code(125)
        .stderr(predicate::str::contains(format!(
            "{}: unauthorized",
            server.domain
        )));
    kiln_at(dir.path())
        .args(["login", "-u", USER, "--password-stdin", &server.domain])
        .write_stdin("wrong\n")
        .assert()
        .code(125)
        .stderr(predicate::str::contains(format!(
            "kiln: {}: unauthorized",
            server.domain
        )));
    kiln_at(dir.path())
        .args(["login", "-u", USER, "--password-stdin", &server.domain])
        .write_stdin(format!("{PASSWORD}\n"))
        .assert()
        .success()
        .stdout("Login Succeeded\n")
        .stderr(predicate::str::contains(
            "Your password will be stored unencrypted",
        ));
    let config = fs::read_to_string(dir.path().join("docker/config.json")).unwrap();
    assert!(config.contains(&server.domain), "{config}");
    kiln_at(dir.path())
        .args(["push", "-q", &name])
        .assert()
        .success()
        .stdout(format!("{name}\n"));
    kiln_at(dir.path())
        .args(["logout", &server.domain])
        .assert()
        .success()
        .stdout(format!(
            "Removing login credentials for {}\n",
            server.domain
        ));
    kiln_at(dir.path())
        .args(["logout", &server.domain])
        .assert()
        .success()
        .stdout(format!("Not logged in to {}\n", server.domain));
    kiln_at(dir.path())
        .args(["pull", &name])
        .assert()
        .code(125)
        .stderr(predicate::str::contains("unauthorized"));
}

#[test]
fn errors_name_what_is_missing() {
    let Some(server) = start_registry(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    kiln_at(dir.path())
        .args(["pull", &format!("{}/absent:1", server.domain)])
        .assert()
        .code(125)
        .stderr(format!(
            "kiln: manifest for {}/absent:1 not found: manifest unknown\n",
            server.domain
        ));
    kiln_at(dir.path())
        .args(["push", &format!("{}/absent:1", server.domain)])
        .assert()
        .code(125)
        .stderr(format!(
            "kiln: An image does not exist locally with the tag: {}/absent:1\n",
            server.domain
        ));
    kiln_at(dir.path())
        .args([
            "pull",
            "--platform",
            "linux/",
            &format!("{}/absent", server.domain),
        ])
        .assert()
        .code(125)
        .stderr(predicate::str::contains("invalid platform"));
}

/// The layer lines of terminal output: every in-place redraw (`ESC[NA ESC[2K CR TEXT CR
/// ESC[NB`) as TEXT, in order.
fn redrawn_lines(output: &str) -> Vec<String> {
    output
        .split("\x1b[2K\r")
        .skip(1)
        .map(|rest| rest.split('\r').next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn push_and_pull_draw_per_layer_progress_bars_on_a_terminal() {
    let Some(server) = start_registry(false) else {
        return;
    };
    let name = format!("{}/bars:1", server.domain);
    let dir = small_image(&name);

    let (output, status) = common::run_on_sized_pty(dir.path(), &["push", &name], 30, 140);
    assert_eq!(status, 0, "{output}");
    assert!(
        output.starts_with(&format!(
            "The push refers to repository [{}/bars]\r\n",
            server.domain
        )),
        "a plain line first: {output:?}"
    );
    let lines = redrawn_lines(&output);
    let layer = lines
        .first()
        .and_then(|line| line.strip_suffix(": Preparing "))
        .unwrap_or_else(|| panic!("Preparing first: {output:?}"))
        .to_string();
    let pushing = lines
        .iter()
        .find(|line| line.starts_with(&format!("{layer}: Pushing [")))
        .unwrap_or_else(|| panic!("a Pushing bar: {output:?}"));
    assert!(
        pushing.contains("==>] "),
        "the whole blob at the end: {pushing}"
    );
    assert_eq!(lines.last().unwrap(), &format!("{layer}: Pushed "));
    assert!(
        output.contains("\x1b[1A\x1b[2K\r") && output.contains("\r\x1b[1B"),
        "the layer line is redrawn in place: {output:?}"
    );
    assert!(output.contains("1: digest: sha256:"), "{output:?}");

    let fresh = tempfile::tempdir().unwrap();
    let (output, status) = common::run_on_sized_pty(fresh.path(), &["pull", &name], 30, 140);
    assert_eq!(status, 0, "{output}");
    let lines = redrawn_lines(&output);
    assert!(
        output.starts_with("1: Pulling from bars\r\n"),
        "a plain line first: {output:?}"
    );
    assert_eq!(
        lines.first().unwrap(),
        &format!("{layer}: Pulling fs layer ")
    );
    let full = lines
        .iter()
        .find(|line| line.contains("Downloading [") && line.contains("==>]"))
        .unwrap_or_else(|| panic!("a full bar: {output:?}"));
    let sizes = full.rsplit("] ").next().unwrap().trim();
    let (current, total) = sizes.split_once('/').unwrap();
    assert_eq!(current, total, "{full}");
    assert!(total.ends_with('B'), "{full}");
    assert_eq!(lines.last().unwrap(), &format!("{layer}: Pull complete "));
    assert!(
        output.contains("Status: Downloaded newer image for"),
        "{output:?}"
    );

    // Narrower than 111 columns: Docker leaves the bar out and keeps the sizes.
    let narrow = tempfile::tempdir().unwrap();
    let (output, status) = common::run_on_sized_pty(narrow.path(), &["pull", &name], 30, 97);
    assert_eq!(status, 0, "{output}");
    let lines = redrawn_lines(&output);
    let downloading: Vec<&String> = lines
        .iter()
        .filter(|line| line.contains("Downloading"))
        .collect();
    assert!(!downloading.is_empty(), "{output:?}");
    for line in downloading {
        assert!(!line.contains('['), "no bar at 97 columns: {line}");
        assert!(line.contains("B/"), "{line}");
    }
}
