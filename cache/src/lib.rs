//! The content-addressed image store under `--root`: blobs, layer snapshots and the metadata
//! database, the OCI/Docker image model, and layer tar creation and application.
//!
//! Runs no processes and parses no Dockerfiles. The on-disk layout is documented in [`layout`].

pub mod archive;
pub mod blob;
pub mod buildcache;
pub mod changes;
pub mod container;
pub mod digest;
pub mod image;
pub mod import;
pub mod layer;
pub mod layout;
pub mod reference;
pub mod store;
pub mod units;
pub mod variant;
pub mod volume;
