//! Compressed variants of stored layers, made when an image leaves the store.
//!
//! `kiln build` keeps the layers it makes uncompressed (the blob is the layer tar, and its digest
//! the diff ID): compressing costs seconds per hundred megabytes and nothing local reads the
//! compressed bytes. A registry wants compressed layers, as `docker push` sends them, so the
//! first push of such a layer compresses it (gzip, with the store's deterministic settings: the
//! same layer gives the same compressed digest on every machine) into a blob of its own and
//! records it here, keyed by diff ID and media type. Later pushes find it (no recompression, and
//! the registry's `HEAD` answers at once), and so do other images sharing the layer.
//!
//! A variant is metadata about a blob; [`Store::collect_garbage`] keeps its blob while a
//! snapshot with its diff ID exists, and forgets it with the last one.

use std::io;

use rusqlite::{OptionalExtension, params};

use crate::digest::{Digest, DigestWriter};
use crate::layer::{Compression, Compressor};
use crate::store::{LayerRecord, Store, StoreError};

/// The table of variants, created on open with the rest of the schema.
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS layer_variants (
    diff_id    TEXT NOT NULL,
    media_type TEXT NOT NULL,
    blob       TEXT NOT NULL,
    blob_size  INTEGER NOT NULL,
    PRIMARY KEY (diff_id, media_type)
);
";

/// A layer blob as it goes out of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

impl Store {
    /// The blob of `layer` compressed as `compression`: the layer's own blob when it already
    /// is, else its recorded variant, else a new variant compressed now from the layer's blob
    /// (verified against the diff ID while it is read) and recorded. A layer whose compression
    /// kiln does not know is returned as it is. The caller holds the ingest lock
    /// ([`Store::ingest`]) so that garbage collection cannot run meanwhile.
    pub fn layer_blob(
        &self,
        layer: &LayerRecord,
        compression: Compression,
    ) -> Result<LayerBlob, StoreError> {
        let own = LayerBlob {
            media_type: layer.media_type.clone(),
            digest: layer.blob,
            size: layer.blob_size,
        };
        let wanted = compression.media_type();
        match Compression::from_media_type(&layer.media_type) {
            Some(Compression::None) if compression != Compression::None => {}
            Some(_) | None => return Ok(own),
        }
        if let Some(found) = self.variant(&layer.diff_id, wanted)? {
            return Ok(found);
        }
        let mut source = self.blobs().open(&layer.blob)?;
        let writer = self.blobs().writer()?;
        let compressor = Compressor::new(compression, writer).map_err(|source| StoreError::Io {
            path: self.layout().tmp(),
            source,
        })?;
        let mut hashed = DigestWriter::new(compressor);
        io::copy(&mut source, &mut hashed)
            .map_err(|error| crate::blob::read_error(error, &self.blobs().path(&layer.blob)))?;
        let (diff_id, _, compressor) = hashed.finish();
        if diff_id != layer.diff_id {
            return Err(StoreError::DiffIdMismatch {
                blob: layer.blob,
                expected: layer.diff_id,
                actual: diff_id,
            });
        }
        let stored = compressor
            .finish()
            .map_err(|source| StoreError::Io {
                path: self.layout().tmp(),
                source,
            })?
            .commit()?;
        self.db.execute(
            "INSERT OR REPLACE INTO layer_variants (diff_id, media_type, blob, blob_size)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                layer.diff_id.to_string(),
                wanted,
                stored.digest.to_string(),
                stored.size as i64
            ],
        )?;
        Ok(LayerBlob {
            media_type: wanted.to_string(),
            digest: stored.digest,
            size: stored.size,
        })
    }

    /// The recorded variant of the layer `diff_id` as `media_type`, if its blob is present.
    fn variant(&self, diff_id: &Digest, media_type: &str) -> Result<Option<LayerBlob>, StoreError> {
        let row: Option<(String, i64)> = self
            .db
            .query_row(
                "SELECT blob, blob_size FROM layer_variants WHERE diff_id = ?1 AND media_type = ?2",
                params![diff_id.to_string(), media_type],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let Some((blob, size)) = row else {
            return Ok(None);
        };
        let digest: Digest = blob.parse()?;
        if !self.blobs().contains(&digest) {
            return Ok(None);
        }
        Ok(Some(LayerBlob {
            media_type: media_type.to_string(),
            digest,
            size: size as u64,
        }))
    }
}
