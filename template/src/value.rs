//! Values during execution and how Go prints them.
//!
//! The data is a `serde_json::Value`, treated as Go treats the result of decoding JSON into an
//! `interface{}`: objects are `map[string]interface {}`, arrays `[]interface {}`. Integers keep
//! their integer type (Go's decoder would make them `float64`; docker's own structs use integer
//! fields, and printing `1e+06` for a size would help no one).

use std::borrow::Cow;

use serde_json::{Number, Value};

use crate::float;

/// A value during execution. `Missing` is Go's invalid `reflect.Value`: a key absent from an
/// object, or the result of `.Field` on nil. Explicit JSON `null` is `Present(Value::Null)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val<'d> {
    Missing,
    Present(Cow<'d, Value>),
}

impl<'d> Val<'d> {
    pub(crate) fn owned(value: Value) -> Val<'d> {
        Val::Present(Cow::Owned(value))
    }

    pub(crate) fn borrowed(value: &'d Value) -> Val<'d> {
        Val::Present(Cow::Borrowed(value))
    }

    pub(crate) fn string(text: impl Into<String>) -> Val<'d> {
        Val::owned(Value::String(text.into()))
    }

    pub(crate) fn int(value: i64) -> Val<'d> {
        Val::owned(Value::Number(value.into()))
    }

    pub(crate) fn bool(value: bool) -> Val<'d> {
        Val::owned(Value::Bool(value))
    }

    /// The JSON value, or `None` when missing.
    pub(crate) fn value(&self) -> Option<&Value> {
        match self {
            Val::Missing => None,
            Val::Present(value) => Some(value),
        }
    }

    /// Missing or `null`: what Go sees as a nil interface.
    pub(crate) fn is_nil(&self) -> bool {
        matches!(self.value(), None | Some(Value::Null))
    }

    /// Looks up `key` in an object; `None` when this is not an object.
    pub(crate) fn field(&self, key: &str) -> Option<Val<'d>> {
        match self {
            Val::Present(Cow::Borrowed(Value::Object(map))) => {
                Some(map.get(key).map_or(Val::Missing, Val::borrowed))
            }
            Val::Present(Cow::Owned(Value::Object(map))) => Some(
                map.get(key)
                    .map_or(Val::Missing, |value| Val::owned(value.clone())),
            ),
            Val::Missing | Val::Present(_) => None,
        }
    }

    /// Element `index` of an array (the caller has checked the bounds).
    pub(crate) fn element(&self, index: usize) -> Val<'d> {
        match self {
            Val::Present(Cow::Borrowed(Value::Array(items))) => {
                items.get(index).map_or(Val::Missing, Val::borrowed)
            }
            Val::Present(Cow::Owned(Value::Array(items))) => items
                .get(index)
                .map_or(Val::Missing, |value| Val::owned(value.clone())),
            Val::Missing | Val::Present(_) => Val::Missing,
        }
    }

    /// The entries of an object in key order, values borrowed when possible.
    pub(crate) fn entries(&self) -> Vec<(String, Val<'d>)> {
        match self {
            Val::Present(Cow::Borrowed(Value::Object(map))) => map
                .iter()
                .map(|(key, value)| (key.clone(), Val::borrowed(value)))
                .collect(),
            Val::Present(Cow::Owned(Value::Object(map))) => map
                .iter()
                .map(|(key, value)| (key.clone(), Val::owned(value.clone())))
                .collect(),
            Val::Missing | Val::Present(_) => Vec::new(),
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        self.value().and_then(Value::as_str)
    }

    /// The value as a Go `int`, when it is an integer that fits.
    pub(crate) fn as_int(&self) -> Option<i64> {
        match self.value() {
            Some(Value::Number(number)) => number.as_i64(),
            _ => None,
        }
    }

    /// Go's `isTrue`: the value is not the zero value of its type.
    pub(crate) fn truth(&self) -> bool {
        match self.value() {
            None | Some(Value::Null) => false,
            Some(Value::Bool(value)) => *value,
            Some(Value::Number(number)) => number_truth(number),
            Some(Value::String(text)) => !text.is_empty(),
            Some(Value::Array(items)) => !items.is_empty(),
            Some(Value::Object(map)) => !map.is_empty(),
        }
    }

    /// The Go type name, as in `%T` and error messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self.value() {
            None | Some(Value::Null) => "<nil>",
            Some(value) => type_name(value),
        }
    }
}

fn number_truth(number: &Number) -> bool {
    if let Some(int) = number.as_i64() {
        int != 0
    } else if let Some(uint) = number.as_u64() {
        uint != 0
    } else {
        number.as_f64().is_some_and(|float| float != 0.0)
    }
}

/// The Go type a decoded JSON value has.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(number) => number_type(number),
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

pub(crate) fn number_type(number: &Number) -> &'static str {
    if number.is_i64() {
        "int"
    } else if number.is_u64() {
        "uint64"
    } else {
        "float64"
    }
}

/// Go's `%v` of a number.
pub(crate) fn number_text(number: &Number) -> String {
    if let Some(int) = number.as_i64() {
        int.to_string()
    } else if let Some(uint) = number.as_u64() {
        uint.to_string()
    } else {
        float::format_v(number.as_f64().unwrap_or(0.0))
    }
}

/// Go's `fmt.Sprint(value)` for a decoded JSON value: strings raw, `[a b]`, `map[k:v]`, and
/// `<nil>` for null.
pub(crate) fn print(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("<nil>"),
        Value::Bool(value) => out.push_str(if *value { "true" } else { "false" }),
        Value::Number(number) => out.push_str(&number_text(number)),
        Value::String(text) => out.push_str(text),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                print(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push_str("map[");
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(key);
                out.push(':');
                print(item, out);
            }
            out.push(']');
        }
    }
}

pub(crate) fn to_text(value: &Value) -> String {
    let mut out = String::new();
    print(value, &mut out);
    out
}
