//! kiln against the reference engine: every fixture under `testdata/contexts/` that is not
//! marked `kiln_only` is built with Docker (`/usr/bin/docker`, BuildKit) and with kiln, and the
//! two final file systems (type, mode, owner, content, link target of every path) and image
//! configs are compared. Docker's result is also checked against the fixture's
//! `expected.json`, so a wrong expectation is caught here rather than pinned.
//!
//! Deliberate differences, normalised before comparing (each cites why):
//! - the empty `/dev`, `/proc` and `/sys` directories, and the empty mount points of
//!   `RUN --mount` targets (with the parents made for them), that runc leaves in a RUN step's
//!   layer when the base image lacks them: kiln's sandbox makes its mount points outside the
//!   layer;
//! - what `docker export` adds to the image's file system: the init layer (`/.dockerenv`,
//!   `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`, `/etc/mtab`, `/dev/*`, and `/etc`
//!   itself when the image has none) and the mount points of the image's volumes;
//! - config members at Go's zero value (`""`, `null`, `[]`, `{}`, absent) are the same value;
//! - only the members a Dockerfile sets are compared (Hostname, Image, AttachStdin, ... are
//!   daemon fields of `docker inspect`).
//!
//! A second test does the same with the public conformance data beside the checkout
//! (`../shared/conformance`: Buildah's build conformance cases and the `.dockerignore`
//! scenarios, read through `python3`); its known differences, kiln bugs and places where Docker
//! 20.10 is not the reference, are listed in `CONFORMANCE_KNOWN`.
//!
//! Skips, printing why, when not root, when no Docker engine answers `docker info`, when
//! busybox-static is missing, or (the second test) when the conformance data or python3 is
//! missing. `KILN_FIXTURE=NAME[,NAME]` and `KILN_CONFORMANCE=NAME[,NAME]` run only those cases.
#![allow(clippy::print_stderr)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::{Command as Process, Stdio};

use common::contexts::{self, Case, Kiln};
use common::is_root;
use serde_json::Value;

const DOCKER: &str = "/usr/bin/docker";

/// The image config members a Dockerfile sets.
const CONFIG_MEMBERS: &[&str] = &[
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "Labels",
    "ExposedPorts",
    "Volumes",
    "StopSignal",
    "Healthcheck",
    "OnBuild",
    "Shell",
];

/// Directories Docker makes, when they are missing, to hold mount points: runc in a RUN step's
/// root, the init layer in a container's (`/etc` for `/etc/hosts` and friends).
const RUNC_MOUNT_POINTS: &[&str] = &["dev", "etc", "proc", "sys"];

/// Paths Docker's init layer adds to every container (moby `daemon/initlayer`, `.dockerenv`):
/// `docker export` shows them although the image does not have them.
const DOCKER_INIT_LAYER: &[&str] = &[
    ".dockerenv",
    "dev",
    "dev/console",
    "dev/pts",
    "dev/shm",
    "etc/hostname",
    "etc/hosts",
    "etc/mtab",
    "etc/resolv.conf",
    "proc",
    "sys",
];

/// Why the differential run cannot happen here, if it cannot.
fn unavailable() -> Option<&'static str> {
    if !is_root() {
        return Some("not root (kiln's RUN steps need root)");
    }
    let engine = Process::new(DOCKER)
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !engine {
        return Some("no Docker engine answers `/usr/bin/docker info`");
    }
    None
}

/// Runs Docker with BuildKit; stdout, or the error with its stderr.
fn docker(args: &[String]) -> Result<String, String> {
    let output = Process::new(DOCKER)
        .args(args)
        .env("DOCKER_BUILDKIT", "1")
        .output()
        .unwrap();
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Docker images to remove when the test ends, however it ends.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = Process::new(DOCKER)
                .args(["rmi", "-f"])
                .args(&self.0)
                .output();
        }
    }
}

/// One engine's result: its image config members and its exported root file system.
struct Built {
    config: Value,
    tree: BTreeMap<String, String>,
}

fn config_members(config: &Value) -> Value {
    Value::Object(
        CONFIG_MEMBERS
            .iter()
            .map(|member| {
                let value = config.get(*member).cloned().unwrap_or(Value::Null);
                (member.to_string(), contexts::normalise(value))
            })
            .collect(),
    )
}

/// Builds `case` with Docker and exports the image's file system through a container
/// (`docker create` + `docker export`, extracted with owners): BuildKit's local exporter in
/// Docker 20.10 writes every file as the calling user, losing ownership. Returns the result and
/// what differs between it and `expected.json`.
fn build_with_docker(
    case: &Case,
    context: &Path,
    work: &Path,
    images: &mut Images,
) -> Result<(Built, Vec<String>), String> {
    // A reference is lowercase letters, digits and separators: case names may have others.
    let name: String = case
        .name
        .chars()
        .map(|char| match char {
            'a'..='z' | '0'..='9' | '.' | '_' | '-' => char,
            'A'..='Z' => char.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let tag = format!("kiln-differential-{}-{name}", std::process::id());
    images.0.push(tag.clone());
    let mut args: Vec<String> = vec!["build".into(), "-q".into(), "-t".into(), tag.clone()];
    args.extend(case.build_flags(context));
    args.push(context.display().to_string());
    docker(&args)?;
    let container = docker(&[
        "create".into(),
        "--entrypoint".into(),
        "/bin/true".into(),
        tag.clone(),
    ])?
    .trim()
    .to_string();
    let archive = work.join("docker-export.tar");
    let exported = docker(&[
        "export".into(),
        "-o".into(),
        archive.display().to_string(),
        container.clone(),
    ]);
    let _ = docker(&["rm".into(), "-f".into(), container]);
    exported?;
    let rootfs = work.join("docker-rootfs");
    fs::create_dir_all(&rootfs).unwrap();
    let status = Process::new("tar")
        .args(["--numeric-owner", "-xpf"])
        .arg(&archive)
        .arg("-C")
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(status.success(), "extracting {}", archive.display());
    let inspect = docker(&[
        "inspect".into(),
        "-f".into(),
        "{{json .Config}}".into(),
        tag,
    ])?;
    let config: Value = serde_json::from_str(&inspect).unwrap();
    let mut tree = contexts::tree(&rootfs);
    tree.retain(|path, _| !DOCKER_INIT_LAYER.contains(&path.as_str()));
    let problems = case.problems(&config, &rootfs);
    let built = Built {
        config: config_members(&config),
        tree,
    };
    Ok((built, problems))
}

fn build_with_kiln(kiln: &Kiln, case: &Case, context: &Path, work: &Path) -> Result<Built, String> {
    let rootfs = work.join("kiln-rootfs");
    let output = kiln
        .command()
        .args(["build", "-q"])
        .args(case.build_flags(context))
        .arg("-o")
        .arg(format!("type=local,dest={}", rootfs.display()))
        .arg(context)
        .output()
        .unwrap();
    if !output.status.success() {
        return Err(format!(
            "kiln build: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let inspect = kiln
        .command()
        .args(["inspect", "-f", "{{json .Config}}", &id])
        .output()
        .unwrap();
    if !inspect.status.success() {
        return Err(format!(
            "kiln inspect: {}",
            String::from_utf8_lossy(&inspect.stderr)
        ));
    }
    let config: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    Ok(Built {
        config: config_members(&config),
        tree: contexts::tree(&rootfs),
    })
}

/// Whether `path`, which only Docker's result has, is a directory runc left as a mount point
/// (`/dev`, `/proc`, `/sys`, a `RUN --mount` target named in the Dockerfile or a volume of the
/// image) or a parent it made for one, holding nothing but such directories.
fn is_runc_mount_point(
    path: &str,
    targets: &BTreeSet<String>,
    kiln: &BTreeMap<String, String>,
    docker: &BTreeMap<String, String>,
) -> bool {
    let is_dir = docker
        .get(path)
        .is_some_and(|line| line.starts_with("dir "));
    let named = RUNC_MOUNT_POINTS.contains(&path)
        || targets.contains(path)
        || targets
            .iter()
            .any(|target| target.starts_with(&format!("{path}/")));
    let prefix = format!("{path}/");
    is_dir
        && named
        && !kiln.contains_key(path)
        && docker
            .keys()
            .filter(|other| other.starts_with(&prefix))
            .all(|other| is_runc_mount_point(other, targets, kiln, docker))
}

/// The `target=` paths of the Dockerfile's `RUN --mount` flags, without the leading `/`.
fn mount_targets(context: &Path, case: &Case) -> BTreeSet<String> {
    let dockerfile = context.join(case.text("dockerfile").unwrap_or("Dockerfile"));
    let text = fs::read_to_string(dockerfile).unwrap_or_default();
    let mut targets = BTreeSet::new();
    for flag in text
        .split_whitespace()
        .filter(|word| word.starts_with("--mount="))
    {
        for option in flag.trim_start_matches("--mount=").split(',') {
            if let Some(target) = option
                .strip_prefix("target=")
                .or_else(|| option.strip_prefix("dst="))
                .or_else(|| option.strip_prefix("destination="))
            {
                targets.insert(target.trim_matches('/').to_string());
            }
        }
        if flag.contains("type=secret") && !flag.contains("target=") {
            targets.insert("run/secrets".to_string());
            targets.insert("run".to_string());
        }
    }
    targets
}

/// Every difference between the two results, as `what: kiln X, docker Y` lines.
fn differences(kiln: &Built, docker: &Built, targets: &BTreeSet<String>) -> Vec<String> {
    let mut found = Vec::new();
    for member in CONFIG_MEMBERS {
        let (ours, theirs) = (&kiln.config[*member], &docker.config[*member]);
        if ours != theirs {
            found.push(format!("config {member}: kiln {ours}, docker {theirs}"));
        }
    }
    let paths: BTreeSet<&String> = kiln.tree.keys().chain(docker.tree.keys()).collect();
    for path in paths {
        match (kiln.tree.get(path), docker.tree.get(path)) {
            (Some(ours), Some(theirs)) if ours == theirs => {}
            (None, Some(_)) if is_runc_mount_point(path, targets, &kiln.tree, &docker.tree) => {}
            (ours, theirs) => found.push(format!(
                "/{path}: kiln {}, docker {}",
                ours.map_or("absent", String::as_str),
                theirs.map_or("absent", String::as_str)
            )),
        }
    }
    found
}

#[test]
fn kiln_builds_every_fixture_as_docker_does() {
    if let Some(reason) = unavailable() {
        eprintln!("skipped: {reason}");
        return;
    }
    let store = tempfile::tempdir().unwrap();
    let Some(base) = contexts::base_rootfs(store.path()) else {
        return;
    };
    let mut images = Images(Vec::new());
    // The fixtures say `FROM kbase`: the same busybox tar in both engines.
    docker(&["import".into(), base.display().to_string(), "kbase".into()]).unwrap();
    let kiln = Kiln::new(store.path());
    let imported = kiln
        .command()
        .arg("import")
        .arg(&base)
        .arg("kbase")
        .output()
        .unwrap()
        .status;
    assert!(imported.success(), "kiln import kbase");
    let mut failures = Vec::new();
    let mut known = Vec::new();
    let mut compared = 0;
    for case in contexts::cases() {
        if let Some(why) = case.text("kiln_only") {
            eprintln!("kiln-only {} ({why})", case.name);
            continue;
        }
        let work = store.path().join(&case.name);
        let context = case.prepare(store.path());
        let docker_result = build_with_docker(&case, &context, &work, &mut images);
        let kiln_result = build_with_kiln(&kiln, &case, &context, &work);
        compared += 1;
        let mut problems = Vec::new();
        match (&kiln_result, &docker_result) {
            // A case that must fail: both engines must refuse it (their messages differ).
            (_, _) if case.text("error").is_some() => {
                if docker_result.is_ok() {
                    failures.push(format!("{}: Docker built a case marked `error`", case.name));
                }
                if kiln_result.is_ok() {
                    problems.push("kiln built it; Docker refuses it".to_string());
                }
            }
            (Ok(ours), Ok((theirs, expectation))) => {
                let mut targets = mount_targets(&context, &case);
                // `docker create` makes the mount points of the image's volumes.
                if let Some(volumes) = theirs.config["Volumes"].as_object() {
                    targets.extend(
                        volumes
                            .keys()
                            .map(|volume| volume.trim_matches('/').to_string()),
                    );
                }
                problems.extend(differences(ours, theirs, &targets));
                if !expectation.is_empty() {
                    failures.push(format!(
                        "{}: Docker does not meet expected.json (fix the fixture):\n  {}",
                        case.name,
                        expectation.join("\n  ")
                    ));
                }
            }
            (_, Err(error)) => {
                failures.push(format!("{}: Docker could not build it: {error}", case.name))
            }
            (Err(error), Ok(_)) => problems.push(error.clone()),
        }
        let _ = fs::remove_dir_all(&work);
        match (case.text("known_failure"), problems.is_empty()) {
            (_, true) => eprintln!("same      {}", case.name),
            (Some(bug), false) => {
                eprintln!(
                    "known     {} ({bug}):\n  {}",
                    case.name,
                    problems.join("\n  ")
                );
                known.push(case.name.clone());
            }
            (None, false) => {
                eprintln!("DIFFERENT {}:\n  {}", case.name, problems.join("\n  "));
                failures.push(format!(
                    "{}: kiln differs from Docker:\n  {}",
                    case.name,
                    problems.join("\n  ")
                ));
            }
        }
    }
    eprintln!(
        "{compared} fixtures compared, {} known kiln bugs, {} failures",
        known.len(),
        failures.len()
    );
    assert!(compared > 0, "no fixture was compared");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Turns the conformance case files (Python dicts) into JSON: `{name: {df, files, args, target,
/// ignore, divergent}}`, each file as `{"kind": "file", "b64": ..., "mode": ...}`,
/// `{"kind": "dir"}` or `{"kind": "symlink", "target": ...}`.
const CONFORMANCE_TO_JSON: &str = r#"
import base64, json, re, sys
out = {}
for path, table in (("buildah/cases_buildah.py", "BUILDAH_CASES"), ("dockerignore/cases_ignore.py", "IGNORE_CASES")):
    src = open(sys.argv[1] + "/" + path).read()
    ns = {}
    exec(compile(src, path, "exec"), ns)
    divergent = set()
    for block in src.split("\ncase(")[1:]:
        if "divergent=True" in block.split("\ncase(")[0]:
            divergent.add("ignore_" + block.split('"')[1][len("ignore_"):])
    for name, case in ns[table].items():
        files = {}
        for file, value in case["files"].items():
            mode = None
            if value is None:
                files[file.rstrip("/")] = {"kind": "dir"}
                continue
            if isinstance(value, tuple) and value[0] == "symlink":
                files[file] = {"kind": "symlink", "target": value[1]}
                continue
            if isinstance(value, tuple):
                value, mode = value
            data = value.encode() if isinstance(value, str) else value
            files[file] = {"kind": "file", "b64": base64.b64encode(data).decode(), "mode": mode}
        out[name] = {"df": case["df"], "files": files, "args": case.get("args") or {},
                     "target": case.get("target"), "ignore": case.get("ignore"),
                     "divergent": name in divergent}
json.dump(out, sys.stdout)
"#;

/// Why Docker 20.10 is not the reference for a case: where its old `.dockerignore` matcher and
/// context walker differ from current BuildKit (the rules listed in `cases_ignore.py`), kiln
/// follows current BuildKit.
const DOCKER_20_10_WILDCARD_EXCEPTION: &str = "Docker 20.10 differs from current BuildKit: a \
    wildcard exception (`!*/x`, `!**/x`) cannot re-include a path below an excluded directory \
    there; kiln re-includes it, as patternmatcher does";
const DOCKER_20_10_EMPTY_DIRECTORY: &str = "Docker 20.10 differs from current BuildKit: it sends an \
    excluded directory, empty, when an exception merely starts with its name; current BuildKit \
    (and kiln) send a directory only for a re-included path below it";
const KILN_TRAILING_SLASH: &str = "kiln bug: WORKDIR drops a trailing slash that BuildKit keeps \
    in the config (fixture workdir-trailing-slash)";

/// Cases of the conformance data where kiln is known to differ from Docker 20.10, and why
/// (each is a kiln bug to fix, or a place where Docker 20.10 is not the reference).
const CONFORMANCE_KNOWN: &[(&str, &str)] = &[
    ("buildah_ci-pipeline-modified", KILN_TRAILING_SLASH),
    (
        "buildah_workdir_with_trailing_separator",
        KILN_TRAILING_SLASH,
    ),
    (
        "buildah_copy-escape-glob",
        "deliberate: a wildcard matching several files with a destination that is not a \
         directory (`COPY n\\?pe/file.txt /app4/file.txt`: the lexer makes `\\?` a `?`) is \
         refused by kiln as the Dockerfile reference says; BuildKit copies each match over the \
         last (moby/buildkit#1853) (fixture copy-several-sources-to-file-fails)",
    ),
    (
        "buildah_mount-cache-by-ownership",
        "kiln bug: cache mounts with one id but different uid/gid/mode share one directory; \
         BuildKit keeps them apart (fixture cache-mount-identity-includes-owner)",
    ),
    (
        "buildah_quoted_and_inherited_arg",
        "kiln bug: a stage built FROM another stage does not inherit its ARGs (fixture \
         arg-inherited-by-child-stage)",
    ),
    ("buildah_copy-integration1", DOCKER_20_10_WILDCARD_EXCEPTION),
    (
        "buildah_dockerignore-exceptions-skip",
        DOCKER_20_10_WILDCARD_EXCEPTION,
    ),
    (
        "buildah_dockerignore-exceptions-weirdness-1",
        DOCKER_20_10_WILDCARD_EXCEPTION,
    ),
    (
        "buildah_dockerignore-exclude-deep-subdir-dot_2",
        DOCKER_20_10_WILDCARD_EXCEPTION,
    ),
    (
        "buildah_dockerignore-exclude-deep-subdir-star_2",
        DOCKER_20_10_WILDCARD_EXCEPTION,
    ),
    (
        "buildah_dockerignore-exclude-kind-of-deep-subdir-dot",
        DOCKER_20_10_WILDCARD_EXCEPTION,
    ),
    (
        "buildah_dockerignore-exclude-kind-of-deep-subdir-star",
        DOCKER_20_10_WILDCARD_EXCEPTION,
    ),
    (
        "buildah_dockerignore-allowlist-subdir-nofile-dir",
        DOCKER_20_10_EMPTY_DIRECTORY,
    ),
    (
        "buildah_dockerignore-allowlist-subsubdir-nofile",
        DOCKER_20_10_EMPTY_DIRECTORY,
    ),
    (
        "buildah_dockerignore-allowlist-subsubdir-nosubdir",
        DOCKER_20_10_EMPTY_DIRECTORY,
    ),
    (
        "buildah_copy_with_chown",
        "not comparable here: kbase (scripts/busybox-rootfs.sh) has no group `staff`; Docker \
         20.10 silently ignores an unknown name (1:staff -> 1:1), kiln fails as current \
         BuildKit does ('unable to find group staff')",
    ),
];

/// The public conformance data's cases (Buildah's build conformance suite and the
/// `.dockerignore` scenarios, `../shared/conformance`), or None with the reason printed.
fn conformance_cases() -> Option<serde_json::Map<String, Value>> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance");
    if !data.join("buildah/cases_buildah.py").is_file() {
        eprintln!("skipped: no conformance data at {}", data.display());
        return None;
    }
    let Ok(output) = Process::new("python3")
        .arg("-c")
        .arg(CONFORMANCE_TO_JSON)
        .arg(&data)
        .output()
    else {
        eprintln!("skipped: python3 (to read the conformance case files) is missing");
        return None;
    };
    assert!(
        output.status.success(),
        "reading the conformance cases: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cases: Value = serde_json::from_slice(&output.stdout).unwrap();
    let only: Option<Vec<String>> = std::env::var("KILN_CONFORMANCE")
        .ok()
        .map(|names| names.split(',').map(str::to_string).collect());
    let mut cases = cases.as_object().unwrap().clone();
    cases.retain(|name, _| only.as_ref().is_none_or(|only| only.contains(name)));
    Some(cases)
}

/// Writes a conformance case's context (Dockerfile, .dockerignore, files) into `context`.
fn write_conformance_context(case: &Value, context: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(context).unwrap();
    fs::write(context.join("Dockerfile"), case["df"].as_str().unwrap()).unwrap();
    if let Some(ignore) = case["ignore"].as_str() {
        fs::write(context.join(".dockerignore"), ignore).unwrap();
    }
    let files = case["files"].as_object().unwrap();
    for (name, file) in files {
        let path = context.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        match file["kind"].as_str().unwrap() {
            "dir" => fs::create_dir_all(&path).unwrap(),
            "symlink" => {
                std::os::unix::fs::symlink(file["target"].as_str().unwrap(), &path).unwrap()
            }
            _ => {
                let bytes = base64_decode(file["b64"].as_str().unwrap());
                fs::write(&path, bytes).unwrap();
                let mode = file["mode"].as_u64().map_or(0o644, |mode| mode as u32);
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            }
        }
    }
}

/// Standard base64 (with padding), as Python's `base64.b64encode` writes it.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |byte: u8| -> u32 {
        match byte {
            b'A'..=b'Z' => u32::from(byte - b'A'),
            b'a'..=b'z' => u32::from(byte - b'a') + 26,
            b'0'..=b'9' => u32::from(byte - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => 0,
        }
    };
    let mut bytes = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let padding = chunk.iter().filter(|byte| **byte == b'=').count();
        let word = chunk
            .iter()
            .fold(0u32, |word, byte| (word << 6) | value(*byte));
        let word = word << (6 * (4 - chunk.len()));
        let decoded = [(word >> 16) as u8, (word >> 8) as u8, word as u8];
        bytes.extend_from_slice(&decoded[..3 - padding]);
    }
    bytes
}

#[test]
fn kiln_builds_the_conformance_cases_as_docker_does() {
    if let Some(reason) = unavailable() {
        eprintln!("skipped: {reason}");
        return;
    }
    let Some(cases) = conformance_cases() else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let Some(base) = contexts::base_rootfs(store.path()) else {
        return;
    };
    let mut images = Images(Vec::new());
    docker(&["import".into(), base.display().to_string(), "kbase".into()]).unwrap();
    let kiln = Kiln::new(store.path());
    let imported = kiln
        .command()
        .arg("import")
        .arg(&base)
        .arg("kbase")
        .output()
        .unwrap()
        .status;
    assert!(imported.success(), "kiln import kbase");
    let mut failures = Vec::new();
    let (mut compared, mut known, mut docker_failed) = (0, 0, 0);
    for (name, case) in &cases {
        if case["divergent"].as_bool() == Some(true) {
            eprintln!(
                "skipped   {name}: Docker 20.10's .dockerignore matcher diverges from BuildKit's here"
            );
            continue;
        }
        let work = store.path().join(name);
        let context = work.join("context");
        write_conformance_context(case, &context);
        let mut spec = serde_json::json!({ "build_args": case["args"] });
        if let Some(target) = case["target"].as_str() {
            spec["target"] = Value::from(target);
        }
        let fixture = Case {
            name: name.clone(),
            dir: work.clone(),
            spec,
        };
        let docker_result = build_with_docker(&fixture, &context, &work, &mut images);
        let kiln_result = build_with_kiln(&kiln, &fixture, &context, &work);
        let problems = match (&kiln_result, &docker_result) {
            (Ok(ours), Ok((theirs, _))) => {
                compared += 1;
                let mut targets = mount_targets(&context, &fixture);
                if let Some(volumes) = theirs.config["Volumes"].as_object() {
                    targets.extend(
                        volumes
                            .keys()
                            .map(|volume| volume.trim_matches('/').to_string()),
                    );
                }
                differences(ours, theirs, &targets)
            }
            (Ok(_), Err(error)) => {
                // Buildah's suite has cases the reference engine rejects too.
                eprintln!(
                    "docker-failed {name}: {}",
                    error.lines().last().unwrap_or_default()
                );
                docker_failed += 1;
                Vec::new()
            }
            (Err(error), Err(_)) => {
                eprintln!(
                    "both-fail {name}: {}",
                    error.lines().next().unwrap_or_default()
                );
                Vec::new()
            }
            (Err(error), Ok(_)) => vec![error.clone()],
        };
        let _ = fs::remove_dir_all(&work);
        let bug = CONFORMANCE_KNOWN
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, bug)| *bug);
        match (bug, problems.is_empty()) {
            (_, true) => eprintln!("same      {name}"),
            (Some(bug), false) => {
                eprintln!("known     {name} ({bug}):\n  {}", problems.join("\n  "));
                known += 1;
            }
            (None, false) => {
                eprintln!("DIFFERENT {name}:\n  {}", problems.join("\n  "));
                failures.push(format!("{name}:\n  {}", problems.join("\n  ")));
            }
        }
    }
    eprintln!(
        "{} conformance cases: {compared} compared, {known} known differences, {docker_failed} \
         Docker could not build, {} failures",
        cases.len(),
        failures.len(),
    );
    assert!(
        failures.is_empty(),
        "kiln differs from Docker:\n{}",
        failures.join("\n")
    );
}
