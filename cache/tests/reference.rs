//! Image references behave as Docker's: the tables in `testdata/references/` (format in its
//! README) and properties that hold for any input.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use kiln_cache::reference::{
    AnyReference, Reference, ReferenceError, is_image_id_prefix, parse_any,
};

fn tables_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/references")
}

/// Expands one field: `""`-quoted text verbatim, otherwise `{N*TEXT}` repetitions.
fn field(raw: &str) -> String {
    if let Some(inner) = raw
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        return inner.to_owned();
    }
    let mut out = String::new();
    let mut rest = raw;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .unwrap_or_else(|| panic!("unclosed `{{` in field {raw:?}"));
        let (count, text) = after[..close]
            .split_once('*')
            .unwrap_or_else(|| panic!("`{{N*TEXT}}` expected in field {raw:?}"));
        let count: usize = count
            .parse()
            .unwrap_or_else(|_| panic!("bad repeat count in field {raw:?}"));
        out.push_str(&text.repeat(count));
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// One data row: its location for messages and its expanded fields.
struct Row {
    at: String,
    fields: Vec<String>,
}

fn rows(path: &Path) -> Vec<Row> {
    let text =
        fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|(index, line)| Row {
            at: format!("{name}:{}", index + 1),
            fields: line.split(" | ").map(|raw| field(raw.trim())).collect(),
        })
        .collect()
}

/// The expected outcome written in a result field.
fn expected_error(text: &str) -> Option<&str> {
    text.strip_prefix("error: ")
}

fn error_text(result: &Result<impl std::fmt::Display, ReferenceError>) -> String {
    match result {
        Ok(value) => format!("ok: {value}"),
        Err(error) => format!("error: {error}"),
    }
}

/// Properties every successfully parsed reference has, whatever the row checks.
fn check_round_trips(reference: &Reference) -> Result<(), String> {
    let text = reference.to_string();
    let reparsed = Reference::parse(&text)
        .map_err(|error| format!("{text:?} does not parse again: {error}"))?;
    if &reparsed != reference {
        return Err(format!(
            "{text:?} parses again as {reparsed:?}, not {reference:?}"
        ));
    }
    let json = serde_json::to_string(reference).map_err(|error| error.to_string())?;
    let back: Reference = serde_json::from_str(&json).map_err(|error| error.to_string())?;
    if &back != reference {
        return Err(format!("JSON {json} reads back as {back:?}"));
    }
    let tagged = reference.clone().with_default_tag();
    if tagged.clone().with_default_tag() != tagged {
        return Err(format!("with_default_tag is not idempotent on {text:?}"));
    }
    Ok(())
}

/// Checks one row of one table; `Err` describes the mismatch.
fn check_row(table: &str, row: &Row) -> Result<(), String> {
    let fields = &row.fields;
    let arity = |count: usize| {
        if fields.len() == count {
            Ok(())
        } else {
            Err(format!("expected {count} fields, found {}", fields.len()))
        }
    };
    match table {
        "parse" | "default_tag" => {
            let input = &fields[0];
            let parsed = Reference::parse(input);
            if let Some(message) = fields.get(1).and_then(|expected| expected_error(expected)) {
                arity(2)?;
                let actual = error_text(&parsed);
                return if actual == format!("error: {message}") {
                    Ok(())
                } else {
                    Err(format!(
                        "{input:?}: expected error {message:?}, got {actual}"
                    ))
                };
            }
            arity(3)?;
            let reference =
                parsed.map_err(|error| format!("{input:?}: unexpected error {error}"))?;
            check_round_trips(&reference)?;
            let reference = if table == "default_tag" {
                reference.with_default_tag()
            } else {
                reference
            };
            let (normalised, familiar) = (reference.to_string(), reference.familiar());
            if normalised != fields[1] || familiar != fields[2] {
                return Err(format!(
                    "{input:?}: expected {:?} / {:?}, got {normalised:?} / {familiar:?}",
                    fields[1], fields[2]
                ));
            }
            Ok(())
        }
        "components" => {
            arity(5)?;
            let input = &fields[0];
            let reference = Reference::parse(input)
                .map_err(|error| format!("{input:?}: unexpected error {error}"))?;
            check_round_trips(&reference)?;
            let none = |value: Option<&str>| value.unwrap_or("-").to_owned();
            let actual = [
                reference.domain().to_owned(),
                reference.path().to_owned(),
                none(reference.tag()),
                none(reference.digest()),
            ];
            if actual[..] != fields[1..] {
                return Err(format!(
                    "{input:?}: expected {:?}, got {actual:?}",
                    &fields[1..]
                ));
            }
            if reference.name() != join_name(reference.domain(), reference.path()) {
                return Err(format!("{input:?}: name() is {:?}", reference.name()));
            }
            Ok(())
        }
        "any" => {
            arity(2)?;
            let input = &fields[0];
            let actual = match parse_any(input) {
                Ok(AnyReference::Id(id)) => format!("id: {id}"),
                Ok(AnyReference::Named(reference)) => {
                    check_round_trips(&reference)?;
                    format!("name: {reference}")
                }
                Err(error) => format!("error: {error}"),
            };
            if actual == fields[1] {
                Ok(())
            } else {
                Err(format!(
                    "{input:?}: expected {:?}, got {actual:?}",
                    fields[1]
                ))
            }
        }
        "id_prefix" => {
            arity(2)?;
            let actual = is_image_id_prefix(&fields[0]).to_string();
            if actual == fields[1] {
                Ok(())
            } else {
                Err(format!(
                    "{:?}: expected {}, got {actual}",
                    fields[0], fields[1]
                ))
            }
        }
        "with_tag" | "with_digest" => {
            arity(3)?;
            let base = Reference::parse(&fields[0])
                .map_err(|error| format!("{:?}: unexpected error {error}", fields[0]))?;
            let result = if table == "with_tag" {
                base.with_tag(&fields[1])
            } else {
                base.with_digest(&fields[1])
            };
            let actual = match &result {
                Ok(reference) => {
                    check_round_trips(reference)?;
                    reference.to_string()
                }
                Err(error) => format!("error: {error}"),
            };
            if actual == fields[2] {
                Ok(())
            } else {
                Err(format!(
                    "{:?} + {:?}: expected {:?}, got {actual:?}",
                    fields[0], fields[1], fields[2]
                ))
            }
        }
        other => Err(format!(
            "unknown table {other:?}: every file must be listed in the README"
        )),
    }
}

fn join_name(domain: &str, path: &str) -> String {
    if domain.is_empty() {
        path.to_owned()
    } else {
        format!("{domain}/{path}")
    }
}

#[test]
fn reference_tables_match_docker() {
    let mut paths: Vec<PathBuf> = fs::read_dir(tables_dir())
        .unwrap_or_else(|error| panic!("{}: {error}", tables_dir().display()))
        .map(|entry| {
            entry
                .map(|entry| entry.path())
                .unwrap_or_else(|error| panic!("{error}"))
        })
        .filter(|path| path.extension().is_some_and(|extension| extension == "txt"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 7,
        "the reference tables are missing: {paths:?}"
    );

    let mut failures = String::new();
    let mut count = 0;
    for path in &paths {
        let table = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rows = rows(path);
        assert!(!rows.is_empty(), "{} has no rows", path.display());
        for row in &rows {
            count += 1;
            if let Err(message) = check_row(&table, row) {
                let _ = writeln!(failures, "{}: {message}", row.at);
            }
        }
    }
    assert!(failures.is_empty(), "{failures}");
    assert!(count >= 80, "only {count} rows");
}

#[test]
fn from_str_and_display_agree_with_parse() {
    let reference: Reference = "busybox".parse().expect("busybox parses");
    assert_eq!(
        reference,
        Reference::parse("docker.io/library/busybox").expect("parses")
    );
    assert_eq!(reference.name(), "docker.io/library/busybox");
    assert_eq!(reference.familiar_name(), "busybox");
    assert_eq!(reference.tag(), None);
    assert_eq!(
        reference.with_default_tag().to_string(),
        "docker.io/library/busybox:latest"
    );
}

#[test]
fn deserialising_normalises_familiar_text_and_reports_errors() {
    let reference: Reference = serde_json::from_str("\"busybox:1.36\"").expect("deserialises");
    assert_eq!(
        serde_json::to_string(&reference).expect("serialises"),
        "\"docker.io/library/busybox:1.36\""
    );
    let error = serde_json::from_str::<Reference>("\"Busybox\"").expect_err("uppercase is refused");
    assert!(error.to_string().contains("must be lowercase"), "{error}");
}

/// A small deterministic generator (Knuth's MMIX LCG), so failures reproduce without a seed flag.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next()).unwrap_or_default() % bound
    }
}

/// Random printable ASCII, biased toward the characters the grammar cares about so that a fair
/// share of inputs parse and the interesting paths (domains, ports, tags, digests) are reached.
fn random_text(random: &mut Lcg) -> String {
    const GRAMMAR: &[u8] = b"abcdef0123456789xyz._-/:@[]ABCF";
    let length = random.below(48);
    (0..length)
        .map(|_| {
            if random.below(4) == 0 {
                // Any printable ASCII character, space included.
                char::from(b' ' + u8::try_from(random.below(95)).unwrap_or_default())
            } else {
                char::from(GRAMMAR[random.below(GRAMMAR.len())])
            }
        })
        .collect()
}

#[test]
fn random_printable_ascii_never_panics_and_round_trips() {
    let mut random = Lcg(0x6b69_6c6e);
    let mut parsed = 0;
    for _ in 0..100_000 {
        let text = random_text(&mut random);
        match Reference::parse(&text) {
            Ok(reference) => {
                parsed += 1;
                if let Err(message) = check_round_trips(&reference) {
                    panic!("{text:?}: {message}");
                }
                let mut suffix = String::new();
                if let Some(tag) = reference.tag() {
                    suffix = format!(":{tag}");
                }
                if let Some(digest) = reference.digest() {
                    suffix = format!("{suffix}@{digest}");
                }
                assert!(
                    reference.familiar().ends_with(&suffix),
                    "{text:?}: {reference:?}"
                );
                assert!(text.ends_with(&suffix), "{text:?}: {reference:?}");
                // Familiar text of a Hub name parses back to the same reference unless its first
                // component looks like a registry (a Docker quirk pinned in parse.txt).
                let familiar = reference.familiar();
                let first = familiar.split('/').next().unwrap_or_default();
                let looks_like_registry =
                    familiar.contains('/') && (first.contains(['.', ':']) || first == "localhost");
                if reference.domain() == "docker.io" && !looks_like_registry {
                    assert_eq!(
                        Reference::parse(&familiar).as_ref(),
                        Ok(&reference),
                        "{text:?}: familiar {familiar:?}"
                    );
                }
            }
            Err(error) => assert!(!error.to_string().is_empty()),
        }
        let _ = parse_any(&text);
        if is_image_id_prefix(&text) {
            assert!(
                text.bytes()
                    .all(|byte| byte.is_ascii_hexdigit() || b"sha256:".contains(&byte)),
                "{text:?}"
            );
        }
        if let Ok(reference) = Reference::parse("busybox") {
            if let Ok(tagged) = reference.with_tag(&text) {
                assert_eq!(tagged.tag(), Some(text.as_str()));
            }
            if let Ok(digested) = reference.with_digest(&text) {
                assert_eq!(
                    Reference::parse(&digested.to_string()).as_ref(),
                    Ok(&digested)
                );
            }
        }
    }
    // The generator must reach the success paths too, or the round-trip checks mean nothing.
    assert!(
        parsed > 1_000,
        "only {parsed} of 100000 random inputs parsed"
    );
}
