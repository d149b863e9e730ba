//! docker's `json` template function: Go's `json.Encoder` with `SetEscapeHTML(false)` and the
//! trailing newline trimmed.
//!
//! Compact, object keys sorted (Go sorts map keys; serde_json's map is ordered), `<`, `>` and
//! `&` kept as they are (docker turns HTML escaping off), U+2028 and U+2029 escaped as Go
//! always does, floats spelt as Go spells them (`1`, not `1.0`).

use std::fmt::Write as _;

use serde_json::Value;

use crate::float;

pub(crate) fn encode(value: Option<&Value>) -> String {
    let mut out = String::new();
    match value {
        None => out.push_str("null"),
        Some(value) => write_value(value, &mut out),
    }
    out
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
        Value::Number(number) => {
            if let Some(int) = number.as_i64() {
                let _ = write!(out, "{int}");
            } else if let Some(uint) = number.as_u64() {
                let _ = write!(out, "{uint}");
            } else {
                out.push_str(&float::format_json(number.as_f64().unwrap_or(0.0)));
            }
        }
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_value(item, out);
            }
            out.push('}');
        }
    }
}

fn write_string(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compact_sorted_and_not_html_escaped() {
        let value = json!({"b": [1, 2.5, "<a&b>"], "a": null, "c": {"x": true}});
        assert_eq!(
            encode(Some(&value)),
            r#"{"a":null,"b":[1,2.5,"<a&b>"],"c":{"x":true}}"#
        );
    }

    #[test]
    fn control_characters_escaped() {
        assert_eq!(encode(Some(&json!("a\u{1}\u{2028}"))), r#""a\u0001\u2028""#);
    }
}
