//! Sizes as Docker's command line writes them.

/// Docker's `units.RAMInBytes`: `512`, `64k`, `32m`, `1g`, `1.5g` (binary units, either case,
/// optional `b`/`ib`).
pub fn ram_in_bytes(text: &str) -> Option<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let value: f64 = number.parse().ok()?;
    let unit = unit.trim_end_matches("ib").trim_end_matches('b');
    let multiplier = match unit {
        "" => 1u64,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return None,
    };
    let bytes = value * multiplier as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::ram_in_bytes;

    #[test]
    fn sizes_follow_dockers_ram_in_bytes() {
        assert_eq!(ram_in_bytes("512"), Some(512));
        assert_eq!(ram_in_bytes("64k"), Some(64 << 10));
        assert_eq!(ram_in_bytes("32MB"), Some(32 << 20));
        assert_eq!(ram_in_bytes("1.5g"), Some(3 << 29));
        assert_eq!(ram_in_bytes("2GiB"), Some(2 << 30));
        assert_eq!(ram_in_bytes("1t"), Some(1 << 40));
        assert_eq!(ram_in_bytes("-1"), None);
        assert_eq!(ram_in_bytes("12x"), None);
        assert_eq!(ram_in_bytes(""), None);
    }
}
