//! The OCI distribution client: pull images into the store, push them from it, and log in to
//! registries, with Docker's naming rules, credentials and output.
//!
//! Owns the network side of images: endpoints, authentication (anonymous, Basic, Bearer tokens
//! from `~/.docker/config.json` and credential helpers), manifests and indexes, blob transfer.
//! Does not own the store: pulled content goes through `kiln-cache`'s public API (blob writers,
//! `prepare_snapshot`/`commit_snapshot`, `apply_layer`, `add_image`), so a pulled image is
//! recorded exactly as a loaded one. Never prints: progress is a stream of [`Event`]s.
//!
//! # Why a small client of our own, on `ureq`, and no async runtime
//!
//! `oci-client` 0.18 was the planned base (see `DEPENDENCIES.md`), but pulling straight into
//! the store needs a blob *stream* per layer, pushing needs `HEAD`, cross-repository mounts,
//! a choice of monolithic or chunked uploads and byte-exact manifests, and credentials come
//! from Docker's config and helpers, none of which `oci-client` does for us; it also brings
//! tokio and reqwest. The distribution protocol kiln needs is a dozen requests
//! ([`client::Registry`]), and `ureq` 3 (already in the workspace, rustls with the `ring`
//! provider, which ureq passes explicitly, so no process-wide provider has to be installed) does
//! them synchronously. Layer transfers are network- and disk-bound: a few blocking threads
//! ([`ClientOptions::concurrency`], 3 by default) keep the link busy on two cores without a
//! runtime, and the worker threads only ever touch the store's blob area and their own snapshot
//! directories; the metadata database stays on the calling thread.

pub mod cache;
pub mod client;
pub mod credentials;
pub mod error;
pub mod platform;
mod pool;
pub mod progress;
pub mod pull;
pub mod push;

pub use client::{ClientOptions, Registry, UploadMode};
pub use credentials::{Credentials, DockerConfig};
pub use error::RegistryError;
pub use platform::Platform;
pub use progress::{Event, Progress, Silent};
pub use pull::{PullOptions, Pulled, pull};
pub use push::{Pushed, push};

use kiln_cache::digest::Digest;
use kiln_cache::reference::Reference;
use kiln_cache::store::{Store, StoreError};

/// When `kiln build` and `kiln run` pull a base image (`--pull always|missing|never`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Pull every time (the registry's current image for the tag wins).
    Always,
    /// Pull only when the store has no image of that name (Docker's default).
    #[default]
    Missing,
    /// Never pull: a missing image is an error.
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "always" => Ok(PullPolicy::Always),
            "missing" => Ok(PullPolicy::Missing),
            "never" => Ok(PullPolicy::Never),
            other => Err(format!(
                "invalid pull policy {other:?}: expected always, missing or never"
            )),
        }
    }
}

/// Pulls `reference` (a reference as users type it: `busybox`, `host:5000/app:1`) from its
/// registry into the store, connecting with `options`.
pub fn pull_reference(
    store: &mut Store,
    reference: &Reference,
    options: &ClientOptions,
    pull_options: &PullOptions,
    progress: &dyn Progress,
) -> Result<Pulled, RegistryError> {
    let registry = Registry::connect(reference.domain(), options, None)?;
    pull(store, &registry, reference, pull_options, progress)
}

/// The image `name` means for `kiln build`'s `FROM` and `kiln run`, pulling it as `policy`
/// says: the entry point for automatic pulls. `name` is what the user wrote (a reference, or an
/// image ID or ID prefix, which is never pulled). Returns the image ID.
///
/// - [`PullPolicy::Missing`]: the stored image when [`Store::resolve`] finds it, else a pull.
/// - [`PullPolicy::Always`]: a pull (which downloads nothing when the tag is up to date); an
///   image ID is only resolved.
/// - [`PullPolicy::Never`]: the stored image, or [`RegistryError::NotPulled`].
pub fn ensure_image(
    store: &mut Store,
    name: &str,
    policy: PullPolicy,
    options: &ClientOptions,
    pull_options: &PullOptions,
    progress: &dyn Progress,
) -> Result<Digest, RegistryError> {
    let stored = match store.resolve(name) {
        Ok(id) => Some(id),
        Err(StoreError::NoSuchImage(_)) => None,
        Err(error) => return Err(error.into()),
    };
    let reference = Reference::parse(name).ok();
    // A name the store resolved by ID (or ID prefix) rather than as a reference names no
    // registry image.
    let by_id = match (&stored, &reference) {
        (Some(_), Some(reference)) => store
            .lookup_reference(&reference.clone().with_default_tag().to_string())?
            .is_none(),
        (Some(_), None) => true,
        (None, _) => false,
    };
    match (policy, stored, reference) {
        (PullPolicy::Never, Some(id), _) | (PullPolicy::Missing, Some(id), _) => Ok(id),
        (PullPolicy::Always, Some(id), _) if by_id => Ok(id),
        (PullPolicy::Never, None, _) => Err(RegistryError::NotPulled(name.to_string())),
        (PullPolicy::Always | PullPolicy::Missing, _, Some(reference)) => {
            Ok(pull_reference(store, &reference, options, pull_options, progress)?.id)
        }
        (PullPolicy::Always, Some(id), None) => Ok(id),
        (PullPolicy::Always | PullPolicy::Missing, None, None) => {
            Err(RegistryError::NotPulled(name.to_string()))
        }
    }
}
