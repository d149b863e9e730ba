//! Image archives: `kiln save` writes them, `kiln load` reads them.
//!
//! An archive kiln writes is, like one from Docker 25+, two formats at once over one set of
//! blobs: a Docker archive (`manifest.json` with `Config`, `RepoTags` and `Layers`, plus the
//! legacy `repositories`) and an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`). Blobs are written as the store holds them (kiln's layers are gzip), so
//! an image saved and loaded again keeps its manifest digest.
//!
//! Docker before 25 reads only the Docker half, and it accepts gzip layer blobs there: `docker
//! load` decompresses each `Layers` entry before it checks the entry against the config's diff
//! ID. Checked with Docker 20.10.24 (`cli/tests/docker_interop.rs`): a kiln archive of gzip
//! layers loads, with the image ID and diff IDs unchanged, even for layers Docker did not have.
//! So kiln does not write uncompressed copies for old engines: that would double the archive or
//! change the manifest digest of every saved image, for no engine that needs it. zstd layers are
//! the exception: Docker 20.10 fails on them ("unexpected EOF"), in kiln's archives and in its
//! own layout alike; kiln writes them as stored all the same (only images loaded with zstd
//! layers have them).
//!
//! Reading accepts `docker save` output of every Docker version since 1.10 (`<id>/layer.tar`
//! entries, possibly symlinked to each other, up to 24; OCI-style from 25), OCI archives and OCI
//! layout directories, the outer archive plain or compressed.
//!
//! Owns the archive formats only: blobs, snapshots and image records belong to the
//! [`store`](crate::store), layer tars to [`layer`](crate::layer). Archives are hostile input:
//! entry names are never used as file system paths (see [`load`]).

mod load;
mod save;

use std::io;
use std::sync::Arc;

pub use load::{LoadOptions, LoadedImage, load, load_layout};
pub use save::{SavePlan, plan_save, plan_save_image};

use crate::blob::BlobError;
use crate::digest::Digest;
use crate::layer::LayerError;
use crate::reference::ReferenceError;
use crate::store::StoreError;

/// Why saving or loading an archive failed. Every variant about content names its digest or
/// its entry.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading the archive")]
    Read(#[source] io::Error),
    #[error("writing the archive")]
    Write(#[source] io::Error),
    /// A blob of the store went bad while it was being written out.
    #[error("writing the archive")]
    Blob(#[source] BlobError),
    #[error("reading the archive")]
    Layer(#[from] LayerError),
    #[error("{name} is not valid JSON of the expected shape")]
    Json {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("encoding the image metadata")]
    Encode(#[source] serde_json::Error),
    #[error("the archive has neither manifest.json nor index.json: not an image archive")]
    NotAnImageArchive,
    #[error("the archive holds no image")]
    NoImage,
    #[error("the archive has no entry {name}")]
    MissingEntry { name: String },
    #[error("entry {name} is not a layer")]
    NotALayer {
        name: String,
        #[source]
        source: Option<Arc<LayerError>>,
    },
    #[error("entry {name} is not JSON metadata")]
    NotJson { name: String },
    #[error("{name}: symbolic links in the archive go round in circles or too deep")]
    LinkLoop { name: String },
    #[error("{what} {expected} is corrupt: its content hashes to {actual}")]
    DigestMismatch {
        what: &'static str,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what} {expected} has {actual} bytes, not the {size} its descriptor says")]
    SizeMismatch {
        what: &'static str,
        expected: Digest,
        size: u64,
        actual: u64,
    },
    #[error(
        "layer {name} has diff ID {actual}, but the image config expects {expected} at position {position}"
    )]
    DiffIdMismatch {
        name: String,
        position: usize,
        expected: Digest,
        actual: Digest,
    },
    #[error("image {image} lists {layers} layers, but its config has {diff_ids} diff IDs")]
    LayerCount {
        image: Digest,
        layers: usize,
        diff_ids: usize,
    },
    #[error("manifest {manifest} names config {config}, not the image's {image}")]
    ConfigMismatch {
        manifest: Digest,
        config: Digest,
        image: Digest,
    },
    #[error("{digest}: unsupported media type {media_type}")]
    MediaType { digest: Digest, media_type: String },
    #[error("index {index} has no image for {platform}")]
    NoPlatform { index: Digest, platform: String },
    #[error("invalid image name {text:?} in the archive")]
    Reference {
        text: String,
        #[source]
        source: ReferenceError,
    },
    #[error("{name} in the archive is not a digest")]
    Digest {
        name: String,
        #[source]
        source: crate::digest::DigestError,
    },
    #[error("cannot read the OCI layout at {path}")]
    Layout {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<BlobError> for ArchiveError {
    fn from(error: BlobError) -> Self {
        ArchiveError::Store(StoreError::Blob(error))
    }
}

/// The path of a blob inside an archive (and an OCI layout): `blobs/sha256/<hex>`.
fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// The `oci-layout` file of OCI image layout 1.0.
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// The annotation containerd and Docker 25+ put the full image name in.
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for a reference name (Docker writes only the tag there).
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One image of a Docker archive's `manifest.json` (Docker's field names and order).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct DockerItem {
    #[serde(rename = "Config")]
    config: String,
    /// Familiar references (`busybox:latest`); `null` for an image saved by ID, as Go writes a
    /// nil slice.
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}
