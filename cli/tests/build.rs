//! `kiln build` end to end: real RUN steps in the runtime's sandbox, the build cache, COPY
//! semantics, errors pointing at the Dockerfile. Needs root and busybox-static (skips with a
//! printed reason otherwise).

mod common;

use std::fs;
use std::path::Path;

use common::{busybox_store, kiln};

/// Writes `files` (path, content) into `dir/ctx` and returns that path.
fn context(dir: &tempfile::TempDir, files: &[(&str, &str)]) -> std::path::PathBuf {
    let root = dir.path().join("ctx");
    for (path, content) in files {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
    fs::create_dir_all(&root).unwrap();
    root
}

fn build(dir: &tempfile::TempDir, context: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    kiln(dir).arg("build").args(extra).arg(context).assert()
}

fn stderr(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stderr).to_string()
}

fn stdout(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stdout).to_string()
}

fn run_output(dir: &tempfile::TempDir, args: &[&str]) -> String {
    let assert = kiln(dir)
        .arg("run")
        .arg("--rm")
        .args(args)
        .assert()
        .success();
    stdout(&assert)
}

#[test]
fn a_build_runs_copies_and_the_image_runs() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(
        &dir,
        &[
            (
                "Dockerfile",
                "FROM busybox\n\
                 RUN echo built > /built && echo to-the-log\n\
                 COPY a.txt /app/\n\
                 COPY dir /app/dir\n\
                 WORKDIR /app\n\
                 ENV GREETING=hello\n\
                 CMD [\"sh\", \"-c\", \"cat /built a.txt dir/b.txt; echo $GREETING; pwd\"]\n",
            ),
            ("a.txt", "file a\n"),
            ("dir/b.txt", "file b\n"),
        ],
    );
    let assert = build(&dir, &ctx, &["-t", "app:1"]).success();
    let log = stderr(&assert);
    assert!(log.contains("RUN echo built"), "{log}");
    assert!(log.contains(" to-the-log"), "RUN output is shown: {log}");
    assert!(
        log.contains("naming to docker.io/library/app:1 done"),
        "{log}"
    );
    assert_eq!(
        run_output(&dir, &["app:1"]),
        "built\nfile a\nfile b\nhello\n/app\n"
    );
    // History as docker shows it: one entry per instruction.
    let history = kiln(&dir)
        .args(["history", "--format", "{{.CreatedBy}}", "app:1"])
        .assert()
        .success();
    let history = stdout(&history);
    assert!(history.contains("RUN /bin/sh -c echo built"), "{history}");
    assert!(history.contains("ENV GREETING=hello"), "{history}");
}

#[test]
fn the_cache_reuses_unchanged_steps_and_explains_misses() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(
        &dir,
        &[
            (
                "Dockerfile",
                "FROM busybox\nRUN echo one > /one\nCOPY a.txt /a.txt\nRUN cat /a.txt > /copy\n",
            ),
            ("a.txt", "first\n"),
            ("unrelated.txt", "x\n"),
        ],
    );
    let first = build(&dir, &ctx, &["-q"]).success();
    let first_id = stdout(&first);
    assert!(first_id.starts_with("sha256:"), "{first_id}");
    // Unchanged (and an unrelated file touched): everything cached, same image.
    fs::write(ctx.join("unrelated.txt"), "y\n").unwrap();
    let second = build(&dir, &ctx, &[]).success();
    let log = stderr(&second);
    assert_eq!(log.matches("CACHED").count(), 3, "{log}");
    let again = build(&dir, &ctx, &["-q"]).success();
    assert_eq!(
        stdout(&again),
        first_id,
        "a cached rebuild gives the same image ID"
    );
    // A changed file: the RUN before it stays cached, the COPY and what follows run again.
    fs::write(ctx.join("a.txt"), "second\n").unwrap();
    let third = build(&dir, &ctx, &["--explain-cache", "-t", "cached:1"]).success();
    let log = stderr(&third);
    assert_eq!(log.matches("CACHED").count(), 1, "{log}");
    assert!(log.contains("cache miss: a.txt changed"), "{log}");
    assert_eq!(run_output(&dir, &["cached:1", "cat", "/copy"]), "second\n");
    // --no-cache runs everything.
    let fourth = build(&dir, &ctx, &["--no-cache"]).success();
    assert_eq!(stderr(&fourth).matches("CACHED").count(), 0);
    // The records are listed and pruned.
    let du = kiln(&dir).args(["builder", "du"]).assert().success();
    assert!(stdout(&du).contains("Records:"), "{}", stdout(&du));
    kiln(&dir)
        .args(["builder", "prune", "-f"])
        .assert()
        .success();
    let after = build(&dir, &ctx, &[]).success();
    assert_eq!(
        stderr(&after).matches("CACHED").count(),
        0,
        "pruned cache is gone"
    );
}

#[test]
fn stages_build_in_parallel_and_copy_from_each_other() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(
        &dir,
        &[(
            "Dockerfile",
            "FROM busybox AS one\nRUN mkdir -p /out && echo from-one > /out/one\n\
             FROM busybox AS two\nRUN echo from-two > /two\n\
             FROM busybox AS unused\nRUN exit 1\n\
             FROM busybox\nCOPY --from=one /out /result\nCOPY --from=1 /two /result/two\n\
             CMD [\"cat\", \"/result/one\", \"/result/two\"]\n",
        )],
    );
    build(&dir, &ctx, &["-t", "multi"]).success();
    assert_eq!(run_output(&dir, &["multi"]), "from-one\nfrom-two\n");
    // --target builds only what that stage needs.
    build(&dir, &ctx, &["--target", "two", "-t", "two"]).success();
    assert_eq!(run_output(&dir, &["two", "cat", "/two"]), "from-two\n");
    let unknown = build(&dir, &ctx, &["--target", "nope"]).failure();
    assert!(stderr(&unknown).contains("target stage \"nope\" could not be found"));
}

#[test]
fn build_args_reach_run_steps_and_unused_ones_are_reported() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(
        &dir,
        &[(
            "Dockerfile",
            "ARG BASE=busybox\nFROM $BASE\nARG V=default\nENV FROM_ARG=$V\nRUN echo $V > /v\n",
        )],
    );
    build(&dir, &ctx, &["-t", "args:default"]).success();
    assert_eq!(
        run_output(&dir, &["args:default", "cat", "/v"]),
        "default\n"
    );
    let assert = build(
        &dir,
        &ctx,
        &[
            "--build-arg",
            "V=given",
            "--build-arg",
            "NOBODY=1",
            "-t",
            "args:given",
        ],
    )
    .success();
    assert!(
        stderr(&assert).contains("build-args [NOBODY] were not consumed"),
        "{}",
        stderr(&assert)
    );
    assert_eq!(run_output(&dir, &["args:given", "cat", "/v"]), "given\n");
    assert_eq!(
        run_output(&dir, &["args:given", "sh", "-c", "echo $FROM_ARG"]),
        "given\n"
    );
}

#[test]
fn failures_point_at_the_dockerfile_line() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(
        &dir,
        &[(
            "Dockerfile",
            "FROM busybox\nRUN true\nRUN echo oops && exit 3\n",
        )],
    );
    let assert = build(&dir, &ctx, &[]).failure().code(1);
    let log = stderr(&assert);
    assert!(log.contains("Dockerfile:3:1: process \"/bin/sh -c echo oops && exit 3\" did not complete successfully: exit code: 3"), "{log}");
    assert!(log.contains("3 | RUN echo oops && exit 3"), "{log}");
    fs::write(ctx.join("Dockerfile"), "FROM busybox\nCOPY missing.txt /\n").unwrap();
    let assert = build(&dir, &ctx, &[]).failure().code(1);
    let log = stderr(&assert);
    assert!(
        log.contains("Dockerfile:2:1:") && log.contains("not found"),
        "{log}"
    );
    fs::write(ctx.join("Dockerfile"), "FROM nosuchimage\n").unwrap();
    let assert = build(&dir, &ctx, &[]).failure().code(1);
    assert!(
        stderr(&assert).contains("Dockerfile:1:6: failed to resolve source image nosuchimage"),
        "{}",
        stderr(&assert)
    );
    fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nCOPY --parents a/b /\n",
    )
    .unwrap();
    let assert = build(&dir, &ctx, &[]).failure().code(1);
    assert!(
        stderr(&assert)
            .contains("Dockerfile:2:1: COPY --parents and --exclude are not supported yet"),
        "{}",
        stderr(&assert)
    );
    fs::write(ctx.join("Dockerfile"), "FROM busybox\nRUN --bogus true\n").unwrap();
    let assert = build(&dir, &ctx, &[]).failure().code(1);
    assert!(
        stderr(&assert).contains("Dockerfile:2:"),
        "{}",
        stderr(&assert)
    );
    // No store garbage left behind by failed steps.
    let tmp = dir.path().join("store/tmp");
    let left: Vec<_> = fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "tmp/ is clean: {left:?}");
}

#[test]
fn copy_follows_docker_rules_and_dockerignore() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(
        &dir,
        &[
            (
                "Dockerfile",
                "FROM busybox\n\
                 COPY --chown=app:app --chmod=0640 owned.txt /owned\n\
                 COPY *.rs /src/\n\
                 COPY . /ctx\n\
                 ADD archive.tar /unpacked/\n\
                 COPY <<EOF /heredoc.txt\nfrom a heredoc\nEOF\n",
            ),
            ("owned.txt", "mine\n"),
            ("a.rs", "a\n"),
            ("b.rs", "b\n"),
            ("secret.key", "do not copy\n"),
            (".dockerignore", "secret.key\n"),
        ],
    );
    let staged = dir.path().join("staged");
    fs::create_dir_all(staged.join("inner")).unwrap();
    fs::write(staged.join("inner/packed.txt"), "packed\n").unwrap();
    let tar = std::process::Command::new("tar")
        .arg("-C")
        .arg(&staged)
        .arg("-cf")
        .arg(ctx.join("archive.tar"))
        .arg("inner")
        .status()
        .unwrap();
    assert!(tar.success());
    build(&dir, &ctx, &["-t", "copies"]).success();
    assert_eq!(
        run_output(&dir, &["copies", "stat", "-c", "%u:%g %a", "/owned"]),
        "1000:1000 640\n"
    );
    assert_eq!(run_output(&dir, &["copies", "ls", "/src"]), "a.rs\nb.rs\n");
    assert_eq!(
        run_output(
            &dir,
            &["copies", "sh", "-c", "ls /ctx | sort | tr '\\n' ' '"]
        ),
        "Dockerfile a.rs archive.tar b.rs owned.txt "
    );
    assert_eq!(
        run_output(&dir, &["copies", "cat", "/unpacked/inner/packed.txt"]),
        "packed\n"
    );
    assert_eq!(
        run_output(&dir, &["copies", "cat", "/heredoc.txt"]),
        "from a heredoc\n"
    );
}

#[test]
fn copy_destinations_stay_inside_the_image() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    // A directory outside every root, which a symlink in the image points at.
    let outside = dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let ctx = context(
        &dir,
        &[
            (
                "Dockerfile",
                &format!(
                    "FROM busybox\nRUN ln -s {} /escape && ln -s ../../../../../../{} /relative\n\
                     COPY payload /escape/\nCOPY payload /relative/\n",
                    outside.display(),
                    outside.display()
                ),
            ),
            ("payload", "payload\n"),
        ],
    );
    build(&dir, &ctx, &["-t", "contained"]).success();
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing was written outside the image"
    );
    let inside = format!("{}/payload", outside.display());
    assert_eq!(
        run_output(&dir, &["contained", "cat", &inside]),
        "payload\n"
    );
}

#[test]
fn source_date_epoch_makes_builds_reproducible() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(
        &dir,
        &[
            (
                "Dockerfile",
                "FROM busybox\nCOPY a.txt /a.txt\nRUN mkdir /made && echo same > /made/file\n",
            ),
            ("a.txt", "a\n"),
        ],
    );
    let first = build(
        &dir,
        &ctx,
        &[
            "-q",
            "--no-cache",
            "--build-arg",
            "SOURCE_DATE_EPOCH=1700000000",
        ],
    )
    .success();
    let second = build(
        &dir,
        &ctx,
        &[
            "-q",
            "--no-cache",
            "--build-arg",
            "SOURCE_DATE_EPOCH=1700000000",
        ],
    )
    .success();
    assert_eq!(stdout(&first), stdout(&second));
}

#[test]
fn a_dockerfile_from_stdin_builds_without_context() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let assert = kiln(&dir)
        .args(["build", "-q", "-"])
        .write_stdin("FROM busybox\nRUN echo piped > /p\n")
        .assert()
        .success();
    let id = stdout(&assert).trim().to_string();
    assert_eq!(run_output(&dir, &[&id, "cat", "/p"]), "piped\n");
}

#[test]
fn parse_errors_exit_1_with_location() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(&dir, &[("Dockerfile", "FROM busybox\nCOPY\n")]);
    let assert = build(&dir, &ctx, &[]).failure().code(1);
    assert!(
        stderr(&assert).contains("Dockerfile:2:"),
        "{}",
        stderr(&assert)
    );
    let missing = kiln(&dir)
        .args(["build", "/nonexistent-context-dir"])
        .assert()
        .failure()
        .code(125);
    assert!(stderr(&missing).contains("not found"));
}

#[test]
fn run_mounts_cache_secret_tmpfs_and_bind() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(
        &dir,
        &[
            (
                "Dockerfile",
                "FROM busybox\n\
                 RUN --mount=type=cache,target=/cache,id=c1 echo run >> /cache/log && wc -l < /cache/log > /runs\n\
                 RUN --mount=type=secret,id=token cat /run/secrets/token > /seen-secret-length.txt && wc -c < /run/secrets/token > /secret-length\n\
                 RUN --mount=type=secret,id=token,env=TOKEN test \"$TOKEN\" = s3cret\n\
                 RUN --mount=type=tmpfs,target=/scratch grep -q ' /scratch tmpfs' /proc/mounts && touch /scratch/x\n\
                 RUN --mount=type=bind,source=data,target=/data cat /data/value > /from-bind\n",
            ),
            ("data/value", "bound\n"),
        ],
    );
    let secret = dir.path().join("token.txt");
    fs::write(&secret, "s3cret").unwrap();
    let secret_arg = format!("id=token,src={}", secret.display());
    build(&dir, &ctx, &["--secret", &secret_arg, "-t", "mounts:1"]).success();
    assert_eq!(run_output(&dir, &["mounts:1", "cat", "/runs"]), "1\n");
    // The cache mount keeps its content across builds, even without the build cache.
    build(
        &dir,
        &ctx,
        &["--secret", &secret_arg, "--no-cache", "-t", "mounts:2"],
    )
    .success();
    assert_eq!(run_output(&dir, &["mounts:2", "cat", "/runs"]), "2\n");
    assert_eq!(
        run_output(&dir, &["mounts:2", "cat", "/secret-length"]),
        "6\n"
    );
    assert_eq!(
        run_output(&dir, &["mounts:2", "cat", "/from-bind"]),
        "bound\n"
    );
    // Nothing of the mounts is in the image: no secret content, no tmpfs or cache files.
    let listing = run_output(
        &dir,
        &[
            "mounts:2",
            "sh",
            "-c",
            "ls -A /cache /scratch; cat /run/secrets/token 2>/dev/null; true",
        ],
    );
    assert!(!listing.contains("s3cret"), "{listing}");
    assert!(
        !listing.contains("log") && !listing.contains('x'),
        "{listing}"
    );
    // A required secret that was not given fails at its line.
    fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN --mount=type=secret,id=absent,required=true true\n",
    )
    .unwrap();
    let assert = build(&dir, &ctx, &[]).failure().code(1);
    assert!(
        stderr(&assert).contains("Dockerfile:2:"),
        "{}",
        stderr(&assert)
    );
}
