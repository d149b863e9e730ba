//! Hostile layer archives: whatever an archive holds, `apply_layer` changes nothing outside the
//! root. Each test applies into `<tmp>/root/` next to a sentinel tree `<tmp>/outside/` and
//! checks the sentinel (and the host's `/etc/passwd`) byte for byte and stat for stat
//! afterwards, then pins whether the case is an error or neutralised inside the root.
//!
//! Every archive here aims at the sandbox's `outside/`, never at a real host path such as
//! `/etc/passwd`: a regression must show up as a failed assertion, not as a damaged machine.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use kiln_cache::digest::Digest;
use kiln_cache::layer::{
    ApplyOptions, ApplyStats, DeviceNodes, LayerError, UnsafeNameReason, Whiteouts, apply_layer,
};
use tar::{Builder, EntryType, Header};

// ---- crafting archives byte by byte (tar-rs refuses `..` and other names we need) -------

#[derive(Clone)]
struct Raw {
    kind: EntryType,
    name: Vec<u8>,
    link: Option<Vec<u8>>,
    data: Vec<u8>,
    pax: Vec<(String, Vec<u8>)>,
    device: (u32, u32),
    gnu_long_name: bool,
}

fn raw(kind: EntryType, name: impl AsRef<[u8]>) -> Raw {
    Raw {
        kind,
        name: name.as_ref().to_vec(),
        link: None,
        data: Vec::new(),
        pax: Vec::new(),
        device: (0, 0),
        gnu_long_name: false,
    }
}

fn file(name: impl AsRef<[u8]>, content: &str) -> Raw {
    Raw {
        data: content.as_bytes().to_vec(),
        ..raw(EntryType::Regular, name)
    }
}

fn dir(name: impl AsRef<[u8]>) -> Raw {
    raw(EntryType::Directory, name)
}

fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Raw {
    Raw {
        link: Some(target.as_ref().to_vec()),
        ..raw(EntryType::Symlink, name)
    }
}

fn hardlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Raw {
    Raw {
        link: Some(target.as_ref().to_vec()),
        ..raw(EntryType::Link, name)
    }
}

fn node(kind: EntryType, name: &str, major: u32, minor: u32) -> Raw {
    Raw {
        device: (major, minor),
        ..raw(kind, name)
    }
}

fn archive(entries: &[Raw]) -> Vec<u8> {
    let mut builder = Builder::new(Vec::new());
    for entry in entries {
        let mut pax = entry.pax.clone();
        if entry.gnu_long_name {
            let mut header = Header::new_gnu();
            header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
            header.set_entry_type(EntryType::GNULongName);
            header.set_size(entry.name.len() as u64 + 1);
            header.set_mode(0o644);
            header.set_cksum();
            let mut data = entry.name.clone();
            data.push(0);
            builder.append(&header, data.as_slice()).unwrap();
        } else if entry.name.len() > 100 {
            pax.push(("path".to_string(), entry.name.clone()));
        }
        let mut header = Header::new_ustar();
        header.set_entry_type(entry.kind);
        let mode = if entry.kind == EntryType::Directory {
            0o755
        } else {
            0o644
        };
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_600_000_000);
        header.set_size(entry.data.len() as u64);
        header.set_device_major(entry.device.0).unwrap();
        header.set_device_minor(entry.device.1).unwrap();
        let length = entry.name.len().min(100);
        header.as_old_mut().name[..length].copy_from_slice(&entry.name[..length]);
        if let Some(link) = &entry.link {
            if link.len() > 100 {
                pax.push(("linkpath".to_string(), link.clone()));
            } else {
                header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            }
        }
        if !pax.is_empty() {
            builder
                .append_pax_extensions(
                    pax.iter()
                        .map(|(key, value)| (key.as_str(), value.as_slice())),
                )
                .unwrap();
        }
        header.set_cksum();
        builder.append(&header, entry.data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

// ---- the sandbox ----------------------------------------------------------------------

struct Sandbox {
    temp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn sandbox() -> Sandbox {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("root");
    let outside = temp.path().join("outside");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("sentinel"), "precious").unwrap();
    fs::create_dir(outside.join("dir")).unwrap();
    fs::write(outside.join("dir/inner"), "also precious").unwrap();
    std::os::unix::fs::symlink("sentinel", outside.join("link")).unwrap();
    Sandbox {
        temp,
        root,
        outside,
    }
}

/// Everything observable about a path that an escape could change.
fn stat_line(path: &Path) -> String {
    let metadata = path.symlink_metadata().unwrap();
    let content = if metadata.is_file() {
        Digest::of(&fs::read(path).unwrap()).short()
    } else if metadata.file_type().is_symlink() {
        fs::read_link(path).unwrap().display().to_string()
    } else {
        String::new()
    };
    format!(
        "mode={:o} uid={} gid={} nlink={} size={} mtime={}.{} ctime={}.{} {content}",
        metadata.mode(),
        metadata.uid(),
        metadata.gid(),
        metadata.nlink(),
        metadata.len(),
        metadata.mtime(),
        metadata.mtime_nsec(),
        metadata.ctime(),
        metadata.ctime_nsec(),
    )
}

impl Sandbox {
    /// The sandbox minus the root, plus the host paths a hostile archive would aim for.
    fn outside_state(&self) -> BTreeMap<PathBuf, String> {
        let mut state = BTreeMap::new();
        for entry in walkdir::WalkDir::new(self.temp.path()).sort_by_file_name() {
            let entry = entry.unwrap();
            // The root itself changes (that is the point); its parent's entry for it must not.
            if entry.path().starts_with(&self.root) {
                continue;
            }
            state.insert(entry.path().to_path_buf(), stat_line(entry.path()));
        }
        for host in ["/etc/passwd", "/etc"] {
            state.insert(PathBuf::from(host), stat_line(Path::new(host)));
        }
        state
    }

    /// Applies `entries` into the root and asserts that nothing outside it changed.
    fn apply(&self, entries: &[Raw], options: &ApplyOptions) -> Result<ApplyStats, LayerError> {
        let before = self.outside_state();
        let result = apply_layer(&self.root, archive(entries).as_slice(), options);
        let after = self.outside_state();
        for (path, line) in &after {
            assert_eq!(
                before.get(path),
                Some(line),
                "{} appeared or changed outside the root",
                path.display()
            );
        }
        assert_eq!(
            before.len(),
            after.len(),
            "something outside the root disappeared"
        );
        result
    }

    fn in_root(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.root.join(relative)
    }

    /// The sandbox's `outside` as an absolute path string, for entry names and link targets.
    fn outside_abs(&self) -> String {
        self.outside.display().to_string()
    }

    /// Where an absolute path to `outside` lands when taken inside the root.
    fn outside_inside_root(&self) -> PathBuf {
        self.root.join(self.outside.strip_prefix("/").unwrap())
    }
}

fn flattening() -> ApplyOptions {
    ApplyOptions::new(Whiteouts::Apply)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn unsafe_reason(result: Result<ApplyStats, LayerError>) -> UnsafeNameReason {
    match result {
        Err(LayerError::UnsafeName { reason, .. }) => reason,
        other => panic!("expected an unsafe-name error, got {other:?}"),
    }
}

fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

// ---- the cases --------------------------------------------------------------------------

#[test]
fn parent_components_are_an_error() {
    let sandbox = sandbox();
    for name in [
        "../escape",
        "a/../../escape",
        "./../escape",
        "a/b/../../../escape",
        "..",
    ] {
        let result = sandbox.apply(&[file(name, "x")], &flattening());
        assert_eq!(
            unsafe_reason(result),
            UnsafeNameReason::ParentComponent,
            "{name}"
        );
    }
    let error = sandbox
        .apply(&[file("../escape", "x")], &flattening())
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "entry \"../escape\" has an unsafe name: it contains a `..` component"
    );
    assert!(!exists(&sandbox.temp.path().join("escape")));
}

#[test]
fn absolute_names_are_neutralised_into_the_root() {
    let sandbox = sandbox();
    let name = format!("{}/abs-file", sandbox.outside_abs());
    sandbox
        .apply(&[file(&name, "inside")], &flattening())
        .unwrap();
    assert_eq!(
        fs::read_to_string(sandbox.outside_inside_root().join("abs-file")).unwrap(),
        "inside"
    );
}

#[test]
fn a_symlinked_parent_resolves_inside_the_root() {
    let sandbox = sandbox();
    // The issue's `a -> /etc`, then `a/passwd`, aimed at the sandbox instead: chroot
    // semantics, so `a` is the root's own copy of that path.
    let outside_dir = format!("{}/", sandbox.outside_abs());
    sandbox
        .apply(
            &[
                dir(&outside_dir),
                symlink("a", sandbox.outside_abs()),
                file("a/sentinel", "inside"),
            ],
            &flattening(),
        )
        .unwrap();
    assert_eq!(
        fs::read_to_string(sandbox.outside_inside_root().join("sentinel")).unwrap(),
        "inside"
    );
    assert!(
        sandbox
            .in_root("a")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn a_parent_symlink_to_a_path_missing_in_the_root_is_an_error() {
    let sandbox = sandbox();
    // Resolved inside the root, the targets do not exist; creating `a` would need to replace
    // the symlink while it is still a parent, so it is refused.
    // `/proc/self/root/<outside>` would be the sandbox through a magic link, were magic links
    // followed; resolved inside the root it is `<root>/proc/...`, which does not exist.
    let through_proc = format!("/proc/self/root{}", sandbox.outside_abs());
    for target in [
        sandbox.outside_abs(),
        "../outside".to_string(),
        through_proc,
    ] {
        let result = sandbox.apply(&[symlink("a", &target), file("a/file", "x")], &flattening());
        match result {
            Err(LayerError::Apply { path, .. }) => assert_eq!(path, Path::new("a/file")),
            other => panic!("expected an apply error through {target}, got {other:?}"),
        }
    }
}

#[test]
fn symlink_chains_are_clamped_at_the_root() {
    let sandbox = sandbox();
    let entries = [
        dir("outside/"),
        symlink("a", "../../.."),
        symlink("b", "a/.."),
        symlink("c", "b/../../outside"),
        symlink("d", "c"),
        file("d/chain-file", "clamped"),
        symlink("up", "../../../../../../../../"),
        file(
            format!("up{}/through-up", sandbox.outside_abs()),
            "clamped too",
        ),
    ];
    sandbox.apply(&entries, &flattening()).unwrap();
    assert_eq!(
        fs::read_to_string(sandbox.in_root("outside/chain-file")).unwrap(),
        "clamped"
    );
    assert_eq!(
        fs::read_to_string(sandbox.outside_inside_root().join("through-up")).unwrap(),
        "clamped too"
    );
    // The symlinks themselves are stored verbatim.
    assert_eq!(
        fs::read_link(sandbox.in_root("a")).unwrap(),
        Path::new("../../..")
    );
}

#[test]
fn hardlinks_out_of_the_root_are_errors_or_stay_inside() {
    let sandbox = sandbox();
    let sentinel = format!("{}/sentinel", sandbox.outside_abs());
    let outside_dir = format!("{}/", sandbox.outside_abs());
    // Absolute targets are taken inside the root, where they do not exist.
    for target in [sentinel.as_str(), "/outside/sentinel"] {
        let result = sandbox.apply(&[hardlink("h", target)], &flattening());
        assert!(
            matches!(result, Err(LayerError::Apply { .. })),
            "{target}: {result:?}"
        );
    }
    let result = sandbox.apply(&[hardlink("h", "../outside/sentinel")], &flattening());
    assert_eq!(unsafe_reason(result), UnsafeNameReason::ParentComponent);
    let result = sandbox.apply(&[hardlink("h", "/")], &flattening());
    assert_eq!(unsafe_reason(result), UnsafeNameReason::Root);
    // Through a symlink to the outside: resolved inside the root, missing there.
    let result = sandbox.apply(
        &[
            symlink("s", sandbox.outside_abs()),
            hardlink("h", "s/sentinel"),
        ],
        &flattening(),
    );
    assert!(
        matches!(result, Err(LayerError::Apply { .. })),
        "{result:?}"
    );
    // Through a symlink inside the root: allowed, and it is the root's file.
    sandbox
        .apply(
            &[
                dir(&outside_dir),
                file(format!("{outside_dir}sentinel"), "inside"),
                symlink("e", sandbox.outside_abs()),
                hardlink("h2", "e/sentinel"),
            ],
            &flattening(),
        )
        .unwrap();
    let linked = sandbox.in_root("h2").metadata().unwrap();
    let original = sandbox
        .outside_inside_root()
        .join("sentinel")
        .metadata()
        .unwrap();
    assert_eq!(linked.ino(), original.ino());
    // A hardlink to a symlink pointing outside links the symlink itself, not its target.
    sandbox
        .apply(
            &[symlink("l", &sentinel), hardlink("h3", "l")],
            &flattening(),
        )
        .unwrap();
    assert!(
        sandbox
            .in_root("h3")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn entries_replace_symlinks_instead_of_following_them() {
    let sandbox = sandbox();
    let sentinel = format!("{}/sentinel", sandbox.outside_abs());
    // A lower layer left symlinks pointing out of the root...
    sandbox
        .apply(
            &[
                symlink("d", sandbox.outside_abs()),
                symlink("f", &sentinel),
                symlink("g", &sentinel),
            ],
            &flattening(),
        )
        .unwrap();
    // ...and this layer puts a directory, a file and a hardlink in their place.
    sandbox
        .apply(
            &[
                dir("d/"),
                file("d/new", "inside d"),
                file("f", "overwritten?"),
                file("src", "s"),
                hardlink("g", "src"),
            ],
            &flattening(),
        )
        .unwrap();
    assert!(sandbox.in_root("d").symlink_metadata().unwrap().is_dir());
    assert_eq!(
        fs::read_to_string(sandbox.in_root("d/new")).unwrap(),
        "inside d"
    );
    assert_eq!(
        fs::read_to_string(sandbox.in_root("f")).unwrap(),
        "overwritten?"
    );
    assert!(sandbox.in_root("f").symlink_metadata().unwrap().is_file());
    assert_eq!(
        fs::read_to_string(sandbox.outside.join("sentinel")).unwrap(),
        "precious"
    );
    // A symlink where a directory stood replaces the whole directory, not its target.
    sandbox
        .apply(&[symlink("d", sandbox.outside_abs())], &flattening())
        .unwrap();
    assert!(
        sandbox
            .in_root("d")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn whiteouts_cannot_delete_outside_the_root() {
    let sandbox = sandbox();
    for (name, reason) in [
        (".wh...", UnsafeNameReason::Whiteout),
        (".wh..", UnsafeNameReason::Whiteout),
        (".wh.", UnsafeNameReason::Whiteout),
        ("a/.wh...", UnsafeNameReason::Whiteout),
        ("../.wh.outside", UnsafeNameReason::ParentComponent),
        ("../outside/.wh.sentinel", UnsafeNameReason::ParentComponent),
    ] {
        for whiteouts in [Whiteouts::Apply, Whiteouts::Overlay] {
            let result = sandbox.apply(&[file(name, "")], &ApplyOptions::new(whiteouts));
            assert_eq!(unsafe_reason(result), reason, "{name} with {whiteouts:?}");
        }
    }
    // Symlinks to the outside, then whiteouts and an opaque marker through them: the
    // directories resolve inside the root, where there is nothing to delete.
    sandbox
        .apply(
            &[
                symlink("s", sandbox.outside_abs()),
                symlink("t", "../outside"),
                symlink("u", "/"),
            ],
            &flattening(),
        )
        .unwrap();
    let outside_name = format!("u{}/.wh.sentinel", sandbox.outside_abs());
    sandbox
        .apply(
            &[
                file("s/.wh.sentinel", ""),
                file("t/.wh.sentinel", ""),
                file("s/.wh..wh..opq", ""),
                file("t/.wh..wh..opq", ""),
                file(&outside_name, ""),
            ],
            &flattening(),
        )
        .unwrap();
    // Whiting out the symlink itself removes the link, never its target.
    sandbox
        .apply(&[file(".wh.s", ""), file(".wh.u", "")], &flattening())
        .unwrap();
    assert!(!exists(&sandbox.in_root("s")));
    assert!(!exists(&sandbox.in_root("u")));
    assert!(exists(&sandbox.in_root("t")));
}

#[test]
fn an_opaque_marker_at_the_top_only_empties_the_root() {
    let sandbox = sandbox();
    sandbox
        .apply(&[file("old", "lower")], &flattening())
        .unwrap();
    sandbox
        .apply(
            &[file(".wh..wh..opq", ""), file("new", "upper")],
            &flattening(),
        )
        .unwrap();
    assert!(!exists(&sandbox.in_root("old")));
    assert!(exists(&sandbox.in_root("new")));
}

#[test]
fn device_nodes_are_created_inside_and_never_opened() {
    if !is_root() {
        eprintln!("skipped: mknod needs root (euid 0)");
        return;
    }
    let sandbox = sandbox();
    let options = ApplyOptions::new(Whiteouts::Overlay);
    // vda/sda-like block devices and a fifo, then regular files with the same names: writing
    // must replace the nodes, not open them (a fifo would block, a disk would be written).
    sandbox
        .apply(
            &[
                node(EntryType::Block, "disk", 7, 0),
                node(EntryType::Char, "null", 1, 3),
                node(EntryType::Fifo, "pipe", 0, 0),
            ],
            &options,
        )
        .unwrap();
    let disk = sandbox.in_root("disk").symlink_metadata().unwrap();
    assert!(disk.file_type().is_block_device());
    assert_eq!(disk.rdev(), nix::sys::stat::makedev(7, 0));
    assert!(
        sandbox
            .in_root("pipe")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_fifo()
    );
    sandbox
        .apply(
            &[file("disk", "just a file"), file("pipe", "not a pipe")],
            &options,
        )
        .unwrap();
    assert_eq!(
        fs::read_to_string(sandbox.in_root("disk")).unwrap(),
        "just a file"
    );
    assert_eq!(
        fs::read_to_string(sandbox.in_root("pipe")).unwrap(),
        "not a pipe"
    );
    assert!(
        sandbox
            .in_root("null")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_char_device()
    );

    let skipping = ApplyOptions {
        devices: DeviceNodes::Skip,
        ..options
    };
    let stats = sandbox
        .apply(&[node(EntryType::Block, "disk2", 8, 0)], &skipping)
        .unwrap();
    assert_eq!(stats.skipped_devices, 1);
    assert!(!exists(&sandbox.in_root("disk2")));
}

#[test]
fn huge_names_are_an_error() {
    let sandbox = sandbox();
    let long_path = "d/".repeat(2500) + "f";
    let result = sandbox.apply(&[file(&long_path, "x")], &flattening());
    assert_eq!(unsafe_reason(result), UnsafeNameReason::TooLong);
    let long_component = "x".repeat(300);
    let result = sandbox.apply(&[file(&long_component, "x")], &flattening());
    assert_eq!(unsafe_reason(result), UnsafeNameReason::ComponentTooLong);
    let gnu = Raw {
        gnu_long_name: true,
        ..file("n/".repeat(512 * 1024), "x")
    };
    let result = sandbox.apply(&[gnu], &flattening());
    assert_eq!(unsafe_reason(result), UnsafeNameReason::TooLong);
    // A symlink target longer than Linux allows (4095 bytes) fails cleanly.
    let result = sandbox.apply(&[symlink("s", "t".repeat(5000))], &flattening());
    assert!(
        matches!(result, Err(LayerError::Apply { .. })),
        "{result:?}"
    );
    // Long but legal: parents are created as needed.
    let deep = "component-of-some-length/".repeat(150) + "leaf";
    sandbox
        .apply(&[file(&deep, "deep")], &flattening())
        .unwrap();
    assert_eq!(fs::read_to_string(sandbox.in_root(&deep)).unwrap(), "deep");
}

#[test]
fn overlay_bookkeeping_xattrs_from_the_archive_are_dropped() {
    if !is_root() {
        eprintln!("skipped: trusted.* xattrs need root (euid 0)");
        return;
    }
    let sandbox = sandbox();
    let with_xattrs = |entry: Raw| Raw {
        pax: vec![
            (
                "SCHILY.xattr.trusted.overlay.redirect".to_string(),
                b"/etc".to_vec(),
            ),
            (
                "SCHILY.xattr.trusted.overlay.opaque".to_string(),
                b"y".to_vec(),
            ),
            (
                "SCHILY.xattr.user.overlay.opaque".to_string(),
                b"y".to_vec(),
            ),
            ("SCHILY.xattr.user.kept".to_string(), b"yes".to_vec()),
        ],
        ..entry
    };
    sandbox
        .apply(
            &[with_xattrs(dir("d/")), with_xattrs(file("f", "x"))],
            &ApplyOptions::new(Whiteouts::Overlay),
        )
        .unwrap();
    for path in ["d", "f"] {
        let names: Vec<String> = xattr::list(sandbox.in_root(path))
            .unwrap()
            .map(|name| name.to_string_lossy().into_owned())
            .filter(|name| name != "security.selinux")
            .collect();
        assert_eq!(names, ["user.kept"], "{path}");
    }
}

#[test]
fn the_root_itself_can_only_be_a_directory_entry() {
    let sandbox = sandbox();
    let result = sandbox.apply(&[file(".", "x")], &flattening());
    assert_eq!(unsafe_reason(result), UnsafeNameReason::Root);
    let result = sandbox.apply(&[symlink("/", sandbox.outside_abs())], &flattening());
    assert_eq!(unsafe_reason(result), UnsafeNameReason::Root);
    sandbox
        .apply(&[dir("./"), file("./ok", "fine")], &flattening())
        .unwrap();
    assert!(exists(&sandbox.in_root("ok")));
}

#[test]
fn unknown_entry_types_and_truncated_archives_are_errors() {
    let sandbox = sandbox();
    let result = sandbox.apply(&[raw(EntryType::new(b'V'), "volume")], &flattening());
    assert!(
        matches!(
            result,
            Err(LayerError::UnsupportedEntryType { kind: 'V', .. })
        ),
        "{result:?}"
    );

    let mut bytes = archive(&[file("big", &"x".repeat(10_000))]);
    bytes.truncate(3000);
    let result = apply_layer(&sandbox.root, bytes.as_slice(), &flattening());
    assert!(matches!(result, Err(LayerError::Archive(_))), "{result:?}");
}

#[test]
fn whiteouts_through_a_symlink_in_overlay_mode_stay_inside() {
    if !is_root() {
        eprintln!("skipped: overlay whiteouts need mknod (euid 0)");
        return;
    }
    let sandbox = sandbox();
    let options = ApplyOptions::new(Whiteouts::Overlay);
    sandbox
        .apply(&[dir("outside/"), symlink("s", "../outside")], &options)
        .unwrap();
    sandbox
        .apply(
            &[file("s/.wh.sentinel", ""), file("s/.wh..wh..opq", "")],
            &options,
        )
        .unwrap();
    let whiteout = sandbox
        .in_root("outside/sentinel")
        .symlink_metadata()
        .unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(
        xattr::get(sandbox.in_root("outside"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
}
