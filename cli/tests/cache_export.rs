//! `kiln build --cache-to` / `--cache-from` through a directory and a real registry (Debian's
//! `docker-registry`), and the build cache's automatic size cap.
//!
//! The signal that a step came from an imported cache rather than running: the build's
//! metadata file counts executed steps (`kiln.steps.executed`), plain progress prints `CACHED`,
//! and every RUN writes a timestamp, so a step that ran again would change the image ID.
#![allow(clippy::print_stderr)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use common::{LoopbackRegistry, busybox_store, kiln};

/// Two stages: the builder's RUN is an intermediate result, the final stage copies from it.
const DOCKERFILE: &str = "FROM busybox AS builder\n\
RUN echo built > /artifact && date +%s%N > /when\n\
FROM busybox\n\
COPY --from=builder /artifact /artifact\n\
RUN cat /artifact > /copy && date +%s%N > /stamp\n";

/// Store A (busybox imported) and a context with [`DOCKERFILE`].
fn setup() -> Option<(tempfile::TempDir, PathBuf)> {
    let dir = busybox_store(&[], &[])?;
    let context = dir.path().join("context");
    fs::create_dir_all(&context).unwrap();
    fs::write(context.join("Dockerfile"), DOCKERFILE).unwrap();
    Some((dir, context))
}

/// A fresh store with the same base image and no build cache: a copy of `dir`'s store taken
/// before anything was built in it.
fn fresh_copy(dir: &tempfile::TempDir) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    let status = Process::new("cp")
        .arg("-a")
        .arg(dir.path().join("store"))
        .arg(copy.path().join("store"))
        .status()
        .unwrap();
    assert!(status.success());
    copy
}

/// What a build did.
struct Built {
    image: String,
    executed: u64,
    cached: usize,
    stderr: String,
}

/// Builds `context` in `dir`'s store with `extra` flags; must succeed.
fn build(dir: &tempfile::TempDir, context: &Path, extra: &[&str]) -> Built {
    let metadata = dir.path().join("metadata.json");
    let assert = kiln(dir)
        .args(["build", "--progress", "plain", "--metadata-file"])
        .arg(&metadata)
        .args(extra)
        .arg(context)
        .assert();
    let output = assert.get_output().clone();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "build failed:\n{stderr}");
    let metadata: serde_json::Value =
        serde_json::from_slice(&fs::read(&metadata).unwrap()).unwrap();
    Built {
        image: metadata["containerimage.config.digest"]
            .as_str()
            .unwrap()
            .to_string(),
        executed: metadata["kiln.steps.executed"].as_u64().unwrap(),
        cached: stderr
            .lines()
            .filter(|line| line.ends_with(" CACHED"))
            .count(),
        stderr,
    }
}

#[test]
fn a_local_cache_min_reuses_the_final_stage_and_max_every_stage() {
    let Some((a, context)) = setup() else {
        return;
    };
    let b_min = fresh_copy(&a);
    let b_max = fresh_copy(&a);
    let min_dir = a.path().join("cache-min");
    let max_dir = a.path().join("cache-max");
    let built = build(
        &a,
        &context,
        &[
            "--cache-to",
            &format!("type=local,dest={}", min_dir.display()),
            "--cache-to",
            &format!("type=local,dest={},mode=max", max_dir.display()),
        ],
    );
    assert_eq!(built.executed, 3, "{}", built.stderr);
    for layout in [&min_dir, &max_dir] {
        assert!(layout.join("oci-layout").is_file());
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "latest"
        );
    }

    // mode=max: nothing runs in a fresh store, and the image is the same.
    let reused = build(
        &b_max,
        &context,
        &[
            "--cache-from",
            &format!("type=local,src={}", max_dir.display()),
        ],
    );
    assert_eq!(reused.executed, 0, "{}", reused.stderr);
    assert_eq!(reused.cached, 3, "{}", reused.stderr);
    assert_eq!(reused.image, built.image);
    assert!(
        reused.stderr.contains("records imported"),
        "{}",
        reused.stderr
    );

    // mode=min: the builder stage's RUN is not in the cache and runs again; the final stage's
    // COPY and RUN come from the cache.
    let partly = build(
        &b_min,
        &context,
        &[
            "--cache-from",
            &format!("type=local,src={}", min_dir.display()),
        ],
    );
    assert_eq!(partly.executed, 1, "{}", partly.stderr);
    assert_eq!(partly.cached, 2, "{}", partly.stderr);
    assert_eq!(partly.image, built.image);

    // A second import finds every record present.
    let again = build(
        &b_max,
        &context,
        &[
            "--cache-from",
            &format!("type=local,src={}", max_dir.display()),
        ],
    );
    assert!(
        again
            .stderr
            .contains("0 records imported, 3 already present"),
        "{}",
        again.stderr
    );
}

#[test]
fn a_registry_cache_lets_a_fresh_store_skip_every_step() {
    let Some((a, context)) = setup() else {
        return;
    };
    let Some(registry) = LoopbackRegistry::start() else {
        return;
    };
    let b = fresh_copy(&a);
    let reference = format!("{}/cache/app:buildcache", registry.domain);
    let built = build(
        &a,
        &context,
        &[
            "--cache-to",
            &format!("type=registry,ref={reference},mode=max"),
        ],
    );
    assert!(
        built
            .stderr
            .contains(&format!("exporting cache to {reference}")),
        "{}",
        built.stderr
    );
    // Exporting again sends no blob: the registry has them all.
    let rebuilt = build(
        &a,
        &context,
        &[
            "--cache-to",
            &format!("type=registry,ref={reference},mode=max"),
        ],
    );
    assert_eq!(rebuilt.executed, 0);
    assert!(rebuilt.stderr.contains(", 0 of "), "{}", rebuilt.stderr);

    let reused = build(&b, &context, &["--cache-from", &reference]);
    assert_eq!(reused.executed, 0, "{}", reused.stderr);
    assert_eq!(reused.cached, 3, "{}", reused.stderr);
    assert_eq!(reused.image, built.image);
    // The imported image runs: its layers were unpacked into the fresh store.
    let output = kiln(&b)
        .args(["run", "--rm", &reused.image, "cat", "/copy"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "built\n");
}

#[test]
fn cache_specs_are_checked_and_a_missing_cache_only_warns() {
    let Some((a, context)) = setup() else {
        return;
    };
    for (flag, spec, message) in [
        ("--cache-to", "type=s3,bucket=x", "unknown type \"s3\""),
        ("--cache-to", "type=local,src=/x", "unknown key \"src\""),
        ("--cache-to", "type=registry,mode=max", "needs ref="),
        ("--cache-from", "type=local,dest=/x", "unknown key \"dest\""),
        ("--cache-to", "type=inline", "type=inline is not supported"),
    ] {
        let output = kiln(&a)
            .args(["build", flag, spec])
            .arg(&context)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(125), "{spec}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{spec}: {stderr}");
    }
    let missing = a.path().join("no-cache-here");
    let built = build(
        &a,
        &context,
        &[
            "--cache-from",
            &format!("type=local,src={}", missing.display()),
        ],
    );
    assert_eq!(built.executed, 3);
    assert!(
        built.stderr.contains("WARNING: no cache at"),
        "{}",
        built.stderr
    );
}

/// `kiln builder du --verbose` descriptions.
fn cached_descriptions(dir: &tempfile::TempDir) -> Vec<String> {
    let output = kiln(dir)
        .args(["builder", "du", "--verbose"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_prefix("Description:\t"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_build_cache_is_kept_under_its_cap_least_recently_used_first() {
    let Some((a, context)) = setup() else {
        return;
    };
    // Two builds of 300 KiB layers each; a cap of 400 KiB holds only the newer one.
    fs::write(
        context.join("Dockerfile"),
        "FROM busybox\nRUN head -c 307200 /dev/zero > /old\n",
    )
    .unwrap();
    build(&a, &context, &[]);
    assert_eq!(cached_descriptions(&a).len(), 1);
    // Records are used by the second: a later second than the first build.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = a.path().join("second");
    fs::create_dir_all(&second).unwrap();
    fs::write(
        second.join("Dockerfile"),
        "FROM busybox\nRUN head -c 307200 /dev/zero > /new\n",
    )
    .unwrap();
    let metadata = a.path().join("metadata.json");
    let output = kiln(&a)
        .env("KILN_BUILD_CACHE_MAX", "400k")
        .args(["build", "--progress", "plain", "--metadata-file"])
        .arg(&metadata)
        .arg(&second)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("removed 1 least recently used records"),
        "{stderr}"
    );
    let left = cached_descriptions(&a);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains("/new"), "{left:?}");
    // The removed step runs again.
    let rebuilt = build(&a, &context, &[]);
    assert_eq!(rebuilt.executed, 1);

    // Under the cap nothing is removed; a bad cap is refused before building.
    let output = kiln(&a)
        .env("KILN_BUILD_CACHE_MAX", "lots")
        .args(["build"])
        .arg(&context)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid KILN_BUILD_CACHE_MAX"));
}

#[test]
fn cache_mounts_exported_with_cache_mounts_true_reach_a_fresh_store() {
    let Some((a, context)) = setup() else {
        return;
    };
    let b = fresh_copy(&a);
    fs::write(
        context.join("Dockerfile"),
        "FROM busybox\nRUN --mount=type=cache,id=downloads,target=/cache echo fetched-once > /cache/pkg && touch /done\n",
    )
    .unwrap();
    let layout = a.path().join("cache");
    build(
        &a,
        &context,
        &[
            "--cache-to",
            &format!("type=local,dest={},cache-mounts=true", layout.display()),
        ],
    );
    // In the fresh store, another step using the same cache id finds the exported content.
    let reader = b.path().join("reader");
    fs::create_dir_all(&reader).unwrap();
    fs::write(
        reader.join("Dockerfile"),
        "FROM busybox\nRUN --mount=type=cache,id=downloads,target=/cache cat /cache/pkg > /seen\n",
    )
    .unwrap();
    let built = build(
        &b,
        &reader,
        &[
            "--cache-from",
            &format!("type=local,src={}", layout.display()),
        ],
    );
    assert!(
        built.stderr.contains("1 cache mounts imported"),
        "{}",
        built.stderr
    );
    let output = kiln(&b)
        .args(["run", "--rm", &built.image, "cat", "/seen"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "fetched-once\n");
}
