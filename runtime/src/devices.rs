//! The device allow-list: Docker's default rules, rendered as cgroup v1 `devices.allow`
//! lines, and compiled to a `BPF_PROG_TYPE_CGROUP_DEVICE` program for cgroup v2, which has no
//! devices controller files (runc's `libcontainer/cgroups/devices/devicefilter.go` is the
//! model).
//!
//! The program is hand-assembled eBPF (no C toolchain, no libbpf): for each access to a
//! device node by a process of the cgroup the kernel runs it on `struct bpf_cgroup_dev_ctx`
//! (`u32 access_type` with the node type in the low 16 bits and the requested access in the
//! high 16, then `u32 major`, `u32 minor`); it returns 1 to allow and 0 to deny (`EPERM`).
//! The rules are an allow-list over a deny-all default, as Docker's `devices.deny a`
//! followed by `devices.allow` lines.
//!
//! Not here: choosing between v1 and v2, and the cgroup directories (`cgroup`).

use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Which kind of device node a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// `c`: character devices.
    Char,
    /// `b`: block devices.
    Block,
    /// `a`: both.
    All,
}

/// What a rule allows: any combination of read, write and mknod (`rwm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceAccess {
    /// `r`: open for reading.
    pub read: bool,
    /// `w`: open for writing.
    pub write: bool,
    /// `m`: create the node (`mknod`).
    pub mknod: bool,
}

impl DeviceAccess {
    /// `rwm`.
    pub const ALL: DeviceAccess = DeviceAccess {
        read: true,
        write: true,
        mknod: true,
    };
    /// `m` only: the node may be created but not opened.
    pub const MKNOD: DeviceAccess = DeviceAccess {
        read: false,
        write: false,
        mknod: true,
    };

    /// The kernel's `BPF_DEVCG_ACC_*` bits.
    fn bits(self) -> u32 {
        let bit = |on: bool, bit: u32| if on { bit } else { 0 };
        bit(self.mknod, ACC_MKNOD) | bit(self.read, ACC_READ) | bit(self.write, ACC_WRITE)
    }
}

/// One allow rule, as a line of v1 `devices.allow`: kind, major and minor (`None` is `*`) and
/// access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    /// Character, block or both.
    pub kind: DeviceKind,
    /// The major number, or any.
    pub major: Option<u32>,
    /// The minor number, or any.
    pub minor: Option<u32>,
    /// What is allowed.
    pub access: DeviceAccess,
}

const fn rule(kind: DeviceKind, major: Option<u32>, minor: Option<u32>) -> DeviceRule {
    DeviceRule {
        kind,
        major,
        minor,
        access: DeviceAccess::ALL,
    }
}

const fn char_rwm(major: u32, minor: u32) -> DeviceRule {
    rule(DeviceKind::Char, Some(major), Some(minor))
}

/// Docker's default allow-list (runc's `AllowedDevices` plus `/dev/net/tun`): any node may
/// be created, only these may be opened. Everything else is denied. `--privileged`
/// containers get no list (every device is allowed).
pub const DEFAULT_RULES: [DeviceRule; 12] = [
    DeviceRule {
        access: DeviceAccess::MKNOD,
        ..rule(DeviceKind::Char, None, None)
    },
    DeviceRule {
        access: DeviceAccess::MKNOD,
        ..rule(DeviceKind::Block, None, None)
    },
    char_rwm(1, 3),                          // null
    char_rwm(1, 5),                          // zero
    char_rwm(1, 7),                          // full
    char_rwm(1, 8),                          // random
    char_rwm(1, 9),                          // urandom
    char_rwm(5, 0),                          // tty
    char_rwm(5, 1),                          // console
    char_rwm(5, 2),                          // ptmx
    rule(DeviceKind::Char, Some(136), None), // pts
    char_rwm(10, 200),                       // net/tun
];

/// The v1 `devices.allow` line: `c 1:3 rwm`, `b *:* m`.
impl fmt::Display for DeviceRule {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
            DeviceKind::All => 'a',
        };
        let number = |value: Option<u32>| value.map_or("*".to_string(), |n| n.to_string());
        let mut access = String::new();
        for (on, letter) in [
            (self.access.read, 'r'),
            (self.access.write, 'w'),
            (self.access.mknod, 'm'),
        ] {
            if on {
                access.push(letter);
            }
        }
        write!(
            formatter,
            "{kind} {}:{} {access}",
            number(self.major),
            number(self.minor)
        )
    }
}

/// Why the device program could not be loaded or attached.
#[derive(Debug, Error)]
pub enum DeviceFilterError {
    /// The kernel refused the program (`BPF_PROG_LOAD`); `log` is the verifier's output.
    #[error("the kernel refused the device program: {source}{log}")]
    Load {
        /// The verifier log, prefixed with a newline, or empty.
        log: String,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// The cgroup directory could not be opened.
    #[error("cannot open cgroup {path}")]
    OpenCgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `BPF_PROG_QUERY` failed (not a cgroup2 directory, or no permission).
    #[error("cannot list the device programs of cgroup {path}")]
    Query {
        /// The cgroup directory.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// `BPF_PROG_ATTACH` failed (not a cgroup2 directory, or no permission).
    #[error("cannot attach the device program to cgroup {path}")]
    Attach {
        /// The cgroup directory.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

// The kernel's ABI (include/uapi/linux/bpf.h); libc has only the syscall number.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
const DEV_BLOCK: u32 = 1;
const DEV_CHAR: u32 = 2;
const ACC_MKNOD: u32 = 1;
const ACC_READ: u32 = 2;
const ACC_WRITE: u32 = 4;

// Opcodes (class | op | source) of the instructions used.
/// `dst = *(u32 *)(src + off)`.
const LDX_MEM_W: u8 = 0x61;
/// `dst &= imm` (32-bit).
const ALU_AND_K: u8 = 0x54;
/// `dst >>= imm` (32-bit).
const ALU_RSH_K: u8 = 0x74;
/// `dst = imm` (32-bit).
const ALU_MOV_K: u8 = 0xb4;
/// `dst = src` (32-bit).
const ALU_MOV_X: u8 = 0xbc;
/// `if dst != imm goto pc + off`.
const JMP_JNE_K: u8 = 0x55;
/// `if dst != src goto pc + off`.
const JMP_JNE_X: u8 = 0x5d;
/// `return r0`.
const JMP_EXIT: u8 = 0x95;

/// One eBPF instruction, laid out as `struct bpf_insn` (registers packed dst low, src high).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    code: u8,
    registers: u8,
    offset: i16,
    immediate: i32,
}

const fn instruction(code: u8, dst: u8, src: u8, offset: i16, immediate: i32) -> Instruction {
    Instruction {
        code,
        registers: dst | (src << 4),
        offset,
        immediate,
    }
}

// Registers: r1 is the context on entry; the prologue loads the request into r2..r5.
const R0: u8 = 0;
const R1: u8 = 1;
const TYPE: u8 = 2;
const ACCESS: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;

/// Compiles `rules` (allow rules over a deny-all default) to a device program: an access is
/// allowed when one rule matches its node type, major and minor and allows every access bit
/// requested. Pure; loading is [`attach_device_filter`]'s.
pub fn compile(rules: &[DeviceRule]) -> Vec<Instruction> {
    let mut program = vec![
        instruction(LDX_MEM_W, TYPE, R1, 0, 0),
        instruction(ALU_AND_K, TYPE, 0, 0, 0xffff),
        instruction(LDX_MEM_W, ACCESS, R1, 0, 0),
        instruction(ALU_RSH_K, ACCESS, 0, 0, 16),
        instruction(LDX_MEM_W, MAJOR, R1, 4, 0),
        instruction(LDX_MEM_W, MINOR, R1, 8, 0),
    ];
    for rule in rules {
        // Each test jumps past this rule's block when it does not match; the offsets are
        // filled once the block's length is known.
        let mut block = Vec::new();
        match rule.kind {
            DeviceKind::Char => block.push(instruction(JMP_JNE_K, TYPE, 0, 0, DEV_CHAR as i32)),
            DeviceKind::Block => block.push(instruction(JMP_JNE_K, TYPE, 0, 0, DEV_BLOCK as i32)),
            DeviceKind::All => {}
        }
        let allowed = rule.access.bits();
        if allowed != DeviceAccess::ALL.bits() {
            // Matches when (requested & allowed) == requested.
            block.push(instruction(ALU_MOV_X, R1, ACCESS, 0, 0));
            block.push(instruction(ALU_AND_K, R1, 0, 0, allowed as i32));
            block.push(instruction(JMP_JNE_X, R1, ACCESS, 0, 0));
        }
        if let Some(major) = rule.major {
            block.push(instruction(JMP_JNE_K, MAJOR, 0, 0, major as i32));
        }
        if let Some(minor) = rule.minor {
            block.push(instruction(JMP_JNE_K, MINOR, 0, 0, minor as i32));
        }
        block.push(instruction(ALU_MOV_K, R0, 0, 0, 1));
        block.push(instruction(JMP_EXIT, 0, 0, 0, 0));
        let length = block.len();
        for (index, instruction) in block.iter_mut().enumerate() {
            if instruction.code == JMP_JNE_K || instruction.code == JMP_JNE_X {
                // Relative to the next instruction; the target is the block's end.
                instruction.offset = (length - index - 1) as i16;
            }
        }
        program.extend(block);
    }
    program.push(instruction(ALU_MOV_K, R0, 0, 0, 0));
    program.push(instruction(JMP_EXIT, 0, 0, 0, 0));
    program
}

/// The request a device program sees, for [`evaluate`].
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DeviceRequest {
    /// Character or block (never [`DeviceKind::All`]).
    pub kind: DeviceKind,
    /// The node's major number.
    pub major: u32,
    /// The node's minor number.
    pub minor: u32,
    /// What is requested.
    pub access: DeviceAccess,
}

/// Runs `program` (as made by [`compile`]) on `request` as the kernel would, and returns
/// whether it allows it; `None` for an instruction [`compile`] never emits or a run off the
/// end. For testing the compiler without root.
#[cfg(test)]
fn evaluate(program: &[Instruction], request: DeviceRequest) -> Option<bool> {
    let kind = match request.kind {
        DeviceKind::Block => DEV_BLOCK,
        DeviceKind::Char | DeviceKind::All => DEV_CHAR,
    };
    let context = [
        kind | (request.access.bits() << 16),
        request.major,
        request.minor,
    ];
    let mut registers = [0u64; 11];
    let mut pc = 0usize;
    loop {
        let instruction = program.get(pc)?;
        let dst = usize::from(instruction.registers & 0xf);
        let src = usize::from(instruction.registers >> 4);
        let immediate = instruction.immediate as u32;
        let mut next = pc + 1;
        match instruction.code {
            // Only the context pointer (r1 at entry) is ever loaded from.
            LDX_MEM_W => {
                registers[dst] =
                    u64::from(*context.get(usize::try_from(instruction.offset / 4).ok()?)?);
            }
            ALU_AND_K => registers[dst] = (registers[dst] as u32 & immediate).into(),
            ALU_RSH_K => registers[dst] = ((registers[dst] as u32) >> immediate).into(),
            ALU_MOV_K => registers[dst] = immediate.into(),
            ALU_MOV_X => registers[dst] = (registers[src] as u32).into(),
            JMP_JNE_K | JMP_JNE_X => {
                let other = if instruction.code == JMP_JNE_K {
                    u64::from(immediate)
                } else {
                    registers[src]
                };
                if registers[dst] != other {
                    next = next.checked_add_signed(instruction.offset.into())?;
                }
            }
            JMP_EXIT => return Some(registers[0] != 0),
            _ => return None,
        }
        pc = next;
    }
}

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`.
#[repr(C)]
struct ProgramLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_PROG_ATTACH`.
#[repr(C)]
struct ProgramAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Loads `program` with `bpf(BPF_PROG_LOAD)`; with `log`, asks the verifier for its log.
fn load_with(program: &[Instruction], log: Option<&mut [u8]>) -> std::io::Result<OwnedFd> {
    const LICENSE: &[u8] = b"GPL\0";
    let (log_level, log_size, log_buf) = match log {
        Some(buffer) => (1, buffer.len() as u32, buffer.as_mut_ptr() as u64),
        None => (0, 0, 0),
    };
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"kiln_devices");
    let attr = ProgramLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: BPF_CGROUP_DEVICE,
    };
    // SAFETY: `attr` is a fully initialised `bpf_attr` prefix of the size passed; the
    // instruction, license and log pointers it holds stay valid (borrowed) for the call, and
    // the log buffer's length is the size given to the kernel.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgramLoad,
            std::mem::size_of::<ProgramLoad>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads `program`; on failure loads it again with a verifier log for the error.
fn load(program: &[Instruction]) -> Result<OwnedFd, DeviceFilterError> {
    load_with(program, None).map_err(|source| {
        let mut buffer = vec![0u8; 64 * 1024];
        let _ = load_with(program, Some(&mut buffer));
        let end = buffer.iter().position(|byte| *byte == 0).unwrap_or(0);
        let text = String::from_utf8_lossy(&buffer[..end]).trim().to_string();
        let log = if text.is_empty() {
            text
        } else {
            format!("\n{text}")
        };
        DeviceFilterError::Load { log, source }
    })
}

/// Compiles `rules`, loads the program and attaches it to the cgroup2 directory `cgroup`
/// (`BPF_CGROUP_DEVICE`, with `BPF_F_ALLOW_MULTI` as runc does, so programs of parent cgroups
/// still apply). Every device access by a process of `cgroup` or its descendants is checked
/// from then on; the attachment lives as long as the cgroup (nothing to clean up: removing
/// the directory detaches it). Not idempotent: a second call attaches a second program
/// (harmless, both must allow). Works on any cgroup2 directory, also when the controllers are
/// bound to cgroup v1. Needs `CAP_SYS_ADMIN`.
pub fn attach_device_filter(cgroup: &Path, rules: &[DeviceRule]) -> Result<(), DeviceFilterError> {
    let program = compile(rules);
    let program = load(&program)?;
    let directory =
        std::fs::File::open(cgroup).map_err(|source| DeviceFilterError::OpenCgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
    let attr = ProgramAttach {
        target_fd: directory.as_raw_fd() as u32,
        attach_bpf_fd: program.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // SAFETY: `attr` is a fully initialised `bpf_attr` prefix of the size passed, holding two
    // fds that are open for the duration of the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgramAttach,
            std::mem::size_of::<ProgramAttach>(),
        )
    };
    if result < 0 {
        return Err(DeviceFilterError::Attach {
            path: cgroup.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// `union bpf_attr` for `BPF_PROG_QUERY`.
#[repr(C)]
struct ProgramQuery {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
}

const BPF_PROG_QUERY: libc::c_long = 16;

/// How many device programs are attached to the cgroup2 directory `cgroup` itself (not its
/// parents'), with `BPF_PROG_QUERY`. For checking that a container's cgroup got its
/// allow-list. Needs `CAP_SYS_ADMIN`.
pub fn attached_device_programs(cgroup: &Path) -> Result<u32, DeviceFilterError> {
    let directory =
        std::fs::File::open(cgroup).map_err(|source| DeviceFilterError::OpenCgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
    let mut attr = ProgramQuery {
        target_fd: directory.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: 0,
        prog_cnt: 0,
    };
    // SAFETY: `attr` is a fully initialised `bpf_attr` prefix of the size passed, holding an
    // fd open for the call; with no id buffer the kernel only writes the counts into it.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut attr as *mut ProgramQuery,
            std::mem::size_of::<ProgramQuery>(),
        )
    };
    if result < 0 {
        return Err(DeviceFilterError::Query {
            path: cgroup.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(attr.prog_cnt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: DeviceKind, major: u32, minor: u32, access: &str) -> DeviceRequest {
        DeviceRequest {
            kind,
            major,
            minor,
            access: DeviceAccess {
                read: access.contains('r'),
                write: access.contains('w'),
                mknod: access.contains('m'),
            },
        }
    }

    #[test]
    fn default_rules_render_as_docker_v1_lines() {
        let lines: Vec<String> = DEFAULT_RULES.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "c *:* m",
                "b *:* m",
                "c 1:3 rwm",
                "c 1:5 rwm",
                "c 1:7 rwm",
                "c 1:8 rwm",
                "c 1:9 rwm",
                "c 5:0 rwm",
                "c 5:1 rwm",
                "c 5:2 rwm",
                "c 136:* rwm",
                "c 10:200 rwm",
            ]
        );
    }

    #[test]
    fn default_program_allows_what_docker_allows_and_denies_the_rest() {
        use DeviceKind::{Block, Char};
        let program = compile(&DEFAULT_RULES);
        let cases = [
            (request(Char, 1, 3, "rw"), true),    // /dev/null
            (request(Char, 1, 9, "r"), true),     // /dev/urandom
            (request(Char, 136, 7, "rw"), true),  // a pts
            (request(Char, 10, 200, "rw"), true), // tun
            (request(Char, 5, 2, "rw"), true),    // ptmx
            (request(Char, 1, 1, "m"), true),     // mknod of /dev/mem is fine
            (request(Block, 8, 0, "m"), true),    // mknod of sda is fine
            (request(Block, 8, 0, "r"), false),   // opening it is not
            (request(Block, 7, 0, "rw"), false),  // loop0
            (request(Char, 1, 1, "r"), false),    // /dev/mem
            (request(Char, 1, 3, "rwm"), true),
            (request(Char, 10, 229, "rw"), false), // fuse
            (request(Char, 4, 0, "w"), false),     // tty0
        ];
        for (request, allowed) in cases {
            assert_eq!(
                evaluate(&program, request),
                Some(allowed),
                "{request:?} should be {}",
                if allowed { "allowed" } else { "denied" }
            );
        }
    }

    #[test]
    fn an_empty_list_denies_everything_and_an_all_rule_allows_everything() {
        let any = request(DeviceKind::Block, 8, 1, "rwm");
        assert_eq!(evaluate(&compile(&[]), any), Some(false));
        let all = DeviceRule {
            kind: DeviceKind::All,
            major: None,
            minor: None,
            access: DeviceAccess::ALL,
        };
        assert_eq!(evaluate(&compile(&[all]), any), Some(true));
    }

    #[test]
    fn the_program_is_runc_shaped() {
        // 6 prologue, per rule: type, access (3, when not rwm), major, minor, mov, exit.
        let program = compile(&DEFAULT_RULES);
        assert_eq!(program.len(), 6 + 2 * 6 + 8 * 5 + 4 + 5 + 2);
        assert_eq!(std::mem::size_of::<Instruction>(), 8);
    }
}
