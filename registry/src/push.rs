//! `kiln push`: an image of the store goes to a registry under a tag.
//!
//! Blobs the repository has already are skipped (`HEAD`); a blob another repository of the same
//! registry holds (one the image was pulled from or pushed to before, by its recorded
//! references) is mounted instead of uploaded; the rest is streamed from the store (verified as
//! it is read) in one `PUT` or in `PATCH` chunks. Layers stored uncompressed go out
//! gzip-compressed (a variant made once and kept by the store). The manifest goes last, byte for
//! byte as the store has it when it describes the blobs that go out, so a pulled image keeps its
//! manifest digest; otherwise (a built image, or a layer kept from an earlier copy of the same
//! content) an OCI manifest of those blobs is written with sorted keys. The pushed digest is
//! recorded as a repo digest.

use kiln_cache::blob::BlobError;
use kiln_cache::digest::Digest;
use kiln_cache::image::{self, Descriptor, Manifest};
use kiln_cache::layer::Compression;
use kiln_cache::reference::Reference;
use kiln_cache::store::{ImageRecord, Store};

use crate::client::{Registry, pull_scope, push_scope};
use crate::error::RegistryError;
use crate::pool;
use crate::progress::{Counting, Event, Progress, Silent, Transfer};
use crate::pull::is_foreign_layer;

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The reference pushed (with the default tag added).
    pub reference: Reference,
    /// The manifest digest.
    pub digest: Digest,
    /// The manifest's size in bytes.
    pub size: u64,
}

/// The manifest to push for an image: the stored one when it describes the blobs that go out,
/// else an OCI manifest (sorted keys) of them. Layers stored uncompressed (what `kiln build`
/// makes) go out gzip-compressed, as `docker push` sends them: their compressed variant is made
/// once and kept by the store ([`Store::layer_blob`]), so the same image always pushes the same
/// manifest digest.
fn manifest_of(store: &Store, image: &ImageRecord) -> Result<(Vec<u8>, String), RegistryError> {
    let outgoing = image
        .layers
        .iter()
        .map(|layer| store.layer_blob(layer, Compression::Gzip))
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = store.blobs().read(&image.manifest)?;
    if let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes)
        && manifest.config.digest == image.id
        && manifest
            .layers
            .iter()
            .map(|layer| layer.digest)
            .eq(outgoing.iter().map(|layer| layer.digest))
    {
        let media_type = manifest
            .media_type
            .clone()
            .unwrap_or_else(|| image.manifest_media_type.clone());
        return Ok((bytes, media_type));
    }
    let config_size = store.blobs().size(&image.id)?;
    let layers = outgoing
        .iter()
        .map(|layer| {
            let media_type = Compression::from_media_type(&layer.media_type)
                .map_or(layer.media_type.as_str(), |compression| {
                    compression.media_type()
                });
            Descriptor::new(media_type, layer.digest, layer.size)
        })
        .collect();
    let manifest = Manifest::oci(
        Descriptor::new(image::MEDIA_TYPE_OCI_CONFIG, image.id, config_size),
        layers,
    );
    let bytes = image::canonical_json(&manifest).map_err(|source| RegistryError::Json {
        registry: String::new(),
        what: "the manifest kiln wrote".to_string(),
        source,
    })?;
    Ok((bytes, image::MEDIA_TYPE_OCI_MANIFEST.to_string()))
}

/// How one blob went up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Present,
    Mounted(usize),
    Pushed,
    Skipped,
}

/// Pushes the image `reference` names in the store (`name[:tag]`, the tag defaulting to
/// `latest`) to `registry`. See the module documentation.
pub fn push(
    store: &Store,
    registry: &Registry,
    reference: &Reference,
    progress: &dyn Progress,
) -> Result<Pushed, RegistryError> {
    let reference = reference.clone().with_default_tag();
    let Some(tag) = reference.tag().filter(|_| reference.digest().is_none()) else {
        return Err(RegistryError::DigestReference(reference.familiar()));
    };
    let tag = tag.to_string();
    let id = store
        .lookup_reference(&reference.to_string())?
        .ok_or_else(|| RegistryError::NoSuchImage(reference.familiar()))?;
    let image = store.image(&id)?;
    // Garbage collection waits while blobs are read (and compressed variants made).
    let _ingest = store.ingest()?;
    let (manifest_bytes, media_type) = manifest_of(store, &image)?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|source| RegistryError::Json {
            registry: registry.domain().to_string(),
            what: format!("stored manifest {}", image.manifest),
            source,
        })?;
    let repository = reference.path().to_string();
    progress.event(Event::PushingTo {
        repository: reference.name(),
    });
    // Other repositories of this registry the image is known in: mount sources.
    let mut sources: Vec<String> = image
        .tags
        .iter()
        .chain(&image.digests)
        .filter_map(|known| Reference::parse(known).ok())
        .filter(|known| known.domain() == reference.domain() && known.path() != repository)
        .map(|known| known.path().to_string())
        .collect();
    sources.sort();
    sources.dedup();
    let mut scopes = vec![push_scope(&repository)];
    scopes.extend(sources.iter().map(|source| pull_scope(source)));

    let blobs = store.blobs();
    // Docker lists the top layer first.
    let mut layers: Vec<Descriptor> = manifest.layers.clone();
    layers.reverse();
    for layer in &layers {
        progress.event(Event::LayerPreparing(layer.digest));
    }
    let push_blob = |descriptor: &Descriptor| -> Result<Outcome, RegistryError> {
        if is_foreign_layer(&descriptor.media_type) {
            return Ok(Outcome::Skipped);
        }
        let digest = descriptor.digest;
        if registry
            .blob_exists(&repository, &digest, &scopes)?
            .is_some()
        {
            return Ok(Outcome::Present);
        }
        // One mount attempt, from the first other repository: a refused mount opens an
        // upload session, which is then used rather than left behind.
        let mount = sources.first().map(|source| (&digest, source.as_str()));
        let location = match registry.start_upload(&repository, mount, &scopes)? {
            None => return Ok(Outcome::Mounted(0)),
            Some(location) => location,
        };
        let size = blobs.size(&digest)?;
        // Docker shows no progress for the config blob.
        let shown: &dyn Progress = if digest == manifest.config.digest {
            &Silent
        } else {
            progress
        };
        let mut content =
            Counting::new(blobs.open(&digest)?, digest, size, Transfer::Upload, shown);
        let uploaded = registry.upload(
            &location,
            &digest,
            size,
            &mut content,
            registry.upload,
            &scopes,
        );
        // A corrupt store blob fails the upload's read: report the corruption, not the network.
        if let Err(error) = uploaded {
            return match blobs.verify(&digest) {
                Err(corrupt @ BlobError::Corrupt { .. }) => Err(corrupt.into()),
                Ok(()) | Err(_) => Err(error),
            };
        }
        Ok(Outcome::Pushed)
    };
    let results = pool::run(layers.clone(), registry.concurrency, |descriptor| {
        let outcome = push_blob(&descriptor)?;
        progress.event(match outcome {
            Outcome::Present => Event::LayerPresent(descriptor.digest),
            Outcome::Mounted(source) => Event::LayerMounted {
                layer: descriptor.digest,
                from: sources[source].clone(),
            },
            Outcome::Pushed => Event::LayerPushed(descriptor.digest),
            Outcome::Skipped => Event::LayerSkipped(descriptor.digest),
        });
        Ok::<_, RegistryError>(())
    });
    for result in results {
        match result {
            Some(Ok(())) => {}
            Some(Err(error)) => return Err(error),
            None => return Err(registry.protocol("a layer push did not run")),
        }
    }
    push_blob(&manifest.config)?;
    let digest = registry.put_manifest(&repository, &tag, &manifest_bytes, &media_type, &scopes)?;
    store.add_repo_digest(&format!("{}@{digest}", reference.name()), &id)?;
    Ok(Pushed {
        reference,
        digest,
        size: manifest_bytes.len() as u64,
    })
}
