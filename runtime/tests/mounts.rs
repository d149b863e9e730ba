//! The container's bind and tmpfs mounts and the volume copy-up, against real namespaces, as
//! root, with a busybox root filesystem (skipped, printing why, otherwise).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::fixture;
use kiln_runtime::{BindMount, TmpfsMount};

#[test]
fn tmpfs_mounts_get_their_size_mode_and_dockers_default_flags() {
    let Some(mut f) = fixture() else { return };
    f.spec.tmpfs = vec![
        TmpfsMount::parse("/scratch", "size=1m,mode=1770").unwrap(),
        TmpfsMount::parse("/scratch/exec", "exec").unwrap(),
    ];
    f.sh("grep ' /scratch' /proc/mounts; stat -c %a /scratch");
    let out = f.run().success();
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("tmpfs /scratch tmpfs rw,nosuid,nodev,noexec,")
            && lines[0].contains("size=1024k")
            && lines[0].contains("mode=1770"),
        "{out}"
    );
    // Mounted after its parent, whatever the order in the spec.
    assert!(
        lines[1].starts_with("tmpfs /scratch/exec tmpfs rw,nosuid,nodev,relatime"),
        "{out}"
    );
    assert_eq!(lines[2], "1770");
}

#[test]
fn copy_up_fills_an_empty_volume_with_the_image_content_once() {
    let Some(mut f) = fixture() else { return };
    let seed = f.path("lower/seed");
    std::fs::create_dir_all(seed.join("sub")).unwrap();
    std::fs::write(seed.join("sub/file"), "image data").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", seed.join("link")).unwrap();
    std::os::unix::fs::chown(&seed, Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o750)).unwrap();
    let volume = f.path("host/volume");
    std::fs::create_dir(&volume).unwrap();
    f.spec.mounts = vec![BindMount {
        source: volume.clone(),
        destination: "/seed".into(),
        read_only: false,
        copy_up: true,
    }];
    f.sh("cat /seed/sub/file; echo; echo more > /seed/added");
    assert_eq!(f.run().success(), "image data\n");
    assert_eq!(
        std::fs::read_to_string(volume.join("sub/file")).unwrap(),
        "image data"
    );
    // Symlinks are copied as symlinks, never followed to the host.
    assert_eq!(
        std::fs::read_link(volume.join("link")).unwrap(),
        std::path::Path::new("/etc/passwd")
    );
    let metadata = std::fs::metadata(&volume).unwrap();
    assert_eq!((metadata.uid(), metadata.mode() & 0o7777), (1000, 0o750));
    // Not empty any more: a second run copies nothing over the container's changes.
    std::fs::remove_file(volume.join("sub/file")).unwrap();
    f.sh("ls /seed/sub | wc -l");
    assert_eq!(f.run().success().trim(), "0");
}

#[test]
fn mount_destinations_behind_image_symlinks_stay_inside_the_root() {
    let Some(mut f) = fixture() else { return };
    // Resolved on the host, these would land in `host/escaped*` of the fixture.
    let escaped = f.path("host/escaped");
    let target = format!("/../../../../../../..{}", escaped.display());
    // The same path exists inside the root, so the in-root resolution has a directory to
    // mount on (a dangling symlink as a destination is refused).
    let inside = f.path("lower").join(escaped.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&inside).unwrap();
    std::fs::create_dir_all(format!("{}-tmpfs", inside.display())).unwrap();
    std::os::unix::fs::symlink(&target, f.path("lower/evil")).unwrap();
    std::os::unix::fs::symlink(format!("{target}-tmpfs"), f.path("lower/evil-tmpfs")).unwrap();
    let volume = f.path("host/volume");
    std::fs::create_dir(&volume).unwrap();
    f.spec.mounts = vec![BindMount {
        source: volume.clone(),
        destination: "/evil".into(),
        read_only: false,
        copy_up: true,
    }];
    f.spec.tmpfs = vec![TmpfsMount::parse("/evil-tmpfs", "").unwrap()];
    f.sh("echo inside > /evil/file && touch /evil-tmpfs/file");
    f.run().success();
    assert!(!escaped.exists());
    assert!(!f.path("host/escaped-tmpfs").exists());
    assert_eq!(
        std::fs::read_to_string(volume.join("file")).unwrap(),
        "inside\n"
    );
}
