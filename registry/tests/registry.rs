//! Pull and push against a real distribution registry (Debian's `docker-registry` 2.8) on a
//! loopback port. Each test skips, saying why, when the registry binary is missing.

mod common;

use common::{RegistryServer, connect, layer_tar, push_raw, snapshot_file, store};
use kiln_cache::digest::Digest;
use kiln_cache::image;
use kiln_cache::reference::Reference;
use kiln_registry::progress::Recorded;
use kiln_registry::{
    ClientOptions, Event, Platform, PullOptions, PullPolicy, Registry, RegistryError, UploadMode,
};

fn reference(server: &RegistryServer, name: &str) -> Reference {
    Reference::parse(&format!("{}/{name}", server.domain)).unwrap()
}

/// Imports a one-layer image with `files` into a store and tags it.
fn import(
    store: &mut kiln_cache::store::Store,
    tag: &Reference,
    files: &[(&str, &[u8])],
) -> Digest {
    let options = kiln_cache::import::ImportOptions {
        reference: Some(tag.clone().with_default_tag()),
        source: "-".to_string(),
        created: Some("2024-01-01T00:00:00Z".to_string()),
        ..Default::default()
    };
    kiln_cache::import::import_rootfs(store, &layer_tar(files)[..], &options).unwrap()
}

#[test]
fn an_image_pushed_by_another_tool_pulls_into_the_store_like_a_loaded_one() {
    let Some(server) = RegistryServer::start(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let registry = connect(&server, dir.path());
    let layers = vec![
        layer_tar(&[("etc/one", b"first layer")]),
        layer_tar(&[("etc/two", b"second layer")]),
    ];
    let (manifest_bytes, manifest_digest) =
        push_raw(&registry, "team/app", "1.0", &layers, "amd64");

    let mut store = store(dir.path(), "store");
    let progress = Recorded::default();
    let wanted = reference(&server, "team/app:1.0");
    let pulled = kiln_registry::pull(
        &mut store,
        &registry,
        &wanted,
        &PullOptions::default(),
        &progress,
    )
    .unwrap();
    assert!(!pulled.up_to_date);
    assert_eq!(pulled.digest, manifest_digest);
    let image = store.image(&pulled.id).unwrap();
    assert_eq!(image.id, Digest::of(&common::config_for(&layers, "amd64")));
    assert_eq!(image.tags, vec![wanted.to_string()]);
    assert_eq!(
        image.digests,
        vec![format!("{}/team/app@{manifest_digest}", server.domain)]
    );
    assert_eq!(
        store.blobs().read(&image.manifest).unwrap(),
        manifest_bytes,
        "the manifest is kept byte for byte"
    );
    assert_eq!(image.layers.len(), 2);
    assert_eq!(
        snapshot_file(&store, &image.layers[0].chain_id, "etc/one"),
        b"first layer"
    );
    assert_eq!(
        snapshot_file(&store, &image.layers[1].chain_id, "etc/two"),
        b"second layer"
    );
    assert!(store.check().unwrap().is_empty(), "the store is consistent");
    let events = progress.events();
    assert_eq!(
        events[0],
        Event::PullingFrom {
            tag: "1.0".to_string(),
            repository: "team/app".to_string()
        }
    );
    for layer in &layers {
        assert!(
            events.contains(&Event::LayerPulled(Digest::of(layer))),
            "{events:?}"
        );
    }

    // Again: the tag already names the image.
    let again = kiln_registry::pull(
        &mut store,
        &registry,
        &wanted,
        &PullOptions::default(),
        &progress,
    )
    .unwrap();
    assert!(again.up_to_date);
    assert_eq!(again.id, pulled.id);
}

#[test]
fn layers_in_the_store_are_not_downloaded_again() {
    let Some(server) = RegistryServer::start(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let registry = connect(&server, dir.path());
    let base = vec![layer_tar(&[("a", b"a")]), layer_tar(&[("b", b"b")])];
    let mut derived = base.clone();
    derived.push(layer_tar(&[("c", b"c")]));
    push_raw(&registry, "base", "latest", &base, "amd64");
    push_raw(&registry, "derived", "latest", &derived, "amd64");
    let mut store = store(dir.path(), "store");
    kiln_registry::pull(
        &mut store,
        &registry,
        &reference(&server, "base"),
        &PullOptions::default(),
        &kiln_registry::Silent,
    )
    .unwrap();
    let progress = Recorded::default();
    kiln_registry::pull(
        &mut store,
        &registry,
        &reference(&server, "derived"),
        &PullOptions::default(),
        &progress,
    )
    .unwrap();
    let events = progress.events();
    assert!(
        events.contains(&Event::LayerExists(Digest::of(&base[0]))),
        "{events:?}"
    );
    assert!(
        events.contains(&Event::LayerExists(Digest::of(&base[1]))),
        "{events:?}"
    );
    assert!(
        events.contains(&Event::LayerPulled(Digest::of(&derived[2]))),
        "{events:?}"
    );
    assert!(
        !events.contains(&Event::LayerPulling(Digest::of(&base[0]))),
        "{events:?}"
    );
}

#[test]
fn a_pushed_image_pulls_into_a_fresh_store_with_the_same_id_and_manifest_digest() {
    let Some(server) = RegistryServer::start(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let registry = connect(&server, dir.path());
    let mut source = store(dir.path(), "source");
    let name = reference(&server, "roundtrip:v1");
    let id = import(&mut source, &name, &[("bin/tool", b"#!/bin/sh\necho hi\n")]);
    let stored_manifest = source.image(&id).unwrap().manifest;

    let progress = Recorded::default();
    let pushed = kiln_registry::push(&source, &registry, &name, &progress).unwrap();
    assert_eq!(pushed.digest, stored_manifest, "pushed byte for byte");
    let layer = source.image(&id).unwrap().layers[0].blob;
    // Byte counts (`LayerUploading`) aside: how many depends on read sizes and timing.
    let events: Vec<Event> = progress
        .events()
        .into_iter()
        .filter(|event| !matches!(event, Event::LayerUploading { .. }))
        .collect();
    assert_eq!(
        events,
        vec![
            Event::PushingTo {
                repository: name.name()
            },
            Event::LayerPreparing(layer),
            Event::LayerPushed(layer),
        ]
    );
    assert!(source.image(&id).unwrap().digests.contains(&format!(
        "{}@{}",
        name.name(),
        pushed.digest
    )));

    // The second push finds every blob in place.
    let progress = Recorded::default();
    let again = kiln_registry::push(&source, &registry, &name, &progress).unwrap();
    assert_eq!(again.digest, pushed.digest);
    assert!(progress.events().contains(&Event::LayerPresent(layer)));

    let mut fresh = store(dir.path(), "fresh");
    let pulled = kiln_registry::pull(
        &mut fresh,
        &registry,
        &name,
        &PullOptions::default(),
        &kiln_registry::Silent,
    )
    .unwrap();
    assert_eq!(pulled.id, id);
    assert_eq!(pulled.digest, pushed.digest);
    let image = fresh.image(&id).unwrap();
    assert_eq!(image.manifest, stored_manifest);
    assert_eq!(
        snapshot_file(&fresh, &image.layers[0].chain_id, "bin/tool"),
        b"#!/bin/sh\necho hi\n"
    );
}

#[test]
fn pushing_to_another_repository_of_the_registry_mounts_the_layers() {
    let Some(server) = RegistryServer::start(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let registry = connect(&server, dir.path());
    let mut source = store(dir.path(), "source");
    let first = reference(&server, "first:latest");
    let id = import(&mut source, &first, &[("file", b"shared content")]);
    kiln_registry::push(&source, &registry, &first, &kiln_registry::Silent).unwrap();
    let second = reference(&server, "second/copy:latest");
    source.tag(&second.to_string(), &id).unwrap();
    let progress = Recorded::default();
    kiln_registry::push(&source, &registry, &second, &progress).unwrap();
    let layer = source.image(&id).unwrap().layers[0].blob;
    assert!(
        progress.events().contains(&Event::LayerMounted {
            layer,
            from: "first".to_string()
        }),
        "{:?}",
        progress.events()
    );
}

#[test]
fn chunked_uploads_give_the_same_blobs() {
    let Some(server) = RegistryServer::start(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let options = ClientOptions {
        upload: UploadMode::Chunked(4096),
        ..common::options(dir.path())
    };
    let registry = Registry::connect(&server.domain, &options, None).unwrap();
    let mut source = store(dir.path(), "source");
    let name = reference(&server, "chunked:latest");
    // Incompressible content, so the gzip blob spans several chunks.
    let mut noise = Vec::with_capacity(50_000);
    let mut state = 0x2545_f491_u32;
    for _ in 0..50_000 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        noise.push(state as u8);
    }
    let id = import(&mut source, &name, &[("noise", &noise)]);
    let pushed = kiln_registry::push(&source, &registry, &name, &kiln_registry::Silent).unwrap();
    let mut fresh = store(dir.path(), "fresh");
    let pulled = kiln_registry::pull(
        &mut fresh,
        &registry,
        &name,
        &PullOptions::default(),
        &kiln_registry::Silent,
    )
    .unwrap();
    assert_eq!((pulled.id, pulled.digest), (id, pushed.digest));
    let image = fresh.image(&id).unwrap();
    assert_eq!(
        snapshot_file(&fresh, &image.layers[0].chain_id, "noise"),
        noise
    );
}

#[test]
fn an_index_pulls_the_image_of_the_wanted_platform() {
    let Some(server) = RegistryServer::start(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let registry = connect(&server, dir.path());
    let amd64 = vec![layer_tar(&[("arch", b"amd64")])];
    let arm64 = vec![layer_tar(&[("arch", b"arm64")])];
    let (amd64_manifest, amd64_digest) = push_raw(&registry, "multi", "amd64", &amd64, "amd64");
    let (arm64_manifest, arm64_digest) = push_raw(&registry, "multi", "arm64", &arm64, "arm64");
    let entry = |digest: Digest, size: usize, architecture: &str| {
        let mut descriptor =
            image::Descriptor::new(image::MEDIA_TYPE_OCI_MANIFEST, digest, size as u64);
        descriptor.platform = Some(image::Platform {
            architecture: architecture.to_string(),
            os: "linux".to_string(),
            variant: None,
            os_version: None,
        });
        descriptor
    };
    let index = image::Index {
        schema_version: 2,
        media_type: Some(image::MEDIA_TYPE_OCI_INDEX.to_string()),
        manifests: vec![
            entry(arm64_digest, arm64_manifest.len(), "arm64"),
            entry(amd64_digest, amd64_manifest.len(), "amd64"),
        ],
        annotations: Default::default(),
    };
    let index_bytes = image::canonical_json(&index).unwrap();
    let index_digest = registry
        .put_manifest(
            "multi",
            "latest",
            &index_bytes,
            image::MEDIA_TYPE_OCI_INDEX,
            &[kiln_registry::client::push_scope("multi")],
        )
        .unwrap();
    let name = reference(&server, "multi");
    let pull = |store_name: &str, platform: &str| {
        let mut store = store(dir.path(), store_name);
        let options = PullOptions {
            platform: Some(Platform::parse(platform).unwrap()),
        };
        kiln_registry::pull(
            &mut store,
            &registry,
            &name,
            &options,
            &kiln_registry::Silent,
        )
        .map(|pulled| (pulled, store))
    };
    let (pulled, store_amd64) = pull("amd64", "linux/amd64").unwrap();
    assert_eq!(pulled.id, Digest::of(&common::config_for(&amd64, "amd64")));
    assert_eq!(
        pulled.digest, index_digest,
        "the repo digest is the index's"
    );
    assert_eq!(
        store_amd64.image(&pulled.id).unwrap().manifest,
        amd64_digest,
        "the platform's manifest is stored"
    );
    let (pulled, _) = pull("arm64", "linux/arm64").unwrap();
    assert_eq!(pulled.id, Digest::of(&common::config_for(&arm64, "arm64")));
    let error = pull("s390x", "linux/s390x").map(|_| ()).unwrap_err();
    assert!(matches!(error, RegistryError::NoPlatform { .. }), "{error}");
}

#[test]
fn a_hostile_layer_from_a_registry_is_rejected_like_on_load() {
    let Some(server) = RegistryServer::start(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let registry = connect(&server, dir.path());
    let hostile = vec![layer_tar(&[(
        "../../../../escaped-by-kiln-test",
        b"gotcha",
    )])];
    push_raw(&registry, "hostile", "latest", &hostile, "amd64");
    let mut store = store(dir.path(), "store");
    let error = kiln_registry::pull(
        &mut store,
        &registry,
        &reference(&server, "hostile"),
        &PullOptions::default(),
        &kiln_registry::Silent,
    )
    .unwrap_err();
    let text = format!("{error}: {}", std::error::Error::source(&error).unwrap());
    assert!(matches!(error, RegistryError::Layer { .. }), "{text}");
    assert!(text.contains("unsafe name"), "{text}");
    assert!(store.images().unwrap().is_empty(), "nothing is recorded");
    for ancestor in dir.path().ancestors() {
        assert!(!ancestor.join("escaped-by-kiln-test").exists());
    }
}

#[test]
fn a_missing_tag_is_manifest_unknown() {
    let Some(server) = RegistryServer::start(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let registry = connect(&server, dir.path());
    let mut store = store(dir.path(), "store");
    let error = kiln_registry::pull(
        &mut store,
        &registry,
        &reference(&server, "absent:1"),
        &PullOptions::default(),
        &kiln_registry::Silent,
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "manifest for {}/absent:1 not found: manifest unknown",
            server.domain
        )
    );
}

#[test]
fn basic_auth_uses_docker_config_credentials_and_names_the_registry_on_failure() {
    let Some(server) = RegistryServer::start(true) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut source = store(dir.path(), "source");
    let name = reference(&server, "private:latest");
    let id = import(&mut source, &name, &[("secret", b"data")]);

    // No credentials.
    let anonymous = connect(&server, dir.path());
    let error =
        kiln_registry::push(&source, &anonymous, &name, &kiln_registry::Silent).unwrap_err();
    assert!(
        matches!(error, RegistryError::Unauthorized { .. }),
        "{error}"
    );
    assert!(error.to_string().contains(&server.domain), "{error}");

    // A wrong password.
    let wrong = kiln_registry::Credentials {
        username: common::USER.to_string(),
        password: "wrong".to_string(),
    };
    let registry =
        Registry::connect(&server.domain, &common::options(dir.path()), Some(wrong)).unwrap();
    let error = registry.verify_login().unwrap_err();
    assert!(
        matches!(error, RegistryError::Unauthorized { .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .starts_with(&format!("{}: unauthorized", server.domain)),
        "{error}"
    );

    // The right one, from the Docker config file as `kiln login` writes it.
    let options = common::options(dir.path());
    options
        .docker_config
        .store(
            &server.domain,
            &kiln_registry::Credentials {
                username: common::USER.to_string(),
                password: common::PASSWORD.to_string(),
            },
        )
        .unwrap();
    let registry = Registry::connect(&server.domain, &options, None).unwrap();
    registry.verify_login().unwrap();
    kiln_registry::push(&source, &registry, &name, &kiln_registry::Silent).unwrap();
    let mut fresh = store(dir.path(), "fresh");
    let pulled = kiln_registry::pull(
        &mut fresh,
        &registry,
        &name,
        &PullOptions::default(),
        &kiln_registry::Silent,
    )
    .unwrap();
    assert_eq!(pulled.id, id);
}

#[test]
fn ensure_image_follows_the_pull_policy() {
    let Some(server) = RegistryServer::start(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let registry = connect(&server, dir.path());
    let layers = vec![layer_tar(&[("f", b"policy")])];
    push_raw(&registry, "policy", "latest", &layers, "amd64");
    let options = common::options(dir.path());
    let name = format!("{}/policy", server.domain);
    let mut store = store(dir.path(), "store");
    let ensure = |store: &mut kiln_cache::store::Store, policy| {
        kiln_registry::ensure_image(
            store,
            &name,
            policy,
            &options,
            &PullOptions::default(),
            &kiln_registry::Silent,
        )
    };
    let error = ensure(&mut store, PullPolicy::Never).unwrap_err();
    assert!(matches!(error, RegistryError::NotPulled(_)), "{error}");
    let id = ensure(&mut store, PullPolicy::Missing).unwrap();
    assert_eq!(id, Digest::of(&common::config_for(&layers, "amd64")));
    assert_eq!(ensure(&mut store, PullPolicy::Never).unwrap(), id);
    assert_eq!(ensure(&mut store, PullPolicy::Always).unwrap(), id);
    assert_eq!(
        kiln_registry::ensure_image(
            &mut store,
            &id.short(),
            PullPolicy::Always,
            &options,
            &PullOptions::default(),
            &kiln_registry::Silent,
        )
        .unwrap(),
        id,
        "an image ID is resolved, never pulled"
    );
}

#[test]
fn verified_blobs_left_by_an_interrupted_pull_are_unpacked_not_downloaded() {
    let Some(server) = RegistryServer::start(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let registry = connect(&server, dir.path());
    let layers = vec![
        layer_tar(&[("kept", b"downloaded before the interruption")]),
        layer_tar(&[("new", b"still to download")]),
    ];
    push_raw(&registry, "resumed", "latest", &layers, "amd64");
    let mut store = store(dir.path(), "store");
    // What an interrupted pull leaves: whole, verified blobs, and no image or snapshot.
    store.blobs().put_bytes(&layers[0]).unwrap();
    let progress = Recorded::default();
    let pulled = kiln_registry::pull(
        &mut store,
        &registry,
        &reference(&server, "resumed"),
        &PullOptions::default(),
        &progress,
    )
    .unwrap();
    let events = progress.events();
    assert!(
        events.contains(&Event::LayerExists(Digest::of(&layers[0]))),
        "{events:?}"
    );
    assert!(
        !events.contains(&Event::LayerPulling(Digest::of(&layers[0]))),
        "{events:?}"
    );
    assert!(
        events.contains(&Event::LayerPulled(Digest::of(&layers[1]))),
        "{events:?}"
    );
    let image = store.image(&pulled.id).unwrap();
    assert_eq!(
        snapshot_file(&store, &image.layers[0].chain_id, "kept"),
        b"downloaded before the interruption"
    );
}

#[test]
fn an_uncompressed_layer_goes_out_gzip_compressed_and_is_compressed_once() {
    let Some(server) = RegistryServer::start(false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let registry = connect(&server, dir.path());
    let mut source = store(dir.path(), "source");
    let name = reference(&server, "built:v1");
    // What `kiln build` stores: the layer blob is the tar itself.
    let options = kiln_cache::import::ImportOptions {
        reference: Some(name.clone().with_default_tag()),
        source: "-".to_string(),
        created: Some("2024-01-01T00:00:00Z".to_string()),
        compression: kiln_cache::layer::Compression::None,
        ..Default::default()
    };
    let content: &[u8] = b"plain layer content\n";
    let id = kiln_cache::import::import_rootfs(
        &mut source,
        &layer_tar(&[("etc/plain", content)])[..],
        &options,
    )
    .unwrap();
    let stored = source.image(&id).unwrap().layers[0].clone();
    assert_eq!(stored.blob, stored.diff_id, "stored uncompressed");

    let pushed = kiln_registry::push(&source, &registry, &name, &kiln_registry::Silent).unwrap();
    let variant = {
        let _lock = source.ingest().unwrap();
        source
            .layer_blob(&stored, kiln_cache::layer::Compression::Gzip)
            .unwrap()
    };
    assert_ne!(variant.digest, stored.diff_id);
    assert_eq!(
        variant.media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    // The variant's bytes are gzip of the layer.
    let compressed = source.blobs().read(&variant.digest).unwrap();
    assert_eq!(&compressed[..2], &[0x1f, 0x8b]);

    // A second push sends the same manifest and finds the compressed layer in place.
    let progress = Recorded::default();
    let again = kiln_registry::push(&source, &registry, &name, &progress).unwrap();
    assert_eq!(again.digest, pushed.digest);
    assert!(
        progress
            .events()
            .contains(&Event::LayerPresent(variant.digest))
    );

    // Another store pulls the same image (same ID), with the compressed layer.
    let mut fresh = store(dir.path(), "fresh");
    let pulled = kiln_registry::pull(
        &mut fresh,
        &registry,
        &name,
        &PullOptions::default(),
        &kiln_registry::Silent,
    )
    .unwrap();
    assert_eq!(pulled.id, id);
    assert_eq!(pulled.digest, pushed.digest);
    let image = fresh.image(&id).unwrap();
    assert_eq!(image.layers[0].blob, variant.digest);
    assert_eq!(
        snapshot_file(&fresh, &image.layers[0].chain_id, "etc/plain"),
        content
    );

    // The variant lives as long as the layer: kept by garbage collection while the image is
    // there, removed with it.
    source.collect_garbage().unwrap();
    assert!(source.blobs().contains(&variant.digest));
    source.remove(&name.to_string(), true).unwrap();
    source.collect_garbage().unwrap();
    assert!(!source.blobs().contains(&variant.digest));
    assert!(!source.blobs().contains(&stored.blob));
}
