//! Sizes and times as the docker CLI prints them (docker/go-units).

use chrono::{DateTime, Utc};

/// `HumanSizeWithPrecision(size, 3)`: decimal units, three significant digits (`4.26MB`,
/// `512B`, `1.2GB`).
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{}{}", significant(value, 3), UNITS[unit])
}

/// Go's `%.*g`: `digits` significant digits, trailing zeros dropped.
fn significant(value: f64, digits: i32) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    let magnitude = value.abs().log10().floor() as i32;
    let decimals = (digits - 1 - magnitude).max(0) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// Parses an RFC 3339 time as image configs carry it.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|time| time.with_timezone(&Utc))
}

/// `HumanDuration` + " ago": `Less than a second ago`, `About a minute ago`, `3 hours ago`,
/// `2 weeks ago` ...
pub fn since(time: Option<&str>) -> String {
    let Some(time) = time.and_then(parse_time) else {
        return "N/A".to_string();
    };
    let seconds = (Utc::now() - time).num_seconds().max(0);
    format!("{} ago", duration(seconds))
}

/// docker/go-units `HumanDuration`.
pub fn duration(seconds: i64) -> String {
    let minutes = seconds / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    match seconds {
        s if s < 1 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        s if s < 60 => format!("{s} seconds"),
        _ if minutes == 1 => "About a minute".to_string(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".to_string(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{days} days"),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", days / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", days / 30),
        _ => format!("{} years", days / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_docker() {
        assert_eq!(size(0), "0B");
        assert_eq!(size(512), "512B");
        assert_eq!(size(4_261_000), "4.26MB");
        assert_eq!(size(1_000_000), "1MB");
        assert_eq!(size(12_345), "12.3kB");
        assert_eq!(size(123_456_789), "123MB");
    }

    #[test]
    fn durations_match_docker() {
        assert_eq!(duration(0), "Less than a second");
        assert_eq!(duration(45), "45 seconds");
        assert_eq!(duration(61), "About a minute");
        assert_eq!(duration(3 * 3600), "3 hours");
        assert_eq!(duration(3 * 86400), "3 days");
        assert_eq!(duration(15 * 86400), "2 weeks");
        assert_eq!(duration(90 * 86400), "3 months");
        assert_eq!(duration(800 * 86400), "2 years");
    }
}
