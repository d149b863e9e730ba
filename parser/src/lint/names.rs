//! Small pure checks the rules share: "did you mean" suggestions, image reference syntax,
//! platform specifiers and secret-looking names.

/// BuildKit's `suggest.Search`: the option closest to `value` by Levenshtein distance, if that
/// distance is below 3 (the first of equally close options wins). An option equal to `value`
/// means there is nothing to suggest. Case-sensitive, as on Linux.
pub(crate) fn suggest<'o>(value: &str, options: &[&'o str]) -> Option<&'o str> {
    let mut best = None;
    let mut best_distance = 3;
    for &option in options {
        if option == value {
            return None;
        }
        let distance = levenshtein(value, option);
        if distance < best_distance {
            best = Some(option);
            best_distance = distance;
        }
    }
    best
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (row[j] + 1)
                .min(above + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Whether `reference` is an image reference `distribution/reference.ParseNormalizedNamed`
/// accepts: `[domain/]path[:tag][@digest]`, lowercase path components, no 64-hex identifier.
pub(crate) fn is_valid_reference(reference: &str) -> bool {
    if reference.is_empty()
        || (reference.len() == 64
            && reference
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    {
        return false;
    }
    // splitDockerDomain: the first component is a registry when it looks like a host name.
    let (domain, remainder) = match reference.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            (Some(first), rest)
        }
        Some(_) | None => (None, reference),
    };
    if remainder.to_lowercase() != remainder {
        return false;
    }
    if domain.is_some_and(|domain| !is_domain(domain)) {
        return false;
    }
    let (name_and_tag, digest) = match remainder.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (remainder, None),
    };
    if digest.is_some_and(|digest| !is_digest(digest)) {
        return false;
    }
    let (path, tag) = match name_and_tag.rsplit_once(':') {
        Some((path, tag)) => (path, Some(tag)),
        None => (name_and_tag, None),
    };
    if tag.is_some_and(|tag| !is_tag(tag)) {
        return false;
    }
    let full_length = domain.map_or("docker.io".len(), str::len) + 1 + path.len();
    full_length <= 255 && path.split('/').all(is_path_component)
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut index = 0;
    let mut expect_alnum = true;
    if bytes.is_empty() {
        return false;
    }
    while index < bytes.len() {
        if alnum(bytes[index]) {
            index += 1;
            expect_alnum = false;
            continue;
        }
        if expect_alnum {
            return false;
        }
        // A separator: `.`, `_`, `__` or a run of `-`.
        let start = index;
        match bytes[index] {
            b'.' => index += 1,
            b'_' => {
                index += 1;
                if bytes.get(index) == Some(&b'_') {
                    index += 1;
                }
            }
            b'-' => {
                while bytes.get(index) == Some(&b'-') {
                    index += 1;
                }
            }
            _ => return false,
        }
        if index == start || index >= bytes.len() {
            return false;
        }
        expect_alnum = true;
    }
    !expect_alnum
}

/// `host[:port]`, host being dot-separated labels or a bracketed IPv6 address.
fn is_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let Some((address, after)) = rest.split_once(']') else {
            return false;
        };
        if address.is_empty() || !address.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return false;
        }
        match after.strip_prefix(':') {
            Some(port) => ("", Some(port)),
            None if after.is_empty() => ("", None),
            None => return false,
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    if port.is_some_and(|port| port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    if host.is_empty() && domain.starts_with('[') {
        return true;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `[\w][\w.-]{0,127}`
fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes[1..]
            .iter()
            .all(|&b| word(b) || b == b'.' || b == b'-')
}

/// A digest of an algorithm Docker supports, with the matching number of lowercase hex digits.
fn is_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == length
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A platform as containerd's `platforms.Parse` reads it: `os[/arch[/variant]]`, or a lone
/// known OS or architecture. Returns the normalized OS and architecture, or `None` when the
/// specifier is invalid.
pub(crate) fn parse_platform(specifier: &str) -> Option<(String, String)> {
    if specifier.contains('*') {
        return None;
    }
    let parts: Vec<&str> = specifier.split('/').collect();
    let valid = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    // An OS version in parentheses (`windows(10.0.17763)`) is allowed on the first part.
    let os_part = parts.first().map(|os| os.split('(').next().unwrap_or(os))?;
    if !valid(os_part) || !parts[1..].iter().all(|part| valid(part)) {
        return None;
    }
    match parts.len() {
        1 => {
            let lower = os_part.to_ascii_lowercase();
            if KNOWN_OS.contains(&normalize_os(&lower).as_str()) {
                Some((normalize_os(&lower), host_platform().1.to_string()))
            } else {
                let arch = normalize_arch(&lower);
                KNOWN_ARCH
                    .contains(&arch.as_str())
                    .then(|| ("linux".to_string(), arch))
            }
        }
        2 | 3 => Some((
            normalize_os(&os_part.to_ascii_lowercase()),
            normalize_arch(&parts[1].to_ascii_lowercase()),
        )),
        _ => None,
    }
}

const KNOWN_OS: [&str; 17] = [
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "windows",
    "zos",
];

const KNOWN_ARCH: [&str; 25] = [
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "ppc64",
    "ppc64le",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
    "wasm32",
];

fn normalize_os(os: &str) -> String {
    match os {
        "macos" => "darwin".to_string(),
        other => other.to_string(),
    }
}

fn normalize_arch(arch: &str) -> String {
    match arch {
        "i386" => "386",
        "x86_64" | "x86-64" | "amd64" => "amd64",
        "aarch64" | "arm64" => "arm64",
        "armhf" | "armel" | "arm" => "arm",
        other => other,
    }
    .to_string()
}

/// The platform kiln runs on, as BuildKit names it (`linux`, `amd64`): the default build and
/// target platform.
pub(crate) fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "loongarch64" => "loong64",
        "mips64" => "mips64le",
        _ => "amd64",
    };
    ("linux", arch)
}

/// BuildKit's secret-name check: one `_`-separated part of the name is a secret word and none
/// is an allowed word (`AWS_SECRET_ACCESS_KEY` is a secret, `PUBLIC_KEY` and `TOKEN_FILE` are
/// not). Case-insensitive.
pub(crate) fn looks_like_secret(name: &str) -> bool {
    const DENY: [&str; 10] = [
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    const ALLOW: [&str; 3] = ["public", "file", "version"];
    let has = |words: &[&str]| {
        name.split('_')
            .any(|part| words.iter().any(|word| part.eq_ignore_ascii_case(word)))
    };
    has(&DENY) && !has(&ALLOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_follow_the_distribution_grammar() {
        for valid in [
            "busybox",
            "busybox:latest",
            "library/busybox:1.36",
            "localhost:5000/app",
            "Registry.Example.com/team/app:v1",
            "[::1]:5000/app",
            "my_app__x.y-z",
            "app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "scratch",
        ] {
            assert!(is_valid_reference(valid), "{valid}");
        }
        for invalid in [
            "",
            "busybox:",
            "Busybox",
            "busy box",
            "a//b",
            "app:-x",
            "-app",
            "app@sha256:abc",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(!is_valid_reference(invalid), "{invalid}");
        }
    }

    #[test]
    fn suggestions_need_a_distance_below_three() {
        assert_eq!(suggest("PAHT", &["HOME", "PATH"]), Some("PATH"));
        assert_eq!(
            suggest("BULIDPLATFORM", &["BUILDPLATFORM"]),
            Some("BUILDPLATFORM")
        );
        assert_eq!(suggest("foo", &["barbaz"]), None);
        assert_eq!(suggest("foo", &["fo", "foo"]), None);
    }

    #[test]
    fn platforms_are_normalized() {
        assert_eq!(
            parse_platform("linux/x86_64"),
            Some(("linux".into(), "amd64".into()))
        );
        assert_eq!(
            parse_platform("arm64"),
            Some(("linux".into(), "arm64".into()))
        );
        assert_eq!(parse_platform("linux/"), None);
        assert_eq!(parse_platform("nonsense"), None);
    }

    #[test]
    fn secret_names_are_whole_parts() {
        assert!(looks_like_secret("AWS_SECRET_ACCESS_KEY"));
        assert!(looks_like_secret("apikey"));
        assert!(!looks_like_secret("sunflower"));
        assert!(!looks_like_secret("PUBLIC_KEY"));
        assert!(!looks_like_secret("SECRET_PASSPHRASE_FILE"));
        assert!(!looks_like_secret("AUTH_MODULE_VERSION"));
    }
}
