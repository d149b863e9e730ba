//! Image archives: `save` then `load` round trips, archives of every Docker generation and OCI
//! layouts, shared blobs, determinism, and archives that lie about their content.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use kiln_cache::archive::{self, ArchiveError, LoadOptions, LoadedImage};
use kiln_cache::digest::Digest;
use kiln_cache::image::{self, Descriptor, Index, Manifest};
use kiln_cache::import::{ImportOptions, import_rootfs};
use kiln_cache::layer::Compression;
use kiln_cache::reference::Reference;
use kiln_cache::store::{Store, StoreError};
use tar::{Builder, EntryType, Header};

/// A tar stream in memory, built entry by entry.
struct TarBuilder {
    builder: Builder<Vec<u8>>,
}

impl TarBuilder {
    fn new() -> TarBuilder {
        TarBuilder {
            builder: Builder::new(Vec::new()),
        }
    }

    fn file(mut self, name: &str, content: &[u8]) -> TarBuilder {
        self.file_mode(name, content, 0o644);
        self
    }

    fn file_mode(&mut self, name: &str, content: &[u8], mode: u32) {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_size(content.len() as u64);
        header.set_mode(mode);
        header.set_mtime(1_700_000_000);
        self.builder
            .append_data(&mut header, name, content)
            .unwrap();
    }

    /// A file whose name the tar crate would refuse to write (`..`, absolute).
    fn raw_file(mut self, name: &str, content: &[u8]) -> TarBuilder {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        self.builder.append(&header, content).unwrap();
        self
    }

    fn directory(mut self, name: &str) -> TarBuilder {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Directory);
        header.set_size(0);
        header.set_mode(0o755);
        self.builder
            .append_data(&mut header, name, std::io::empty())
            .unwrap();
        self
    }

    fn symlink(mut self, name: &str, target: &str) -> TarBuilder {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        self.builder.append_link(&mut header, name, target).unwrap();
        self
    }

    fn finish(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn store(dir: &Path, name: &str) -> Store {
    Store::open(dir.join(name)).unwrap()
}

/// A root file system with a directory, an executable, a symlink and an empty file.
fn rootfs(greeting: &str) -> Vec<u8> {
    let mut tar = TarBuilder::new().directory("etc/").directory("bin/");
    tar.file_mode("bin/tool", &[7u8; 5000], 0o755);
    tar.file("etc/motd", greeting.as_bytes())
        .file("etc/empty", b"")
        .symlink("etc/link", "motd")
        .finish()
}

fn import(store: &mut Store, content: &[u8], tag: Option<&str>, message: &str) -> Digest {
    let options = ImportOptions {
        message: Some(message.to_string()),
        source: "test".to_string(),
        created: Some("2024-01-01T00:00:00Z".to_string()),
        reference: tag.map(|tag| Reference::parse(tag).unwrap()),
        compression: Compression::Gzip,
        ..ImportOptions::default()
    };
    import_rootfs(store, content, &options).unwrap()
}

fn save(store: &Store, names: &[&str]) -> Vec<u8> {
    let names: Vec<String> = names.iter().map(ToString::to_string).collect();
    let plan = archive::plan_save(store, &names).unwrap();
    let mut bytes = Vec::new();
    plan.write(store, &mut bytes).unwrap();
    bytes
}

fn load(store: &mut Store, bytes: &[u8]) -> Result<Vec<LoadedImage>, ArchiveError> {
    archive::load(store, bytes, &LoadOptions::default())
}

/// The entries of a tar stream: name → content (empty for non-files).
fn entries(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(bytes);
    let mut found = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        found.insert(name, content);
    }
    found
}

/// A snapshot tree as comparable text: path, type, mode, size, content digest or link target.
fn tree(root: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in walkdir::WalkDir::new(root).sort_by_file_name().min_depth(1) {
        let entry = entry.unwrap();
        let metadata = entry.path().symlink_metadata().unwrap();
        let relative = entry
            .path()
            .strip_prefix(root)
            .unwrap()
            .display()
            .to_string();
        let what = if metadata.file_type().is_symlink() {
            format!("-> {}", fs::read_link(entry.path()).unwrap().display())
        } else if metadata.is_file() {
            Digest::of(&fs::read(entry.path()).unwrap()).to_string()
        } else if metadata.is_dir() {
            "dir".to_string()
        } else {
            format!("special rdev {}", metadata.rdev())
        };
        lines.push(format!(
            "{relative} {:o} {}:{} {what}",
            metadata.permissions().mode(),
            metadata.uid(),
            metadata.gid()
        ));
    }
    lines
}

fn snapshot_trees(store: &Store, id: &Digest) -> Vec<Vec<String>> {
    store
        .image(id)
        .unwrap()
        .layers
        .iter()
        .map(|layer| tree(&store.snapshot_path(&layer.chain_id)))
        .collect()
}

#[test]
fn save_then_load_keeps_the_image_id_manifest_tags_and_snapshot_content() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = store(dir.path(), "source");
    let id = import(
        &mut source,
        &rootfs("hello\n"),
        Some("busybox:latest"),
        "one",
    );
    source.tag("docker.io/library/busybox:1.36", &id).unwrap();
    let bytes = save(&source, &["busybox"]);

    let mut target = store(dir.path(), "target");
    let loaded = load(&mut target, &bytes).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].id, id);
    let tags: Vec<String> = loaded[0].tags.iter().map(Reference::familiar).collect();
    assert_eq!(tags, ["busybox:1.36", "busybox:latest"]);
    let original = source.image(&id).unwrap();
    let copy = target.image(&id).unwrap();
    assert_eq!(copy.tags, original.tags);
    assert_eq!(
        copy.manifest, original.manifest,
        "gzip layers are stored as they are, so the manifest is the same"
    );
    assert_eq!(copy.layers, original.layers);
    assert_eq!(snapshot_trees(&target, &id), snapshot_trees(&source, &id));
    assert!(target.check().unwrap().is_empty());
    // Loading twice changes nothing and reports the same.
    assert_eq!(load(&mut target, &bytes).unwrap(), loaded);
}

#[test]
fn archives_are_both_docker_and_oci_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = store(dir.path(), "source");
    let id = import(&mut source, &rootfs("a\n"), Some("app:1"), "one");
    let bytes = save(&source, &["app:1"]);
    assert_eq!(bytes, save(&source, &["app:1"]), "same images, same bytes");
    let found = entries(&bytes);
    let record = source.image(&id).unwrap();
    let mut names: Vec<&str> = found.keys().map(String::as_str).collect();
    names.retain(|name| !name.starts_with("blobs/sha256/"));
    assert_eq!(
        names,
        [
            "blobs/",
            "index.json",
            "manifest.json",
            "oci-layout",
            "repositories"
        ]
    );
    let manifest_json: serde_json::Value = serde_json::from_slice(&found["manifest.json"]).unwrap();
    let layer = record.layers[0].blob;
    assert_eq!(
        manifest_json,
        serde_json::json!([{
            "Config": format!("blobs/sha256/{}", id.hex()),
            "RepoTags": ["app:1"],
            "Layers": [format!("blobs/sha256/{}", layer.hex())],
        }])
    );
    let index: Index = serde_json::from_slice(&found["index.json"]).unwrap();
    assert_eq!(index.manifests.len(), 1);
    assert_eq!(index.manifests[0].digest, record.manifest);
    assert_eq!(
        index.manifests[0].annotations["io.containerd.image.name"],
        "docker.io/library/app:1"
    );
    assert_eq!(
        index.manifests[0].annotations["org.opencontainers.image.ref.name"],
        "1"
    );
    assert_eq!(found["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
    for (name, content) in &found {
        if let Some(hex) = name.strip_prefix("blobs/sha256/")
            && !hex.is_empty()
        {
            assert_eq!(Digest::of(content).hex(), hex, "{name}");
        }
    }
    let mut archive = tar::Archive::new(bytes.as_slice());
    for entry in archive.entries().unwrap() {
        let header = entry.unwrap().header().clone();
        assert_eq!(
            (
                header.mtime().unwrap(),
                header.uid().unwrap(),
                header.gid().unwrap()
            ),
            (0, 0, 0)
        );
    }
}

#[test]
fn images_sharing_a_layer_share_its_blob_in_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = store(dir.path(), "source");
    let content = rootfs("shared\n");
    let first = import(&mut source, &content, Some("first:1"), "first");
    let second = import(&mut source, &content, Some("second:1"), "second");
    assert_ne!(first, second);
    let bytes = save(&source, &["first:1", "second:1"]);
    assert_eq!(bytes, save(&source, &["second:1", "first:1"]));
    let found = entries(&bytes);
    let blobs: Vec<&String> = found
        .keys()
        .filter(|name| name.len() > "blobs/sha256/".len() && name.starts_with("blobs/sha256/"))
        .collect();
    assert_eq!(blobs.len(), 5, "2 configs, 2 manifests, 1 layer: {blobs:?}");

    let mut target = store(dir.path(), "target");
    let loaded = load(&mut target, &bytes).unwrap();
    let mut ids: Vec<Digest> = loaded.iter().map(|image| image.id).collect();
    ids.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(
        target.image(&first).unwrap().layers,
        target.image(&second).unwrap().layers
    );
}

#[test]
fn an_image_saved_by_id_has_no_tags_and_loads_untagged() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = store(dir.path(), "source");
    let id = import(&mut source, &rootfs("x\n"), Some("named:1"), "one");
    let bytes = save(&source, &[&id.hex()[..12]]);
    let found = entries(&bytes);
    let items: serde_json::Value = serde_json::from_slice(&found["manifest.json"]).unwrap();
    assert_eq!(items[0]["RepoTags"], serde_json::Value::Null);
    assert!(!found.contains_key("repositories"));
    let index: Index = serde_json::from_slice(&found["index.json"]).unwrap();
    assert!(index.manifests[0].annotations.is_empty());
    let mut target = store(dir.path(), "target");
    let loaded = load(&mut target, &bytes).unwrap();
    assert_eq!(loaded[0].id, id);
    assert!(loaded[0].tags.is_empty());
    assert!(target.image(&id).unwrap().tags.is_empty());
}

#[test]
fn saving_an_unknown_image_fails_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = store(dir.path(), "source");
    import(&mut source, &rootfs("x\n"), Some("known:1"), "one");
    for name in [
        "unknown",
        "known:2",
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        let error =
            archive::plan_save(&source, &["known:1".to_string(), name.to_string()]).unwrap_err();
        assert!(
            matches!(error, ArchiveError::Store(StoreError::NoSuchImage(_))),
            "{name}: {error}"
        );
    }
}

#[test]
fn a_corrupt_blob_in_the_store_fails_the_save_naming_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = store(dir.path(), "source");
    let id = import(&mut source, &rootfs("x\n"), Some("known:1"), "one");
    let layer = source.image(&id).unwrap().layers[0].blob;
    let path = source.blobs().path(&layer);
    let mut content = fs::read(&path).unwrap();
    let last = content.len() - 1;
    content[last] ^= 0xff;
    fs::write(&path, content).unwrap();
    let plan = archive::plan_save(&source, &["known:1".to_string()]).unwrap();
    let error = plan.write(&source, &mut Vec::new()).unwrap_err();
    let text = format!("{error}: {}", std::error::Error::source(&error).unwrap());
    assert!(text.contains(&layer.to_string()), "{text}");
}

/// A layer tar for hand-built archives.
fn layer(files: &[(&str, &str)]) -> Vec<u8> {
    let mut tar = TarBuilder::new();
    for (name, content) in files {
        tar = tar.file(name, content.as_bytes());
    }
    tar.finish()
}

fn config(diff_ids: &[Digest]) -> Vec<u8> {
    image::canonical_json(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2020-01-01T00:00:00Z",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "docker_version": "20.10.24",
    }))
    .unwrap()
}

/// A `docker save` archive as Docker 1.10–24 writes it: `<v1 id>/layer.tar`, `<v1 id>/json`,
/// `<v1 id>/VERSION`, `<config hex>.json`, `manifest.json`, `repositories`. A layer already
/// saved for an earlier image is a symlink to the first copy, as Docker writes it.
fn legacy_archive(
    images: &[(&[Vec<u8>], &[&str])],
    config_of: impl Fn(&[Digest]) -> Vec<u8>,
) -> Vec<u8> {
    let mut tar = TarBuilder::new();
    let mut items = Vec::new();
    let mut saved: BTreeMap<Digest, String> = BTreeMap::new();
    for (layers, tags) in images {
        let diff_ids: Vec<Digest> = layers.iter().map(|layer| Digest::of(layer)).collect();
        let mut paths = Vec::new();
        for (position, layer) in layers.iter().enumerate() {
            let v1 = Digest::of(format!("v1 {} {position}", diff_ids[position]).as_bytes()).hex();
            tar = tar
                .directory(&format!("{v1}/"))
                .file(&format!("{v1}/VERSION"), b"1.0")
                .file(&format!("{v1}/json"), br#"{"id":"x"}"#);
            match saved.get(&diff_ids[position]) {
                Some(first) => {
                    tar = tar.symlink(&format!("{v1}/layer.tar"), &format!("../{first}/layer.tar"));
                }
                None => {
                    tar = tar.file(&format!("{v1}/layer.tar"), layer);
                    saved.insert(diff_ids[position], v1.clone());
                }
            }
            paths.push(format!("{v1}/layer.tar"));
        }
        let config = config_of(&diff_ids);
        let config_name = format!("{}.json", Digest::of(&config).hex());
        tar = tar.file(&config_name, &config);
        items.push(serde_json::json!({"Config": config_name, "RepoTags": tags, "Layers": paths}));
    }
    tar.file("manifest.json", &serde_json::to_vec(&items).unwrap())
        .file("repositories", b"{}\n")
        .finish()
}

#[test]
fn docker_1_10_to_24_archives_load_with_symlinked_layers_and_shared_layers_at_new_chains() {
    let base = layer(&[("etc/os-release", "base\n")]);
    let app = layer(&[("app/main", "app\n")]);
    // `solo` has `app` as its first layer: the same layer at another chain ID needs a second
    // snapshot, made from the stored blob.
    let bytes = legacy_archive(
        &[
            (&[base.clone(), app.clone()], &["app:1.0"]),
            (
                std::slice::from_ref(&app),
                &["solo:latest", "registry.example:5000/team/solo:2"],
            ),
        ],
        config,
    );
    let dir = tempfile::tempdir().unwrap();
    let mut target = store(dir.path(), "target");
    let loaded = load(&mut target, &bytes).unwrap();
    assert_eq!(loaded.len(), 2);
    let tags: Vec<Vec<String>> = loaded
        .iter()
        .map(|image| image.tags.iter().map(Reference::familiar).collect())
        .collect();
    assert_eq!(
        tags,
        [
            vec!["app:1.0".to_string()],
            vec![
                "solo:latest".to_string(),
                "registry.example:5000/team/solo:2".to_string()
            ]
        ]
    );
    let app_image = target.image(&loaded[0].id).unwrap();
    assert_eq!(
        loaded[0].id,
        Digest::of(&config(&[Digest::of(&base), Digest::of(&app)]))
    );
    assert_eq!(app_image.layers.len(), 2);
    for layer in &app_image.layers {
        assert_eq!(
            layer.media_type,
            image::MEDIA_TYPE_OCI_LAYER_GZIP,
            "stored as gzip"
        );
    }
    let manifest: Manifest =
        serde_json::from_slice(&target.blobs().read(&app_image.manifest).unwrap()).unwrap();
    assert_eq!(
        manifest
            .layers
            .iter()
            .map(|layer| layer.digest)
            .collect::<Vec<_>>(),
        app_image
            .layers
            .iter()
            .map(|layer| layer.blob)
            .collect::<Vec<_>>(),
        "the recorded manifest describes the stored blobs"
    );
    let solo = target.image(&loaded[1].id).unwrap();
    assert_ne!(solo.layers[0].chain_id, app_image.layers[1].chain_id);
    assert_eq!(
        fs::read_to_string(
            target
                .snapshot_path(&solo.layers[0].chain_id)
                .join("app/main")
        )
        .unwrap(),
        "app\n"
    );
    assert_eq!(
        fs::read_to_string(
            target
                .snapshot_path(&app_image.layers[1].chain_id)
                .join("app/main")
        )
        .unwrap(),
        "app\n"
    );
    assert!(target.check().unwrap().is_empty());
}

#[test]
fn compressed_archives_are_detected_by_their_magic() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = store(dir.path(), "source");
    let id = import(&mut source, &rootfs("z\n"), Some("z:1"), "one");
    let bytes = save(&source, &["z:1"]);
    let zstd = zstd::encode_all(bytes.as_slice(), 3).unwrap();
    for (name, compressed) in [("gzip", gzip(&bytes)), ("zstd", zstd)] {
        let mut target = store(dir.path(), name);
        assert_eq!(load(&mut target, &compressed).unwrap()[0].id, id, "{name}");
    }
}

/// An OCI image layout directory with one uncompressed-layer image, as skopeo writes one.
fn oci_layout(dir: &Path, layer_bytes: &[u8], ref_name: &str) -> (Digest, Digest) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let digest = Digest::of(bytes);
        fs::write(blobs.join(digest.hex()), bytes).unwrap();
        Descriptor::new("x", digest, bytes.len() as u64)
    };
    let config_bytes = config(&[Digest::of(layer_bytes)]);
    let mut config_descriptor = put(&config_bytes);
    config_descriptor.media_type = image::MEDIA_TYPE_OCI_CONFIG.to_string();
    let mut layer_descriptor = put(layer_bytes);
    layer_descriptor.media_type = image::MEDIA_TYPE_OCI_LAYER.to_string();
    let manifest = Manifest::oci(config_descriptor.clone(), vec![layer_descriptor]);
    let mut manifest_descriptor = put(&image::canonical_json(&manifest).unwrap());
    manifest_descriptor.media_type = image::MEDIA_TYPE_OCI_MANIFEST.to_string();
    manifest_descriptor.annotations.insert(
        "org.opencontainers.image.ref.name".to_string(),
        ref_name.to_string(),
    );
    let index = Index {
        schema_version: 2,
        media_type: None,
        manifests: vec![manifest_descriptor.clone()],
        annotations: BTreeMap::new(),
    };
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    (config_descriptor.digest, manifest_descriptor.digest)
}

#[test]
fn oci_layout_directories_load_with_tags_from_full_reference_names() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let layer_bytes = layer(&[("hello", "world\n")]);
    let (id, manifest) = oci_layout(&layout, &layer_bytes, "localhost:5000/app:2");
    let mut target = store(dir.path(), "gzip");
    let loaded = archive::load_layout(&mut target, &layout, &LoadOptions::default()).unwrap();
    assert_eq!(loaded[0].id, id);
    assert_eq!(loaded[0].tags[0].to_string(), "localhost:5000/app:2");
    let record = target.image(&id).unwrap();
    assert_ne!(
        record.manifest, manifest,
        "the layer is stored as gzip: a new manifest"
    );
    assert_eq!(record.layers[0].diff_id, Digest::of(&layer_bytes));
    assert_eq!(
        fs::read_to_string(
            target
                .snapshot_path(&record.layers[0].chain_id)
                .join("hello")
        )
        .unwrap(),
        "world\n"
    );

    // Kept uncompressed, the layer keeps its digest and the manifest its bytes.
    let mut plain = store(dir.path(), "plain");
    let options = LoadOptions {
        plain_layers: Compression::None,
    };
    archive::load_layout(&mut plain, &layout, &options).unwrap();
    assert_eq!(plain.image(&id).unwrap().manifest, manifest);

    // A bare tag in ref.name names no repository: the image loads untagged.
    let bare = dir.path().join("bare");
    oci_layout(&bare, &layer_bytes, "latest");
    let mut untagged = store(dir.path(), "untagged");
    let loaded = archive::load_layout(&mut untagged, &bare, &LoadOptions::default()).unwrap();
    assert!(loaded[0].tags.is_empty());
}

#[test]
fn a_saved_archive_extracted_is_an_oci_layout_kiln_loads() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = store(dir.path(), "source");
    let id = import(&mut source, &rootfs("layout\n"), Some("lay:out"), "one");
    let bytes = save(&source, &["lay:out"]);
    let layout = dir.path().join("layout");
    tar::Archive::new(bytes.as_slice()).unpack(&layout).unwrap();
    // Only the OCI part: without manifest.json the index is what counts.
    fs::remove_file(layout.join("manifest.json")).unwrap();
    let mut target = store(dir.path(), "target");
    let loaded = archive::load_layout(&mut target, &layout, &LoadOptions::default()).unwrap();
    assert_eq!(loaded[0].id, id);
    assert_eq!(loaded[0].tags[0].familiar(), "lay:out");
    assert_eq!(
        target.image(&id).unwrap().manifest,
        source.image(&id).unwrap().manifest
    );
}

/// Asserts that loading fails with an error whose text (with causes) names `digest`, and that
/// nothing was recorded.
fn refused(bytes: &[u8], digest: &Digest) {
    let dir = tempfile::tempdir().unwrap();
    let mut target = store(dir.path(), "target");
    let error = load(&mut target, bytes).unwrap_err();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    assert!(text.contains(&digest.to_string()), "{text}");
    assert!(target.images().unwrap().is_empty(), "nothing is recorded");
}

#[test]
fn content_that_does_not_match_its_digest_is_refused_and_nothing_is_recorded() {
    let good = layer(&[("file", "good\n")]);
    let evil = layer(&[("file", "evil\n")]);

    // The config says one diff ID, the layer has another.
    let bytes = legacy_archive(&[(std::slice::from_ref(&evil), &["x:1"])], |_| {
        config(&[Digest::of(&good)])
    });
    refused(&bytes, &Digest::of(&good));

    // A config whose name is not its digest.
    let honest = config(&[Digest::of(&good)]);
    let named = Digest::of(&honest);
    let mut altered = honest.clone();
    altered.push(b' ');
    let manifest = serde_json::json!([{
        "Config": format!("{}.json", named.hex()),
        "RepoTags": ["x:1"],
        "Layers": ["l/layer.tar"],
    }]);
    let bytes = TarBuilder::new()
        .file("l/layer.tar", &good)
        .file(&format!("{}.json", named.hex()), &altered)
        .file("manifest.json", manifest.to_string().as_bytes())
        .finish();
    refused(&bytes, &named);

    // An OCI blob whose content is not what its name says.
    let dir = tempfile::tempdir().unwrap();
    let mut source = store(dir.path(), "source");
    let id = import(&mut source, &rootfs("x\n"), Some("x:1"), "one");
    let saved = save(&source, &["x:1"]);
    let layer_blob = source.image(&id).unwrap().layers[0].blob;
    let mut tampered = TarBuilder::new();
    for (name, content) in entries(&saved) {
        if name.ends_with('/') {
            continue;
        }
        let content = if name == format!("blobs/sha256/{}", layer_blob.hex()) {
            gzip(&layer(&[("file", "tampered\n")]))
        } else {
            content
        };
        tampered = tampered.file(&name, &content);
    }
    refused(&tampered.finish(), &layer_blob);
}

#[test]
fn hostile_entry_names_are_never_paths() {
    let good = layer(&[("file", "good\n")]);
    let config_bytes = config(&[Digest::of(&good)]);
    let config_name = format!("{}.json", Digest::of(&config_bytes).hex());
    let dir = tempfile::tempdir().unwrap();
    let escape = dir.path().join("escaped");
    let bytes = TarBuilder::new()
        .raw_file(&format!("../../../../../../..{}", escape.display()), &good)
        .raw_file(&escape.display().to_string(), &good)
        .file("l/layer.tar", &good)
        .symlink("link", "/etc")
        .file(&config_name, &config_bytes)
        .file(
            "manifest.json",
            serde_json::json!([{"Config": config_name, "RepoTags": ["x:1"], "Layers": ["../../l/layer.tar"]}]).to_string().as_bytes(),
        )
        .finish();
    let mut target = store(dir.path(), "target");
    let error = load(&mut target, &bytes).unwrap_err();
    assert!(
        matches!(error, ArchiveError::MissingEntry { .. }),
        "{error}"
    );
    assert!(!escape.exists());
    assert!(target.images().unwrap().is_empty());
    // And what was unpacked for it went away with the temporary snapshots.
    assert_eq!(fs::read_dir(target.layout().tmp()).unwrap().count(), 0);
}

#[test]
fn archives_without_images_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut target = store(dir.path(), "target");
    let bytes = TarBuilder::new().file("hello.txt", b"hello").finish();
    assert!(matches!(
        load(&mut target, &bytes),
        Err(ArchiveError::NotAnImageArchive)
    ));
    let bytes = TarBuilder::new().file("manifest.json", b"[]").finish();
    assert!(matches!(
        load(&mut target, &bytes),
        Err(ArchiveError::NoImage)
    ));
}

/// A layer of pseudo-random text files (compressible, but not trivially), so that gzip takes a
/// while and layers overlap as they compress.
fn text_layer(seed: u64, files: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut tar = TarBuilder::new().directory(&format!("layer{seed}/"));
    for file in 0..files {
        let mut content = String::new();
        for _ in 0..2_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            content.push_str(&format!("{:x} ", state >> 44));
        }
        tar = tar.file(&format!("layer{seed}/{file}.txt"), content.as_bytes());
    }
    tar.finish()
}

/// Reads at most `size` bytes at a time, as a pipe may.
struct Trickle<'a> {
    bytes: &'a [u8],
    size: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let wanted = buf.len().min(self.size);
        self.bytes.read(&mut buf[..wanted])
    }
}

/// Uncompressed layers are gzipped on threads of their own, up to one per CPU, while the
/// archive is read on. Their blobs are digests, so they must depend on the layers' bytes only:
/// not on how the archive arrives (a file, a pipe with short reads) nor on the threads. kiln
/// before 2026-11-26 compressed each read as it came, and zlib-rs's output depends on how its
/// input is split: the same archive read from a file and from a pipe gave other blobs.
#[test]
fn uncompressed_layers_get_the_same_blobs_however_the_archive_arrives() {
    // More layers than CPUs (up to a point), so that some wait for a compressor to be free.
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let layers: Vec<Vec<u8>> = (0..(cpus + 3).min(20) as u64)
        .map(|seed| text_layer(seed, 40))
        .collect();
    let bytes = legacy_archive(&[(&layers, &["many:1"])], config);
    let dir = tempfile::tempdir().unwrap();
    let mut loaded_blobs = Vec::new();
    for (name, size) in [("whole", bytes.len()), ("pipe", 4096), ("odd", 1000)] {
        let mut target = store(dir.path(), name);
        let reader = Trickle {
            bytes: &bytes,
            size,
        };
        let loaded = archive::load(&mut target, reader, &LoadOptions::default()).unwrap();
        let image = target.image(&loaded[0].id).unwrap();
        let blobs: Vec<Digest> = image.layers.iter().map(|layer| layer.blob).collect();
        // Each blob is its own layer, gzipped.
        for (blob, layer) in blobs.iter().zip(&layers) {
            let mut unzipped = Vec::new();
            flate2::read::GzDecoder::new(target.blobs().read(blob).unwrap().as_slice())
                .read_to_end(&mut unzipped)
                .unwrap();
            assert!(unzipped == *layer, "blob {blob} holds another layer");
        }
        assert!(target.check().unwrap().is_empty());
        // No spill file or snapshot is left behind.
        assert_eq!(fs::read_dir(target.layout().tmp()).unwrap().count(), 0);
        loaded_blobs.push((image.manifest, blobs));
    }
    assert_eq!(loaded_blobs[0], loaded_blobs[1]);
    assert_eq!(loaded_blobs[0], loaded_blobs[2]);
}

/// An archive may hold a name twice; as when extracting it, the later entry wins, even when the
/// earlier one is a layer still being compressed.
#[test]
fn a_later_entry_replaces_a_layer_of_the_same_name_still_compressing() {
    let first = text_layer(1, 40);
    let second = layer(&[("etc/which", "second\n")]);
    let config_bytes = config(&[Digest::of(&second)]);
    let config_name = format!("{}.json", Digest::of(&config_bytes).hex());
    let bytes = TarBuilder::new()
        .file("l/layer.tar", &first)
        .file("l/layer.tar", &second)
        .file(&config_name, &config_bytes)
        .file(
            "manifest.json",
            serde_json::json!([{"Config": config_name, "RepoTags": ["twice:1"], "Layers": ["l/layer.tar"]}])
                .to_string()
                .as_bytes(),
        )
        .finish();
    let dir = tempfile::tempdir().unwrap();
    let mut target = store(dir.path(), "target");
    let loaded = load(&mut target, &bytes).unwrap();
    let image = target.image(&loaded[0].id).unwrap();
    assert_eq!(
        fs::read_to_string(
            target
                .snapshot_path(&image.layers[0].chain_id)
                .join("etc/which")
        )
        .unwrap(),
        "second\n"
    );
    assert_eq!(fs::read_dir(target.layout().tmp()).unwrap().count(), 0);
}
