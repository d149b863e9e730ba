//! Build-cache records: what a build step produced, keyed by the step's cache key.
//!
//! A record maps a cache key (computed by the builder from the step's definition and the
//! content of its inputs) to the step's result: the image config after the step (a blob) and
//! the layers of the file system after it (snapshots). It also keeps what the builder needs to
//! explain a later miss: the step's *definition* digest (the op and its parent, without the
//! content of its inputs) and the inputs themselves (name → digest, JSON).
//!
//! Records are metadata only; the content they name is ordinary store content, kept alive by
//! [`crate::store::Store::collect_garbage`] as long as a record references it. `kiln builder
//! prune` removes records ([`Store::prune_build_cache`]), then garbage collection frees what
//! nothing else references.
//!
//! The cache also has a size cap, enforced after every build
//! ([`Store::enforce_build_cache_cap`], the default from [`default_build_cache_cap`]), as
//! BuildKit's garbage collector keeps `keepStorage`: least recently used records go first.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::digest::Digest;
use crate::store::{LayerRecord, Store, StoreError};

/// Tables of the build cache, created on open with the rest of the schema.
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS build_cache (
    key         TEXT PRIMARY KEY,
    definition  TEXT NOT NULL,
    description TEXT NOT NULL,
    inputs      TEXT NOT NULL,
    config      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    created     INTEGER NOT NULL,
    last_used   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS build_cache_by_definition ON build_cache(definition);
CREATE TABLE IF NOT EXISTS build_cache_layers (
    key      TEXT NOT NULL REFERENCES build_cache(key) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    chain_id TEXT NOT NULL REFERENCES snapshots(chain_id),
    PRIMARY KEY (key, position)
);
CREATE INDEX IF NOT EXISTS build_cache_layers_by_chain ON build_cache_layers(chain_id);
";

/// A step's result as the cache knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRecord {
    pub key: Digest,
    /// The step's definition digest (same op on the same parent, whatever its inputs hold).
    pub definition: Digest,
    /// What the step was (`RUN echo hi`), for listings.
    pub description: String,
    /// The step's content inputs: name (a path, `arg:NAME`...) → digest of its content.
    pub inputs: BTreeMap<String, String>,
    /// The image config blob after the step.
    pub config: Digest,
    /// The layers after the step, bottom-most first.
    pub layers: Vec<LayerRecord>,
    /// Bytes of the step's own layer (0 for a step without one).
    pub size: u64,
    /// Seconds since the epoch.
    pub created: i64,
    pub last_used: i64,
}

/// What a new record holds; see [`CacheRecord`].
#[derive(Debug, Clone)]
pub struct NewCacheRecord<'a> {
    pub key: Digest,
    pub definition: Digest,
    pub description: &'a str,
    pub inputs: &'a BTreeMap<String, String>,
    pub config: Digest,
    pub layers: &'a [LayerRecord],
    pub size: u64,
}

/// Which records [`Store::prune_build_cache`] removes.
#[derive(Debug, Clone, Copy, Default)]
pub struct PruneOptions {
    /// Only records unused for longer than this many seconds (`--filter until=`).
    pub unused_for: Option<u64>,
    /// Remove least recently used records until the cache holds at most this many bytes
    /// (`--keep-storage`); `None` removes every record the other options select.
    pub keep_storage: Option<u64>,
}

/// The smallest and largest default cap: BuildKit's default `keepStorage` is 10% of the disk
/// holding its state, kept within these bounds.
const DEFAULT_CAP_MIN: u64 = 2 << 30;
const DEFAULT_CAP_MAX: u64 = 20 << 30;

/// The default size cap of the build cache of a store at `root`: 10% of the file system holding
/// it, clamped to [2 GiB, 20 GiB] (BuildKit's default `keepStorage`). The lower bound when the
/// file system cannot be asked.
pub fn default_build_cache_cap(root: &std::path::Path) -> u64 {
    let probe = if root.exists() {
        root
    } else {
        root.parent().unwrap_or(root)
    };
    match nix::sys::statvfs::statvfs(probe) {
        Ok(stat) => {
            let total = stat.blocks().saturating_mul(stat.fragment_size());
            (total / 10).clamp(DEFAULT_CAP_MIN, DEFAULT_CAP_MAX)
        }
        Err(_) => DEFAULT_CAP_MIN,
    }
}

/// What [`Store::enforce_build_cache_cap`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapEnforced {
    /// Records removed.
    pub removed: usize,
    /// Bytes garbage collection freed.
    pub freed: u64,
    /// The cache was over the cap, but another process (a build, a pull) was using the store,
    /// so nothing was removed this time: the next build that finishes alone enforces it.
    pub deferred: bool,
}

/// Seconds since the epoch, as the build cache records times (`last_used`).
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

impl Store {
    /// The record for `key`, if it exists and all its content is still in the store (a record
    /// whose content was collected is a miss). Marks it used.
    pub fn build_cache_lookup(&self, key: &Digest) -> Result<Option<CacheRecord>, StoreError> {
        let Some(record) = self.build_cache_record(key)? else {
            return Ok(None);
        };
        let complete = self.blobs().contains(&record.config)
            && record
                .layers
                .iter()
                .all(|layer| self.snapshot_path(&layer.chain_id).is_dir());
        if !complete {
            return Ok(None);
        }
        self.db.execute(
            "UPDATE build_cache SET last_used = ?2 WHERE key = ?1",
            params![key.to_string(), now()],
        )?;
        Ok(Some(record))
    }

    fn build_cache_record(&self, key: &Digest) -> Result<Option<CacheRecord>, StoreError> {
        let row = self
            .db
            .query_row(
                "SELECT definition, description, inputs, config, size, created, last_used
                 FROM build_cache WHERE key = ?1",
                [key.to_string()],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, i64>(4)?,
                        row.get::<_, i64>(5)?,
                        row.get::<_, i64>(6)?,
                    ))
                },
            )
            .optional()?;
        let Some((definition, description, inputs, config, size, created, last_used)) = row else {
            return Ok(None);
        };
        let chain_ids: Vec<String> = {
            let mut statement = self.db.prepare(
                "SELECT chain_id FROM build_cache_layers WHERE key = ?1 ORDER BY position",
            )?;
            statement
                .query_map([key.to_string()], |row| row.get(0))?
                .collect::<Result<_, _>>()?
        };
        let mut layers = Vec::with_capacity(chain_ids.len());
        for chain_id in chain_ids {
            let chain_id: Digest = chain_id.parse()?;
            match self.snapshot(&chain_id)? {
                Some(layer) => layers.push(layer),
                None => return Ok(None),
            }
        }
        Ok(Some(CacheRecord {
            key: *key,
            definition: definition.parse()?,
            description,
            inputs: serde_json::from_str(&inputs).unwrap_or_default(),
            config: config.parse()?,
            layers,
            size: size.max(0) as u64,
            created,
            last_used,
        }))
    }

    /// Records a step's result. Its config blob and layer snapshots must be in the store (the
    /// caller holds the ingest lock since writing them). Replaces an older record of the key.
    pub fn build_cache_insert(&mut self, record: &NewCacheRecord<'_>) -> Result<(), StoreError> {
        // A map of strings always serialises.
        let inputs = serde_json::to_string(record.inputs).unwrap_or_else(|_| "{}".to_string());
        let time = now();
        let transaction = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        transaction.execute(
            "DELETE FROM build_cache WHERE key = ?1",
            [record.key.to_string()],
        )?;
        transaction.execute(
            "INSERT INTO build_cache (key, definition, description, inputs, config, size, created, last_used)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            params![
                record.key.to_string(),
                record.definition.to_string(),
                record.description,
                inputs,
                record.config.to_string(),
                record.size as i64,
                time
            ],
        )?;
        for (position, layer) in record.layers.iter().enumerate() {
            transaction.execute(
                "INSERT INTO build_cache_layers (key, position, chain_id) VALUES (?1, ?2, ?3)",
                params![
                    record.key.to_string(),
                    position as i64,
                    layer.chain_id.to_string()
                ],
            )?;
        }
        transaction.commit()?;
        Ok(())
    }

    /// The most recently used record of the same step definition as `definition` (same op on
    /// the same parent) other than `key`: what a miss is compared with to explain it.
    pub fn build_cache_same_definition(
        &self,
        definition: &Digest,
    ) -> Result<Option<CacheRecord>, StoreError> {
        let key: Option<String> = self
            .db
            .query_row(
                "SELECT key FROM build_cache WHERE definition = ?1 ORDER BY last_used DESC LIMIT 1",
                [definition.to_string()],
                |row| row.get(0),
            )
            .optional()?;
        match key {
            Some(key) => self.build_cache_record(&key.parse()?),
            None => Ok(None),
        }
    }

    /// Every record, most recently used first.
    pub fn build_cache_records(&self) -> Result<Vec<CacheRecord>, StoreError> {
        let keys: Vec<String> = {
            let mut statement = self
                .db
                .prepare("SELECT key FROM build_cache ORDER BY last_used DESC, key")?;
            statement
                .query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()?
        };
        let mut records = Vec::new();
        for key in keys {
            if let Some(record) = self.build_cache_record(&key.parse()?)? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Removes build-cache records (least recently used first) per `options`, then collects
    /// garbage. Returns how many records were removed and the bytes freed.
    pub fn prune_build_cache(&self, options: &PruneOptions) -> Result<(usize, u64), StoreError> {
        let mut records: Vec<(String, i64, i64)> = {
            let mut statement = self
                .db
                .prepare("SELECT key, size, last_used FROM build_cache ORDER BY last_used, key")?;
            statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect::<Result<_, _>>()?
        };
        let cutoff = options
            .unused_for
            .map(|seconds| now() - seconds.min(i64::MAX as u64) as i64);
        let mut total: u64 = records.iter().map(|(_, size, _)| size.max(&0)).sum::<i64>() as u64;
        records.retain(|(_, _, last_used)| cutoff.is_none_or(|cutoff| *last_used <= cutoff));
        let mut removed = 0;
        for (key, size, _) in records {
            if options.keep_storage.is_some_and(|keep| total <= keep) {
                break;
            }
            self.db
                .execute("DELETE FROM build_cache WHERE key = ?1", [&key])?;
            total = total.saturating_sub(size.max(0) as u64);
            removed += 1;
        }
        let freed = self.collect_garbage()?;
        Ok((removed, freed))
    }

    /// Whether the record `key` exists with all its content in the store. Unlike
    /// [`Store::build_cache_lookup`] this does not mark it used.
    pub fn build_cache_complete(&self, key: &Digest) -> Result<bool, StoreError> {
        let Some(record) = self.build_cache_record(key)? else {
            return Ok(false);
        };
        Ok(self.blobs().contains(&record.config)
            && record
                .layers
                .iter()
                .all(|layer| self.snapshot_path(&layer.chain_id).is_dir()))
    }

    /// Every record used (looked up or recorded) at or after `since` (seconds since the epoch,
    /// see [`now`]), most recently used first: the records a build that started then used or
    /// made (`kiln build --cache-to ...,mode=max`). Times have one-second resolution, so a
    /// record used earlier in the same second is included too.
    pub fn build_cache_used_since(&self, since: i64) -> Result<Vec<CacheRecord>, StoreError> {
        let keys: Vec<String> = {
            let mut statement = self.db.prepare(
                "SELECT key FROM build_cache WHERE last_used >= ?1 ORDER BY last_used DESC, key",
            )?;
            statement
                .query_map([since], |row| row.get(0))?
                .collect::<Result<_, _>>()?
        };
        let mut records = Vec::new();
        for key in keys {
            if let Some(record) = self.build_cache_record(&key.parse()?)? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Keeps the build cache within `max` bytes (the records' own layer sizes, as
    /// [`Store::build_cache_size`] counts them): when it holds more, removes least recently used
    /// records until it fits, then collects garbage (what the removed records alone kept).
    /// Called after a build, when that build no longer uses any record. Records another process
    /// may be using are never removed: when the store lock is held by anyone else (a build or
    /// a pull holds it shared while it runs), nothing is removed and the result says
    /// `deferred`. Cheap when under the cap (one query).
    pub fn enforce_build_cache_cap(&self, max: u64) -> Result<CapEnforced, StoreError> {
        if self.build_cache_size()? <= max {
            return Ok(CapEnforced::default());
        }
        // Try the exclusive lock without waiting: if it cannot be had, someone is ingesting.
        // It is released before garbage collection takes it again (flock locks of two open
        // files conflict even within one process); a process that starts in between only
        // makes garbage collection wait for it.
        let path = self.layout().root().join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => drop(lock),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Ok(CapEnforced {
                    deferred: true,
                    ..CapEnforced::default()
                });
            }
            Err((_, errno)) => {
                return Err(StoreError::Io {
                    path,
                    source: std::io::Error::from(errno),
                });
            }
        }
        let (removed, freed) = self.prune_build_cache(&PruneOptions {
            unused_for: None,
            keep_storage: Some(max),
        })?;
        Ok(CapEnforced {
            removed,
            freed,
            deferred: false,
        })
    }

    /// Bytes of build-cache layers (the sum of the records' own layers).
    pub fn build_cache_size(&self) -> Result<u64, StoreError> {
        let size: i64 = self.db.query_row(
            "SELECT COALESCE(SUM(size), 0) FROM build_cache",
            [],
            |row| row.get(0),
        )?;
        Ok(size.max(0) as u64)
    }
}
