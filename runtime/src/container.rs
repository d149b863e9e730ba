//! The container's first process: PID 1 of the new PID namespace, forked by the init.
//!
//! It joins the container's cgroup, creates the remaining namespaces (the cgroup namespace
//! after joining, so the container sees its cgroup as `/`), assembles the root filesystem
//! (overlay, `/proc`, `/dev`, `/sys`, `/etc` files, bind and tmpfs mounts), switches root, masks
//! Docker's masked paths, sets the ulimits, drops capabilities, switches user, installs the
//! seccomp filter and executes the command, becoming the user's process (as Docker without
//! `--init`). Every failure before `execve` is sent to the init over a
//! close-on-exec pipe; end of file on that pipe without a message means `execve` succeeded.
//!
//! Safety rules (the host must never be touched): no mount happens before this process is
//! verified to be in a new mount namespace; `/` is made recursively private first, so no mount
//! propagates to the host; nothing is created in the container root before it is verified to
//! be the overlay just mounted; every path inside the root is resolved with `RESOLVE_IN_ROOT`.

use std::convert::Infallible;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
use nix::sys::stat::{Mode, SFlag, makedev, mknodat, umask};
use nix::sys::statfs::{FsType, OVERLAYFS_SUPER_MAGIC, TMPFS_MAGIC, fstatfs};
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::unistd::{
    Gid, Uid, chdir, fchdir, pivot_root, setgroups, setresgid, setresuid, symlinkat,
};

use crate::caps;
use crate::error::{ContainerError, Errno as SerialErrno};
use crate::init::{InitMessage, NamespaceId};
use crate::root::{Root, fd_path};
use crate::spec::{Network, Spec, Ulimit, UlimitName};
use crate::user::{self, ExecUser};

/// `PATH` when the container's env has none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's masked paths (moby `oci/defaults.go`): files get `/dev/null` bound over them,
/// directories an empty read-only tmpfs.
const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths: bind-mounted onto themselves read-only.
const READ_ONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Character devices created in the container's `/dev` (mode 0666), as Docker's defaults.
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Symlinks in the container's `/dev`.
const DEV_SYMLINKS: [(&str, &str); 6] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("core", "/proc/kcore"),
    ("ptmx", "pts/ptmx"),
];

/// Runs in the forked child. Never returns: either `execve` replaces this process, or the
/// error is written to `error_pipe` and the process exits with 125.
pub(crate) fn start(message: &InitMessage, error_pipe: OwnedFd) -> ! {
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| setup_and_exec(message)));
    let error = match outcome {
        Ok(Ok(never)) => match never {},
        Ok(Err(error)) => error,
        Err(payload) => ContainerError::Panic {
            message: payload
                .downcast_ref::<&str>()
                .map(|text| text.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default(),
        },
    };
    let mut pipe = std::fs::File::from(error_pipe);
    // Nothing else can be done if the init is gone; the exit status still tells it.
    let _ = serde_json::to_writer(&mut pipe, &error);
    let _ = pipe.flush();
    // SAFETY: _exit ends this forked process at once, without running the parent's atexit
    // handlers or flushing buffers that belong to it.
    unsafe { libc::_exit(crate::error::EXIT_ENGINE_ERROR) }
}

fn setup_and_exec(message: &InitMessage) -> Result<Infallible, ContainerError> {
    let spec = &message.spec;
    reset_signals()?;
    set_parent_death_signal()?;
    // Device nodes and created paths get exactly the modes asked for; the container's
    // process gets Docker's 022 just before exec.
    umask(Mode::empty());

    // Only this process (the container's PID 1) enters the limited cgroup, before it forks
    // or mounts anything; everything it starts stays inside.
    join_cgroup(&message.cgroup_procs)?;
    enter_namespaces(spec.network, message.host_mount_ns)?;
    let root = mount_root_filesystem(spec)?;
    mount_proc(&root)?;
    mount_dev(&root, spec.privileged)?;
    mount_sys(&root, spec.privileged)?;
    mount_etc_files(&root, spec)?;
    crate::mounts::mount_all(&root, spec)?;

    let passwd = root.read_file("/etc/passwd")?.unwrap_or_default();
    let group = root.read_file("/etc/group")?.unwrap_or_default();
    let exec_user = user::resolve(spec.user.as_deref(), &passwd, &group)?;
    root.create_dir_all(&spec.cwd)?;

    nix::unistd::sethostname(&spec.hostname)
        .map_err(|errno| ContainerError::setup("sethostname", errno))?;
    if spec.network == Network::None {
        bring_loopback_up()?;
    }
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(40);

    switch_root(&root)?;
    drop(root);
    if !spec.privileged {
        mask_paths()?;
    }
    if spec.read_only {
        remount_read_only(Path::new("/"))?;
    }
    chdir(Path::new(&spec.cwd))
        .map_err(|errno| ContainerError::setup(format!("chdir {}", spec.cwd), errno))?;
    if let Some(fd) = message.console_fd.filter(|fd| spec.tty && *fd > 2) {
        // SAFETY: the init passed this inherited socket on to this process alone and
        // closed its own copy; nothing else here refers to it.
        let console = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
        crate::pty::attach_container_terminal(console, spec.console_size, exec_user.uid)?;
    }

    lock_down(&LockDown {
        ulimits: &spec.ulimits,
        seccomp: message.seccomp.as_ref(),
        no_new_privileges: spec.no_new_privileges,
        capabilities: message.capabilities,
        last_cap,
        user: &exec_user,
    })?;

    let env = container_env(spec, &exec_user);
    if spec.init {
        return crate::forward::run_as_init(spec.tty, &spec.args, || exec(&spec.args, &env));
    }
    exec(&spec.args, &env)
}

/// The confinement of a container process, applied by [`lock_down`] just before `execve`.
#[derive(Debug)]
pub(crate) struct LockDown<'a> {
    /// `--ulimit` values.
    pub(crate) ulimits: &'a [Ulimit],
    /// The compiled seccomp filter, if any.
    pub(crate) seccomp: Option<&'a crate::seccomp::Compiled>,
    /// Set `PR_SET_NO_NEW_PRIVS`.
    pub(crate) no_new_privileges: bool,
    /// The capability mask (bounding set; effective and permitted for root).
    pub(crate) capabilities: u64,
    /// The highest capability number the kernel knows (`/proc/sys/kernel/cap_last_cap`).
    pub(crate) last_cap: u32,
    /// Who the process becomes.
    pub(crate) user: &'a ExecUser,
}

/// Confines the calling process as `settings` say, in runc's order: ulimits (while every
/// capability kiln gave is still held), the seccomp filter, the bounding set, user and
/// groups, effective and permitted capabilities, the parent-death signal again (changing
/// credentials clears it), umask 022, every fd above 2 close-on-exec, no-new-privileges.
/// Shared by the container's PID 1 and `exec`'d processes, so both get the same confinement.
pub(crate) fn lock_down(settings: &LockDown<'_>) -> Result<(), ContainerError> {
    set_ulimits(settings.ulimits)?;
    // Without no-new-privileges, installing a filter needs CAP_SYS_ADMIN, so it goes in
    // before the capabilities are dropped; the profile must then allow the few calls left
    // (capset, setgroups, setresuid, prctl, close_range, execve...), as Docker's does. With
    // it, the filter goes in last. This is runc's order.
    if let Some(filter) = settings.seccomp
        && !settings.no_new_privileges
    {
        crate::seccomp::install(filter)?;
    }
    caps::limit_bounding_set(settings.last_cap, settings.capabilities)?;
    switch_user(settings.user)?;
    let mask = if settings.user.uid == 0 {
        settings.capabilities
    } else {
        0
    };
    caps::set_process_capabilities(mask)?;
    // Changing credentials cleared the parent-death signal; set it again.
    set_parent_death_signal()?;
    umask(Mode::from_bits_truncate(0o022));
    close_inherited_fds()?;
    if settings.no_new_privileges {
        set_no_new_privileges()?;
        if let Some(filter) = settings.seccomp {
            crate::seccomp::install(filter)?;
        }
    }
    Ok(())
}

/// Moves this process into the container's cgroup: writing `0` to a join file moves the
/// writer (its only thread: see [`crate::cgroup::join_files`]).
fn join_cgroup(procs_files: &[PathBuf]) -> Result<(), ContainerError> {
    for file in procs_files {
        std::fs::write(file, "0").map_err(|error| {
            ContainerError::setup(format!("joining cgroup {}", file.display()), &error)
        })?;
    }
    Ok(())
}

fn set_no_new_privileges() -> Result<(), ContainerError> {
    // SAFETY: integer-only prctl, no memory is passed.
    let result = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if result != 0 {
        return Err(ContainerError::setup(
            "setting no-new-privileges",
            Errno::last(),
        ));
    }
    Ok(())
}

fn rlimit_resource(name: UlimitName) -> nix::sys::resource::Resource {
    use nix::sys::resource::Resource;
    match name {
        UlimitName::As => Resource::RLIMIT_AS,
        UlimitName::Core => Resource::RLIMIT_CORE,
        UlimitName::Cpu => Resource::RLIMIT_CPU,
        UlimitName::Data => Resource::RLIMIT_DATA,
        UlimitName::Fsize => Resource::RLIMIT_FSIZE,
        UlimitName::Locks => Resource::RLIMIT_LOCKS,
        UlimitName::Memlock => Resource::RLIMIT_MEMLOCK,
        UlimitName::Msgqueue => Resource::RLIMIT_MSGQUEUE,
        UlimitName::Nice => Resource::RLIMIT_NICE,
        UlimitName::Nofile => Resource::RLIMIT_NOFILE,
        UlimitName::Nproc => Resource::RLIMIT_NPROC,
        UlimitName::Rss => Resource::RLIMIT_RSS,
        UlimitName::Rtprio => Resource::RLIMIT_RTPRIO,
        UlimitName::Rttime => Resource::RLIMIT_RTTIME,
        UlimitName::Sigpending => Resource::RLIMIT_SIGPENDING,
        UlimitName::Stack => Resource::RLIMIT_STACK,
    }
}

/// `setrlimit` for each `--ulimit`, while still root with every capability kiln gave the
/// container (raising a hard limit needs `CAP_SYS_RESOURCE`, which kiln may lack itself).
fn set_ulimits(ulimits: &[Ulimit]) -> Result<(), ContainerError> {
    for ulimit in ulimits {
        let infinite = |value: u64| {
            if value == u64::MAX {
                libc::RLIM_INFINITY
            } else {
                value
            }
        };
        nix::sys::resource::setrlimit(
            rlimit_resource(ulimit.name),
            infinite(ulimit.soft),
            infinite(ulimit.hard),
        )
        .map_err(|errno| {
            ContainerError::setup(
                format!(
                    "setting ulimit {}={}:{}",
                    ulimit.name.as_str(),
                    ulimit.soft,
                    ulimit.hard
                ),
                errno,
            )
        })?;
    }
    Ok(())
}

/// Default dispositions and an empty mask: the init blocked signals before forking, and a
/// Rust program starts with SIGPIPE ignored; both would otherwise survive `execve`.
pub(crate) fn reset_signals() -> Result<(), ContainerError> {
    for signal in 1..=libc::SIGRTMAX() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installs the default disposition; no handler code runs. Numbers the C
        // library reserves for itself fail with EINVAL, which is fine to ignore.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|errno| ContainerError::setup("unblocking signals", errno))
}

/// SIGKILL this process when the init (its parent) dies, so a killed init never leaves a
/// container running; the PID namespace dies with its PID 1.
pub(crate) fn set_parent_death_signal() -> Result<(), ContainerError> {
    // SAFETY: integer-only prctl, no memory is passed.
    let result = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    if result != 0 {
        return Err(ContainerError::setup(
            "setting the parent death signal",
            Errno::last(),
        ));
    }
    Ok(())
}

fn enter_namespaces(network: Network, host_mount_ns: NamespaceId) -> Result<(), ContainerError> {
    let before = NamespaceId::of_mount_namespace()
        .map_err(|error| ContainerError::setup("stat /proc/self/ns/mnt", &error))?;
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWCGROUP;
    if network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(|errno| ContainerError::setup("unshare namespaces", errno))?;
    let after = NamespaceId::of_mount_namespace()
        .map_err(|error| ContainerError::setup("stat /proc/self/ns/mnt", &error))?;
    // The one check that keeps every following mount away from the host.
    if after == before || after == host_mount_ns {
        return Err(ContainerError::SameMountNamespace);
    }
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|errno| ContainerError::setup("making / recursively private", errno))
}

fn check_filesystem(
    fd: BorrowedFd<'_>,
    expected: FsType,
    name: &'static str,
    path: &str,
) -> Result<(), ContainerError> {
    let stat =
        fstatfs(fd).map_err(|errno| ContainerError::setup(format!("statfs {path}"), errno))?;
    if stat.filesystem_type() != expected {
        return Err(ContainerError::NotMounted {
            path: path.into(),
            expected: name.into(),
        });
    }
    Ok(())
}

/// The overlay option string. overlayfs takes lower dirs top-most first.
pub(crate) fn overlay_options(spec: &Spec) -> String {
    let lower: Vec<String> = if spec.lower_dirs.is_empty() {
        vec![empty_lower_dir(spec).display().to_string()]
    } else {
        spec.lower_dirs
            .iter()
            .rev()
            .map(|dir| dir.display().to_string())
            .collect()
    };
    format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off",
        lower.join(":"),
        spec.upper_dir.display(),
        spec.work_dir.display()
    )
}

/// The overlay mountpoint (an empty directory on the host).
pub(crate) fn rootfs_dir(spec: &Spec) -> PathBuf {
    spec.container_dir.join("rootfs")
}

/// The lower dir of an image with no layers (overlayfs needs at least one).
pub(crate) fn empty_lower_dir(spec: &Spec) -> PathBuf {
    spec.container_dir.join("empty-lower")
}

fn mount_root_filesystem(spec: &Spec) -> Result<Root, ContainerError> {
    let mountpoint = rootfs_dir(spec);
    let shown = mountpoint.display().to_string();
    mount(
        Some("overlay"),
        &mountpoint,
        Some("overlay"),
        MsFlags::empty(),
        Some(overlay_options(spec).as_str()),
    )
    .map_err(|errno| ContainerError::setup(format!("mount overlay on {shown}"), errno))?;
    let fd = nix::fcntl::open(
        &mountpoint,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| ContainerError::setup(format!("open {shown}"), errno))?;
    check_filesystem(fd.as_fd(), OVERLAYFS_SUPER_MAGIC, "overlay", &shown)?;
    Ok(Root::new(fd))
}

fn mount_at(
    target: BorrowedFd<'_>,
    shown: &str,
    source: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), ContainerError> {
    mount(Some(source), &fd_path(target), Some(fstype), flags, data)
        .map_err(|errno| ContainerError::setup(format!("mount {fstype} on {shown}"), errno))
}

const NO_SUID_DEV_EXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

fn mount_proc(root: &Root) -> Result<(), ContainerError> {
    let target = root.create_dir_all("/proc")?;
    mount_at(
        target.as_fd(),
        "/proc",
        "proc",
        "proc",
        NO_SUID_DEV_EXEC,
        None,
    )
}

fn mount_sys(root: &Root, privileged: bool) -> Result<(), ContainerError> {
    let target = root.create_dir_all("/sys")?;
    // A fresh sysfs shows the network devices of this process's network namespace: only lo
    // with `--network none`, the host's with `--network host` (mounting it is allowed as root).
    // Read-write only for privileged containers, as in Docker.
    let flags = if privileged {
        NO_SUID_DEV_EXEC
    } else {
        NO_SUID_DEV_EXEC | MsFlags::MS_RDONLY
    };
    mount_at(target.as_fd(), "/sys", "sysfs", "sysfs", flags, None)
}

/// Host `/dev` entries Docker leaves out when it gives a privileged container the host's
/// devices (moby `HostDevices`).
const HOST_DEV_SKIPPED: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// For `--privileged`: every character and block device under the host's `/dev` is created
/// at the same path in the container's `/dev` (same type, numbers, mode and owner). Runs
/// before `pivot_root`, when `/dev` is still the host's. Existing names are kept.
fn copy_host_devices(
    root: &Root,
    host_dir: &Path,
    container_dir: &str,
) -> Result<(), ContainerError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let entries = std::fs::read_dir(host_dir).map_err(|error| {
        ContainerError::setup(format!("listing {}", host_dir.display()), &error)
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if container_dir == "/dev" && HOST_DEV_SKIPPED.contains(&name.as_ref()) {
            continue;
        }
        let Ok(metadata) = entry.path().symlink_metadata() else {
            continue;
        };
        let kind = metadata.file_type();
        let path = format!("{container_dir}/{name}");
        if kind.is_dir() {
            copy_host_devices(root, &entry.path(), &path)?;
            continue;
        }
        let node_type = if kind.is_char_device() {
            SFlag::S_IFCHR
        } else if kind.is_block_device() {
            SFlag::S_IFBLK
        } else {
            continue;
        };
        let parent = root.create_dir_all(container_dir)?;
        match mknodat(
            parent.as_fd(),
            name.as_ref(),
            node_type,
            Mode::from_bits_truncate(metadata.mode()),
            metadata.rdev(),
        ) {
            Ok(()) => {}
            Err(Errno::EEXIST) => continue,
            Err(errno) => return Err(ContainerError::setup(format!("mknod {path}"), errno)),
        }
        nix::unistd::fchownat(
            parent.as_fd(),
            name.as_ref(),
            Some(Uid::from_raw(metadata.uid())),
            Some(Gid::from_raw(metadata.gid())),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|errno| ContainerError::setup(format!("chown {path}"), errno))?;
    }
    Ok(())
}

fn mount_dev(root: &Root, privileged: bool) -> Result<(), ContainerError> {
    let target = root.create_dir_all("/dev")?;
    mount_at(
        target.as_fd(),
        "/dev",
        "tmpfs",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    drop(target);
    // Resolving again crosses into the tmpfs just mounted; check that it did.
    let dev = root
        .open("/dev", OFlag::O_PATH | OFlag::O_DIRECTORY)
        .map_err(|errno| ContainerError::setup("open /dev", errno))?;
    check_filesystem(dev.as_fd(), TMPFS_MAGIC, "tmpfs", "/dev")?;

    for (name, major, minor) in DEVICES {
        mknodat(
            dev.as_fd(),
            name,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(|errno| ContainerError::setup(format!("mknod /dev/{name}"), errno))?;
    }
    for (name, target) in DEV_SYMLINKS {
        symlinkat(target, dev.as_fd(), name)
            .map_err(|errno| ContainerError::setup(format!("symlink /dev/{name}"), errno))?;
    }
    let submounts: [(&str, &str, MsFlags, &str, u32); 3] = [
        (
            "pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
            0o755,
        ),
        (
            "shm",
            "tmpfs",
            NO_SUID_DEV_EXEC,
            "mode=1777,size=65536k",
            0o1777,
        ),
        ("mqueue", "mqueue", NO_SUID_DEV_EXEC, "", 0o755),
    ];
    for (name, fstype, flags, data, mode) in submounts {
        let path = format!("/dev/{name}");
        nix::sys::stat::mkdirat(dev.as_fd(), name, Mode::from_bits_truncate(mode))
            .map_err(|errno| ContainerError::setup(format!("mkdir {path}"), errno))?;
        let target = root
            .open(&path, OFlag::O_PATH | OFlag::O_DIRECTORY)
            .map_err(|errno| ContainerError::setup(format!("open {path}"), errno))?;
        let data = (!data.is_empty()).then_some(data);
        mount_at(target.as_fd(), &path, fstype, fstype, flags, data)?;
    }
    if privileged {
        copy_host_devices(root, Path::new("/dev"), "/dev")?;
    }
    Ok(())
}

/// `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`: bind mounts of the files `run` wrote
/// in the container directory. Missing targets are created (in the upper layer).
fn mount_etc_files(root: &Root, spec: &Spec) -> Result<(), ContainerError> {
    for name in crate::run::ETC_FILES {
        let path = format!("/etc/{name}");
        let target = root.create_file(&path)?;
        let source = spec.container_dir.join(name);
        mount(
            Some(&source),
            &fd_path(target.as_fd()),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|errno| ContainerError::setup(format!("bind mount {path}"), errno))?;
    }
    Ok(())
}

/// Remounts the mount at `path` read-only, keeping its nosuid/nodev/noexec/atime flags
/// (a bind remount replaces all per-mount flags).
pub(crate) fn remount_read_only(path: &Path) -> Result<(), ContainerError> {
    let shown = path.display();
    let current =
        statvfs(path).map_err(|errno| ContainerError::setup(format!("statvfs {shown}"), errno))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    let kept = [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ];
    for (statvfs_flag, mount_flag) in kept {
        if current.flags().contains(statvfs_flag) {
            flags |= mount_flag;
        }
    }
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
        .map_err(|errno| ContainerError::setup(format!("remount {shown} read-only"), errno))
}

fn bring_loopback_up() -> Result<(), ContainerError> {
    // SAFETY: plain socket(2) call; the returned fd is checked and then owned.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(ContainerError::setup("socket for lo", Errno::last()));
    }
    // SAFETY: `raw` is a fresh fd owned by nobody else.
    let socket: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of `request`, which lives
    // on this stack frame for the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(ContainerError::setup(
            "reading the flags of lo",
            Errno::last(),
        ));
    }
    // SAFETY: the kernel filled the flags member of the union just above.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `request`, valid for the duration of the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(ContainerError::setup("bringing lo up", Errno::last()));
    }
    Ok(())
}

/// `pivot_root(".", ".")` stacks the old root on top of the new one; detaching it leaves only
/// the container root. Only ever called in the container's own mount namespace.
fn switch_root(root: &Root) -> Result<(), ContainerError> {
    fchdir(root.fd())
        .map_err(|errno| ContainerError::setup("chdir to the container root", errno))?;
    pivot_root(".", ".").map_err(|errno| ContainerError::setup("pivot_root", errno))?;
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(|errno| ContainerError::setup("detaching the old root", errno))?;
    chdir("/").map_err(|errno| ContainerError::setup("chdir /", errno))
}

/// Docker's masked and read-only paths. Runs after `switch_root`, so the paths are the
/// container's own `/proc` and `/sys`. Paths the kernel does not have are skipped.
fn mask_paths() -> Result<(), ContainerError> {
    for path in MASKED_PATHS {
        let metadata = match std::fs::symlink_metadata(path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(ContainerError::setup(format!("stat {path}"), &error)),
        };
        let result = if metadata.is_dir() {
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else {
            mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        result.map_err(|errno| ContainerError::setup(format!("masking {path}"), errno))?;
    }
    for path in READ_ONLY_PATHS {
        match mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => remount_read_only(Path::new(path))?,
            Err(Errno::ENOENT) => {}
            Err(errno) => {
                return Err(ContainerError::setup(format!("bind mount {path}"), errno));
            }
        }
    }
    Ok(())
}

fn switch_user(user: &ExecUser) -> Result<(), ContainerError> {
    let groups: Vec<Gid> = user.groups.iter().map(|gid| Gid::from_raw(*gid)).collect();
    setgroups(&groups).map_err(|errno| ContainerError::setup("setgroups", errno))?;
    let gid = Gid::from_raw(user.gid);
    setresgid(gid, gid, gid)
        .map_err(|errno| ContainerError::setup(format!("setgid {}", user.gid), errno))?;
    let uid = Uid::from_raw(user.uid);
    setresuid(uid, uid, uid)
        .map_err(|errno| ContainerError::setup(format!("setuid {}", user.uid), errno))
}

/// Marks every fd above 2 close-on-exec, so no host fd survives into the container's
/// command, while the error pipe stays usable until `execve` itself.
fn close_inherited_fds() -> Result<(), ContainerError> {
    // SAFETY: close_range takes integers only; with CLOSE_RANGE_CLOEXEC it closes nothing now.
    let result = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if result != 0 {
        return Err(ContainerError::setup("close_range", Errno::last()));
    }
    Ok(())
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(key, _)| key)
}

/// The container's environment: Docker adds `PATH` and `HOSTNAME` in front and `HOME` (from
/// passwd, `/` for unknown users) at the end when the spec does not set them.
pub(crate) fn container_env(spec: &Spec, user: &ExecUser) -> Vec<String> {
    let has = |key: &str| spec.env.iter().any(|entry| env_key(entry) == key);
    let mut env = Vec::with_capacity(spec.env.len() + 3);
    if !has("PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has("HOSTNAME") {
        env.push(format!("HOSTNAME={}", spec.hostname));
    }
    env.extend(spec.env.iter().cloned());
    if !has("HOME") {
        env.push(format!("HOME={}", user.home));
    }
    env
}

/// Go's `exec.LookPath`, as runc uses it: a name with `/` is taken as is, otherwise the first
/// regular file with an execute bit in `PATH` wins.
pub(crate) fn find_command(command: &str, env: &[String]) -> Result<PathBuf, ContainerError> {
    if command.contains('/') {
        return match std::fs::metadata(command) {
            Err(error) => Err(ContainerError::CommandMissing {
                command: command.into(),
                path: command.into(),
                errno: SerialErrno::from(&error),
            }),
            Ok(metadata) if metadata.is_dir() || metadata.permissions().mode() & 0o111 == 0 => {
                Err(ContainerError::CommandNotExecutable {
                    command: command.into(),
                    errno: SerialErrno(libc::EACCES),
                })
            }
            Ok(_) => Ok(PathBuf::from(command)),
        };
    }
    let path = env
        .iter()
        .find_map(|entry| entry.strip_prefix("PATH="))
        .unwrap_or("");
    for dir in path.split(':') {
        let candidate = Path::new(if dir.is_empty() { "." } else { dir }).join(command);
        if let Ok(metadata) = std::fs::metadata(&candidate)
            && !metadata.is_dir()
            && metadata.permissions().mode() & 0o111 != 0
        {
            return Ok(candidate);
        }
    }
    Err(ContainerError::CommandNotFound {
        command: command.into(),
    })
}

fn c_string(text: &str) -> Result<CString, ContainerError> {
    CString::new(text).map_err(|_| {
        ContainerError::setup(format!("argument {text:?} contains NUL"), Errno::EINVAL)
    })
}

pub(crate) fn exec(args: &[String], env: &[String]) -> Result<Infallible, ContainerError> {
    let command = args
        .first()
        .ok_or_else(|| ContainerError::setup("no command", Errno::EINVAL))?;
    let program = find_command(command, env)?;
    let program_c = CString::new(program.as_os_str().as_bytes())
        .map_err(|_| ContainerError::setup("command path contains NUL", Errno::EINVAL))?;
    let argv = args
        .iter()
        .map(|arg| c_string(arg))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|entry| c_string(entry))
        .collect::<Result<Vec<_>, _>>()?;
    let errno = match nix::unistd::execve(&program_c, &argv, &envp) {
        Err(errno) => errno,
        Ok(never) => match never {},
    };
    // ENOENT after a successful lookup: a missing script interpreter or loader.
    if matches!(errno, Errno::ENOENT | Errno::ENOTDIR) {
        return Err(ContainerError::CommandMissing {
            command: command.clone(),
            path: program.display().to_string(),
            errno: errno.into(),
        });
    }
    Err(ContainerError::CommandNotExecutable {
        command: command.clone(),
        errno: errno.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            id: "c".into(),
            container_dir: "/c".into(),
            lower_dirs: vec!["/l/base".into(), "/l/top".into()],
            upper_dir: "/c/upper".into(),
            work_dir: "/c/work".into(),
            args: vec!["true".into()],
            env: vec!["FOO=bar".into()],
            cwd: "/".into(),
            user: None,
            hostname: "box".into(),
            network: Network::None,
            read_only: false,
            mounts: vec![],
            tmpfs: vec![],
            extra_hosts: vec![],
            dns: Default::default(),
            resources: Default::default(),
            ulimits: vec![],
            cap_add: vec![],
            cap_drop: vec![],
            privileged: false,
            seccomp: Default::default(),
            no_new_privileges: false,
            tty: false,
            console_size: None,
            init: false,
        }
    }

    #[test]
    fn overlay_lower_dirs_are_given_top_most_first() {
        assert_eq!(
            overlay_options(&spec()),
            "lowerdir=/l/top:/l/base,upperdir=/c/upper,workdir=/c/work,\
             redirect_dir=off,metacopy=off,index=off"
        );
    }

    #[test]
    fn an_image_without_layers_gets_the_empty_lower_dir() {
        let mut spec = spec();
        spec.lower_dirs.clear();
        assert!(overlay_options(&spec).starts_with("lowerdir=/c/empty-lower,"));
    }

    #[test]
    fn env_gets_docker_defaults_only_when_missing() {
        let user = ExecUser {
            uid: 0,
            gid: 0,
            groups: vec![],
            home: "/root".into(),
        };
        assert_eq!(
            container_env(&spec(), &user),
            vec![
                format!("PATH={DEFAULT_PATH}"),
                "HOSTNAME=box".into(),
                "FOO=bar".into(),
                "HOME=/root".into()
            ]
        );
        let mut spec = spec();
        spec.env = vec!["PATH=/x".into(), "HOME=/h".into(), "HOSTNAME=h".into()];
        assert_eq!(container_env(&spec, &user), spec.env);
    }
}
