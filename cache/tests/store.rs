//! The store: images, tags, lookups, garbage collection, verification, several processes at
//! once and crashes in the middle of writes.
#![allow(clippy::print_stderr)]

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kiln_cache::digest::Digest;
use kiln_cache::image::{self, Descriptor, ImageConfig, Manifest, RootFs};
use kiln_cache::store::{LayerRecord, NewImage, Problem, Store, StoreError};

/// Stores a one-layer image whose layer holds `file` with `content`; returns its ID.
fn add_image(store: &mut Store, content: &str) -> Digest {
    let _ingest = store.ingest().unwrap();
    let layer_blob = store.blobs().put_bytes(content.as_bytes()).unwrap();
    let diff_id = Digest::of(format!("diff:{content}").as_bytes());
    let record = LayerRecord {
        chain_id: diff_id,
        diff_id,
        blob: layer_blob.digest,
        media_type: image::MEDIA_TYPE_OCI_LAYER_GZIP.to_string(),
        blob_size: layer_blob.size,
        size: content.len() as u64,
    };
    if store.snapshot(&diff_id).unwrap().is_none() {
        let prepared = store.prepare_snapshot().unwrap();
        fs::write(prepared.path().join("fs/file"), content).unwrap();
        store.commit_snapshot(prepared, &record, None).unwrap();
    }
    let config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![diff_id],
        },
        ..ImageConfig::default()
    };
    let config_blob = store
        .blobs()
        .put_bytes(&image::canonical_json(&config).unwrap())
        .unwrap();
    let manifest = Manifest::oci(
        Descriptor::new(
            image::MEDIA_TYPE_OCI_CONFIG,
            config_blob.digest,
            config_blob.size,
        ),
        vec![Descriptor::new(
            image::MEDIA_TYPE_OCI_LAYER_GZIP,
            layer_blob.digest,
            layer_blob.size,
        )],
    );
    let manifest_blob = store
        .blobs()
        .put_bytes(&image::canonical_json(&manifest).unwrap())
        .unwrap();
    store
        .add_image(&NewImage {
            id: config_blob.digest,
            manifest: manifest_blob.digest,
            manifest_media_type: image::MEDIA_TYPE_OCI_MANIFEST.into(),
            created: None,
            layers: vec![record],
        })
        .unwrap();
    config_blob.digest
}

#[test]
fn images_are_found_by_tag_digest_and_id_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let id = add_image(&mut store, "one");
    store.tag("docker.io/library/one:latest", &id).unwrap();
    store.tag("docker.io/library/one:v1", &id).unwrap();
    assert_eq!(
        store
            .lookup_reference("docker.io/library/one:latest")
            .unwrap(),
        Some(id)
    );
    assert_eq!(store.lookup_id(&id.short()).unwrap(), Some(id));
    assert_eq!(store.lookup_id(&id.to_string()).unwrap(), Some(id));
    assert_eq!(store.lookup_id("zz").unwrap(), None);
    let record = store.image(&id).unwrap();
    assert_eq!(
        record.tags,
        ["docker.io/library/one:latest", "docker.io/library/one:v1"]
    );
    assert_eq!(record.layers.len(), 1);
    assert_eq!(record.size, 3);
    assert!(store.untag("docker.io/library/one:v1").unwrap());
    assert!(!store.untag("docker.io/library/one:v1").unwrap());
    assert!(matches!(
        store.tag("x:y", &Digest::of(b"nothing")),
        Err(StoreError::NoSuchImage(_))
    ));
}

#[test]
fn a_tag_moves_to_the_newest_image() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let first = add_image(&mut store, "first");
    let second = add_image(&mut store, "second");
    store.tag("docker.io/library/app:latest", &first).unwrap();
    store.tag("docker.io/library/app:latest", &second).unwrap();
    assert!(store.image(&first).unwrap().tags.is_empty());
    assert_eq!(
        store.image(&second).unwrap().tags,
        ["docker.io/library/app:latest"]
    );
    assert_eq!(store.images().unwrap().len(), 2);
}

#[test]
fn garbage_collection_removes_only_unreferenced_content() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let kept = add_image(&mut store, "kept");
    let removed = add_image(&mut store, "removed");
    let removed_layers = store.image(&removed).unwrap().layers;
    store.remove_image(&removed).unwrap();
    let freed = store.collect_garbage().unwrap();
    assert!(freed > 0);
    assert!(!store.blobs().contains(&removed));
    assert!(!store.snapshot_path(&removed_layers[0].chain_id).exists());
    assert!(store.blobs().contains(&kept));
    assert!(store.check().unwrap().is_empty());
}

#[test]
fn the_same_content_is_one_image() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let a = add_image(&mut store, "shared");
    let b = add_image(&mut store, "shared");
    assert_eq!(a, b, "same content, same image ID");
    assert_eq!(store.images().unwrap().len(), 1);
}

#[test]
fn check_names_corrupt_and_missing_content() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let id = add_image(&mut store, "content");
    let record = store.image(&id).unwrap();
    fs::write(store.blobs().path(&record.layers[0].blob), b"tampered").unwrap();
    fs::remove_dir_all(store.snapshot_path(&record.layers[0].chain_id)).unwrap();
    let problems = store.check().unwrap();
    assert!(
        problems.iter().any(
            |p| matches!(p, Problem::CorruptBlob { blob, .. } if *blob == record.layers[0].blob)
        ),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, Problem::MissingSnapshot { .. })),
        "{problems:?}"
    );
}

#[test]
fn a_store_of_another_layout_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path()).unwrap();
    fs::write(dir.path().join("store-version"), "99\n").unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Version { .. })
    ));
}

/// Child-process body for the concurrency tests: adds images to the store named by the
/// environment. Does nothing when run on its own.
#[test]
fn child_writer() {
    let (Ok(root), Ok(name)) = (
        std::env::var("KILN_TEST_STORE"),
        std::env::var("KILN_TEST_WRITER"),
    ) else {
        return;
    };
    let count: usize = std::env::var("KILN_TEST_COUNT").map_or(20, |n| n.parse().unwrap());
    let mut store = Store::open(&root).unwrap();
    for index in 0..count {
        let id = add_image(&mut store, &format!("{name}-{index}"));
        store
            .tag(&format!("docker.io/library/{name}:{index}"), &id)
            .unwrap();
        // Every writer also adds the same image, racing for the same snapshot and blobs.
        let shared = add_image(&mut store, "shared-by-all");
        store
            .tag("docker.io/library/shared:latest", &shared)
            .unwrap();
    }
}

fn spawn_writer(root: &Path, name: &str, count: usize) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env("KILN_TEST_STORE", root)
        .env("KILN_TEST_WRITER", name)
        .env("KILN_TEST_COUNT", count.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn several_processes_write_to_one_store_at_once() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path()).unwrap();
    let children: Vec<_> = (0..4)
        .map(|n| spawn_writer(dir.path(), &format!("writer{n}"), 15))
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let store = Store::open(dir.path()).unwrap();
    for n in 0..4 {
        for index in 0..15 {
            let reference = format!("docker.io/library/writer{n}:{index}");
            assert!(
                store.lookup_reference(&reference).unwrap().is_some(),
                "{reference}"
            );
        }
    }
    assert_eq!(store.images().unwrap().len(), 4 * 15 + 1);
    assert!(store.check().unwrap().is_empty());
}

#[test]
fn killing_writers_at_any_point_leaves_a_consistent_store() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path()).unwrap();
    for round in 0..6u64 {
        let mut child = spawn_writer(dir.path(), &format!("victim{round}"), 1000);
        std::thread::sleep(Duration::from_millis(40 + round * 37));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let problems = store.check().unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    store.collect_garbage().unwrap();
    assert!(store.check().unwrap().is_empty());
    assert_eq!(
        fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0,
        "leftovers collected"
    );
    assert!(
        !store.images().unwrap().is_empty(),
        "some images were written before the kills"
    );
}

#[test]
fn names_resolve_as_docker_resolves_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let id = add_image(&mut store, "resolve");
    store.tag("docker.io/library/busybox:latest", &id).unwrap();
    store.tag("localhost:5000/team/app:1.0", &id).unwrap();
    for name in [
        "busybox",
        "busybox:latest",
        "docker.io/library/busybox",
        "library/busybox:latest",
        "localhost:5000/team/app:1.0",
        &id.to_string(),
        &id.short(),
        &id.hex()[..5],
    ] {
        assert_eq!(store.resolve(name).unwrap(), id, "{name}");
    }
    assert!(matches!(
        store.resolve("busybox:other"),
        Err(StoreError::NoSuchImage(_))
    ));
    assert!(matches!(
        store.resolve("localhost:5000/team/app"),
        Err(StoreError::NoSuchImage(_))
    ));
}

#[test]
fn removing_one_of_several_tags_only_untags() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let id = add_image(&mut store, "tags");
    store.tag("docker.io/library/app:1", &id).unwrap();
    store.tag("docker.io/library/app:2", &id).unwrap();
    let removals: Vec<String> = store
        .remove("app:1", false)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(removals, ["Untagged: app:1"]);
    let removals: Vec<String> = store
        .remove("app:2", false)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        removals,
        ["Untagged: app:2".to_string(), format!("Deleted: {id}")]
    );
    assert!(store.images().unwrap().is_empty());
}

#[test]
fn removing_by_id_an_image_in_several_repositories_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let id = add_image(&mut store, "repos");
    store.tag("docker.io/library/one:latest", &id).unwrap();
    store.tag("docker.io/library/two:latest", &id).unwrap();
    let error = store.remove(&id.short(), false).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
            id.short()
        )
    );
    let removals: Vec<String> = store
        .remove(&id.short(), true)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        removals,
        [
            "Untagged: one:latest".to_string(),
            "Untagged: two:latest".to_string(),
            format!("Deleted: {id}")
        ]
    );
}

#[test]
fn pruning_removes_dangling_images_or_all() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let tagged = add_image(&mut store, "tagged");
    let dangling = add_image(&mut store, "dangling");
    store
        .tag("docker.io/library/tagged:latest", &tagged)
        .unwrap();
    let removed = store.prune_images(false).unwrap();
    assert_eq!(removed, [kiln_cache::store::Removal::Deleted(dangling)]);
    assert_eq!(store.prune_images(true).unwrap().len(), 2);
    assert!(store.images().unwrap().is_empty());
}

#[test]
fn containers_are_found_by_name_or_id_and_keep_their_image() {
    use kiln_cache::container::{ContainerConfig, ContainerState, Status};
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let image = add_image(&mut store, "base");
    store.tag("docker.io/library/base:latest", &image).unwrap();
    let config = ContainerConfig {
        args: vec!["true".into()],
        ..ContainerConfig::default()
    };
    let named = store
        .create_container(
            &image,
            Some("web"),
            config.clone(),
            "2026-01-01T00:00:00Z".into(),
        )
        .unwrap();
    let random = store
        .create_container(&image, None, config.clone(), "2026-01-02T00:00:00Z".into())
        .unwrap();
    assert!(random.name.contains('_'), "{}", random.name);
    assert!(store.container_dir(&named.id).join("upper").is_dir());
    assert_eq!(store.container("web").unwrap().id, named.id);
    assert_eq!(store.container(&named.id[..6]).unwrap().id, named.id);
    assert_eq!(store.containers().unwrap().len(), 2);
    let error = store
        .create_container(&image, Some("web"), config.clone(), "x".into())
        .unwrap_err();
    assert!(matches!(error, StoreError::NameInUse { .. }), "{error}");
    assert!(matches!(
        store.create_container(&image, Some("-bad"), config, "x".into()),
        Err(StoreError::InvalidName(_))
    ));
    // The image is in use: rmi needs force, and then only untags; prune keeps it.
    assert!(matches!(
        store.remove("base", false),
        Err(StoreError::ImageInUse { .. })
    ));
    assert_eq!(store.remove("base", true).unwrap().len(), 1);
    assert!(store.prune_images(true).unwrap().is_empty());
    assert!(store.image(&image).is_ok());
    let state = ContainerState {
        status: Status::Exited,
        exit_code: 3,
        ..ContainerState::default()
    };
    store.set_container_state(&named.id, &state).unwrap();
    assert_eq!(store.container("web").unwrap().state, state);
    store.remove_container(&named.id).unwrap();
    store.remove_container(&random.id).unwrap();
    assert!(!store.container_dir(&named.id).exists());
    assert!(matches!(
        store.container("web"),
        Err(StoreError::NoSuchContainer(_))
    ));
    assert_eq!(store.prune_images(true).unwrap().len(), 1);
}
