//! `.dockerignore` with Docker's semantics: reading the file as BuildKit's `ignorefile.ReadAll`
//! does and matching paths as `moby/patternmatcher` does (`MatchesOrParentMatches`).
//!
//! Owns: the file format (comments, blank lines, `!` exceptions, path cleaning, a leading `/`
//! removed, a UTF-8 BOM), pattern compilation (`*` and `?` never cross `/`, `**` any number of
//! segments, `[...]` classes, `\` escapes, every other character literal), the match rule (the
//! last matching pattern wins; a pattern matching a parent directory matches everything below
//! it) and which file applies (`<Dockerfile>.dockerignore` beside the Dockerfile wins over
//! `<context>/.dockerignore`).
//!
//! Does not own: walking the context. The walker asks [`Matcher::matches`] for every entry and
//! decides what to send: a matched directory is still entered when the file has exceptions
//! (an exception can re-include something below it), and the directories leading to a kept
//! path are sent even when they matched.
//!
//! This is not `.gitignore`: patterns are anchored at the context root (`tmp` is only the
//! top-level `tmp`), `[!x]` is the set {`!`, `x`} (negation is `[^x]`), a trailing `/` is
//! cleaned away (`logs/` also excludes a file named `logs`), and there is no implicit prefix.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Why a `.dockerignore` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    #[error("failed to read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: Box<IgnoreError>,
    },
    #[error("line {line}: illegal exclusion pattern: \"!\"")]
    LoneExclamation { line: usize },
    #[error("line {line}: syntax error in pattern {pattern:?}")]
    BadPattern { line: usize, pattern: String },
}

/// How one pattern matches, as patternmatcher decides when it compiles a pattern: plain text
/// is compared whole, `text**` is a prefix test, a leading `**` followed by plain text a suffix
/// test, anything else a regular expression.
#[derive(Debug, Clone)]
enum Kind {
    Exact,
    /// The pattern without its trailing `**`.
    Prefix(String),
    /// The pattern without its leading `**`.
    Suffix(String),
    Regex(regex_lite::Regex),
}

/// One cleaned pattern of the file.
#[derive(Debug, Clone)]
struct Pattern {
    /// The pattern after cleaning, without its `!`.
    text: String,
    exception: bool,
    kind: Kind,
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.text,
            Kind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Kind::Suffix(suffix) => {
                // `**/foo` also matches `foo` itself.
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            Kind::Regex(regex) => regex.is_match(path),
        }
    }
}

/// The patterns of one `.dockerignore`, in file order. Immutable and cheap to share; matching
/// is a pure function of the path.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    patterns: Vec<Pattern>,
}

impl Matcher {
    /// Parses the text of a `.dockerignore`, as BuildKit reads it: a UTF-8 BOM at the very
    /// start is dropped; lines end at `\n` (a `\r` before it is dropped); a line whose first
    /// byte is `#` is a comment (` #x` is the pattern `#x`: there are no inline comments);
    /// white space around a pattern and after a leading `!` is trimmed; each pattern is cleaned
    /// like Go's `filepath.Clean` (`./a`, `a//b`, `a/../b`, a trailing `/`) and one leading `/`
    /// is removed. Fails for a lone `!` and for a pattern that Go's `filepath.Match` or the
    /// compiled expression rejects (an unclosed `[`, for one).
    pub fn parse(text: &str) -> Result<Matcher, IgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (index, line) in text.split('\n').enumerate() {
            let line_number = index + 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.starts_with('#') {
                continue;
            }
            let mut pattern = line.trim();
            if pattern.is_empty() {
                continue;
            }
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
            }
            let mut cleaned = String::new();
            if !pattern.is_empty() {
                cleaned = clean(pattern);
                if cleaned.len() > 1 && cleaned.starts_with('/') {
                    cleaned.remove(0);
                }
            }
            if exception && cleaned.is_empty() {
                return Err(IgnoreError::LoneExclamation { line: line_number });
            }
            patterns.push(
                compile(cleaned, exception).ok_or_else(|| IgnoreError::BadPattern {
                    line: line_number,
                    pattern: line.trim().to_string(),
                })?,
            );
        }
        Ok(Matcher { patterns })
    }

    /// Whether `path` is excluded: patternmatcher's `MatchesOrParentMatches`. `path` is relative
    /// to the context root, `/`-separated and clean (`a/b`, not `./a/b` or `a/b/`). Each pattern
    /// is tried against the path and then against each of its parent directories (`a`, `a/b`),
    /// so a pattern that matches a directory matches everything below it; the last pattern that
    /// matches decides (an exception re-includes). Patterns that cannot change the outcome are
    /// skipped, as patternmatcher does.
    pub fn matches(&self, path: &str) -> bool {
        let parent = go_dir(path);
        let parents: Vec<&str> = if parent == "." {
            Vec::new()
        } else {
            let separators = parent.match_indices('/').map(|(at, _)| at);
            separators
                .chain(std::iter::once(parent.len()))
                .map(|end| &parent[..end])
                .collect()
        };
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exception != matched {
                continue;
            }
            let hit = pattern.matches(path) || parents.iter().any(|dir| pattern.matches(dir));
            if hit {
                matched = !pattern.exception;
            }
        }
        matched
    }

    /// Whether any pattern is an exception (`!pattern`). With exceptions, an excluded
    /// directory may still hold paths that are sent.
    pub fn has_exclusions(&self) -> bool {
        self.patterns.iter().any(|pattern| pattern.exception)
    }

    /// Whether the file has no patterns at all (only comments and blank lines, or empty).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The cleaned patterns in file order, exceptions with their `!`.
    pub fn patterns(&self) -> impl Iterator<Item = String> + '_ {
        self.patterns.iter().map(|pattern| {
            if pattern.exception {
                format!("!{}", pattern.text)
            } else {
                pattern.text.clone()
            }
        })
    }
}

impl kiln_parser::lint::IgnoreMatcher for Matcher {
    fn is_ignored(&self, path: &str) -> bool {
        self.matches(path)
    }

    fn has_exclusions(&self) -> bool {
        Matcher::has_exclusions(self)
    }
}

/// The `.dockerignore` that applies to a build of `dockerfile` with `context`, as BuildKit
/// picks it: `<Dockerfile name>.dockerignore` in the Dockerfile's directory when it exists
/// (`app.Dockerfile` → `app.Dockerfile.dockerignore`), otherwise `<context>/.dockerignore`.
/// `Ok(None)` when neither exists. A `dockerfile` without a file name (`""`, for a Dockerfile
/// read from stdin) looks in the context only. Reads only; never writes.
pub fn read_for(dockerfile: &Path, context: &Path) -> Result<Option<Matcher>, IgnoreError> {
    let mut candidates = Vec::new();
    if let Some(name) = dockerfile.file_name() {
        let mut beside = name.to_os_string();
        beside.push(".dockerignore");
        candidates.push(dockerfile.with_file_name(beside));
    }
    candidates.push(context.join(".dockerignore"));
    for path in candidates {
        match fs::read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                return Matcher::parse(&text)
                    .map(Some)
                    .map_err(|source| IgnoreError::Invalid {
                        path,
                        source: Box::new(source),
                    });
            }
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                continue;
            }
            Err(source) => return Err(IgnoreError::Read { path, source }),
        }
    }
    Ok(None)
}

/// Go's `filepath.Clean`: see [`kiln_parser::path::clean`].
pub use kiln_parser::path::clean;

/// Go's `filepath.Dir`: everything before the last `/`, cleaned (`.` when there is no `/`).
fn go_dir(path: &str) -> String {
    match path.rfind('/') {
        Some(at) => clean(&path[..=at]),
        None => ".".to_string(),
    }
}

/// Characters that are literal in a pattern but special in a regular expression; `.+()|{}$`
/// as patternmatcher escapes them (`[`, `]`, `*`, `?` and `\` have their own meaning).
fn is_regex_meta(ch: char) -> bool {
    matches!(ch, '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$')
}

/// How far the compilation of a pattern has decided its [`Kind`] (patternmatcher's
/// `matchType` while it scans).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    Exact,
    Prefix,
    Suffix,
    Regex,
}

/// Compiles one cleaned pattern as patternmatcher's `Pattern.compile`; `None` for a pattern
/// Go rejects.
fn compile(text: String, exception: bool) -> Option<Pattern> {
    if !valid_go_pattern(&text) {
        return None;
    }
    let chars: Vec<char> = text.chars().collect();
    let mut regex = String::from("^");
    let mut decided = Decided::Exact;
    // Go's text/scanner, which patternmatcher reads the pattern with, skips a BOM at the start:
    // `\u{feff}*.md` compiles as `*.md` (an exact pattern keeps it and matches nothing).
    let mut at = usize::from(chars.first() == Some(&'\u{feff}'));
    let mut first = true;
    while at < chars.len() {
        let ch = chars[at];
        at += 1;
        match ch {
            '*' if chars.get(at) == Some(&'*') => {
                at += 1;
                // `**/` is `**`.
                if chars.get(at) == Some(&'/') {
                    at += 1;
                }
                if at == chars.len() {
                    // A trailing `**` takes everything below, as in .gitignore.
                    if decided == Decided::Exact {
                        decided = Decided::Prefix;
                    } else {
                        regex.push_str(".*");
                        decided = Decided::Regex;
                    }
                } else {
                    // Any number of segments, none included.
                    regex.push_str("(.*/)?");
                    decided = Decided::Regex;
                }
                if first {
                    decided = Decided::Suffix;
                }
            }
            '*' => {
                regex.push_str("[^/]*");
                decided = Decided::Regex;
            }
            '?' => {
                regex.push_str("[^/]");
                decided = Decided::Regex;
            }
            '\\' => match chars.get(at) {
                Some(next) => {
                    regex.push('\\');
                    regex.push(*next);
                    at += 1;
                    decided = Decided::Regex;
                }
                // Unreachable after `valid_go_pattern` (Go rejects a trailing `\`); kept as
                // patternmatcher has it.
                None => regex.push('\\'),
            },
            '[' | ']' => {
                regex.push(ch);
                decided = Decided::Regex;
            }
            other if is_regex_meta(other) => {
                regex.push('\\');
                regex.push(other);
            }
            other => regex.push(other),
        }
        first = false;
    }
    let kind = match decided {
        Decided::Exact => Kind::Exact,
        Decided::Prefix => Kind::Prefix(text[..text.len() - 2].to_string()),
        // Byte offsets, as in Go (a BOM before `**` leaves a broken suffix that matches nothing).
        Decided::Suffix => Kind::Suffix(String::from_utf8_lossy(&text.as_bytes()[2..]).into()),
        Decided::Regex => {
            regex.push('$');
            Kind::Regex(regex_lite::Regex::new(&regex).ok()?)
        }
    };
    Some(Pattern {
        text,
        exception,
        kind,
    })
}

/// The syntax check patternmatcher runs (`filepath.Match(pattern, ".")` must not fail): every
/// `[` class is closed and non-empty, ranges are in order, and a `\` inside a class escapes
/// something.
fn valid_go_pattern(pattern: &str) -> bool {
    let chars: Vec<char> = pattern.chars().collect();
    let mut at = 0;
    while at < chars.len() {
        match chars[at] {
            // A trailing `\` escapes nothing.
            '\\' if at + 1 == chars.len() => return false,
            '\\' => at += 2,
            '[' => {
                at += 1;
                if chars.get(at) == Some(&'^') {
                    at += 1;
                }
                let mut members = 0;
                loop {
                    match chars.get(at) {
                        None => return false,
                        Some(']') if members > 0 => break,
                        Some(_) => {}
                    }
                    let Some(low) = class_char(&chars, &mut at) else {
                        return false;
                    };
                    if chars.get(at) == Some(&'-') {
                        at += 1;
                        let Some(high) = class_char(&chars, &mut at) else {
                            return false;
                        };
                        if high < low {
                            return false;
                        }
                    }
                    members += 1;
                }
                at += 1;
            }
            _ => at += 1,
        }
    }
    true
}

/// One character of a class (`\x` is `x`); `None` at the end of the pattern, or at a `-` or
/// `]` where a character is needed, as Go's `getEsc`.
fn class_char(chars: &[char], at: &mut usize) -> Option<char> {
    let mut ch = *chars.get(*at)?;
    if ch == '-' || ch == ']' {
        return None;
    }
    if ch == '\\' {
        *at += 1;
        ch = *chars.get(*at)?;
    }
    *at += 1;
    Some(ch)
}
