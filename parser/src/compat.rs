//! BuildKit's AST dump format (`(from "busybox")`, `(copy ["--from=a"] "x" "/y")`), to compare
//! kiln's line scanner with BuildKit's parser on its own test files.

use std::fmt::Write as _;

use crate::error::ParseError;
use crate::syntax::{self, Arguments, Logical, Node};

/// Dumps the instructions of a Dockerfile as BuildKit's `parser.Node.Dump` does, one per line.
/// This is the parser layer only: instructions that BuildKit's later checks reject (unknown
/// flags, unknown HEALTHCHECK types) still dump.
pub fn buildkit_dump(text: &str) -> Result<String, ParseError> {
    let source = syntax::Source::new(text);
    let (_, parsed) = syntax::scan(&source)?;
    let mut out = String::new();
    for item in &parsed {
        let _ = writeln!(out, "({})", dump(&item.logical, &item.node));
    }
    Ok(out)
}

fn dump(logical: &Logical<'_>, node: &Node) -> String {
    let mut out = node.name.clone();
    if !node.flags.is_empty() {
        let flags: Vec<String> = node
            .flags
            .iter()
            .map(|flag| match &flag.value {
                Some(value) => quote(&format!("--{}={value}", flag.name)),
                None => quote(&format!("--{}", flag.name)),
            })
            .collect();
        let _ = write!(out, " [{}]", flags.join(" "));
    }
    let text = |range: &std::ops::Range<usize>| logical.text[range.clone()].to_string();
    let values: Vec<String> = match &node.arguments {
        Arguments::None => Vec::new(),
        Arguments::Json(strings) | Arguments::Words(strings) => {
            strings.iter().map(|(s, _)| quote(s)).collect()
        }
        Arguments::Text(range) => vec![quote(&text(range))],
        Arguments::Split(ranges) => ranges.iter().map(|range| quote(&text(range))).collect(),
        Arguments::Pairs { pairs, legacy } => pairs
            .iter()
            .flat_map(|(key, value, _, _)| {
                [
                    quote(key),
                    quote(value),
                    quote(if *legacy { "" } else { "=" }),
                ]
            })
            .collect(),
        Arguments::Healthcheck { kind, command } => {
            let mut values = vec![quote(&text(kind))];
            match &**command {
                Arguments::Json(strings) => values.extend(strings.iter().map(|(s, _)| quote(s))),
                Arguments::Text(range) => values.push(quote(&text(range))),
                Arguments::None
                | Arguments::Split(_)
                | Arguments::Pairs { .. }
                | Arguments::Words(_)
                | Arguments::Healthcheck { .. }
                | Arguments::Onbuild(_) => {}
            }
            values
        }
        Arguments::Onbuild(inner) => vec![format!("({})", dump(logical, inner))],
    };
    for value in values {
        out.push(' ');
        out.push_str(&value);
    }
    out
}

/// Go's `strconv.Quote`.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
