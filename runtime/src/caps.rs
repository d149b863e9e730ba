//! Linux capabilities of the container process: Docker's default set, `--cap-add`,
//! `--cap-drop` and `--privileged`.
//!
//! [`resolve`] turns the spec's names into one mask in the caller of `run`; the container
//! init applies it with raw `prctl`/`capset` calls (the sets are a few bits; no crate needed)
//! before the user switch.

use nix::errno::Errno;

use crate::error::{ContainerError, RuntimeError};
use crate::spec::Spec;

/// Every capability name, indexed by its bit number (`linux/capability.h`, up to Linux 5.9's
/// `CAP_CHECKPOINT_RESTORE`).
pub(crate) const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A `--cap-add`/`--cap-drop` value after Docker's normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    All,
    Bit(u32),
}

/// Docker's `NormalizeLegacyCapabilities`: upper case, `CAP_` prefix added, `ALL` kept.
fn normalize(name: &str) -> Result<Named, RuntimeError> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(Named::All);
    }
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    NAMES
        .iter()
        .position(|known| *known == full)
        .map(|bit| Named::Bit(bit as u32))
        .ok_or(RuntimeError::UnknownCapability { name: full })
}

/// The container's capability set as a mask (bounding set; also effective and permitted
/// for root), Docker's `TweakCapabilities`: privileged gets everything; `--cap-add ALL`
/// everything but the drops; `--cap-drop ALL` only the adds; otherwise the default set minus
/// the drops plus the adds.
///
/// `held` is what kiln itself has (its bounding set): "everything" means everything held,
/// silently; a capability named in `cap_add` that is not held is an error rather than a
/// silent no-op.
pub(crate) fn resolve(spec: &Spec, held: u64) -> Result<u64, RuntimeError> {
    let all = NAMES
        .iter()
        .enumerate()
        .fold(0u64, |mask, (bit, _)| mask | (1 << bit));
    if spec.privileged {
        return Ok(all & held);
    }
    let adds = spec
        .cap_add
        .iter()
        .map(|name| normalize(name))
        .collect::<Result<Vec<_>, _>>()?;
    let drops = spec
        .cap_drop
        .iter()
        .map(|name| normalize(name))
        .collect::<Result<Vec<_>, _>>()?;
    let mask_of = |names: &[Named]| {
        names.iter().fold(0u64, |mask, named| match named {
            Named::All => all,
            Named::Bit(bit) => mask | (1 << bit),
        })
    };
    let explicit_adds = adds.iter().fold(0u64, |mask, named| match named {
        Named::All => mask,
        Named::Bit(bit) => mask | (1 << bit),
    });
    if let Some(bit) = (0..NAMES.len()).find(|bit| explicit_adds & !held & (1 << bit) != 0) {
        return Err(RuntimeError::CapabilityNotHeld {
            name: NAMES[bit].to_string(),
        });
    }
    let mask = if adds.contains(&Named::All) {
        all & !mask_of(&drops)
    } else if drops.contains(&Named::All) {
        mask_of(&adds)
    } else {
        (default_mask() & !mask_of(&drops)) | mask_of(&adds)
    };
    Ok(mask & held)
}

/// The names of the capabilities in `mask`, as Docker's profiles and `capsh` spell them.
pub(crate) fn names(mask: u64) -> impl Iterator<Item = &'static str> {
    NAMES
        .iter()
        .enumerate()
        .filter(move |(bit, _)| mask & (1 << bit) != 0)
        .map(|(_, name)| *name)
}

/// The bounding set of the calling process, from `/proc/self/status`: what a re-executed
/// root init can hold.
pub(crate) fn held() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapBnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| std::io::Error::other("no CapBnd line in /proc/self/status"))
}

/// Docker's default capability set (moby `oci/caps/defaults.go`) as (name, bit number),
/// numbers from `linux/capability.h`.
pub const DEFAULT_CAPABILITIES: [(&str, u32); 14] = [
    ("CAP_CHOWN", 0),
    ("CAP_DAC_OVERRIDE", 1),
    ("CAP_FOWNER", 3),
    ("CAP_FSETID", 4),
    ("CAP_KILL", 5),
    ("CAP_SETGID", 6),
    ("CAP_SETUID", 7),
    ("CAP_SETPCAP", 8),
    ("CAP_NET_BIND_SERVICE", 10),
    ("CAP_NET_RAW", 13),
    ("CAP_SYS_CHROOT", 18),
    ("CAP_MKNOD", 27),
    ("CAP_AUDIT_WRITE", 29),
    ("CAP_SETFCAP", 31),
];

/// The default set as a mask, as `/proc/self/status` prints it (`00000000a80425fb`).
pub fn default_mask() -> u64 {
    DEFAULT_CAPABILITIES
        .iter()
        .fold(0, |mask, (_, bit)| mask | (1u64 << bit))
}

/// Removes every capability outside `keep` from the bounding set and clears the ambient set.
/// Needs `CAP_SETPCAP`; call before switching user.
pub(crate) fn limit_bounding_set(last_cap: u32, keep: u64) -> Result<(), ContainerError> {
    for cap in 0..=last_cap {
        if keep & (1u64 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl(PR_CAPBSET_DROP, cap) takes two integers and touches no memory.
        let result = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        // EINVAL: the kernel does not know this capability; nothing to drop.
        if result != 0 && Errno::last() != Errno::EINVAL {
            return Err(ContainerError::setup(
                format!("dropping capability {cap} from the bounding set"),
                Errno::last(),
            ));
        }
    }
    // SAFETY: integer-only prctl, no memory is passed.
    let result = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if result != 0 {
        return Err(ContainerError::setup(
            "clearing the ambient capabilities",
            Errno::last(),
        ));
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets effective and permitted to `mask` and inheritable to empty (Docker since 20.10.14,
/// CVE-2022-24769). Only lowers sets; after a switch to a non-root uid pass 0.
pub(crate) fn set_process_capabilities(mask: u64) -> Result<(), ContainerError> {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let low = mask as u32;
    let high = (mask >> 32) as u32;
    let data = [
        CapData {
            effective: low,
            permitted: low,
            inheritable: 0,
        },
        CapData {
            effective: high,
            permitted: high,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads a v3 header and two data structs; both live on this stack frame
    // for the duration of the call and have the kernel's layout (repr(C), three u32s).
    let result = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if result != 0 {
        return Err(ContainerError::setup(
            "setting the process capabilities",
            Errno::last(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mask_matches_docker() {
        assert_eq!(default_mask(), 0x00000000a80425fb);
        for (name, bit) in DEFAULT_CAPABILITIES {
            assert_eq!(NAMES[bit as usize], name);
        }
    }

    fn resolved(add: &[&str], drop: &[&str], held: u64) -> Result<u64, RuntimeError> {
        let mut spec: Spec = serde_json::from_value(serde_json::json!({
            "id": "x", "container_dir": "/c", "lower_dirs": [], "upper_dir": "/u",
            "work_dir": "/w", "args": ["true"], "env": [], "cwd": "/", "user": null,
            "hostname": "h", "network": "None", "read_only": false, "mounts": [],
            "resources": {}, "ulimits": [], "cap_add": [], "cap_drop": [],
            "privileged": false, "seccomp": "Default", "no_new_privileges": false
        }))
        .unwrap();
        spec.cap_add = add.iter().map(|name| name.to_string()).collect();
        spec.cap_drop = drop.iter().map(|name| name.to_string()).collect();
        resolve(&spec, held)
    }

    #[test]
    fn cap_add_and_drop_follow_dockers_rules() {
        let everything = u64::MAX;
        assert_eq!(resolved(&[], &[], everything).unwrap(), default_mask());
        // Names with or without CAP_, any case.
        assert_eq!(
            resolved(&["net_admin"], &["CAP_CHOWN"], everything).unwrap(),
            (default_mask() | 1 << 12) & !1
        );
        // Add wins over drop.
        assert_eq!(
            resolved(&["CHOWN"], &["CHOWN"], everything).unwrap(),
            default_mask()
        );
        assert_eq!(resolved(&["KILL"], &["ALL"], everything).unwrap(), 1 << 5);
        assert_eq!(
            resolved(&["ALL"], &["SYS_ADMIN"], everything).unwrap(),
            (1u64 << 41) - 1 - (1 << 21)
        );
        assert_eq!(
            resolved(&["NOPE"], &[], everything)
                .unwrap_err()
                .to_string(),
            "unknown capability: \"CAP_NOPE\""
        );
        // kiln without CAP_SYS_RESOURCE: ALL quietly lacks it, naming it is an error.
        let held = everything & !(1 << 24);
        assert_eq!(resolved(&["ALL"], &[], held).unwrap() & (1 << 24), 0);
        assert!(matches!(
            resolved(&["SYS_RESOURCE"], &[], held),
            Err(RuntimeError::CapabilityNotHeld { .. })
        ));
    }
}
