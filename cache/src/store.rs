//! The store: blobs and snapshots on disk, images and tags in a SQLite database that several kiln
//! processes share (WAL mode, busy timeout, one transaction per change).
//!
//! Content first, metadata second: every method that records an image requires its blobs and
//! snapshots to exist already, so a crash between the two leaves only unreferenced content.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::blob::{BlobError, Blobs};
use crate::digest::{Digest, DigestError};
use crate::layout::{Layout, STORE_VERSION};

/// A store problem.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("store at {path} has layout version {found}; this kiln reads version {STORE_VERSION}")]
    Version { path: PathBuf, found: String },
    #[error("metadata database")]
    Database(#[from] rusqlite::Error),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("metadata database holds an invalid digest")]
    Digest(#[from] DigestError),
    #[error("no such image: {0}")]
    NoSuchImage(String),
    #[error(transparent)]
    Reference(#[from] crate::reference::ReferenceError),
    #[error(
        "conflict: unable to delete {image} (must be forced) - image is referenced in multiple repositories"
    )]
    MultipleRepositories { image: String },
    #[error(
        "conflict: unable to delete {image} (must be forced) - image is being used by container {container}"
    )]
    ImageInUse { image: String, container: String },
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    #[error(
        "conflict: the container name \"/{name}\" is already in use by container \"{id}\"; remove (or rename) that container to be able to reuse that name"
    )]
    NameInUse { name: String, id: String },
    #[error("invalid container name {0:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")]
    InvalidName(String),
    #[error("container record {id} is unreadable")]
    ContainerRecord {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{reference} is ambiguous: it matches {count} images")]
    Ambiguous { reference: String, count: usize },
    #[error("image {image} references snapshot {chain_id}, which is not in the store")]
    MissingSnapshot { image: Digest, chain_id: Digest },
    #[error("layer blob {blob} does not hold layer {expected} (its content is {actual})")]
    DiffIdMismatch {
        blob: Digest,
        expected: Digest,
        actual: Digest,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One layer of an image as the store knows it: its snapshot (keyed by chain ID), the
/// uncompressed tar's digest (diff ID) and the blob that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRecord {
    pub chain_id: Digest,
    pub diff_id: Digest,
    pub blob: Digest,
    pub media_type: String,
    /// Size of the blob (compressed).
    pub blob_size: u64,
    /// Bytes of the unpacked content.
    pub size: u64,
}

/// An image to record: its manifest and config are stored blobs, its layers stored snapshots.
#[derive(Debug, Clone)]
pub struct NewImage {
    /// The config digest: the image ID.
    pub id: Digest,
    pub manifest: Digest,
    pub manifest_media_type: String,
    /// The config's `created` time (RFC 3339), if any.
    pub created: Option<String>,
    pub layers: Vec<LayerRecord>,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub id: Digest,
    pub manifest: Digest,
    pub manifest_media_type: String,
    pub created: Option<String>,
    /// Unpacked size of all layers.
    pub size: u64,
    /// When it was added to this store (nanoseconds since the epoch).
    pub added: i64,
    /// Full normalised references (`docker.io/library/busybox:latest`), sorted.
    pub tags: Vec<String>,
    /// `name@sha256:...` references (pulled or pushed manifests), sorted.
    pub digests: Vec<String>,
    pub layers: Vec<LayerRecord>,
}

/// Schema of the metadata database. Bump [`SCHEMA_VERSION`] and add a migration when it changes.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (
    chain_id   TEXT PRIMARY KEY,
    parent     TEXT,
    diff_id    TEXT NOT NULL,
    blob       TEXT NOT NULL,
    media_type TEXT NOT NULL,
    blob_size  INTEGER NOT NULL,
    size       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    id         TEXT PRIMARY KEY,
    manifest   TEXT NOT NULL,
    media_type TEXT NOT NULL,
    created    TEXT,
    added      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS image_layers (
    image    TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    chain_id TEXT NOT NULL REFERENCES snapshots(chain_id),
    PRIMARY KEY (image, position)
);
CREATE TABLE IF NOT EXISTS tags (
    reference TEXT PRIMARY KEY,
    image     TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS repo_digests (
    reference TEXT PRIMARY KEY,
    image     TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS tags_by_image ON tags(image);
CREATE INDEX IF NOT EXISTS layers_by_chain ON image_layers(chain_id);
CREATE TABLE IF NOT EXISTS containers (
    id      TEXT PRIMARY KEY,
    name    TEXT NOT NULL UNIQUE,
    image   TEXT NOT NULL REFERENCES images(id),
    created TEXT NOT NULL,
    config  TEXT NOT NULL,
    state   TEXT NOT NULL
);
";
const SCHEMA_VERSION: i64 = 1;

/// A kiln store. Cheap to open; every kiln process opens its own.
#[derive(Debug)]
pub struct Store {
    layout: Layout,
    blobs: Blobs,
    pub(crate) db: Connection,
}

impl Store {
    /// Opens (creating if needed) the store at `root`. Refuses a store of another layout version.
    /// A relative `root` is made absolute against the current directory: store paths go to
    /// overlay mounts and to processes that run elsewhere.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        let root = std::path::absolute(&root).map_err(io_at(&root))?;
        let layout = Layout::new(root);
        for dir in layout.directories() {
            fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        }
        let version_file = layout.version_file();
        match fs::read_to_string(&version_file) {
            Ok(found) if found.trim() == STORE_VERSION.to_string() => {}
            Ok(found) => {
                return Err(StoreError::Version {
                    path: layout.root().to_path_buf(),
                    found: found.trim().to_string(),
                });
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let temp = layout
                    .tmp()
                    .join(format!("store-version.{}", std::process::id()));
                fs::write(&temp, format!("{STORE_VERSION}\n")).map_err(io_at(&temp))?;
                fs::rename(&temp, &version_file).map_err(io_at(&version_file))?;
            }
            Err(error) => return Err(io_at(&version_file)(error)),
        }
        let db = Connection::open(layout.database())?;
        db.busy_timeout(Duration::from_secs(30))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        db.execute_batch(SCHEMA)?;
        db.execute_batch(crate::buildcache::SCHEMA)?;
        db.execute_batch(crate::variant::SCHEMA)?;
        let version: Option<i64> = db
            .query_row("SELECT version FROM schema_version", [], |row| row.get(0))
            .optional()?;
        if version.is_none() {
            db.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                [SCHEMA_VERSION],
            )?;
        }
        let blobs = Blobs::new(layout.clone());
        Ok(Store { layout, blobs, db })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// The unpacked tree of a snapshot (an overlayfs lowerdir).
    pub fn snapshot_path(&self, chain_id: &Digest) -> PathBuf {
        self.layout.snapshot(chain_id).join("fs")
    }

    /// The snapshot record for a chain ID, if the snapshot is complete.
    pub fn snapshot(&self, chain_id: &Digest) -> Result<Option<LayerRecord>, StoreError> {
        let row = self
            .db
            .query_row(
                "SELECT chain_id, diff_id, blob, media_type, blob_size, size FROM snapshots WHERE chain_id = ?1",
                [chain_id.to_string()],
                layer_row,
            )
            .optional()?;
        let Some(row) = row else { return Ok(None) };
        let record = row.into_record()?;
        Ok(self
            .layout
            .snapshot(&record.chain_id)
            .is_dir()
            .then_some(record))
    }

    /// A fresh directory in `tmp/` to unpack a layer into; hand it to
    /// [`Store::commit_snapshot`] when complete. Dropping it removes it.
    pub fn prepare_snapshot(&self) -> Result<tempfile::TempDir, StoreError> {
        let tmp = self.layout.tmp();
        let dir = tempfile::Builder::new()
            .prefix("snapshot-")
            .tempdir_in(&tmp)
            .map_err(io_at(&tmp))?;
        let fs_dir = dir.path().join("fs");
        fs::create_dir(&fs_dir).map_err(io_at(&fs_dir))?;
        Ok(dir)
    }

    /// Moves a prepared snapshot into place (one rename: readers see it whole or not at all)
    /// and records it. Idempotent: if another process committed the same chain ID first, this
    /// one's copy is discarded.
    pub fn commit_snapshot(
        &self,
        prepared: tempfile::TempDir,
        record: &LayerRecord,
        parent: Option<&Digest>,
    ) -> Result<(), StoreError> {
        let target = self.layout.snapshot(&record.chain_id);
        if !target.exists() {
            let source = prepared.keep();
            match fs::rename(&source, &target) {
                Ok(()) => {}
                // Another process won the race; its snapshot has the same content.
                Err(_) if target.is_dir() => {
                    let _ = fs::remove_dir_all(&source);
                }
                Err(error) => return Err(io_at(&target)(error)),
            }
            fs::File::open(self.layout.snapshots())
                .and_then(|dir| dir.sync_all())
                .map_err(io_at(&target))?;
        }
        self.db.execute(
            "INSERT OR IGNORE INTO snapshots (chain_id, parent, diff_id, blob, media_type, blob_size, size)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                record.chain_id.to_string(),
                parent.map(ToString::to_string),
                record.diff_id.to_string(),
                record.blob.to_string(),
                record.media_type,
                record.blob_size as i64,
                record.size as i64,
            ],
        )?;
        Ok(())
    }

    /// Records an image. Its manifest and config blobs and its layer snapshots must already be
    /// in the store. Idempotent for the same ID.
    pub fn add_image(&mut self, image: &NewImage) -> Result<(), StoreError> {
        for digest in [&image.manifest, &image.id] {
            if !self.blobs.contains(digest) {
                return Err(BlobError::Missing(*digest).into());
            }
        }
        let added = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as i64);
        let transaction = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for layer in &image.layers {
            let known: Option<String> = transaction
                .query_row(
                    "SELECT chain_id FROM snapshots WHERE chain_id = ?1",
                    [layer.chain_id.to_string()],
                    |row| row.get(0),
                )
                .optional()?;
            if known.is_none() || !self.layout.snapshot(&layer.chain_id).is_dir() {
                return Err(StoreError::MissingSnapshot {
                    image: image.id,
                    chain_id: layer.chain_id,
                });
            }
        }
        let inserted = transaction.execute(
            "INSERT OR IGNORE INTO images (id, manifest, media_type, created, added) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                image.id.to_string(),
                image.manifest.to_string(),
                image.manifest_media_type,
                image.created,
                added
            ],
        )?;
        if inserted == 1 {
            for (position, layer) in image.layers.iter().enumerate() {
                transaction.execute(
                    "INSERT INTO image_layers (image, position, chain_id) VALUES (?1, ?2, ?3)",
                    params![
                        image.id.to_string(),
                        position as i64,
                        layer.chain_id.to_string()
                    ],
                )?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    /// Points `reference` (a full normalised name:tag) at an image, moving it from any other.
    pub fn tag(&self, reference: &str, image: &Digest) -> Result<(), StoreError> {
        let changed = self.db.execute(
            "INSERT INTO tags (reference, image) SELECT ?1, id FROM images WHERE id = ?2
             ON CONFLICT(reference) DO UPDATE SET image = excluded.image",
            params![reference, image.to_string()],
        )?;
        if changed == 0 {
            return Err(StoreError::NoSuchImage(image.to_string()));
        }
        Ok(())
    }

    /// Records a `name@digest` reference for an image.
    pub fn add_repo_digest(&self, reference: &str, image: &Digest) -> Result<(), StoreError> {
        self.db.execute(
            "INSERT INTO repo_digests (reference, image) VALUES (?1, ?2)
             ON CONFLICT(reference) DO UPDATE SET image = excluded.image",
            params![reference, image.to_string()],
        )?;
        Ok(())
    }

    /// Removes a tag. Returns whether it existed.
    pub fn untag(&self, reference: &str) -> Result<bool, StoreError> {
        Ok(self
            .db
            .execute("DELETE FROM tags WHERE reference = ?1", [reference])?
            == 1)
    }

    /// The image a full reference (`docker.io/library/busybox:latest` or `name@sha256:...`)
    /// points at.
    pub fn lookup_reference(&self, reference: &str) -> Result<Option<Digest>, StoreError> {
        let id: Option<String> = self
            .db
            .query_row(
                "SELECT image FROM tags WHERE reference = ?1
                 UNION ALL SELECT image FROM repo_digests WHERE reference = ?1 LIMIT 1",
                [reference],
                |row| row.get(0),
            )
            .optional()?;
        Ok(id.map(|id| id.parse()).transpose()?)
    }

    /// The image whose ID is `sha256:<hex>` or starts with a hex prefix (as `docker` accepts).
    pub fn lookup_id(&self, text: &str) -> Result<Option<Digest>, StoreError> {
        let prefix = text.strip_prefix("sha256:").unwrap_or(text);
        if prefix.is_empty() || prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Ok(None);
        }
        let pattern = format!("sha256:{}%", prefix.to_ascii_lowercase());
        let mut statement = self
            .db
            .prepare("SELECT id FROM images WHERE id LIKE ?1 LIMIT 2")?;
        let ids: Vec<String> = statement
            .query_map([pattern], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        match ids.as_slice() {
            [] => Ok(None),
            [id] => Ok(Some(id.parse()?)),
            _ => Err(StoreError::Ambiguous {
                reference: text.to_string(),
                count: ids.len(),
            }),
        }
    }

    /// One image with its tags, digests and layers.
    pub fn image(&self, id: &Digest) -> Result<ImageRecord, StoreError> {
        let row = self
            .db
            .query_row(
                "SELECT manifest, media_type, created, added FROM images WHERE id = ?1",
                [id.to_string()],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, i64>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((manifest, manifest_media_type, created, added)) = row else {
            return Err(StoreError::NoSuchImage(id.to_string()));
        };
        let strings = |sql: &str| -> Result<Vec<String>, StoreError> {
            let mut statement = self.db.prepare(sql)?;
            let values = statement
                .query_map([id.to_string()], |row| row.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(values)
        };
        let tags = strings("SELECT reference FROM tags WHERE image = ?1 ORDER BY reference")?;
        let digests =
            strings("SELECT reference FROM repo_digests WHERE image = ?1 ORDER BY reference")?;
        let mut statement = self.db.prepare(
            "SELECT s.chain_id, s.diff_id, s.blob, s.media_type, s.blob_size, s.size
             FROM image_layers l JOIN snapshots s ON s.chain_id = l.chain_id
             WHERE l.image = ?1 ORDER BY l.position",
        )?;
        let layers = statement
            .query_map([id.to_string()], layer_row)?
            .map(|row| {
                row.map_err(StoreError::from)
                    .and_then(LayerRow::into_record)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ImageRecord {
            id: *id,
            manifest: manifest.parse()?,
            manifest_media_type,
            created,
            size: layers.iter().map(|layer| layer.size).sum(),
            added,
            tags,
            digests,
            layers,
        })
    }

    /// Every image, newest first (by when it was added).
    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let mut statement = self
            .db
            .prepare("SELECT id FROM images ORDER BY added DESC, id")?;
        let ids = statement
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        ids.iter().map(|id| self.image(&id.parse()?)).collect()
    }

    /// Removes an image's record (its tags and digests go with it). Content stays until
    /// [`Store::collect_garbage`].
    pub fn remove_image(&self, id: &Digest) -> Result<(), StoreError> {
        let removed = self
            .db
            .execute("DELETE FROM images WHERE id = ?1", [id.to_string()])?;
        if removed == 0 {
            return Err(StoreError::NoSuchImage(id.to_string()));
        }
        Ok(())
    }

    /// Takes the store's shared ingest lock. Hold it from writing content (blobs, snapshots)
    /// until the metadata that references it is committed, so that garbage collection, which
    /// takes the lock exclusively, never removes content that is about to be referenced.
    /// Several processes can ingest at once.
    pub fn ingest(&self) -> Result<StoreLock, StoreError> {
        self.lock(FlockArg::LockShared)
    }

    fn lock(&self, mode: FlockArg) -> Result<StoreLock, StoreError> {
        let path = self.layout.root().join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_at(&path))?;
        let lock =
            Flock::lock(file, mode).map_err(|(_, errno)| io_at(&path)(io::Error::from(errno)))?;
        Ok(StoreLock { _lock: lock })
    }

    /// Removes blobs and snapshots that no image and no build-cache record references, and what dead processes left in
    /// `tmp/`. Returns the bytes freed. Waits for ingests in progress (see [`Store::ingest`])
    /// and blocks new ones while it runs. Every writer of blobs or snapshots must hold the ingest
    /// lock.
    pub fn collect_garbage(&self) -> Result<u64, StoreError> {
        let _exclusive = self.lock(FlockArg::LockExclusive)?;
        let mut freed = 0;
        let transaction = self.db.unchecked_transaction()?;
        transaction.execute(
            "DELETE FROM snapshots WHERE chain_id NOT IN (SELECT chain_id FROM image_layers)
             AND chain_id NOT IN (SELECT chain_id FROM build_cache_layers)",
            [],
        )?;
        transaction.execute(
            "DELETE FROM layer_variants WHERE diff_id NOT IN (SELECT diff_id FROM snapshots)",
            [],
        )?;
        let referenced: std::collections::BTreeSet<String> = {
            let mut statement = transaction.prepare(
                "SELECT id FROM images UNION SELECT manifest FROM images UNION SELECT blob FROM snapshots
                 UNION SELECT config FROM build_cache UNION SELECT blob FROM layer_variants",
            )?;
            statement
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<_, _>>()?
        };
        let live_snapshots: std::collections::BTreeSet<String> = {
            let mut statement = transaction.prepare("SELECT chain_id FROM snapshots")?;
            statement
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<_, _>>()?
        };
        for digest in self.blobs.list()? {
            if !referenced.contains(&digest.to_string()) {
                freed += self.blobs.size(&digest).unwrap_or(0);
                self.blobs.remove(&digest)?;
            }
        }
        let snapshots = self.layout.snapshots();
        for entry in fs::read_dir(&snapshots).map_err(io_at(&snapshots))? {
            let entry = entry.map_err(io_at(&snapshots))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if !live_snapshots.contains(&format!("sha256:{name}")) {
                freed += directory_size(&entry.path());
                fs::remove_dir_all(entry.path()).map_err(io_at(&entry.path()))?;
            }
        }
        transaction.commit()?;
        // With the lock held exclusively no ingest is running: whatever is in tmp/ was left by
        // a process that died mid-write.
        let tmp = self.layout.tmp();
        for entry in fs::read_dir(&tmp).map_err(io_at(&tmp))? {
            let path = entry.map_err(io_at(&tmp))?.path();
            freed += directory_size(&path);
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(io_at(&path))?;
        }
        Ok(freed)
    }
}

/// What removing an image did, in Docker's words (`Untagged: busybox:latest`,
/// `Deleted: sha256:...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// A reference (familiar form) was removed.
    Untagged(String),
    /// The image itself was removed.
    Deleted(Digest),
}

impl std::fmt::Display for Removal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Removal::Untagged(reference) => write!(f, "Untagged: {reference}"),
            Removal::Deleted(id) => write!(f, "Deleted: {id}"),
        }
    }
}

fn familiar(reference: &str) -> String {
    crate::reference::Reference::parse(reference)
        .map_or_else(|_| reference.to_string(), |parsed| parsed.familiar())
}

impl Store {
    /// The image a user means by `name`, as Docker resolves it: a reference (`busybox`,
    /// `busybox:1.36`, `host:5000/app@sha256:...`, the tag defaulting to `latest`), else a full
    /// image ID or an ID prefix.
    pub fn resolve(&self, name: &str) -> Result<Digest, StoreError> {
        if let Ok(reference) = crate::reference::Reference::parse(name)
            && let Some(id) = self.lookup_reference(&reference.with_default_tag().to_string())?
        {
            return Ok(id);
        }
        if crate::reference::is_image_id_prefix(name)
            && let Some(id) = self.lookup_id(name)?
        {
            return Ok(id);
        }
        Err(StoreError::NoSuchImage(name.to_string()))
    }

    /// Removes images as `docker rmi` does. A `name:tag` that is one of several references of
    /// its image only untags; the last reference, or an image ID, deletes the image. An ID whose
    /// image is referenced from several repositories needs `force`. Content is freed by
    /// [`Store::collect_garbage`].
    pub fn remove(&self, name: &str, force: bool) -> Result<Vec<Removal>, StoreError> {
        let mut removals = Vec::new();
        let by_reference = crate::reference::Reference::parse(name)
            .ok()
            .map(|reference| reference.with_default_tag().to_string())
            .filter(|reference| matches!(self.lookup_reference(reference), Ok(Some(_))));
        let id = self.resolve(name)?;
        // Docker refuses to remove an image a container uses; with force it only untags.
        let users = self.containers_using(&id)?;
        let image_now = self.image(&id)?;
        let last_reference = by_reference.is_none() || image_now.tags.len() <= 1;
        if let Some(container) = users.first()
            && !force
            && last_reference
        {
            return Err(StoreError::ImageInUse {
                image: id.short(),
                container: container[..12].to_string(),
            });
        }
        if let Some(reference) = by_reference {
            // `rmi name:tag`: untag; delete the image when nothing else refers to it.
            self.db
                .execute("DELETE FROM tags WHERE reference = ?1", [&reference])?;
            self.db.execute(
                "DELETE FROM repo_digests WHERE reference = ?1",
                [&reference],
            )?;
            removals.push(Removal::Untagged(familiar(&reference)));
            let remaining = self.image(&id)?;
            if remaining.tags.is_empty() && users.is_empty() {
                for digest in &remaining.digests {
                    removals.push(Removal::Untagged(familiar(digest)));
                }
                self.remove_image(&id)?;
                removals.push(Removal::Deleted(id));
            }
            return Ok(removals);
        }
        // `rmi ID`: every reference goes, then the image (unless a container uses it).
        let image = image_now;
        let repositories: std::collections::BTreeSet<&str> = image
            .tags
            .iter()
            .map(|tag| {
                tag.rsplit_once(':')
                    .map_or(tag.as_str(), |(repository, _)| repository)
            })
            .collect();
        if repositories.len() > 1 && !force {
            return Err(StoreError::MultipleRepositories { image: id.short() });
        }
        for reference in image.tags.iter().chain(&image.digests) {
            self.untag(reference)?;
            self.db
                .execute("DELETE FROM repo_digests WHERE reference = ?1", [reference])?;
            removals.push(Removal::Untagged(familiar(reference)));
        }
        if users.is_empty() {
            self.remove_image(&id)?;
            removals.push(Removal::Deleted(id));
        }
        Ok(removals)
    }

    /// Removes images without tags (`dangling`), or every image with `all`, except those a
    /// container uses. Returns the removals; the caller collects garbage.
    pub fn prune_images(&self, all: bool) -> Result<Vec<Removal>, StoreError> {
        let mut removals = Vec::new();
        for image in self.images()? {
            if !self.containers_using(&image.id)?.is_empty() {
                continue;
            }
            if all || (image.tags.is_empty() && image.digests.is_empty()) {
                for reference in image.tags.iter().chain(&image.digests) {
                    removals.push(Removal::Untagged(familiar(reference)));
                }
                self.remove_image(&image.id)?;
                removals.push(Removal::Deleted(image.id));
            }
        }
        Ok(removals)
    }
}

/// Something `kiln system check` found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A blob an image references is absent.
    MissingBlob { image: Digest, blob: Digest },
    /// A blob does not hash to its name.
    CorruptBlob {
        blob: Digest,
        actual: Option<Digest>,
    },
    /// A snapshot an image references is absent.
    MissingSnapshot { image: Digest, chain_id: Digest },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::MissingBlob { image, blob } => {
                write!(f, "image {image}: blob {blob} is missing")
            }
            Problem::CorruptBlob {
                blob,
                actual: Some(actual),
            } => {
                write!(f, "blob {blob} is corrupt: its content hashes to {actual}")
            }
            Problem::CorruptBlob { blob, actual: None } => write!(f, "blob {blob} is unreadable"),
            Problem::MissingSnapshot { image, chain_id } => {
                write!(f, "image {image}: snapshot {chain_id} is missing")
            }
        }
    }
}

impl Store {
    /// Verifies the store: every blob an image references is present and hashes to its digest
    /// (every stored blob is re-hashed), and every snapshot an image uses is present.
    pub fn check(&self) -> Result<Vec<Problem>, StoreError> {
        let mut problems = Vec::new();
        for blob in self.blobs.list()? {
            match self.blobs.verify(&blob) {
                Ok(()) => {}
                Err(BlobError::Corrupt { actual, .. }) => problems.push(Problem::CorruptBlob {
                    blob,
                    actual: Some(actual),
                }),
                Err(_) => problems.push(Problem::CorruptBlob { blob, actual: None }),
            }
        }
        for image in self.images()? {
            let mut blobs = vec![image.id, image.manifest];
            blobs.extend(image.layers.iter().map(|layer| layer.blob));
            for blob in blobs {
                if !self.blobs.contains(&blob) {
                    problems.push(Problem::MissingBlob {
                        image: image.id,
                        blob,
                    });
                }
            }
            for layer in &image.layers {
                if !self.snapshot_path(&layer.chain_id).is_dir() {
                    problems.push(Problem::MissingSnapshot {
                        image: image.id,
                        chain_id: layer.chain_id,
                    });
                }
            }
        }
        Ok(problems)
    }
}

/// Bytes used by the files under a directory (not following symlinks).
pub fn directory_size(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.metadata().ok())
        .filter(|metadata| metadata.is_file())
        .map(|metadata| metadata.len())
        .sum()
}

/// A held store lock; released when dropped.
#[derive(Debug)]
pub struct StoreLock {
    _lock: Flock<fs::File>,
}

struct LayerRow {
    chain_id: String,
    diff_id: String,
    blob: String,
    media_type: String,
    blob_size: i64,
    size: i64,
}

impl LayerRow {
    fn into_record(self) -> Result<LayerRecord, StoreError> {
        Ok(LayerRecord {
            chain_id: self.chain_id.parse()?,
            diff_id: self.diff_id.parse()?,
            blob: self.blob.parse()?,
            media_type: self.media_type,
            blob_size: self.blob_size.max(0) as u64,
            size: self.size.max(0) as u64,
        })
    }
}

fn layer_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<LayerRow> {
    Ok(LayerRow {
        chain_id: row.get(0)?,
        diff_id: row.get(1)?,
        blob: row.get(2)?,
        media_type: row.get(3)?,
        blob_size: row.get(4)?,
        size: row.get(5)?,
    })
}
