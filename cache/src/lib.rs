//! The content-addressed image store under `--root`: blobs, layer snapshots and the metadata
//! database, the OCI/Docker image model, and layer tar creation and application.
//!
//! Runs no processes and parses no Dockerfiles. Empty until the image-store issue.
