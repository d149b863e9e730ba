//! The cgroup v2 device allow-list: Docker's default rules, compiled to a BPF device program
//! and attached to a cgroup2 directory, confine a process moved into it. Runs on cgroup v1
//! hosts too: device programs work on any cgroup2 directory, whatever hierarchy the
//! controllers are bound to. Root only.
#![allow(clippy::print_stderr, reason = "skip reasons")]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kiln_runtime::devices::{DEFAULT_RULES, attach_device_filter};

/// Where the cgroup2 hierarchy is: the host's unified mount, or one made on a temp dir
/// (unmounted on drop).
struct Hierarchy {
    root: PathBuf,
    mounted: Option<tempfile::TempDir>,
}

impl Hierarchy {
    fn find_or_mount() -> Result<Hierarchy, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let existing = mountinfo.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next() == Some("cgroup2"))
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        });
        if let Some(root) = existing {
            return Ok(Hierarchy {
                root,
                mounted: None,
            });
        }
        let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
        let status = std::process::Command::new("mount")
            .args(["-t", "cgroup2", "none"])
            .arg(dir.path())
            .status()
            .map_err(|error| error.to_string())?;
        if !status.success() {
            return Err(format!("mount -t cgroup2 failed: {status}"));
        }
        Ok(Hierarchy {
            root: dir.path().to_path_buf(),
            mounted: Some(dir),
        })
    }
}

impl Drop for Hierarchy {
    fn drop(&mut self) {
        if let Some(dir) = &self.mounted {
            let _ = std::process::Command::new("umount")
                .arg(dir.path())
                .status();
        }
    }
}

/// A child cgroup, removed on drop (once its processes are gone).
struct Child(PathBuf);

impl Drop for Child {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// 0 on success, else the errno.
fn errno_of(result: libc::c_int) -> i32 {
    if result < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    }
}

/// What a process in the confined cgroup could do.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    join: i32,
    open_dev_null: i32,
    open_block: i32,
    mknod_char: i32,
    mknod_block: i32,
    open_new_char: i32,
}

/// Forks a process that moves itself into `cgroup` and tries each operation of [`Outcome`].
/// The child makes only raw system calls (the test harness is multi-threaded).
fn probe(cgroup: &Path, scratch: &Path) -> Outcome {
    let procs = c_path(&cgroup.join("cgroup.procs"));
    let dev_null = c_path(Path::new("/dev/null"));
    let block = c_path(&scratch.join("loop0"));
    let new_char = c_path(&scratch.join("null2"));
    let new_block = c_path(&scratch.join("loop0-again"));
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for the two fds.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: the child only makes async-signal-safe system calls on data prepared before
    // the fork, then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: every pointer is a NUL-terminated string or a buffer that lives until
        // `_exit`; the fds are this process's.
        unsafe {
            let mut results = [0i32; 6];
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            results[0] = if fd < 0 {
                errno_of(fd)
            } else {
                errno_of(libc::write(fd, b"0".as_ptr().cast(), 1) as libc::c_int)
            };
            let open = |path: &CString, flags| {
                let fd = libc::open(path.as_ptr(), flags);
                if fd >= 0 {
                    libc::close(fd);
                }
                errno_of(fd)
            };
            results[1] = open(&dev_null, libc::O_RDWR);
            results[2] = open(&block, libc::O_RDONLY);
            results[3] = errno_of(libc::mknod(
                new_char.as_ptr(),
                libc::S_IFCHR | 0o600,
                libc::makedev(1, 3),
            ));
            results[4] = errno_of(libc::mknod(
                new_block.as_ptr(),
                libc::S_IFBLK | 0o600,
                libc::makedev(7, 0),
            ));
            results[5] = open(&new_char, libc::O_RDWR);
            libc::write(
                pipe[1],
                results.as_ptr().cast(),
                std::mem::size_of_val(&results),
            );
            libc::_exit(0);
        }
    }
    let mut results = [0i32; 6];
    // SAFETY: the write end is closed here so the read ends when the child exits; the
    // buffer has the size read; waitpid reaps the child forked above.
    unsafe {
        libc::close(pipe[1]);
        let read = libc::read(
            pipe[0],
            results.as_mut_ptr().cast(),
            std::mem::size_of_val(&results),
        );
        assert_eq!(read as usize, std::mem::size_of_val(&results));
        libc::close(pipe[0]);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
    Outcome {
        join: results[0],
        open_dev_null: results[1],
        open_block: results[2],
        mknod_char: results[3],
        mknod_block: results[4],
        open_new_char: results[5],
    }
}

#[test]
fn docker_default_rules_on_a_cgroup2_directory_deny_block_devices_but_allow_mknod() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (mount cgroup2, attach BPF programs, mknod)");
        return;
    }
    let hierarchy = match Hierarchy::find_or_mount() {
        Ok(hierarchy) => hierarchy,
        Err(reason) => {
            eprintln!("skipped: no cgroup2 hierarchy: {reason}");
            return;
        }
    };
    let scratch = tempfile::tempdir().unwrap();
    let block = c_path(&scratch.path().join("loop0"));
    // SAFETY: a NUL-terminated path.
    let made = unsafe { libc::mknod(block.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(7, 0)) };
    assert_eq!(made, 0, "mknod b 7:0: {}", std::io::Error::last_os_error());
    // Outside the confined cgroup the node is not refused by a device rule (it opens, or
    // the loop driver is absent: ENXIO), so an EPERM below is the program's.
    // SAFETY: a NUL-terminated path; the fd is closed at once.
    let outside = unsafe {
        let fd = libc::open(block.as_ptr(), libc::O_RDONLY);
        if fd >= 0 {
            libc::close(fd);
        }
        errno_of(fd)
    };
    assert_ne!(outside, libc::EPERM);

    // The same probe in a cgroup without the program is not refused: the EPERM below is
    // the program's, not the node's or the test process's.
    let open = Child(
        hierarchy
            .root
            .join(format!("kiln-test-devices-open-{}", std::process::id())),
    );
    std::fs::create_dir(&open.0).unwrap();
    let unconfined = probe(&open.0, scratch.path());
    assert_eq!((unconfined.join, unconfined.open_dev_null), (0, 0));
    assert_ne!(unconfined.open_block, libc::EPERM);
    for node in ["null2", "loop0-again"] {
        std::fs::remove_file(scratch.path().join(node)).unwrap();
    }
    drop(open);

    let name = format!("kiln-test-devices-{}", std::process::id());
    let cgroup = Child(hierarchy.root.join(name));
    std::fs::create_dir(&cgroup.0).unwrap();
    attach_device_filter(&cgroup.0, &DEFAULT_RULES).unwrap();

    let outcome = probe(&cgroup.0, scratch.path());
    assert_eq!(
        outcome,
        Outcome {
            join: 0,
            open_dev_null: 0,
            // b 7:0 (loop0) may be created but not opened.
            open_block: libc::EPERM,
            // `c *:* m` and `b *:* m`: nodes may be created.
            mknod_char: 0,
            mknod_block: 0,
            // c 1:3 is /dev/null's number: allowed wherever the node is.
            open_new_char: 0,
        }
    );
    drop(cgroup);
    drop(hierarchy);
}
