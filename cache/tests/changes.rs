//! A container's file system as layers: `diff` lines, `export` of the merged view, and `cp` in
//! and out with chroot resolution. Built from plain directories standing in for an upper dir and
//! image snapshots; whiteouts and opaque markers use the xattr forms when not root (no mknod,
//! no `trusted.*`), so most of this runs unprivileged.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use kiln_cache::changes::{ChangesError, ContainerFs, CopyOptions, CopySource, CopyTarget};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// An overlay whiteout: a char device 0:0 as root, else the xattr form (kernel 6.7+).
fn whiteout(path: &Path) {
    if is_root() {
        nix::sys::stat::mknod(
            path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
    } else {
        fs::write(path, b"").unwrap();
        xattr::set(path, "user.overlay.whiteout", b"y").unwrap();
    }
}

fn opaque(path: &Path) {
    let name = if is_root() {
        "trusted.overlay.opaque"
    } else {
        "user.overlay.opaque"
    };
    xattr::set(path, name, b"y").unwrap();
}

fn write(root: &Path, path: &str, content: &str) {
    let path = root.join(path);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

/// A container dir with `upper/` and one snapshot per layer name, bottom-most first.
struct Fixture {
    dir: tempfile::TempDir,
    layers: Vec<PathBuf>,
}

impl Fixture {
    fn new(layer_count: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("upper")).unwrap();
        let layers = (0..layer_count)
            .map(|index| {
                let path = dir.path().join(format!("layer{index}"));
                fs::create_dir(&path).unwrap();
                path
            })
            .collect();
        Fixture { dir, layers }
    }

    fn upper(&self) -> PathBuf {
        self.dir.path().join("upper")
    }

    fn fs(&self) -> ContainerFs {
        ContainerFs::new(self.upper(), self.layers.clone())
    }

    /// Copies a lower directory into the upper dir with its metadata, as overlayfs copy-up does.
    fn copy_up(&self, path: &str) {
        let lower = self
            .layers
            .iter()
            .rev()
            .map(|layer| layer.join(path))
            .find(|candidate| candidate.is_dir())
            .unwrap();
        let upper = self.upper().join(path);
        fs::create_dir_all(&upper).unwrap();
        let metadata = fs::metadata(&lower).unwrap();
        fs::set_permissions(&upper, metadata.permissions()).unwrap();
        let mtime = filetime::FileTime::from_last_modification_time(&metadata);
        filetime::set_file_mtime(&upper, mtime).unwrap();
    }

    fn diff(&self) -> Vec<String> {
        self.fs()
            .changes()
            .unwrap()
            .changes
            .iter()
            .map(ToString::to_string)
            .collect()
    }
}

/// An image with /etc/passwd, /etc/group, /bin/sh and /home/app/profile.
fn image() -> Fixture {
    let fixture = Fixture::new(1);
    let base = &fixture.layers[0];
    write(base, "etc/passwd", "root:x:0:0::/root:/bin/sh\n");
    write(base, "etc/group", "root:x:0:\n");
    write(base, "bin/sh", "#!shell\n");
    write(base, "home/app/profile", "export A=1\n");
    fixture
}

#[test]
fn diff_lists_added_changed_and_deleted_paths_sorted_with_parents() {
    let fixture = image();
    let upper = fixture.upper();
    fixture.copy_up("etc");
    write(&upper, "etc/passwd", "changed\n");
    whiteout(&upper.join("etc/group"));
    write(&upper, "new/dir/file", "x\n");
    write(&upper, "hello", "hello\n");
    assert_eq!(
        fixture.diff(),
        [
            "C /etc",
            "D /etc/group",
            "C /etc/passwd",
            "A /hello",
            "A /new",
            "A /new/dir",
            "A /new/dir/file",
        ]
    );
}

#[test]
fn runtime_mount_targets_missing_from_the_image_are_not_changes() {
    let fixture = image();
    let upper = fixture.upper();
    fixture.copy_up("etc");
    for name in ["proc", "dev", "sys"] {
        fs::create_dir(upper.join(name)).unwrap();
    }
    for name in ["hostname", "hosts", "resolv.conf"] {
        write(&upper, &format!("etc/{name}"), "");
    }
    let changes = fixture.fs().changes().unwrap();
    assert_eq!(changes.changes, []);
    let omitted: BTreeSet<&[u8]> = changes.omitted.iter().map(Vec::as_slice).collect();
    for path in [
        &b"proc"[..],
        b"dev",
        b"sys",
        b"etc",
        b"etc/hostname",
        b"etc/hosts",
        b"etc/resolv.conf",
    ] {
        assert!(
            omitted.contains(path),
            "{} not omitted",
            String::from_utf8_lossy(path)
        );
    }
}

#[test]
fn a_runtime_directory_with_content_is_a_change() {
    let fixture = image();
    write(&fixture.upper(), "dev/made-by-hand", "x");
    write(&fixture.upper(), "etc/hostname", "not empty");
    assert_eq!(
        fixture.diff(),
        ["A /dev", "A /dev/made-by-hand", "C /etc", "A /etc/hostname"]
    );
}

#[test]
fn an_opaque_directory_is_changed_and_what_it_hides_is_deleted() {
    let fixture = image();
    let upper = fixture.upper();
    fixture.copy_up("home");
    opaque(&upper.join("home"));
    write(&upper, "home/new", "n\n");
    assert_eq!(fixture.diff(), ["C /home", "D /home/app", "A /home/new"]);
}

#[test]
fn a_directory_only_copied_up_is_not_a_change_but_a_mode_change_is() {
    let fixture = image();
    fixture.copy_up("bin");
    assert_eq!(fixture.diff(), Vec::<String>::new());
    fs::set_permissions(
        fixture.upper().join("bin"),
        fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    assert_eq!(fixture.diff(), ["C /bin"]);
}

#[test]
fn whiteouts_in_upper_layers_hide_lower_content_in_diff_and_export() {
    let fixture = Fixture::new(2);
    let (base, top) = (&fixture.layers[0], &fixture.layers[1]);
    write(base, "a", "a");
    write(base, "b", "b");
    write(base, "dir/old", "old");
    whiteout(&top.join("b"));
    fs::create_dir(top.join("dir")).unwrap();
    opaque(&top.join("dir"));
    write(top, "dir/new", "new");
    write(&fixture.upper(), "b", "b again");
    // `b` was deleted by the top layer: the container adding it back is an addition.
    assert_eq!(fixture.diff(), ["A /b"]);
    let mut tar = Vec::new();
    fixture.fs().export(&mut tar).unwrap();
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut entries = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let mut content = String::new();
        entry.read_to_string(&mut content).unwrap();
        entries.push(format!("{name}={content}"));
    }
    assert_eq!(entries, ["a=a", "b=b again", "dir/=", "dir/new=new"]);
}

#[test]
fn copy_out_resolves_symlinks_inside_the_container() {
    let fixture = image();
    let base = &fixture.layers[0];
    symlink("/etc", base.join("link")).unwrap();
    symlink("../../../../../../../../etc", base.join("home/escape")).unwrap();
    let host = tempfile::tempdir().unwrap();
    let options = CopyOptions::default();
    for (source, name) in [("/link/passwd", "a"), ("/home/escape/passwd", "b")] {
        fixture
            .fs()
            .copy_out::<Vec<u8>>(source, CopyTarget::Path(&host.path().join(name)), &options)
            .unwrap();
        assert_eq!(
            fs::read_to_string(host.path().join(name)).unwrap(),
            "root:x:0:0::/root:/bin/sh\n",
            "{source} must be the container's /etc/passwd"
        );
    }
    // Without -L a symlink is copied as a symlink; with it, what it points at.
    fixture
        .fs()
        .copy_out::<Vec<u8>>("/link", CopyTarget::Path(host.path()), &options)
        .unwrap();
    assert_eq!(
        fs::read_link(host.path().join("link")).unwrap(),
        Path::new("/etc")
    );
    let follow = CopyOptions {
        follow_link: true,
        ..options
    };
    fixture
        .fs()
        .copy_out::<Vec<u8>>(
            "/link",
            CopyTarget::Path(&host.path().join("etc-copy")),
            &follow,
        )
        .unwrap();
    assert!(host.path().join("etc-copy/group").is_file());
}

#[test]
fn copy_out_follows_docker_rules_for_directories_and_contents() {
    let fixture = image();
    let host = tempfile::tempdir().unwrap();
    let options = CopyOptions::default();
    let out = |source: &str, destination: &Path| {
        fixture
            .fs()
            .copy_out::<Vec<u8>>(source, CopyTarget::Path(destination), &options)
    };
    // Into an existing directory, under its own name.
    out("/home", host.path()).unwrap();
    assert!(host.path().join("home/app/profile").is_file());
    // A missing destination becomes the directory.
    out("/home", &host.path().join("renamed")).unwrap();
    assert!(host.path().join("renamed/app/profile").is_file());
    // `/.`: the content only.
    let contents = host.path().join("contents");
    fs::create_dir(&contents).unwrap();
    out("/home/.", &contents).unwrap();
    assert!(contents.join("app/profile").is_file());
    // A file to a missing path with a trailing slash, and a directory onto a file, fail.
    let missing = host.path().join("missing/");
    assert!(matches!(
        out("/etc/passwd", Path::new(&format!("{}/", missing.display()))),
        Err(ChangesError::NoSuchDirectory(_))
    ));
    fs::write(host.path().join("file"), "x").unwrap();
    assert!(matches!(
        out("/home", &host.path().join("file")),
        Err(ChangesError::DirectoryToFile(_))
    ));
    assert!(matches!(
        out("/nonexistent", host.path()),
        Err(ChangesError::NotFound(_))
    ));
    assert!(matches!(
        out("/etc/passwd/", host.path()),
        Err(ChangesError::NotADirectory(_))
    ));
}

#[test]
fn copy_out_to_an_archive_names_entries_after_the_source() {
    let fixture = image();
    let mut tar = Vec::new();
    fixture
        .fs()
        .copy_out(
            "/home",
            CopyTarget::Archive(&mut tar),
            &CopyOptions::default(),
        )
        .unwrap();
    let mut archive = tar::Archive::new(tar.as_slice());
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|entry| entry.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["home/", "home/app/", "home/app/profile"]);
}

#[test]
fn copy_in_writes_the_upper_dir_through_container_symlinks_only() {
    let fixture = image();
    symlink("/etc", fixture.layers[0].join("link")).unwrap();
    let host = tempfile::tempdir().unwrap();
    let source = host.path().join("kiln-copied-in");
    fs::write(&source, "from host\n").unwrap();
    fixture
        .fs()
        .copy_in::<&[u8]>(CopySource::Path(&source), "/link/", &CopyOptions::default())
        .unwrap();
    let written = fixture.upper().join("etc/kiln-copied-in");
    assert_eq!(fs::read_to_string(&written).unwrap(), "from host\n");
    assert!(!Path::new("/etc/kiln-copied-in").exists());
    assert!(!fixture.layers[0].join("etc/kiln-copied-in").exists());
    // The parent was copied up with the image's mode.
    let lower_mode = fs::metadata(fixture.layers[0].join("etc")).unwrap().mode();
    assert_eq!(
        fs::metadata(fixture.upper().join("etc")).unwrap().mode(),
        lower_mode
    );
    assert_eq!(fixture.diff(), ["C /etc", "A /etc/kiln-copied-in"]);
}

#[test]
fn copy_in_a_directory_merges_with_the_image_directory() {
    let fixture = image();
    let host = tempfile::tempdir().unwrap();
    write(host.path(), "home/other/file", "o");
    fixture
        .fs()
        .copy_in::<&[u8]>(
            CopySource::Path(&host.path().join("home")),
            "/",
            &CopyOptions::default(),
        )
        .unwrap();
    assert_eq!(
        fixture.diff(),
        ["C /home", "A /home/other", "A /home/other/file"]
    );
    let mut tar = Vec::new();
    fixture.fs().export(&mut tar).unwrap();
    let mut archive = tar::Archive::new(tar.as_slice());
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|entry| entry.unwrap().path().unwrap().display().to_string())
        .filter(|name| name.starts_with("home"))
        .collect();
    assert_eq!(
        names,
        [
            "home/",
            "home/app/",
            "home/app/profile",
            "home/other/",
            "home/other/file"
        ]
    );
}

/// A one-entry ustar archive with a raw name (tar-rs refuses to write `..`).
fn raw_tar(name: &[u8], kind: u8, link: &[u8], content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name);
    header[100..107].copy_from_slice(b"0000644");
    header[108..115].copy_from_slice(b"0000000");
    header[116..123].copy_from_slice(b"0000000");
    header[124..135].copy_from_slice(format!("{:011o}", content.len()).as_bytes());
    header[136..147].copy_from_slice(b"00000000000");
    header[156] = kind;
    header[157..157 + link.len()].copy_from_slice(link);
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&byte| u32::from(byte)).sum();
    header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(content);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar
}

#[test]
fn a_hostile_archive_is_refused_or_confined_to_the_destination() {
    let fixture = image();
    let escape = raw_tar(b"../../../../escaped-by-kiln-test", b'0', b"", b"x");
    let result = fixture.fs().copy_in(
        CopySource::Archive(escape.as_slice()),
        "/home",
        &CopyOptions::default(),
    );
    assert!(result.is_err());
    assert!(!fixture.dir.path().join("escaped-by-kiln-test").exists());

    // A symlink to / and a file through it: the file lands below the destination.
    let mut tar = raw_tar(b"evil", b'2', b"/", b"");
    tar.extend(raw_tar(b"evil/etc/kiln-pwned", b'0', b"", b"pwned"));
    tar.extend(raw_tar(b"/abs/kiln-pwned", b'0', b"", b"abs"));
    fixture
        .fs()
        .copy_in(
            CopySource::Archive(tar.as_slice()),
            "/home",
            &CopyOptions::default(),
        )
        .unwrap();
    let upper = fixture.upper();
    assert_eq!(
        fs::read_to_string(upper.join("home/etc/kiln-pwned")).unwrap(),
        "pwned"
    );
    assert_eq!(
        fs::read_to_string(upper.join("home/abs/kiln-pwned")).unwrap(),
        "abs"
    );
    assert!(!upper.join("etc/kiln-pwned").exists());
    assert!(!Path::new("/etc/kiln-pwned").exists());
    assert!(!Path::new("/abs").exists());
}

#[test]
fn an_archive_needs_a_directory_destination() {
    let fixture = image();
    let tar = raw_tar(b"file", b'0', b"", b"x");
    let result = fixture.fs().copy_in(
        CopySource::Archive(tar.as_slice()),
        "/etc/passwd",
        &CopyOptions::default(),
    );
    assert!(matches!(result, Err(ChangesError::NotADirectory(_))));
}

#[test]
fn symlink_loops_are_reported() {
    let fixture = image();
    symlink("/loop2", fixture.layers[0].join("loop1")).unwrap();
    symlink("/loop1", fixture.layers[0].join("loop2")).unwrap();
    let host = tempfile::tempdir().unwrap();
    let result = fixture.fs().copy_out::<Vec<u8>>(
        "/loop1/x",
        CopyTarget::Path(host.path()),
        &CopyOptions::default(),
    );
    assert!(matches!(result, Err(ChangesError::SymlinkLoop(_))));
}
