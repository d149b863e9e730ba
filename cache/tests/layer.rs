//! Layer tars: round-trips through write and apply, determinism, SOURCE_DATE_EPOCH, overlay
//! upper directories and whiteouts in both apply modes.
//!
//! Tests that need root (mknod, chown, trusted xattrs, overlay mounts) print why and return
//! early when not run as root.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use kiln_cache::digest::Digest;
use kiln_cache::layer::{
    ApplyOptions, Compression, DetectedCompression, LayerSource, Whiteouts, WriteOptions,
    apply_layer, decompress, write_layer,
};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use tar::{Builder, EntryType, Header};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

macro_rules! require_root {
    ($why:expr) => {
        if !is_root() {
            eprintln!("skipped: {} needs root (euid 0)", $why);
            return;
        }
    };
}

/// `security.capability` v2 granting CAP_NET_BIND_SERVICE (bit 10), effective: what
/// `setcap cap_net_bind_service+ep` writes.
const CAPABILITY: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn set_mtime(path: &Path, seconds: i64) {
    filetime::set_symlink_file_times(
        path,
        FileTime::from_unix_time(seconds, 0),
        FileTime::from_unix_time(seconds, 0),
    )
    .unwrap();
}

fn write_file(path: &Path, content: &[u8], mode: u32) {
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mkdir(path: &Path, mode: u32) {
    fs::create_dir(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree with every entry type a layer can hold. Root-only parts (devices, foreign owners,
/// `security.capability`, `trusted.*`) are added when running as root.
fn build_rich_tree(root: &Path) {
    mkdir(&root.join("etc"), 0o755);
    write_file(
        &root.join("etc/passwd"),
        b"root:x:0:0::/root:/bin/sh\n",
        0o644,
    );
    write_file(&root.join("etc/empty"), b"", 0o600);
    mkdir(&root.join("bin"), 0o755);
    write_file(&root.join("bin/tool"), &vec![0x7f; 70_000], 0o4755);
    fs::hard_link(root.join("bin/tool"), root.join("bin/tool-again")).unwrap();
    write_file(&root.join("bin/group-tool"), b"#!/bin/sh\n", 0o2711);
    mkdir(&root.join("tmp"), 0o1777);
    mkdir(&root.join("shared"), 0o2775);
    symlink("usr/lib", root.join("lib")).unwrap();
    symlink("/nonexistent/kiln-absolute-target", root.join("abs-link")).unwrap();
    symlink("../../../../nowhere", root.join("dangling")).unwrap();
    mkdir(&root.join("usr"), 0o755);
    mkdir(&root.join("usr/lib"), 0o755);
    write_file(&root.join("usr/lib/libx.so"), b"\x7fELF", 0o755);
    nix::unistd::mkfifo(&root.join("tmp/fifo"), Mode::from_bits_truncate(0o640)).unwrap();
    // A name and a symlink target longer than the 100 bytes a USTAR field holds.
    let deep = root
        .join("usr/lib")
        .join("d".repeat(60))
        .join("e".repeat(60));
    fs::create_dir_all(&deep).unwrap();
    write_file(&deep.join("f".repeat(120)), b"long", 0o644);
    symlink("t".repeat(150), root.join("long-target")).unwrap();
    xattr::set(root.join("etc/passwd"), "user.kiln.note", b"kept").unwrap();
    xattr::set(
        root.join("etc/passwd"),
        "user.kiln.another",
        b"\x00binary\xff",
    )
    .unwrap();
    xattr::set(root.join("usr"), "user.kiln.dir", b"on a directory").unwrap();

    if is_root() {
        mkdir(&root.join("dev"), 0o755);
        mknod(
            &root.join("dev/null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, 3),
        )
        .unwrap();
        mknod(
            &root.join("dev/loop9"),
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o660),
            makedev(7, 9),
        )
        .unwrap();
        let uid = |n| Some(nix::unistd::Uid::from_raw(n));
        let gid = |n| Some(nix::unistd::Gid::from_raw(n));
        nix::unistd::chown(&root.join("bin/group-tool"), uid(1000), gid(1001)).unwrap();
        nix::unistd::chown(&root.join("shared"), uid(0), gid(50)).unwrap();
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &root.join("lib"),
            uid(33),
            gid(33),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .unwrap();
        // chown clears setgid and capabilities: set the mode and xattrs after it.
        fs::set_permissions(
            root.join("bin/group-tool"),
            fs::Permissions::from_mode(0o2711),
        )
        .unwrap();
        xattr::set(root.join("bin/tool"), "security.capability", &CAPABILITY).unwrap();
        xattr::set(root.join("etc/passwd"), "trusted.kiln", b"trusted value").unwrap();
    }

    // Fixed mtimes, children before parents (creating entries changes the parent's mtime).
    let mut paths: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .min_depth(1)
        .contents_first(true)
        .into_iter()
        .map(|entry| entry.unwrap().into_path())
        .collect();
    paths.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
    for (index, path) in paths.iter().enumerate() {
        set_mtime(path, 1_600_000_000 + index as i64 * 1000);
    }
}

/// Everything a layer is meant to preserve about a tree, per relative path.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    content: Option<Digest>,
    link: Option<PathBuf>,
    rdev: u64,
    xattrs: BTreeMap<String, Vec<u8>>,
    /// The first path (in sorted order) sharing this inode, for hardlink identity.
    same_inode_as: PathBuf,
}

fn describe(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut first_path_of_inode: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    let mut nodes = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry.unwrap();
        let relative = entry.path().strip_prefix(root).unwrap().to_path_buf();
        let metadata = entry.path().symlink_metadata().unwrap();
        let file_type = metadata.file_type();
        let kind = if file_type.is_dir() {
            "dir"
        } else if file_type.is_file() {
            "file"
        } else if file_type.is_symlink() {
            "symlink"
        } else {
            use std::os::unix::fs::FileTypeExt;
            if file_type.is_fifo() {
                "fifo"
            } else if file_type.is_char_device() {
                "char"
            } else {
                "block"
            }
        };
        let mut xattrs = BTreeMap::new();
        for name in xattr::list(entry.path()).unwrap() {
            if name == "security.selinux" {
                continue;
            }
            let value = xattr::get(entry.path(), &name).unwrap().unwrap_or_default();
            xattrs.insert(name.to_string_lossy().into_owned(), value);
        }
        let same_inode_as = first_path_of_inode
            .entry((metadata.dev(), metadata.ino()))
            .or_insert_with(|| relative.clone())
            .clone();
        nodes.insert(
            relative,
            Node {
                kind,
                mode: metadata.mode(),
                uid: metadata.uid(),
                gid: metadata.gid(),
                mtime: metadata.mtime(),
                content: file_type
                    .is_file()
                    .then(|| Digest::of(&fs::read(entry.path()).unwrap())),
                link: file_type
                    .is_symlink()
                    .then(|| fs::read_link(entry.path()).unwrap()),
                rdev: metadata.rdev(),
                xattrs,
                same_inode_as,
            },
        );
    }
    nodes
}

fn layer_bytes(
    source: LayerSource<'_>,
    compression: Compression,
    source_date_epoch: Option<i64>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let digests = write_layer(
        source,
        &mut out,
        &WriteOptions {
            compression,
            source_date_epoch,
        },
    )
    .unwrap();
    assert_eq!(digests.digest, Digest::of(&out));
    assert_eq!(digests.size, out.len() as u64);
    out
}

fn entry_names(tar_bytes: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(tar_bytes);
    archive
        .entries()
        .unwrap()
        .map(|entry| String::from_utf8(entry.unwrap().path_bytes().into_owned()).unwrap())
        .collect()
}

#[test]
fn round_trip_preserves_every_entry_type_and_hardlink_identity() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("source");
    fs::create_dir(&source).unwrap();
    build_rich_tree(&source);

    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let blob = layer_bytes(LayerSource::Directory(&source), compression, None);
        let target = temp.path().join(format!("applied-{compression:?}"));
        fs::create_dir(&target).unwrap();
        let options = ApplyOptions::new(Whiteouts::Overlay);
        let stats = apply_layer(&target, decompress(blob.as_slice()).unwrap(), &options).unwrap();

        let mut expected = describe(&source);
        let actual = describe(&target);
        if !is_root() {
            // Without CAP_CHOWN everything is ours anyway; devices were not created.
            expected.retain(|_, node| node.kind != "char" && node.kind != "block");
        }
        assert_eq!(
            actual.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
        for (path, node) in &expected {
            assert_eq!(
                &actual[path],
                node,
                "{} differs after {compression:?}",
                path.display()
            );
        }
        assert_eq!(
            actual[Path::new("bin/tool-again")].same_inode_as,
            Path::new("bin/tool")
        );
        assert_eq!(stats.bytes, 70_000 + 26 + 10 + 4 + 4);
        assert_eq!(stats.skipped_xattrs, 0);
    }
}

#[test]
fn layer_entries_are_sorted_normalised_and_owned_numerically() {
    let temp = tempfile::tempdir().unwrap();
    build_rich_tree(temp.path());
    let tar_bytes = layer_bytes(LayerSource::Directory(temp.path()), Compression::None, None);
    let names = entry_names(&tar_bytes);
    assert_eq!(
        names[..4],
        ["abs-link", "bin/", "bin/group-tool", "bin/tool"]
    );
    assert!(names.contains(&"usr/lib/".to_string()));
    assert!(
        names
            .iter()
            .all(|name| !name.starts_with("./") && !name.starts_with('/'))
    );

    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let header = entry.header();
        assert_eq!(header.username_bytes(), Some(&b""[..]));
        assert_eq!(header.groupname_bytes(), Some(&b""[..]));
        if entry.path_bytes().as_ref() == b"bin/tool-again" {
            assert_eq!(header.entry_type(), EntryType::Link);
            assert_eq!(entry.link_name_bytes().unwrap().as_ref(), b"bin/tool");
        }
        if entry.path_bytes().ends_with(b"/") {
            assert_eq!(header.entry_type(), EntryType::Directory);
        }
    }
}

#[test]
fn capabilities_are_written_as_pax_xattr_records() {
    require_root!("setting security.capability");
    let temp = tempfile::tempdir().unwrap();
    build_rich_tree(temp.path());
    let tar_bytes = layer_bytes(LayerSource::Directory(temp.path()), Compression::None, None);
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let mut entry = archive
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|entry| entry.path_bytes().as_ref() == b"bin/tool")
        .unwrap();
    let records: Vec<(String, Vec<u8>)> = entry
        .pax_extensions()
        .unwrap()
        .unwrap()
        .map(|record| {
            let record = record.unwrap();
            (
                record.key().unwrap().to_string(),
                record.value_bytes().to_vec(),
            )
        })
        .collect();
    assert_eq!(
        records,
        [(
            "SCHILY.xattr.security.capability".to_string(),
            CAPABILITY.to_vec()
        )]
    );
    assert_eq!(entry.header().mode().unwrap(), 0o4755);
}

#[test]
fn writing_the_same_tree_twice_gives_identical_bytes() {
    let temp = tempfile::tempdir().unwrap();
    let first = temp.path().join("first");
    let second = temp.path().join("second");
    fs::create_dir(&first).unwrap();
    fs::create_dir(&second).unwrap();
    build_rich_tree(&first);
    build_rich_tree(&second);
    // Reading the files changes atimes, which must not matter.
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let a = layer_bytes(LayerSource::Directory(&first), compression, None);
        let b = layer_bytes(LayerSource::Directory(&first), compression, None);
        let c = layer_bytes(LayerSource::Directory(&second), compression, None);
        assert_eq!(Digest::of(&a), Digest::of(&b), "{compression:?}");
        assert_eq!(
            Digest::of(&a),
            Digest::of(&c),
            "{compression:?} of an identical tree"
        );
    }
}

#[test]
fn diff_id_is_the_digest_of_the_uncompressed_tar() {
    let temp = tempfile::tempdir().unwrap();
    build_rich_tree(temp.path());
    let plain = layer_bytes(LayerSource::Directory(temp.path()), Compression::None, None);
    for compression in [Compression::Gzip, Compression::Zstd] {
        let mut out = Vec::new();
        let digests = write_layer(
            LayerSource::Directory(temp.path()),
            &mut out,
            &WriteOptions {
                compression,
                source_date_epoch: None,
            },
        )
        .unwrap();
        assert_eq!(digests.diff_id, Digest::of(&plain));
        let mut decompressed = Vec::new();
        decompress(out.as_slice())
            .unwrap()
            .read_to_end(&mut decompressed)
            .unwrap();
        assert_eq!(decompressed, plain);
    }
}

#[test]
fn source_date_epoch_clamps_later_mtimes_only() {
    let temp = tempfile::tempdir().unwrap();
    let tree = |name: &str, new_mtime: i64| {
        let root = temp.path().join(name);
        fs::create_dir(&root).unwrap();
        write_file(&root.join("old"), b"old", 0o644);
        write_file(&root.join("new"), b"new", 0o644);
        symlink("new", root.join("link")).unwrap();
        set_mtime(&root.join("old"), 1_000);
        set_mtime(&root.join("new"), new_mtime);
        set_mtime(&root.join("link"), new_mtime);
        root
    };
    let built_today = tree("today", 1_750_000_000);
    let built_tomorrow = tree("tomorrow", 1_750_086_400);
    let epoch = Some(1_700_000_000);
    let today = layer_bytes(
        LayerSource::Directory(&built_today),
        Compression::Gzip,
        epoch,
    );
    let tomorrow = layer_bytes(
        LayerSource::Directory(&built_tomorrow),
        Compression::Gzip,
        epoch,
    );
    assert_eq!(Digest::of(&today), Digest::of(&tomorrow));

    let mut plain = Vec::new();
    decompress(today.as_slice())
        .unwrap()
        .read_to_end(&mut plain)
        .unwrap();
    let mut archive = tar::Archive::new(plain.as_slice());
    let mtimes: BTreeMap<String, u64> = archive
        .entries()
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (
                String::from_utf8(entry.path_bytes().into_owned()).unwrap(),
                entry.header().mtime().unwrap(),
            )
        })
        .collect();
    assert_eq!(mtimes["old"], 1_000);
    assert_eq!(mtimes["new"], 1_700_000_000);
    assert_eq!(mtimes["link"], 1_700_000_000);

    let unclamped = layer_bytes(
        LayerSource::Directory(&built_today),
        Compression::Gzip,
        None,
    );
    assert_ne!(Digest::of(&today), Digest::of(&unclamped));
}

/// A fixed tree, so the digests below only change when the tar writer or a compression
/// backend does. flate2's output differs between zlib-rs, miniz_oxide and zlib-ng, and a
/// dependency can switch the backend through feature unification: this test catches it.
#[test]
fn fixed_tree_has_golden_digests() {
    require_root!("a fixed owner (0:0) on the golden tree");
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path();
    mkdir(&root.join("app"), 0o755);
    let mut text = Vec::new();
    for line in 0..4000 {
        writeln!(
            text,
            "line {line}: the quick brown fox jumps over the lazy dog {}",
            line * 7919 % 1000
        )
        .unwrap();
    }
    write_file(&root.join("app/data.txt"), &text, 0o644);
    symlink("data.txt", root.join("app/link")).unwrap();
    for path in [
        root.join("app/data.txt"),
        root.join("app/link"),
        root.join("app"),
    ] {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &path,
            Some(nix::unistd::Uid::from_raw(0)),
            Some(nix::unistd::Gid::from_raw(0)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .unwrap();
        set_mtime(&path, 1_700_000_000);
    }
    let golden = |compression| {
        Digest::of(&layer_bytes(
            LayerSource::Directory(root),
            compression,
            None,
        ))
        .to_string()
    };
    assert_eq!(
        golden(Compression::None),
        "sha256:608540531623dbeb8ce8aee1fbe4483d818a214eb3fdf184a9c7d4544bcbe11b",
        "the tar writer's output changed"
    );
    assert_eq!(
        golden(Compression::Gzip),
        "sha256:5b4dcde2fe6895f39e08548f07aa31b78ce3ebbdca89097226fe766fe30bd469",
        "gzip output changed: was the flate2 backend (zlib-rs) or level (6) switched?"
    );
    assert_eq!(
        golden(Compression::Zstd),
        "sha256:b512d8b9c51dcc1443174da300f4caef5eef3f5d247cffcdc1e17719be6e14e6",
        "zstd output changed: was libzstd upgraded or its level (3) changed?"
    );
}

#[test]
fn decompress_detects_every_supported_format() {
    let payload: Vec<u8> = (0..100_000u32).flat_map(|n| n.to_le_bytes()).collect();
    let gzip = {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&payload).unwrap();
        encoder.finish().unwrap()
    };
    let zstd = zstd::encode_all(payload.as_slice(), 3).unwrap();
    let xz = {
        let mut encoder = liblzma::write::XzEncoder::new(Vec::new(), 6);
        encoder.write_all(&payload).unwrap();
        encoder.finish().unwrap()
    };
    let bzip2 = {
        let mut encoder = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        encoder.write_all(&payload).unwrap();
        encoder.finish().unwrap()
    };
    for (format, bytes) in [
        (DetectedCompression::Plain, payload.clone()),
        (DetectedCompression::Gzip, gzip),
        (DetectedCompression::Zstd, zstd),
        (DetectedCompression::Xz, xz),
        (DetectedCompression::Bzip2, bzip2),
    ] {
        assert_eq!(DetectedCompression::detect(&bytes), format);
        let mut decoded = Vec::new();
        decompress(bytes.as_slice())
            .unwrap()
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, payload, "{format}");
    }
    let mut empty = Vec::new();
    decompress(&b""[..])
        .unwrap()
        .read_to_end(&mut empty)
        .unwrap();
    assert!(empty.is_empty());
}

// ---- whiteouts ------------------------------------------------------------------------

/// An archive crafted entry by entry: (type, name, link target or content).
fn archive(entries: &[(EntryType, &str, &str)]) -> Vec<u8> {
    let mut builder = Builder::new(Vec::new());
    for &(kind, name, extra) in entries {
        let mut header = Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_mtime(1_600_000_000);
        let data: &[u8] = if kind == EntryType::Regular {
            extra.as_bytes()
        } else {
            b""
        };
        if kind == EntryType::Symlink || kind == EntryType::Link {
            header.set_link_name(extra).unwrap();
        }
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, name, data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn lower_layer() -> Vec<u8> {
    archive(&[
        (EntryType::Regular, "a", "lower a"),
        (EntryType::Directory, "d/", ""),
        (EntryType::Regular, "d/x", "lower x"),
        (EntryType::Directory, "d/sub/", ""),
        (EntryType::Regular, "d/sub/y", "lower y"),
        (EntryType::Directory, "e/", ""),
        (EntryType::Regular, "e/z", "lower z"),
        (EntryType::Regular, "e/keep", "lower keep"),
        (EntryType::Symlink, "link-to-e", "e"),
    ])
}

/// Deletes `a`, `e/z` and (through a symlink) nothing else; makes `d` opaque while adding
/// `d/new` and `d/sub/y2`; adds and whites out `same` in the same layer (the whiteout must
/// not apply to it).
fn upper_layer() -> Vec<u8> {
    archive(&[
        (EntryType::Regular, ".wh.a", ""),
        (EntryType::Directory, "d/", ""),
        (EntryType::Regular, "d/.wh..wh..opq", ""),
        (EntryType::Regular, "d/new", "upper new"),
        (EntryType::Directory, "d/sub/", ""),
        (EntryType::Regular, "d/sub/y2", "upper y2"),
        (EntryType::Regular, "e/.wh.z", ""),
        (EntryType::Regular, "same", "upper same"),
        (EntryType::Regular, ".wh.same", ""),
        (EntryType::Regular, ".wh..wh.plnk", ""),
    ])
}

fn listing(root: &Path) -> Vec<String> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .map(|entry| {
            entry
                .unwrap()
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

#[test]
fn whiteouts_delete_in_place_when_flattening() {
    let temp = tempfile::tempdir().unwrap();
    let options = ApplyOptions::new(Whiteouts::Apply);
    apply_layer(temp.path(), lower_layer().as_slice(), &options).unwrap();
    let stats = apply_layer(temp.path(), upper_layer().as_slice(), &options).unwrap();
    assert_eq!(
        listing(temp.path()),
        [
            "d",
            "d/new",
            "d/sub",
            "d/sub/y2",
            "e",
            "e/keep",
            "link-to-e",
            "same"
        ]
    );
    assert_eq!(fs::read(temp.path().join("same")).unwrap(), b"upper same");
    assert_eq!(stats.whiteouts, 3);
}

#[test]
fn whiteouts_become_overlay_markers_in_snapshots() {
    require_root!("mknod of a 0:0 whiteout and trusted.overlay.opaque");
    let temp = tempfile::tempdir().unwrap();
    let stats = apply_layer(
        temp.path(),
        upper_layer().as_slice(),
        &ApplyOptions::new(Whiteouts::Overlay),
    )
    .unwrap();
    assert_eq!(
        listing(temp.path()),
        ["a", "d", "d/new", "d/sub", "d/sub/y2", "e", "e/z", "same"]
    );
    for whiteout in ["a", "e/z"] {
        let metadata = temp.path().join(whiteout).symlink_metadata().unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(metadata.file_type().is_char_device(), "{whiteout}");
        assert_eq!(metadata.rdev(), 0, "{whiteout}");
    }
    assert_eq!(
        xattr::get(temp.path().join("d"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        xattr::get(temp.path().join("e"), "trusted.overlay.opaque").unwrap(),
        None
    );
    assert_eq!(stats.whiteouts, 3);
}

/// Unmounts on drop, so a failing assertion does not leave a mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn mount_overlay(lowerdirs: &[&Path], upper: Option<(&Path, &Path)>, merged: &Path) -> Mount {
    let lower = lowerdirs
        .iter()
        .map(|dir| dir.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut data = format!("lowerdir={lower},redirect_dir=off,metacopy=off,index=off");
    if let Some((upper, work)) = upper {
        data.push_str(&format!(
            ",upperdir={},workdir={}",
            upper.display(),
            work.display()
        ));
    }
    nix::mount::mount(
        Some("overlay"),
        merged,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    )
    .unwrap();
    Mount(merged.to_path_buf())
}

#[test]
fn overlay_upper_directory_becomes_whiteout_entries_and_round_trips() {
    require_root!("mounting overlayfs");
    let temp = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let path = temp.path().join(name);
        fs::create_dir(&path).unwrap();
        path
    };
    let (lower, upper, work, merged) = (dir("lower"), dir("upper"), dir("work"), dir("merged"));
    write_file(&lower.join("gone.txt"), b"deleted in upper", 0o644);
    write_file(&lower.join("kept.txt"), b"untouched", 0o644);
    fs::create_dir(lower.join("dir")).unwrap();
    write_file(&lower.join("dir/old.txt"), b"hidden by opaque dir", 0o644);
    fs::create_dir(lower.join("modified")).unwrap();
    write_file(&lower.join("modified/file"), b"before", 0o644);

    let expected = {
        let _mount = mount_overlay(&[&lower], Some((&upper, &work)), &merged);
        fs::remove_file(merged.join("gone.txt")).unwrap();
        fs::remove_dir_all(merged.join("dir")).unwrap();
        fs::create_dir(merged.join("dir")).unwrap();
        write_file(&merged.join("dir/new.txt"), b"recreated", 0o644);
        write_file(&merged.join("added.txt"), b"added", 0o600);
        write_file(&merged.join("modified/file"), b"after", 0o644);
        describe(&merged)
    };

    let tar_bytes = layer_bytes(LayerSource::OverlayUpper(&upper), Compression::None, None);
    assert_eq!(
        entry_names(&tar_bytes),
        [
            ".wh.gone.txt",
            "added.txt",
            "dir/",
            "dir/.wh..wh..opq",
            "dir/new.txt",
            "modified/",
            "modified/file"
        ]
    );
    // No overlay bookkeeping xattr leaks into the layer.
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if let Some(records) = entry.pax_extensions().unwrap() {
            for record in records {
                assert!(!record.unwrap().key().unwrap().contains("overlay"));
            }
        }
    }

    // Applied as a snapshot and stacked on the lower layer, it shows the same tree.
    let snapshot = dir("snapshot");
    apply_layer(
        &snapshot,
        tar_bytes.as_slice(),
        &ApplyOptions::new(Whiteouts::Overlay),
    )
    .unwrap();
    let stacked = dir("stacked");
    let _mount = mount_overlay(&[&snapshot, &lower], None, &stacked);
    let actual = describe(&stacked);
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (path, node) in &expected {
        let actual = &actual[path];
        assert_eq!(
            (actual.kind, actual.mode, &actual.content),
            (node.kind, node.mode, &node.content),
            "{}",
            path.display()
        );
    }
}

#[test]
fn overlay_redirects_are_refused() {
    require_root!("setting trusted.overlay.* xattrs");
    let temp = tempfile::tempdir().unwrap();
    fs::create_dir(temp.path().join("moved")).unwrap();
    xattr::set(
        temp.path().join("moved"),
        "trusted.overlay.redirect",
        b"/elsewhere",
    )
    .unwrap();
    let error = write_layer(
        LayerSource::OverlayUpper(temp.path()),
        std::io::sink(),
        &WriteOptions::default(),
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("trusted.overlay.redirect"),
        "{error}"
    );
    // As a plain directory the same tree is fine, and the xattr is not content.
    let tar_bytes = layer_bytes(LayerSource::Directory(temp.path()), Compression::None, None);
    assert_eq!(entry_names(&tar_bytes), ["moved/"]);
    let _ = OsStr::new("");
}
