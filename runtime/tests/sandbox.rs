//! The sandbox against real namespaces, as root, with a busybox root filesystem.
//!
//! Each test builds its own rootfs in a temp dir; they skip (printing why) when not root or
//! when `/bin/busybox` (Debian's busybox-static) is missing.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{Fixture, fixture};
use kiln_runtime::{BindMount, ContainerError, Exit, Network, RuntimeError};

#[test]
fn command_runs_as_pid_1_with_its_own_hostname() {
    let Some(mut f) = fixture() else { return };
    f.sh("echo $$; hostname; cat /etc/hostname; grep -c box /etc/hosts");
    assert_eq!(f.run().success(), "1\nbox\nbox\n1\n");
}

#[test]
fn host_files_and_processes_are_invisible() {
    let Some(mut f) = fixture() else { return };
    let marker = f.path("host/marker");
    std::fs::write(&marker, "host secret").unwrap();
    f.sh(&format!(
        "test -e {} && echo visible || echo hidden; ls /proc | grep -c '^[0-9]'",
        marker.display()
    ));
    // Only the shell and `ls` itself are in the PID namespace (grep counts after ls exits
    // or not, depending on timing: at most 3 numeric entries).
    let out = f.run().success();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("hidden"));
    let processes: u32 = lines.next().unwrap().parse().unwrap();
    assert!(processes <= 3, "container sees {processes} processes");
}

#[test]
fn network_none_has_only_loopback_and_it_is_up() {
    let Some(mut f) = fixture() else { return };
    f.sh("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; cat /sys/class/net/lo/flags");
    assert_eq!(f.run().success(), "lo\n0x9\n");
}

#[test]
fn writes_land_in_the_upper_dir_not_in_the_lower_dir() {
    let Some(mut f) = fixture() else { return };
    f.sh("echo data > /written; rm /etc/group; echo extra >> /etc/passwd");
    f.run().success();
    assert_eq!(
        std::fs::read_to_string(f.path("upper/written")).unwrap(),
        "data\n"
    );
    assert!(!f.path("lower/written").exists());
    // A deleted lower file is a whiteout (char device 0:0) in upper; lower is untouched.
    assert!(f.path("lower/etc/group").exists());
    assert_eq!(
        std::fs::read_to_string(f.path("lower/etc/passwd")).unwrap(),
        common::PASSWD
    );
}

#[test]
fn exit_code_passes_through() {
    let Some(mut f) = fixture() else { return };
    f.sh("exit 3");
    let outcome = f.run();
    assert_eq!(outcome.exit(), Exit::Code(3));
}

#[test]
fn a_child_killed_by_a_signal_reports_128_plus_signal_as_the_shell_does() {
    let Some(mut f) = fixture() else { return };
    // PID 1 of a namespace ignores signals it has no handler for, even SIGTERM from itself
    // (Docker behaves the same); a child process dies of it.
    f.sh("sh -c 'kill -TERM $$'; exit $?");
    assert_eq!(f.run().exit().code(), 143);
}

#[test]
fn pid_1_killed_from_the_host_reports_the_signal() {
    let Some(mut f) = fixture() else { return };
    let token = format!("kiln-test-kill-{}", std::process::id());
    f.spec.args = vec![
        "sh".into(),
        "-c".into(),
        "sleep 30; true".into(),
        token.clone(),
    ];
    let spec = f.spec.clone();
    let scratch = f.dir.path().to_path_buf();
    let runner = std::thread::spawn(move || common::run_spec(&spec, &scratch));
    let pid = common::find_container_pid1(&token, Duration::from_secs(10))
        .expect("container PID 1 not found");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let exit = runner.join().unwrap().exit();
    assert_eq!(exit, Exit::Signal(9));
    assert_eq!(exit.code(), 137);
}

#[test]
fn the_init_forwards_sigterm_to_the_container() {
    let Some(mut f) = fixture() else { return };
    let token = format!("kiln-test-forward-{}", std::process::id());
    f.spec.args = vec![
        "sh".into(),
        "-c".into(),
        "trap 'exit 42' TERM; touch /ready; sleep 30 & wait".into(),
        token.clone(),
    ];
    let spec = f.spec.clone();
    let scratch = f.dir.path().to_path_buf();
    let runner = std::thread::spawn(move || common::run_spec(&spec, &scratch));
    let pid = common::find_container_pid1(&token, Duration::from_secs(10))
        .expect("container PID 1 not found");
    assert!(common::wait_for_file(
        &f.path("upper/ready"),
        Duration::from_secs(10)
    ));
    let init = common::parent_of(pid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(runner.join().unwrap().exit(), Exit::Code(42));
}

#[test]
fn command_not_found_is_127_with_dockers_message() {
    let Some(mut f) = fixture() else { return };
    f.spec.args = vec!["no-such-command".into()];
    let error = f.run().result.unwrap_err();
    assert_eq!(error.exit_code(), 127);
    assert_eq!(
        error.to_string(),
        "exec: \"no-such-command\": executable file not found in $PATH"
    );
    f.spec.args = vec!["/no/such/path".into()];
    assert_eq!(f.run().result.unwrap_err().exit_code(), 127);
}

#[test]
fn command_not_executable_is_126() {
    let Some(mut f) = fixture() else { return };
    let script = f.path("lower/bin/not-executable");
    std::fs::write(&script, "#!/bin/sh\necho no\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    f.spec.args = vec!["/bin/not-executable".into()];
    let error = f.run().result.unwrap_err();
    assert_eq!(error.exit_code(), 126, "{error}");
    assert!(matches!(
        error,
        RuntimeError::Container(ContainerError::CommandNotExecutable { .. })
    ));
    f.spec.args = vec!["/etc".into()];
    assert_eq!(f.run().result.unwrap_err().exit_code(), 126);
}

#[test]
fn user_name_resolves_through_the_containers_passwd_and_group() {
    let Some(mut f) = fixture() else { return };
    f.spec.user = Some("app".into());
    f.sh("id -u; id -g; id -G; echo $HOME");
    assert_eq!(f.run().success(), "1000\n1000\n1000 2000\n/home/app\n");
}

#[test]
fn uid_and_gid_can_be_given_as_numbers() {
    let Some(mut f) = fixture() else { return };
    f.spec.user = Some("1000:2000".into());
    f.sh("id -u; id -g; id -G");
    assert_eq!(f.run().success(), "1000\n2000\n2000\n");
}

#[test]
fn passwd_is_read_inside_the_root_even_through_an_absolute_symlink() {
    let Some(mut f) = fixture() else { return };
    // /etc/passwd -> /etc/passwd.real must resolve in the container root, not the host's.
    std::fs::rename(f.path("lower/etc/passwd"), f.path("lower/etc/passwd.real")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd.real", f.path("lower/etc/passwd")).unwrap();
    f.spec.user = Some("app".into());
    f.sh("id -u");
    assert_eq!(f.run().success(), "1000\n");
}

#[test]
fn unknown_user_is_a_clear_error() {
    let Some(mut f) = fixture() else { return };
    f.spec.user = Some("ghost".into());
    let error = f.run().result.unwrap_err();
    assert_eq!(
        error.to_string(),
        "unable to find user ghost: no matching entries in passwd file"
    );
    assert_eq!(error.exit_code(), 125);
}

#[test]
fn missing_working_directory_is_created() {
    let Some(mut f) = fixture() else { return };
    f.spec.cwd = "/srv/app/data".into();
    f.sh("pwd");
    assert_eq!(f.run().success(), "/srv/app/data\n");
    assert!(f.path("upper/srv/app/data").is_dir());
}

#[test]
fn env_is_visible_with_dockers_defaults() {
    let Some(mut f) = fixture() else { return };
    f.spec.env = vec!["GREETING=hello world".into()];
    f.spec.args = vec!["env".into()];
    let out = f.run().success();
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        vec![
            "GREETING=hello world",
            "HOME=/root",
            "HOSTNAME=box",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ]
    );
}

#[test]
fn root_gets_dockers_default_capabilities_and_others_get_none() {
    let Some(mut f) = fixture() else { return };
    f.sh("grep ^Cap /proc/self/status");
    assert_eq!(
        f.run().success(),
        "CapInh:\t0000000000000000\n\
         CapPrm:\t00000000a80425fb\n\
         CapEff:\t00000000a80425fb\n\
         CapBnd:\t00000000a80425fb\n\
         CapAmb:\t0000000000000000\n"
    );
    f.spec.user = Some("app".into());
    assert_eq!(
        f.run().success(),
        "CapInh:\t0000000000000000\n\
         CapPrm:\t0000000000000000\n\
         CapEff:\t0000000000000000\n\
         CapBnd:\t00000000a80425fb\n\
         CapAmb:\t0000000000000000\n"
    );
}

#[test]
fn dockers_masked_paths_are_empty_and_proc_sys_is_read_only() {
    let Some(mut f) = fixture() else { return };
    // Files (/proc/keys and /proc/timer_list exist on the kernels here; /proc/kcore may not)
    // read as /dev/null, directories are an empty tmpfs.
    f.sh(
        "cat /proc/keys /proc/timer_list | wc -c; ls -A /sys/firmware /proc/acpi | grep -v : | grep -c .; \
         echo x 2>/dev/null > /proc/sys/kernel/hostname && echo writable || echo read-only; \
         echo x 2>/dev/null > /proc/sysrq-trigger && echo writable || echo read-only; \
         touch /sys/x 2>/dev/null && echo writable || echo read-only",
    );
    assert_eq!(f.run().success(), "0\n0\nread-only\nread-only\nread-only\n");
}

#[test]
fn dev_has_the_standard_nodes_and_mounts() {
    let Some(mut f) = fixture() else { return };
    f.sh(
        "ls /dev | tr '\\n' ' '; echo; echo > /dev/null && head -c 4 /dev/zero | wc -c; \
         readlink /dev/ptmx; awk '$5 ~ \"^/dev\" { printf \"%s %s \", $5, $(NF-2) }' \
         /proc/self/mountinfo",
    );
    assert_eq!(
        f.run().success(),
        "core fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero \n\
         4\npts/ptmx\n/dev tmpfs /dev/pts devpts /dev/shm tmpfs /dev/mqueue mqueue "
    );
}

#[test]
fn no_host_file_descriptor_leaks_into_the_container() {
    let Some(mut f) = fixture() else { return };
    // A deliberately inheritable fd in this process reaches the init; the container must
    // not see it.
    let leaked = std::fs::File::open("/proc/self/status").unwrap();
    // SAFETY: clears FD_CLOEXEC on an fd this test owns; integers only.
    let cleared =
        unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&leaked), libc::F_SETFD, 0) };
    assert_eq!(cleared, 0);
    f.spec.args = vec!["ls".into(), "/proc/self/fd".into()];
    // 0, 1, 2 and the directory fd `ls` itself opened.
    assert_eq!(f.run().success(), "0\n1\n2\n3\n");
    drop(leaked);
}

#[test]
fn read_only_root_refuses_writes() {
    let Some(mut f) = fixture() else { return };
    f.spec.read_only = true;
    f.sh("touch /x 2>/dev/null && echo writable || echo read-only; echo ok > /dev/shm/x && cat /dev/shm/x");
    assert_eq!(f.run().success(), "read-only\nok\n");
}

#[test]
fn bind_mounts_are_visible_and_read_only_ones_refuse_writes() {
    let Some(mut f) = fixture() else { return };
    std::fs::write(f.path("host/file"), "from host\n").unwrap();
    f.spec.mounts = vec![
        BindMount {
            source: f.path("host"),
            destination: "/mnt/rw".into(),
            read_only: false,
            copy_up: false,
        },
        BindMount {
            source: f.path("host"),
            destination: "/mnt/ro".into(),
            read_only: true,
            copy_up: false,
        },
    ];
    f.sh("cat /mnt/ro/file; echo new > /mnt/rw/new; \
         touch /mnt/ro/x 2>/dev/null && echo writable || echo read-only");
    assert_eq!(f.run().success(), "from host\nread-only\n");
    assert_eq!(
        std::fs::read_to_string(f.path("host/new")).unwrap(),
        "new\n"
    );
}

#[test]
fn an_image_without_layers_runs_on_an_empty_lower_dir() {
    let Some(mut f) = fixture() else { return };
    f.spec.lower_dirs.clear();
    f.spec.mounts = vec![BindMount {
        source: common::BUSYBOX.into(),
        destination: "/busybox".into(),
        read_only: true,
        copy_up: false,
    }];
    f.spec.args = vec!["/busybox".into(), "ls".into(), "/".into()];
    assert_eq!(f.run().success(), "busybox\ndev\netc\nproc\nsys\n");
}

#[test]
fn host_network_sees_the_hosts_interfaces() {
    let Some(mut f) = fixture() else { return };
    f.spec.network = Network::Host;
    f.sh("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort");
    let host = std::fs::read_to_string("/proc/net/dev").unwrap();
    let mut expected: Vec<String> = host
        .lines()
        .skip(2)
        .map(|line| line.split(':').next().unwrap().trim().to_string())
        .collect();
    expected.sort();
    let out = f.run().success();
    assert_eq!(out.lines().collect::<Vec<_>>(), expected);
}

#[test]
fn a_missing_lower_dir_fails_before_starting_anything() {
    let Some(mut f) = fixture() else { return };
    f.spec.lower_dirs.push(f.path("no-such-layer"));
    let error = f.run().result.unwrap_err();
    assert!(matches!(
        error,
        RuntimeError::MissingDirectory { role: "lower", .. }
    ));
    assert_eq!(error.exit_code(), 125);
    assert!(!f.path("container/rootfs").exists());
}

#[test]
fn an_overlay_mount_failure_is_reported_cleanly_from_inside_the_init() {
    let Some(f) = fixture() else { return };
    // Passes validation, but overlayfs rejects a work dir inside the upper dir.
    let mut spec = f.spec.clone();
    let nested = f.path("upper/work");
    std::fs::create_dir(&nested).unwrap();
    spec.work_dir = nested;
    let error = common::run_spec(&spec, f.dir.path()).result.unwrap_err();
    assert!(
        error.to_string().starts_with("mount overlay on "),
        "unexpected error: {error}"
    );
    assert_eq!(error.exit_code(), 125);
}

#[test]
fn nothing_stays_mounted_on_the_host_after_run() {
    let Some(mut f) = fixture() else { return };
    let before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    f.sh("echo hi > /tmp/x");
    f.run().success();
    f.spec.args = vec!["no-such-command".into()];
    assert!(f.run().result.is_err());
    let after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = f.dir.path().display().to_string();
    assert!(
        !after.contains(&dir),
        "host mountinfo mentions {dir}:\n{after}"
    );
    assert!(!before.contains(&dir));
    // The mountpoint is an empty directory on the host, and the tree can be removed.
    assert_eq!(
        std::fs::read_dir(f.path("container/rootfs"))
            .unwrap()
            .count(),
        0
    );
    let Fixture { dir, .. } = f;
    dir.close().unwrap();
}
