//! `kiln import`: a root file system tarball becomes a one-layer image.
//!
//! One pass over the input: the decompressed tar is hashed (the diff ID), compressed into the
//! layer blob and unpacked into the layer's snapshot at the same time, so nothing is read twice
//! and memory stays flat whatever the size.

use std::io::{self, Read, Write};

use crate::blob::BlobWriter;
use crate::digest::{Digest, DigestWriter};
use crate::image::{self, ContainerConfig, Descriptor, History, ImageConfig, Manifest, RootFs};
use crate::layer::{self, ApplyOptions, Compression, LayerError, Whiteouts};
use crate::reference::Reference;
use crate::store::{LayerRecord, NewImage, Store, StoreError};

/// An import problem.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading the archive")]
    Layer(#[from] LayerError),
    #[error("reading the archive")]
    Io(#[from] io::Error),
    #[error("encoding the image metadata")]
    Json(#[from] serde_json::Error),
}

/// What to import and how.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Runtime defaults of the image (`-c` changes applied by the caller).
    pub config: ContainerConfig,
    /// `-m`: the history comment (Docker's default is `Imported from SOURCE`).
    pub message: Option<String>,
    /// Where the archive came from, for the default history comment (`-` for stdin).
    pub source: String,
    /// The creation time (RFC 3339); now when absent.
    pub created: Option<String>,
    /// The tag to give the image.
    pub reference: Option<Reference>,
    /// How to compress the layer blob.
    pub compression: Compression,
}

/// The architecture of this machine in OCI terms (`amd64`, `arm64`, ...).
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Now, or `SOURCE_DATE_EPOCH` when it is set, as RFC 3339 with nanoseconds (Docker's format).
pub fn creation_time() -> String {
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|value| value.parse::<i64>().ok());
    let time = match epoch.and_then(|seconds| chrono::DateTime::from_timestamp(seconds, 0)) {
        Some(time) => time,
        None => chrono::Utc::now(),
    };
    time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Passes the bytes read through on to a writer too.
struct Tee<R, W> {
    inner: R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.copy.write_all(&buf[..read])?;
        Ok(read)
    }
}

/// Imports a root file system tarball (plain, gzip, zstd, xz or bzip2) as a one-layer image and
/// returns its ID. Content is stored before the image is recorded; on error nothing is recorded
/// and what was written is left for garbage collection.
pub fn import_rootfs(
    store: &mut Store,
    archive: impl Read,
    options: &ImportOptions,
) -> Result<Digest, ImportError> {
    let _ingest = store.ingest()?;
    let tar = layer::decompress(archive)?;
    let blob = store.blobs().writer().map_err(StoreError::from)?;
    let mut tee = Tee {
        inner: tar,
        copy: DigestWriter::new(layer::Compressor::new(options.compression, blob)?),
    };
    let prepared = store.prepare_snapshot()?;
    let stats = layer::apply_layer(
        &prepared.path().join("fs"),
        &mut tee,
        &ApplyOptions::new(Whiteouts::Overlay),
    )?;
    // The tar may go on past its end-of-archive blocks; the diff ID covers every byte.
    io::copy(&mut tee, &mut io::sink())?;
    let (diff_id, _, compressor) = tee.copy.finish();
    let blob: BlobWriter = compressor.finish()?;
    let stored = blob.commit().map_err(StoreError::from)?;
    let record = LayerRecord {
        chain_id: diff_id,
        diff_id,
        blob: stored.digest,
        media_type: options.compression.media_type().to_string(),
        blob_size: stored.size,
        size: stats.bytes,
    };
    if store.snapshot(&diff_id)?.is_none() {
        store.commit_snapshot(prepared, &record, None)?;
    }

    let created = options.created.clone().unwrap_or_else(creation_time);
    let comment = options
        .message
        .clone()
        .unwrap_or_else(|| format!("Imported from {}", options.source));
    let config = ImageConfig {
        created: Some(created.clone()),
        architecture: host_architecture().to_string(),
        os: "linux".to_string(),
        config: options.config.clone(),
        rootfs: RootFs {
            kind: "layers".to_string(),
            diff_ids: vec![diff_id],
        },
        history: vec![History {
            created: Some(created.clone()),
            comment: Some(comment),
            ..History::default()
        }],
        ..ImageConfig::default()
    };
    let config_blob = store
        .blobs()
        .put_bytes(&image::canonical_json(&config)?)
        .map_err(StoreError::from)?;
    let manifest = Manifest::oci(
        Descriptor::new(
            image::MEDIA_TYPE_OCI_CONFIG,
            config_blob.digest,
            config_blob.size,
        ),
        vec![Descriptor::new(
            options.compression.media_type(),
            stored.digest,
            stored.size,
        )],
    );
    let manifest_blob = store
        .blobs()
        .put_bytes(&image::canonical_json(&manifest)?)
        .map_err(StoreError::from)?;
    store.add_image(&NewImage {
        id: config_blob.digest,
        manifest: manifest_blob.digest,
        manifest_media_type: image::MEDIA_TYPE_OCI_MANIFEST.to_string(),
        created: Some(created),
        layers: vec![record],
    })?;
    if let Some(reference) = &options.reference {
        store.tag(
            &reference.clone().with_default_tag().to_string(),
            &config_blob.digest,
        )?;
    }
    Ok(config_blob.digest)
}
