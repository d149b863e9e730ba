//! Word expansion, checked three ways: BuildKit's own vectors (when the shared conformance data
//! is present), kiln's tables in `testdata/words/` (always), and properties (no panics, no
//! exponential pattern matching, patterns agree with a reference backtracking matcher).
#![allow(clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_parser::expand::{Environment, ExpandError, Expansion, Lexer, MAX_NESTING};
use proptest::prelude::*;

const CONFORMANCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/conformance/buildkit/frontend/dockerfile/shell"
);
const TABLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/words");

fn conformance_file(name: &str) -> Option<String> {
    let path = Path::new(CONFORMANCE).join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(error) => {
            eprintln!(
                "skipping BuildKit's {name}: cannot read {} ({error}); the shared conformance \
                 data is not checked out here",
                path.display()
            );
            None
        }
    }
}

/// BuildKit's `TestShellParser4EnvVars`: `PLATFORM | input | expected`, every field trimmed;
/// `A` (all) and `U` (unix) rows run, `W` (windows) rows are skipped; `error` means failure.
#[test]
fn buildkit_env_var_vectors() {
    let Some(text) = conformance_file("envVarTest") else {
        return;
    };
    let env = [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ];
    let lexer = Lexer::new('\\');
    let (mut passed, mut skipped) = (0, 0);
    let mut failures = String::new();
    for (index, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.trim().split('|').collect();
        assert_eq!(fields.len(), 3, "envVarTest:{}: not 3 fields", index + 1);
        let (platform, source, expected) = (fields[0].trim(), fields[1].trim(), fields[2].trim());
        match platform {
            "A" | "U" => {}
            "W" => {
                skipped += 1;
                continue;
            }
            other => panic!("envVarTest:{}: unknown platform {other}", index + 1),
        }
        let result = lexer.expand_word(source, &env);
        let ok = match (&result, expected) {
            (Err(_), "error") => true,
            (Ok(expansion), _) => expansion.value == expected,
            (Err(_), _) => false,
        };
        if ok {
            passed += 1;
        } else {
            let _ = writeln!(
                failures,
                "envVarTest:{}: {source:?}: expected {expected:?}, got {result:?}",
                index + 1
            );
        }
    }
    eprintln!("BuildKit envVarTest: {passed} rows pass, {skipped} windows rows skipped");
    assert!(failures.is_empty(), "failing rows:\n{failures}");
    assert!(passed > 200, "only {passed} rows read");
}

/// BuildKit's `TestShellParser4Words`: `ENV k=v` lines accumulate the environment (the value is
/// the rest of the line, trailing spaces included); `input | w1,w2` rows go through
/// `expand_words`, with the input trimmed and the expected list only left-trimmed.
#[test]
fn buildkit_words_vectors() {
    let Some(text) = conformance_file("wordsTest") else {
        return;
    };
    let lexer = Lexer::new('\\');
    let mut env: Vec<(String, String)> = Vec::new();
    let mut passed = 0;
    let mut failures = String::new();
    for (index, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(assignment) = line.strip_prefix("ENV ") {
            let assignment = assignment.trim_start_matches(' ');
            let (name, value) = assignment.split_once('=').unwrap_or((assignment, ""));
            env.push((name.to_owned(), value.to_owned()));
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(fields.len(), 2, "wordsTest:{}: not 2 fields", index + 1);
        let source = fields[0].trim();
        let expected: Vec<String> = fields[1]
            .trim_start_matches(' ')
            .split(',')
            .map(str::to_owned)
            .collect();
        let got = match lexer.expand_words(source, &env) {
            Ok(expansion) => expansion.words,
            Err(_) => vec!["error".to_owned()],
        };
        if got == expected {
            passed += 1;
        } else {
            let _ = writeln!(
                failures,
                "wordsTest:{}: {source:?}: expected {expected:?}, got {got:?}",
                index + 1
            );
        }
    }
    eprintln!("BuildKit wordsTest: {passed} rows pass");
    assert!(failures.is_empty(), "failing rows:\n{failures}");
    assert!(passed >= 20, "only {passed} rows read");
}

/// The state a table file builds up with its directives.
struct TableState {
    env: BTreeMap<String, String>,
    lexer: Lexer,
}

impl TableState {
    fn new() -> Self {
        Self {
            env: BTreeMap::new(),
            lexer: Lexer::new('\\'),
        }
    }
}

/// A field value: verbatim, `<empty>` for the empty string, or `json:"..."` for text with
/// newlines, tabs or significant spaces at its ends.
fn field(text: &str) -> String {
    if text == "<empty>" {
        return String::new();
    }
    if let Some(json) = text.strip_prefix("json:") {
        return serde_json::from_str(json)
            .unwrap_or_else(|error| panic!("bad json {json}: {error}"));
    }
    text.to_owned()
}

fn error_kind(error: &ExpandError) -> &'static str {
    match error {
        ExpandError::UnterminatedSingleQuote { .. } => "unterminated_single_quote",
        ExpandError::UnterminatedDoubleQuote { .. } => "unterminated_double_quote",
        ExpandError::MissingBrace { .. } => "missing_brace",
        ExpandError::MissingSlash { .. } => "missing_slash",
        ExpandError::BadSubstitution { .. } => "bad_substitution",
        ExpandError::UnsupportedModifier { .. } => "unsupported_modifier",
        ExpandError::VariableUnset { .. } => "variable_unset",
        ExpandError::VariableEmpty { .. } => "variable_empty",
        ExpandError::InvalidPattern { .. } => "invalid_pattern",
        ExpandError::NestingTooDeep { .. } => "nesting_too_deep",
    }
}

/// Checks `matched=A,B unmatched=C`; a key left out means the empty set.
fn check_sets(
    spec: &str,
    matched: &BTreeSet<String>,
    unmatched: &BTreeSet<String>,
) -> Option<String> {
    let mut want_matched = BTreeSet::new();
    let mut want_unmatched = BTreeSet::new();
    for part in spec.split_whitespace() {
        let (key, names) = part
            .split_once('=')
            .unwrap_or_else(|| panic!("bad set {part}"));
        let names: BTreeSet<String> = names
            .split(',')
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect();
        match key {
            "matched" => want_matched = names,
            "unmatched" => want_unmatched = names,
            other => panic!("unknown set {other}"),
        }
    }
    (&want_matched != matched || &want_unmatched != unmatched).then(|| {
        format!(
            "sets: expected matched={want_matched:?} unmatched={want_unmatched:?}, got \
             matched={matched:?} unmatched={unmatched:?}"
        )
    })
}

/// Runs one row; `Some(reason)` when it fails.
fn run_row(state: &TableState, kind: &str, fields: &[&str]) -> Option<String> {
    let input = field(fields[0]);
    let expected = fields[1];
    let extra = fields.get(2).copied();
    match kind {
        "word" => match state.lexer.expand_word(&input, &state.env) {
            Ok(Expansion {
                value,
                matched,
                unmatched,
            }) => {
                let want = field(expected);
                if value != want {
                    return Some(format!("expected {want:?}, got {value:?}"));
                }
                extra.and_then(|sets| check_sets(sets, &matched, &unmatched))
            }
            Err(error) => Some(format!("expected {expected:?}, got error {error:?}")),
        },
        "words" => match state.lexer.expand_words(&input, &state.env) {
            Ok(expansion) => {
                let want: Vec<String> = serde_json::from_str(expected)
                    .unwrap_or_else(|error| panic!("bad words {expected}: {error}"));
                if expansion.words != want {
                    return Some(format!("expected {want:?}, got {:?}", expansion.words));
                }
                extra.and_then(|sets| check_sets(sets, &expansion.matched, &expansion.unmatched))
            }
            Err(error) => Some(format!("expected {expected}, got error {error:?}")),
        },
        "fail" | "fail-words" => {
            let result = if kind == "fail" {
                state.lexer.expand_word(&input, &state.env).map(|e| e.value)
            } else {
                state
                    .lexer
                    .expand_words(&input, &state.env)
                    .map(|e| e.words.join(","))
            };
            let error = match result {
                Ok(value) => return Some(format!("expected an error, got {value:?}")),
                Err(error) => error,
            };
            let (want_kind, want_offset) = match expected.split_once(" @") {
                Some((kind, offset)) => (kind, Some(offset.parse::<usize>().expect("offset"))),
                None => (expected, None),
            };
            if error_kind(&error) != want_kind {
                return Some(format!("expected {want_kind}, got {error:?}"));
            }
            if want_offset.is_some_and(|offset| offset != error.offset()) {
                return Some(format!("expected offset {want_offset:?}, got {error:?}"));
            }
            match extra {
                Some(message) if message != error.to_string() => Some(format!(
                    "expected message {message:?}, got {:?}",
                    error.to_string()
                )),
                _ => None,
            }
        }
        other => panic!("unknown row kind {other}"),
    }
}

fn apply_directive(state: &mut TableState, line: &str) -> bool {
    if let Some(assignment) = line.strip_prefix("env ") {
        let (name, value) = assignment.split_once('=').expect("env NAME=value");
        state.env.insert(name.to_owned(), field(value));
    } else if let Some(name) = line.strip_prefix("unset ") {
        state.env.remove(name);
    } else if let Some(escape) = line.strip_prefix("escape ") {
        let mut chars = escape.chars();
        let escape = chars.next().expect("escape character");
        assert!(chars.next().is_none(), "one escape character");
        state.lexer = Lexer::new(escape);
    } else if let Some(option) = line.strip_prefix("option ") {
        let (name, on) = option.split_once(' ').expect("option NAME on|off");
        let on = match on {
            "on" => true,
            "off" => false,
            other => panic!("option value {other}"),
        };
        let lexer = state.lexer.clone();
        state.lexer = match name {
            "raw_quotes" => lexer.raw_quotes(on),
            "raw_escapes" => lexer.raw_escapes(on),
            "skip_unset" => lexer.skip_unset(on),
            "bracket_expressions" => lexer.bracket_expressions(on),
            other => panic!("unknown option {other}"),
        };
    } else {
        return false;
    }
    true
}

fn table_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(TABLES)
        .unwrap_or_else(|error| panic!("{TABLES} must exist: {error}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "txt"))
        .collect();
    files.sort();
    files
}

/// kiln's own tables (format in `testdata/words/README.md`). Never skipped.
#[test]
fn word_tables() {
    let mut rows = 0;
    let mut failures = String::new();
    for path in table_files() {
        let text = std::fs::read_to_string(&path).expect("readable table");
        let name = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let mut state = TableState::new();
        for (index, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.trim().is_empty() || apply_directive(&mut state, line)
            {
                continue;
            }
            let (kind, rest) = line
                .split_once(" | ")
                .unwrap_or_else(|| panic!("{name}:{}: bad row", index + 1));
            let fields: Vec<&str> = rest.split(" | ").collect();
            assert!(
                (2..=3).contains(&fields.len()),
                "{name}:{}: 3 or 4 fields",
                index + 1
            );
            rows += 1;
            if let Some(reason) = run_row(&state, kind.trim(), &fields) {
                let _ = writeln!(failures, "{name}:{}: {line}\n    {reason}", index + 1);
            }
        }
    }
    eprintln!("testdata/words: {rows} rows");
    assert!(failures.is_empty(), "failing rows:\n{failures}");
    assert!(rows >= 80, "only {rows} rows in the tables");
}

#[test]
fn errors_render_in_buildkit_wording() {
    let env: [(&str, &str); 1] = [("EMPTY", "")];
    let lexer = Lexer::new('\\');
    let message = |word: &str| lexer.expand_word(word, &env).expect_err(word).to_string();
    assert_eq!(message("${a"), "syntax error: missing '}'");
    assert_eq!(message("${}"), "syntax error: bad substitution");
    assert_eq!(message("${a/b}"), "syntax error: missing '/' in ${}");
    assert_eq!(
        message("${a:=b}"),
        "unsupported modifier (:=) in substitution"
    );
    assert_eq!(message("${a?}"), "a: is not allowed to be unset");
    assert_eq!(message("${EMPTY:?}"), "EMPTY: is not allowed to be empty");
    assert_eq!(message("${a:?set $EMPTY it}"), "a: set  it");
    assert_eq!(
        message("'a"),
        "unexpected end of statement while looking for matching single-quote"
    );
    assert_eq!(
        message("\"a"),
        "unexpected end of statement while looking for matching double-quote"
    );
    assert_eq!(
        message("${EMPTY#\\q}"),
        "invalid pattern (\\q) in substitution: invalid escape '\\q'"
    );
}

/// BuildKit's `TestProcessWithMatchesPlatform`: the release-name idiom of its docs.
#[test]
fn optional_suffix_idiom_from_buildkit_release_names() {
    let lexer = Lexer::default();
    let word =
        "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz";
    let mut env = BTreeMap::new();
    for (name, value) in [
        ("VERSION", "v1.2.3"),
        ("TARGETOS", "linux"),
        ("TARGETARCH", "arm"),
    ] {
        env.insert(name.to_owned(), value.to_owned());
    }
    env.insert("TARGETVARIANT".to_owned(), "v7".to_owned());
    assert_eq!(
        lexer.expand_word(word, &env).unwrap().value,
        "something-v1.2.3.linux-arm-v7.tar.gz"
    );
    env.insert("TARGETVARIANT".to_owned(), String::new());
    assert_eq!(
        lexer.expand_word(word, &env).unwrap().value,
        "something-v1.2.3.linux-arm.tar.gz"
    );
    env.remove("TARGETVARIANT");
    let expansion = lexer.expand_word(word, &env).unwrap();
    assert_eq!(expansion.value, "something-v1.2.3.linux-arm.tar.gz");
    assert!(expansion.unmatched.contains("TARGETVARIANT"));
}

#[test]
fn later_pairs_win_in_a_list_environment() {
    let env = vec![
        ("A".to_owned(), "first".to_owned()),
        ("A".to_owned(), "second".to_owned()),
    ];
    assert_eq!(env.lookup("A"), Some("second"));
    let slice: &[(&str, &str)] = &[("A", "1"), ("B", "2"), ("A", "3")];
    let expansion = Lexer::default().expand_word("$A$B", &slice).unwrap();
    assert_eq!(expansion.value, "32");
    let map: std::collections::HashMap<String, String> = [("A".to_owned(), "h".to_owned())].into();
    assert_eq!(Lexer::default().expand_word("$A", &map).unwrap().value, "h");
}

#[test]
fn nesting_is_bounded_instead_of_overflowing_the_stack() {
    let env: [(&str, &str); 0] = [];
    let lexer = Lexer::default();
    let nested = |depth: usize| format!("{}x{}", "${a:-".repeat(depth), "}".repeat(depth));
    assert_eq!(
        lexer.expand_word(&nested(MAX_NESTING), &env).unwrap().value,
        "x"
    );
    let error = lexer.expand_word(&nested(100_000), &env).unwrap_err();
    assert_eq!(
        error,
        ExpandError::NestingTooDeep {
            limit: MAX_NESTING,
            offset: 5 * MAX_NESTING
        }
    );
}

/// A backtracking matcher would take exponential time on these; Go's regexp (and ours) is a
/// Pike VM, linear in the value for a given pattern.
#[test]
fn pathological_patterns_finish_quickly() {
    let value = "a".repeat(3000);
    let env = [("V", value.as_str())];
    let lexer = Lexer::default();
    let stars = "*a".repeat(25);
    let started = Instant::now();
    for word in [
        format!("${{V#{stars}c}}"),
        format!("${{V##{stars}c}}"),
        format!("${{V%{stars}c}}"),
        format!("${{V%%c{stars}}}"),
        format!("${{V/{stars}c/x}}"),
        format!("${{V//{stars}c/x}}"),
    ] {
        assert_eq!(
            lexer.expand_word(&word, &env).unwrap().value,
            value,
            "{word}"
        );
    }
    assert_eq!(
        lexer.expand_word("${V//a/b}", &env).unwrap().value,
        "b".repeat(3000)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// Reference semantics for patterns: the first match a backtracking search finds, trying
/// greedy stars longest-first and lazy stars shortest-first, leftmost start first. This is
/// what Go's regexp (leftmost-first) returns for the expressions BuildKit builds. Exponential;
/// only for small inputs.
fn reference_match(pattern: &[char], text: &[char], greedy: bool) -> Option<usize> {
    match pattern.split_first() {
        None => Some(0),
        Some((&'*', rest)) => {
            let run = text.iter().take_while(|&&ch| ch != '\n').count();
            let mut lengths: Vec<usize> = (0..=run).collect();
            if greedy {
                lengths.reverse();
            }
            lengths.into_iter().find_map(|length| {
                reference_match(rest, &text[length..], greedy).map(|end| end + length)
            })
        }
        Some((&'?', rest)) => match text.first() {
            Some(&ch) if ch != '\n' => reference_match(rest, &text[1..], greedy).map(|end| end + 1),
            _ => None,
        },
        Some((&expected, rest)) => match text.first() {
            Some(&ch) if ch == expected => {
                reference_match(rest, &text[1..], greedy).map(|end| end + 1)
            }
            _ => None,
        },
    }
}

fn reference_trim_prefix(pattern: &str, value: &str, greedy: bool) -> String {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = value.chars().collect();
    match reference_match(&pattern, &text, greedy) {
        Some(end) => text[end..].iter().collect(),
        None => value.to_owned(),
    }
}

fn reference_replace_first(pattern: &str, value: &str, replacement: &str) -> String {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = value.chars().collect();
    for start in 0..=text.len() {
        if let Some(length) = reference_match(&pattern, &text[start..], true) {
            let before: String = text[..start].iter().collect();
            let after: String = text[start + length..].iter().collect();
            return format!("{before}{replacement}{after}");
        }
    }
    value.to_owned()
}

fn reversed(text: &str) -> String {
    text.chars().rev().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any text expands or fails cleanly, in both modes, with both escape characters and any
    /// options, and within a time that rules out blow-ups.
    #[test]
    fn arbitrary_text_never_panics(
        text in r#"[$\{\}:\-+?#%/*\[\]!\\`'" \na-c0-9_.=]{0,80}"#,
        backtick in any::<bool>(),
        options in any::<[bool; 4]>(),
    ) {
        let env = [("a", "a*b?c a"), ("b", ""), ("c", "x\ny"), ("_", "$a")];
        let lexer = Lexer::new(if backtick { '`' } else { '\\' })
            .raw_quotes(options[0])
            .raw_escapes(options[1])
            .skip_unset(options[2])
            .bracket_expressions(options[3]);
        let started = Instant::now();
        let word = lexer.expand_word(&text, &env);
        let words = lexer.expand_words(&text, &env);
        prop_assert!(started.elapsed() < Duration::from_secs(2));
        // Both entry points run the same lexer: they fail on the same inputs.
        prop_assert_eq!(word.is_ok(), words.is_ok());
        if let Err(error) = word {
            prop_assert!(error.offset() <= text.len());
            prop_assert!(!error.to_string().is_empty());
        }
    }

    /// `#`, `##`, `%`, `%%` and `/` agree with the reference backtracking semantics.
    #[test]
    fn patterns_match_like_go_regexp(
        pattern in "[ab*?]{0,7}",
        value in "[ab\n]{0,10}",
    ) {
        let env = [("v", value.as_str())];
        let lexer = Lexer::default();
        let expand = |word: String| lexer.expand_word(&word, &env).unwrap().value;
        let pattern_rev = reversed(&pattern);
        let value_rev = reversed(&value);
        prop_assert_eq!(expand(format!("${{v#{pattern}}}")), reference_trim_prefix(&pattern, &value, false));
        prop_assert_eq!(expand(format!("${{v##{pattern}}}")), reference_trim_prefix(&pattern, &value, true));
        prop_assert_eq!(
            expand(format!("${{v%{pattern}}}")),
            reversed(&reference_trim_prefix(&pattern_rev, &value_rev, false))
        );
        prop_assert_eq!(
            expand(format!("${{v%%{pattern}}}")),
            reversed(&reference_trim_prefix(&pattern_rev, &value_rev, true))
        );
        // An empty pattern would turn `/` into `//`.
        if !pattern.is_empty() {
            prop_assert_eq!(expand(format!("${{v/{pattern}/X}}")), reference_replace_first(&pattern, &value, "X"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Repeating a piece of input n times costs about n times as much: no quadratic or worse
    /// behaviour in the lexer or the pattern matcher (a generous bound, to stay robust on a
    /// loaded machine).
    #[test]
    fn expansion_time_grows_linearly(
        piece in r#"(\$\{v(#|##|%|%%|/|//|:-|-|:\+)[*?ab]{0,6}(/[ab]{0,2})?\}|[ab "'\\]){1,6}"#,
    ) {
        let value = "ab".repeat(200);
        let env = [("v", value.as_str())];
        let lexer = Lexer::default();
        let time = |copies: usize| {
            let text = piece.repeat(copies);
            let started = Instant::now();
            let _ = lexer.expand_word(&text, &env);
            let _ = lexer.expand_words(&text, &env);
            started.elapsed()
        };
        let once = time(4);
        let many = time(32);
        prop_assert!(
            many <= once * 40 + Duration::from_millis(50),
            "4 copies: {:?}, 32 copies: {:?}", once, many
        );
    }
}
