//! Linux capabilities of the container process: Docker's default set.
//!
//! Raw `prctl`/`capset` calls (the sets are a few bits; no crate needed). Runs in the
//! container init before the user switch.

use nix::errno::Errno;

use crate::error::ContainerError;

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

/// Removes every capability outside [`DEFAULT_CAPABILITIES`] from the bounding set and clears
/// the ambient set. Needs `CAP_SETPCAP`; call before switching user.
pub(crate) fn limit_bounding_set(last_cap: u32) -> Result<(), ContainerError> {
    let keep = default_mask();
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
    }
}
