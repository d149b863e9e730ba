//! The `kiln check`, `kiln debug parse` and `kiln debug expand` commands, run as a user runs them.

use std::fs;
use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;

fn kiln() -> Command {
    Command::cargo_bin("kiln").unwrap()
}

fn context(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    dir
}

fn example() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/example"))
}

#[test]
fn check_passes_the_example_context() {
    kiln()
        .arg("check")
        .arg(example())
        .assert()
        .success()
        .stdout("")
        .stderr(predicate::str::contains("no warnings"));
}

#[test]
fn check_prints_warnings_as_file_line_rule_message() {
    let dir = context("FROM busybox AS Build\nMAINTAINER me\nCMD echo hi\n");
    kiln()
        .current_dir(dir.path())
        .arg("check")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "Dockerfile:1: StageNameCasing: Stage name 'Build' should be lowercase",
        ))
        .stdout(predicate::str::contains(
            "Dockerfile:2: MaintainerDeprecated:",
        ))
        .stdout(predicate::str::contains(
            "Dockerfile:3: JSONArgsRecommended:",
        ));
}

#[test]
fn check_fails_when_the_directive_makes_warnings_errors() {
    let dir = context("# check=error=true\nFROM busybox\nCMD echo hi\n");
    kiln()
        .arg("check")
        .arg(dir.path())
        .assert()
        .code(1)
        .stdout(predicate::str::contains("JSONArgsRecommended"));
}

#[test]
fn check_settings_from_the_command_line_skip_rules() {
    let dir = context("# check=error=true\nFROM busybox\nCMD echo hi\n");
    kiln()
        .arg("check")
        .arg("--check=skip=JSONArgsRecommended")
        .arg(dir.path())
        .assert()
        .success()
        .stdout("");
    kiln()
        .arg("check")
        .arg("--build-arg=BUILDKIT_DOCKERFILE_CHECK=skip=all")
        .arg(dir.path())
        .assert()
        .success()
        .stdout("");
}

#[test]
fn check_renders_parse_errors_with_the_line_and_a_caret() {
    let dir = context("FROM busybox\nRUNN echo hi\n");
    kiln()
        .arg("check")
        .arg("-f")
        .arg(dir.path().join("Dockerfile"))
        .arg(dir.path())
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "Dockerfile:2:1: unknown instruction: RUNN",
        ))
        .stderr(predicate::str::contains("2 | RUNN echo hi\n  | ^^^^\n"))
        .stderr(predicate::str::contains("hint: did you mean RUN?"));
}

#[test]
fn check_reads_the_dockerfile_from_stdin() {
    kiln()
        .args(["check", "-f", "-"])
        .write_stdin("FROM busybox\nCOPY app.py\n")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "-:2:6: COPY requires at least 2 arguments",
        ));
}

#[test]
fn a_missing_dockerfile_is_a_kiln_error() {
    kiln()
        .args(["check", "/nonexistent/context"])
        .assert()
        .code(125)
        .stderr(predicate::str::contains("/nonexistent/context/Dockerfile"));
}

#[test]
fn bad_flags_exit_125() {
    kiln().args(["check", "--no-such-flag"]).assert().code(125);
}

#[test]
fn debug_parse_json_lists_instructions_with_lines_flags_arguments_and_heredocs() {
    let dir = context(
        "FROM busybox\nCOPY --from=build --chmod=755 a b /dst/\nRUN <<EOF\necho hi\nEOF\nONBUILD RUN make\n",
    );
    let output = kiln()
        .args(["debug", "parse", "--json"])
        .arg(dir.path().join("Dockerfile"))
        .output()
        .unwrap();
    assert!(output.status.success());
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let instructions = json["instructions"].as_array().unwrap();
    assert_eq!(instructions.len(), 4);
    let copy = &instructions[1];
    assert_eq!(copy["name"], "copy");
    assert_eq!(copy["start_line"], 2);
    assert_eq!(
        copy["flags"],
        serde_json::json!(["--from=build", "--chmod=755"])
    );
    assert_eq!(copy["arguments"], serde_json::json!(["a", "b", "/dst/"]));
    let run = &instructions[2];
    assert_eq!(
        (run["start_line"].as_u64(), run["end_line"].as_u64()),
        (Some(3), Some(5))
    );
    assert_eq!(run["heredocs"][0]["content"], "echo hi\n");
    assert_eq!(instructions[3]["trigger"]["name"], "run");
}

#[test]
fn debug_parse_prints_text_and_fails_on_errors() {
    let dir = context("FROM busybox\nWORKDIR /app\n");
    kiln()
        .args(["debug", "parse"])
        .arg(dir.path().join("Dockerfile"))
        .assert()
        .success()
        .stdout(predicate::str::contains("2 WORKDIR\n  value: \"/app\""));
    let bad = context("FROM busybox\nONBUILD FROM alpine\n");
    kiln()
        .args(["debug", "parse"])
        .arg(bad.path().join("Dockerfile"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "2:9: FROM isn't allowed as an ONBUILD trigger",
        ));
}

#[test]
fn debug_expand_expands_a_word() {
    kiln()
        .args([
            "debug",
            "expand",
            "--env",
            "NAME=kiln",
            "--",
            "hello ${NAME:-world} ${UNSET:-x}",
        ])
        .assert()
        .success()
        .stdout("hello kiln x\n");
}

#[test]
fn debug_expand_splits_words() {
    kiln()
        .args([
            "debug",
            "expand",
            "--words",
            "--env",
            "V=a b",
            "--",
            "x${V} \"${V}\"",
        ])
        .assert()
        .success()
        .stdout("xa\nb\na b\n");
}

#[test]
fn debug_expand_uses_the_escape_character() {
    kiln()
        .args([
            "debug", "expand", "--escape", "`", "--env", "A=1", "--", "`$A \\$A",
        ])
        .assert()
        .success()
        .stdout("$A \\1\n");
}

#[test]
fn debug_expand_reports_errors() {
    kiln()
        .args(["debug", "expand", "--", "${UNSET:?must be set}"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("must be set"));
}

#[test]
fn check_reports_copies_of_files_the_dockerignore_excludes() {
    let dir = context("FROM busybox\nCOPY secret.txt /app/\nCOPY kept.txt /app/\n");
    fs::write(dir.path().join(".dockerignore"), "secret.txt\n").unwrap();
    kiln()
        .arg("check")
        .arg(dir.path())
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "Dockerfile:2: CopyIgnoredFile: Attempting to Copy file \"secret.txt\" that is excluded by .dockerignore",
        ))
        .stdout(predicate::str::contains("kept.txt").not());
    // <Dockerfile>.dockerignore beside the Dockerfile wins over the context's.
    fs::write(dir.path().join("Dockerfile.dockerignore"), "kept.txt\n").unwrap();
    kiln()
        .arg("check")
        .arg(dir.path())
        .assert()
        .success()
        .stdout(predicate::str::contains("\"kept.txt\""))
        .stdout(predicate::str::contains("secret.txt").not());
}
