//! What a container changed in its image, and files in and out of a container: the library side
//! of `kiln diff`, `commit`, `export` and `cp`.
//!
//! A container's file system is its image's layer snapshots (the overlayfs lower dirs) under its
//! own upper dir (`containers/<id>/upper`). Everything here reads those directories directly,
//! through a merged view that applies overlayfs's rules (a whiteout or a non-directory hides what
//! lower layers have at its path, an opaque directory hides their content below it), so no mount
//! is made and no process is run. Does not own the tar formats of layers (see [`crate::layer`]),
//! nor how `-c` instructions change a config (the builder does that; [`commit`] takes the result).
//!
//! **Security boundary.** Paths inside the container are resolved in the merged view one
//! component at a time, each looked up with `fstatat(AT_SYMLINK_NOFOLLOW)` / `openat(O_NOFOLLOW)`
//! relative to the descriptor of the directory before it, never as a path with a `/` in it.
//! Symlinks met on the way are followed with chroot semantics: an absolute target restarts at the
//! container's root and `..` stops there, so a symlink to `/etc` means the container's `/etc`.
//! This is the resolution [`crate::layer`] gets from `openat2(RESOLVE_IN_ROOT)` for a single
//! tree, done by hand because a stack of layers is not one tree the kernel can resolve in.
//! Archives coming into a container are unpacked by [`crate::layer::apply_layer`] into a staging
//! directory next to the upper dir and then moved in, and archives going out to the host are
//! unpacked by it in the host destination, so hostile names and links are handled by the code that
//! applies image layers, and nothing is written outside the upper dir or the host destination.
//!
//! **Running containers.** kiln only runs containers in the foreground so far, so every
//! container these functions see is stopped and its layers are quiescent. For a running one,
//! [`ContainerFs::changes`] and [`commit`] can keep reading the upper dir (Docker pauses the
//! container for a commit, `-p`), but copying in and exporting must go through the container's
//! mounted root (`/proc/<pid>/root`, one tree resolved with `openat2(RESOLVE_IN_ROOT)`, volumes
//! included): writing into the upper dir of a mounted overlay is undefined. That will be a
//! second way to build a [`ContainerFs`]; its callers do not change. Until then the caller makes
//! sure the container is not running before [`ContainerFs::copy_in`].

use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, futimens, mkdirat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};
use tar::{EntryType, Header};

use crate::blob::BlobWriter;
use crate::container::ContainerRecord;
use crate::digest::{Digest, DigestWriter};
use crate::image::{self, ContainerConfig, Descriptor, History, ImageConfig, Manifest};
use crate::layer::{
    self, ApplyOptions, Compression, DeviceNodes, LayerError, LayerSource, Whiteouts, WriteOptions,
};
use crate::reference::Reference;
use crate::store::{LayerRecord, NewImage, Store, StoreError};

/// Why a change could not be listed, committed, exported or copied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChangesError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("image {image} has an unreadable config")]
    Config {
        image: Digest,
        #[source]
        source: serde_json::Error,
    },
    #[error("encoding the image metadata")]
    Json(#[source] serde_json::Error),
    /// A path inside the container (as the user gave it, or the layer path when walking).
    #[error("cannot read {path} in the container")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    /// A path inside the container that could not be written.
    #[error("cannot write {path} in the container")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    /// A path on the host.
    #[error("cannot read {path}")]
    Host {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the archive")]
    Output(#[source] io::Error),
    #[error("could not find the file {0} in the container")]
    NotFound(String),
    #[error("{0}: not a directory")]
    NotADirectory(String),
    #[error("cannot copy a directory to a file: {0} exists and is not a directory")]
    DirectoryToFile(String),
    #[error("destination directory {0} does not exist")]
    NoSuchDirectory(String),
    #[error("{0}: too many levels of symbolic links")]
    SymlinkLoop(String),
}

/// What happened to a path, in `docker diff`'s letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    /// `A`: not in the image.
    Added,
    /// `C`: in the image, replaced or modified (a directory: something below it changed).
    Changed,
    /// `D`: in the image, deleted.
    Deleted,
}

impl std::fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChangeKind::Added => "A",
            ChangeKind::Changed => "C",
            ChangeKind::Deleted => "D",
        })
    }
}

/// One changed path; displays as `docker diff` prints it (`C /etc/passwd`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// Absolute path inside the container.
    pub path: PathBuf,
    pub kind: ChangeKind,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.path.display())
    }
}

/// A container's changes to its image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Sorted by path (bytewise, as Docker sorts them).
    pub changes: Vec<Change>,
    /// Entries of the upper dir that are not changes (relative paths, no leading `/`): the
    /// runtime's own mount targets and the directories copied up only to hold them, which
    /// Docker keeps in a separate init layer. [`commit`] leaves them out of the layer.
    pub omitted: BTreeSet<Vec<u8>>,
}

/// Mount targets the runtime creates in the upper dir when the image lacks them (directories
/// for `/proc`, `/dev`, `/sys`; empty files for the bind-mounted `/etc` files), and the
/// directory it may create to hold them.
const RUNTIME_DIRECTORIES: [&[u8]; 3] = [b"proc", b"dev", b"sys"];
const RUNTIME_FILES: [&[u8]; 3] = [b"etc/hostname", b"etc/hosts", b"etc/resolv.conf"];
const RUNTIME_PARENTS: [&[u8]; 1] = [b"etc"];

/// How many symlinks one resolution follows before giving up (Linux's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// A container's file system as layers: its upper dir over its image's snapshots.
#[derive(Debug, Clone)]
pub struct ContainerFs {
    upper: PathBuf,
    /// Top-most first.
    lower: Vec<PathBuf>,
}

/// Options of [`ContainerFs::copy_in`] and [`ContainerFs::copy_out`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyOptions {
    /// `-a`: keep the source's uid/gid. Otherwise what is copied in belongs to the container's
    /// root (uid 0: kiln runs as root to write an upper dir) and what is copied out to the
    /// caller.
    pub archive: bool,
    /// `-L`: follow a symlink named as the source (parents are always followed).
    pub follow_link: bool,
}

/// Where [`ContainerFs::copy_out`] puts what it copies.
#[derive(Debug)]
pub enum CopyTarget<'a, W: Write> {
    /// A host path, with Docker's rules for existing and missing destinations.
    Path(&'a Path),
    /// A tar stream (`-`), its top entry named after the source.
    Archive(W),
}

/// What [`ContainerFs::copy_in`] copies.
#[derive(Debug)]
pub enum CopySource<'a, R: Read> {
    /// A host path.
    Path(&'a Path),
    /// A tar stream (`-`), unpacked into the destination directory.
    Archive(R),
}

impl ContainerFs {
    /// A view of `upper` over `lower`, given bottom-most first (an image's layer order).
    pub fn new(upper: impl Into<PathBuf>, lower: Vec<PathBuf>) -> ContainerFs {
        let mut lower = lower;
        lower.reverse();
        ContainerFs {
            upper: upper.into(),
            lower,
        }
    }

    /// `upper` over the snapshots of `layers` (an image's layers, bottom-most first).
    pub fn over_layers(
        store: &Store,
        upper: impl Into<PathBuf>,
        layers: &[LayerRecord],
    ) -> ContainerFs {
        ContainerFs::new(
            upper,
            layers
                .iter()
                .map(|layer| store.snapshot_path(&layer.chain_id))
                .collect(),
        )
    }

    /// The file system of a stored container: its upper dir over its image's snapshots.
    pub fn of(store: &Store, container: &ContainerRecord) -> Result<ContainerFs, ChangesError> {
        let image = store.image(&container.image)?;
        Ok(ContainerFs::over_layers(
            store,
            store.container_dir(&container.id).join("upper"),
            &image.layers,
        ))
    }

    /// The upper dir.
    pub fn upper(&self) -> &Path {
        &self.upper
    }

    fn root(&self) -> Result<Found, ChangesError> {
        let mut paths = vec![self.upper.as_path()];
        paths.extend(self.lower.iter().map(PathBuf::as_path));
        open_root(&paths).map_err(|source| ChangesError::Read {
            path: "/".to_string(),
            source,
        })
    }

    /// What the container changed, compared with its image, as `docker diff` lists it: a
    /// whiteout is `D` (when the image had the path); an opaque directory is `C`, and what the
    /// image had in it and the upper dir does not is `D`; a path the image lacks is `A`, and so
    /// is everything below it; a path the image has is `C`, a directory only when its mode or
    /// owner changed or something below it changed. The runtime's own mount targets are not
    /// changes (see [`Changes::omitted`]). Reads the upper dir only; the layers are consulted
    /// for the paths it holds.
    pub fn changes(&self) -> Result<Changes, ChangesError> {
        let read_error = |source| ChangesError::Read {
            path: self.upper.display().to_string(),
            source,
        };
        let upper = open_directory(&self.upper).map_err(read_error)?;
        let lower = self
            .lower
            .iter()
            .enumerate()
            .map(|(index, path)| open_directory(path).map(|fd| (index + 1, fd)))
            .collect::<io::Result<Vec<Layer>>>()
            .map_err(read_error)?;
        let mut differ = Differ::default();
        differ
            .directory(upper.as_fd(), Some(&lower), b"")
            .map_err(read_error)?;
        differ.changes.sort();
        Ok(Changes {
            changes: differ.changes,
            omitted: differ.omitted,
        })
    }

    /// Writes the merged file system as an uncompressed tar (`docker export`): layers in
    /// order, whiteouts honoured, everything the upper dir holds included (the runtime's mount
    /// targets too, as Docker's export has them). Entries are sorted, directories first,
    /// numeric owners, xattrs as PAX records, hardlinks kept. Names starting with `.wh.` are
    /// left out: in an archive they would mean deletions.
    pub fn export(&self, out: impl Write) -> Result<(), ChangesError> {
        let root = self.root()?;
        let mut writer = ArchiveWriter::new(out);
        writer.tree(&root, None)?;
        writer.finish().map(drop)
    }

    /// `docker cp CONTAINER:SOURCE DESTINATION`. `source` is resolved inside the container
    /// (chroot semantics); a final symlink is copied as a symlink unless
    /// [`CopyOptions::follow_link`] or the path ends in `/` or `/.`. A host destination follows
    /// Docker's rules: an existing directory receives the source under its own name (or its
    /// content, for a directory source ending in `/.`); an existing file is overwritten (a
    /// directory source is an error); a missing path is created with the source's content
    /// (its parent must exist; a file source with a trailing `/` is an error). Writing on the
    /// host goes through [`layer::apply_layer`] rooted at the destination directory, so nothing
    /// from the container lands outside it.
    pub fn copy_out<W: Write>(
        &self,
        source: &str,
        target: CopyTarget<'_, W>,
        options: &CopyOptions,
    ) -> Result<(), ChangesError> {
        let spec = PathSpec::parse(source.as_bytes());
        let follow = options.follow_link || spec.trailing_slash || spec.contents;
        let resolved = resolve(self.root()?, &spec.path, follow, source)?;
        let Some(found) = &resolved.found else {
            return Err(ChangesError::NotFound(source.to_string()));
        };
        let is_directory = found.directory.is_some();
        if (spec.trailing_slash || spec.contents) && !is_directory {
            return Err(ChangesError::NotADirectory(source.to_string()));
        }
        let source_name = spec.name.clone().unwrap_or_else(|| resolved.name.clone());
        match target {
            CopyTarget::Archive(out) => {
                let name = (!spec.contents && !source_name.is_empty()).then_some(source_name);
                let mut writer = ArchiveWriter::new(out);
                writer.tree(found, name.as_ref().map(|name| name.as_bytes()))?;
                writer.finish().map(drop)
            }
            CopyTarget::Path(destination) => {
                let existing = match std::fs::metadata(destination) {
                    Ok(metadata) if metadata.is_dir() => Existing::Directory,
                    Ok(_) => Existing::Other,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => Existing::Missing,
                    Err(source) => {
                        return Err(ChangesError::Host {
                            path: destination.to_path_buf(),
                            source,
                        });
                    }
                };
                let destination_spec = PathSpec::parse(destination.as_os_str().as_bytes());
                let placement = place(
                    is_directory,
                    spec.contents,
                    &source_name,
                    &destination_spec,
                    existing,
                    &destination.display().to_string(),
                )?;
                let directory = if placement.into_destination {
                    destination.to_path_buf()
                } else {
                    match destination.parent() {
                        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
                        _ => PathBuf::from("."),
                    }
                };
                if !directory.is_dir() {
                    return Err(ChangesError::NoSuchDirectory(
                        directory.display().to_string(),
                    ));
                }
                let root = nix::unistd::geteuid().is_root();
                let apply = ApplyOptions {
                    whiteouts: Whiteouts::Apply,
                    preserve_ownership: options.archive && root,
                    devices: if root {
                        DeviceNodes::Create
                    } else {
                        DeviceNodes::Skip
                    },
                    xattrs: true,
                };
                stream_into(found, placement.name.as_deref(), &directory, &apply)
            }
        }
    }

    /// `docker cp SOURCE CONTAINER:DESTINATION`. `destination` is resolved inside the container
    /// (chroot semantics, a final symlink followed) and the rules of [`ContainerFs::copy_out`]
    /// apply to it; an archive source needs an existing directory. What is copied is unpacked
    /// by [`layer::apply_layer`] into a staging directory next to the upper dir (same file
    /// system), then moved into the upper dir: a directory that only the image has is created
    /// in the upper dir with the image's mode, owner and mtime and merged into; anything else
    /// in the way is replaced, and a directory replacing something over an image directory is
    /// marked opaque. The container must not be running (see the module documentation).
    ///
    /// Known limits: a hardlink in an archive can only point at another entry of the same
    /// archive; a directory copied over an existing one keeps the existing one's extended
    /// attributes and gets the copied one's mode, owner and mtime, as Docker does.
    pub fn copy_in<R: Read>(
        &self,
        source: CopySource<'_, R>,
        destination: &str,
        options: &CopyOptions,
    ) -> Result<(), ChangesError> {
        let destination_spec = PathSpec::parse(destination.as_bytes());
        let resolved = resolve(self.root()?, &destination_spec.path, true, destination)?;
        let existing = match &resolved.found {
            Some(found) if found.directory.is_some() => Existing::Directory,
            Some(_) => Existing::Other,
            None => Existing::Missing,
        };
        let staging_parent = self.upper.parent().unwrap_or(&self.upper);
        let staging = tempfile::Builder::new()
            .prefix("cp-")
            .tempdir_in(staging_parent)
            .map_err(|source| ChangesError::Host {
                path: staging_parent.to_path_buf(),
                source,
            })?;
        let apply = ApplyOptions {
            whiteouts: Whiteouts::Apply,
            preserve_ownership: options.archive,
            devices: DeviceNodes::Create,
            xattrs: true,
        };
        let into_destination = match source {
            CopySource::Archive(reader) => {
                if existing != Existing::Directory {
                    return Err(ChangesError::NotADirectory(destination.to_string()));
                }
                layer::apply_layer(staging.path(), reader, &apply)?;
                true
            }
            CopySource::Path(path) => {
                let (found, source_name, contents) = host_source(path, options.follow_link)?;
                let placement = place(
                    found.directory.is_some(),
                    contents,
                    &source_name,
                    &destination_spec,
                    existing,
                    destination,
                )?;
                stream_into(&found, placement.name.as_deref(), staging.path(), &apply)?;
                placement.into_destination
            }
        };
        let Resolved {
            mut parents, found, ..
        } = resolved;
        if into_destination && let Some(found) = found {
            parents.push(found);
        }
        let target = ensure_upper(parents, destination)?;
        let staged = open_directory(staging.path()).map_err(|source| ChangesError::Host {
            path: staging.path().to_path_buf(),
            source,
        })?;
        merge(staged.as_fd(), &target, destination)
    }
}

/// What a path names in a [`ContainerFs`] (symlinks followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Missing,
    Directory,
    /// Anything else: a file, a device, a dangling symlink's target...
    Other,
}

impl ContainerFs {
    /// What `path` names, resolved inside the view with chroot semantics, every symlink
    /// followed. A path under a missing directory is [`PathKind::Missing`]; one under a
    /// non-directory is an error ([`ChangesError::NotADirectory`]).
    pub fn kind(&self, path: &str) -> Result<PathKind, ChangesError> {
        match resolve(self.root()?, path.as_bytes(), true, path) {
            Ok(Resolved { found: None, .. }) | Err(ChangesError::NotFound(_)) => {
                Ok(PathKind::Missing)
            }
            Ok(Resolved {
                found: Some(found), ..
            }) => Ok(if found.directory.is_some() {
                PathKind::Directory
            } else {
                PathKind::Other
            }),
            Err(error) => Err(error),
        }
    }

    /// `mkdir -p path` inside the view: the missing directories (each resolved inside the
    /// view, symlinks followed) are created in the upper dir with mode 0755, owner
    /// `uid:gid` and modification time `mtime` (seconds since the epoch); existing ones are
    /// left as they are. Fails when a component is not a directory.
    pub fn make_dirs(
        &self,
        path: &str,
        uid: u32,
        gid: u32,
        mtime: u64,
    ) -> Result<(), ChangesError> {
        self.make_dirs_following(path, uid, gid, mtime, 0)
    }

    fn make_dirs_following(
        &self,
        path: &str,
        uid: u32,
        gid: u32,
        mtime: u64,
        links: usize,
    ) -> Result<(), ChangesError> {
        let path = clean_path(path);
        let names: Vec<&str> = path.split('/').filter(|name| !name.is_empty()).collect();
        let mut existing = 0;
        let mut prefix = String::from("/");
        for (index, name) in names.iter().enumerate() {
            let candidate = format!("{prefix}{name}/");
            match self.kind(&candidate)? {
                PathKind::Directory => {
                    prefix = candidate;
                    existing = index + 1;
                }
                PathKind::Missing => {
                    // A dangling symlink: create what it points at, inside the view.
                    if let Some(target) = self.link_target(&format!("{prefix}{name}"))? {
                        if links >= MAX_SYMLINKS {
                            return Err(ChangesError::SymlinkLoop(path.clone()));
                        }
                        let target = String::from_utf8_lossy(&target).to_string();
                        let base = if target.starts_with('/') {
                            String::new()
                        } else {
                            prefix.clone()
                        };
                        let rest = names[index + 1..].join("/");
                        let followed = format!("{base}{target}/{rest}");
                        return self.make_dirs_following(&followed, uid, gid, mtime, links + 1);
                    }
                    break;
                }
                PathKind::Other => return Err(ChangesError::NotADirectory(candidate)),
            }
        }
        if existing == names.len() {
            return Ok(());
        }
        let mut archive = tar::Builder::new(Vec::new());
        let mut relative = String::new();
        for name in &names[existing..] {
            relative.push_str(name);
            relative.push('/');
            let mut header = Header::new_ustar();
            header.set_entry_type(EntryType::Directory);
            header.set_mode(0o755);
            header.set_uid(u64::from(uid));
            header.set_gid(u64::from(gid));
            header.set_mtime(mtime);
            header.set_size(0);
            archive
                .append_data(&mut header, &relative, io::empty())
                .map_err(ChangesError::Output)?;
        }
        let bytes = archive.into_inner().map_err(ChangesError::Output)?;
        self.copy_in(
            CopySource::Archive(bytes.as_slice()),
            &prefix,
            &CopyOptions {
                archive: true,
                follow_link: false,
            },
        )
    }

    /// The target of the symlink at `path` (parents resolved inside the view), if it is one.
    /// The names in the directory `path` of the view (resolved inside the view, symlinks
    /// followed), sorted, as a reader of the merged file system sees them: whiteouts and what
    /// they hide are left out. Fails with [`ChangesError::NotFound`] or
    /// [`ChangesError::NotADirectory`].
    pub fn read_dir(&self, path: &str) -> Result<Vec<OsString>, ChangesError> {
        let resolved = resolve(self.root()?, path.as_bytes(), true, path)?;
        let Some(found) = resolved.found else {
            return Err(ChangesError::NotFound(path.to_string()));
        };
        let Some(layers) = &found.directory else {
            return Err(ChangesError::NotADirectory(path.to_string()));
        };
        let read_error = |source| ChangesError::Read {
            path: path.to_string(),
            source,
        };
        let mut names = Vec::new();
        for child in merged_names(layers).map_err(read_error)? {
            if child
                .as_bytes()
                .starts_with(layer::WHITEOUT_PREFIX.as_bytes())
            {
                continue;
            }
            if lookup(layers, &child).map_err(read_error)?.is_some() {
                names.push(child);
            }
        }
        Ok(names)
    }

    fn link_target(&self, path: &str) -> Result<Option<Vec<u8>>, ChangesError> {
        let resolved = match resolve(self.root()?, path.as_bytes(), false, path) {
            Ok(resolved) => resolved,
            Err(ChangesError::NotFound(_)) => return Ok(None),
            Err(error) => return Err(error),
        };
        let Some(found) = resolved.found else {
            return Ok(None);
        };
        if file_type(&found.entry.stat) != SFlag::S_IFLNK {
            return Ok(None);
        }
        let target = readlinkat(found.entry.parent.as_fd(), found.entry.name.as_os_str()).map_err(
            |errno| ChangesError::Read {
                path: path.to_string(),
                source: errno.into(),
            },
        )?;
        Ok(Some(target.into_vec()))
    }
}

/// `path` with `.` and `..` resolved lexically (`..` stops at the root), absolute.
fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for name in path.split('/') {
        match name {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    format!("/{}", parts.join("/"))
}

/// What a destination path names before the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    Directory,
    Other,
    Missing,
}

/// A `cp` path argument: its components, whether it ends in `/` or `/.`, and its last name.
#[derive(Debug, Clone)]
struct PathSpec {
    path: Vec<u8>,
    trailing_slash: bool,
    /// Ends in `/.` (or is `.`): a directory's content rather than the directory.
    contents: bool,
    /// The last normal component, if the path has one that is not `.` or `..`.
    name: Option<OsString>,
}

impl PathSpec {
    fn parse(raw: &[u8]) -> PathSpec {
        let contents = raw == b"." || raw.ends_with(b"/.");
        let trailing_slash = raw.ends_with(b"/") && raw != b"/";
        let name = raw
            .split(|&byte| byte == b'/')
            .rfind(|component| !component.is_empty() && *component != b".")
            .filter(|component| *component != b"..")
            .map(|component| OsString::from_vec(component.to_vec()));
        PathSpec {
            path: raw.to_vec(),
            trailing_slash,
            contents,
            name,
        }
    }
}

/// Where a copy goes: into the destination (a directory) or into its parent, under `name`
/// (`None`: the source directory's content goes straight in).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placement {
    into_destination: bool,
    name: Option<OsString>,
}

/// Docker's `cp` rules (`docker cp --help`, archive.CopyInfoDestinationPath).
fn place(
    source_is_directory: bool,
    contents: bool,
    source_name: &OsStr,
    destination: &PathSpec,
    existing: Existing,
    shown: &str,
) -> Result<Placement, ChangesError> {
    let destination_name = || destination.name.clone().filter(|name| !name.is_empty());
    match existing {
        Existing::Directory => Ok(Placement {
            into_destination: true,
            name: {
                let copy_contents = source_is_directory && contents;
                (!copy_contents && !source_name.is_empty()).then(|| source_name.to_os_string())
            },
        }),
        Existing::Other if source_is_directory => {
            Err(ChangesError::DirectoryToFile(shown.to_string()))
        }
        Existing::Other if destination.trailing_slash => {
            Err(ChangesError::NotADirectory(shown.to_string()))
        }
        Existing::Missing if destination.trailing_slash && !source_is_directory => {
            Err(ChangesError::NoSuchDirectory(shown.to_string()))
        }
        Existing::Other | Existing::Missing => match destination_name() {
            Some(name) => Ok(Placement {
                into_destination: false,
                name: Some(name),
            }),
            None => Err(ChangesError::NotADirectory(shown.to_string())),
        },
    }
}

/// The host side of a copy in: the source opened as a one-layer view, its name, and whether
/// only a directory's content is copied.
fn host_source(path: &Path, follow: bool) -> Result<(Found, OsString, bool), ChangesError> {
    let host_error = |source| ChangesError::Host {
        path: path.to_path_buf(),
        source,
    };
    let spec = PathSpec::parse(path.as_os_str().as_bytes());
    if spec.contents {
        let found = open_root(&[path]).map_err(host_error)?;
        let name = spec.name.unwrap_or_default();
        return Ok((found, name, true));
    }
    // The user's path is trusted: everything but a final symlink is followed by the kernel.
    let target = if follow || spec.trailing_slash || spec.name.is_none() {
        std::fs::canonicalize(path).map_err(host_error)?
    } else {
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let parent = std::fs::canonicalize(parent).map_err(host_error)?;
        parent.join(path.file_name().unwrap_or_default())
    };
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        // The host's root directory: its content.
        let found = open_root(&[target.as_path()]).map_err(host_error)?;
        return Ok((found, OsString::new(), true));
    };
    let root = open_root(&[parent]).map_err(host_error)?;
    let layers = root.directory.as_deref().unwrap_or_default();
    let found = lookup(layers, name)
        .map_err(host_error)?
        .ok_or_else(|| host_error(io::Error::from(io::ErrorKind::NotFound)))?;
    if spec.trailing_slash && found.directory.is_none() {
        return Err(ChangesError::NotADirectory(path.display().to_string()));
    }
    Ok((
        found,
        spec.name.unwrap_or_else(|| name.to_os_string()),
        false,
    ))
}

/// Writes `found` as an archive (its top entry named `name`, or only its content) through a
/// pipe into [`layer::apply_layer`] rooted at `directory`.
fn stream_into(
    found: &Found,
    name: Option<&OsStr>,
    directory: &Path,
    options: &ApplyOptions,
) -> Result<(), ChangesError> {
    let (reader, writer) = io::pipe().map_err(ChangesError::Output)?;
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || {
            let mut archive = ArchiveWriter::new(writer);
            archive.tree(found, name.map(OsStr::as_bytes))?;
            archive.finish().map(drop)
        });
        let mut reader = reader;
        let applied = layer::apply_layer(directory, &mut reader, options);
        // The writer may still be writing the end-of-archive blocks after the second-to-last
        // one stopped the reader: drain them, or it would fail with a broken pipe.
        if applied.is_ok() {
            io::copy(&mut reader, &mut io::sink()).map_err(ChangesError::Output)?;
        }
        drop(reader);
        let produced = producer.join().unwrap_or_else(|_| {
            Err(ChangesError::Output(io::Error::other(
                "archive writer panicked",
            )))
        });
        // An apply error stops the reader, which the writer sees as a broken pipe: report the
        // apply error, the cause.
        applied?;
        produced
    })
}

// ---------------------------------------------------------------------------------------------
// The merged view.

/// A layer's directory: its index (0 is the upper dir, then the lower dirs top-most first) and
/// an open descriptor.
type Layer = (usize, OwnedFd);

/// An entry of the merged view: the top-most layer that has it, and where.
#[derive(Debug)]
struct Entry {
    parent: OwnedFd,
    /// `.` for a layer's root.
    name: OsString,
    stat: FileStat,
}

/// An entry found in the merged view; a directory with the layers that contribute to it.
#[derive(Debug)]
struct Found {
    entry: Entry,
    /// For a directory: the layers whose directory at this path is visible, top-most first.
    directory: Option<Vec<Layer>>,
}

fn directory_flags() -> OFlag {
    OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC
}

/// Opens a layer root (a trusted path: a symlink there is followed).
fn open_directory(path: &Path) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::open(path, directory_flags(), Mode::empty())?)
}

/// Opens the directory `name` in `parent`, refusing to follow a symlink.
fn open_directory_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(openat(
        parent,
        name,
        directory_flags() | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )?)
}

fn lstat_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<FileStat>> {
    match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::ENOENT) => Ok(None),
        Err(errno) => Err(errno.into()),
    }
}

fn file_type(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT
}

/// `/proc/self/fd/<fd>/<name>`, for the xattr calls that have no descriptor-relative form;
/// callers use the non-following (`l*`) calls, so `name` itself is never followed.
fn proc_path(directory: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut path = PathBuf::from(format!("/proc/self/fd/{}", directory.as_raw_fd()));
    path.push(name);
    path
}

/// An xattr, `None` when absent or when the file system or our privileges hide it.
fn get_xattr(path: &Path, name: &str, follow: bool) -> io::Result<Option<Vec<u8>>> {
    let result = if follow {
        xattr::get_deref(path, name)
    } else {
        xattr::get(path, name)
    };
    match result {
        Ok(value) => Ok(value),
        Err(error) if matches!(error.raw_os_error(), Some(libc::ENOTSUP | libc::EPERM)) => Ok(None),
        Err(error) => Err(error),
    }
}

const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];
const WHITEOUT_XATTRS: [&str; 2] = ["trusted.overlay.whiteout", "user.overlay.whiteout"];

/// A char device 0:0, or (kernels since 6.7) an empty file carrying an overlay whiteout xattr.
fn is_whiteout(parent: BorrowedFd<'_>, name: &OsStr, stat: &FileStat) -> io::Result<bool> {
    let kind = file_type(stat);
    if kind == SFlag::S_IFCHR && stat.st_rdev == 0 {
        return Ok(true);
    }
    if kind == SFlag::S_IFREG && stat.st_size == 0 {
        let path = proc_path(parent, name);
        for xattr_name in WHITEOUT_XATTRS {
            if get_xattr(&path, xattr_name, false)?.is_some() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn is_opaque(directory: BorrowedFd<'_>) -> io::Result<bool> {
    let path = PathBuf::from(format!("/proc/self/fd/{}", directory.as_raw_fd()));
    for name in OPAQUE_XATTRS {
        if get_xattr(&path, name, true)?.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The names in a directory, without `.` and `..`, sorted bytewise.
fn names(directory: BorrowedFd<'_>) -> io::Result<BTreeSet<OsString>> {
    let mut stream = nix::dir::Dir::from_fd(nix::unistd::dup(directory)?)?;
    let mut names = BTreeSet::new();
    for entry in stream.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.insert(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// The names any contributing layer has in a merged directory (some may be whited out).
fn merged_names(layers: &[Layer]) -> io::Result<BTreeSet<OsString>> {
    let mut all = BTreeSet::new();
    for (_, fd) in layers {
        all.extend(names(fd.as_fd())?);
    }
    Ok(all)
}

/// The root of a view over `paths` (top-most first).
fn open_root(paths: &[&Path]) -> io::Result<Found> {
    let mut layers = Vec::with_capacity(paths.len());
    for (index, path) in paths.iter().enumerate() {
        layers.push((index, open_directory(path)?));
    }
    let Some((_, top)) = layers.first() else {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    };
    let entry = Entry {
        parent: nix::unistd::dup(top)?,
        name: OsString::from("."),
        stat: fstat(top)?,
    };
    Ok(Found {
        entry,
        directory: Some(layers),
    })
}

/// Looks `name` up in a merged directory, as overlayfs does: the top-most layer that has it
/// decides, a whiteout means absent, and a directory merges with the directories of the layers
/// below until one of them is opaque or has a whiteout or non-directory there.
fn lookup(layers: &[Layer], name: &OsStr) -> io::Result<Option<Found>> {
    let mut remaining = layers.iter();
    while let Some((layer, fd)) = remaining.next() {
        let Some(stat) = lstat_at(fd.as_fd(), name)? else {
            continue;
        };
        if is_whiteout(fd.as_fd(), name, &stat)? {
            return Ok(None);
        }
        let entry = Entry {
            parent: nix::unistd::dup(fd)?,
            name: name.to_os_string(),
            stat,
        };
        if file_type(&stat) != SFlag::S_IFDIR {
            return Ok(Some(Found {
                entry,
                directory: None,
            }));
        }
        let top = open_directory_at(fd.as_fd(), name)?;
        let mut opaque = is_opaque(top.as_fd())?;
        let mut merged = vec![(*layer, top)];
        for (lower, lower_fd) in remaining.by_ref() {
            if opaque {
                break;
            }
            match lstat_at(lower_fd.as_fd(), name)? {
                None => {}
                Some(lower_stat) if file_type(&lower_stat) == SFlag::S_IFDIR => {
                    let directory = open_directory_at(lower_fd.as_fd(), name)?;
                    opaque = is_opaque(directory.as_fd())?;
                    merged.push((*lower, directory));
                }
                // A whiteout or a non-directory hides everything below it.
                Some(_) => break,
            }
        }
        return Ok(Some(Found {
            entry,
            directory: Some(merged),
        }));
    }
    Ok(None)
}

/// A path resolved in the merged view.
#[derive(Debug)]
struct Resolved {
    /// The directories leading to it, the root first.
    parents: Vec<Found>,
    /// Its last name (`.` for the root).
    name: OsString,
    /// `None`: the last component does not exist (its parent does).
    found: Option<Found>,
}

fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|&byte| byte == b'/')
}

/// Resolves `path` in the view whose root is `root`, with chroot semantics (see the module
/// documentation). Symlinks are followed in every component but the last, and in the last
/// when `follow_final`. `shown` is the path as the user gave it, for errors.
fn resolve(
    root: Found,
    path: &[u8],
    follow_final: bool,
    shown: &str,
) -> Result<Resolved, ChangesError> {
    let read_error = |source| ChangesError::Read {
        path: shown.to_string(),
        source,
    };
    let mut stack = vec![root];
    let mut pending: Vec<Vec<u8>> = components(path).rev().map(<[u8]>::to_vec).collect();
    let mut links = 0;
    while let Some(component) = pending.pop() {
        match component.as_slice() {
            b"" | b"." => continue,
            b".." => {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            _ => {}
        }
        // Empty and `.` components left do not make this one a parent: `dir/` is `dir`.
        let last = pending
            .iter()
            .all(|rest| rest.is_empty() || rest.as_slice() == b".");
        let name = OsString::from_vec(component);
        let Some(layers) = stack.last().and_then(|top| top.directory.as_deref()) else {
            return Err(ChangesError::NotADirectory(shown.to_string()));
        };
        let Some(found) = lookup(layers, &name).map_err(read_error)? else {
            if last {
                return Ok(Resolved {
                    parents: stack,
                    name,
                    found: None,
                });
            }
            return Err(ChangesError::NotFound(shown.to_string()));
        };
        if file_type(&found.entry.stat) == SFlag::S_IFLNK && (!last || follow_final) {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(ChangesError::SymlinkLoop(shown.to_string()));
            }
            let target = readlinkat(found.entry.parent.as_fd(), found.entry.name.as_os_str())
                .map_err(|errno| read_error(errno.into()))?
                .into_vec();
            if target.starts_with(b"/") {
                stack.truncate(1);
            }
            pending.extend(components(&target).rev().map(<[u8]>::to_vec));
            continue;
        }
        if found.directory.is_some() {
            stack.push(found);
            continue;
        }
        if last {
            return Ok(Resolved {
                parents: stack,
                name,
                found: Some(found),
            });
        }
        return Err(ChangesError::NotADirectory(shown.to_string()));
    }
    // The path ends at a directory (the root, or after `.`/`..`/a trailing slash).
    let found = match stack.pop() {
        Some(found) => found,
        None => return Err(ChangesError::NotFound(shown.to_string())),
    };
    Ok(Resolved {
        parents: stack,
        name: found.entry.name.clone(),
        found: Some(found),
    })
}

// ---------------------------------------------------------------------------------------------
// diff

/// What a walk found below one directory of the upper dir.
#[derive(Debug, Clone, Copy)]
struct Below {
    /// Some change was reported.
    reported: bool,
    /// Every entry was omitted (vacuously true for an empty directory).
    all_omitted: bool,
    /// A runtime mount target was omitted (at any depth).
    runtime: bool,
    /// A runtime mount target is directly in this directory (its mtime then says nothing).
    runtime_here: bool,
}

#[derive(Debug, Default)]
struct Differ {
    changes: Vec<Change>,
    omitted: BTreeSet<Vec<u8>>,
}

fn join(parent: &[u8], name: &OsStr) -> Vec<u8> {
    let mut path = parent.to_vec();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name.as_bytes());
    path
}

fn same_metadata(upper: &FileStat, lower: &FileStat, compare_mtime: bool) -> bool {
    upper.st_mode == lower.st_mode
        && upper.st_uid == lower.st_uid
        && upper.st_gid == lower.st_gid
        && (!compare_mtime
            || (upper.st_mtime, upper.st_mtime_nsec) == (lower.st_mtime, lower.st_mtime_nsec))
}

impl Differ {
    fn report(&mut self, kind: ChangeKind, path: &[u8]) {
        let mut absolute = b"/".to_vec();
        absolute.extend_from_slice(path);
        self.changes.push(Change {
            path: PathBuf::from(OsString::from_vec(absolute)),
            kind,
        });
    }

    /// Whether `path` in the upper dir is a mount target the runtime made (the image lacks it).
    fn is_runtime_target(
        path: &[u8],
        parent: BorrowedFd<'_>,
        name: &OsStr,
        stat: &FileStat,
    ) -> io::Result<bool> {
        if RUNTIME_DIRECTORIES.contains(&path) && file_type(stat) == SFlag::S_IFDIR {
            let directory = open_directory_at(parent, name)?;
            return Ok(names(directory.as_fd())?.is_empty());
        }
        Ok(RUNTIME_FILES.contains(&path) && file_type(stat) == SFlag::S_IFREG && stat.st_size == 0)
    }

    /// Walks the upper directory `upper` at `path`; `lower` is what the image has there.
    fn directory(
        &mut self,
        upper: BorrowedFd<'_>,
        lower: Option<&[Layer]>,
        path: &[u8],
    ) -> io::Result<Below> {
        let mut below = Below {
            reported: false,
            all_omitted: true,
            runtime: false,
            runtime_here: false,
        };
        for name in names(upper)? {
            let child = join(path, &name);
            let Some(stat) = lstat_at(upper, &name)? else {
                continue;
            };
            let before = match lower {
                Some(lower) => lookup(lower, &name)?,
                None => None,
            };
            if is_whiteout(upper, &name, &stat)? {
                if before.is_some() {
                    self.report(ChangeKind::Deleted, &child);
                    below.reported = true;
                }
                below.all_omitted = false;
                continue;
            }
            if before.is_none() && Self::is_runtime_target(&child, upper, &name, &stat)? {
                self.omitted.insert(child);
                below.runtime = true;
                below.runtime_here = true;
                continue;
            }
            if file_type(&stat) != SFlag::S_IFDIR {
                let kind = if before.is_some() {
                    ChangeKind::Changed
                } else {
                    ChangeKind::Added
                };
                self.report(kind, &child);
                below.reported = true;
                below.all_omitted = false;
                continue;
            }
            let directory = open_directory_at(upper, &name)?;
            let opaque = is_opaque(directory.as_fd())?;
            let lower_directory = before.as_ref().and_then(|found| found.directory.as_deref());
            let inner = self.directory(directory.as_fd(), lower_directory, &child)?;
            let mut deleted = false;
            if opaque && let Some(lower_directory) = lower_directory {
                // What the image had here and the opaque directory no longer shows.
                let present = names(directory.as_fd())?;
                for hidden in merged_names(lower_directory)? {
                    if !present.contains(&hidden) && lookup(lower_directory, &hidden)?.is_some() {
                        self.report(ChangeKind::Deleted, &join(&child, &hidden));
                        deleted = true;
                    }
                }
            }
            let omit = match &before {
                // A directory the runtime made only to hold its mount targets.
                None => inner.all_omitted && inner.runtime && RUNTIME_PARENTS.contains(&&child[..]),
                Some(before) => {
                    let unchanged = lower_directory.is_some()
                        && same_metadata(&stat, &before.entry.stat, !inner.runtime_here);
                    unchanged && !opaque && !deleted && !inner.reported && inner.all_omitted
                }
            };
            if omit {
                self.omitted.insert(child);
                below.runtime |= inner.runtime;
                continue;
            }
            let kind = if before.is_some() {
                ChangeKind::Changed
            } else {
                ChangeKind::Added
            };
            self.report(kind, &child);
            below.reported = true;
            below.all_omitted = false;
        }
        Ok(below)
    }
}

// ---------------------------------------------------------------------------------------------
// Archives of the merged view

/// The USTAR name and linkname fields hold 100 bytes; longer ones go into PAX records.
const USTAR_NAME_LENGTH: usize = 100;

/// Writes entries of a merged view as a tar.
struct ArchiveWriter<W: Write> {
    builder: tar::Builder<W>,
    /// (device, inode) of multiply-linked files already written → their entry name.
    hardlinks: HashMap<(u64, u64), Vec<u8>>,
}

/// Reads exactly `remaining` bytes, failing (and remembering it) if the file ends early or
/// cannot be read, so a read error is told apart from an output error.
struct Exact<R> {
    inner: R,
    remaining: u64,
    failed: Option<io::Error>,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let limit = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let read = match self.inner.read(&mut buf[..limit]) {
            Ok(0) => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            other => other,
        };
        match read {
            Ok(read) => {
                self.remaining -= read as u64;
                Ok(read)
            }
            Err(error) => {
                self.failed = Some(io::Error::new(error.kind(), error.to_string()));
                Err(error)
            }
        }
    }
}

fn is_excluded_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name == b"security.selinux"
}

impl<W: Write> ArchiveWriter<W> {
    fn new(out: W) -> Self {
        ArchiveWriter {
            builder: tar::Builder::new(out),
            hardlinks: HashMap::new(),
        }
    }

    fn finish(self) -> Result<W, ChangesError> {
        self.builder.into_inner().map_err(ChangesError::Output)
    }

    /// Writes `found` as `name` and, for a directory, everything below it; with `name`
    /// `None`, only what is below it, named relative to it.
    fn tree(&mut self, found: &Found, name: Option<&[u8]>) -> Result<(), ChangesError> {
        let shown = || String::from_utf8_lossy(name.unwrap_or(b".")).into_owned();
        if let Some(name) = name {
            self.entry(&found.entry, name)?;
        }
        let Some(layers) = &found.directory else {
            return Ok(());
        };
        let read_error = |source| ChangesError::Read {
            path: shown(),
            source,
        };
        for child in merged_names(layers).map_err(read_error)? {
            // In an archive these would be deletions.
            if child
                .as_bytes()
                .starts_with(layer::WHITEOUT_PREFIX.as_bytes())
            {
                continue;
            }
            let Some(child_found) = lookup(layers, &child).map_err(read_error)? else {
                continue;
            };
            let child_name = match name {
                Some(name) => join(name, &child),
                None => child.as_bytes().to_vec(),
            };
            self.tree(&child_found, Some(&child_name))?;
        }
        Ok(())
    }

    fn entry(&mut self, entry: &Entry, name: &[u8]) -> Result<(), ChangesError> {
        let shown = || String::from_utf8_lossy(name).into_owned();
        let read_error = |source: io::Error| ChangesError::Read {
            path: shown(),
            source,
        };
        let stat = &entry.stat;
        let kind = file_type(stat);
        let mut entry_name = name.to_vec();
        let (entry_type, link) = match kind {
            SFlag::S_IFDIR => {
                entry_name.push(b'/');
                (EntryType::Directory, None)
            }
            SFlag::S_IFREG => {
                let key = (stat.st_dev, stat.st_ino);
                match self.hardlinks.get(&key) {
                    Some(target) if stat.st_nlink > 1 => (EntryType::Link, Some(target.clone())),
                    _ => {
                        if stat.st_nlink > 1 {
                            self.hardlinks.insert(key, entry_name.clone());
                        }
                        (EntryType::Regular, None)
                    }
                }
            }
            SFlag::S_IFLNK => {
                let target = readlinkat(entry.parent.as_fd(), entry.name.as_os_str())
                    .map_err(|errno| read_error(errno.into()))?;
                (EntryType::Symlink, Some(target.into_vec()))
            }
            SFlag::S_IFIFO => (EntryType::Fifo, None),
            SFlag::S_IFCHR => (EntryType::Char, None),
            SFlag::S_IFBLK => (EntryType::Block, None),
            // Sockets are not archived (as Docker does); nothing else exists.
            _ => return Ok(()),
        };
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut header = Header::new_ustar();
        header.set_entry_type(entry_type);
        header.set_mode(stat.st_mode & 0o7777);
        header.set_uid(u64::from(stat.st_uid));
        header.set_gid(u64::from(stat.st_gid));
        header.set_mtime(u64::try_from(stat.st_mtime).unwrap_or(0));
        header.set_size(0);
        let device_error = |_| ChangesError::Output(io::Error::other("device number overflow"));
        if matches!(entry_type, EntryType::Char | EntryType::Block) {
            let major = u32::try_from(nix::sys::stat::major(stat.st_rdev)).unwrap_or(u32::MAX);
            let minor = u32::try_from(nix::sys::stat::minor(stat.st_rdev)).unwrap_or(u32::MAX);
            header.set_device_major(major).map_err(device_error)?;
            header.set_device_minor(minor).map_err(device_error)?;
        } else {
            header.set_device_major(0).map_err(device_error)?;
            header.set_device_minor(0).map_err(device_error)?;
        }
        let old = header.as_old_mut();
        if entry_name.len() <= USTAR_NAME_LENGTH {
            old.name[..entry_name.len()].copy_from_slice(&entry_name);
        } else {
            old.name.copy_from_slice(&entry_name[..USTAR_NAME_LENGTH]);
            pax.push(("path".to_string(), entry_name.clone()));
        }
        if let Some(link) = &link {
            if link.len() <= USTAR_NAME_LENGTH {
                old.linkname[..link.len()].copy_from_slice(link);
            } else {
                old.linkname.copy_from_slice(&link[..USTAR_NAME_LENGTH]);
                pax.push(("linkpath".to_string(), link.clone()));
            }
        }
        if entry_type != EntryType::Link {
            pax.extend(xattr_records(entry).map_err(read_error)?);
        }
        if !pax.is_empty() {
            pax.sort();
            self.builder
                .append_pax_extensions(
                    pax.iter()
                        .map(|(key, value)| (key.as_str(), value.as_slice())),
                )
                .map_err(ChangesError::Output)?;
        }
        if entry_type != EntryType::Regular {
            header.set_cksum();
            return self
                .builder
                .append(&header, io::empty())
                .map_err(ChangesError::Output);
        }
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        header.set_size(size);
        header.set_cksum();
        let file = openat(
            entry.parent.as_fd(),
            entry.name.as_os_str(),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| read_error(errno.into()))?;
        let mut content = Exact {
            inner: File::from(file),
            remaining: size,
            failed: None,
        };
        match self.builder.append(&header, &mut content) {
            Ok(()) => Ok(()),
            Err(error) => Err(match content.failed.take() {
                Some(source) => read_error(source),
                None => ChangesError::Output(error),
            }),
        }
    }
}

/// An entry's xattrs as PAX `SCHILY.xattr.*` records, without overlay bookkeeping and SELinux
/// labels.
fn xattr_records(entry: &Entry) -> io::Result<Vec<(String, Vec<u8>)>> {
    let path = proc_path(entry.parent.as_fd(), &entry.name);
    let names = match xattr::list(&path) {
        Ok(names) => names,
        Err(error) if error.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut records = Vec::new();
    for name in names {
        if is_excluded_xattr(name.as_bytes()) {
            continue;
        }
        let Some(key) = name.to_str() else { continue };
        if let Some(value) = get_xattr(&path, key, false)? {
            records.push((format!("SCHILY.xattr.{key}"), value));
        }
    }
    Ok(records)
}

// ---------------------------------------------------------------------------------------------
// Writing into the upper dir

fn write_error(shown: &str) -> impl Fn(io::Error) -> ChangesError + '_ {
    move |source| ChangesError::Write {
        path: shown.to_string(),
        source,
    }
}

/// Creates in the upper dir `parent` the directory the image has as `entry`, with its mode,
/// owner and times (what overlayfs's copy-up does), and opens it.
fn copy_up_directory(parent: BorrowedFd<'_>, entry: &Entry) -> io::Result<OwnedFd> {
    let name = entry.name.as_os_str();
    match mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(errno) => return Err(errno.into()),
    }
    let directory = open_directory_at(parent, name)?;
    set_metadata(directory.as_fd(), &entry.stat)?;
    Ok(directory)
}

/// Owner, then mode (chown clears setgid), then times, of an open directory.
fn set_metadata(directory: BorrowedFd<'_>, stat: &FileStat) -> io::Result<()> {
    fchown(
        directory,
        Some(Uid::from_raw(stat.st_uid)),
        Some(Gid::from_raw(stat.st_gid)),
    )?;
    fchmod(directory, Mode::from_bits_truncate(stat.st_mode & 0o7777))?;
    let atime = TimeSpec::new(stat.st_atime, stat.st_atime_nsec);
    let mtime = TimeSpec::new(stat.st_mtime, stat.st_mtime_nsec);
    futimens(directory, &atime, &mtime)?;
    Ok(())
}

/// Makes sure every directory of `chain` (root first, as resolved) exists in the upper dir,
/// copying up those only the image has. Returns the last one's layers, the upper dir first.
fn ensure_upper(chain: Vec<Found>, shown: &str) -> Result<Vec<Layer>, ChangesError> {
    let mut current: Vec<Layer> = Vec::new();
    for found in chain {
        let Some(mut layers) = found.directory else {
            return Err(ChangesError::NotADirectory(shown.to_string()));
        };
        if layers.first().map(|(layer, _)| *layer) != Some(0) {
            let Some((0, parent)) = current.first() else {
                return Err(ChangesError::NotADirectory(shown.to_string()));
            };
            let directory =
                copy_up_directory(parent.as_fd(), &found.entry).map_err(write_error(shown))?;
            layers.insert(0, (0, directory));
        }
        current = layers;
    }
    Ok(current)
}

/// Removes `name` from `directory`, recursively, never following a symlink.
fn remove_all_at(directory: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let Some(stat) = lstat_at(directory, name)? else {
        return Ok(());
    };
    if file_type(&stat) == SFlag::S_IFDIR {
        let child = open_directory_at(directory, name)?;
        for child_name in names(child.as_fd())? {
            remove_all_at(child.as_fd(), &child_name)?;
        }
        drop(child);
        unlinkat(directory, name, UnlinkatFlags::RemoveDir)?;
    } else {
        unlinkat(directory, name, UnlinkatFlags::NoRemoveDir)?;
    }
    Ok(())
}

/// Moves the staged tree into the merged directory `target` (its upper dir first).
fn merge(staged: BorrowedFd<'_>, target: &[Layer], shown: &str) -> Result<(), ChangesError> {
    let failed = write_error(shown);
    let Some((0, upper)) = target.first() else {
        return Err(ChangesError::NotADirectory(shown.to_string()));
    };
    for name in names(staged).map_err(&failed)? {
        let Some(stat) = lstat_at(staged, &name).map_err(&failed)? else {
            continue;
        };
        let is_directory = file_type(&stat) == SFlag::S_IFDIR;
        let current = lookup(target, &name).map_err(&failed)?;
        if is_directory
            && let Some(Found {
                entry,
                directory: Some(mut layers),
            }) = current
        {
            if layers.first().map(|(layer, _)| *layer) != Some(0) {
                let directory = copy_up_directory(upper.as_fd(), &entry).map_err(&failed)?;
                layers.insert(0, (0, directory));
            }
            let child = open_directory_at(staged, &name).map_err(&failed)?;
            merge(child.as_fd(), &layers, shown)?;
            set_metadata(layers[0].1.as_fd(), &stat).map_err(&failed)?;
            continue;
        }
        remove_all_at(upper.as_fd(), &name).map_err(&failed)?;
        renameat(staged, name.as_os_str(), upper.as_fd(), name.as_os_str())
            .map_err(|errno| failed(errno.into()))?;
        // A new directory over one of the image's would merge with it: hide the image's.
        let below = lookup(&target[1..], &name).map_err(&failed)?;
        if is_directory && below.is_some_and(|found| found.directory.is_some()) {
            xattr::set(
                proc_path(upper.as_fd(), &name),
                "trusted.overlay.opaque",
                b"y",
            )
            .map_err(&failed)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// commit

/// What [`commit`] records besides the layer.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// `-a`: the image's and the history entry's author.
    pub author: Option<String>,
    /// `-m`: the history entry's comment.
    pub message: Option<String>,
    /// The new image's runtime config (the image's with `-c` changes applied, by the caller);
    /// `None` keeps the image's.
    pub config: Option<ContainerConfig>,
    /// The tag to give the new image.
    pub reference: Option<Reference>,
    pub compression: Compression,
    /// The creation time (RFC 3339); now when absent.
    pub created: Option<String>,
}

/// The config of a stored image.
pub fn image_config(store: &Store, image: &Digest) -> Result<ImageConfig, ChangesError> {
    let bytes = store.blobs().read(image).map_err(StoreError::from)?;
    serde_json::from_slice(&bytes).map_err(|source| ChangesError::Config {
        image: *image,
        source,
    })
}

/// Writes both to a spool file and to the hashing compressor of the layer blob.
/// Where [`layer_from_upper`] writes the layer tar.
enum LayerSink {
    /// An uncompressed layer: the blob is the tar, and its digest the diff ID.
    Plain(BlobWriter),
    /// A compressed layer: the tar is hashed (diff ID) on its way to the compressor.
    Compressed(Box<DigestWriter<layer::Compressor<BlobWriter>>>),
}

impl Write for LayerSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            LayerSink::Plain(blob) => blob.write(buf),
            LayerSink::Compressed(blob) => blob.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            LayerSink::Plain(blob) => blob.flush(),
            LayerSink::Compressed(blob) => blob.flush(),
        }
    }
}

/// Size of the chunks [`SnapshotTee`] hands to the snapshot applier.
const TEE_CHUNK: usize = 1 << 20;

/// Writes to the layer sink and, in chunks, to the thread applying the snapshot. A closed
/// channel (the applier stopped, its error reported on join) is not an error here.
struct SnapshotTee<'a> {
    sink: &'a mut LayerSink,
    chunks: std::sync::mpsc::SyncSender<Vec<u8>>,
    buffer: Vec<u8>,
}

impl Write for SnapshotTee<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sink.write_all(buf)?;
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= TEE_CHUNK {
            let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(TEE_CHUNK));
            let _ = self.chunks.send(chunk);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            let _ = self.chunks.send(std::mem::take(&mut self.buffer));
        }
        self.sink.flush()
    }
}

/// Reads the chunks a [`SnapshotTee`] sends, until the channel closes.
struct ChunkReader {
    chunks: std::sync::mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    position: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.current.len() {
            match self.chunks.recv() {
                Ok(chunk) => {
                    self.current = chunk;
                    self.position = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let count = buf.len().min(self.current.len() - self.position);
        buf[..count].copy_from_slice(&self.current[self.position..self.position + count]);
        self.position += count;
        Ok(count)
    }
}

/// Copies a layer tar from `input` to `out` without the entries `omitted` names (their
/// PAX/GNU extension headers go with them), byte for byte otherwise. Returns how many entries
/// were kept.
fn filter_layer(
    input: impl Read,
    omitted: &BTreeSet<Vec<u8>>,
    out: impl Write,
) -> Result<u64, ChangesError> {
    let mut archive = tar::Archive::new(input);
    let mut builder = tar::Builder::new(out);
    let mut pending: Vec<(Header, Vec<u8>)> = Vec::new();
    let mut kept = 0;
    let entries = archive.entries().map_err(LayerError::Archive)?.raw(true);
    for entry in entries {
        let mut entry = entry.map_err(LayerError::Archive)?;
        let header = entry.header().clone();
        if matches!(
            header.entry_type(),
            EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink
        ) {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(LayerError::Archive)?;
            pending.push((header, data));
            continue;
        }
        let mut name = header.path_bytes().into_owned();
        for (extension, data) in &pending {
            if extension.entry_type() == EntryType::XHeader {
                for record in tar::PaxExtensions::new(data).flatten() {
                    if record.key_bytes() == b"path" {
                        name = record.value_bytes().to_vec();
                    }
                }
            }
        }
        while name.last() == Some(&b'/') {
            name.pop();
        }
        if omitted.contains(&name) {
            pending.clear();
            continue;
        }
        for (extension, data) in pending.drain(..) {
            builder
                .append(&extension, data.as_slice())
                .map_err(ChangesError::Output)?;
        }
        builder
            .append(&header, &mut entry)
            .map_err(ChangesError::Output)?;
        kept += 1;
    }
    builder.into_inner().map_err(ChangesError::Output)?;
    Ok(kept)
}

/// Writes `upper` (an overlay upper dir over `parents`, bottom-most first) as a new layer on
/// top of `parents`: the layer blob (compressed per `options`), and its snapshot keyed by chain
/// ID, applied from the same bytes. Returns `None` when the upper dir holds no change (only the
/// runtime's own mount targets, see [`Changes::omitted`], which are never part of the layer).
///
/// The layer is the upper dir as [`layer::write_layer`] writes it (whiteouts and opaque
/// directories as `.wh.` entries, mtimes clamped to `options.source_date_epoch`), produced once
/// and streamed both into its blob (hashed: the diff ID; compressed per `options`) and, on
/// another thread, into a new snapshot (overlay whiteouts), so the snapshot holds exactly the
/// blob's content. `kiln build` stores layers uncompressed (`Compression::None`: the blob is the
/// tar and is hashed once); compression happens when an image leaves the store. The caller
/// holds the store's ingest lock ([`Store::ingest`]) until the metadata that references the
/// layer is recorded.
pub fn layer_from_upper(
    store: &Store,
    parents: &[LayerRecord],
    upper: &Path,
    options: &WriteOptions,
) -> Result<Option<LayerRecord>, ChangesError> {
    let fs = ContainerFs::over_layers(store, upper, parents);
    let changes = fs.changes()?;
    let blob = store.blobs().writer().map_err(StoreError::from)?;
    let mut sink = if options.compression == Compression::None {
        LayerSink::Plain(blob)
    } else {
        let compressor =
            layer::Compressor::new(options.compression, blob).map_err(LayerError::Output)?;
        LayerSink::Compressed(Box::new(DigestWriter::new(compressor)))
    };
    // The snapshot is applied while the blob is written, from the same bytes, on its own
    // thread: a new layer is almost always a new snapshot, and if not the copy is dropped.
    let prepared = store.prepare_snapshot()?;
    let snapshot_root = prepared.path().join("fs");
    let (reader, writer) = io::pipe().map_err(ChangesError::Output)?;
    let upper = fs.upper();
    let source_date_epoch = options.source_date_epoch;
    let (kept, stats) = std::thread::scope(|scope| {
        // The tar is hashed once, by the blob writer (or the compressed sink's DigestWriter).
        let producer = scope.spawn(move || {
            layer::write_layer_tar(LayerSource::OverlayUpper(upper), writer, source_date_epoch)
        });
        let (chunks, received) = std::sync::mpsc::sync_channel::<Vec<u8>>(16);
        let applier = scope.spawn(move || {
            let mut input = ChunkReader {
                chunks: received,
                current: Vec::new(),
                position: 0,
            };
            let applied = layer::apply_layer(
                &snapshot_root,
                &mut input,
                &ApplyOptions::new(Whiteouts::Overlay),
            );
            // Drain so that the sender never blocks on a reader that stopped at the end marker.
            while input.chunks.recv().is_ok() {}
            applied
        });
        let mut reader = reader;
        let mut filtered = {
            let mut tee = SnapshotTee {
                sink: &mut sink,
                chunks,
                buffer: Vec::with_capacity(TEE_CHUNK),
            };
            let filtered = filter_layer(&mut reader, &changes.omitted, &mut tee);
            // Sends the last chunk; dropping the tee closes the channel.
            filtered.and_then(|kept| tee.flush().map(|()| kept).map_err(ChangesError::Output))
        };
        // The tar reader stops at the first end-of-archive block; let the writer finish.
        if filtered.is_ok()
            && let Err(error) = io::copy(&mut reader, &mut io::sink())
        {
            filtered = Err(LayerError::Archive(error).into());
        }
        drop(reader);
        let produced = producer.join().unwrap_or_else(|_| {
            Err(LayerError::Output(io::Error::other(
                "layer writer panicked",
            )))
        });
        let applied = applier.join().unwrap_or_else(|_| {
            Err(LayerError::Output(io::Error::other(
                "layer applier panicked",
            )))
        });
        produced?;
        let kept = filtered?;
        Ok::<_, ChangesError>((kept, applied?))
    })?;
    let (diff_id, stored) = match sink {
        LayerSink::Plain(blob) => {
            let stored = blob.commit().map_err(StoreError::from)?;
            (stored.digest, stored)
        }
        LayerSink::Compressed(blob) => {
            let (diff_id, _, compressor) = (*blob).finish();
            let stored = compressor
                .finish()
                .map_err(LayerError::Output)?
                .commit()
                .map_err(StoreError::from)?;
            (diff_id, stored)
        }
    };
    if kept == 0 {
        return Ok(None);
    }
    let parent = parents.last().map(|parent| &parent.chain_id);
    let chain_id = match parent {
        Some(parent) => Digest::of(format!("{parent} {diff_id}").as_bytes()),
        None => diff_id,
    };
    if store.snapshot(&chain_id)?.is_none() {
        let record = LayerRecord {
            chain_id,
            diff_id,
            blob: stored.digest,
            media_type: options.compression.media_type().to_string(),
            blob_size: stored.size,
            size: stats.bytes,
        };
        store.commit_snapshot(prepared, &record, parent)?;
    }
    let record = store
        .snapshot(&chain_id)?
        .ok_or(StoreError::MissingSnapshot {
            image: diff_id,
            chain_id,
        })?;
    Ok(Some(record))
}

/// `docker commit`: the container's upper dir becomes a new layer on top of its image's (see
/// [`layer_from_upper`]), and a new image is recorded (and tagged with `options.reference`).
/// Returns the image ID. A container without changes gets an `empty_layer` history entry and
/// no layer, as Docker does. The history entry's `created_by` is the container's command, its
/// comment the message. Content is written under the store's ingest lock, and the image
/// recorded only after it.
pub fn commit(
    store: &mut Store,
    container: &ContainerRecord,
    options: &CommitOptions,
) -> Result<Digest, ChangesError> {
    let image = store.image(&container.image)?;
    let mut config = image_config(store, &image.id)?;
    let _ingest = store.ingest()?;
    let layer = layer_from_upper(
        store,
        &image.layers,
        &store.container_dir(&container.id).join("upper"),
        &WriteOptions {
            compression: options.compression,
            source_date_epoch: None,
        },
    )?;
    let empty_layer = layer.is_none();
    let mut layers = image.layers.clone();
    if let Some(layer) = layer {
        config.rootfs.diff_ids.push(layer.diff_id);
        layers.push(layer);
    }

    let created = options
        .created
        .clone()
        .unwrap_or_else(crate::import::creation_time);
    config.created = Some(created.clone());
    if options.author.is_some() {
        config.author = options.author.clone();
    }
    if let Some(runtime) = &options.config {
        config.config = runtime.clone();
    }
    config.history.push(History {
        created: Some(created.clone()),
        created_by: Some(container.config.args.join(" ")),
        author: options.author.clone(),
        comment: options.message.clone(),
        empty_layer,
    });
    let config_blob = store
        .blobs()
        .put_bytes(&image::canonical_json(&config).map_err(ChangesError::Json)?)
        .map_err(StoreError::from)?;
    let manifest = Manifest::oci(
        Descriptor::new(
            image::MEDIA_TYPE_OCI_CONFIG,
            config_blob.digest,
            config_blob.size,
        ),
        layers
            .iter()
            .map(|layer| Descriptor::new(&layer.media_type, layer.blob, layer.blob_size))
            .collect(),
    );
    let manifest_blob = store
        .blobs()
        .put_bytes(&image::canonical_json(&manifest).map_err(ChangesError::Json)?)
        .map_err(StoreError::from)?;
    store.add_image(&NewImage {
        id: config_blob.digest,
        manifest: manifest_blob.digest,
        manifest_media_type: image::MEDIA_TYPE_OCI_MANIFEST.to_string(),
        created: Some(created),
        layers,
    })?;
    if let Some(reference) = &options.reference {
        store.tag(
            &reference.clone().with_default_tag().to_string(),
            &config_blob.digest,
        )?;
    }
    Ok(config_blob.digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(raw: &str) -> PathSpec {
        PathSpec::parse(raw.as_bytes())
    }

    #[test]
    fn cp_paths_know_their_trailing_slash_dot_and_name() {
        let plain = spec("/etc/passwd");
        assert_eq!(plain.name.as_deref(), Some(OsStr::new("passwd")));
        assert!(!plain.trailing_slash && !plain.contents);
        let slash = spec("/etc/");
        assert_eq!(slash.name.as_deref(), Some(OsStr::new("etc")));
        assert!(slash.trailing_slash && !slash.contents);
        let dot = spec("/etc/.");
        assert_eq!(dot.name.as_deref(), Some(OsStr::new("etc")));
        assert!(dot.contents);
        assert_eq!(spec("/").name, None);
        assert_eq!(spec("a/..").name, None);
    }

    #[test]
    fn placement_follows_docker_cp_rules() {
        let name = OsStr::new("src");
        let existing_dir = place(false, false, name, &spec("/d"), Existing::Directory, "/d");
        assert_eq!(
            existing_dir.unwrap(),
            Placement {
                into_destination: true,
                name: Some("src".into())
            }
        );
        let contents = place(true, true, name, &spec("/d"), Existing::Directory, "/d");
        assert_eq!(contents.unwrap().name, None);
        let renamed = place(true, false, name, &spec("/new"), Existing::Missing, "/new");
        assert_eq!(
            renamed.unwrap(),
            Placement {
                into_destination: false,
                name: Some("new".into())
            }
        );
        assert!(matches!(
            place(true, false, name, &spec("/f"), Existing::Other, "/f"),
            Err(ChangesError::DirectoryToFile(_))
        ));
        assert!(matches!(
            place(
                false,
                false,
                name,
                &spec("/new/"),
                Existing::Missing,
                "/new/"
            ),
            Err(ChangesError::NoSuchDirectory(_))
        ));
        assert!(matches!(
            place(false, false, name, &spec("/f/"), Existing::Other, "/f/"),
            Err(ChangesError::NotADirectory(_))
        ));
    }
}
