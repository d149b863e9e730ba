//! Image references (`busybox`, `localhost:5000/team/app:1.0@sha256:…`) parsed and normalised
//! exactly as Docker does it.
//!
//! The behaviour is that of `github.com/distribution/reference` v0.6 (the package the docker CLI,
//! moby and BuildKit use) together with `github.com/opencontainers/go-digest` v1.0:
//! [`Reference::parse`] is `ParseNormalizedNamed`, [`parse_any`] is `ParseAnyReference`,
//! [`Reference::familiar`] is `FamiliarString` and [`Reference::with_default_tag`] is
//! `TagNameOnly`. The grammar (`reference.go`, `regexp.go`) is written out by hand below; Go's
//! regular expressions pick the first alternative that matches (leftmost-first), and each matcher
//! here documents how it reproduces that choice.
//!
//! Owns the text form of references only: no registry, no store lookups, no default-registry
//! configuration (Docker Hub is always `docker.io`, as in Docker).
//!
//! Deliberate differences from Docker, each pinned by a row in `testdata/references/`:
//! - empty text is [`ReferenceError::Empty`] ("invalid reference format: repository name must
//!   have at least one component") where Docker says only "invalid reference format";
//! - [`Reference::with_digest`] validates the digest as [`Reference::parse`] does (registered
//!   algorithm, exact hex length, lowercase hex); Docker's `WithDigest` checks only the grammar, so
//!   a `Reference` here always holds a digest that Docker would also accept when parsing.
//!
//! Docker quirks kept on purpose, because `docker images`, `docker tag` and the store must agree
//! with Docker on what a name means:
//! - a first component that looks like a registry (has `.` or `:`, is `localhost`, or has
//!   uppercase letters) but is not a valid host name, while the whole name is a valid path
//!   (`foo_bar.com/app`), gives a reference with an empty [`domain`](Reference::domain);
//! - the familiar form of `docker.io/foo.com/app` is `foo.com/app`, which parses back as a
//!   reference on the registry `foo.com`.

use std::fmt;
use std::str::FromStr;

/// The registry of unqualified names ("Docker Hub").
pub const DEFAULT_DOMAIN: &str = "docker.io";

/// The legacy name of Docker Hub, rewritten to [`DEFAULT_DOMAIN`] when parsing.
pub const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";

/// The namespace of official images on Docker Hub: `busybox` is `docker.io/library/busybox`.
pub const OFFICIAL_REPOSITORY_PREFIX: &str = "library/";

/// The tag [`Reference::with_default_tag`] adds.
pub const DEFAULT_TAG: &str = "latest";

/// The longest repository path Docker accepts, in bytes. Since distribution/reference v0.6 the
/// registry domain does not count (`docker.io/` + 255 bytes of path is valid).
pub const REPOSITORY_PATH_MAX: usize = 255;

/// The longest tag, in bytes (`[\w][\w.-]{0,127}`).
pub const TAG_MAX: usize = 128;

/// A normalised image reference: registry domain, repository path, optional tag, optional digest.
///
/// Only [`Reference::parse`] (and the `with_*` methods) build one, so every value is valid and
/// normalised: `docker.io` rather than `index.docker.io`, `library/` added to single-component Hub
/// names, lowercase path, digest checked for its algorithm and length. [`fmt::Display`] gives the
/// full normalised form, and parsing that text again gives an equal value.
///
/// Ordering and hashing are by (domain, path, tag, digest) as strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// What a user may type where Docker accepts either an image ID or an image name
/// (`ParseAnyReference`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnyReference {
    /// A full image ID or content digest, as `algorithm:hex` (`sha256:` added to a bare 64-hex ID).
    Id(String),
    /// Anything else that parses as a name.
    Named(Reference),
}

/// Why text is not a valid image reference, tag or digest. Messages are Docker's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The text is empty (Docker: "invalid reference format").
    #[error("invalid reference format: repository name must have at least one component")]
    Empty,
    /// The text does not match the reference grammar.
    #[error("invalid reference format")]
    InvalidFormat,
    /// The repository part, as normalised and up to the first `:`, has uppercase letters
    /// (`Busybox` → `library/Busybox`).
    #[error("invalid reference format: repository name ({repository}) must be lowercase")]
    UppercaseRepository {
        /// The repository part as Docker shows it, including any `library/` it added.
        repository: String,
    },
    /// The text matches the grammar only once lowercased: an uppercase first component was taken
    /// for a registry but is not a valid host name (`Foo_Bar/app`).
    #[error("repository name must be lowercase")]
    Uppercase,
    /// The repository path is longer than [`REPOSITORY_PATH_MAX`] bytes.
    #[error("repository name must not be more than {max} characters", max = REPOSITORY_PATH_MAX)]
    NameTooLong {
        /// The length of the path, in bytes.
        length: usize,
    },
    /// A bare 64-hex string names an image ID, never a repository.
    #[error("invalid repository name ({text}), cannot specify 64-byte hexadecimal strings")]
    HexadecimalName {
        /// The text as given.
        text: String,
    },
    /// A tag given to [`Reference::with_tag`] is not `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error("invalid tag format")]
    InvalidTag {
        /// The tag as given.
        tag: String,
    },
    /// A digest given to [`Reference::with_digest`] is not `algorithm:hex` with at least 32 hex
    /// digits.
    #[error("invalid digest format")]
    InvalidDigest {
        /// The digest as given.
        digest: String,
    },
    /// The digest's encoded part is not lowercase hex (or, for an unregistered algorithm, not
    /// even of go-digest's general form).
    #[error("invalid checksum digest format")]
    DigestFormat {
        /// The digest as given.
        digest: String,
    },
    /// The digest's hex part has the wrong length for its algorithm (64 for `sha256`, 96 for
    /// `sha384`, 128 for `sha512`).
    #[error("invalid checksum digest length")]
    DigestLength {
        /// The digest as given.
        digest: String,
    },
    /// The digest's algorithm is not one Docker registers (`sha256`, `sha384`, `sha512`).
    #[error("unsupported digest algorithm")]
    UnsupportedDigestAlgorithm {
        /// The digest as given.
        digest: String,
    },
}

impl Reference {
    /// Parses a reference as the docker CLI does (`ParseNormalizedNamed`): `busybox` becomes
    /// `docker.io/library/busybox`, `index.docker.io/x` becomes `docker.io/library/x`, and no
    /// default tag is added (see [`Reference::with_default_tag`]). A bare 64-hex string is
    /// refused: it is an image ID (see [`parse_any`]).
    ///
    /// The first `/`-separated component is the registry only if it contains `.` or `:`, is
    /// `localhost`, or has uppercase letters; otherwise the name is on Docker Hub.
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        if text.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if is_identifier(text) {
            return Err(ReferenceError::HexadecimalName {
                text: text.to_owned(),
            });
        }
        let (domain, remainder) = split_docker_domain(text);
        // Docker checks the text before the first `:` (which may still hold an `@digest`), so
        // `Busybox@sha256:…` reports `library/Busybox@sha256`.
        let repository = remainder.split(':').next().unwrap_or_default();
        if go_to_lower(repository) != repository {
            return Err(ReferenceError::UppercaseRepository {
                repository: repository.to_owned(),
            });
        }
        parse_qualified(&format!("{domain}/{remainder}"))
    }

    /// Adds the tag `latest` when the reference has neither a tag nor a digest (`TagNameOnly`).
    /// Idempotent.
    #[must_use]
    pub fn with_default_tag(mut self) -> Reference {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.to_owned());
        }
        self
    }

    /// The registry, as `host[:port]`: `docker.io`, `localhost:5000`, `[::1]:5000`. Empty only in
    /// the Docker quirk described in the module documentation.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path inside the registry: `library/busybox`, `team/app`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The tag, if the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest as `algorithm:hex`, if the reference has one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The full repository name, without tag or digest: `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        if self.domain.is_empty() {
            self.path.clone()
        } else {
            format!("{}/{}", self.domain, self.path)
        }
    }

    /// The repository name as Docker shows it: `busybox` for `docker.io/library/busybox`,
    /// `user/app` for `docker.io/user/app`, anything else unchanged (`library/a/b` keeps its
    /// prefix because it has more than one component after it).
    pub fn familiar_name(&self) -> String {
        if self.domain != DEFAULT_DOMAIN {
            return self.name();
        }
        match self.path.strip_prefix(OFFICIAL_REPOSITORY_PREFIX) {
            Some(rest) if !rest.contains('/') => rest.to_owned(),
            Some(_) | None => self.path.clone(),
        }
    }

    /// The familiar name with `:tag` and `@digest` (`FamiliarString`): what `docker images`
    /// shows, e.g. `busybox:latest`.
    pub fn familiar(&self) -> String {
        let mut text = self.familiar_name();
        self.push_tag_and_digest(&mut text);
        text
    }

    /// The same repository with `tag`, keeping any digest (`WithTag`).
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        if !is_tag(tag) {
            return Err(ReferenceError::InvalidTag {
                tag: tag.to_owned(),
            });
        }
        Ok(Reference {
            tag: Some(tag.to_owned()),
            ..self.clone()
        })
    }

    /// The same repository with `digest`, keeping any tag (`WithDigest`). The digest must
    /// match the grammar and, unlike Docker's `WithDigest`, also be a valid digest of a
    /// registered algorithm, as it must be when parsed.
    pub fn with_digest(&self, digest: &str) -> Result<Reference, ReferenceError> {
        if !is_digest(digest) {
            return Err(ReferenceError::InvalidDigest {
                digest: digest.to_owned(),
            });
        }
        validate_digest(digest)?;
        Ok(Reference {
            digest: Some(digest.to_owned()),
            ..self.clone()
        })
    }

    fn push_tag_and_digest(&self, text: &mut String) {
        if let Some(tag) = &self.tag {
            text.push(':');
            text.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            text.push('@');
            text.push_str(digest);
        }
    }
}

impl fmt::Display for Reference {
    /// The full normalised form: `docker.io/library/busybox:latest`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.name();
        self.push_tag_and_digest(&mut text);
        formatter.write_str(&text)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(text: &str) -> Result<Reference, ReferenceError> {
        Reference::parse(text)
    }
}

impl serde::Serialize for Reference {
    /// Serialised as its normalised text.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reference {
    /// Parsed with [`Reference::parse`], so familiar text is accepted and normalised.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Reference, D::Error> {
        let text = String::deserialize(deserializer)?;
        Reference::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for AnyReference {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnyReference::Id(id) => formatter.write_str(id),
            AnyReference::Named(reference) => reference.fmt(formatter),
        }
    }
}

/// Parses text that may be an image ID or a name (`ParseAnyReference`): a bare 64-hex string is
/// the ID `sha256:<hex>`, a valid digest (`sha256:<64 hex>`, `sha512:<128 hex>`, …) is that ID,
/// and anything else is parsed with [`Reference::parse`]. A short ID prefix such as
/// `3f57d9401f8d` parses as a name here; see [`is_image_id_prefix`].
pub fn parse_any(text: &str) -> Result<AnyReference, ReferenceError> {
    if is_identifier(text) {
        return Ok(AnyReference::Id(format!("sha256:{text}")));
    }
    if validate_digest(text).is_ok() {
        return Ok(AnyReference::Id(text.to_owned()));
    }
    Reference::parse(text).map(AnyReference::Named)
}

/// Whether `text` can select images by ID prefix, as `docker images`, `docker rmi` and
/// `docker inspect` accept: 1 to 64 lowercase hex digits, optionally after `sha256:`
/// (`3f57d9401f8d`, `sha256:3f57`).
///
/// Such text may also be a valid name (`abc` is `docker.io/library/abc`); Docker tries the name
/// first and falls back to the ID prefix when no image has that name, and callers should do the
/// same.
pub fn is_image_id_prefix(text: &str) -> bool {
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(is_lower_hex)
}

/// `splitDockerDomain`: the registry and the rest, with Docker Hub names qualified.
fn split_docker_domain(text: &str) -> (&str, String) {
    let Some((first, rest)) = text.split_once('/') else {
        // A single component is always a Hub name, even `localhost` or `example.com`.
        return (
            DEFAULT_DOMAIN,
            format!("{OFFICIAL_REPOSITORY_PREFIX}{text}"),
        );
    };
    let (domain, remainder) = if first == "localhost" {
        (first, rest)
    } else if first == LEGACY_DEFAULT_DOMAIN {
        (DEFAULT_DOMAIN, rest)
    } else if first.contains(['.', ':']) || go_to_lower(first) != first {
        // Uppercase is not allowed in a repository path, so Docker takes it for a host name.
        (first, rest)
    } else {
        (DEFAULT_DOMAIN, text)
    };
    if domain == DEFAULT_DOMAIN && !remainder.contains('/') {
        (domain, format!("{OFFICIAL_REPOSITORY_PREFIX}{remainder}"))
    } else {
        (domain, remainder.to_owned())
    }
}

/// `Parse` on text that always has a domain in front: grammar, then length, then digest.
fn parse_qualified(text: &str) -> Result<Reference, ReferenceError> {
    let Some(parts) = match_reference(text) else {
        let lower = go_to_lower(text);
        if lower != text && match_reference(&lower).is_some() {
            return Err(ReferenceError::Uppercase);
        }
        return Err(ReferenceError::InvalidFormat);
    };
    if parts.path.len() > REPOSITORY_PATH_MAX {
        return Err(ReferenceError::NameTooLong {
            length: parts.path.len(),
        });
    }
    if let Some(digest) = parts.digest {
        validate_digest(digest)?;
    }
    Ok(Reference {
        domain: parts.domain.to_owned(),
        path: parts.path.to_owned(),
        tag: parts.tag.map(str::to_owned),
        digest: parts.digest.map(str::to_owned),
    })
}

/// The captures of `referencePat` (and of `anchoredNamePat` on its name).
struct Parts<'a> {
    domain: &'a str,
    path: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

/// `^(?:(domain-and-port)/)?(remote-name)(?::(tag))?(?:@(digest))?$`, captures as Go's
/// leftmost-first matching fills them.
///
/// A domain cannot contain `/`, so when present it is exactly the text before the first `/`; the
/// optional group is greedy, so that split is tried first, and the name without a domain only if
/// it fails. After the domain the split is forced: the remote name has no `:` or `@` and so ends
/// at the first of them, and a tag has no `@`.
fn match_reference(text: &str) -> Option<Parts<'_>> {
    if let Some((first, rest)) = text.split_once('/')
        && is_domain_and_port(first)
        && let Some(parts) = match_remote_tag_digest(first, rest)
    {
        return Some(parts);
    }
    match_remote_tag_digest("", text)
}

fn match_remote_tag_digest<'a>(domain: &'a str, text: &'a str) -> Option<Parts<'a>> {
    let end = text.find([':', '@']).unwrap_or(text.len());
    let (path, mut rest) = text.split_at(end);
    if !is_remote_name(path) {
        return None;
    }
    let mut tag = None;
    if let Some(after) = rest.strip_prefix(':') {
        let end = after.find('@').unwrap_or(after.len());
        let (candidate, after_tag) = after.split_at(end);
        if !is_tag(candidate) {
            return None;
        }
        tag = Some(candidate);
        rest = after_tag;
    }
    let mut digest = None;
    if let Some(after) = rest.strip_prefix('@') {
        if !is_digest(after) {
            return None;
        }
        digest = Some(after);
        rest = "";
    }
    rest.is_empty().then_some(Parts {
        domain,
        path,
        tag,
        digest,
    })
}

/// `host(:port)?` where host is a domain name or a bracketed IPv6 address.
fn is_domain_and_port(text: &str) -> bool {
    let (host_is_valid, port) = if let Some(inside) = text.strip_prefix('[') {
        // `\[[a-fA-F0-9:]+\]`: no zone identifiers, no embedded IPv4.
        let Some((address, after)) = inside.split_once(']') else {
            return false;
        };
        let valid = !address.is_empty()
            && address
                .bytes()
                .all(|byte| byte.is_ascii_hexdigit() || byte == b':');
        (valid, after)
    } else {
        let end = text.find(':').unwrap_or(text.len());
        let (host, after) = text.split_at(end);
        (is_domain_name(host), after)
    };
    host_is_valid
        && (port.is_empty()
            || port.strip_prefix(':').is_some_and(|digits| {
                !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
            }))
}

/// `domain-component ('.' domain-component)*`, each component `[a-zA-Z0-9]` or
/// `[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn is_domain_name(text: &str) -> bool {
    text.split('.').all(|component| {
        let bytes = component.as_bytes();
        match (bytes.first(), bytes.last()) {
            (Some(first), Some(last)) => {
                first.is_ascii_alphanumeric()
                    && last.is_ascii_alphanumeric()
                    && bytes
                        .iter()
                        .all(|byte| byte.is_ascii_alphanumeric() || *byte == b'-')
            }
            _ => false,
        }
    })
}

/// `path-component ('/' path-component)*`.
fn is_remote_name(text: &str) -> bool {
    text.split('/').all(is_path_component)
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`: lowercase alphanumeric runs joined by one `.`, one
/// or two `_`, or any number of `-`.
fn is_path_component(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut index = 0;
    loop {
        let run = index;
        while bytes
            .get(index)
            .is_some_and(|byte| is_lower_alphanumeric(*byte))
        {
            index += 1;
        }
        if index == run {
            return false;
        }
        if index == bytes.len() {
            return true;
        }
        let separator = index;
        while bytes
            .get(index)
            .is_some_and(|byte| matches!(byte, b'.' | b'_' | b'-'))
        {
            index += 1;
        }
        let separator = &text[separator..index];
        let valid = matches!(separator, "." | "_" | "__")
            || (!separator.is_empty() && separator.bytes().all(|byte| byte == b'-'));
        if !valid {
            return false;
        }
    }
}

/// `[\w][\w.-]{0,127}` with Go's ASCII `\w`.
fn is_tag(text: &str) -> bool {
    let bytes = text.as_bytes();
    let is_word = |byte: &u8| byte.is_ascii_alphanumeric() || *byte == b'_';
    bytes.first().is_some_and(is_word)
        && bytes.len() <= TAG_MAX
        && bytes
            .iter()
            .all(|byte| is_word(byte) || matches!(byte, b'.' | b'-'))
}

/// distribution/reference's digest grammar:
/// `[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}`.
fn is_digest(text: &str) -> bool {
    let Some((algorithm, hex)) = text.split_once(':') else {
        return false;
    };
    let algorithm_is_valid = algorithm.split(['-', '_', '+', '.']).all(|component| {
        let bytes = component.as_bytes();
        bytes.first().is_some_and(u8::is_ascii_alphabetic)
            && bytes.iter().all(u8::is_ascii_alphanumeric)
    });
    algorithm_is_valid && hex.len() >= 32 && hex.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// go-digest v1.0's `Digest.Validate` with the algorithms Docker registers.
fn validate_digest(text: &str) -> Result<(), ReferenceError> {
    let digest = || text.to_owned();
    let Some((algorithm, encoded)) = text.split_once(':') else {
        return Err(ReferenceError::DigestFormat { digest: digest() });
    };
    if algorithm.is_empty() || encoded.is_empty() {
        return Err(ReferenceError::DigestFormat { digest: digest() });
    }
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ if is_go_digest_form(algorithm, encoded) => {
            return Err(ReferenceError::UnsupportedDigestAlgorithm { digest: digest() });
        }
        _ => return Err(ReferenceError::DigestFormat { digest: digest() }),
    };
    if encoded.len() != length {
        return Err(ReferenceError::DigestLength { digest: digest() });
    }
    if !encoded.bytes().all(is_lower_hex) {
        return Err(ReferenceError::DigestFormat { digest: digest() });
    }
    Ok(())
}

/// go-digest's `DigestRegexpAnchored` split at the first `:`:
/// `[a-z0-9]+(?:[.+_-][a-z0-9]+)*` `:` `[a-zA-Z0-9=_-]+`.
fn is_go_digest_form(algorithm: &str, encoded: &str) -> bool {
    let algorithm_is_valid = algorithm
        .split(['.', '+', '_', '-'])
        .all(|component| !component.is_empty() && component.bytes().all(is_lower_alphanumeric));
    algorithm_is_valid
        && encoded
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'=' | b'_' | b'-'))
}

/// `[a-f0-9]{64}`: an image ID without its algorithm.
fn is_identifier(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(is_lower_hex)
}

fn is_lower_hex(byte: u8) -> bool {
    matches!(byte, b'0'..=b'9' | b'a'..=b'f')
}

fn is_lower_alphanumeric(byte: u8) -> bool {
    matches!(byte, b'0'..=b'9' | b'a'..=b'z')
}

/// Go's `strings.ToLower`: Unicode simple lowercase mapping, character by character. Rust's
/// `str::to_lowercase` differs for `İ` (U+0130, which Go maps to ASCII `i`) and for a final `Σ`;
/// the difference decides whether `İ_x/y` is "must be lowercase" or "invalid reference format".
fn go_to_lower(text: &str) -> String {
    text.chars()
        .map(|character| match character {
            '\u{130}' => 'i',
            // Every other character has a one-character lowercase mapping.
            other => other.to_lowercase().next().unwrap_or(other),
        })
        .collect()
}
