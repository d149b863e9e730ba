//! The functions a template can call: Go's builtins and docker's additions
//! (docker/cli `templates/templates.go`), with Go's parameter types so that argument errors read
//! as Go's do.
//!
//! `and`, `or` (short-circuit) and `call` (needs the callee's source text) are evaluated by the
//! executor; everything else is [`call`].

use serde_json::{Map, Value};

use crate::error::CallProblem;
use crate::json;
use crate::printf::{self, Arg};
use crate::value::{Val, to_text, type_name};

/// A parameter's Go type, which decides how arguments are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Param {
    /// `interface{}`: anything; a missing value becomes nil.
    Any,
    /// `reflect.Value`: anything, a missing value stays missing.
    Value,
    Str,
    Int,
    /// `[]string`: an array of strings.
    StrList,
}

impl Param {
    pub(crate) fn go_name(self) -> &'static str {
        match self {
            Param::Any => "interface {}",
            Param::Value => "reflect.Value",
            Param::Str => "string",
            Param::Int => "int",
            Param::StrList => "[]string",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Signature {
    pub(crate) fixed: &'static [Param],
    pub(crate) variadic: Option<Param>,
}

const fn fixed(params: &'static [Param]) -> Signature {
    Signature {
        fixed: params,
        variadic: None,
    }
}

const fn variadic(params: &'static [Param], rest: Param) -> Signature {
    Signature {
        fixed: params,
        variadic: Some(rest),
    }
}

const NAMES: &[&str] = &[
    "and", "call", "html", "index", "slice", "js", "len", "not", "or", "print", "printf",
    "println", "urlquery", "eq", "ge", "gt", "le", "lt", "ne", "json", "split", "join", "title",
    "lower", "upper", "pad", "truncate",
];

/// Whether `name` is a function templates may call (checked at parse time, as Go does).
pub(crate) fn is_defined(name: &str) -> bool {
    NAMES.contains(&name)
}

/// The signature of `name`; `header` selects docker's header variants, which take and return
/// strings so that a table header shows column names untouched.
pub(crate) fn signature(name: &str, header: bool) -> Signature {
    use Param::{Any, Int, Str, StrList, Value};
    match (name, header) {
        ("and" | "or", _) => variadic(&[Value], Value),
        ("call", _) => variadic(&[Value], Value),
        ("html" | "js" | "urlquery" | "print" | "println", _) => variadic(&[], Any),
        ("printf", _) => variadic(&[Str], Any),
        ("index" | "slice", _) => variadic(&[Value], Value),
        ("len" | "not", _) => fixed(&[Value]),
        ("eq", _) => variadic(&[Value], Value),
        ("ne" | "lt" | "le" | "gt" | "ge", _) => fixed(&[Value, Value]),
        ("json", false) => fixed(&[Any]),
        ("split", _) => fixed(&[Str, Str]),
        ("join", false) => fixed(&[StrList, Str]),
        ("join", true) => fixed(&[Str, Str]),
        ("pad", _) => fixed(&[Str, Int, Int]),
        ("truncate", _) => fixed(&[Str, Int]),
        // title, lower, upper, and json in headers.
        _ => fixed(&[Str]),
    }
}

fn args_of<'a>(argv: &'a [Val<'_>]) -> Vec<Arg<'a>> {
    argv.iter()
        .map(|arg| arg.value().filter(|value| !value.is_null()))
        .collect()
}

fn text<'a>(arg: &'a Val<'_>) -> &'a str {
    arg.as_str().unwrap_or_default()
}

fn int(arg: &Val<'_>) -> i64 {
    arg.as_int().unwrap_or_default()
}

/// Calls a function whose arguments have been checked against [`signature`].
pub(crate) fn call<'d>(
    name: &str,
    argv: Vec<Val<'d>>,
    header: bool,
) -> Result<Val<'d>, CallProblem> {
    let first = argv.first().cloned().unwrap_or(Val::Missing);
    Ok(match name {
        "print" => Val::string(printf::sprint(&args_of(&argv))),
        "println" => Val::string(printf::sprintln(&args_of(&argv))),
        "printf" => Val::string(printf::sprintf(text(&first), &args_of(&argv[1..]))),
        "html" => Val::string(html_escape(&escaper_text(&argv))),
        "js" => Val::string(js_escape(&escaper_text(&argv))),
        "urlquery" => Val::string(query_escape(&escaper_text(&argv))),
        "len" => Val::int(length(&first)?),
        "not" => Val::bool(!first.truth()),
        "index" => index(first, &argv[1..])?,
        "slice" => slice(&first, &argv[1..])?,
        "eq" => Val::bool(eq(&first, &argv[1..])?),
        "ne" => Val::bool(!eq(&first, &argv[1..])?),
        "lt" => Val::bool(lt(&first, &argv[1])?),
        "le" => Val::bool(lt(&first, &argv[1])? || eq(&first, &argv[1..])?),
        "gt" => Val::bool(!(lt(&first, &argv[1])? || eq(&first, &argv[1..])?)),
        "ge" => Val::bool(!lt(&first, &argv[1])?),
        // Header variants return their first argument.
        "json" | "split" | "join" | "title" | "lower" | "upper" | "truncate" if header => first,
        "json" => Val::string(json::encode(first.value())),
        "split" => Val::owned(Value::Array(
            split(text(&first), text(&argv[1]))
                .into_iter()
                .map(Value::String)
                .collect(),
        )),
        "join" => Val::string(join(&first, text(&argv[1]))),
        "title" => Val::string(title(text(&first))),
        "lower" => Val::string(
            text(&first)
                .chars()
                .flat_map(char::to_lowercase)
                .collect::<String>(),
        ),
        "upper" => Val::string(
            text(&first)
                .chars()
                .flat_map(char::to_uppercase)
                .collect::<String>(),
        ),
        "pad" => Val::string(pad(text(&first), int(&argv[1]), int(&argv[2]))?),
        "truncate" => Val::string(truncate(text(&first), int(&argv[1]))?),
        // `and`, `or` and `call` never get here; an unknown name cannot pass the parser.
        _ => Val::Missing,
    })
}

/// Go's `evalArgs`: one string argument as is, otherwise `fmt.Sprint` with nil printed as
/// `<no value>`.
fn escaper_text(argv: &[Val<'_>]) -> String {
    if let [single] = argv
        && let Some(text) = single.as_str()
    {
        return text.to_owned();
    }
    let no_value = Value::String("<no value>".to_owned());
    let args: Vec<Arg<'_>> = argv
        .iter()
        .map(|arg| match arg.value() {
            None | Some(Value::Null) => Some(&no_value),
            Some(value) => Some(value),
        })
        .collect();
    printf::sprint(&args)
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\0' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn js_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '=' => out.push_str("\\u003D"),
            c if u32::from(c) < u32::from(' ') => {
                out.push_str(&format!("\\u{:04X}", u32::from(c)));
            }
            c if c.is_ascii() || crate::quote::is_print(c) => out.push(c),
            c => out.push_str(&format!("\\u{:04X}", u32::from(c))),
        }
    }
    out
}

/// Go's `url.QueryEscape`.
fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn length(item: &Val<'_>) -> Result<i64, CallProblem> {
    let count = match item.value() {
        None | Some(Value::Null) => return Err(CallProblem::LenOfNil),
        Some(Value::String(text)) => text.len(),
        Some(Value::Array(items)) => items.len(),
        Some(Value::Object(map)) => map.len(),
        Some(value) => return Err(CallProblem::LenOfType(type_name(value).to_owned())),
    };
    Ok(i64::try_from(count).unwrap_or(i64::MAX))
}

/// Go's `indexArg`: an integer index no greater than `cap`.
fn index_arg(index: &Val<'_>, cap: usize) -> Result<usize, CallProblem> {
    let x = match index.value() {
        None | Some(Value::Null) => return Err(CallProblem::IndexWithNil),
        Some(Value::Number(number)) if number.is_i64() || number.is_u64() => {
            number.as_i64().unwrap_or(i64::MAX)
        }
        Some(value) => return Err(CallProblem::IndexWithType(type_name(value).to_owned())),
    };
    match usize::try_from(x) {
        Ok(x) if x <= cap => Ok(x),
        _ => Err(CallProblem::IndexOutOfRange(x)),
    }
}

fn index<'d>(item: Val<'d>, indexes: &[Val<'d>]) -> Result<Val<'d>, CallProblem> {
    if item.is_nil() {
        return Err(CallProblem::IndexOfNil);
    }
    let mut item = item;
    for index in indexes {
        let next = match item.value() {
            None | Some(Value::Null) => return Err(CallProblem::IndexOfNilPointer),
            Some(Value::Array(items)) => {
                let x = index_arg(index, items.len())?;
                if x == items.len() {
                    return Err(CallProblem::IndexOutOfRange(x as i64));
                }
                item.element(x)
            }
            Some(Value::String(text)) => {
                let x = index_arg(index, text.len())?;
                if x == text.len() {
                    return Err(CallProblem::IndexOutOfRange(x as i64));
                }
                Val::int(i64::from(text.as_bytes()[x]))
            }
            Some(Value::Object(_)) => {
                let key = match index.value() {
                    None | Some(Value::Null) => {
                        return Err(CallProblem::NilKey("string".to_owned()));
                    }
                    Some(Value::String(key)) => key.clone(),
                    Some(value) => {
                        return Err(CallProblem::KeyType {
                            found: type_name(value).to_owned(),
                            expected: "string".to_owned(),
                        });
                    }
                };
                item.field(&key).unwrap_or(Val::Missing)
            }
            Some(value) => return Err(CallProblem::CannotIndex(type_name(value).to_owned())),
        };
        item = next;
    }
    Ok(item)
}

fn slice<'d>(item: &Val<'d>, indexes: &[Val<'d>]) -> Result<Val<'d>, CallProblem> {
    let value = match item.value() {
        None | Some(Value::Null) => return Err(CallProblem::SliceOfNil),
        Some(value) => value,
    };
    if indexes.len() > 3 {
        return Err(CallProblem::TooManySliceIndexes(indexes.len()));
    }
    let len = match value {
        Value::String(text) => {
            if indexes.len() == 3 {
                return Err(CallProblem::ThreeIndexString);
            }
            text.len()
        }
        Value::Array(items) => items.len(),
        other @ (Value::Null | Value::Bool(_) | Value::Number(_) | Value::Object(_)) => {
            return Err(CallProblem::CannotSlice(type_name(other).to_owned()));
        }
    };
    let mut bounds = [0, len, len];
    for (i, index) in indexes.iter().enumerate() {
        bounds[i] = index_arg(index, len)?;
    }
    if bounds[0] > bounds[1] {
        return Err(CallProblem::InvalidSliceIndex(
            bounds[0] as i64,
            bounds[1] as i64,
        ));
    }
    if indexes.len() == 3 && bounds[1] > bounds[2] {
        return Err(CallProblem::InvalidSliceIndex(
            bounds[1] as i64,
            bounds[2] as i64,
        ));
    }
    Ok(match value {
        Value::String(text) => Val::string(
            String::from_utf8_lossy(&text.as_bytes()[bounds[0]..bounds[1]]).into_owned(),
        ),
        Value::Array(items) => Val::owned(Value::Array(items[bounds[0]..bounds[1]].to_vec())),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::Object(_) => Val::Missing,
    })
}

/// Go's comparison kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Invalid,
    Bool,
    Int,
    Uint,
    Float,
    String,
    /// Arrays and objects: not basic, and not comparable.
    Composite,
}

fn kind(value: &Val<'_>) -> Kind {
    match value.value() {
        None | Some(Value::Null) => Kind::Invalid,
        Some(Value::Bool(_)) => Kind::Bool,
        Some(Value::Number(number)) if number.is_i64() => Kind::Int,
        Some(Value::Number(number)) if number.is_u64() => Kind::Uint,
        Some(Value::Number(_)) => Kind::Float,
        Some(Value::String(_)) => Kind::String,
        Some(Value::Array(_) | Value::Object(_)) => Kind::Composite,
    }
}

fn as_u64(value: &Val<'_>) -> u64 {
    value.value().and_then(Value::as_u64).unwrap_or_default()
}

fn as_f64(value: &Val<'_>) -> f64 {
    value.value().and_then(Value::as_f64).unwrap_or_default()
}

/// Go's `eq`: `arg1 == arg2 || arg1 == arg3 …`.
fn eq(arg1: &Val<'_>, others: &[Val<'_>]) -> Result<bool, CallProblem> {
    if others.is_empty() {
        return Err(CallProblem::NoComparison);
    }
    let k1 = kind(arg1);
    for arg in others {
        let k2 = kind(arg);
        let truth = if k1 == k2 {
            match k1 {
                Kind::Bool | Kind::String => arg1.value() == arg.value(),
                Kind::Int => arg1.as_int() == arg.as_int(),
                Kind::Uint => as_u64(arg1) == as_u64(arg),
                Kind::Float => as_f64(arg1) == as_f64(arg),
                Kind::Invalid => true,
                Kind::Composite => {
                    return Err(CallProblem::NonComparable {
                        value: arg.value().map(to_text).unwrap_or_default(),
                        type_name: arg.type_name().to_owned(),
                    });
                }
            }
        } else {
            match (k1, k2) {
                // Signed and unsigned integers compare by value.
                (Kind::Int, Kind::Uint) | (Kind::Uint, Kind::Int) => false,
                // Comparing with nil is false, not an error.
                (Kind::Invalid, _) | (_, Kind::Invalid) => false,
                _ => return Err(CallProblem::BadComparison),
            }
        };
        if truth {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Go's `lt`.
fn lt(arg1: &Val<'_>, arg2: &Val<'_>) -> Result<bool, CallProblem> {
    let (k1, k2) = (kind(arg1), kind(arg2));
    for k in [k1, k2] {
        if matches!(k, Kind::Invalid | Kind::Composite) {
            return Err(CallProblem::BadComparisonType);
        }
    }
    if k1 != k2 {
        return match (k1, k2) {
            // An int64 below zero is below every uint64; a uint64 above i64::MAX is above
            // every int64.
            (Kind::Int, Kind::Uint) => Ok(true),
            (Kind::Uint, Kind::Int) => Ok(false),
            _ => Err(CallProblem::BadComparison),
        };
    }
    Ok(match k1 {
        Kind::Int => arg1.as_int() < arg2.as_int(),
        Kind::Uint => as_u64(arg1) < as_u64(arg2),
        Kind::Float => as_f64(arg1) < as_f64(arg2),
        Kind::String => arg1.as_str() < arg2.as_str(),
        Kind::Bool | Kind::Invalid | Kind::Composite => {
            return Err(CallProblem::BadComparisonType);
        }
    })
}

/// Go's `strings.Split`.
fn split(text: &str, separator: &str) -> Vec<String> {
    if separator.is_empty() {
        return text.chars().map(String::from).collect();
    }
    text.split(separator).map(str::to_owned).collect()
}

fn join(list: &Val<'_>, separator: &str) -> String {
    match list.value() {
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(separator),
        _ => String::new(),
    }
}

/// Go's (deprecated) `strings.Title`: upper-cases the first letter of every word.
fn title(text: &str) -> String {
    let is_separator = |c: char| {
        if c.is_ascii() {
            !(c.is_ascii_alphanumeric() || c == '_')
        } else if c.is_alphanumeric() {
            false
        } else {
            c.is_whitespace()
        }
    };
    let mut previous = ' ';
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_separator(previous) {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        previous = c;
    }
    out
}

/// docker's `padWithSpace`: empty text stays empty.
fn pad(text: &str, prefix: i64, suffix: i64) -> Result<String, CallProblem> {
    if text.is_empty() {
        return Ok(String::new());
    }
    let (Ok(prefix), Ok(suffix)) = (usize::try_from(prefix), usize::try_from(suffix)) else {
        return Err(CallProblem::NegativeRepeat);
    };
    Ok(format!(
        "{}{text}{}",
        " ".repeat(prefix),
        " ".repeat(suffix)
    ))
}

/// docker's `truncateWithLength`: the first `length` bytes (a character cut in two becomes
/// U+FFFD; Go would emit the partial bytes).
fn truncate(text: &str, length: i64) -> Result<String, CallProblem> {
    if (text.len() as i64) < length {
        return Ok(text.to_owned());
    }
    let Ok(length) = usize::try_from(length) else {
        return Err(CallProblem::SliceBounds(length));
    };
    Ok(String::from_utf8_lossy(&text.as_bytes()[..length]).into_owned())
}

/// Builds the data for rendering a table header: every field name the template uses, mapped to
/// the caller's header text. Names without a header are left out, so they print `<no value>`
/// as a missing key of docker's header map does.
pub(crate) fn header_data(names: &[String], headers: &dyn Fn(&str) -> Option<String>) -> Value {
    let mut map = Map::new();
    for name in names {
        if let Some(header) = headers(name) {
            map.insert(name.clone(), Value::String(header));
        }
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_upper_cases_words() {
        assert_eq!(title("hello wORLD-foo_bar"), "Hello WORLD-Foo_bar");
    }

    #[test]
    fn split_matches_go() {
        assert_eq!(split("a:b::c", ":"), ["a", "b", "", "c"]);
        assert_eq!(split("ab", ""), ["a", "b"]);
        assert_eq!(split("", ","), [""]);
    }

    #[test]
    fn query_escape_matches_go() {
        assert_eq!(query_escape("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }
}
