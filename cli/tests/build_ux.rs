//! `kiln build`'s interface: the progress modes (`tty` through a pty, `rawjson` line by line),
//! `--pull` from a local registry, `--platform`, `--ssh` and `--check`. Needs root and
//! busybox-static (skips with a printed reason otherwise).
#![allow(clippy::print_stderr)]

mod common;

use std::fs;
use std::path::PathBuf;

use common::{LoopbackRegistry, busybox_store, kiln, run_on_pty};

/// Writes `files` (path, content) into `dir/ctx` and returns that path.
fn context(dir: &tempfile::TempDir, files: &[(&str, &str)]) -> PathBuf {
    let root = dir.path().join("ctx");
    for (path, content) in files {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
    fs::create_dir_all(&root).unwrap();
    root
}

fn stderr(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stderr).to_string()
}

fn stdout(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stdout).to_string()
}

/// The terminal's text without ANSI escape sequences and carriage returns.
fn strip_ansi(text: &str) -> String {
    let mut plain = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            other => plain.push(other),
        }
    }
    plain
}

/// The last frame the tty view drew: what follows the last "cursor to the previous lines".
fn last_frame(text: &str) -> String {
    let start = text
        .rmatch_indices("\x1b[")
        .find(|(index, _)| {
            let rest = &text[index + 2..];
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            digits > 0 && rest[digits..].starts_with('F')
        })
        .map_or(0, |(index, _)| index);
    strip_ansi(&text[start..])
}

#[test]
fn tty_progress_redraws_steps_and_ends_with_the_summary() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(
        &dir,
        &[(
            "Dockerfile",
            "FROM busybox\n\
             RUN for i in 1 2 3 4 5 6 7 8; do echo tick-$i; sleep 0.1; done\n\
             RUN echo second\n",
        )],
    );
    let (screen, code) = run_on_pty(
        &dir,
        &[
            "build",
            "--progress",
            "tty",
            "-t",
            "ux:1",
            ctx.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{screen}");
    let plain = strip_ansi(&screen);
    // Live frames: the header with counts, step lines, output of the running step.
    assert!(plain.contains("[+] Building "), "{plain}");
    assert!(
        screen.contains("F\x1b[") || screen.contains("F["),
        "redrawn: {screen:?}"
    );
    assert!(plain.contains(" => => # tick-"), "running output: {plain}");
    // No line wider than the 97-column pty.
    assert!(
        plain.lines().all(|line| line.chars().count() < 97),
        "{plain}"
    );
    let last = last_frame(&screen);
    let lines: Vec<&str> = last.lines().collect();
    assert!(
        lines[0].starts_with("[+] Building ") && lines[0].ends_with("(5/5) FINISHED"),
        "{last}"
    );
    assert!(
        lines[1].starts_with(" => [internal] load metadata for docker.io/library/busybox:latest"),
        "{last}"
    );
    assert!(
        lines[2].starts_with(" => [stage-0 1/3] FROM busybox"),
        "{last}"
    );
    assert!(
        lines[3].starts_with(" => [stage-0 2/3] RUN for i in"),
        "{last}"
    );
    assert!(lines[3].ends_with('s'), "a timer: {last}");
    assert!(lines[5].starts_with(" => exporting to image"), "{last}");
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with(" => => naming to docker.io/library/ux:1 done"),
        "the summary ends the output: {last}"
    );
    assert!(
        !last.contains(" => => # "),
        "no output in the summary: {last}"
    );
}

#[test]
fn tty_progress_prints_the_failed_steps_whole_log() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(
        &dir,
        &[(
            "Dockerfile",
            "FROM busybox\nRUN for i in 1 2 3 4 5 6 7 8 9; do echo out-$i; done; exit 3\n",
        )],
    );
    let (screen, code) = run_on_pty(
        &dir,
        &["build", "--progress", "tty", ctx.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1, "{screen}");
    let plain = strip_ansi(&screen);
    assert!(plain.contains(") ERROR\n"), "{plain}");
    assert!(
        plain.contains(" => ERROR [stage-0 2/2] RUN for i"),
        "{plain}"
    );
    // All nine lines, not only the last six.
    let log = plain
        .split("------\n")
        .nth(1)
        .unwrap_or_else(|| panic!("{plain}"));
    assert!(log.starts_with(" > [stage-0 2/2] RUN for i"), "{log}");
    for i in 1..=9 {
        assert!(log.contains(&format!("\nout-{i}\n")), "{log}");
    }
    assert!(plain.contains("exit code: 3"), "{plain}");
}

/// Parses every line of `text` as JSON.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line:?}\n{text}"))
        })
        .collect()
}

#[test]
fn rawjson_progress_is_one_solve_status_per_line() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(&dir, &[("Dockerfile", "FROM busybox\nRUN echo hi\n")]);
    let build = || {
        kiln(&dir)
            .args(["build", "--progress", "rawjson", "-t", "raw:1"])
            .arg(&ctx)
            .assert()
            .success()
    };
    let first = build();
    assert_eq!(stdout(&first), "", "progress goes to stderr");
    let events = json_lines(&stderr(&first));
    let vertexes: Vec<&serde_json::Value> = events
        .iter()
        .filter_map(|event| event["vertexes"].as_array())
        .flatten()
        .collect();
    let run: Vec<&&serde_json::Value> = vertexes
        .iter()
        .filter(|vertex| vertex["name"] == "[stage-0 2/2] RUN echo hi")
        .collect();
    assert!(run.len() >= 2, "started, then completed: {vertexes:#?}");
    let digest = run[0]["digest"].as_str().unwrap();
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert!(run[0]["started"].is_string());
    let done = run.last().unwrap();
    assert!(done["completed"].is_string(), "{done}");
    assert!(done.get("error").is_none(), "{done}");
    let logs: Vec<&serde_json::Value> = events
        .iter()
        .filter_map(|event| event["logs"].as_array())
        .flatten()
        .collect();
    assert!(
        logs.iter()
            .any(|log| log["vertex"] == digest && log["data"] == "aGkK" && log["stream"] == 1),
        "\"hi\\n\" base64 in a log of the RUN vertex: {logs:#?}"
    );
    assert!(
        vertexes
            .iter()
            .any(|vertex| vertex["name"] == "exporting to image"),
        "{vertexes:#?}"
    );
    // A rebuild: the RUN vertex is cached.
    let events = json_lines(&stderr(&build()));
    assert!(
        events
            .iter()
            .filter_map(|event| event["vertexes"].as_array())
            .flatten()
            .any(|vertex| vertex["name"] == "[stage-0 2/2] RUN echo hi" && vertex["cached"] == true),
        "{events:#?}"
    );
}

#[test]
fn rawjson_progress_puts_the_error_on_the_failed_vertex() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(&dir, &[("Dockerfile", "FROM busybox\nRUN exit 4\n")]);
    let assert = kiln(&dir)
        .args(["build", "--progress", "rawjson"])
        .arg(&ctx)
        .assert()
        .code(1);
    let text = stderr(&assert);
    // JSON lines, then the error rendered against the Dockerfile.
    let json: String = text
        .lines()
        .take_while(|line| line.starts_with('{'))
        .map(|line| format!("{line}\n"))
        .collect();
    let events = json_lines(&json);
    assert!(
        events
            .iter()
            .filter_map(|event| event["vertexes"].as_array())
            .flatten()
            .any(|vertex| vertex["error"]
                .as_str()
                .is_some_and(|error| error.contains("exit code: 4"))),
        "{events:#?}"
    );
    assert!(text.contains("Dockerfile:2"), "{text}");
}

#[test]
fn auto_progress_is_plain_off_a_terminal_and_quiet_prints_only_the_id() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(&dir, &[("Dockerfile", "FROM busybox\nRUN echo auto\n")]);
    let assert = kiln(&dir).arg("build").arg(&ctx).assert().success();
    let log = stderr(&assert);
    assert!(
        log.starts_with("#1 [internal] load metadata for docker.io/library/busybox:latest\n"),
        "{log}"
    );
    assert!(log.contains("#3 [stage-0 2/2] RUN echo auto\n"), "{log}");
    assert!(!log.contains('\x1b'), "{log:?}");
    let assert = kiln(&dir)
        .args(["build", "--progress", "quiet"])
        .arg(&ctx)
        .assert()
        .success();
    assert_eq!(stderr(&assert), "");
    assert!(
        stdout(&assert).starts_with("sha256:"),
        "{}",
        stdout(&assert)
    );
    kiln(&dir)
        .args(["build", "--progress", "fancy"])
        .arg(&ctx)
        .assert()
        .code(125);
}

#[test]
fn a_build_pulls_a_missing_base_image_and_pull_refreshes_it() {
    let Some(source) = busybox_store(&[], &[]) else {
        return;
    };
    let Some(registry) = LoopbackRegistry::start() else {
        return;
    };
    let remote = format!("{}/busybox:latest", registry.domain);
    kiln(&source)
        .args(["tag", "busybox", &remote])
        .assert()
        .success();
    kiln(&source).args(["push", &remote]).assert().success();
    // A fresh store: the base comes from the registry.
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(
        &dir,
        &[(
            "Dockerfile",
            &format!(
                "FROM {}/busybox\nRUN echo pulled > /pulled\n",
                registry.domain
            ),
        )],
    );
    let assert = kiln(&dir)
        .args(["build", "--progress", "plain", "-t", "pulled:1"])
        .arg(&ctx)
        .assert()
        .success();
    let log = stderr(&assert);
    assert!(
        log.contains(&format!(
            "#1 [internal] load metadata for {}/busybox:latest\n",
            registry.domain
        )),
        "{log}"
    );
    assert!(log.contains("RUN echo pulled"), "{log}");
    let images = kiln(&dir)
        .args(["images", "--format", "{{.Repository}}"])
        .assert()
        .success();
    let images = stdout(&images);
    assert!(
        images
            .lines()
            .any(|line| line == format!("{}/busybox", registry.domain)),
        "the base is in the store: {images}"
    );
    let run = kiln(&dir)
        .args(["run", "--rm", "pulled:1", "cat", "/pulled"])
        .assert()
        .success();
    assert_eq!(stdout(&run), "pulled\n");
    // --pull asks the registry again (the tag is up to date) and the build is cached.
    let assert = kiln(&dir)
        .args(["build", "--pull", "--progress", "plain"])
        .arg(&ctx)
        .assert()
        .success();
    assert!(stderr(&assert).contains("CACHED"), "{}", stderr(&assert));
    // With the registry gone, --pull fails at the FROM line; without it the stored image serves.
    drop(registry);
    let assert = kiln(&dir)
        .args(["build", "--pull", "--progress", "plain"])
        .arg(&ctx)
        .assert()
        .code(1);
    let log = stderr(&assert);
    assert!(
        log.contains("Dockerfile:1:6: failed to resolve source image"),
        "{log}"
    );
    kiln(&dir)
        .args(["build", "--progress", "plain"])
        .arg(&ctx)
        .assert()
        .success();
}

#[test]
fn platform_args_follow_the_host_platform_and_others_are_refused() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(
        &dir,
        &[(
            "Dockerfile",
            "FROM --platform=$BUILDPLATFORM busybox AS build\n\
             ARG TARGETPLATFORM TARGETOS TARGETARCH TARGETVARIANT BUILDPLATFORM\n\
             RUN echo \"$TARGETPLATFORM $TARGETOS $TARGETARCH [$TARGETVARIANT] $BUILDPLATFORM\" > /platform\n\
             FROM busybox\n\
             COPY --from=build /platform /\n",
        )],
    );
    let host = format!(
        "linux/{}",
        std::env::consts::ARCH
            .replace("x86_64", "amd64")
            .replace("aarch64", "arm64")
    );
    let arch = host.trim_start_matches("linux/").to_string();
    kiln(&dir)
        .args(["build", "--platform", &host, "-t", "plat:1"])
        .arg(&ctx)
        .assert()
        .success();
    let run = kiln(&dir)
        .args(["run", "--rm", "plat:1", "cat", "/platform"])
        .assert()
        .success();
    assert_eq!(stdout(&run), format!("{host} linux {arch} [] {host}\n"));
    // Another platform: no emulation, a clear refusal before anything runs.
    let other = if arch == "amd64" {
        "linux/arm64"
    } else {
        "linux/amd64"
    };
    let assert = kiln(&dir)
        .args(["build", "--platform", other])
        .arg(&ctx)
        .assert()
        .code(125);
    let log = stderr(&assert);
    assert!(
        log.contains(&format!("platform \"{other}\" is not supported"))
            && log.contains("no emulation"),
        "{log}"
    );
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM busybox AS unused\nFROM --platform={other} busybox\nRUN true\n"),
    )
    .unwrap();
    let assert = kiln(&dir).arg("build").arg(&ctx).assert().code(1);
    let log = stderr(&assert);
    assert!(log.contains("Dockerfile:2:"), "{log}");
    assert!(log.contains("is not supported"), "{log}");
}

#[test]
fn ssh_mounts_bind_the_agent_socket_only_while_the_step_runs() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let agent = dir.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&agent).unwrap();
    let ctx = context(
        &dir,
        &[(
            "Dockerfile",
            "FROM busybox\n\
             RUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && echo \"$SSH_AUTH_SOCK\" > /default\n\
             RUN --mount=type=ssh,id=deploy,target=/agent.sock,required=true test -S /agent.sock && echo ok > /deploy\n",
        )],
    );
    let agent_arg = agent.to_str().unwrap();
    kiln(&dir)
        .args(["build", "-t", "ssh:1", "--ssh", "default"])
        .args(["--ssh", &format!("deploy={agent_arg}")])
        .env("SSH_AUTH_SOCK", agent_arg)
        .arg(&ctx)
        .assert()
        .success();
    let run = kiln(&dir)
        .args([
            "run",
            "--rm",
            "ssh:1",
            "sh",
            "-c",
            "cat /default /deploy; test -e /run/buildkit || test -e /agent.sock || echo clean",
        ])
        .assert()
        .success();
    assert_eq!(stdout(&run), "/run/buildkit/ssh_agent.0\nok\nclean\n");
    // Nothing of the host's socket path in the image's config or history.
    let inspect = kiln(&dir)
        .args(["image", "inspect", "ssh:1"])
        .assert()
        .success();
    assert!(!stdout(&inspect).contains(agent_arg));
    let history = kiln(&dir)
        .args(["history", "--no-trunc", "ssh:1"])
        .assert()
        .success();
    assert!(!stdout(&history).contains(agent_arg));
    // A required socket that was not given fails at the RUN line.
    let assert = kiln(&dir)
        .args(["build", "--no-cache", "--ssh", "default"])
        .env("SSH_AUTH_SOCK", agent_arg)
        .arg(&ctx)
        .assert()
        .code(1);
    let log = stderr(&assert);
    assert!(
        log.contains("Dockerfile:3:") && log.contains("no SSH agent socket with id \"deploy\""),
        "{log}"
    );
    // --ssh wants a socket, not a key file.
    let assert = kiln(&dir)
        .args([
            "build",
            "--ssh",
            &format!("deploy={}", ctx.join("Dockerfile").display()),
        ])
        .arg(&ctx)
        .assert()
        .code(125);
    assert!(
        stderr(&assert).contains("is not a socket"),
        "{}",
        stderr(&assert)
    );
}

#[test]
fn check_lints_without_building() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let images = |dir: &tempfile::TempDir| {
        let assert = kiln(dir).args(["images", "-q"]).assert().success();
        stdout(&assert).lines().count()
    };
    let before = images(&dir);
    let ctx = context(
        &dir,
        &[(
            "Dockerfile",
            "FROM busybox as base\nRUN echo never-run > /x\n",
        )],
    );
    let assert = kiln(&dir)
        .args(["build", "--check", "-t", "checked:1"])
        .arg(&ctx)
        .assert()
        .success();
    assert!(
        stdout(&assert).contains("FromAsCasing"),
        "{}",
        stdout(&assert)
    );
    assert!(
        !stderr(&assert).contains("never-run"),
        "{}",
        stderr(&assert)
    );
    assert_eq!(images(&dir), before, "nothing was built");
    fs::write(
        ctx.join("Dockerfile"),
        "# check=error=true\nFROM busybox as base\nRUN true\n",
    )
    .unwrap();
    let assert = kiln(&dir)
        .args(["build", "--check"])
        .arg(&ctx)
        .assert()
        .code(1);
    assert!(
        stdout(&assert).contains("FromAsCasing"),
        "{}",
        stdout(&assert)
    );
    assert_eq!(images(&dir), before);
}
