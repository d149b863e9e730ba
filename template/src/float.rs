//! Go's float formatting (`strconv.FormatFloat` with `e`, `f` and `g`), built on Rust's exact
//! shortest and fixed-precision digit generation.

/// Decimal digits of |value| and the position of the decimal point: value = 0.d1d2… × 10^dp.
struct Digits {
    digits: Vec<u8>,
    dp: i32,
}

impl Digits {
    /// From Rust's `{:e}` output such as `1.2345e6`; trailing zeros are dropped, as Go's
    /// decimal type does.
    fn parse(scientific: &str) -> Digits {
        let (mantissa, exponent) = scientific.split_once('e').unwrap_or((scientific, "0"));
        let exponent: i32 = exponent.parse().unwrap_or(0);
        let mut digits: Vec<u8> = mantissa
            .bytes()
            .filter(u8::is_ascii_digit)
            .map(|b| b - b'0')
            .collect();
        while digits.len() > 1 && digits.last() == Some(&0) {
            digits.pop();
        }
        if digits == [0] {
            return Digits {
                digits: Vec::new(),
                dp: 0,
            };
        }
        Digits {
            digits,
            dp: exponent + 1,
        }
    }

    fn shortest(value: f64) -> Digits {
        Digits::parse(&format!("{:e}", value.abs()))
    }

    /// Rounded to `count` significant digits.
    fn significant(value: f64, count: usize) -> Digits {
        Digits::parse(&format!("{:.*e}", count.saturating_sub(1), value.abs()))
    }

    fn nd(&self) -> i32 {
        i32::try_from(self.digits.len()).unwrap_or(i32::MAX)
    }

    fn digit(&self, index: i32) -> u8 {
        usize::try_from(index)
            .ok()
            .and_then(|index| self.digits.get(index))
            .map_or(b'0', |d| b'0' + d)
    }
}

/// `%e`: `d.ddddde±dd`.
fn fmt_e(out: &mut String, d: &Digits, prec: i32, upper: bool) {
    out.push(char::from(d.digit(0)));
    if prec > 0 {
        out.push('.');
        for i in 1..=prec {
            out.push(char::from(d.digit(i)));
        }
    }
    out.push(if upper { 'E' } else { 'e' });
    let exponent = if d.digits.is_empty() { 0 } else { d.dp - 1 };
    out.push(if exponent < 0 { '-' } else { '+' });
    let magnitude = exponent.unsigned_abs();
    if magnitude < 10 {
        out.push('0');
    }
    out.push_str(&magnitude.to_string());
}

/// `%f`: `ddd.ddd`.
fn fmt_f(out: &mut String, d: &Digits, prec: i32) {
    if d.dp > 0 {
        for i in 0..d.dp {
            out.push(char::from(d.digit(i)));
        }
    } else {
        out.push('0');
    }
    if prec > 0 {
        out.push('.');
        for i in 0..prec {
            out.push(char::from(d.digit(d.dp + i)));
        }
    }
}

fn sign(value: f64) -> &'static str {
    if value.is_sign_negative() { "-" } else { "" }
}

fn special(value: f64) -> Option<String> {
    if value.is_nan() {
        Some("NaN".to_owned())
    } else if value.is_infinite() {
        Some(if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned())
    } else {
        None
    }
}

/// Go's `strconv.FormatFloat(value, verb, prec, 64)` for verbs `e E f F g G`; `prec` `None`
/// is `-1`, the shortest representation that round-trips.
pub(crate) fn format(value: f64, verb: char, prec: Option<usize>) -> String {
    if let Some(text) = special(value) {
        return text;
    }
    let mut out = sign(value).to_owned();
    let upper = verb.is_ascii_uppercase();
    match verb {
        'e' | 'E' => {
            let d = match prec {
                None => Digits::shortest(value),
                Some(prec) => Digits::significant(value, prec + 1),
            };
            let prec = prec.map_or(d.nd() - 1, |p| i32::try_from(p).unwrap_or(i32::MAX));
            fmt_e(&mut out, &d, prec.max(0), upper);
        }
        'f' | 'F' => match prec {
            None => {
                let d = Digits::shortest(value);
                fmt_f(&mut out, &d, (d.nd() - d.dp).max(0));
            }
            Some(prec) => out.push_str(&format!("{:.*}", prec, value.abs())),
        },
        _ => {
            let shortest = prec.is_none();
            let (d, mut prec) = match prec {
                None => {
                    let d = Digits::shortest(value);
                    let nd = d.nd();
                    (d, nd)
                }
                Some(prec) => {
                    let prec = prec.max(1);
                    (
                        Digits::significant(value, prec),
                        i32::try_from(prec).unwrap_or(i32::MAX),
                    )
                }
            };
            let mut eprec = prec;
            if eprec > d.nd() && d.nd() >= d.dp {
                eprec = d.nd();
            }
            if shortest {
                eprec = 6;
            }
            let exponent = d.dp - 1;
            if !d.digits.is_empty() && (exponent < -4 || exponent >= eprec) {
                if prec > d.nd() {
                    prec = d.nd();
                }
                fmt_e(&mut out, &d, prec - 1, upper);
            } else {
                if prec > d.dp {
                    prec = d.nd();
                }
                fmt_f(&mut out, &d, (prec - d.dp).max(0));
            }
        }
    }
    out
}

/// `%v` of a `float64`: `%g` with the shortest representation.
pub(crate) fn format_v(value: f64) -> String {
    format(value, 'g', None)
}

/// `encoding/json`'s float encoding: like `%f` but `%e` (with a one-digit negative exponent)
/// for very small or very large magnitudes.
pub(crate) fn format_json(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude != 0.0 && !(1e-6..1e21).contains(&magnitude) {
        let mut text = format(value, 'e', None);
        // Go cleans up `e-09` to `e-9`.
        let bytes = text.as_bytes();
        let n = bytes.len();
        if n >= 4 && bytes[n - 4] == b'e' && bytes[n - 3] == b'-' && bytes[n - 2] == b'0' {
            text.remove(n - 2);
        }
        text
    } else {
        format(value, 'f', None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_v_matches_go() {
        assert_eq!(format_v(1.5), "1.5");
        assert_eq!(format_v(1e6), "1e+06");
        assert_eq!(format_v(100000.0), "100000");
        assert_eq!(format_v(123456789.0), "1.23456789e+08");
        assert_eq!(format_v(0.0001), "0.0001");
        assert_eq!(format_v(0.00001), "1e-05");
        assert_eq!(format_v(0.0), "0");
        assert_eq!(format_v(-2.5), "-2.5");
    }

    #[test]
    fn fixed_verbs_match_go() {
        assert_eq!(format(1.23456, 'f', Some(2)), "1.23");
        assert_eq!(format(3.0, 'e', Some(6)), "3.000000e+00");
        assert_eq!(format(1234.5678, 'g', Some(3)), "1.23e+03");
        assert_eq!(format(0.5, 'g', Some(3)), "0.5");
    }

    #[test]
    fn json_floats_match_encoding_json() {
        assert_eq!(format_json(1.0), "1");
        assert_eq!(format_json(0.5), "0.5");
        assert_eq!(format_json(1e21), "1e+21");
        assert_eq!(format_json(1e-7), "1e-7");
        assert_eq!(format_json(123456789.0), "123456789");
    }
}
