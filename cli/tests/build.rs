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
        stderr(&assert).contains("Dockerfile:2:1:") && stderr(&assert).contains("not found"),
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

fn inspect(dir: &tempfile::TempDir, format: &str, image: &str) -> String {
    let assert = kiln(dir)
        .args(["inspect", "--format", format, image])
        .assert()
        .success();
    stdout(&assert).trim().to_string()
}

#[test]
fn onbuild_triggers_run_after_from_and_are_consumed() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let parent = context(
        &dir,
        &[(
            "Dockerfile",
            "FROM busybox\nONBUILD COPY child.txt /from-child.txt\nONBUILD RUN echo triggered > /triggered\n",
        )],
    );
    build(&dir, &parent, &["-t", "parent"]).success();
    assert_eq!(
        inspect(&dir, "{{json .Config.OnBuild}}", "parent"),
        r#"["COPY child.txt /from-child.txt","RUN echo triggered > /triggered"]"#
    );
    // The triggers run in the child's context, right after its FROM, in order.
    let child = dir.path().join("child");
    fs::create_dir_all(&child).unwrap();
    fs::write(child.join("child.txt"), "child content\n").unwrap();
    fs::write(
        child.join("Dockerfile"),
        "FROM parent\nRUN cat /from-child.txt /triggered > /seen\n",
    )
    .unwrap();
    let assert = build(&dir, &child, &["-t", "child"]).success();
    assert!(
        stderr(&assert).contains("ONBUILD RUN echo triggered"),
        "{}",
        stderr(&assert)
    );
    assert_eq!(
        run_output(&dir, &["child", "cat", "/seen"]),
        "child content\ntriggered\n"
    );
    assert_eq!(
        inspect(&dir, "{{json .Config.OnBuild}}", "child"),
        "null",
        "triggers are not inherited by grandchildren"
    );
    // A cached rebuild gives the same image.
    let first = inspect(&dir, "{{.Id}}", "child");
    let again = build(&dir, &child, &["-q"]).success();
    assert_eq!(stdout(&again).trim(), first);
    // Within one Dockerfile: a stage FROM a stage with ONBUILD.
    fs::write(
        child.join("Dockerfile"),
        "FROM busybox AS base\nONBUILD RUN echo stage-trigger > /stage\nFROM base\nRUN cat /stage\n",
    )
    .unwrap();
    build(&dir, &child, &["-t", "staged"]).success();
    assert_eq!(
        run_output(&dir, &["staged", "cat", "/stage"]),
        "stage-trigger\n"
    );
    // A failing trigger points at the FROM line.
    fs::write(
        child.join("Dockerfile"),
        "FROM busybox AS base\nONBUILD RUN exit 4\n\nFROM base\nRUN true\n",
    )
    .unwrap();
    let assert = build(&dir, &child, &[]).failure().code(1);
    let log = stderr(&assert);
    assert!(log.contains("Dockerfile:4:1: ONBUILD RUN exit 4:"), "{log}");
}

#[test]
fn chmod_is_octal_or_symbolic_and_workdir_belongs_to_the_user() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(
        &dir,
        &[
            (
                "Dockerfile",
                "FROM busybox\n\
                 COPY --chmod=u+x,g-w,o=r plain.txt /plain\n\
                 COPY --chmod=u=rwX,go=rX tree /tree\n\
                 COPY --chmod=g=u --from=busybox /etc/passwd /passwd\n\
                 USER app\n\
                 WORKDIR /home/app/work\n\
                 USER root\n\
                 WORKDIR /rootdir\n",
            ),
            ("plain.txt", "p\n"),
            ("tree/file", "f\n"),
            ("tree/sub/script", "s\n"),
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(ctx.join("plain.txt"), fs::Permissions::from_mode(0o664)).unwrap();
    fs::set_permissions(ctx.join("tree/file"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(
        ctx.join("tree/sub/script"),
        fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    fs::set_permissions(ctx.join("tree/sub"), fs::Permissions::from_mode(0o700)).unwrap();
    build(&dir, &ctx, &["-t", "modes"]).success();
    let stat = |path: &str| run_output(&dir, &["modes", "stat", "-c", "%a %u:%g", path]);
    assert_eq!(stat("/plain"), "744 0:0\n");
    assert_eq!(stat("/tree/file"), "644 0:0\n");
    assert_eq!(stat("/tree/sub"), "755 0:0\n");
    assert_eq!(stat("/tree/sub/script"), "755 0:0\n");
    assert_eq!(stat("/passwd"), "664 0:0\n");
    assert_eq!(stat("/home/app/work"), "755 1000:1000\n");
    assert_eq!(stat("/home/app"), "755 1000:1000\n");
    assert_eq!(stat("/rootdir"), "755 0:0\n");
    fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nCOPY --chmod=u+y plain.txt /\n",
    )
    .unwrap();
    let assert = build(&dir, &ctx, &[]).failure().code(1);
    assert!(
        stderr(&assert).contains("Dockerfile:2:1: invalid --chmod=u+y"),
        "{}",
        stderr(&assert)
    );
}

#[test]
fn copy_from_wildcards_parents_and_exclude() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(
        &dir,
        &[
            (
                "Dockerfile",
                "FROM busybox AS files\n\
                 RUN mkdir -p /out/a /out/b && echo 1 > /out/a/one.txt && echo 2 > /out/b/two.txt && echo x > /out/a/skip.log\n\
                 FROM busybox\n\
                 COPY --from=files /out/*/*.txt /flat/\n\
                 COPY --from=files --exclude=**/*.log /out/ /excluded/\n\
                 COPY --parents src/*/main.rs /parents/\n\
                 COPY --parents ./src/./lib/*.rs /pivot/\n\
                 COPY --exclude=*.md --exclude=private docs /docs\n\
                 COPY --exclude=b.rs src/lib/*.rs /rs/\n\
                 COPY --from=files --parents /out/a/one.txt /stage-parents/\n",
            ),
            ("src/app/main.rs", "app\n"),
            ("src/tool/main.rs", "tool\n"),
            ("src/lib/a.rs", "a\n"),
            ("src/lib/b.rs", "b\n"),
            ("docs/guide.txt", "guide\n"),
            ("docs/readme.md", "md\n"),
            ("docs/private/secret.txt", "secret\n"),
        ],
    );
    build(&dir, &ctx, &["-t", "copies"]).success();
    let find = |path: &str| {
        run_output(
            &dir,
            &[
                "copies",
                "sh",
                "-c",
                &format!("cd {path} && find . -type f | sort | tr '\\n' ' '"),
            ],
        )
    };
    assert_eq!(find("/flat"), "./one.txt ./two.txt ");
    assert_eq!(find("/excluded"), "./a/one.txt ./b/two.txt ");
    assert_eq!(find("/parents"), "./src/app/main.rs ./src/tool/main.rs ");
    assert_eq!(find("/pivot"), "./lib/a.rs ./lib/b.rs ");
    assert_eq!(find("/docs"), "./guide.txt ");
    assert_eq!(find("/rs"), "./a.rs ");
    assert_eq!(find("/stage-parents"), "./out/a/one.txt ");
    // Changing an excluded file changes nothing: every step is cached.
    fs::write(ctx.join("docs/readme.md"), "changed\n").unwrap();
    let assert = build(&dir, &ctx, &[]).success();
    let log = stderr(&assert);
    assert_eq!(log.matches("CACHED").count(), 8, "{log}");
}

#[test]
fn outputs_write_directories_tars_and_image_archives() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(
        &dir,
        &[(
            "Dockerfile",
            "FROM busybox AS build\nRUN mkdir /out && echo artifact > /out/result.txt\n\
             FROM scratch\nCOPY --from=build /out/ /\n",
        )],
    );
    // type=local: the files, no image tagged.
    let local = dir.path().join("local-out");
    let spec = format!("type=local,dest={}", local.display());
    build(&dir, &ctx, &["-o", &spec, "-t", "not-tagged"]).success();
    assert_eq!(
        fs::read_to_string(local.join("result.txt")).unwrap(),
        "artifact\n"
    );
    kiln(&dir)
        .args(["inspect", "not-tagged"])
        .assert()
        .failure();
    // The DIR shorthand.
    let short = dir.path().join("short-out");
    build(&dir, &ctx, &["-o", short.to_str().unwrap()]).success();
    assert!(short.join("result.txt").is_file());
    // type=tar to stdout.
    let assert = build(&dir, &ctx, &["-o", "-"]).success();
    let tar_bytes = assert.get_output().stdout.clone();
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|entry| entry.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(
        names
            .iter()
            .any(|name| name.trim_start_matches("./") == "result.txt"),
        "{names:?}"
    );
    // type=oci with a name: an OCI layout archive that kiln load reads back.
    let oci = dir.path().join("image.oci.tar");
    let spec = format!("type=oci,dest={},name=exported:1", oci.display());
    build(&dir, &ctx, &["-o", &spec]).success();
    let mut archive = tar::Archive::new(fs::File::open(&oci).unwrap());
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|entry| entry.unwrap().path().unwrap().display().to_string())
        .collect();
    for expected in ["oci-layout", "index.json", "manifest.json"] {
        assert!(names.iter().any(|name| name == expected), "{names:?}");
    }
    let other = tempfile::tempdir().unwrap();
    kiln(&other)
        .args(["load", "-i", oci.to_str().unwrap()])
        .assert()
        .success();
    let listed = kiln(&other)
        .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .assert()
        .success();
    assert!(
        stdout(&listed).contains("exported:1"),
        "{}",
        stdout(&listed)
    );
    // type=docker with dest and the -t name.
    let docker = dir.path().join("image.docker.tar");
    let spec = format!("type=docker,dest={}", docker.display());
    build(&dir, &ctx, &["-o", &spec, "-t", "named:2"]).success();
    let mut archive = tar::Archive::new(fs::File::open(&docker).unwrap());
    let mut manifest = String::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().display().to_string() == "manifest.json" {
            std::io::Read::read_to_string(&mut entry, &mut manifest).unwrap();
        }
    }
    assert!(manifest.contains("named:2"), "{manifest}");
    let bad = build(&dir, &ctx, &["-o", "type=oci"]).failure().code(125);
    assert!(stderr(&bad).contains("needs dest"), "{}", stderr(&bad));
}

/// A one-file HTTP server on 127.0.0.1 for the test's lifetime: every GET gets `body` with a
/// `Last-Modified` header. Returns its address.
fn serve_file(body: &'static [u8]) -> std::net::SocketAddr {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            // The request line and headers, up to the blank line.
            while reader.read_line(&mut line).is_ok_and(|read| read > 2) {
                line.clear();
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Tue, 14 Nov 2023 22:13:20 GMT\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(body);
        }
    });
    address
}

#[test]
fn add_downloads_urls_with_checksums() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let address = serve_file(b"downloaded content\n");
    // sha256 of "downloaded content\n".
    let digest = {
        let output = std::process::Command::new("sha256sum")
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(b"downloaded content\n")?;
                child.wait_with_output()
            })
            .unwrap();
        String::from_utf8(output.stdout).unwrap()[..64].to_string()
    };
    let url = format!("http://{address}/files/data.txt?version=1");
    let ctx = context(
        &dir,
        &[(
            "Dockerfile",
            &format!(
                "FROM busybox\nADD {url} /downloads/\nADD --checksum=sha256:{digest} {url} /checked.txt\n"
            ),
        )],
    );
    build(&dir, &ctx, &["-t", "fetched"]).success();
    assert_eq!(
        run_output(&dir, &["fetched", "cat", "/downloads/data.txt"]),
        "downloaded content\n"
    );
    assert_eq!(
        run_output(&dir, &["fetched", "stat", "-c", "%a %Y", "/checked.txt"]),
        "600 1700000000\n",
        "mode 0600 and the Last-Modified time, as Docker"
    );
    // Same content: cached.
    let again = build(&dir, &ctx, &[]).success();
    assert_eq!(
        stderr(&again).matches("CACHED").count(),
        2,
        "{}",
        stderr(&again)
    );
    // A wrong checksum fails the build at its line.
    let wrong = "0".repeat(64);
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM busybox\nADD --checksum=sha256:{wrong} {url} /x\n"),
    )
    .unwrap();
    let assert = build(&dir, &ctx, &[]).failure().code(1);
    let log = stderr(&assert);
    assert!(
        log.contains("Dockerfile:2:1: checksum mismatch for") && log.contains(&digest),
        "{log}"
    );
}

#[test]
#[allow(clippy::print_stderr)] // skip reasons
fn add_checks_out_git_repositories() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let git = |args: &[&str], cwd: &Path| {
        let status = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(cwd)
            .status();
        matches!(status, Ok(status) if status.success())
    };
    let work = dir.path().join("work");
    fs::create_dir_all(work.join("sub")).unwrap();
    fs::write(work.join("top.txt"), "top v1\n").unwrap();
    fs::write(work.join("sub/inner.txt"), "inner\n").unwrap();
    if !git(&["init", "-q"], &work)
        || !git(&["add", "."], &work)
        || !git(&["commit", "-qm", "one"], &work)
        || !git(&["tag", "v1"], &work)
    {
        eprintln!("skipped: git is not usable here");
        return;
    }
    fs::write(work.join("top.txt"), "top v2\n").unwrap();
    assert!(git(&["commit", "-qam", "two"], &work));
    let served = dir.path().join("served");
    fs::create_dir_all(&served).unwrap();
    assert!(git(
        &["clone", "-q", "--bare", work.to_str().unwrap(), "repo.git"],
        &served
    ));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // git-daemon itself (not the `git daemon` wrapper), so killing the child stops it.
    let exec_path = std::process::Command::new("git")
        .arg("--exec-path")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_default();
    let daemon = std::process::Command::new(Path::new(&exec_path).join("git-daemon"))
        .args([
            "--export-all",
            "--reuseaddr",
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            &format!("--base-path={}", served.display()),
        ])
        .arg(&served)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut daemon) = daemon else {
        eprintln!("skipped: git daemon cannot start");
        return;
    };
    let ready = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    if !ready {
        let _ = daemon.kill();
        eprintln!("skipped: git daemon did not listen");
        return;
    }
    let url = format!("git://127.0.0.1:{port}/repo.git");
    let ctx = context(
        &dir,
        &[(
            "Dockerfile",
            &format!(
                "FROM busybox\nADD {url} /latest\nADD {url}#v1:sub /tagged-sub\nADD --keep-git-dir {url}#v1 /with-git\n"
            ),
        )],
    );
    let output = kiln(&dir)
        .args(["build", "-t", "cloned"])
        .arg(&ctx)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr).to_string();
    let result: Result<(), ()> = if output.status.success() {
        Ok(())
    } else {
        Err(())
    };
    let outputs = result.is_ok().then(|| {
        (
            run_output(&dir, &["cloned", "cat", "/latest/top.txt"]),
            run_output(&dir, &["cloned", "cat", "/tagged-sub/inner.txt"]),
            run_output(&dir, &["cloned", "sh", "-c", "test -d /with-git/.git && cat /with-git/top.txt; test -e /latest/.git || echo no-git"]),
        )
    });
    let _ = daemon.kill();
    let _ = daemon.wait();
    let (latest, sub, with_git) = outputs.unwrap_or_else(|| panic!("build failed: {log}"));
    assert_eq!(latest, "top v2\n");
    assert_eq!(sub, "inner\n");
    assert_eq!(with_git, "top v1\nno-git\n");
}

#[test]
fn named_contexts_replace_stages_and_images() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let extra = dir.path().join("extra");
    fs::create_dir_all(&extra).unwrap();
    fs::write(extra.join("named.txt"), "from the named context\n").unwrap();
    // An OCI layout holding an image with a marker file.
    let marker = context(
        &dir,
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo layout > /layout-marker\n",
        )],
    );
    build(&dir, &marker, &["-t", "marker:1"]).success();
    let saved = dir.path().join("marker.tar");
    kiln(&dir)
        .args(["save", "-o", saved.to_str().unwrap(), "marker:1"])
        .assert()
        .success();
    let layout = dir.path().join("layout");
    fs::create_dir_all(&layout).unwrap();
    assert!(
        std::process::Command::new("tar")
            .arg("-xf")
            .arg(&saved)
            .arg("-C")
            .arg(&layout)
            .status()
            .unwrap()
            .success()
    );
    let extra_arg = format!("extra={}", extra.display());
    let layout_arg = format!("base=oci-layout://{}", layout.display());
    let ctx = context(&dir, &[]);
    fs::write(
        ctx.join("Dockerfile"),
        "FROM base AS first\nRUN cat /layout-marker > /seen-layout\n\
         FROM alpine AS final\nCOPY --from=extra named.txt /named.txt\nCOPY --from=first /seen-layout /seen-layout\n\
         RUN --mount=type=bind,from=extra,target=/e cat /e/named.txt > /bound\n\
         RUN --mount=type=cache,id=seed-extra,from=extra,target=/c cat /c/named.txt > /seeded\n",
    )
    .unwrap();
    build(
        &dir,
        &ctx,
        &[
            "--build-context",
            &extra_arg,
            "--build-context",
            &layout_arg,
            "--build-context",
            "alpine=docker-image://busybox:latest",
            "-t",
            "named",
        ],
    )
    .success();
    assert_eq!(
        run_output(
            &dir,
            &[
                "named",
                "cat",
                "/named.txt",
                "/seen-layout",
                "/bound",
                "/seeded"
            ]
        ),
        "from the named context\nlayout\nfrom the named context\nfrom the named context\n"
    );
    // A directory as a FROM base: its files on scratch.
    fs::write(ctx.join("Dockerfile"), "FROM extra\n").unwrap();
    let local = dir.path().join("local-export");
    let spec = format!("type=local,dest={}", local.display());
    build(&dir, &ctx, &["--build-context", &extra_arg, "-o", &spec]).success();
    assert_eq!(
        fs::read_to_string(local.join("named.txt")).unwrap(),
        "from the named context\n"
    );
}

#[test]
fn tar_contexts_from_stdin_and_files() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(
        &dir,
        &[
            ("Dockerfile", "FROM busybox\nCOPY data.txt /data.txt\n"),
            ("data.txt", "from a tar context\n"),
        ],
    );
    let archive = dir.path().join("ctx.tar.gz");
    assert!(
        std::process::Command::new("tar")
            .arg("-czf")
            .arg(&archive)
            .arg("-C")
            .arg(&ctx)
            .arg(".")
            .status()
            .unwrap()
            .success()
    );
    let assert = kiln(&dir)
        .args(["build", "-q", "-"])
        .write_stdin(fs::read(&archive).unwrap())
        .assert()
        .success();
    let id = stdout(&assert).trim().to_string();
    assert_eq!(
        run_output(&dir, &[&id, "cat", "/data.txt"]),
        "from a tar context\n"
    );
    build(&dir, &archive, &["-t", "from-file"]).success();
    assert_eq!(
        run_output(&dir, &["from-file", "cat", "/data.txt"]),
        "from a tar context\n"
    );
}

#[test]
fn run_mounts_from_stages_leave_no_mount_points() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(
        &dir,
        &[
            (
                "Dockerfile",
                "ARG BASE=busybox\n\
                 FROM ${BASE} AS tools\n\
                 RUN mkdir -p /opt/tool /seed && echo tool-data > /opt/tool/data && echo seeded > /seed/file\n\
                 FROM ${BASE}\n\
                 RUN --mount=type=bind,from=tools,source=/opt/tool,target=/mnt/tool cat /mnt/tool/data > /from-stage\n\
                 RUN --mount=type=bind,from=tools,source=/opt/tool,target=/mnt/tool,rw echo scribble > /mnt/tool/data && cat /mnt/tool/data > /rw-seen\n\
                 RUN --mount=type=bind,from=tools,source=/opt/tool,target=/mnt/tool cat /mnt/tool/data > /after-rw\n\
                 RUN --mount=type=bind,source=local,target=/ctx,rw echo changed > /ctx/file && cat /ctx/file > /ctx-rw\n\
                 RUN --mount=type=cache,target=/var/cache/seeded,id=seeded,from=tools,source=/seed cat /var/cache/seeded/file > /cache-seed\n\
                 RUN --mount=type=cache,target=/private,id=p,sharing=private ls /private > /private-list && touch /private/mark\n\
                 RUN --mount=type=secret,id=token cat /run/secrets/token > /dev/null\n",
            ),
            ("local/file", "original\n"),
        ],
    );
    let secret = dir.path().join("token.txt");
    fs::write(&secret, "s3cret").unwrap();
    let secret_arg = format!("id=token,src={}", secret.display());
    let assert = build(&dir, &ctx, &["--secret", &secret_arg, "-t", "mounted"]).success();
    // Progress names the base as FROM resolved it, build arguments expanded.
    let log = stderr(&assert);
    assert!(log.contains("FROM busybox\n"), "{log}");
    assert!(!log.contains("FROM ${BASE}"), "{log}");
    let cat = |path: &str| run_output(&dir, &["mounted", "cat", path]);
    assert_eq!(cat("/from-stage"), "tool-data\n");
    assert_eq!(cat("/rw-seen"), "scribble\n");
    assert_eq!(cat("/after-rw"), "tool-data\n", "rw writes are discarded");
    assert_eq!(cat("/ctx-rw"), "changed\n");
    assert_eq!(
        fs::read_to_string(ctx.join("local/file")).unwrap(),
        "original\n"
    );
    assert_eq!(cat("/cache-seed"), "seeded\n");
    assert_eq!(cat("/private-list"), "");
    // sharing=private: while another build holds the cache, the step gets a fresh one.
    let id_hex = {
        let output = std::process::Command::new("sh")
            .args(["-c", "printf p | sha256sum"])
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap()[..64].to_string()
    };
    let lock_path = dir
        .path()
        .join("store/cache-mounts")
        .join(format!("{id_hex}.lock"));
    let holder = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap();
    holder.lock().unwrap();
    build(
        &dir,
        &ctx,
        &["--secret", &secret_arg, "--no-cache", "-t", "busy"],
    )
    .success();
    assert_eq!(run_output(&dir, &["busy", "cat", "/private-list"]), "");
    holder.unlock().unwrap();
    build(
        &dir,
        &ctx,
        &["--secret", &secret_arg, "--no-cache", "-t", "free"],
    )
    .success();
    assert_eq!(
        run_output(&dir, &["free", "cat", "/private-list"]),
        "mark\n"
    );
    // Mount points the image did not have are not in it.
    let listing = run_output(
        &dir,
        &[
            "mounted",
            "sh",
            "-c",
            "for p in /run /mnt /ctx /private /var/cache/seeded /var; do test -e $p && echo $p; done; true",
        ],
    );
    assert_eq!(listing, "", "mount stubs are removed");
}

#[test]
fn a_relative_store_root_works_for_run_steps() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(
        &dir,
        &[("Dockerfile", "FROM busybox\nRUN echo ran > /ran\n")],
    );
    // The same store, named relative to the working directory.
    let assert = assert_cmd::Command::cargo_bin("kiln")
        .unwrap()
        .current_dir(dir.path())
        .args(["--root", "store", "build", "-t", "relative:1"])
        .arg(&ctx)
        .assert()
        .success();
    assert!(stderr(&assert).contains("RUN echo ran"));
    assert_eq!(run_output(&dir, &["relative:1", "cat", "/ran"]), "ran\n");
}

#[test]
fn add_skips_an_archive_entry_with_an_empty_name() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    let ctx = context(&dir, &[("Dockerfile", "FROM busybox\nADD test.tar /\n")]);
    // As Buildah's add-dir-not-dir archive: a regular file named "" first, then real
    // content. Docker skips the nameless entry.
    let mut archive = tar::Builder::new(Vec::new());
    let mut nameless = tar::Header::new_ustar();
    nameless.set_entry_type(tar::EntryType::Regular);
    nameless.set_size(0);
    nameless.set_mode(0o644);
    nameless.set_cksum();
    archive.append(&nameless, std::io::empty()).unwrap();
    let mut file = tar::Header::new_gnu();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_size(4);
    file.set_mode(0o644);
    archive
        .append_data(&mut file, "fileone", &b"one\n"[..])
        .unwrap();
    fs::write(ctx.join("test.tar"), archive.into_inner().unwrap()).unwrap();
    build(&dir, &ctx, &["-t", "nameless"]).success();
    assert_eq!(run_output(&dir, &["nameless", "cat", "/fileone"]), "one\n");
}

#[test]
fn a_shebang_heredoc_script_is_keyed_by_its_content() {
    let Some(dir) = busybox_store(&[], &[]) else {
        return;
    };
    for word in ["first", "second"] {
        let dockerfile = format!("FROM busybox\nRUN <<EOF\n#!/bin/sh\necho {word} > /out\nEOF\n");
        let ctx = context(&dir, &[("Dockerfile", &dockerfile)]);
        build(&dir, &ctx, &["-t", word]).success();
        assert_eq!(
            run_output(&dir, &[word, "cat", "/out"]),
            format!("{word}\n")
        );
    }
}
