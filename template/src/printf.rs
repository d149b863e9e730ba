//! Go's `fmt.Sprint`, `fmt.Sprintln` and `fmt.Sprintf` over decoded JSON values.
//!
//! Supported verbs: `%v %s %q %d %b %o %O %x %X %c %U %e %E %f %F %g %G %t %T %%`, with the
//! flags `- + # 0 space`, width and precision (also `*`). Errors are printed inline as Go does
//! (`%!d(string=a)`, `%!s(MISSING)`, `%!(EXTRA int=1)`). Not supported: explicit argument
//! indexes (`%[1]d`), `%#v` Go syntax (printed as `%v`), `%x`/`%b` of floats.

use std::fmt::Write as _;

use serde_json::{Number, Value};

use crate::float;
use crate::quote::{is_print, quote_with};
use crate::value::{print, type_name};

/// An argument: `None` is Go's untyped nil.
pub(crate) type Arg<'a> = Option<&'a Value>;

fn is_string(arg: Arg<'_>) -> bool {
    matches!(arg, Some(Value::String(_)))
}

fn plain(arg: Arg<'_>, out: &mut String) {
    match arg {
        None => out.push_str("<nil>"),
        Some(value) => print(value, out),
    }
}

/// `fmt.Sprint`: spaces between operands when neither side is a string.
pub(crate) fn sprint(args: &[Arg<'_>]) -> String {
    let mut out = String::new();
    for (i, &arg) in args.iter().enumerate() {
        if i > 0 && !is_string(arg) && !is_string(args[i - 1]) {
            out.push(' ');
        }
        plain(arg, &mut out);
    }
    out
}

/// `fmt.Sprintln`: always spaces, and a final newline.
pub(crate) fn sprintln(args: &[Arg<'_>]) -> String {
    let mut out = String::new();
    for (i, &arg) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        plain(arg, &mut out);
    }
    out.push('\n');
    out
}

#[derive(Debug, Clone, Copy, Default)]
struct Spec {
    minus: bool,
    plus: bool,
    sharp: bool,
    space: bool,
    zero: bool,
    width: Option<usize>,
    prec: Option<usize>,
}

impl Spec {
    /// Pads to the width with spaces, or zeros on the left when the `0` flag is set.
    fn pad(&self, text: &str, out: &mut String) {
        let count = text.chars().count();
        let fill = self.width.unwrap_or(0).saturating_sub(count);
        if fill == 0 {
            out.push_str(text);
        } else if self.minus {
            out.push_str(text);
            out.extend(std::iter::repeat_n(' ', fill));
        } else {
            let c = if self.zero { '0' } else { ' ' };
            out.extend(std::iter::repeat_n(c, fill));
            out.push_str(text);
        }
    }

    fn pad_spaces(&self, text: &str, out: &mut String) {
        let spec = Spec {
            zero: false,
            ..*self
        };
        spec.pad(text, out);
    }
}

/// `fmt.Sprintf`.
pub(crate) fn sprintf(format: &str, args: &[Arg<'_>]) -> String {
    let mut out = String::new();
    let mut arg_index = 0;
    let mut chars = format.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = Spec::default();
        // Flags.
        while let Some(&(_, flag)) = chars.peek() {
            match flag {
                '#' => spec.sharp = true,
                '0' => spec.zero = !spec.minus,
                '+' => spec.plus = true,
                '-' => {
                    spec.minus = true;
                    spec.zero = false;
                }
                ' ' => spec.space = true,
                _ => break,
            }
            chars.next();
        }
        // Width.
        if chars.peek().map(|&(_, c)| c) == Some('*') {
            chars.next();
            // Go rejects widths and precisions beyond ±10⁶ (`tooLarge`).
            match args
                .get(arg_index)
                .copied()
                .flatten()
                .and_then(Value::as_i64)
                .filter(|width| width.unsigned_abs() <= 1_000_000)
            {
                Some(width) => {
                    if width < 0 {
                        spec.minus = true;
                        spec.zero = false;
                    }
                    spec.width = usize::try_from(width.unsigned_abs()).ok();
                }
                None => out.push_str("%!(BADWIDTH)"),
            }
            arg_index += 1;
        } else {
            spec.width = digits(&mut chars);
        }
        // Precision.
        if chars.peek().map(|&(_, c)| c) == Some('.') {
            chars.next();
            if chars.peek().map(|&(_, c)| c) == Some('*') {
                chars.next();
                match args
                    .get(arg_index)
                    .copied()
                    .flatten()
                    .and_then(Value::as_i64)
                    .filter(|prec| prec.unsigned_abs() <= 1_000_000)
                {
                    Some(prec) => spec.prec = usize::try_from(prec).ok(),
                    None => out.push_str("%!(BADPREC)"),
                }
                arg_index += 1;
            } else {
                spec.prec = Some(digits(&mut chars).unwrap_or(0));
            }
        }
        let Some((_, verb)) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        match args.get(arg_index) {
            None => {
                let _ = write!(out, "%!{verb}(MISSING)");
            }
            Some(&arg) => format_arg(arg, verb, &spec, &mut out),
        }
        arg_index += 1;
    }
    if arg_index < args.len() {
        out.push_str("%!(EXTRA ");
        for (i, &arg) in args[arg_index..].iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            match arg {
                None => out.push_str("<nil>"),
                Some(value) => {
                    out.push_str(type_name(value));
                    out.push('=');
                    print(value, &mut out);
                }
            }
        }
        out.push(')');
    }
    out
}

fn digits(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>) -> Option<usize> {
    let mut value: Option<usize> = None;
    while let Some(&(_, c)) = chars.peek() {
        let Some(digit) = c.to_digit(10) else { break };
        chars.next();
        value = Some(
            value
                .unwrap_or(0)
                .saturating_mul(10)
                .saturating_add(digit as usize)
                .min(1_000_000),
        );
    }
    value
}

fn bad_verb(arg: Arg<'_>, verb: char, spec: &Spec, out: &mut String) {
    let _ = write!(out, "%!{verb}(");
    match arg {
        None => out.push_str("<nil>"),
        Some(value) => {
            out.push_str(type_name(value));
            out.push('=');
            format_arg(Some(value), 'v', spec, out);
        }
    }
    out.push(')');
}

fn format_arg(arg: Arg<'_>, verb: char, spec: &Spec, out: &mut String) {
    let Some(value) = arg else {
        match verb {
            'v' | 'T' => spec.pad_spaces("<nil>", out),
            _ => bad_verb(None, verb, spec, out),
        }
        return;
    };
    if verb == 'T' {
        spec.pad_spaces(type_name(value), out);
        return;
    }
    match value {
        Value::Null => spec.pad_spaces("<nil>", out),
        Value::Bool(flag) => match verb {
            'v' | 't' => spec.pad_spaces(if *flag { "true" } else { "false" }, out),
            _ => bad_verb(arg, verb, spec, out),
        },
        Value::Number(number) => format_number(number, verb, spec, out),
        Value::String(text) => format_string(text, verb, spec, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                format_element(item, verb, spec, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push_str("map[");
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                format_string(key, verb, spec, out);
                out.push(':');
                format_element(item, verb, spec, out);
            }
            out.push(']');
        }
    }
}

/// A value inside an array or object: a nested nil prints `<nil>` whatever the verb.
fn format_element(item: &Value, verb: char, spec: &Spec, out: &mut String) {
    if item.is_null() {
        spec.pad_spaces("<nil>", out);
    } else {
        format_arg(Some(item), verb, spec, out);
    }
}

fn format_string(text: &str, verb: char, spec: &Spec, out: &mut String) {
    match verb {
        'v' | 's' => {
            let truncated: String = match spec.prec {
                Some(prec) => text.chars().take(prec).collect(),
                None => text.to_owned(),
            };
            spec.pad(&truncated, out);
        }
        'q' => {
            let text: String = match spec.prec {
                Some(prec) => text.chars().take(prec).collect(),
                None => text.to_owned(),
            };
            let quoted = if spec.sharp && can_backquote(&text) {
                format!("`{text}`")
            } else {
                quote_with(&text, '"', spec.plus)
            };
            spec.pad(&quoted, out);
        }
        'x' | 'X' => {
            let bytes = text.as_bytes();
            let bytes = &bytes[..spec.prec.unwrap_or(bytes.len()).min(bytes.len())];
            spec.pad(&hex_bytes(bytes, verb == 'X', spec), out);
        }
        _ => bad_verb(Some(&Value::String(text.to_owned())), verb, spec, out),
    }
}

fn can_backquote(text: &str) -> bool {
    text.chars()
        .all(|c| c != '`' && c != '\u{FEFF}' && (c == '\t' || !c.is_control()))
}

fn hex_bytes(bytes: &[u8], upper: bool, spec: &Spec) -> String {
    let mut out = String::new();
    for (i, byte) in bytes.iter().enumerate() {
        if spec.space && i > 0 {
            out.push(' ');
        }
        if spec.sharp && (spec.space || i == 0) {
            out.push_str(if upper { "0X" } else { "0x" });
        }
        if upper {
            let _ = write!(out, "{byte:02X}");
        } else {
            let _ = write!(out, "{byte:02x}");
        }
    }
    out
}

fn format_number(number: &Number, verb: char, spec: &Spec, out: &mut String) {
    if let Some(int) = number.as_i64() {
        format_integer(
            i128::from(int),
            verb,
            spec,
            out,
            &Value::Number(number.clone()),
        );
    } else if let Some(uint) = number.as_u64() {
        format_integer(
            i128::from(uint),
            verb,
            spec,
            out,
            &Value::Number(number.clone()),
        );
    } else {
        let value = number.as_f64().unwrap_or(0.0);
        format_float(value, verb, spec, out, &Value::Number(number.clone()));
    }
}

fn format_integer(value: i128, verb: char, spec: &Spec, out: &mut String, original: &Value) {
    let magnitude = value.unsigned_abs();
    let negative = value < 0;
    let digits = match verb {
        'v' | 'd' => magnitude.to_string(),
        'b' => format!("{magnitude:b}"),
        'o' | 'O' => format!("{magnitude:o}"),
        'x' => format!("{magnitude:x}"),
        'X' => format!("{magnitude:X}"),
        'c' => {
            let c = u32::try_from(value)
                .ok()
                .and_then(char::from_u32)
                .unwrap_or('\u{FFFD}');
            spec.pad_spaces(&c.to_string(), out);
            return;
        }
        'q' => {
            let c = u32::try_from(value)
                .ok()
                .and_then(char::from_u32)
                .unwrap_or('\u{FFFD}');
            let quoted = if spec.sharp && c != '\'' && is_print(c) {
                format!("'{c}'")
            } else {
                quote_with(&c.to_string(), '\'', spec.plus)
            };
            spec.pad_spaces(&quoted, out);
            return;
        }
        'U' => {
            let mut text = format!("U+{magnitude:04X}");
            if spec.sharp
                && let Some(c) = u32::try_from(value).ok().and_then(char::from_u32)
                && is_print(c)
            {
                let _ = write!(text, " '{c}'");
            }
            spec.pad_spaces(&text, out);
            return;
        }
        _ => {
            bad_verb(Some(original), verb, spec, out);
            return;
        }
    };
    // Precision is a minimum number of digits; `0` flag pads to the width with zeros.
    let mut min_digits = spec.prec.unwrap_or(0);
    if spec.prec.is_none()
        && spec.zero
        && !spec.minus
        && let Some(width) = spec.width
    {
        min_digits = width;
        if negative || spec.plus || spec.space {
            min_digits = min_digits.saturating_sub(1);
        }
    }
    let mut body = if spec.prec == Some(0) && value == 0 {
        String::new()
    } else {
        digits
    };
    if body.len() < min_digits {
        body = format!("{}{body}", "0".repeat(min_digits - body.len()));
    }
    let prefix = match verb {
        'b' if spec.sharp => "0b",
        'o' if spec.sharp && !body.starts_with('0') => "0",
        'O' => "0o",
        'x' if spec.sharp => "0x",
        'X' if spec.sharp => "0X",
        _ => "",
    };
    let sign = if negative {
        "-"
    } else if spec.plus {
        "+"
    } else if spec.space {
        " "
    } else {
        ""
    };
    spec.pad_spaces(&format!("{sign}{prefix}{body}"), out);
}

fn format_float(value: f64, verb: char, spec: &Spec, out: &mut String, original: &Value) {
    let (go_verb, prec) = match verb {
        'v' => ('g', spec.prec),
        'g' | 'G' => (verb, spec.prec),
        'e' | 'E' | 'f' | 'F' => (verb, Some(spec.prec.unwrap_or(6))),
        _ => {
            bad_verb(Some(original), verb, spec, out);
            return;
        }
    };
    let text = float::format(value, go_verb, prec);
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => ("-", rest.to_owned()),
        None => match text.strip_prefix('+') {
            Some(rest) => (if spec.plus { "+" } else { "" }, rest.to_owned()),
            None if spec.plus => ("+", text.clone()),
            None if spec.space => (" ", text.clone()),
            None => ("", text.clone()),
        },
    };
    let finite = value.is_finite();
    let length = sign.len() + digits.chars().count();
    match spec.width {
        Some(width) if spec.zero && !spec.minus && finite && width > length => {
            out.push_str(sign);
            out.extend(std::iter::repeat_n('0', width - length));
            out.push_str(&digits);
        }
        _ => spec.pad_spaces(&format!("{sign}{digits}"), out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(format: &str, args: &[Value]) -> String {
        let args: Vec<Arg<'_>> = args.iter().map(Some).collect();
        sprintf(format, &args)
    }

    #[test]
    fn common_verbs() {
        assert_eq!(f("%s-%d", &[json!("a"), json!(5)]), "a-5");
        assert_eq!(
            f("%5d|%-5d|%05d", &[json!(42), json!(42), json!(-42)]),
            "   42|42   |-0042"
        );
        assert_eq!(
            f("%x %X %o %b", &[json!(255), json!(255), json!(8), json!(5)]),
            "ff FF 10 101"
        );
        assert_eq!(
            f("%.2f %e %g", &[json!(1.23456), json!(1234.5), json!(0.5)]),
            "1.23 1.234500e+03 0.5"
        );
        assert_eq!(
            f("%q %v %t", &[json!("hi"), json!([1, "a"]), json!(true)]),
            "\"hi\" [1 a] true"
        );
        assert_eq!(f("%6.2f|%+d", &[json!(1.23456), json!(3)]), "  1.23|+3");
    }

    #[test]
    fn errors_are_inline() {
        assert_eq!(f("%d", &[json!("a")]), "%!d(string=a)");
        assert_eq!(f("%s %s", &[json!("a")]), "a %!s(MISSING)");
        assert_eq!(f("%s", &[json!("a"), json!(1)]), "a%!(EXTRA int=1)");
        assert_eq!(f("%!", &[]), "%!!(MISSING)");
        assert_eq!(f("a%", &[]), "a%!(NOVERB)");
        assert_eq!(f("%*d", &[json!(10_000_000), json!(1)]), "%!(BADWIDTH)1");
    }
}
