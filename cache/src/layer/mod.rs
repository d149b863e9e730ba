//! Layer tars: written deterministically from a directory tree or an overlayfs upper
//! directory, and applied safely into a snapshot directory.
//!
//! Owns the tar format details of image layers: entry order and normalisation, PAX
//! `SCHILY.xattr.*` records, hardlink detection, whiteouts (`.wh.<name>`, `.wh..wh..opq`) in
//! both directions, compression and its detection. Does not own where layers live (blobs,
//! snapshots and their names belong to the store), nor when they are written or applied.
//!
//! Security boundary: [`apply_layer`] treats the archive as hostile. Every path it touches is
//! resolved inside the target root with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`
//! and every file is created relative to the resolved parent directory's descriptor, never
//! following a symlink in the final component. See [`apply_layer`] for which hostile inputs are
//! rejected and which are neutralised.

mod apply;
mod compression;
mod name;
mod root;
mod write;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub use apply::{ApplyOptions, ApplyStats, DeviceNodes, Whiteouts, apply_layer};
pub(crate) use compression::Compressor;
pub use compression::{Compression, DetectedCompression, decompress};
pub use name::UnsafeNameReason;
pub use write::{LayerDigests, LayerSource, WriteOptions, write_layer, write_layer_tar};

/// The name prefix of a whiteout entry: `.wh.<name>` deletes `<name>` from lower layers.
pub const WHITEOUT_PREFIX: &str = ".wh.";

/// The name of the opaque-directory marker: its directory hides everything lower layers put
/// there.
pub const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";

/// The prefix of AUFS bookkeeping names (`.wh..wh.plnk`, `.wh..wh.aufs`, ...), which are not
/// image content and are skipped on apply, as Docker does.
pub const WHITEOUT_META_PREFIX: &str = ".wh..wh.";

/// Why writing or applying a layer failed. Every variant names the entry or source path
/// concerned where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// A file or directory of the source tree could not be read while writing a layer.
    #[error("cannot read {path}")]
    ReadSource {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A regular file's size changed between `lstat` and reading its content, so the tar
    /// header would lie about it.
    #[error("{path} changed size while the layer was being written")]
    SourceChanged { path: PathBuf },
    /// An extended attribute name of the source tree is not UTF-8 and cannot be a PAX key.
    #[error("{path}: extended attribute name {name:?} is not valid UTF-8")]
    XattrName { path: PathBuf, name: String },
    /// The overlay upper directory uses a feature whose content lives elsewhere (a redirected
    /// directory or a metacopy-only file), so a scan of the upper directory would be wrong.
    #[error(
        "{path}: overlay attribute {xattr} is not supported; mount the overlay with \
         redirect_dir=off,metacopy=off,index=off"
    )]
    OverlayFeature { path: PathBuf, xattr: String },
    /// A source entry's number does not fit in a tar header (e.g. a device major over 2^21).
    #[error("{path}: {field} {value} does not fit in a tar header")]
    HeaderField {
        path: PathBuf,
        field: &'static str,
        value: u64,
    },
    /// Writing the layer stream (tar, compression or the output itself) failed.
    #[error("cannot write the layer stream")]
    Output(#[source] io::Error),
    /// The layer stream is not a readable tar archive (or decompression failed).
    #[error("cannot read the layer archive")]
    Archive(#[source] io::Error),
    /// The archive's compression header could not be read or set up.
    #[error("cannot read the {format} stream")]
    Decompress {
        format: DetectedCompression,
        #[source]
        source: io::Error,
    },
    /// The root directory to apply into cannot be opened.
    #[error("cannot open the snapshot root {path}")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An entry name (or hardlink target) would leave the root or is not a file name at all.
    #[error("entry {path:?} has an unsafe name: {reason}")]
    UnsafeName {
        path: String,
        reason: UnsafeNameReason,
    },
    /// A tar entry type that a layer cannot hold.
    #[error("entry {path}: unsupported tar entry type {kind:?}")]
    UnsupportedEntryType { path: PathBuf, kind: char },
    /// A hardlink or symlink entry without a target.
    #[error("entry {path}: link entry has no target")]
    MissingLinkTarget { path: PathBuf },
    /// A filesystem operation inside the root failed for an entry.
    #[error("entry {path}: cannot {operation}")]
    Apply {
        path: PathBuf,
        operation: Operation,
        #[source]
        source: io::Error,
    },
}

/// The filesystem operation that failed while applying an entry, for [`LayerError::Apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// Resolving (and creating missing) parent directories inside the root.
    ResolveParent,
    /// Removing what was there before, or what a whiteout deletes.
    Remove,
    CreateDirectory,
    CreateFile,
    WriteFile,
    CreateSymlink,
    /// Creating a hardlink to the given target (relative to the root).
    CreateHardlink {
        target: PathBuf,
    },
    CreateNode,
    CreateWhiteout,
    SetOwner,
    SetMode,
    SetTimes,
    SetXattr {
        name: String,
    },
    MarkOpaque,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::ResolveParent => f.write_str("resolve its parent directory inside the root"),
            Operation::Remove => f.write_str("remove the existing entry"),
            Operation::CreateDirectory => f.write_str("create the directory"),
            Operation::CreateFile => f.write_str("create the file"),
            Operation::WriteFile => f.write_str("write the file content"),
            Operation::CreateSymlink => f.write_str("create the symlink"),
            Operation::CreateHardlink { target } => {
                write!(f, "create a hardlink to {}", target.display())
            }
            Operation::CreateNode => f.write_str("create the device or fifo node"),
            Operation::CreateWhiteout => f.write_str("create the overlay whiteout"),
            Operation::SetOwner => f.write_str("set the owner"),
            Operation::SetMode => f.write_str("set the mode"),
            Operation::SetTimes => f.write_str("set the modification time"),
            Operation::SetXattr { name } => write!(f, "set extended attribute {name}"),
            Operation::MarkOpaque => f.write_str("mark the directory opaque"),
        }
    }
}

impl LayerError {
    fn apply(path: &Path, operation: Operation, source: impl Into<io::Error>) -> LayerError {
        LayerError::Apply {
            path: path.to_path_buf(),
            operation,
            source: source.into(),
        }
    }
}
