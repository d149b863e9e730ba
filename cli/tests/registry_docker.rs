//! Registry interop with a real Docker engine (`/usr/bin/docker`, 20.10 in the reference setup)
//! through Debian's `docker-registry` on a free loopback port (Docker talks plain HTTP to
//! 127.0.0.0/8 registries by default): Docker pulls and runs what kiln built and pushed, kiln
//! pulls and runs what Docker pushed, and both agree on image IDs (the config digest) and on
//! the manifest digest.
//!
//! Each test prints why and returns early when no Docker engine answers, when not root (kiln
//! runs containers), or when busybox-static or docker-registry is missing. The Docker images a
//! test makes are named after the test and its registry port, and removed (by name) when the
//! test ends, failed or not.
#![allow(clippy::print_stderr)]

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use common::{LoopbackRegistry, busybox_store, is_root, kiln};

const DOCKER: &str = "/usr/bin/docker";

/// Why these tests cannot run here, if they cannot.
fn unavailable() -> Option<&'static str> {
    if !is_root() {
        return Some("not root (kiln runs containers)");
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

/// Runs a command, asserts success, returns stdout.
fn run(command: &mut Process) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn docker(args: &[&str]) -> String {
    run(Process::new(DOCKER).args(args))
}

/// Removes the named Docker images when dropped, so a failing assertion leaves nothing behind.
struct DockerImages(Vec<String>);

impl Drop for DockerImages {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Process::new(DOCKER)
                .args(["rmi", "-f", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The digest `kiln push` printed on its `TAG: digest: sha256:... size: N` line.
fn pushed_digest(output: &str) -> String {
    let line = output
        .lines()
        .find(|line| line.contains(": digest: sha256:"))
        .unwrap_or_else(|| panic!("no digest line in {output}"));
    line.split_whitespace().nth(2).unwrap().to_string()
}

/// The one RepoDigest Docker records for `name` in `repository` (`REPOSITORY@sha256:...`).
fn docker_repo_digest(name: &str, repository: &str) -> String {
    let digests = docker(&[
        "image",
        "inspect",
        "-f",
        "{{range .RepoDigests}}{{println .}}{{end}}",
        name,
    ]);
    let prefix = format!("{repository}@");
    digests
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no RepoDigest for {repository} in {digests:?}"))
        .to_string()
}

/// The manifest of `REPOSITORY:TAG` as the registry at `domain` (`127.0.0.1:PORT`, plain HTTP)
/// serves it to a client that accepts Docker schema 2 and OCI manifests.
fn registry_manifest(domain: &str, path: &str, tag: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(domain).unwrap();
    write!(
        stream,
        "GET /v2/{path}/manifests/{tag} HTTP/1.0\r\nHost: {domain}\r\n\
         Accept: application/vnd.docker.distribution.manifest.v2+json, \
         application/vnd.oci.image.manifest.v1+json\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    serde_json::from_str(body).unwrap()
}

#[test]
fn docker_pulls_and_runs_an_image_kiln_built_and_pushed() {
    if let Some(reason) = unavailable() {
        eprintln!("skipped: {reason}");
        return;
    }
    let Some(server) = LoopbackRegistry::start() else {
        return;
    };
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let context = dir.path().join("context");
    fs::create_dir_all(&context).unwrap();
    fs::write(context.join("greeting.txt"), "copied by kiln\n").unwrap();
    fs::write(
        context.join("Dockerfile"),
        "FROM busybox\n\
         RUN mkdir -p /data && echo built by kiln > /data/run.txt\n\
         COPY greeting.txt /data/\n\
         CMD [\"cat\", \"/data/run.txt\", \"/data/greeting.txt\"]\n",
    )
    .unwrap();
    let repository = format!("{}/interop/kiln-built", server.domain);
    let name = format!("{repository}:v1");
    let _cleanup = DockerImages(vec![name.clone()]);
    kiln(&dir)
        .args(["build", "-q", "-t", &name])
        .arg(&context)
        .timeout(Duration::from_secs(120))
        .assert()
        .success();
    let kiln_id = String::from_utf8(
        kiln(&dir)
            .args(["images", "-q", "--no-trunc", &name])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone(),
    )
    .unwrap();
    let kiln_id = kiln_id.trim();
    assert!(kiln_id.starts_with("sha256:"), "{kiln_id}");

    let pushed = String::from_utf8(
        kiln(&dir)
            .args(["push", &name])
            .timeout(Duration::from_secs(120))
            .assert()
            .success()
            .get_output()
            .stdout
            .clone(),
    )
    .unwrap();
    let digest = pushed_digest(&pushed);
    let manifest = registry_manifest(&server.domain, "interop/kiln-built", "v1");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "busybox, RUN, COPY: {manifest}");
    for layer in layers {
        let media_type = layer["mediaType"].as_str().unwrap();
        assert!(
            media_type.ends_with("tar.gzip") || media_type.ends_with("tar+gzip"),
            "built layers are pushed gzip-compressed: {manifest}"
        );
    }

    docker(&["pull", &name]);
    let docker_id = docker(&["image", "inspect", "-f", "{{.Id}}", &name]);
    assert_eq!(docker_id.trim(), kiln_id, "Docker's image ID is kiln's");
    assert_eq!(
        docker_repo_digest(&name, &repository),
        digest,
        "Docker's RepoDigest is the digest kiln push printed"
    );
    let output = docker(&["run", "--rm", "--network", "none", &name]);
    assert_eq!(output, "built by kiln\ncopied by kiln\n");
}

#[test]
fn kiln_pulls_and_runs_an_image_docker_pushed() {
    if let Some(reason) = unavailable() {
        eprintln!("skipped: {reason}");
        return;
    }
    let Some(server) = LoopbackRegistry::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let Some(rootfs) = common::contexts::base_rootfs(work.path()) else {
        return;
    };
    let repository = format!("{}/interop/docker-pushed", server.domain);
    let name = format!("{repository}:v1");
    let local = format!(
        "kiln-registry-docker-import-{}",
        server.domain.replace(':', "-")
    );
    let local = local.replace('.', "-");
    let _cleanup = DockerImages(vec![name.clone(), local.clone()]);
    docker(&[
        "import",
        "-c",
        "CMD [\"echo\", \"hello from docker\"]",
        rootfs.to_str().unwrap(),
        &local,
    ]);
    docker(&["tag", &local, &name]);
    let pushed = docker(&["push", &name]);
    let docker_id = docker(&["image", "inspect", "-f", "{{.Id}}", &name]);
    let docker_id = docker_id.trim();
    let repo_digest = docker_repo_digest(&name, &repository);
    assert!(
        pushed.contains(&format!("digest: {repo_digest}")),
        "{pushed}"
    );

    let fresh = tempfile::tempdir().unwrap();
    let pulled = String::from_utf8(
        kiln(&fresh)
            .args(["pull", &name])
            .timeout(Duration::from_secs(120))
            .assert()
            .success()
            .get_output()
            .stdout
            .clone(),
    )
    .unwrap();
    assert!(
        pulled.contains(&format!("Digest: {repo_digest}\n")),
        "kiln sees the digest Docker pushed: {pulled}"
    );
    let kiln_id = String::from_utf8(
        kiln(&fresh)
            .args(["images", "-q", "--no-trunc", &name])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone(),
    )
    .unwrap();
    assert_eq!(kiln_id.trim(), docker_id, "kiln's image ID is Docker's");
    kiln(&fresh)
        .args(["run", "--rm", "--network", "none", &name])
        .timeout(Duration::from_secs(60))
        .assert()
        .success()
        .stdout("hello from docker\n");
}
