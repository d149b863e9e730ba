//! The pest grammar of a logical Dockerfile line, and small functions over it.
//!
//! This is the only file that names pest's `Rule` and `Pair`: everything it returns is plain data
//! with byte ranges into the text it was given. Whatever a rule does not accept comes back as
//! `None`, and the caller turns that into a diagnostic in human words.

// `Rule` has one variant per grammar rule; each function picks the few it reads.
#![allow(clippy::wildcard_enum_match_arm)]

use std::ops::Range;
use std::time::Duration;

use pest::Parser as _;
use pest::iterators::Pair;
use pest_derive::Parser;

#[derive(Parser)]
#[grammar = "dockerfile.pest"]
struct LineGrammar;

/// Nested JSON arrays or objects deeper than this are not handed to the (recursive) grammar; such
/// text is treated as not JSON, which keeps any input from exhausting the stack.
const MAX_JSON_DEPTH: usize = 64;

/// Splits `KEYWORD arguments` (the line already trimmed). Returns the keyword range and the
/// arguments range (empty at the end when there are none).
pub(crate) fn split_instruction(line: &str) -> Option<(Range<usize>, Range<usize>)> {
    let pair = LineGrammar::parse(Rule::instruction, line).ok()?.next()?;
    let mut keyword = None;
    let mut arguments = line.len()..line.len();
    for inner in pair.into_inner() {
        match inner.as_rule() {
            Rule::keyword => keyword = Some(range(&inner)),
            Rule::arguments => arguments = range(&inner),
            _ => {}
        }
    }
    Some((keyword?, arguments))
}

/// A `--name[=value]` flag with its quotes and escapes removed.
#[derive(Debug, Clone)]
pub(crate) struct RawFlag {
    pub name: String,
    pub value: Option<String>,
    pub range: Range<usize>,
}

/// Takes the leading flags off `arguments`. Returns them and where the rest starts.
pub(crate) fn extract_flags(arguments: &str) -> (Vec<RawFlag>, usize) {
    let Some(pair) = LineGrammar::parse(Rule::flags, arguments)
        .ok()
        .and_then(|mut pairs| pairs.next())
    else {
        // The rule accepts every input (the rest takes anything); keep the text as arguments.
        return (Vec::new(), 0);
    };
    let mut flags = Vec::new();
    let mut rest = arguments.len();
    for inner in pair.into_inner() {
        match inner.as_rule() {
            Rule::flag => {
                let text = unquote_flag(&inner.as_str()[2..]);
                let (name, value) = match text.split_once('=') {
                    Some((name, value)) => (name.to_string(), Some(value.to_string())),
                    None => (text, None),
                };
                flags.push(RawFlag {
                    name,
                    value,
                    range: range(&inner),
                });
            }
            Rule::rest => rest = inner.as_span().start(),
            _ => {}
        }
    }
    (flags, rest)
}

/// Removes quotes and `\` escapes from a flag word, as BuildKit's extractBuilderFlags does.
fn unquote_flag(raw: &str) -> String {
    let mut text = String::with_capacity(raw.len());
    let mut quote = None;
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match (c, quote) {
            ('\\', _) => {
                if let Some(next) = chars.next() {
                    text.push(next);
                }
            }
            ('"' | '\'', None) => quote = Some(c),
            (c, Some(open)) if c == open => quote = None,
            (c, _) => text.push(c),
        }
    }
    text
}

/// Splits text into white-space separated words that keep their quotes and escapes (BuildKit's
/// parseWords). `escape` is the escape character of the Dockerfile.
pub(crate) fn split_words(text: &str, escape: char) -> Vec<(String, Range<usize>)> {
    let mut input = String::with_capacity(text.len() + 1);
    input.push(escape);
    input.push_str(text);
    let shift = escape.len_utf8();
    let Some(pair) = LineGrammar::parse(Rule::words, &input)
        .ok()
        .and_then(|mut pairs| pairs.next())
    else {
        return Vec::new();
    };
    pair.into_inner()
        .filter(|inner| inner.as_rule() == Rule::word)
        .map(|word| {
            let span = word.as_span();
            let mut end = span.end();
            if word
                .clone()
                .into_inner()
                .any(|inner| inner.as_rule() == Rule::dangling_escape)
            {
                end -= shift;
            }
            (
                input[span.start()..end].to_string(),
                span.start() - shift..span.end() - shift,
            )
        })
        .collect()
}

/// What a text is as a JSON array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JsonArray {
    /// A JSON array of strings: the decoded strings and their ranges (quotes included).
    Strings(Vec<(String, Range<usize>)>),
    /// Valid JSON, but an array with something other than strings in it: an error in BuildKit.
    NotStrings,
    /// Not a JSON array: the text is used in shell form.
    Invalid,
}

/// Reads text as Go's `json.Unmarshal` into `[]interface{}` would.
pub(crate) fn json_array(text: &str) -> JsonArray {
    if !text.trim_start().starts_with('[') || json_depth(text) > MAX_JSON_DEPTH {
        return JsonArray::Invalid;
    }
    let Some(pair) = LineGrammar::parse(Rule::json_array, text)
        .ok()
        .and_then(|mut pairs| pairs.next())
    else {
        return JsonArray::Invalid;
    };
    let mut strings = Vec::new();
    for inner in pair.into_inner() {
        match inner.as_rule() {
            Rule::json_string => {
                let raw = inner.as_str();
                strings.push((decode_json_string(&raw[1..raw.len() - 1]), range(&inner)));
            }
            Rule::json_other => return JsonArray::NotStrings,
            _ => {}
        }
    }
    JsonArray::Strings(strings)
}

/// The deepest nesting of `[`/`{` outside strings.
fn json_depth(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for c in text.chars() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Decodes the body of a JSON string the grammar accepted. Lone surrogates become U+FFFD, as in Go.
fn decode_json_string(body: &str) -> String {
    let mut text = String::with_capacity(body.len());
    let mut chars = body.chars();
    let mut pending_high: Option<u16> = None;
    while let Some(c) = chars.next() {
        if c != '\\' {
            flush_surrogate(&mut text, &mut pending_high);
            text.push(c);
            continue;
        }
        let Some(kind) = chars.next() else { break };
        let simple = match kind {
            '"' => Some('"'),
            '\\' => Some('\\'),
            '/' => Some('/'),
            'b' => Some('\u{8}'),
            'f' => Some('\u{c}'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            _ => None,
        };
        if let Some(simple) = simple {
            flush_surrogate(&mut text, &mut pending_high);
            text.push(simple);
            continue;
        }
        let hex: String = chars.by_ref().take(4).collect();
        let unit = u16::from_str_radix(&hex, 16).unwrap_or(0xFFFD);
        match unit {
            0xD800..=0xDBFF => {
                flush_surrogate(&mut text, &mut pending_high);
                pending_high = Some(unit);
            }
            0xDC00..=0xDFFF => match pending_high.take() {
                Some(high) => {
                    let code =
                        0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(unit) - 0xDC00);
                    text.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
                }
                None => text.push('\u{FFFD}'),
            },
            _ => {
                flush_surrogate(&mut text, &mut pending_high);
                text.push(char::from_u32(u32::from(unit)).unwrap_or('\u{FFFD}'));
            }
        }
    }
    flush_surrogate(&mut text, &mut pending_high);
    text
}

fn flush_surrogate(text: &mut String, pending_high: &mut Option<u16>) {
    if pending_high.take().is_some() {
        text.push('\u{FFFD}');
    }
}

/// Parses a Go duration (`time.ParseDuration`): `0`, `300ms`, `1.5h`, `2h45m`. Negative values
/// parse (the caller rejects them) and come back as `Err(())`-free `(negative, duration)`.
pub(crate) fn duration(text: &str) -> Option<(bool, Duration)> {
    let pair = LineGrammar::parse(Rule::duration, text).ok()?.next()?;
    let mut negative = false;
    let mut total_nanos: f64 = 0.0;
    for inner in pair.into_inner() {
        match inner.as_rule() {
            Rule::duration_sign => negative = inner.as_str() == "-",
            Rule::duration_part => {
                let mut parts = inner.into_inner();
                let number: f64 = parts.next()?.as_str().parse().ok()?;
                let unit = match parts.next()?.as_str() {
                    "ns" => 1.0,
                    "us" | "µs" | "μs" => 1e3,
                    "ms" => 1e6,
                    "s" => 1e9,
                    "m" => 60e9,
                    _ => 3600e9,
                };
                total_nanos += number * unit;
            }
            _ => {}
        }
    }
    if total_nanos > u64::MAX as f64 {
        return None;
    }
    Some((negative, Duration::from_nanos(total_nanos.round() as u64)))
}

/// Splits one CSV record (Go's `encoding/csv`) into unquoted fields with their ranges.
pub(crate) fn csv_fields(text: &str) -> Option<Vec<(String, Range<usize>)>> {
    let pair = LineGrammar::parse(Rule::csv, text).ok()?.next()?;
    Some(
        pair.into_inner()
            .filter_map(|field| match field.as_rule() {
                Rule::csv_quoted => {
                    let raw = field.as_str();
                    Some((raw[1..raw.len() - 1].replace("\"\"", "\""), range(&field)))
                }
                Rule::csv_plain => Some((field.as_str().to_string(), range(&field))),
                _ => None,
            })
            .collect(),
    )
}

/// A word that opens a here-document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeredocMarker {
    pub file_descriptor: Option<u32>,
    pub chomp: bool,
    /// The delimiter as written (maybe quoted).
    pub name: String,
}

/// Reads `[FD]<<[-]NAME` (BuildKit's reHeredoc).
pub(crate) fn heredoc_marker(word: &str) -> Option<HeredocMarker> {
    let pair = LineGrammar::parse(Rule::heredoc_marker, word)
        .ok()?
        .next()?;
    let mut marker = HeredocMarker {
        file_descriptor: None,
        chomp: false,
        name: String::new(),
    };
    for inner in pair.into_inner() {
        match inner.as_rule() {
            Rule::heredoc_fd if !inner.as_str().is_empty() => {
                marker.file_descriptor = Some(inner.as_str().parse().ok()?);
            }
            Rule::heredoc_chomp => marker.chomp = true,
            Rule::heredoc_name => marker.name = inner.as_str().to_string(),
            _ => {}
        }
    }
    Some(marker)
}

fn range(pair: &Pair<'_, Rule>) -> Range<usize> {
    let span = pair.as_span();
    span.start()..span.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_stop_at_the_first_word_without_dashes() {
        let (flags, rest) = extract_flags("--from=build --chown=\"a b\" src dst");
        let names: Vec<_> = flags
            .iter()
            .map(|f| (f.name.as_str(), f.value.as_deref()))
            .collect();
        assert_eq!(names, [("from", Some("build")), ("chown", Some("a b"))]);
        assert_eq!(&"--from=build --chown=\"a b\" src dst"[rest..], "src dst");
    }

    #[test]
    fn a_lone_double_dash_ends_the_flags() {
        let (flags, rest) = extract_flags("--doit=true -- --not-a-flag x");
        assert_eq!(flags.len(), 1);
        assert_eq!(&"--doit=true -- --not-a-flag x"[rest..], "--not-a-flag x");
    }

    #[test]
    fn words_keep_quotes_and_escapes() {
        let words: Vec<_> = split_words(r#"a="b c" d\ e 'f\'g"#, '\\')
            .into_iter()
            .map(|(w, _)| w)
            .collect();
        assert_eq!(words, [r#"a="b c""#, r"d\ e", r"'f\'g"]);
    }

    #[test]
    fn words_drop_an_escape_at_the_end() {
        let words: Vec<_> = split_words(r"a b\", '\\')
            .into_iter()
            .map(|(w, _)| w)
            .collect();
        assert_eq!(words, ["a", "b"]);
    }

    #[test]
    fn json_array_forms() {
        assert!(matches!(json_array(r#"["a", "b"]"#), JsonArray::Strings(s) if s.len() == 2));
        assert_eq!(json_array(r#"[ "a", 'b' ]"#), JsonArray::Invalid);
        assert_eq!(json_array(r#"["a", ["b"]]"#), JsonArray::NotStrings);
        assert_eq!(json_array(r#"["a"] x"#), JsonArray::Invalid);
        assert_eq!(json_array(&"[".repeat(100_000)), JsonArray::Invalid);
        assert!(
            matches!(json_array(r#"["\u00e9\ud83d\ude00\/"]"#), JsonArray::Strings(s) if s[0].0 == "é😀/")
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(duration("0"), Some((false, Duration::ZERO)));
        assert_eq!(duration("1h30m"), Some((false, Duration::from_secs(5400))));
        assert_eq!(duration("1.5s"), Some((false, Duration::from_millis(1500))));
        assert_eq!(duration("300ms"), Some((false, Duration::from_millis(300))));
        assert_eq!(duration("-1s"), Some((true, Duration::from_secs(1))));
        assert_eq!(duration("10"), None);
        assert_eq!(duration("s"), None);
    }

    #[test]
    fn csv_records() {
        let fields: Vec<_> = csv_fields(r#"type=cache,"target=/a,b",id=x"#)
            .unwrap()
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(fields, ["type=cache", "target=/a,b", "id=x"]);
        assert!(csv_fields(r#"a"b"#).is_none());
    }

    #[test]
    fn heredoc_markers() {
        let marker = heredoc_marker("3<<-\"EOF\"").unwrap();
        assert_eq!(marker.file_descriptor, Some(3));
        assert!(marker.chomp);
        assert_eq!(marker.name, "\"EOF\"");
        assert!(heredoc_marker("a<<b").is_none());
        assert!(heredoc_marker("<<<x").is_none());
    }
}
