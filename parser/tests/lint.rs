//! The linter against BuildKit's behaviour: the public conformance cases (BuildKit's check tests
//! and rule documentation, `../shared/conformance/buildkit-lint`) and kiln's own cases per rule
//! in `testdata/lint` (format in `testdata/lint/README.md`).
//!
//! Cases with a `.dockerignore` need the builder's matcher, which this crate cannot depend on
//! (the builder depends on the parser, and a dev-dependency back would build the whole runtime
//! for the parser's tests): they run in `builder/tests/ignore.rs`, which runs every conformance
//! case with the real matcher.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use kiln_parser::lint::{self, CheckConfig, LintOptions};

const CONFORMANCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/conformance/buildkit-lint/lint_cases.json"
);

/// Conformance cases kiln cannot reproduce, each with the reason. Everything else must match
/// BuildKit exactly (rule, line and message).
const EXCLUDED: &[(&str, &str)] = &[];

fn build_args(case: &serde_json::Value) -> BTreeMap<String, String> {
    case.get("build_args")
        .and_then(serde_json::Value::as_object)
        .map(|args| {
            args.iter()
                .map(|(key, value)| (key.clone(), value.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn conformance_cases_report_exactly_what_buildkit_reports() {
    let Ok(text) = fs::read_to_string(CONFORMANCE) else {
        eprintln!("skipping: BuildKit lint conformance data not found at {CONFORMANCE}");
        return;
    };
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).expect("valid JSON");
    let mut failures = Vec::new();
    let (mut passed, mut skipped, mut with_dockerignore) = (0, 0, 0);
    for case in &cases {
        let name = case["name"].as_str().unwrap_or_default();
        if let Some((_, reason)) = EXCLUDED.iter().find(|(excluded, _)| *excluded == name) {
            eprintln!("excluded {name}: {reason}");
            skipped += 1;
            continue;
        }
        if case.get("dockerignore").is_some() {
            // Needs the builder's .dockerignore matcher: builder/tests/ignore.rs runs it.
            with_dockerignore += 1;
            continue;
        }
        let dockerfile_text = case["dockerfile"].as_str().unwrap_or_default();
        let mut expected: Vec<(String, usize, String)> = case["expected"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|warning| {
                (
                    warning["rule"].as_str().unwrap_or_default().to_string(),
                    warning["line"].as_u64().unwrap_or_default() as usize,
                    warning["detail"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        expected.sort();
        // As `docker build --check`, lint what parses before an error; only cases where BuildKit
        // also fails (`reference_error`: at parse time or later in the build) may have one.
        let partial = kiln_parser::parse_partial(dockerfile_text);
        if let (Some(error), None) = (&partial.error, case.get("reference_error")) {
            failures.push(format!("{name}: kiln's parser rejects it: {error}"));
            continue;
        }
        let dockerfile = partial.dockerfile;
        let options = LintOptions {
            build_args: build_args(case),
            ..LintOptions::default()
        };
        let mut actual: Vec<(String, usize, String)> = match lint::lint(&dockerfile, &options) {
            Ok(warnings) => warnings
                .into_iter()
                .map(|warning| (warning.rule.to_string(), warning.line(), warning.message))
                .collect(),
            Err(error) => {
                failures.push(format!("{name}: lint failed: {error}"));
                continue;
            }
        };
        actual.sort();
        if actual == expected {
            passed += 1;
        } else {
            failures.push(format!(
                "{name}:\n  expected {expected:#?}\n  actual   {actual:#?}"
            ));
        }
    }
    eprintln!(
        "{passed} passed, {skipped} excluded, {} failed of {} \
         ({with_dockerignore} with a .dockerignore run in builder/tests/ignore.rs)",
        failures.len(),
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// One case of `testdata/lint/*.txt`.
#[derive(Debug)]
struct Case {
    file: PathBuf,
    name: String,
    options: Vec<String>,
    dockerfile: String,
    expect: Vec<String>,
}

fn read_cases(path: &Path) -> Vec<Case> {
    let text = fs::read_to_string(path).expect("readable test data");
    let mut cases: Vec<Case> = Vec::new();
    let mut section = "";
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("=== ") {
            cases.push(Case {
                file: path.to_path_buf(),
                name: name.trim().to_string(),
                options: Vec::new(),
                dockerfile: String::new(),
                expect: Vec::new(),
            });
            section = "";
            continue;
        }
        if let Some(header) = line.strip_prefix("--- ") {
            section = match header.trim() {
                "options" => "options",
                "dockerfile" => "dockerfile",
                "expect" => "expect",
                other => panic!("{}: unknown section {other:?}", path.display()),
            };
            continue;
        }
        let Some(case) = cases.last_mut() else {
            continue; // comments before the first case
        };
        match section {
            "options" if !line.trim().is_empty() => case.options.push(line.trim().to_string()),
            "dockerfile" => {
                case.dockerfile.push_str(line);
                case.dockerfile.push('\n');
            }
            "expect" if !line.trim().is_empty() => case.expect.push(line.trim().to_string()),
            _ => {}
        }
    }
    cases
}

fn options(case: &Case) -> LintOptions {
    let mut options = LintOptions::default();
    for option in &case.options {
        if let Some(argument) = option.strip_prefix("build-arg ") {
            let (key, value) = argument.split_once('=').unwrap_or((argument, ""));
            options
                .build_args
                .insert(key.to_string(), value.to_string());
        } else if let Some(check) = option.strip_prefix("check ") {
            options.config = CheckConfig::parse(check).expect("valid check option in test data");
        } else {
            panic!(
                "{}: {}: unknown option {option:?}",
                case.file.display(),
                case.name
            );
        }
    }
    options
}

/// What a case produces, in the `expect` section's format.
fn outcome(case: &Case) -> Vec<String> {
    let dockerfile = match kiln_parser::parse(&case.dockerfile) {
        Ok(dockerfile) => dockerfile,
        Err(error) => return vec![format!("parse error: {error}")],
    };
    let options = options(case);
    let warnings = match lint::lint(&dockerfile, &options) {
        Ok(warnings) => warnings,
        Err(error) => {
            let mut message = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            return vec![format!("lint error: {message}")];
        }
    };
    let mut lines: Vec<String> = warnings
        .iter()
        .map(|warning| format!("{}: {}: {}", warning.line(), warning.rule, warning.message))
        .collect();
    let config = lint::check_config(&dockerfile, &options).expect("config parsed once already");
    if config.warnings_are_errors() {
        lines.push("errors: true".to_string());
    }
    if let Err(error) = config.enforce(&warnings) {
        lines.push(format!("enforce: {error}"));
    }
    lines
}

#[test]
fn testdata_cases_report_exactly_the_expected_warnings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/lint");
    let mut files: Vec<PathBuf> = fs::read_dir(&root)
        .expect("testdata/lint exists")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|extension| extension == "txt"))
        .collect();
    files.sort();
    let mut failures = Vec::new();
    let mut all = Vec::new();
    for file in &files {
        for case in read_cases(file) {
            let actual = outcome(&case);
            if actual != case.expect {
                failures.push(format!(
                    "{} / {}:\n  expected:\n    {}\n  actual:\n    {}",
                    case.file.display(),
                    case.name,
                    case.expect.join("\n    "),
                    actual.join("\n    ")
                ));
            }
            all.push(case);
        }
    }
    assert!(!all.is_empty(), "no test cases in {}", root.display());
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Every rule has a file of its own with a case where it fires and one where it does not.
    // Rules that need the build context are covered where the context is (CopyIgnoredFile in
    // builder/tests/ignore.rs).
    for rule in lint::Rule::ALL
        .into_iter()
        .filter(|rule| !rule.needs_context())
    {
        let own: Vec<&Case> = all
            .iter()
            .filter(|case| {
                case.file
                    .file_stem()
                    .is_some_and(|stem| stem == rule.name())
            })
            .collect();
        let fires = |case: &&Case| {
            case.expect
                .iter()
                .any(|line| line.contains(&format!(": {}: ", rule.name())))
        };
        assert!(own.iter().any(fires), "no case where {rule} fires");
        assert!(!own.iter().all(fires), "no case where {rule} stays quiet");
    }
}

#[test]
fn check_options_parse_as_buildkit_parses_them() {
    let config =
        CheckConfig::parse(" skip = FromAsCasing, B ;error=TRUE;experimental=all").unwrap();
    assert!(config.warnings_are_errors());
    assert!(!config.is_enabled(lint::Rule::FromAsCasing));
    assert!(config.is_enabled(lint::Rule::InvalidDefinitionDescription));
    assert_eq!(CheckConfig::parse("").unwrap(), CheckConfig::default());
    // A third part keeps any further `;`, as Go's strings.SplitN(s, ";", 3) does.
    let config = CheckConfig::parse("error=false;error=true;skip=FromAsCasing;x").unwrap();
    assert_eq!(config.error, Some(true));
    assert!(config.is_enabled(lint::Rule::FromAsCasing));
    assert!(CheckConfig::parse("skip").is_err());
    assert!(CheckConfig::parse("error=yes").is_err());
    assert!(CheckConfig::parse("skipall=true").is_err());
}

#[test]
fn later_check_settings_override_earlier_ones_field_by_field() {
    let directive = CheckConfig::parse("skip=FromAsCasing;error=true").unwrap();
    let command_line = CheckConfig::parse("skip=MaintainerDeprecated").unwrap();
    let merged = directive.merge(command_line);
    assert!(merged.is_enabled(lint::Rule::FromAsCasing));
    assert!(!merged.is_enabled(lint::Rule::MaintainerDeprecated));
    assert!(merged.warnings_are_errors());
}

mod never_panics {
    use proptest::prelude::*;

    use super::*;

    /// Lines that parse often, so that generated files reach the linter.
    const LINES: &[&str] = &[
        "FROM alpine",
        "FROM base AS b",
        "from --platform=$TARGETPLATFORM ${IMG:-x} as Base",
        "FROM --platform=linux/amd64 scratch AS scratch",
        "ARG A=$B",
        "ARG TOKEN",
        "arg X=\"${Y:+z}\"",
        "ENV K=$V L=${K}",
        "ENV legacy value $X",
        "LABEL a b",
        "COPY $S ${D:-/d}",
        "COPY <<EOF /f\n$X\nEOF",
        "ADD --chown=$U x y",
        "WORKDIR $W",
        "WORKDIR rel",
        "EXPOSE $P 1:2/TCP [::1]:3:4 /x 5/bogus",
        "CMD x",
        "ENTRYPOINT [\"y\"]",
        "HEALTHCHECK NONE",
        "SHELL [\"sh\"]",
        "ONBUILD COPY $Q .",
        "MAINTAINER m",
        "RUN --mount=type=cache,target=$T x \\\n\n y",
        "USER ${U",
        "# check=skip=all",
        "# base b",
        "",
    ];

    proptest! {
        #[test]
        fn lint_never_panics(
            picks in proptest::collection::vec(0..LINES.len(), 1..12),
            directive in proptest::option::of("[a-z=;,A-Z ]{0,20}"),
            args in proptest::collection::btree_map("[A-Z]{1,3}", "[a-z:$/]{0,6}", 0..3),
        ) {
            let mut text = directive.map(|value| format!("# check={value}\n")).unwrap_or_default();
            for pick in picks {
                text.push_str(LINES[pick]);
                text.push('\n');
            }
            if let Ok(dockerfile) = kiln_parser::parse(&text) {
                let options = LintOptions { build_args: args, ..LintOptions::default() };
                let _ = lint::lint(&dockerfile, &options);
            }
        }
    }
}
