//! Runs the data-driven cases in `testdata/templates/*.txt` (format: that directory's
//! README.md). Every failing case is reported, not only the first.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_template::{Format, Template};
use serde_json::Value;

#[derive(Debug, Default)]
struct Case {
    file: String,
    name: String,
    line: usize,
    template: Option<String>,
    format: Option<String>,
    data: Option<String>,
    headers: Option<String>,
    output: Option<String>,
    error: Option<String>,
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/templates")
}

/// Splits a file into cases. A section's text runs to the next marker line; its last newline
/// belongs to the layout, not to the text.
fn read_cases(path: &Path) -> Vec<Case> {
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let text = fs::read_to_string(path).unwrap();
    let mut cases = Vec::new();
    let mut case: Option<Case> = None;
    let mut section: Option<(String, Vec<&str>)> = None;

    fn close(case: &mut Option<Case>, section: &mut Option<(String, Vec<&str>)>) {
        let (Some(case), Some((name, lines))) = (case.as_mut(), section.take()) else {
            return;
        };
        let body = lines.join("\n");
        let slot = match name.as_str() {
            "template" => &mut case.template,
            "format" => &mut case.format,
            "data" => &mut case.data,
            "headers" => &mut case.headers,
            "output" => &mut case.output,
            "error" => &mut case.error,
            other => panic!("{}: unknown section {other:?}", case.name),
        };
        *slot = Some(body);
    }

    for (number, line) in text.lines().enumerate() {
        if let Some(name) = line.strip_prefix("=== ") {
            close(&mut case, &mut section);
            cases.extend(case.take());
            case = Some(Case {
                file: file.clone(),
                name: name.to_owned(),
                line: number + 1,
                ..Case::default()
            });
        } else if let Some(name) = line.strip_prefix("--- ") {
            close(&mut case, &mut section);
            section = Some((name.trim().to_owned(), Vec::new()));
        } else if let Some((_, lines)) = section.as_mut() {
            lines.push(line);
        }
    }
    close(&mut case, &mut section);
    cases.extend(case);
    cases
}

fn run(case: &Case) -> Result<String, String> {
    let data: Value = match &case.data {
        Some(data) => serde_json::from_str(data).map_err(|e| format!("bad data JSON: {e}"))?,
        None => Value::Object(Default::default()),
    };
    if let Some(format) = &case.format {
        let headers: Value = match &case.headers {
            Some(headers) => {
                serde_json::from_str(headers).map_err(|e| format!("bad headers JSON: {e}"))?
            }
            None => Value::Object(Default::default()),
        };
        let header = |name: &str| headers.get(name).and_then(Value::as_str).map(str::to_owned);
        let rows = match &data {
            Value::Array(rows) => rows.clone(),
            // A single row may be written without brackets.
            Value::Null
            | Value::Bool(_)
            | Value::Number(_)
            | Value::String(_)
            | Value::Object(_) => {
                vec![data.clone()]
            }
        };
        let format = Format::parse(format).map_err(|e| e.to_string())?;
        return format.render(&rows, &header).map_err(|e| e.to_string());
    }
    let template = case
        .template
        .as_deref()
        .ok_or("case has no template or format")?;
    Template::parse(template)
        .and_then(|template| template.render(&data))
        .map_err(|e| e.to_string())
}

#[test]
fn testdata_cases() {
    let mut paths: Vec<PathBuf> = fs::read_dir(testdata())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "txt"))
        .collect();
    paths.sort();
    let cases: Vec<Case> = paths.iter().flat_map(|path| read_cases(path)).collect();
    assert!(cases.len() >= 100, "only {} cases", cases.len());

    let mut failures = Vec::new();
    for case in &cases {
        let location = format!("{}:{} ({})", case.file, case.line, case.name);
        let result = run(case);
        match (&case.output, &case.error, result) {
            (Some(expected), None, Ok(actual)) if *expected == actual => {}
            (None, Some(fragment), Err(actual)) if actual.contains(fragment.as_str()) => {}
            (Some(expected), None, actual) => {
                failures.push(format!(
                    "{location}\n  expected: {expected:?}\n  actual:   {actual:?}"
                ));
            }
            (None, Some(fragment), actual) => failures.push(format!(
                "{location}\n  expected error containing: {fragment:?}\n  actual: {actual:?}"
            )),
            _ => failures.push(format!("{location}: needs exactly one of output and error")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
