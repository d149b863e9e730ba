//! Entry names as they come out of a tar header, parsed once into a normalised relative path.
//!
//! The only place that decides which names are acceptable. Resolution against the filesystem
//! (symlinks, `..` inside symlink targets) is `root.rs`'s job, not this one's.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// Linux's limits: a path passed to a syscall is at most `PATH_MAX - 1` bytes, a name at most
/// `NAME_MAX`.
const PATH_MAX: usize = libc::PATH_MAX as usize;
const NAME_MAX: usize = 255;

/// Why an entry name (or hardlink target) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnsafeNameReason {
    #[error("it contains a `..` component")]
    ParentComponent,
    #[error("it contains a NUL byte")]
    Nul,
    #[error("it names the root directory itself")]
    Root,
    #[error("it is longer than PATH_MAX")]
    TooLong,
    #[error("a component is longer than NAME_MAX")]
    ComponentTooLong,
    #[error("the whiteout names no deletable file")]
    Whiteout,
}

/// A normalised path relative to a layer's root: only normal components (no `..`, no `.`,
/// no empty component, no NUL byte), no leading `/`. The empty path is the root itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct EntryPath(PathBuf);

impl EntryPath {
    /// Parses a raw tar name. A leading `/` and `.` components are dropped (an absolute name
    /// is taken relative to the layer root, as GNU tar and Docker do); any `..` component is
    /// refused rather than resolved, since no layer writer produces one.
    pub(crate) fn parse(raw: &[u8]) -> Result<EntryPath, UnsafeNameReason> {
        if raw.contains(&0) {
            return Err(UnsafeNameReason::Nul);
        }
        let mut normalised: Vec<u8> = Vec::with_capacity(raw.len());
        for component in raw.split(|&byte| byte == b'/') {
            match component {
                b"" | b"." => {}
                b".." => return Err(UnsafeNameReason::ParentComponent),
                name => {
                    if name.len() > NAME_MAX {
                        return Err(UnsafeNameReason::ComponentTooLong);
                    }
                    if !normalised.is_empty() {
                        normalised.push(b'/');
                    }
                    normalised.extend_from_slice(name);
                }
            }
        }
        if normalised.len() >= PATH_MAX {
            return Err(UnsafeNameReason::TooLong);
        }
        Ok(EntryPath(PathBuf::from(OsString::from_vec(normalised))))
    }

    pub(crate) fn root() -> EntryPath {
        EntryPath(PathBuf::new())
    }

    pub(crate) fn is_root(&self) -> bool {
        self.0.as_os_str().is_empty()
    }

    /// The relative path, empty for the root.
    pub(crate) fn as_path(&self) -> &Path {
        &self.0
    }

    /// The path to hand to a `*at` syscall relative to the root: `.` for the root itself.
    pub(crate) fn syscall_path(&self) -> &Path {
        if self.is_root() {
            Path::new(".")
        } else {
            &self.0
        }
    }

    /// The parent and the last component; `None` for the root.
    pub(crate) fn split(&self) -> Option<(EntryPath, &OsStr)> {
        let bytes = self.0.as_os_str().as_bytes();
        if bytes.is_empty() {
            return None;
        }
        match bytes.iter().rposition(|&byte| byte == b'/') {
            Some(slash) => Some((
                EntryPath(PathBuf::from(OsStr::from_bytes(&bytes[..slash]))),
                OsStr::from_bytes(&bytes[slash + 1..]),
            )),
            None => Some((EntryPath::root(), self.0.as_os_str())),
        }
    }

    /// The path of a child; `name` must be a single normal component.
    pub(crate) fn join(&self, name: &OsStr) -> EntryPath {
        debug_assert!(!name.as_bytes().contains(&b'/'));
        EntryPath(self.0.join(name))
    }

    /// The components, in order.
    pub(crate) fn components(&self) -> impl Iterator<Item = &OsStr> {
        self.0
            .as_os_str()
            .as_bytes()
            .split(|&byte| byte == b'/')
            .filter(|component| !component.is_empty())
            .map(OsStr::from_bytes)
    }
}

/// Whether `name` (one component) is a whiteout-related name, and which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhiteoutName<'a> {
    /// Not a whiteout: an ordinary entry.
    None,
    /// `.wh..wh..opq`: the parent directory is opaque.
    Opaque,
    /// `.wh..wh.<anything else>`: AUFS bookkeeping, skipped.
    Meta,
    /// `.wh.<name>`: deletes `<name>`.
    Delete(&'a OsStr),
}

impl<'a> WhiteoutName<'a> {
    pub(crate) fn classify(name: &'a OsStr) -> Result<WhiteoutName<'a>, UnsafeNameReason> {
        let bytes = name.as_bytes();
        if bytes == super::WHITEOUT_OPAQUE.as_bytes() {
            return Ok(WhiteoutName::Opaque);
        }
        if bytes.starts_with(super::WHITEOUT_META_PREFIX.as_bytes()) {
            return Ok(WhiteoutName::Meta);
        }
        match bytes.strip_prefix(super::WHITEOUT_PREFIX.as_bytes()) {
            None => Ok(WhiteoutName::None),
            // `.wh.`, `.wh..` and `.wh...` would delete the directory itself or its parent.
            Some(b"" | b"." | b"..") => Err(UnsafeNameReason::Whiteout),
            Some(target) => Ok(WhiteoutName::Delete(OsStr::from_bytes(target))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> Result<String, UnsafeNameReason> {
        EntryPath::parse(raw.as_bytes()).map(|path| path.as_path().to_string_lossy().into_owned())
    }

    #[test]
    fn names_are_normalised_relative_to_the_root() {
        assert_eq!(parsed("usr/bin/env").unwrap(), "usr/bin/env");
        assert_eq!(parsed("./usr//bin/./env/").unwrap(), "usr/bin/env");
        assert_eq!(parsed("/etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(parsed("./").unwrap(), "");
        assert_eq!(parsed("/").unwrap(), "");
    }

    #[test]
    fn parent_components_and_nul_bytes_are_refused() {
        assert_eq!(parsed("../escape"), Err(UnsafeNameReason::ParentComponent));
        assert_eq!(parsed("a/../../b"), Err(UnsafeNameReason::ParentComponent));
        assert_eq!(parsed("a/.."), Err(UnsafeNameReason::ParentComponent));
        assert_eq!(parsed("a\0b"), Err(UnsafeNameReason::Nul));
        assert_eq!(
            parsed(&"x".repeat(256)),
            Err(UnsafeNameReason::ComponentTooLong)
        );
        assert_eq!(parsed(&"x/".repeat(3000)), Err(UnsafeNameReason::TooLong));
    }

    #[test]
    fn split_gives_parent_and_name() {
        let path = EntryPath::parse(b"a/b/c").unwrap();
        let (parent, name) = path.split().unwrap();
        assert_eq!(
            (parent.as_path(), name),
            (Path::new("a/b"), OsStr::new("c"))
        );
        let single = EntryPath::parse(b"c").unwrap();
        let (parent, name) = single.split().unwrap();
        assert!(parent.is_root());
        assert_eq!(name, "c");
        assert!(EntryPath::root().split().is_none());
    }

    #[test]
    fn whiteout_names_are_classified() {
        fn classify(name: &str) -> Result<WhiteoutName<'_>, UnsafeNameReason> {
            WhiteoutName::classify(OsStr::new(name))
        }
        assert_eq!(classify("file"), Ok(WhiteoutName::None));
        assert_eq!(
            classify(".wh.file"),
            Ok(WhiteoutName::Delete(OsStr::new("file")))
        );
        assert_eq!(classify(".wh..wh..opq"), Ok(WhiteoutName::Opaque));
        assert_eq!(classify(".wh..wh.plnk"), Ok(WhiteoutName::Meta));
        assert_eq!(classify(".wh."), Err(UnsafeNameReason::Whiteout));
        assert_eq!(classify(".wh.."), Err(UnsafeNameReason::Whiteout));
        assert_eq!(classify(".wh..."), Err(UnsafeNameReason::Whiteout));
        assert_eq!(
            classify(".wh..hidden"),
            Ok(WhiteoutName::Delete(OsStr::new(".hidden")))
        );
    }

    proptest::proptest! {
        #[test]
        fn parsed_names_never_climb_out(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            if let Ok(path) = EntryPath::parse(&raw) {
                for component in path.components() {
                    proptest::prop_assert!(component != ".." && component != "." && !component.is_empty());
                }
                proptest::prop_assert!(!path.as_path().is_absolute());
            }
        }
    }
}
