//! Go's string quoting (`strconv.Quote`, `%q`) and unquoting of template literals.

use std::fmt::Write as _;

/// Go's `unicode.IsPrint`, approximated with the standard library: letters, marks, numbers,
/// punctuation, symbols and the ASCII space. Format characters and separators other than
/// U+0020 are not printable.
pub(crate) fn is_print(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    !matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E000}'..='\u{F8FF}'
            | '\u{F0000}'..='\u{10FFFF}'
    )
}

/// `strconv.Quote`.
pub(crate) fn go_quote(text: &str) -> String {
    quote_with(text, '"', false)
}

/// `%.Nq`: quotes the first `runes` characters.
pub(crate) fn go_quote_prefix(text: &str, runes: usize) -> String {
    let prefix: String = text.chars().take(runes).collect();
    go_quote(&prefix)
}

/// Quotes with `quote` as delimiter; `ascii` escapes everything outside ASCII (`%+q`).
pub(crate) fn quote_with(text: &str, quote: char, ascii: bool) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        push_escaped(&mut out, c, quote, ascii);
    }
    out.push(quote);
    out
}

/// Go's `appendEscapedRune`.
pub(crate) fn push_escaped(out: &mut String, c: char, quote: char, ascii: bool) {
    if c == quote || c == '\\' {
        out.push('\\');
        out.push(c);
        return;
    }
    if (!ascii || c.is_ascii()) && is_print(c) {
        out.push(c);
        return;
    }
    match c {
        '\u{7}' => out.push_str("\\a"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{b}' => out.push_str("\\v"),
        _ => {
            let code = u32::from(c);
            if code < u32::from(' ') || code == 0x7f {
                let _ = write!(out, "\\x{code:02x}");
            } else if code < 0x10000 {
                let _ = write!(out, "\\u{code:04x}");
            } else {
                let _ = write!(out, "\\U{code:08x}");
            }
        }
    }
}

/// Go's `strconv.Unquote` for the three literal forms a template can hold: `"…"` with Go
/// escapes, `` `…` `` raw, and `'…'` character constants (returned as a one-character string).
/// Byte escapes that do not form UTF-8 (`"\xff"`) become U+FFFD: Rust strings hold only UTF-8.
pub(crate) fn unquote(literal: &str) -> Option<String> {
    let mut chars = literal.chars();
    let quote = chars.next()?;
    let body = literal.get(1..literal.len().checked_sub(1)?)?;
    if !literal.ends_with(quote) || literal.len() < 2 {
        return None;
    }
    match quote {
        '`' => {
            if body.contains('`') {
                return None;
            }
            // Go drops carriage returns from raw strings.
            Some(body.replace('\r', ""))
        }
        '"' | '\'' => {
            let mut bytes = Vec::with_capacity(body.len());
            let mut rest = body;
            while let Some(c) = rest.chars().next() {
                rest = &rest[c.len_utf8()..];
                if c == quote || c == '\n' {
                    return None;
                }
                if c != '\\' {
                    let mut buffer = [0; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
                    continue;
                }
                let escape = rest.chars().next()?;
                rest = &rest[escape.len_utf8()..];
                let simple = match escape {
                    'a' => Some(7u8),
                    'b' => Some(8),
                    'f' => Some(12),
                    'n' => Some(b'\n'),
                    'r' => Some(b'\r'),
                    't' => Some(b'\t'),
                    'v' => Some(11),
                    '\\' => Some(b'\\'),
                    '\'' if quote == '\'' => Some(b'\''),
                    '"' if quote == '"' => Some(b'"'),
                    _ => None,
                };
                if let Some(byte) = simple {
                    bytes.push(byte);
                    continue;
                }
                match escape {
                    'x' => {
                        let hex = rest.get(..2)?;
                        bytes.push(u8::from_str_radix(hex, 16).ok()?);
                        rest = &rest[2..];
                    }
                    '0'..='7' => {
                        let digits = rest.get(..2)?;
                        let value = u32::from_str_radix(&format!("{escape}{digits}"), 8).ok()?;
                        bytes.push(u8::try_from(value).ok()?);
                        rest = &rest[2..];
                    }
                    'u' | 'U' => {
                        let width = if escape == 'u' { 4 } else { 8 };
                        let hex = rest.get(..width)?;
                        if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                            return None;
                        }
                        let code = u32::from_str_radix(hex, 16).ok()?;
                        let c = char::from_u32(code)?;
                        let mut buffer = [0; 4];
                        bytes.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
                        rest = &rest[width..];
                    }
                    _ => return None,
                }
            }
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if quote == '\'' && text.chars().count() != 1 {
                return None;
            }
            Some(text)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_like_strconv() {
        assert_eq!(go_quote("a\"b\\c\n\u{1}é"), r#""a\"b\\c\n\x01é""#);
        assert_eq!(quote_with("é", '"', true), r#""\u00e9""#);
    }

    #[test]
    fn unquote_handles_go_escapes() {
        assert_eq!(
            unquote(r#""a\tb\x41\101\u00e9""#).as_deref(),
            Some("a\tbAAé")
        );
        assert_eq!(unquote("`a\\n`").as_deref(), Some("a\\n"));
        assert_eq!(unquote(r"'\n'").as_deref(), Some("\n"));
        assert_eq!(unquote(r#""\q""#), None);
        assert_eq!(unquote("'ab'"), None);
    }
}
