//! Every build fixture under `testdata/contexts/` built with kiln and checked against its
//! `expected.json` (format: `common::contexts`): the image config through `kiln inspect`, the
//! final file system through `kiln build -o type=local`. Needs root and busybox-static (skips
//! with a printed reason otherwise). `KILN_FIXTURE=NAME[,NAME]` runs only those cases.
//!
//! A case marked `known_failure` pins a kiln bug with Docker's behaviour as the expectation:
//! its problems are printed, not failed, and a known failure that starts passing fails the test
//! so that the mark gets removed.
#![allow(clippy::print_stderr)]

mod common;

use std::fs;

use common::contexts::{self, Case, Kiln};
use common::is_root;

/// Builds `case` in the store of `dir`; returns the problems found, or the build's error.
fn check(dir: &tempfile::TempDir, kiln: &Kiln, case: &Case) -> Vec<String> {
    let context = case.prepare(dir.path());
    let rootfs = dir.path().join(&case.name).join("rootfs");
    let output = kiln
        .command()
        .args(["build", "-q"])
        .args(case.build_flags(&context))
        .arg("-o")
        .arg(format!("type=local,dest={}", rootfs.display()))
        .arg(&context)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if let Some(error) = case.text("error") {
        let _ = fs::remove_dir_all(dir.path().join(&case.name));
        return match (output.status.success(), stderr.contains(error)) {
            (true, _) => vec![format!(
                "kiln build succeeded; expected an error with {error:?}"
            )],
            (false, false) => vec![format!("kiln build failed without {error:?}: {stderr}")],
            (false, true) => Vec::new(),
        };
    }
    if !output.status.success() {
        return vec![format!("kiln build failed: {stderr}")];
    }
    let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let inspect = kiln
        .command()
        .args(["inspect", "-f", "{{json .Config}}", &id])
        .output()
        .unwrap();
    if !inspect.status.success() {
        return vec![format!(
            "kiln inspect {id} failed: {}",
            String::from_utf8_lossy(&inspect.stderr)
        )];
    }
    let config: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let problems = case.problems(&config, &rootfs);
    // Each case's output can be large (a busybox tree): free it as we go.
    let _ = fs::remove_dir_all(dir.path().join(&case.name));
    problems
}

#[test]
fn every_fixture_builds_as_expected() {
    if !is_root() {
        eprintln!("skipped: kiln build runs RUN steps in containers, which need root (euid 0)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(base) = contexts::base_rootfs(dir.path()) else {
        return;
    };
    let kiln = Kiln::new(dir.path());
    let imported = kiln
        .command()
        .arg("import")
        .arg(&base)
        .arg("kbase")
        .output()
        .unwrap()
        .status;
    assert!(imported.success(), "kiln import kbase");
    let cases = contexts::cases();
    assert!(!cases.is_empty(), "no fixtures under testdata/contexts");
    let mut failures = Vec::new();
    let mut known = Vec::new();
    let mut fixed = Vec::new();
    for case in &cases {
        let problems = check(&dir, &kiln, case);
        match (case.text("known_failure"), problems.is_empty()) {
            (None, true) => eprintln!("ok      {}", case.name),
            (None, false) => {
                eprintln!("FAILED  {}", case.name);
                failures.push(format!("{}:\n  {}", case.name, problems.join("\n  ")));
            }
            (Some(bug), false) => {
                eprintln!(
                    "known   {} ({bug}):\n  {}",
                    case.name,
                    problems.join("\n  ")
                );
                known.push(case.name.clone());
            }
            (Some(bug), true) => {
                eprintln!("FIXED   {} (was: {bug})", case.name);
                fixed.push(case.name.clone());
            }
        }
    }
    eprintln!(
        "{} fixtures: {} failed, {} known failures, {} known failures now pass",
        cases.len(),
        failures.len(),
        known.len(),
        fixed.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        fixed.is_empty(),
        "these fixtures pass now: remove their known_failure mark: {fixed:?}"
    );
}
