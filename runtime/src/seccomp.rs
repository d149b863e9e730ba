//! The container's seccomp filter: Docker's default profile, or a profile in Docker's JSON
//! format, compiled to BPF with `seccompiler` (pure Rust, no libseccomp).
//!
//! Compiled in the caller of `run` (errors come back typed before any process starts), sent
//! to the init as plain numbers, installed by the container process just before `execve`
//! ([`install`]).
//!
//! Docker's profiles give each rule its own action; a `seccompiler` filter has one action for
//! matches and one for the rest. So a profile becomes a stack of filters, which the kernel
//! runs all of, keeping the most restrictive verdict (`seccomp(2)`: KILL > TRAP > ERRNO >
//! TRACE > LOG > ALLOW): one filter per distinct non-allow action (its rules → that action,
//! anything else → allow), and a base filter (every rule → allow, anything else → the default
//! action). A call matching a rule thus gets that rule's action, any other call the default.
//!
//! Not handled: only x86_64 filters are built (the syscall table is x86_64's); 32-bit (i386)
//! and x32 system calls are refused (the filter kills a process making i386 calls, where
//! Docker allows them); `SCMP_ACT_NOTIFY`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

use crate::error::{ContainerError, SeccompError};
use crate::spec::{Seccomp, Spec};

/// A profile: the default action and rules, with Docker's conditions still unresolved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Profile {
    default_action: Action,
    flags: u32,
    rules: Vec<Rule>,
}

/// What the kernel does with a matching system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Allow,
    Errno(u32),
    KillThread,
    KillProcess,
    Trap,
    Trace(u32),
    Log,
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    names: Vec<String>,
    action: Action,
    args: Vec<Arg>,
    includes: When,
    excludes: When,
}

/// Docker's `includes`/`excludes`: architectures (Go's names: `amd64`), capabilities held by
/// the container, a minimum kernel version.
#[derive(Debug, Clone, Default, PartialEq)]
struct When {
    arches: Vec<String>,
    caps: Vec<String>,
    min_kernel: Option<(u32, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Arg {
    index: u8,
    value: u64,
    value_two: u64,
    op: Op,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    NotEqual,
    Less,
    LessOrEqual,
    Equal,
    GreaterOrEqual,
    Greater,
    MaskedEqual,
}

/// Compiled filters, ready for `seccomp(SECCOMP_SET_MODE_FILTER)`. Each instruction is
/// packed as `code << 48 | jt << 40 | jf << 32 | k` so the init can receive it as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Compiled {
    filters: Vec<Vec<u64>>,
    flags: u32,
}

/// Docker's `runtime.GOARCH` name of the host, as profiles' `arches` conditions use it.
const NATIVE_ARCH: &str = if cfg!(target_arch = "x86_64") {
    "amd64"
} else if cfg!(target_arch = "aarch64") {
    "arm64"
} else {
    "unsupported"
};

/// The filter for `spec`, or `None` for no filter: unconfined, or privileged with the default
/// profile (Docker skips seccomp for privileged containers unless a profile is named).
/// `capabilities` is the container's resolved capability mask: Docker's conditional rules
/// look at it.
pub(crate) fn for_spec(spec: &Spec, capabilities: u64) -> Result<Option<Compiled>, SeccompError> {
    let profile = match &spec.seccomp {
        Seccomp::Unconfined => return Ok(None),
        Seccomp::Default if spec.privileged => return Ok(None),
        Seccomp::Default => default_profile(),
        Seccomp::Profile(text) => parse(text)?,
    };
    compile(&profile, capabilities, kernel_version()).map(Some)
}

fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    parse_kernel_version(&release).unwrap_or((0, 0))
}

fn parse_kernel_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.trim().split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()
        .and_then(|minor| minor.parse().ok())
        .unwrap_or(0);
    Some((major, minor))
}

// ---------------------------------------------------------------------------------------
// Docker's JSON profile format.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileJson {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    /// Extra architectures to allow; only the native one is filtered here (see the module
    /// docs), so the list is accepted and not used.
    #[serde(default, rename = "architectures")]
    _architectures: Option<Vec<String>>,
    #[serde(default, rename = "archMap")]
    _arch_map: Option<serde_json::Value>,
    #[serde(default)]
    flags: Option<Vec<String>>,
    #[serde(default)]
    syscalls: Option<Vec<SyscallJson>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SyscallJson {
    #[serde(default)]
    names: Option<Vec<String>>,
    /// The pre-1.13 single-name form.
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<ArgJson>>,
    #[serde(default)]
    includes: Option<WhenJson>,
    #[serde(default)]
    excludes: Option<WhenJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArgJson {
    index: u8,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WhenJson {
    #[serde(default)]
    arches: Option<Vec<String>>,
    #[serde(default)]
    caps: Option<Vec<String>>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// Parses a profile in Docker's format (`defaultAction`, `defaultErrnoRet`, `syscalls` with
/// `names`, `action`, `errnoRet`, `args`, `includes`, `excludes`; `flags`).
pub(crate) fn parse(text: &str) -> Result<Profile, SeccompError> {
    let json: ProfileJson = serde_json::from_str(text).map_err(|error| SeccompError::Json {
        detail: error.to_string(),
    })?;
    let default_action = action(&json.default_action, json.default_errno_ret)?;
    let mut flags = 0;
    for flag in json.flags.unwrap_or_default() {
        flags |= match flag.as_str() {
            // Single-threaded container process: synchronising threads is moot.
            "SECCOMP_FILTER_FLAG_TSYNC" => 0,
            "SECCOMP_FILTER_FLAG_LOG" => libc::SECCOMP_FILTER_FLAG_LOG as u32,
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW as u32,
            _ => return Err(SeccompError::UnknownFlag { flag }),
        };
    }
    let mut rules = Vec::new();
    for syscall in json.syscalls.unwrap_or_default() {
        let mut names = syscall.names.unwrap_or_default();
        names.extend(syscall.name);
        let args = syscall
            .args
            .unwrap_or_default()
            .into_iter()
            .map(|arg| {
                Ok(Arg {
                    index: arg.index,
                    value: arg.value,
                    value_two: arg.value_two,
                    op: operator(&arg.op)?,
                })
            })
            .collect::<Result<_, SeccompError>>()?;
        rules.push(Rule {
            names,
            // A rule's ERRNO without errnoRet is EPERM (moby), not the default's errno.
            action: action(&syscall.action, syscall.errno_ret)?,
            args,
            includes: when(syscall.includes.unwrap_or_default()),
            excludes: when(syscall.excludes.unwrap_or_default()),
        });
    }
    Ok(Profile {
        default_action,
        flags,
        rules,
    })
}

fn action(name: &str, errno: Option<u32>) -> Result<Action, SeccompError> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => Action::Allow,
        "SCMP_ACT_ERRNO" => Action::Errno(errno.unwrap_or(libc::EPERM as u32)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
        "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
        "SCMP_ACT_TRAP" => Action::Trap,
        "SCMP_ACT_TRACE" => Action::Trace(errno.unwrap_or(libc::EPERM as u32)),
        "SCMP_ACT_LOG" => Action::Log,
        "SCMP_ACT_NOTIFY" => {
            return Err(SeccompError::UnsupportedAction {
                action: name.into(),
            });
        }
        _ => {
            return Err(SeccompError::UnknownAction {
                action: name.into(),
            });
        }
    })
}

fn operator(name: &str) -> Result<Op, SeccompError> {
    Ok(match name {
        "SCMP_CMP_NE" => Op::NotEqual,
        "SCMP_CMP_LT" => Op::Less,
        "SCMP_CMP_LE" => Op::LessOrEqual,
        "SCMP_CMP_EQ" => Op::Equal,
        "SCMP_CMP_GE" => Op::GreaterOrEqual,
        "SCMP_CMP_GT" => Op::Greater,
        "SCMP_CMP_MASKED_EQ" => Op::MaskedEqual,
        _ => return Err(SeccompError::UnknownOperator { op: name.into() }),
    })
}

fn when(json: WhenJson) -> When {
    When {
        arches: json.arches.unwrap_or_default(),
        caps: json.caps.unwrap_or_default(),
        min_kernel: json.min_kernel.as_deref().and_then(parse_kernel_version),
    }
}

// ---------------------------------------------------------------------------------------
// Docker's default profile (moby `profiles/seccomp/default.json`, 2024): the same entries,
// written as tables. Default action: EPERM.

/// Allowed unconditionally. Names of other architectures are listed as Docker lists them;
/// names this architecture does not have are skipped when compiling, as libseccomp does.
const DEFAULT_ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Allowed only when the container holds the capability.
const DEFAULT_BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// Allowed on these architectures only (Go's names).
const DEFAULT_BY_ARCH: &[(&[&str], &[&str])] = &[
    (&["ppc64le"], &["sync_file_range2", "swapcontext"]),
    (
        &["arm", "arm64"],
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
    ),
    (&["amd64", "x32"], &["arch_prctl"]),
    (&["amd64", "x32", "x86"], &["modify_ldt"]),
    (
        &["s390", "s390x"],
        &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ],
    ),
    (&["riscv64"], &["riscv_flush_icache"]),
];

/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
/// CLONE_NEWPID | CLONE_NEWNET`: without `CAP_SYS_ADMIN`, `clone` may not create namespaces.
const NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// Personalities Docker allows: `PER_LINUX`, `PER_LINUX32`, `UNAME26`, `UNAME26|PER_LINUX32`,
/// and the query value `0xffffffff`.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// `AF_VSOCK`: the one socket family the default profile refuses.
const AF_VSOCK: u64 = 40;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| name.to_string()).collect()
}

fn allow(list: &[&str]) -> Rule {
    Rule {
        names: names(list),
        action: Action::Allow,
        args: Vec::new(),
        includes: When::default(),
        excludes: When::default(),
    }
}

fn arg(index: u8, op: Op, value: u64, value_two: u64) -> Arg {
    Arg {
        index,
        value,
        value_two,
        op,
    }
}

/// Docker's default profile.
pub(crate) fn default_profile() -> Profile {
    let mut rules = vec![allow(DEFAULT_ALLOWED)];
    rules.push(Rule {
        includes: When {
            min_kernel: Some((4, 8)),
            ..When::default()
        },
        ..allow(&["process_vm_readv", "process_vm_writev", "ptrace"])
    });
    rules.push(Rule {
        args: vec![arg(0, Op::NotEqual, AF_VSOCK, 0)],
        ..allow(&["socket"])
    });
    for personality in PERSONALITIES {
        rules.push(Rule {
            args: vec![arg(0, Op::Equal, personality, 0)],
            ..allow(&["personality"])
        });
    }
    for (arches, list) in DEFAULT_BY_ARCH {
        rules.push(Rule {
            includes: When {
                arches: names(arches),
                ..When::default()
            },
            ..allow(list)
        });
    }
    for (capability, list) in DEFAULT_BY_CAPABILITY {
        rules.push(Rule {
            includes: When {
                caps: vec![capability.to_string()],
                ..When::default()
            },
            ..allow(list)
        });
    }
    let without_sys_admin = When {
        caps: vec!["CAP_SYS_ADMIN".into()],
        ..When::default()
    };
    // clone is allowed when it creates no namespace (flags are argument 0, except on s390).
    rules.push(Rule {
        args: vec![arg(0, Op::MaskedEqual, NAMESPACE_FLAGS, 0)],
        excludes: When {
            arches: names(&["s390", "s390x"]),
            ..without_sys_admin.clone()
        },
        ..allow(&["clone"])
    });
    rules.push(Rule {
        args: vec![arg(1, Op::MaskedEqual, NAMESPACE_FLAGS, 0)],
        includes: When {
            arches: names(&["s390", "s390x"]),
            ..When::default()
        },
        excludes: without_sys_admin.clone(),
        ..allow(&["clone"])
    });
    // clone3 passes its flags in memory, which BPF cannot read: ENOSYS makes the C library
    // fall back to clone, where the rule above applies.
    rules.push(Rule {
        action: Action::Errno(libc::ENOSYS as u32),
        excludes: without_sys_admin,
        ..allow(&["clone3"])
    });
    Profile {
        default_action: Action::Errno(libc::EPERM as u32),
        flags: 0,
        rules,
    }
}

// ---------------------------------------------------------------------------------------
// Compilation.

/// Matching arguments of one system call: `None` is "any arguments", else any of the rules.
type Matches = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn syscall_number(name: &str) -> Option<i64> {
    let table = crate::syscalls::X86_64;
    table
        .binary_search_by(|(known, _)| known.cmp(&name))
        .ok()
        .map(|index| table[index].1)
}

fn applies(rule: &Rule, capabilities: &[&str], kernel: (u32, u32)) -> bool {
    let has = |cap: &String| capabilities.contains(&cap.as_str());
    let excluded = rule.excludes.arches.iter().any(|arch| arch == NATIVE_ARCH)
        || rule.excludes.caps.iter().any(has)
        || rule.excludes.min_kernel.is_some_and(|min| kernel >= min);
    let included = (rule.includes.arches.is_empty()
        || rule.includes.arches.iter().any(|arch| arch == NATIVE_ARCH))
        && rule.includes.caps.iter().all(has)
        && rule.includes.min_kernel.is_none_or(|min| kernel >= min);
    !excluded && included
}

fn condition(arg: &Arg) -> Result<SeccompCondition, SeccompError> {
    let (op, value) = match arg.op {
        Op::NotEqual => (SeccompCmpOp::Ne, arg.value),
        Op::Less => (SeccompCmpOp::Lt, arg.value),
        Op::LessOrEqual => (SeccompCmpOp::Le, arg.value),
        Op::Equal => (SeccompCmpOp::Eq, arg.value),
        Op::GreaterOrEqual => (SeccompCmpOp::Ge, arg.value),
        Op::Greater => (SeccompCmpOp::Gt, arg.value),
        // libseccomp's (arg & value) == valueTwo.
        Op::MaskedEqual => (SeccompCmpOp::MaskedEq(arg.value), arg.value_two),
    };
    SeccompCondition::new(arg.index, SeccompCmpArgLen::Qword, op, value)
        .map_err(|source| SeccompError::Compile { source })
}

/// runc's rule for `args`: all conditions must hold, unless two name the same argument, in
/// which case each condition is a rule of its own (any may hold).
fn seccomp_rules(args: &[Arg]) -> Result<Vec<SeccompRule>, SeccompError> {
    let conditions = args.iter().map(condition).collect::<Result<Vec<_>, _>>()?;
    let repeated = args
        .iter()
        .enumerate()
        .any(|(i, a)| args[..i].iter().any(|b| b.index == a.index));
    let groups = if repeated {
        conditions.into_iter().map(|c| vec![c]).collect()
    } else {
        vec![conditions]
    };
    groups
        .into_iter()
        .map(|group| SeccompRule::new(group).map_err(|source| SeccompError::Compile { source }))
        .collect()
}

fn add_match(matches: &mut Matches, number: i64, rules: Option<Vec<SeccompRule>>) {
    let entry = matches.entry(number).or_insert_with(|| Some(Vec::new()));
    match (entry.as_mut(), rules) {
        (_, None) => *entry = None,
        (None, Some(_)) => {}
        (Some(existing), Some(rules)) => existing.extend(rules),
    }
}

fn seccompiler_action(action: Action) -> SeccompAction {
    match action {
        Action::Allow => SeccompAction::Allow,
        Action::Errno(errno) => SeccompAction::Errno(errno),
        Action::KillThread => SeccompAction::KillThread,
        Action::KillProcess => SeccompAction::KillProcess,
        Action::Trap => SeccompAction::Trap,
        Action::Trace(value) => SeccompAction::Trace(value),
        Action::Log => SeccompAction::Log,
    }
}

fn filter(matches: Matches, on_match: Action, otherwise: Action) -> Result<Vec<u64>, SeccompError> {
    let rules = matches
        .into_iter()
        .map(|(number, rules)| (number, rules.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        seccompiler_action(otherwise),
        seccompiler_action(on_match),
        TargetArch::x86_64,
    )
    .map_err(|source| SeccompError::Compile { source })?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|source| SeccompError::Compile { source })?;
    Ok(program
        .iter()
        .map(|op| {
            u64::from(op.code) << 48
                | u64::from(op.jt) << 40
                | u64::from(op.jf) << 32
                | u64::from(op.k)
        })
        .collect())
}

/// Resolves the profile's conditions against `capabilities` and `kernel`, and builds the
/// filter stack described in the module docs. Unknown system call names are skipped.
pub(crate) fn compile(
    profile: &Profile,
    capabilities: u64,
    kernel: (u32, u32),
) -> Result<Compiled, SeccompError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(SeccompError::UnsupportedArchitecture {
            arch: std::env::consts::ARCH,
        });
    }
    let capability_names: Vec<&str> = crate::caps::names(capabilities).collect();
    // Per action: the system calls (and argument rules) that get it.
    let mut by_action: BTreeMap<Action, Matches> = BTreeMap::new();
    for rule in &profile.rules {
        if !applies(rule, &capability_names, kernel) {
            continue;
        }
        for name in &rule.names {
            let Some(number) = syscall_number(name) else {
                continue;
            };
            let rules = if rule.args.is_empty() {
                None
            } else {
                Some(seccomp_rules(&rule.args)?)
            };
            add_match(by_action.entry(rule.action).or_default(), number, rules);
        }
    }
    let mut filters = Vec::new();
    if profile.default_action != Action::Allow {
        let mut all = Matches::new();
        for matches in by_action.values() {
            for (number, rules) in matches {
                add_match(&mut all, *number, rules.clone());
            }
        }
        filters.push(filter(all, Action::Allow, profile.default_action)?);
    }
    for (action, matches) in by_action {
        if action != Action::Allow && !matches.is_empty() {
            filters.push(filter(matches, action, Action::Allow)?);
        }
    }
    Ok(Compiled {
        filters,
        flags: profile.flags,
    })
}

/// Installs the filters on the calling thread. Without `PR_SET_NO_NEW_PRIVS` this needs
/// `CAP_SYS_ADMIN` in the effective set (the kernel's rule), so the container process calls
/// it before dropping capabilities unless no-new-privileges is on (runc's order).
pub(crate) fn install(compiled: &Compiled) -> Result<(), ContainerError> {
    for packed in &compiled.filters {
        let mut program: Vec<libc::sock_filter> = packed
            .iter()
            .map(|op| libc::sock_filter {
                code: (op >> 48) as u16,
                jt: (op >> 40) as u8,
                jf: (op >> 32) as u8,
                k: *op as u32,
            })
            .collect();
        let fprog = libc::sock_fprog {
            len: program.len() as libc::c_ushort,
            filter: program.as_mut_ptr(),
        };
        // SAFETY: seccomp(2) copies the program the sock_fprog points to; `program` and
        // `fprog` live on this stack frame for the whole call, `len` is the program's length.
        let result = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                compiled.flags as libc::c_ulong,
                &fprog as *const libc::sock_fprog,
            )
        };
        if result != 0 {
            return Err(ContainerError::setup(
                "installing the seccomp filter",
                nix::errno::Errno::last(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_syscall_table_is_sorted_and_knows_the_usual_calls() {
        let table = crate::syscalls::X86_64;
        assert!(table.windows(2).all(|pair| pair[0].0 < pair[1].0));
        assert_eq!(syscall_number("read"), Some(0));
        assert_eq!(syscall_number("mkdir"), Some(83));
        assert_eq!(syscall_number("clone3"), Some(435));
        assert_eq!(syscall_number("fchmodat2"), Some(452));
        assert_eq!(syscall_number("arm_fadvise64_64"), None);
    }

    #[test]
    fn every_default_name_is_known_on_some_architecture() {
        // Guards against typos: names missing on x86_64 are those of other architectures.
        let foreign = [
            "chown32",
            "clock_adjtime64",
            "clock_getres_time64",
            "clock_gettime64",
            "clock_nanosleep_time64",
            "fadvise64_64",
            "fchown32",
            "fcntl64",
            "fstat64",
            "fstatat64",
            "fstatfs64",
            "ftruncate64",
            "futex_time64",
            "getegid32",
            "geteuid32",
            "getgid32",
            "getgroups32",
            "getresgid32",
            "getresuid32",
            "getuid32",
            "io_pgetevents_time64",
            "ipc",
            "lchown32",
            "_llseek",
            "lstat64",
            "mmap2",
            "mq_timedreceive_time64",
            "mq_timedsend_time64",
            "_newselect",
            "ppoll_time64",
            "pselect6_time64",
            "recv",
            "recvmmsg_time64",
            "rt_sigtimedwait_time64",
            "sched_rr_get_interval_time64",
            "semtimedop_time64",
            "send",
            "sendfile64",
            "setfsgid32",
            "setfsuid32",
            "setgid32",
            "setgroups32",
            "setregid32",
            "setresgid32",
            "setresuid32",
            "setreuid32",
            "setuid32",
            "sigprocmask",
            "sigreturn",
            "socketcall",
            "stat64",
            "statfs64",
            "timer_gettime64",
            "timer_settime64",
            "timerfd_gettime64",
            "timerfd_settime64",
            "truncate64",
            "ugetrlimit",
            "utimensat_time64",
            "waitpid",
            "stime",
            "umount",
            "clock_settime64",
        ];
        let missing: Vec<&str> = DEFAULT_ALLOWED
            .iter()
            .chain(
                DEFAULT_BY_CAPABILITY
                    .iter()
                    .flat_map(|(_, list)| list.iter()),
            )
            .copied()
            .filter(|name| syscall_number(name).is_none() && !foreign.contains(name))
            .collect();
        assert_eq!(missing, Vec::<&str>::new());
    }

    #[test]
    fn dockers_json_format_parses() {
        let profile = parse(
            r#"{
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [
                    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"},
                    {"name": "kill", "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
                     "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}],
                     "includes": {"minKernel": "4.8"}, "comment": "no SIGKILL"}
                ]
            }"#,
        )
        .unwrap();
        assert_eq!(profile.default_action, Action::Allow);
        assert_eq!(profile.rules[0].action, Action::Errno(1));
        assert_eq!(profile.rules[1].names, vec!["kill"]);
        assert_eq!(profile.rules[1].action, Action::Errno(13));
        assert_eq!(profile.rules[1].includes.min_kernel, Some((4, 8)));
        assert_eq!(profile.rules[1].args[0].op, Op::Equal);
        // Allow by default: no base filter, one filter per errno value.
        let compiled = compile(&profile, 0, (6, 1)).unwrap();
        assert_eq!(compiled.filters.len(), 2);
    }

    #[test]
    fn bad_profiles_are_refused_with_the_reason() {
        let error = parse(r#"{"defaultAction": "SCMP_ACT_NOPE"}"#).unwrap_err();
        assert_eq!(
            error.to_string(),
            "seccomp profile: unknown action \"SCMP_ACT_NOPE\""
        );
        assert!(matches!(parse("{").unwrap_err(), SeccompError::Json { .. }));
        assert!(matches!(
            parse(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#).unwrap_err(),
            SeccompError::UnsupportedAction { .. }
        ));
    }

    #[test]
    fn conditional_entries_follow_the_containers_capabilities() {
        let default_caps = crate::caps::default_mask();
        let names: Vec<&str> = crate::caps::names(default_caps).collect();
        let profile = default_profile();
        let gated = |name: &str, caps: &[&str]| {
            profile
                .rules
                .iter()
                .filter(|rule| rule.names.iter().any(|n| n == name))
                .filter(|rule| applies(rule, caps, (6, 1)))
                .map(|rule| (rule.action, rule.args.len()))
                .collect::<Vec<_>>()
        };
        // Default caps: unshare and mount not listed; clone only without namespace flags;
        // clone3 → ENOSYS.
        assert!(gated("unshare", &names).is_empty());
        assert!(gated("mount", &names).is_empty());
        assert_eq!(gated("clone", &names), vec![(Action::Allow, 1)]);
        assert_eq!(gated("clone3", &names), vec![(Action::Errno(38), 0)]);
        let mut admin = names.clone();
        admin.push("CAP_SYS_ADMIN");
        assert_eq!(gated("unshare", &admin), vec![(Action::Allow, 0)]);
        assert_eq!(gated("clone", &admin), vec![(Action::Allow, 0)]);
        assert_eq!(gated("clone3", &admin), vec![(Action::Allow, 0)]);
        // The default profile fits one BPF program: base filter plus the ENOSYS one.
        let compiled = compile(&profile, default_caps, (6, 1)).unwrap();
        assert_eq!(compiled.filters.len(), 2);
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v657\n"), Some((6, 18)));
        assert_eq!(parse_kernel_version("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel_version("x"), None);
    }
}
