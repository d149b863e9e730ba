//! The on-disk layout of a kiln store, in one place.
//!
//! ```text
//! ROOT/
//!   store-version            "1": the layout version below; a newer one is refused
//!   metadata.db              SQLite (WAL mode): images, tags, snapshots, containers, build-cache
//!                            records (see `buildcache`), GC references
//!   blobs/sha256/<hex>       content by digest: layers, configs, manifests (immutable)
//!   snapshots/<chain-hex>/   one unpacked layer each, keyed by chain ID; `fs/` is the tree used
//!                            as an overlayfs lowerdir, `complete` is written last
//!   containers/<id>/         per-container upper/work dirs, logs, state (runtime issue)
//!   volumes/<name>/          one volume (Docker's local driver, see `volume`): `_data/` is the
//!                            content bind-mounted into containers, `volume.json` the metadata
//!                            (name, created, driver, labels, options); built as
//!                            `volumes/.creating-*` and renamed into place, so it is whole or
//!                            absent; removal renames to `volumes/.removing-*` first
//!   volumes/.lock            flock: shared while `run` creates volumes and records its
//!                            container, exclusive while volumes are checked unused and removed
//!   cache-mounts/<hex>/      `RUN --mount=type=cache` directories, by sha256 of the mount id;
//!                            created as `cache-mounts/new-*` and renamed; `<hex>.lock` is the
//!                            flock of `sharing=locked`; never part of an image
//!   context-hashes/<hex>     the build context stat cache (kiln-builder's `statcache`): content
//!                            digests of one context directory's files, by sha256 of its path;
//!                            replaced atomically, at most 64 files (128 MiB) kept, a damaged
//!                            one is ignored
//!   tmp/                     temporary files, on the same file system so renames are atomic
//! ```
//!
//! Content is written before the metadata that points at it: a blob is complete once renamed
//! into `blobs/`, a snapshot once `complete` exists, and only then does a database transaction
//! reference it. A crash leaves, at worst, unreferenced content that garbage collection removes.

use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// The layout version this build of kiln reads and writes.
pub const STORE_VERSION: u32 = 1;

/// The store root when `--root` is not given: `$KILN_ROOT`, else `/var/lib/kiln` for root, else
/// `$XDG_DATA_HOME/kiln` (`~/.local/share/kiln`).
pub fn default_root() -> PathBuf {
    if let Some(root) = std::env::var_os("KILN_ROOT").filter(|root| !root.is_empty()) {
        return PathBuf::from(root);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/kiln");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|data| !data.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("kiln")
}

/// Paths inside a store root.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn version_file(&self) -> PathBuf {
        self.root.join("store-version")
    }

    pub fn database(&self) -> PathBuf {
        self.root.join("metadata.db")
    }

    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub fn blob(&self, digest: &Digest) -> PathBuf {
        self.blobs().join(digest.hex())
    }

    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// The directory of the snapshot with this chain ID.
    pub fn snapshot(&self, chain_id: &Digest) -> PathBuf {
        self.snapshots().join(chain_id.hex())
    }

    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }

    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }

    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Every directory the store needs.
    pub fn directories(&self) -> [PathBuf; 6] {
        [
            self.blobs(),
            self.snapshots(),
            self.containers(),
            self.volumes(),
            self.tmp(),
            self.root.clone(),
        ]
    }
}
