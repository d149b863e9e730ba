//! Writing archives: choose the images, then stream their blobs out of the store.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use super::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, ArchiveError, DockerItem, OCI_LAYOUT, blob_path,
};
use crate::blob;
use crate::digest::Digest;
use crate::image::{self, Descriptor, Index, Manifest};
use crate::reference::{AnyReference, Reference, parse_any};
use crate::store::{Store, StoreError};

/// What `kiln save` will write: every blob with its size, and the metadata files. Planning reads
/// only metadata, so it fails (unknown image, missing blob) before a byte is written.
#[derive(Debug, Clone)]
pub struct SavePlan {
    /// The blobs to write, each once however many images share it.
    blobs: BTreeMap<Digest, u64>,
    /// `index.json`, `manifest.json`, `oci-layout` and `repositories`, in archive order.
    files: Vec<(&'static str, Vec<u8>)>,
}

/// Chooses what to save, as `docker save` does: `name:tag` (and `name@digest`) saves that image;
/// a bare `name` saves every tag of that repository, or, when it has none, the image whose ID
/// starts with `name`; an ID saves the image without tags. Images named twice are saved once,
/// with all the tags they were named by. Fails if an image or one of its blobs is missing.
pub fn plan_save(store: &Store, names: &[String]) -> Result<SavePlan, ArchiveError> {
    let mut chosen: BTreeMap<Digest, BTreeSet<Reference>> = BTreeMap::new();
    for name in names {
        for (id, tags) in select(store, name)? {
            chosen.entry(id).or_default().extend(tags);
        }
    }
    plan_chosen(store, &chosen)
}

/// Plans an archive of one image by ID, named by `tags` in the archive only (they need not be
/// tags in the store): what `kiln build -o type=oci|docker,name=...` writes.
pub fn plan_save_image(
    store: &Store,
    id: &Digest,
    tags: &[Reference],
) -> Result<SavePlan, ArchiveError> {
    let chosen = BTreeMap::from([(*id, tags.iter().cloned().collect::<BTreeSet<_>>())]);
    plan_chosen(store, &chosen)
}

fn plan_chosen(
    store: &Store,
    chosen: &BTreeMap<Digest, BTreeSet<Reference>>,
) -> Result<SavePlan, ArchiveError> {
    let mut blobs = BTreeMap::new();
    let mut items = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut descriptors = Vec::new();
    for (id, tags) in chosen {
        let record = store.image(id)?;
        let manifest_bytes = store.blobs().read(&record.manifest)?;
        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).map_err(|source| ArchiveError::Json {
                name: record.manifest.to_string(),
                source,
            })?;
        if manifest.config.digest != *id {
            return Err(ArchiveError::ConfigMismatch {
                manifest: record.manifest,
                config: manifest.config.digest,
                image: *id,
            });
        }
        for digest in std::iter::once(id)
            .chain(std::iter::once(&record.manifest))
            .chain(manifest.layers.iter().map(|layer| &layer.digest))
        {
            blobs.insert(*digest, store.blobs().size(digest)?);
        }
        let layer_paths: Vec<String> = manifest
            .layers
            .iter()
            .map(|layer| blob_path(&layer.digest))
            .collect();
        let familiar: Vec<String> = tags.iter().map(Reference::familiar).collect();
        items.push(DockerItem {
            config: blob_path(id),
            repo_tags: (!familiar.is_empty()).then_some(familiar),
            layers: layer_paths,
        });
        let manifest_descriptor = Descriptor::new(
            &record.manifest_media_type,
            record.manifest,
            manifest_bytes.len() as u64,
        );
        if tags.is_empty() {
            descriptors.push(manifest_descriptor.clone());
        }
        for tag in tags {
            let tag_name = tag.tag().unwrap_or(crate::reference::DEFAULT_TAG);
            // Docker 25+: the full name for containerd, only the tag in the OCI annotation.
            let mut descriptor = manifest_descriptor.clone();
            descriptor
                .annotations
                .insert(ANNOTATION_IMAGE_NAME.to_string(), tag.to_string());
            descriptor
                .annotations
                .insert(ANNOTATION_REF_NAME.to_string(), tag_name.to_string());
            descriptors.push(descriptor);
            if let Some(top) = manifest.layers.last() {
                repositories
                    .entry(tag.familiar_name())
                    .or_default()
                    .insert(tag_name.to_string(), top.digest.hex());
            }
        }
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(image::MEDIA_TYPE_OCI_INDEX.to_string()),
        manifests: descriptors,
        annotations: BTreeMap::new(),
    };
    let mut files = vec![
        (
            "index.json",
            image::canonical_json(&index).map_err(ArchiveError::Encode)?,
        ),
        ("manifest.json", json_line(&items)?),
        ("oci-layout", OCI_LAYOUT.to_vec()),
    ];
    if !repositories.is_empty() {
        files.push(("repositories", json_line(&repositories)?));
    }
    Ok(SavePlan { blobs, files })
}

/// JSON as Go's `json.Encoder` writes it (Docker's `manifest.json` and `repositories`): struct
/// fields in declaration order, map keys sorted, a final newline.
fn json_line<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ArchiveError> {
    let mut bytes = serde_json::to_vec(value).map_err(ArchiveError::Encode)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// The images a name on the command line selects, with the tags it selects them by.
fn select(store: &Store, name: &str) -> Result<Vec<(Digest, Vec<Reference>)>, ArchiveError> {
    let by_id = |text: &str| -> Result<Vec<(Digest, Vec<Reference>)>, ArchiveError> {
        match store.lookup_id(text)? {
            Some(id) => Ok(vec![(id, Vec::new())]),
            None => Err(StoreError::NoSuchImage(name.to_string()).into()),
        }
    };
    let reference = match parse_any(name) {
        Ok(AnyReference::Id(id)) => return by_id(&id),
        Ok(AnyReference::Named(reference)) => reference,
        Err(_) => return by_id(name),
    };
    if reference.digest().is_some() {
        // Docker saves an image named by digest without a RepoTag.
        return match store.lookup_reference(&reference.to_string())? {
            Some(id) => Ok(vec![(id, Vec::new())]),
            None => Err(StoreError::NoSuchImage(name.to_string()).into()),
        };
    }
    if reference.tag().is_some() {
        return match store.lookup_reference(&reference.to_string())? {
            Some(id) => Ok(vec![(id, vec![reference])]),
            None => Err(StoreError::NoSuchImage(name.to_string()).into()),
        };
    }
    // A repository without a tag: every tag of it, else an ID prefix.
    let repository = reference.name();
    let mut selected = Vec::new();
    for image in store.images()? {
        let tags: Vec<Reference> = image
            .tags
            .iter()
            .filter_map(|tag| Reference::parse(tag).ok())
            .filter(|tag| tag.name() == repository)
            .collect();
        if !tags.is_empty() {
            selected.push((image.id, tags));
        }
    }
    if selected.is_empty() {
        return by_id(name);
    }
    Ok(selected)
}

/// Every outer tar entry gets the same owner, mode and time, so the same images give the same
/// bytes.
const MTIME: u64 = 0;

impl SavePlan {
    /// The blobs the archive will hold.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        self.blobs.keys()
    }

    /// Writes the archive: `blobs/sha256/...` then the metadata files, sorted by name, each blob
    /// streamed from the store through a verifying reader. A blob found corrupt fails the write
    /// (the output is then incomplete: the caller discards it). Returns the bytes written.
    pub fn write(&self, store: &Store, out: &mut dyn Write) -> Result<u64, ArchiveError> {
        let mut written = 0;
        written += directory(out, "blobs/")?;
        written += directory(out, "blobs/sha256/")?;
        for (digest, size) in &self.blobs {
            let reader = store.blobs().open(digest)?;
            let path = store.blobs().path(digest);
            written +=
                file(out, &blob_path(digest), *size, reader).map_err(|error| match error {
                    EntryError::Read(error) => ArchiveError::Blob(blob::read_error(error, &path)),
                    EntryError::Write(error) => ArchiveError::Write(error),
                    EntryError::Size { actual } => {
                        ArchiveError::Blob(blob::BlobError::SizeMismatch {
                            expected: *digest,
                            size: *size,
                            actual,
                        })
                    }
                })?;
        }
        for (name, bytes) in &self.files {
            written +=
                file(out, name, bytes.len() as u64, bytes.as_slice()).map_err(
                    |error| match error {
                        EntryError::Read(error) | EntryError::Write(error) => {
                            ArchiveError::Write(error)
                        }
                        EntryError::Size { actual } => ArchiveError::Write(io::Error::other(
                            format!("{name}: {actual} bytes instead of {}", bytes.len()),
                        )),
                    },
                )?;
        }
        // End of archive: two zero blocks.
        out.write_all(&[0; 1024]).map_err(ArchiveError::Write)?;
        out.flush().map_err(ArchiveError::Write)?;
        Ok(written + 1024)
    }
}

enum EntryError {
    Read(io::Error),
    Write(io::Error),
    Size { actual: u64 },
}

fn header(name: &str, kind: tar::EntryType, mode: u32, size: u64) -> io::Result<tar::Header> {
    let mut header = tar::Header::new_ustar();
    header.set_path(name)?;
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header.set_size(size);
    header.set_cksum();
    Ok(header)
}

fn directory(out: &mut dyn Write, name: &str) -> Result<u64, ArchiveError> {
    let header = header(name, tar::EntryType::Directory, 0o755, 0).map_err(ArchiveError::Write)?;
    out.write_all(header.as_bytes())
        .map_err(ArchiveError::Write)?;
    Ok(512)
}

/// Writes one regular file entry of exactly `size` bytes from `content`.
fn file(out: &mut dyn Write, name: &str, size: u64, content: impl Read) -> Result<u64, EntryError> {
    let header = header(name, tar::EntryType::Regular, 0o644, size).map_err(EntryError::Write)?;
    out.write_all(header.as_bytes())
        .map_err(EntryError::Write)?;
    // Copy with distinct errors for the two sides; read one byte past `size` to notice growth.
    let mut content = content.take(size + 1);
    let mut buffer = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    loop {
        let read = match content.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(EntryError::Read(error)),
        };
        copied += read as u64;
        if copied > size {
            return Err(EntryError::Size { actual: copied });
        }
        out.write_all(&buffer[..read]).map_err(EntryError::Write)?;
    }
    if copied != size {
        return Err(EntryError::Size { actual: copied });
    }
    let padding = (512 - size % 512) % 512;
    out.write_all(&[0u8; 512][..padding as usize])
        .map_err(EntryError::Write)?;
    Ok(512 + size + padding)
}
