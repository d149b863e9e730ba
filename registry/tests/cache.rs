//! Build-cache export and import (`kiln_registry::cache`) through a real registry (Debian's
//! `docker-registry`) and an OCI layout directory, between two stores.
#![allow(clippy::print_stderr)]

mod common;

use std::collections::BTreeMap;
use std::fs;

use common::{RegistryServer, connect, layer_tar, options, push_raw, snapshot_file, store};
use kiln_cache::buildcache::NewCacheRecord;
use kiln_cache::digest::Digest;
use kiln_cache::reference::Reference;
use kiln_cache::store::Store;
use kiln_registry::cache::{self, CacheError, Location};
use kiln_registry::{PullOptions, Silent};

/// Store A with the image `base` pulled from `server` and one build-cache record whose result
/// is that image (config and both layers). Returns the store and the record's key.
fn store_with_record(server: &RegistryServer, dir: &std::path::Path) -> (Store, Digest) {
    let registry = connect(server, dir);
    let layers = vec![
        layer_tar(&[("bottom.txt", b"bottom layer\n")]),
        layer_tar(&[("top.txt", b"top layer\n")]),
    ];
    push_raw(&registry, "base", "latest", &layers, "amd64");
    let mut a = store(dir, "a");
    let reference = Reference::parse(&format!("{}/base:latest", server.domain)).unwrap();
    let pulled = kiln_registry::pull(
        &mut a,
        &registry,
        &reference,
        &PullOptions::default(),
        &Silent,
    )
    .unwrap();
    let image = a.image(&pulled.id).unwrap();
    let key = Digest::of(b"the step's cache key");
    let inputs = BTreeMap::from([("/src/a.c".to_string(), Digest::of(b"a.c").to_string())]);
    let _ingest = a.ingest().unwrap();
    a.build_cache_insert(&NewCacheRecord {
        key,
        definition: Digest::of(b"the step's definition"),
        description: "RUN make",
        inputs: &inputs,
        config: pulled.id,
        layers: &image.layers,
        size: 42,
    })
    .unwrap();
    (a, key)
}

/// Checks that `store` has the record `key` exactly as `original` has it, content included.
fn assert_same_record(original: &Store, store: &Store, key: &Digest) {
    let want = original.build_cache_lookup(key).unwrap().unwrap();
    let got = store.build_cache_lookup(key).unwrap().unwrap();
    assert_eq!(got.definition, want.definition);
    assert_eq!(got.description, want.description);
    assert_eq!(got.inputs, want.inputs);
    assert_eq!(got.config, want.config);
    assert_eq!(got.size, want.size);
    let chain = |record: &kiln_cache::buildcache::CacheRecord| {
        record
            .layers
            .iter()
            .map(|layer| (layer.chain_id, layer.diff_id))
            .collect::<Vec<_>>()
    };
    assert_eq!(chain(&got), chain(&want));
    assert_eq!(
        snapshot_file(store, &got.layers[1].chain_id, "top.txt"),
        b"top layer\n"
    );
}

#[test]
fn records_round_trip_through_a_registry_and_a_directory_into_fresh_stores() {
    let Some(server) = RegistryServer::start(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, key) = store_with_record(&server, dir.path());
    let records = a.build_cache_records().unwrap();
    let client = options(dir.path());

    let local = Location::Local {
        directory: dir.path().join("layout"),
        tag: "v1".to_string(),
    };
    let exported = cache::export(&a, &records, &local, false, &client).unwrap();
    assert_eq!(exported.records, 1);
    // Two layers, one record config, the cache config.
    assert_eq!((exported.blobs, exported.written), (4, 4));
    let remote = Location::Registry(
        Reference::parse(&format!("{}/team/cache:main", server.domain)).unwrap(),
    );
    let exported = cache::export(&a, &records, &remote, false, &client).unwrap();
    // Again: the registry has every blob, only the manifest is put.
    let again = cache::export(&a, &records, &remote, false, &client).unwrap();
    assert_eq!(again.written, 0);
    assert_eq!(again.digest, exported.digest);

    for (name, location) in [("from-layout", &local), ("from-registry", &remote)] {
        let mut fresh = store(dir.path(), name);
        let imported = cache::import(&mut fresh, location, &client, &Silent).unwrap();
        assert_eq!((imported.records, imported.present), (1, 0), "{name}");
        assert_same_record(&a, &fresh, &key);
        // Importing again finds the record present and fetches nothing.
        let imported = cache::import(&mut fresh, location, &client, &Silent).unwrap();
        assert_eq!((imported.records, imported.present), (0, 1), "{name}");
    }

    // Layers the store has are not fetched again: only the record and its config are new.
    let mut has_layers = store(dir.path(), "has-layers");
    let base = Reference::parse(&format!("{}/base:latest", server.domain)).unwrap();
    kiln_registry::pull(
        &mut has_layers,
        &connect(&server, dir.path()),
        &base,
        &PullOptions::default(),
        &Silent,
    )
    .unwrap();
    let recorded = kiln_registry::progress::Recorded::default();
    let imported = cache::import(&mut has_layers, &remote, &client, &recorded).unwrap();
    assert_eq!(imported.records, 1);
    let events = recorded.events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events
            .iter()
            .all(|event| matches!(event, kiln_registry::Event::LayerExists(_))),
        "{events:?}"
    );
    assert_same_record(&a, &has_layers, &key);

    // A tag the directory does not have is no cache, not an error.
    let other_tag = Location::Local {
        directory: dir.path().join("layout"),
        tag: "v2".to_string(),
    };
    let mut fresh = store(dir.path(), "other-tag");
    let imported = cache::import(&mut fresh, &other_tag, &client, &Silent).unwrap();
    assert_eq!(imported.digest, None);
}

#[test]
fn an_image_is_not_a_cache_and_a_corrupt_cache_records_nothing() {
    let Some(server) = RegistryServer::start(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = store_with_record(&server, dir.path());
    let client = options(dir.path());

    let image =
        Location::Registry(Reference::parse(&format!("{}/base:latest", server.domain)).unwrap());
    let mut fresh = store(dir.path(), "fresh");
    let error = cache::import(&mut fresh, &image, &client, &Silent).unwrap_err();
    assert!(matches!(error, CacheError::NotACache { .. }), "{error}");

    let layout = dir.path().join("layout");
    let local = Location::Local {
        directory: layout.clone(),
        tag: "latest".to_string(),
    };
    cache::export(
        &a,
        &a.build_cache_records().unwrap(),
        &local,
        false,
        &client,
    )
    .unwrap();
    // Damage the biggest layer blob (the bottom layer's gzip).
    let mut blobs: Vec<_> = fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    blobs.sort_by_key(|path| fs::metadata(path).unwrap().len());
    let mut damaged = None;
    for path in &blobs {
        let bytes = fs::read(path).unwrap();
        if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut bytes = bytes;
            let last = bytes.len() - 1;
            bytes[last / 2] ^= 0xff;
            fs::write(path, bytes).unwrap();
            damaged = Some(path.clone());
            break;
        }
    }
    assert!(damaged.is_some(), "no layer blob in {blobs:?}");
    let error = cache::import(&mut fresh, &local, &client, &Silent).unwrap_err();
    assert!(
        matches!(
            error,
            CacheError::Registry(
                kiln_registry::RegistryError::DigestMismatch { .. }
                    | kiln_registry::RegistryError::Layer { .. }
            )
        ),
        "{error}"
    );
    assert!(fresh.build_cache_records().unwrap().is_empty());
}

#[test]
fn cache_mounts_travel_with_their_content_mode_and_owner_and_never_replace_local_ones() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let a = store(dir.path(), "a");
    let id = Digest::of(b"pkgs").hex();
    let mount = dir.path().join("a/cache-mounts").join(&id);
    fs::create_dir_all(mount.join("sub")).unwrap();
    fs::write(mount.join("sub/file"), "cached download\n").unwrap();
    fs::set_permissions(&mount, fs::Permissions::from_mode(0o750)).unwrap();
    // What the builder leaves beside mounts is not a mount.
    fs::write(
        dir.path().join("a/cache-mounts").join(format!("{id}.lock")),
        "",
    )
    .unwrap();
    let client = options(dir.path());
    let local = Location::Local {
        directory: dir.path().join("layout"),
        tag: "latest".to_string(),
    };
    // Without cache-mounts=true nothing of them is exported.
    cache::export(&a, &[], &local, false, &client).unwrap();
    let mut fresh = store(dir.path(), "without");
    let imported = cache::import(&mut fresh, &local, &client, &Silent).unwrap();
    assert_eq!(imported.mounts, 0);

    let exported = cache::export(&a, &[], &local, true, &client).unwrap();
    // The mount's tar and the cache config.
    assert_eq!(exported.blobs, 2);
    let mut b = store(dir.path(), "b");
    let imported = cache::import(&mut b, &local, &client, &Silent).unwrap();
    assert_eq!((imported.mounts, imported.mounts_present), (1, 0));
    let copy = dir.path().join("b/cache-mounts").join(&id);
    assert_eq!(
        fs::read_to_string(copy.join("sub/file")).unwrap(),
        "cached download\n"
    );
    let metadata = fs::metadata(&copy).unwrap();
    assert_eq!(metadata.mode() & 0o7777, 0o750);
    assert_eq!(metadata.uid(), fs::metadata(&mount).unwrap().uid());

    // A store with its own mount of that id keeps it.
    let mut c = store(dir.path(), "c");
    let own = dir.path().join("c/cache-mounts").join(&id);
    fs::create_dir_all(&own).unwrap();
    fs::write(own.join("mine"), "local\n").unwrap();
    let imported = cache::import(&mut c, &local, &client, &Silent).unwrap();
    assert_eq!((imported.mounts, imported.mounts_present), (0, 1));
    assert!(!own.join("sub").exists());
}
