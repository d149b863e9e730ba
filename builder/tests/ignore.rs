//! `.dockerignore` against Docker's behaviour: kiln's own table of pattern/path cases (from
//! moby/patternmatcher's rules), the public `.dockerignore` scenarios
//! (`../shared/conformance/dockerignore/cases_ignore.py`, skipped with a printed reason when
//! absent), which `.dockerignore` applies, and the CopyIgnoredFile lint rule with the real
//! matcher over BuildKit's lint conformance cases (`../shared/conformance/buildkit-lint`).
#![allow(clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_builder::ignore::{self, IgnoreError, Matcher};
use kiln_parser::lint::{self, IgnoreMatcher, LintOptions};

const IGNORE_CASES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/conformance/dockerignore/cases_ignore.py"
);

const LINT_CASES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/conformance/buildkit-lint/lint_cases.json"
);

// ------------------------------------------------------------------ kiln's own table --

/// `(.dockerignore text, path, excluded)`: one row per rule of patternmatcher, most from its
/// `TestMatches` vectors and the moby integration tests named in the comments.
const MATCHES: &[(&str, &str, bool)] = &[
    // Plain names are anchored at the context root and match whole paths.
    ("fileutils.go", "fileutils.go", true),
    ("fileutils.go", "sub/fileutils.go", false),
    ("src", "src/main.rs", true),
    ("src", "srcs", false),
    ("src/util", "src/utility.rs", false),
    // `*` and `?` stay within one segment.
    ("*.go", "fileutils.go", true),
    ("*.go", "sub/fileutils.go", false),
    ("*", "anything", true),
    ("*", "dir/below", true), // the parent `dir` matches
    ("*/*.rs", "src/lib.rs", true),
    ("*/*.rs", "src/util/x.rs", false), // neither the path nor a parent is two segments ending .rs
    ("*/*.rs", "lib.rs", false),
    ("temp?", "temp1", true),
    ("temp?", "temp22", false),
    ("a?b", "a/b", false),
    ("a?b", "a\u{263a}b", true), // characters, not bytes
    // Classes: ranges, `^` negation, `[!x]` is the set {'!', 'x'}.
    ("file[0-9].csv", "file7.csv", true),
    ("file[0-9].csv", "file10.csv", false),
    ("file[^0-9].csv", "fileA.csv", true),
    ("file[^0-9].csv", "file1.csv", false),
    ("[!t]emp", "temp", true),
    ("[!t]emp", "!emp", true),
    ("[!t]emp", "xemp", false),
    // `**`: any number of segments, none included.
    ("**", "a/b/c", true),
    ("**/*.log", "server.log", true),
    ("**/*.log", "logs/old/app.1.log", true),
    ("**/node_modules", "node_modules/x.js", true),
    (
        "**/node_modules",
        "web/app/node_modules/react/index.js",
        true,
    ),
    ("docs/**/*.md", "docs/guide.md", true),
    ("docs/**/*.md", "docs/api/v1/old.md", true),
    ("docs/**/*.md", "other/guide.md", false),
    ("build/**", "build/out.o", true),
    ("build/**", "build", false), // everything below, not the directory itself
    ("a**/*.txt", "abc/x.txt", true),
    ("a**/*.txt", "b/a.txt", false),
    // `**` glued to text is a string suffix test in current patternmatcher.
    ("**file", "dir/myfile", true),
    ("**.log", "logs/app.log", true),
    // Escapes and literal regular-expression characters.
    ("\\*star", "*star", true),
    ("\\*star", "xstar", false),
    ("a(b)c", "a(b)c", true),
    ("a(b)c", "abc", false),
    ("x+y", "xxy", false),
    ("cost$", "cost$", true),
    ("abc.def", "abcXdef", false),
    ("{a,b}", "{a,b}", true),
    // Reading: comments, white space, cleaning, a leading `/`.
    ("#README.md", "README.md", false),
    (" #x", "#x", true),
    ("bar #x", "bar", false),
    ("  lead  \r\n", "lead", true),
    ("./build/sub/", "build/sub/deep.o", true),
    ("a/b/../../tempA", "tempA", true),
    ("/README.md", "README.md", true),
    ("//notes.txt", "notes.txt", true),
    ("/", "anything", false),
    ("../temp1", "temp1", false),
    ("notes/", "notes", true), // a trailing slash is cleaned away: files match too
    ("\u{feff}CHANGELOG.md", "CHANGELOG.md", true), // BOM at the start of the file
    // A BOM starting a later line stays in the pattern; compiling skips it, comparing does not.
    ("x\n\u{feff}*.md", "README.md", true),
    ("x\n\u{feff}README.md", "README.md", false),
    // Exceptions and order: the last matching pattern wins.
    ("*.md\n!README.md", "README.md", false),
    ("!README.md\n*.md", "README.md", true),
    ("*.md\n!README.md\nREADME.md", "README.md", true),
    ("build\n!build/keep.txt", "build/keep.txt", false),
    ("build\n!build/keep.txt", "build/out.o", true),
    ("build\n!**/keep.txt", "build/sub/keep.txt", false),
    ("**\n!util/docker/web", "util/docker/web/foo", false),
    (
        "**\n!util/docker/web\nutil/docker/web/foo",
        "util/docker/web/foo",
        true,
    ),
    ("docs/\n! /docs/api", "docs/api/ref.md", false),
];

#[test]
fn patterns_match_as_patternmatcher_matches() {
    assert!(MATCHES.len() >= 40);
    let mut failures = Vec::new();
    for (text, path, excluded) in MATCHES {
        let matcher = Matcher::parse(text).expect("valid .dockerignore");
        if matcher.matches(path) != *excluded {
            failures.push(format!(
                "{text:?} vs {path:?}: expected excluded={excluded}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn patterns_are_cleaned_as_buildkit_reads_them() {
    let text = "\u{feff}./a//b/\n!  /c/../d\n# comment\n\n  e  \r\n/\n";
    let matcher = Matcher::parse(text).unwrap();
    let patterns: Vec<String> = matcher.patterns().collect();
    assert_eq!(patterns, ["a/b", "!d", "e", "/"]);
    assert!(matcher.has_exclusions());
    assert!(!Matcher::parse("a\nb\n").unwrap().has_exclusions());
    assert!(Matcher::parse("# only\n\n").unwrap().is_empty());
}

#[test]
fn malformed_patterns_are_errors_with_their_line() {
    assert!(matches!(
        Matcher::parse("a\n!\n"),
        Err(IgnoreError::LoneExclamation { line: 2 })
    ));
    assert!(matches!(
        Matcher::parse("ok\n[abc\n"),
        Err(IgnoreError::BadPattern { line: 2, .. })
    ));
    assert!(Matcher::parse("[]a]").is_err());
    assert!(Matcher::parse("trailing\\").is_err());
    assert!(Matcher::parse("[a\\").is_err());
    assert!(Matcher::parse("[z-a]").is_err());
    assert!(Matcher::parse("[a-z]").is_ok());
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("kiln-ignore-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_dockerfile_s_own_dockerignore_wins_over_the_context_s() {
    let dir = TempDir::new("read-for");
    let context = dir.0.join("context");
    let elsewhere = dir.0.join("elsewhere");
    fs::create_dir_all(&context).unwrap();
    fs::create_dir_all(&elsewhere).unwrap();
    let dockerfile = elsewhere.join("app.Dockerfile");
    fs::write(&dockerfile, "FROM scratch\n").unwrap();

    assert!(ignore::read_for(&dockerfile, &context).unwrap().is_none());

    fs::write(context.join(".dockerignore"), "from-context\n").unwrap();
    let matcher = ignore::read_for(&dockerfile, &context).unwrap().unwrap();
    assert!(matcher.matches("from-context"));

    fs::write(elsewhere.join("app.Dockerfile.dockerignore"), "beside\n").unwrap();
    let matcher = ignore::read_for(&dockerfile, &context).unwrap().unwrap();
    assert!(matcher.matches("beside"));
    assert!(!matcher.matches("from-context"));

    // A Dockerfile from stdin has no name: only the context's file applies.
    let matcher = ignore::read_for(Path::new(""), &context).unwrap().unwrap();
    assert!(matcher.matches("from-context"));

    // A malformed file is an error that names the file and the line.
    fs::write(context.join(".dockerignore"), "ok\n[abc\n").unwrap();
    let error = ignore::read_for(Path::new(""), &context).unwrap_err();
    assert!(
        matches!(&error, IgnoreError::Invalid { path, source }
            if path == &context.join(".dockerignore")
                && matches!(**source, IgnoreError::BadPattern { line: 2, .. })),
        "{error:?}"
    );
}

// --------------------------------------------------- the public .dockerignore cases --

/// A Python value, as far as `cases_ignore.py` uses them.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Bool(bool),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Name(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Str(String),
    Name(String),
    Punct(char),
}

/// A reader of the Python subset the case file uses: string literals (single, double and
/// triple quotes, adjacent literals concatenated, `\n \r \t \\ \' \" \uXXXX \xXX` escapes),
/// lists, tuples, names and keyword arguments. Comments are skipped.
struct PyReader {
    chars: Vec<char>,
    at: usize,
}

impl PyReader {
    fn new(text: &str, at: usize) -> PyReader {
        PyReader {
            chars: text.chars().collect(),
            at: text[..at].chars().count(),
        }
    }

    fn peek_char(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while let Some(ch) = self.peek_char() {
            if ch.is_whitespace() {
                self.at += 1;
            } else if ch == '#' {
                while self.peek_char().is_some_and(|ch| ch != '\n') {
                    self.at += 1;
                }
            } else {
                break;
            }
        }
    }

    fn token(&mut self) -> Option<Token> {
        self.skip_space();
        let ch = self.peek_char()?;
        if ch == '"' || ch == '\'' {
            return Some(Token::Str(self.string(ch)));
        }
        if ch.is_alphanumeric() || ch == '_' {
            let start = self.at;
            while self
                .peek_char()
                .is_some_and(|ch| ch.is_alphanumeric() || ch == '_')
            {
                self.at += 1;
            }
            return Some(Token::Name(self.chars[start..self.at].iter().collect()));
        }
        self.at += 1;
        Some(Token::Punct(ch))
    }

    fn peek(&mut self) -> Option<Token> {
        let saved = self.at;
        let token = self.token();
        self.at = saved;
        token
    }

    fn string(&mut self, quote: char) -> String {
        let triple = self.chars.get(self.at..self.at + 3) == Some(&[quote, quote, quote][..]);
        self.at += if triple { 3 } else { 1 };
        let mut out = String::new();
        loop {
            let ch = self.chars[self.at];
            if triple && self.chars.get(self.at..self.at + 3) == Some(&[quote, quote, quote][..]) {
                self.at += 3;
                return out;
            }
            if !triple && ch == quote {
                self.at += 1;
                return out;
            }
            self.at += 1;
            if ch != '\\' {
                out.push(ch);
                continue;
            }
            let escaped = self.chars[self.at];
            self.at += 1;
            match escaped {
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                '0' => out.push('\0'),
                '\n' => {}
                'u' | 'x' => {
                    let digits = if escaped == 'u' { 4 } else { 2 };
                    let hex: String = self.chars[self.at..self.at + digits].iter().collect();
                    self.at += digits;
                    let code = u32::from_str_radix(&hex, 16).expect("hex escape");
                    out.push(char::from_u32(code).expect("valid character"));
                }
                '\\' | '\'' | '"' => out.push(escaped),
                other => {
                    out.push('\\');
                    out.push(other);
                }
            }
        }
    }

    fn value(&mut self) -> Value {
        match self.token().expect("a value") {
            Token::Str(mut text) => {
                while let Some(Token::Str(more)) = self.peek() {
                    self.token();
                    text.push_str(&more);
                }
                Value::Str(text)
            }
            Token::Name(name) if name == "True" => Value::Bool(true),
            Token::Name(name) if name == "False" => Value::Bool(false),
            Token::Name(name) => Value::Name(name),
            Token::Punct('[') => Value::List(self.items(']')),
            Token::Punct('(') => Value::Tuple(self.items(')')),
            other => panic!("unexpected {other:?} in the case file"),
        }
    }

    fn items(&mut self, close: char) -> Vec<Value> {
        let mut items = Vec::new();
        loop {
            if self.peek() == Some(Token::Punct(close)) {
                self.token();
                return items;
            }
            items.push(self.value());
            if self.peek() == Some(Token::Punct(',')) {
                self.token();
            }
        }
    }

    /// The arguments of a call whose `(` was just read: positional values and `name=value`.
    fn arguments(&mut self) -> (Vec<Value>, BTreeMap<String, Value>) {
        let (mut positional, mut keywords) = (Vec::new(), BTreeMap::new());
        loop {
            match self.peek() {
                Some(Token::Punct(')')) => {
                    self.token();
                    return (positional, keywords);
                }
                Some(Token::Punct(',')) => {
                    self.token();
                }
                Some(Token::Name(name)) => {
                    let saved = self.at;
                    self.token();
                    if self.peek() == Some(Token::Punct('=')) {
                        self.token();
                        keywords.insert(name, self.value());
                    } else {
                        self.at = saved;
                        positional.push(self.value());
                    }
                }
                _ => positional.push(self.value()),
            }
        }
    }
}

/// What an entry of a case's context is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File,
    Dir,
    Symlink,
}

#[derive(Debug)]
struct IgnoreCase {
    name: String,
    ignore: String,
    /// Every path of the context (directories implied by deeper paths included), with the
    /// Dockerfile and the .dockerignore the harness writes.
    entries: BTreeMap<String, Entry>,
}

fn strings(value: &Value) -> Vec<String> {
    let Value::List(items) = value else {
        panic!("expected a list, got {value:?}");
    };
    items
        .iter()
        .map(|item| {
            let Value::Str(text) = item else {
                panic!("expected a string, got {item:?}");
            };
            text.clone()
        })
        .collect()
}

fn add_entry(entries: &mut BTreeMap<String, Entry>, path: &str, entry: Entry) {
    let path = path.trim_end_matches('/');
    let mut parent = String::new();
    for segment in path.split('/').take(path.split('/').count() - 1) {
        if !parent.is_empty() {
            parent.push('/');
        }
        parent.push_str(segment);
        entries.insert(parent.clone(), Entry::Dir);
    }
    entries.insert(path.to_string(), entry);
}

fn add_files(entries: &mut BTreeMap<String, Entry>, paths: &[String]) {
    for path in paths {
        let entry = if path.ends_with('/') {
            Entry::Dir
        } else {
            Entry::File
        };
        add_entry(entries, path, entry);
    }
}

/// Reads the cases of `cases_ignore.py`: the shared `TREE`, its symlinks, and every
/// `case(...)` call.
fn read_ignore_cases(text: &str) -> Vec<IgnoreCase> {
    let mut tree = BTreeMap::new();
    let start = text.find("TREE = _files(").expect("the TREE definition") + "TREE = _files(".len();
    let mut reader = PyReader::new(text, start);
    add_files(&mut tree, &strings(&reader.value()));
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with("TREE[") {
            let mut reader = PyReader::new(text, offset + "TREE[".len());
            let Value::Str(name) = reader.value() else {
                panic!("a TREE key is a string: {line}")
            };
            reader.token(); // ]
            reader.token(); // =
            let value = reader.value();
            let Value::Tuple(items) = &value else {
                panic!("unexpected TREE value {value:?}");
            };
            assert_eq!(items.first(), Some(&Value::Str("symlink".into())), "{line}");
            add_entry(&mut tree, &name, Entry::Symlink);
        }
        offset += line.len();
    }
    let mut cases = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with("case(") {
            let mut reader = PyReader::new(text, offset + "case(".len());
            let (positional, keywords) = reader.arguments();
            let [Value::Str(name), Value::Str(ignore)] = &positional[..] else {
                panic!("case(name, ignore, ...) expected, got {positional:?}");
            };
            let mut entries = if keywords.get("tree") == Some(&Value::Bool(false)) {
                BTreeMap::new()
            } else {
                tree.clone()
            };
            if let Some(files) = keywords.get("files") {
                add_files(&mut entries, &strings(files));
            }
            entries.insert("Dockerfile".into(), Entry::File);
            entries.insert(".dockerignore".into(), Entry::File);
            cases.push(IgnoreCase {
                name: name.clone(),
                ignore: ignore.clone(),
                entries,
            });
        }
        offset += line.len();
    }
    cases
}

/// What `COPY . /ctx` receives, as BuildKit's context transfer (fsutil's walker with
/// patternmatcher) sends it: a file or symlink when it is not excluded; a directory when it is
/// not excluded, or when something below it is sent (its parents come with a kept path).
fn kept(matcher: &Matcher, entries: &BTreeMap<String, Entry>) -> BTreeSet<String> {
    let mut kept = BTreeSet::new();
    for path in entries.keys() {
        if !matcher.matches(path) {
            kept.insert(path.clone());
        }
    }
    for path in kept.clone() {
        let mut parent = path.as_str();
        while let Some((up, _)) = parent.rsplit_once('/') {
            kept.insert(up.to_string());
            parent = up;
        }
    }
    kept
}

/// What a case's context sends, written the shorter way.
#[derive(Debug)]
enum Sent {
    /// Every entry except these.
    AllBut(&'static [&'static str]),
    /// Only these entries.
    Only(&'static [&'static str]),
}

/// For each case, what `COPY . /ctx` receives among the entries of its context (directories
/// with a trailing `/`; the Dockerfile and .dockerignore included), worked out from each case's
/// comment and patternmatcher's rules. The cases marked DIVERGES follow current BuildKit.
#[rustfmt::skip]
const EXPECTED: &[(&str, Sent)] = &[
    ("ignore_no_patterns", Sent::AllBut(&[])),
    ("ignore_comments", Sent::AllBut(&["#2", "bar #x", "foo", "foo2"])),
    ("ignore_whitespace_crlf", Sent::AllBut(&["debug.log", "lead", "main_test.go", "trail"])),
    ("ignore_utf8_bom", Sent::AllBut(&["CHANGELOG.md", "Dockerfile"])),
    ("ignore_leading_slash", Sent::AllBut(&["README.md", "docs/api/v1/", "docs/api/v1/old.md", "docs/guide.md", "notes.txt", "src/util/", "src/util/helpers.rs", "src/util/helpers_test.rs"])),
    ("ignore_clean_paths", Sent::AllBut(&["build/sub/", "build/sub/deep.o", "build/sub/keep.txt", "dir1/foo", "foo", "foo2", "src/lib.rs", "tempA"])),
    ("ignore_trailing_slash_matches_files", Sent::AllBut(&["README.md", "logs/", "logs/app.log", "logs/old/", "logs/old/app.1.log", "notes"])),
    ("ignore_dockerfile_and_dockerignore", Sent::AllBut(&[".dockerignore", "Dockerfile"])),
    ("ignore_star_everything", Sent::Only(&[])),
    ("ignore_doublestar_everything", Sent::Only(&[])),
    ("ignore_dotfiles", Sent::AllBut(&[".dockerignore", ".env", ".git/", ".git/HEAD", ".git/refs/", ".git/refs/heads/", ".git/refs/heads/main", ".gitignore"])),
    ("ignore_star_segments", Sent::AllBut(&["CHANGELOG.md", "README-secret.md", "README.md", "docs/api/", "docs/api/ref.md", "docs/api/v1/", "docs/api/v1/old.md", "docs/guide.md", "docs/img/", "docs/img/logo.svg", "src/lib.rs", "src/main.rs", "src/utility.rs"])),
    ("ignore_question_mark", Sent::AllBut(&["a/", "a/b/", "a/b/temp2", "a/temp1", "data/file1.csv", "data/file2.csv", "data/fileA.csv", "data/fileb.csv", "temp1", "tempA", "x/", "x/y/", "x/y/z/", "x/y/z/temp5"])),
    ("ignore_char_classes", Sent::AllBut(&["a/", "a/b/", "a/b/temp2", "a/temp1", "build/", "build/keep.txt", "build/out.o", "build/sub/", "build/sub/deep.o", "build/sub/keep.txt", "data/file1.csv", "data/file2.csv", "data/fileA.csv", "temp22", "x/y/z/", "x/y/z/temp5"])),
    ("ignore_doublestar_leading", Sent::AllBut(&["a/b/temp2", "a/temp1", "logs/app.log", "logs/old/app.1.log", "node_modules/", "node_modules/.bin/", "node_modules/.bin/tool", "node_modules/left-pad/", "node_modules/left-pad/index.js", "server.log", "src/node_modules/", "src/node_modules/dep/", "src/node_modules/dep/index.js", "temp1", "temp22", "tempA", "web/app/node_modules/", "web/app/node_modules/react/", "web/app/node_modules/react/index.js", "web/app/node_modules/react/keep.js", "x/y/z/temp5"])),
    ("ignore_doublestar_middle", Sent::AllBut(&["docs/api/ref.md", "docs/api/v1/", "docs/api/v1/old.md", "docs/guide.md", "src/util/helpers_test.rs"])),
    ("ignore_doublestar_trailing", Sent::AllBut(&["build/keep.txt", "build/out.o", "build/sub/", "build/sub/deep.o", "build/sub/keep.txt", "tmp/.keep", "tmp/cache/", "tmp/cache/blob"])),
    ("ignore_doublestar_glued", Sent::AllBut(&["a/dir/dir/file.txt", "a/dir/file.txt", "a/file.txt", "ab.txt", "abc/x.txt"])),
    ("ignore_doublestar_glued_suffix", Sent::Only(&[".dockerignore", "dir/", "dir/dir/", "logs/", "sub/"])),
    ("ignore_dir_reinclude_children", Sent::AllBut(&["build/out.o", "build/sub/deep.o"])),
    ("ignore_dir_slash_reinclude_subdir", Sent::AllBut(&["docs/guide.md", "docs/img/", "docs/img/logo.svg"])),
    ("ignore_dir_star_reinclude", Sent::AllBut(&["docs/api/", "docs/api/ref.md", "docs/api/v1/", "docs/api/v1/old.md", "docs/img/", "docs/img/logo.svg"])),
    ("ignore_exception_order", Sent::AllBut(&["CHANGELOG.md", "README.md"])),
    ("ignore_allowlist", Sent::Only(&["Makefile", "docs/", "docs/api/", "docs/api/ref.md", "docs/api/v1/", "docs/api/v1/old.md", "src/", "src/.hidden", "src/README.md", "src/lib.rs", "src/main.rs", "src/node_modules/", "src/node_modules/dep/", "src/node_modules/dep/index.js", "src/tmp/", "src/tmp/scratch.txt", "src/util/", "src/util/helpers.rs", "src/util/helpers_test.rs", "src/utility.rs"])),
    ("ignore_allowlist_reexclude", Sent::AllBut(&[".dockerignore", "Dockerfile", "other", "util/docker/other", "util/docker/web/foo", "util/x"])),
    ("ignore_exception_deep_chain", Sent::AllBut(&["deep/a/b/sibling.txt"])),
    ("ignore_anchored_names", Sent::AllBut(&["src/node_modules/", "src/node_modules/dep/", "src/node_modules/dep/index.js", "tmp/", "tmp/.keep", "tmp/cache/", "tmp/cache/blob"])),
    ("ignore_no_implicit_prefix", Sent::AllBut(&["src/lib.rs", "src/util/", "src/util/helpers.rs", "src/util/helpers_test.rs"])),
    ("ignore_symlinks", Sent::AllBut(&["build/", "build/keep.txt", "build/out.o", "build/sub/", "build/sub/deep.o", "build/sub/keep.txt", "readme-link"])),
    ("ignore_moby_basic", Sent::Only(&[".dockerignore", "Dockerfile", "Makefile", "src/", "src/x.go"])),
    ("ignore_moby_exceptions", Sent::AllBut(&[".git/", ".git/HEAD", ".gitignore", "README.md", "dir/dir/f1", "dir/foo", "dir/foo1", "src/_vendor/", "src/_vendor/v.go"])),
    ("ignore_moby_wild_dirs", Sent::Only(&[".dockerignore", "Dockerfile", "dir1/", "dir1/dir2/", "dir1/dir2/file2", "dir1/dir3/", "dir1/dir4/", "dir1/dir5/", "dir1/dir5/fileAB", "dir1/dir5/fileB"])),
    ("ignore_buildkit_basic", Sent::Only(&["bay", "foo"])),
    ("ignore_escapes", Sent::AllBut(&["!bang", "#hash", "back\\slash", "q?mark", "star*name"])),
    ("ignore_unicode", Sent::AllBut(&["axb", "a☺b", "x.txt", "é.txt", "über-alles"])),
    ("ignore_regex_metachars", Sent::AllBut(&["a(b)c/def", "abc.def", "cost$", "dist/other.tar", "x+y.txt", "{braces}"])),
    ("ignore_doublestar_dir_with_exception", Sent::AllBut(&["node_modules/", "node_modules/.bin/", "node_modules/.bin/tool", "node_modules/left-pad/", "node_modules/left-pad/index.js", "src/node_modules/", "src/node_modules/dep/", "src/node_modules/dep/index.js", "web/app/node_modules/react/index.js"])),
    ("ignore_wildcard_exception_in_excluded_dir", Sent::AllBut(&["build/out.o", "build/sub/deep.o"])),
    ("ignore_exception_matching_nothing", Sent::AllBut(&["build/", "build/keep.txt", "build/out.o", "build/sub/", "build/sub/deep.o", "build/sub/keep.txt"])),
    ("ignore_allowlist_by_extension", Sent::Only(&["Makefile", "src/", "src/lib.rs", "src/main.rs", "src/util/", "src/util/helpers.rs", "src/util/helpers_test.rs", "src/utility.rs"])),
];

#[test]
fn public_dockerignore_cases_send_what_buildkit_sends() {
    let Ok(text) = fs::read_to_string(IGNORE_CASES) else {
        eprintln!("skipping: .dockerignore conformance data not found at {IGNORE_CASES}");
        return;
    };
    let cases = read_ignore_cases(&text);
    assert_eq!(cases.len(), 40, "cases read from {IGNORE_CASES}");
    let mut failures = Vec::new();
    let mut passed = 0;
    for case in &cases {
        let matcher = match Matcher::parse(&case.ignore) {
            Ok(matcher) => matcher,
            Err(error) => {
                failures.push(format!("{}: {error}", case.name));
                continue;
            }
        };
        let kept = kept(&matcher, &case.entries);
        let name_of = |path: &String| match case.entries[path] {
            Entry::Dir => format!("{path}/"),
            Entry::File | Entry::Symlink => path.clone(),
        };
        let all: BTreeSet<String> = case.entries.keys().map(name_of).collect();
        let sent: BTreeSet<String> = kept.iter().map(name_of).collect();
        let Some((_, expected)) = EXPECTED.iter().find(|(name, _)| *name == case.name) else {
            failures.push(format!(
                "{}: no expectation; kiln sends {sent:?}",
                case.name
            ));
            continue;
        };
        let expected: BTreeSet<String> = match expected {
            Sent::Only(paths) => paths.iter().map(|path| path.to_string()).collect(),
            Sent::AllBut(paths) => {
                let excluded: BTreeSet<String> =
                    paths.iter().map(|path| path.to_string()).collect();
                all.difference(&excluded).cloned().collect()
            }
        };
        if sent == expected {
            passed += 1;
        } else {
            failures.push(format!(
                "{}:\n  sent but not expected {:?}\n  expected but not sent {:?}",
                case.name,
                sent.difference(&expected).collect::<Vec<_>>(),
                expected.difference(&sent).collect::<Vec<_>>()
            ));
        }
    }
    eprintln!(
        "{passed} passed, {} failed of {} .dockerignore cases",
        failures.len(),
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ------------------------------------------------------------- CopyIgnoredFile --

/// The warnings of `dockerfile` linted with `dockerignore` as the context's `.dockerignore`, as
/// `line: rule: message`.
fn lint_with(dockerfile: &str, dockerignore: Option<&str>) -> Vec<String> {
    let dockerfile = kiln_parser::parse(dockerfile).expect("the Dockerfile parses");
    let ignore = dockerignore.map(|text| {
        Arc::new(Matcher::parse(text).expect("valid .dockerignore")) as Arc<dyn IgnoreMatcher>
    });
    let options = LintOptions {
        ignore,
        ..LintOptions::default()
    };
    lint::lint(&dockerfile, &options)
        .expect("lint runs")
        .into_iter()
        .map(|warning| format!("{}: {}: {}", warning.line(), warning.rule, warning.message))
        .collect()
}

#[test]
fn copy_ignored_file_reports_local_sources_excluded_by_the_dockerignore() {
    let dockerfile = "FROM scratch\nCOPY ./app/main.go app/../README.md /dst/\nADD logs /l\n";
    assert_eq!(
        lint_with(dockerfile, Some("app\nlogs/\n")),
        [
            "2: CopyIgnoredFile: Attempting to Copy file \"app/main.go\" that is excluded by .dockerignore",
            "3: CopyIgnoredFile: Attempting to Add file \"logs\" that is excluded by .dockerignore",
        ]
    );
}

#[test]
fn copy_ignored_file_stays_quiet_where_buildkit_does() {
    let quiet = [
        // No .dockerignore: the rule does not run.
        ("FROM scratch\nCOPY x /x\n", None),
        // Exceptions make BuildKit skip the rule altogether.
        ("FROM scratch\nCOPY x /x\n", Some("x\n!y\n")),
        // Another stage's files, URLs and heredocs are not the context's.
        (
            "FROM scratch AS a\nFROM scratch\nCOPY --from=a x /x\n",
            Some("x\n"),
        ),
        ("FROM scratch\nADD https://example.com/x /x\n", Some("*\n")),
        ("FROM scratch\nCOPY <<x /x\nhello\nx\n", Some("x\n")),
        // `.*` excludes dot entries, not the context root.
        ("FROM scratch\nCOPY . /x\n", Some(".*\n")),
        // Anchored: `tmp` is only the top-level tmp.
        ("FROM scratch\nCOPY src/tmp /x\n", Some("tmp\n")),
    ];
    for (dockerfile, dockerignore) in quiet {
        assert_eq!(
            lint_with(dockerfile, dockerignore),
            Vec::<String>::new(),
            "{dockerfile:?} with {dockerignore:?}"
        );
    }
    // `# check=skip=` applies as to any rule.
    let skipped = "# check=skip=CopyIgnoredFile\nFROM scratch\nCOPY x /x\n";
    assert!(lint_with(skipped, Some("x\n")).is_empty());
}

#[test]
fn copy_ignored_file_sees_expanded_sources() {
    let dockerfile = "FROM scratch\nARG DIR=secret\nCOPY ${DIR}/key /k\n";
    assert_eq!(
        lint_with(dockerfile, Some("secret\n")),
        [
            "3: CopyIgnoredFile: Attempting to Copy file \"secret/key\" that is excluded by .dockerignore"
        ]
    );
}

#[test]
fn copying_the_context_root_warns_only_when_every_root_entry_is_excluded() {
    for pattern in ["*", "**", "**/*"] {
        assert_eq!(
            lint_with("FROM scratch\nCOPY . /x\n", Some(pattern)),
            ["2: CopyIgnoredFile: Attempting to Copy file \".\" that is excluded by .dockerignore"],
            "{pattern}"
        );
    }
    assert!(lint_with("FROM scratch\nCOPY . /x\n", Some("*.md\n")).is_empty());
}

fn build_args(case: &serde_json::Value) -> BTreeMap<String, String> {
    case.get("build_args")
        .and_then(serde_json::Value::as_object)
        .map(|args| {
            args.iter()
                .map(|(key, value)| (key.clone(), value.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Every BuildKit lint conformance case, each with its `.dockerignore` (when it has one) read
/// by the real matcher, as `kiln check` runs them. `parser/tests/lint.rs` runs the cases
/// without a `.dockerignore` too, without the builder.
#[test]
fn lint_conformance_cases_with_the_real_dockerignore_matcher() {
    let Ok(text) = fs::read_to_string(LINT_CASES) else {
        eprintln!("skipping: BuildKit lint conformance data not found at {LINT_CASES}");
        return;
    };
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).expect("valid JSON");
    let mut failures = Vec::new();
    let (mut passed, mut with_dockerignore) = (0, 0);
    for case in &cases {
        let name = case["name"].as_str().unwrap_or_default();
        let mut expected: Vec<(String, usize, String)> = case["expected"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|warning| {
                (
                    warning["rule"].as_str().unwrap_or_default().to_string(),
                    warning["line"].as_u64().unwrap_or_default() as usize,
                    warning["detail"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        expected.sort();
        let partial = kiln_parser::parse_partial(case["dockerfile"].as_str().unwrap_or_default());
        if let (Some(error), None) = (&partial.error, case.get("reference_error")) {
            failures.push(format!("{name}: kiln's parser rejects it: {error}"));
            continue;
        }
        let ignore = match case.get("dockerignore").and_then(serde_json::Value::as_str) {
            Some(text) => {
                with_dockerignore += 1;
                match Matcher::parse(text) {
                    Ok(matcher) => Some(Arc::new(matcher) as Arc<dyn IgnoreMatcher>),
                    Err(error) => {
                        failures.push(format!("{name}: .dockerignore: {error}"));
                        continue;
                    }
                }
            }
            None => None,
        };
        let options = LintOptions {
            build_args: build_args(case),
            ignore,
            ..LintOptions::default()
        };
        let mut actual: Vec<(String, usize, String)> =
            match lint::lint(&partial.dockerfile, &options) {
                Ok(warnings) => warnings
                    .into_iter()
                    .map(|warning| (warning.rule.to_string(), warning.line(), warning.message))
                    .collect(),
                Err(error) => {
                    failures.push(format!("{name}: lint failed: {error}"));
                    continue;
                }
            };
        actual.sort();
        if actual == expected {
            passed += 1;
        } else {
            failures.push(format!(
                "{name}:\n  expected {expected:#?}\n  actual   {actual:#?}"
            ));
        }
    }
    eprintln!(
        "{passed} passed, {} failed of {} ({with_dockerignore} with a .dockerignore)",
        failures.len(),
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
