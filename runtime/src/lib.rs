//! The container sandbox: namespaces, mounts, pivot_root, users, capabilities and process
//! supervision for one foreground container process.
//!
//! Knows nothing about images, digests or Dockerfiles: a container is a [`Spec`] (overlay
//! directories, command, env, user, host name, network, bind and tmpfs mounts, cgroup limits,
//! ulimits, capabilities, seccomp). [`run`] creates the container's cgroup, re-executes a
//! program whose `main` calls [`init_main`]; that init creates the namespaces and forks the
//! container's PID 1, which joins the cgroup, assembles the root filesystem, drops
//! privileges, installs the seccomp filter and executes the command.
//!
//! For detached containers, [`spawn_detached`] starts the caller's monitor (which calls
//! [`run`]) in a session of its own, [`signal_container`] reaches a running container's PID 1
//! and [`wait_for_exit`] waits for the monitor; the monitor's job (logs, state) is the CLI's.
//!
//! [`exec`] starts one more process in a running container (joining its namespaces and
//! cgroup, confined as its PID 1 is); [`pause_container`], [`container_usage`] and
//! [`container_processes`] freeze, measure and list a running container through its cgroup.
//!
//! The device allow-list is [`devices`]: Docker's rules, written to the v1 devices
//! controller or attached to the v2 cgroup as a BPF device program.
//!
//! Not here yet: user namespaces, AppArmor/SELinux.

mod caps;
mod cgroup;
mod container;
mod control;
mod detach;
pub mod devices;
mod error;
mod exec;
mod forward;
mod init;
mod mounts;
pub mod pty;
mod root;
mod run;
mod seccomp;
mod spec;
mod syscalls;
mod user;

pub use caps::{DEFAULT_CAPABILITIES, default_mask as default_capability_mask};
pub use cgroup::{container_pid, remove_cgroup};
pub use container::DEFAULT_PATH;
pub use control::{
    ControlError, Process, ProcessTable, Usage, container_paused, container_pids,
    container_processes, container_ps, container_usage, pause_container, thaw_container,
    unpause_container,
};
pub use detach::{
    AttachEnd, AttachOptions, AttachServer, AttachStream, attach, connect_attach,
    parse_detach_keys, parse_signal, process_alive_since, process_exists, process_start_time,
    signal_container, spawn_detached, wait_for_exit,
};
pub use error::{
    ContainerError, EXIT_ENGINE_ERROR, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, Errno, LimitError,
    RuntimeError, SeccompError,
};
pub use exec::{
    Cancel, Capture, Captured, CapturedEnd, ExecError, ExecSpec, exec, exec_captured,
    exec_detached, exec_in_terminal, exec_main,
};
pub use init::init_main;
pub use run::{Io, Started, run, run_notifying, run_started};
pub use spec::{
    BindMount, Dns, Exit, HostEntry, Network, Outcome, Resources, Seccomp, Spec, TmpfsMount,
    Ulimit, UlimitName,
};
