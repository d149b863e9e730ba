//! Capabilities (`--cap-add`, `--cap-drop`, `--privileged`), seccomp (Docker's default
//! profile, unconfined, a custom JSON profile) and no-new-privileges, as root with a busybox
//! root filesystem.

mod common;

use common::fixture;
use kiln_runtime::{RuntimeError, Seccomp};

/// The CapEff line of the container's shell.
const CAP_EFF: &str = "grep CapEff /proc/self/status | cut -f2";

#[test]
fn cap_add_net_admin_shows_in_the_effective_set() {
    let Some(mut f) = fixture() else { return };
    f.spec.cap_add = vec!["NET_ADMIN".into()];
    f.sh(CAP_EFF);
    // Docker's default 0xa80425fb plus bit 12.
    assert_eq!(f.run().success(), "00000000a80435fb\n");
    // With the capability, the container may configure its own network namespace.
    f.sh("ip link set lo down && echo changed");
    assert_eq!(f.run().success(), "changed\n");
}

#[test]
fn cap_drop_chown_makes_chown_fail() {
    let Some(mut f) = fixture() else { return };
    f.sh("touch /f; chown 1000 /f 2>/dev/null && echo allowed || echo denied");
    assert_eq!(f.run().success(), "allowed\n");
    f.spec.cap_drop = vec!["CAP_CHOWN".into()];
    assert_eq!(f.run().success(), "denied\n");
}

#[test]
fn cap_drop_all_leaves_only_the_added_ones() {
    let Some(mut f) = fixture() else { return };
    f.spec.cap_drop = vec!["all".into()];
    f.spec.cap_add = vec!["kill".into()];
    f.sh("grep -E 'CapEff|CapBnd' /proc/self/status | cut -f2");
    assert_eq!(f.run().success(), "0000000000000020\n0000000000000020\n");
}

#[test]
fn an_unknown_capability_is_refused_before_starting() {
    let Some(mut f) = fixture() else { return };
    f.spec.cap_add = vec!["FLY".into()];
    let error = f.run().result.unwrap_err();
    assert!(matches!(error, RuntimeError::UnknownCapability { .. }));
    assert_eq!(error.to_string(), "unknown capability: \"CAP_FLY\"");
}

#[test]
fn privileged_gets_every_held_capability_no_seccomp_and_no_masked_paths() {
    let Some(mut f) = fixture() else { return };
    f.spec.privileged = true;
    f.sh("grep -E 'CapEff|Seccomp:' /proc/self/status | cut -f2; \
         cat /proc/keys /proc/timer_list | wc -c | grep -qv '^0$' && echo unmasked; \
         awk '$5 == \"/sys\" { print $6 }' /proc/self/mountinfo | cut -d, -f1; \
         test -c /dev/kmsg && echo host-devices");
    let held = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("CapBnd:").map(|v| v.trim().to_string()))
        .unwrap();
    let expected_devices = if std::path::Path::new("/dev/kmsg").exists() {
        "host-devices\n"
    } else {
        ""
    };
    assert_eq!(
        f.run().success(),
        format!("{held}\n0\nunmasked\nrw\n{expected_devices}")
    );
}

#[test]
fn the_default_seccomp_profile_is_active_and_normal_programs_run() {
    let Some(mut f) = fixture() else { return };
    f.sh("grep Seccomp: /proc/self/status | cut -f2; \
          ls / >/dev/null && echo hi | sed s/hi/ok/ && sh -c 'sleep 0 & wait' && echo forked");
    // 2: filter mode.
    assert_eq!(f.run().success(), "2\nok\nforked\n");
}

#[test]
fn the_default_profile_blocks_creating_a_user_namespace_and_mounting() {
    let Some(mut f) = fixture() else { return };
    // Creating a user namespace needs no capability, so only seccomp stops it.
    f.sh("unshare -U true 2>&1; echo $?; mount -t tmpfs none /mnt 2>&1; echo $?");
    let out = f.run().success();
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("Operation not permitted"),
        "unshare: {out}"
    );
    assert_eq!(lines[1], "1");
    assert!(
        lines[2].contains("Operation not permitted") || lines[2].contains("denied"),
        "{out}"
    );
    assert_ne!(lines[3], "0");
}

#[test]
fn unconfined_allows_what_the_default_profile_blocks_where_capabilities_permit() {
    let Some(mut f) = fixture() else { return };
    f.spec.seccomp = Seccomp::Unconfined;
    f.sh("grep Seccomp: /proc/self/status | cut -f2; unshare -U true && echo unshared");
    assert_eq!(f.run().success(), "0\nunshared\n");
    // mount also needs CAP_SYS_ADMIN; with it, unconfined mounts...
    f.spec.cap_add = vec!["SYS_ADMIN".into()];
    f.sh("mkdir -p /mnt && mount -t tmpfs none /mnt && echo mounted");
    assert_eq!(f.run().success(), "mounted\n");
    // ...and so does the default profile, whose mount rule depends on CAP_SYS_ADMIN.
    f.spec.seccomp = Seccomp::Default;
    assert_eq!(f.run().success(), "mounted\n");
}

#[test]
fn a_custom_profile_denying_mkdir_makes_mkdir_fail() {
    let Some(mut f) = fixture() else { return };
    // Both names: the C library may use either system call for mkdir(3).
    f.spec.seccomp = Seccomp::Profile(
        r#"{
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}
            ]
        }"#
        .into(),
    );
    f.sh("mkdir /x 2>&1; echo $?; touch /y && echo touched");
    let out = f.run().success();
    assert!(out.contains("Operation not permitted"), "{out}");
    assert!(out.ends_with("1\ntouched\n"), "{out}");
    assert!(!f.path("upper/x").exists());
}

#[test]
fn a_custom_profile_with_an_errno_of_its_own() {
    let Some(mut f) = fixture() else { return };
    f.spec.seccomp = Seccomp::Profile(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 28}
        ]}"#
        .into(),
    );
    f.sh("mkdir /x 2>&1 || true");
    assert!(f.run().success().contains("No space left on device"));
}

#[test]
fn an_invalid_profile_is_refused_before_starting() {
    let Some(mut f) = fixture() else { return };
    f.spec.seccomp = Seccomp::Profile(r#"{"defaultAction": "SCMP_ACT_WHATEVER"}"#.into());
    let error = f.run().result.unwrap_err();
    assert!(matches!(error, RuntimeError::Seccomp(_)), "{error}");
    assert_eq!(error.exit_code(), 125);
}

#[test]
fn no_new_privileges_is_off_by_default_and_can_be_set() {
    let Some(mut f) = fixture() else { return };
    f.sh("grep -E 'NoNewPrivs|Seccomp:' /proc/self/status | cut -f2");
    assert_eq!(f.run().success(), "0\n2\n");
    f.spec.no_new_privileges = true;
    assert_eq!(f.run().success(), "1\n2\n");
    // A non-root user gets the filter too (installed after the switch, thanks to NNP).
    f.spec.user = Some("app".into());
    assert_eq!(f.run().success(), "1\n2\n");
}

#[test]
fn a_non_root_user_without_no_new_privileges_still_gets_the_filter() {
    let Some(mut f) = fixture() else { return };
    f.spec.user = Some("app".into());
    f.sh("grep Seccomp: /proc/self/status | cut -f2");
    assert_eq!(f.run().success(), "2\n");
}
