//! BuildKit's own parser test files (public conformance data in `../shared/conformance`): every
//! positive file dumps exactly as BuildKit's parser dumps it, every negative file is rejected.
#![allow(clippy::print_stderr)]

use std::fs;
use std::path::{Path, PathBuf};

fn testfiles(kind: &str) -> Option<Vec<PathBuf>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/buildkit/frontend/dockerfile/parser")
        .join(kind);
    let Ok(entries) = fs::read_dir(&root) else {
        eprintln!(
            "skipping: BuildKit conformance data not found at {}",
            root.display()
        );
        return None;
    };
    let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    dirs.sort();
    Some(dirs)
}

#[test]
fn every_positive_testfile_dumps_as_buildkit_does() {
    let Some(dirs) = testfiles("testfiles") else {
        return;
    };
    let mut failures = Vec::new();
    for dir in &dirs {
        let text = fs::read_to_string(dir.join("Dockerfile")).unwrap();
        let expected = fs::read_to_string(dir.join("result")).unwrap();
        match kiln_parser::buildkit_dump(&text) {
            Ok(dump) if dump.trim_end() == expected.trim_end() => {}
            Ok(dump) => failures.push(format!(
                "{}:\n--- expected\n{expected}\n--- got\n{dump}",
                dir.display()
            )),
            Err(error) => failures.push(format!(
                "{}: {}",
                dir.display(),
                error.render("Dockerfile", &text)
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n")
    );
}

#[test]
fn every_negative_testfile_is_rejected_with_a_position() {
    let Some(dirs) = testfiles("testfiles-negative") else {
        return;
    };
    for dir in &dirs {
        let text = fs::read_to_string(dir.join("Dockerfile")).unwrap();
        let error = kiln_parser::parse(&text).expect_err(&dir.display().to_string());
        assert!(error.span.start.line >= 1, "{}", dir.display());
    }
}
