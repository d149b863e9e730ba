//! What the registry tests share: a real distribution registry (Debian's `docker-registry`) on a
//! free loopback port, optionally behind htpasswd Basic auth, and images made in memory.
#![allow(clippy::print_stderr, dead_code)]

use std::fs;
use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_cache::digest::Digest;
use kiln_cache::image::{self, Descriptor, Manifest};
use kiln_registry::{ClientOptions, DockerConfig, Registry, UploadMode};

pub const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
pub const USER: &str = "kiln";
pub const PASSWORD: &str = "kiln-test-password";
/// bcrypt of [`PASSWORD`] (cost 4), as `htpasswd -B` writes it.
const PASSWORD_BCRYPT: &str = "$2b$04$AXcrEKWOCe7qPzK8HLZ3ZuKQCgT6jVkp7NmntsirKoMEieYGolYmG";

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `docker-registry serve`, stopped (by its own pid) when dropped.
pub struct RegistryServer {
    child: Child,
    pub domain: String,
    _dir: tempfile::TempDir,
}

impl RegistryServer {
    /// Starts a registry, with htpasswd auth when `basic_auth`; None (with the reason
    /// printed) when Debian's `docker-registry` is not installed.
    pub fn start(basic_auth: bool) -> Option<RegistryServer> {
        if !Path::new(REGISTRY_BINARY).is_file() {
            eprintln!("skipped: {REGISTRY_BINARY} is missing (apt-get install docker-registry)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // A free port can be taken by another test's registry between our probe and its
        // bind: then ours exits, and another port is tried. Ours is up once its log says so.
        for _ in 0..5 {
            let port = free_port();
            let mut config = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            );
            if basic_auth {
                let htpasswd = dir.path().join("htpasswd");
                fs::write(&htpasswd, format!("{USER}:{PASSWORD_BCRYPT}\n")).unwrap();
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                    htpasswd.display()
                ));
            }
            let config_path = dir.path().join("config.yml");
            fs::write(&config_path, config).unwrap();
            let log_path = dir.path().join("registry.log");
            let mut child = Command::new(REGISTRY_BINARY)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log_path).unwrap())
                .spawn()
                .unwrap();
            let listening = format!("listening on 127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if fs::read_to_string(&log_path).is_ok_and(|log| log.contains(&listening)) {
                    return Some(RegistryServer {
                        child,
                        domain: format!("127.0.0.1:{port}"),
                        _dir: dir,
                    });
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("docker-registry did not start");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("docker-registry did not start on any of 5 free ports");
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Client options that read credentials from a config file in `dir` (never the user's).
pub fn options(dir: &Path) -> ClientOptions {
    ClientOptions {
        docker_config: DockerConfig::at(dir.join("docker-config.json")),
        ..ClientOptions::default()
    }
}

pub fn connect(server: &RegistryServer, dir: &Path) -> Registry {
    Registry::connect(&server.domain, &options(dir), None).unwrap()
}

/// An uncompressed layer tar holding `files` (path, content), mode 0644, owned by root.
pub fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mtime(0);
        // Written by hand so that hostile names (`../x`) go into the archive unchanged.
        let name = header.as_old_mut();
        name.name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, *content).unwrap();
    }
    builder.into_inner().unwrap()
}

/// An image config for layers with these (uncompressed) tars.
pub fn config_for(layers: &[Vec<u8>], architecture: &str) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|layer| Digest::of(layer).to_string())
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": architecture,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// Uploads a blob unless the repository has it.
pub fn upload(registry: &Registry, repository: &str, bytes: &[u8]) -> Digest {
    let digest = Digest::of(bytes);
    let scopes = [kiln_registry::client::push_scope(repository)];
    if registry
        .blob_exists(repository, &digest, &scopes)
        .unwrap()
        .is_none()
    {
        let location = registry
            .start_upload(repository, None, &scopes)
            .unwrap()
            .unwrap();
        registry
            .upload(
                &location,
                &digest,
                bytes.len() as u64,
                &mut &bytes[..],
                UploadMode::Monolithic,
                &scopes,
            )
            .unwrap();
    }
    digest
}

/// Pushes an image of uncompressed layers straight through the client API (no store), as
/// another tool would; returns the manifest bytes and digest.
pub fn push_raw(
    registry: &Registry,
    repository: &str,
    tag: &str,
    layers: &[Vec<u8>],
    architecture: &str,
) -> (Vec<u8>, Digest) {
    let config = config_for(layers, architecture);
    let config_digest = upload(registry, repository, &config);
    let descriptors = layers
        .iter()
        .map(|layer| {
            Descriptor::new(
                image::MEDIA_TYPE_OCI_LAYER,
                upload(registry, repository, layer),
                layer.len() as u64,
            )
        })
        .collect();
    let manifest = Manifest::oci(
        Descriptor::new(
            image::MEDIA_TYPE_OCI_CONFIG,
            config_digest,
            config.len() as u64,
        ),
        descriptors,
    );
    let bytes = image::canonical_json(&manifest).unwrap();
    let scopes = [kiln_registry::client::push_scope(repository)];
    let digest = registry
        .put_manifest(
            repository,
            tag,
            &bytes,
            image::MEDIA_TYPE_OCI_MANIFEST,
            &scopes,
        )
        .unwrap();
    (bytes, digest)
}

/// Reads a file of a store snapshot.
pub fn snapshot_file(store: &kiln_cache::store::Store, chain_id: &Digest, path: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    fs::File::open(store.snapshot_path(chain_id).join(path))
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

/// A fresh store in `dir/name`.
pub fn store(dir: &Path, name: &str) -> kiln_cache::store::Store {
    kiln_cache::store::Store::open(PathBuf::from(dir).join(name)).unwrap()
}
