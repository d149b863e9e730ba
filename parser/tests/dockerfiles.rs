//! Data-driven parser tests: every `testdata/dockerfiles/valid/NAME.Dockerfile` parses and its AST
//! dump equals `NAME.json`; every `invalid/NAME.Dockerfile` fails and its rendered diagnostic
//! equals `NAME.err`. Run with `KILN_BLESS=1` to write the expected files after a deliberate change
//! (then review the diff).

use std::fs;
use std::path::{Path, PathBuf};

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/dockerfiles")
        .join(kind);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "Dockerfile"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

/// Compares `actual` with the expected file, or writes it when blessing.
fn check(expected_path: &Path, actual: &str, mismatches: &mut Vec<String>) {
    if std::env::var_os("KILN_BLESS").is_some() {
        fs::write(expected_path, actual).unwrap();
        return;
    }
    match fs::read_to_string(expected_path) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => mismatches.push(format!(
            "{}:\n--- expected\n{expected}\n--- actual\n{actual}",
            expected_path.display()
        )),
        Err(_) => mismatches.push(format!(
            "{} is missing (run with KILN_BLESS=1)",
            expected_path.display()
        )),
    }
}

#[test]
fn valid_dockerfiles_parse_to_their_snapshots() {
    let mut mismatches = Vec::new();
    for path in fixtures("valid") {
        let text = fs::read_to_string(&path).unwrap();
        let dockerfile = kiln_parser::parse(&text)
            .unwrap_or_else(|error| panic!("{}", error.render(&path.display().to_string(), &text)));
        let json =
            serde_json::to_string_pretty(&kiln_parser::dump::to_json(&dockerfile)).unwrap() + "\n";
        check(&path.with_extension("json"), &json, &mut mismatches);
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn invalid_dockerfiles_fail_with_their_rendered_diagnostics() {
    let mut mismatches = Vec::new();
    for path in fixtures("invalid") {
        let text = fs::read_to_string(&path).unwrap();
        let rendered = match kiln_parser::parse(&text) {
            Ok(_) => format!("unexpectedly parsed: {}\n", path.display()),
            Err(error) => error.render("Dockerfile", &text),
        };
        check(&path.with_extension("err"), &rendered, &mut mismatches);
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
