//! Expands Dockerfile words against an environment, the way BuildKit's shell lexer does
//! (`moby/buildkit`, `frontend/dockerfile/shell/lex.go`).
//!
//! Owns: `$name` and `${...}` substitution with every modifier BuildKit supports, single and
//! double quotes, the escape character of the `# escape=` directive, and the word splitting of
//! `ProcessWords`. It is a pure function of the text and an [`Environment`]: the builder supplies
//! the ARG/ENV values visible at dispatch time, the linter reads [`Expansion::unmatched`].
//!
//! Does not own: deciding which instructions expand (see [`crate::ast`]), command substitution,
//! arithmetic, `${name=word}` or `${#name}` (BuildKit rejects them too), or rendering errors
//! against the Dockerfile (errors carry a byte offset into the expanded text; the caller maps it
//! to a line and column).
//!
//! # Where this differs from BuildKit, on purpose
//!
//! - `${name` cut short right after the name: BuildKit reports
//!   `unsupported modifier (\u{FFFD}) in substitution`; this reports
//!   [`ExpandError::MissingBrace`]. Both fail.
//! - BuildKit's `ProcessWords` shares one word buffer between nesting levels, so
//!   `a${x:-b}c` split as words loses the `a`. Here each level has its own buffer, as in the
//!   BuildKit releases before that change: `a${x:-b}c` is the single word `abc`.
//! - `${` nested deeper than [`MAX_NESTING`] levels is [`ExpandError::NestingTooDeep`]
//!   (BuildKit recurses without limit; Rust's stack is not growable).
//! - Names are read with Rust's Unicode `Alphabetic`/`Numeric` properties where BuildKit uses
//!   Go's `unicode.IsLetter`/`IsDigit` (general categories L and Nd). They agree on ASCII and on
//!   letters of all common scripts; they differ on rare characters such as letter-like numbers
//!   (`Ⅻ`), superscript digits and combining vowel signs.
//! - Optional: [`Lexer::bracket_expressions`] turns on POSIX `[...]` in patterns. It is off by
//!   default because BuildKit treats `[` and `]` in patterns as literal characters.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

/// Deepest nesting of `${...}` inside a `${...}` word before expansion gives up with
/// [`ExpandError::NestingTooDeep`].
pub const MAX_NESTING: usize = 100;

/// Variables visible to an expansion. A variable set to the empty string is set: `lookup`
/// returns `Some("")`, which `${v-x}` and `${v:-x}` tell apart.
pub trait Environment {
    /// The value of `name`, or `None` when it is unset. Names are compared exactly (BuildKit
    /// compares them case-insensitively on Windows only).
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl<E: Environment + ?Sized> Environment for &E {
    fn lookup(&self, name: &str) -> Option<&str> {
        (**self).lookup(name)
    }
}

impl Environment for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl<S: BuildHasher> Environment for HashMap<String, String, S> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// `(name, value)` pairs in declaration order; the last occurrence of a name wins, as with
/// BuildKit's `KEY=VALUE` lists.
impl<K: AsRef<str>, V: AsRef<str>> Environment for [(K, V)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(key, _)| key.as_ref() == name)
            .map(|(_, value)| value.as_ref())
    }
}

/// Same as the slice: the last occurrence of a name wins.
impl<K: AsRef<str>, V: AsRef<str>> Environment for Vec<(K, V)> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

/// Same as the slice: the last occurrence of a name wins.
impl<K: AsRef<str>, V: AsRef<str>, const N: usize> Environment for [(K, V); N] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

/// The result of [`Lexer::expand_word`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The expanded word, quotes and escapes removed (unless the lexer keeps them).
    pub value: String,
    /// Names referenced that were set (possibly to the empty string).
    pub matched: BTreeSet<String>,
    /// Names referenced that were unset. As in BuildKit, every form that looks the name up
    /// reports it, `${v:-default}`, `${v+x}` and `${v?msg}` included, as do positional and special
    /// parameters (`$1`, `$@`). `${v=x}` fails before any look-up; with
    /// [`Lexer::skip_unset`] the unset names are still reported.
    pub unmatched: BTreeSet<String>,
}

/// The result of [`Lexer::expand_words`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WordsExpansion {
    /// The words after expansion and splitting. Never contains an empty word: `""` alone
    /// produces no word, as in BuildKit.
    pub words: Vec<String>,
    /// Names referenced that were set; see [`Expansion::matched`].
    pub matched: BTreeSet<String>,
    /// Names referenced that were unset; see [`Expansion::unmatched`].
    pub unmatched: BTreeSet<String>,
}

/// Why a word could not be expanded. Messages follow BuildKit's wording, lowercase. Every
/// variant carries the byte offset in the input of the construct at fault (the opening quote,
/// or the `$` of the substitution); see [`ExpandError::offset`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ExpandError {
    /// `'...` without the closing quote.
    #[error("unexpected end of statement while looking for matching single-quote")]
    UnterminatedSingleQuote {
        /// Byte offset of the opening quote.
        offset: usize,
    },
    /// `"...` without the closing quote.
    #[error("unexpected end of statement while looking for matching double-quote")]
    UnterminatedDoubleQuote {
        /// Byte offset of the opening quote.
        offset: usize,
    },
    /// `${...` without the closing brace. Also reported, as BuildKit does, for any error
    /// inside the braces that was found at the end of the input (`${a:-"b}`).
    #[error("syntax error: missing '}}'")]
    MissingBrace {
        /// Byte offset of the `$`.
        offset: usize,
    },
    /// `${name/pattern` without the `/` that ends the pattern.
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash {
        /// Byte offset of the `$`.
        offset: usize,
    },
    /// `${}`, `${{...}`, `${:...}`.
    #[error("syntax error: bad substitution")]
    BadSubstitution {
        /// Byte offset of the `$`.
        offset: usize,
    },
    /// A modifier BuildKit does not support: `${v=x}`, `${v:=x}`, `${v:#p}`, `${#v}`, `${v.}`.
    #[error("unsupported modifier ({modifier}) in substitution")]
    UnsupportedModifier {
        /// The modifier as written, with its `:` if any.
        modifier: String,
        /// Byte offset of the `$`.
        offset: usize,
    },
    /// `${v?msg}` or `${v:?msg}` with `v` unset.
    #[error("{name}: {}", .message.as_deref().unwrap_or("is not allowed to be unset"))]
    VariableUnset {
        /// The variable.
        name: String,
        /// The expanded message after `?`, `None` when it was empty.
        message: Option<String>,
        /// Byte offset of the `$`.
        offset: usize,
    },
    /// `${v:?msg}` with `v` set to the empty string.
    #[error("{name}: {}", .message.as_deref().unwrap_or("is not allowed to be empty"))]
    VariableEmpty {
        /// The variable.
        name: String,
        /// The expanded message after `:?`, `None` when it was empty.
        message: Option<String>,
        /// Byte offset of the `$`.
        offset: usize,
    },
    /// A pattern of `#`, `%` or `/` with a backslash before something other than `*`, `?`,
    /// `\`, `}` or `/`.
    #[error("invalid pattern ({pattern}) in substitution: invalid escape {}", escape_text(.escaped))]
    InvalidPattern {
        /// The pattern after expansion, as BuildKit prints it (reversed for `%` and `%%`).
        pattern: String,
        /// The character after the backslash, `None` at the end of the pattern.
        escaped: Option<char>,
        /// Byte offset of the `$`.
        offset: usize,
    },
    /// More than [`MAX_NESTING`] levels of `${...}` inside `${...}`.
    #[error("substitutions nested deeper than {limit} levels")]
    NestingTooDeep {
        /// [`MAX_NESTING`].
        limit: usize,
        /// Byte offset of the `$` that went too deep.
        offset: usize,
    },
}

fn escape_text(escaped: &Option<char>) -> String {
    match escaped {
        Some(ch) => format!("'\\{ch}'"),
        None => "'\\' at the end of the pattern".to_owned(),
    }
}

impl ExpandError {
    /// Byte offset in the expanded input of the construct at fault.
    pub fn offset(&self) -> usize {
        match self {
            Self::UnterminatedSingleQuote { offset }
            | Self::UnterminatedDoubleQuote { offset }
            | Self::MissingBrace { offset }
            | Self::MissingSlash { offset }
            | Self::BadSubstitution { offset }
            | Self::UnsupportedModifier { offset, .. }
            | Self::VariableUnset { offset, .. }
            | Self::VariableEmpty { offset, .. }
            | Self::InvalidPattern { offset, .. }
            | Self::NestingTooDeep { offset, .. } => *offset,
        }
    }
}

/// A configured expander. Cheap to clone and to share: expansion takes `&self`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lexer {
    escape: char,
    raw_quotes: bool,
    raw_escapes: bool,
    skip_unset: bool,
    bracket_expressions: bool,
}

impl Default for Lexer {
    fn default() -> Self {
        Self::new('\\')
    }
}

impl Lexer {
    /// An expander using `escape` as the escape character: `\` by default, `` ` `` after the
    /// `# escape=`` ` `` directive. Any character is accepted; Dockerfiles only allow those two.
    pub fn new(escape: char) -> Self {
        Self {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset: false,
            bracket_expressions: false,
        }
    }

    /// The escape character.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Keep quote characters in the output (BuildKit `RawQuotes`): `'a'"b"` expands to
    /// `'a'"b"`, with `$` still expanded inside the double quotes.
    pub fn raw_quotes(mut self, on: bool) -> Self {
        self.raw_quotes = on;
        self
    }

    /// Keep escape characters in the output (BuildKit `RawEscapes`): `a\ b` expands to `a\ b`.
    pub fn raw_escapes(mut self, on: bool) -> Self {
        self.raw_escapes = on;
        self
    }

    /// Leave references to unset variables as written (BuildKit `SkipUnsetEnv`): `$v` stays
    /// `$v`, `${v:-x}` stays `${v:-x}` with `x` expanded. As in BuildKit, `${v//p/r}` is
    /// rewritten with a single slash.
    pub fn skip_unset(mut self, on: bool) -> Self {
        self.skip_unset = on;
        self
    }

    /// Accept POSIX bracket expressions (`[abc]`, `[a-z]`, `[!x]`, `[^x]`) in the patterns of
    /// `#`, `%` and `/`. Off by default, as in BuildKit, where `[` and `]` match themselves.
    /// Character classes such as `[:alpha:]` are not supported.
    pub fn bracket_expressions(mut self, on: bool) -> Self {
        self.bracket_expressions = on;
        self
    }

    /// Expands one word without splitting it (ENV and LABEL values, WORKDIR, USER, COPY paths):
    /// BuildKit's `ProcessWordWithMatches`. Whitespace from variables and quotes is kept as is.
    pub fn expand_word(&self, word: &str, env: &dyn Environment) -> Result<Expansion, ExpandError> {
        let mut run = Run::new(self, env, word);
        let processed = run.top_level()?;
        Ok(Expansion {
            value: processed.value,
            matched: run.matched,
            unmatched: run.unmatched,
        })
    }

    /// Expands `text` and splits it into words (EXPOSE, VOLUME, FROM ...): BuildKit's
    /// `ProcessWords`. Whitespace outside quotes separates words, including whitespace that
    /// comes from an unquoted variable (`$v` with `v="a b"` gives two words) or from the word of
    /// an unquoted `${v:-a b}`; whitespace inside quotes or after the escape character does not.
    pub fn expand_words(
        &self,
        text: &str,
        env: &dyn Environment,
    ) -> Result<WordsExpansion, ExpandError> {
        let mut run = Run::new(self, env, text);
        let processed = run.top_level()?;
        Ok(WordsExpansion {
            words: processed.words,
            matched: run.matched,
            unmatched: run.unmatched,
        })
    }
}

/// Reads characters like Go's `text/scanner` as BuildKit uses it: `peek`/`next`, and a byte
/// order mark at the very start is skipped.
#[derive(Debug)]
struct Scanner<'t> {
    text: &'t str,
    position: usize,
}

impl<'t> Scanner<'t> {
    fn new(text: &'t str) -> Self {
        let position = if text.starts_with('\u{FEFF}') {
            '\u{FEFF}'.len_utf8()
        } else {
            0
        };
        Self { text, position }
    }

    fn peek(&self) -> Option<char> {
        self.text[self.position..].chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek()?;
        self.position += ch.len_utf8();
        Some(ch)
    }

    fn at_end(&self) -> bool {
        self.position >= self.text.len()
    }
}

/// Accumulates `ProcessWords` output: whitespace from plain text and unquoted substitutions
/// splits, quoted and escaped text does not.
#[derive(Debug, Default)]
struct Words {
    words: Vec<String>,
    word: String,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, text: &str) {
        for ch in text.chars() {
            self.add_char(ch);
        }
    }

    fn add_raw_string(&mut self, text: &str) {
        self.word.push_str(text);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(self.word);
        }
        self.words
    }
}

#[derive(Debug)]
struct Processed {
    value: String,
    words: Vec<String>,
}

/// Why `process_until` stopped early.
#[derive(Debug)]
enum Interrupt {
    /// The input ended before the stop character.
    EndOfInput,
    Failed(ExpandError),
}

impl From<ExpandError> for Interrupt {
    fn from(error: ExpandError) -> Self {
        Self::Failed(error)
    }
}

/// One expansion in progress (BuildKit's `shellWord`).
struct Run<'a> {
    lexer: &'a Lexer,
    env: &'a dyn Environment,
    scanner: Scanner<'a>,
    depth: usize,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

impl<'a> Run<'a> {
    fn new(lexer: &'a Lexer, env: &'a dyn Environment, text: &'a str) -> Self {
        Self {
            lexer,
            env,
            scanner: Scanner::new(text),
            depth: 0,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        }
    }

    fn top_level(&mut self) -> Result<Processed, ExpandError> {
        match self.process_until(None, self.lexer.raw_escapes) {
            Ok(processed) => Ok(processed),
            Err(Interrupt::Failed(error)) => Err(error),
            // Without a stop character the input ending is the normal way out.
            Err(Interrupt::EndOfInput) => Ok(Processed {
                value: String::new(),
                words: Vec::new(),
            }),
        }
    }

    /// BuildKit's `processStopOn`: processes until `stop` (consumed) or the end of the input.
    /// `raw_escapes` keeps escape characters, for patterns and for [`Lexer::raw_escapes`].
    fn process_until(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<Processed, Interrupt> {
        let mut value = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.scanner.peek() {
            if Some(ch) == stop {
                self.scanner.next();
                return Ok(Processed {
                    value,
                    words: words.finish(),
                });
            }
            match ch {
                '$' => {
                    let expanded = self.process_dollar()?;
                    value.push_str(&expanded);
                    words.add_string(&expanded);
                }
                '\'' => {
                    let quoted = self.process_single_quote()?;
                    value.push_str(&quoted);
                    words.add_raw_string(&quoted);
                }
                '"' => {
                    let quoted = self.process_double_quote(raw_escapes)?;
                    value.push_str(&quoted);
                    words.add_raw_string(&quoted);
                }
                _ => {
                    self.scanner.next();
                    if ch == self.lexer.escape {
                        if raw_escapes {
                            words.add_raw_char(ch);
                            value.push(ch);
                        }
                        // The escape character escapes anything; at the end of the input it
                        // is dropped.
                        let Some(escaped) = self.scanner.next() else {
                            break;
                        };
                        words.add_raw_char(escaped);
                        value.push(escaped);
                    } else {
                        words.add_char(ch);
                        value.push(ch);
                    }
                }
            }
        }
        if stop.is_some() {
            return Err(Interrupt::EndOfInput);
        }
        Ok(Processed {
            value,
            words: words.finish(),
        })
    }

    /// Everything up to the next `'` is literal; there is no escaping inside.
    fn process_single_quote(&mut self) -> Result<String, ExpandError> {
        let offset = self.scanner.position;
        let mut quoted = String::new();
        self.scanner.next();
        if self.lexer.raw_quotes {
            quoted.push('\'');
        }
        loop {
            match self.scanner.next() {
                None => return Err(ExpandError::UnterminatedSingleQuote { offset }),
                Some('\'') => {
                    if self.lexer.raw_quotes {
                        quoted.push('\'');
                    }
                    return Ok(quoted);
                }
                Some(ch) => quoted.push(ch),
            }
        }
    }

    /// Up to the next unescaped `"`, with `$` expanded. The escape character only escapes `"`,
    /// `$` and itself; before anything else it stays (so `"a\tb"` keeps its backslash).
    fn process_double_quote(&mut self, raw_escapes: bool) -> Result<String, ExpandError> {
        let offset = self.scanner.position;
        let mut quoted = String::new();
        self.scanner.next();
        if self.lexer.raw_quotes {
            quoted.push('"');
        }
        loop {
            match self.scanner.peek() {
                None => return Err(ExpandError::UnterminatedDoubleQuote { offset }),
                Some('"') => {
                    self.scanner.next();
                    if self.lexer.raw_quotes {
                        quoted.push('"');
                    }
                    return Ok(quoted);
                }
                Some('$') => {
                    let expanded = self.process_dollar()?;
                    quoted.push_str(&expanded);
                }
                Some(mut ch) => {
                    self.scanner.next();
                    if ch == self.lexer.escape {
                        if raw_escapes {
                            quoted.push(ch);
                        }
                        match self.scanner.peek() {
                            // An escape at the very end is dropped; the missing quote is
                            // reported on the next turn.
                            None => continue,
                            Some(next)
                                if next == '"' || next == '$' || next == self.lexer.escape =>
                            {
                                self.scanner.next();
                                ch = next;
                            }
                            // BuildKit writes the escape again here, so with raw escapes an
                            // escape before an ordinary character appears twice.
                            Some(_) => {}
                        }
                    }
                    quoted.push(ch);
                }
            }
        }
    }

    fn lookup(&mut self, name: &str) -> Option<String> {
        match self.env.lookup(name) {
            Some(value) => {
                self.matched.insert(name.to_owned());
                Some(value.to_owned())
            }
            None => {
                self.unmatched.insert(name.to_owned());
                None
            }
        }
    }

    /// A nested word inside `${...}`, up to `stop`. As in BuildKit, any failure found at the end
    /// of the input is reported as the missing delimiter.
    fn nested(
        &mut self,
        stop: char,
        raw_escapes: bool,
        missing: ExpandError,
    ) -> Result<String, ExpandError> {
        match self.process_until(Some(stop), raw_escapes) {
            Ok(processed) => Ok(processed.value),
            Err(_) if self.scanner.at_end() => Err(missing),
            Err(Interrupt::Failed(error)) => Err(error),
            Err(Interrupt::EndOfInput) => Err(missing),
        }
    }

    /// BuildKit's `processDollar`, at a `$`.
    fn process_dollar(&mut self) -> Result<String, ExpandError> {
        let offset = self.scanner.position;
        self.scanner.next();

        if self.scanner.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_owned());
            }
            return Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset => format!("${name}"),
                None => String::new(),
            });
        }

        self.scanner.next();
        match self.scanner.peek() {
            None => return Err(ExpandError::MissingBrace { offset }),
            Some('{' | '}' | ':') => return Err(ExpandError::BadSubstitution { offset }),
            Some(_) => {}
        }
        if self.depth >= MAX_NESTING {
            return Err(ExpandError::NestingTooDeep {
                limit: MAX_NESTING,
                offset,
            });
        }
        self.depth += 1;
        let result = self.process_braced(offset);
        self.depth -= 1;
        result
    }

    /// After `${`: the name, then `}` or a modifier.
    fn process_braced(&mut self, offset: usize) -> Result<String, ExpandError> {
        let name = self.process_name();
        let Some(mut ch) = self.scanner.next() else {
            return Err(ExpandError::MissingBrace { offset });
        };
        let mut modifier = String::from(ch);
        let mut null_is_unset = false;

        match ch {
            '}' => {
                return Ok(match self.lookup(&name) {
                    Some(value) => value,
                    None if self.lexer.skip_unset => format!("${{{name}}}"),
                    None => String::new(),
                });
            }
            '/' => return self.process_replace(name, offset),
            ':' => {
                null_is_unset = true;
                match self.scanner.next() {
                    Some(next) => {
                        ch = next;
                        modifier.push(next);
                    }
                    // BuildKit goes on looking for the `}` and reports it missing.
                    None => return Err(ExpandError::MissingBrace { offset }),
                }
            }
            '+' | '-' | '?' | '#' | '%' => {}
            _ => return Err(ExpandError::UnsupportedModifier { modifier, offset }),
        }

        // Patterns keep their escapes so that `\*` can mean a literal star.
        let pattern_like = ch == '#' || ch == '%';
        if null_is_unset && pattern_like {
            return Err(ExpandError::UnsupportedModifier { modifier, offset });
        }
        let mut word = self.nested('}', pattern_like, ExpandError::MissingBrace { offset })?;

        let value = self.lookup(&name);
        if self.lexer.skip_unset && value.is_none() {
            return Ok(format!("${{{name}{modifier}{word}}}"));
        }
        let empty = value
            .as_deref()
            .is_none_or(|value| null_is_unset && value.is_empty());

        match ch {
            '-' => Ok(if empty {
                word
            } else {
                value.unwrap_or_default()
            }),
            '+' => Ok(if empty { String::new() } else { word }),
            '?' => {
                let message = (!word.is_empty()).then_some(word);
                match value {
                    None => Err(ExpandError::VariableUnset {
                        name,
                        message,
                        offset,
                    }),
                    Some(value) if null_is_unset && value.is_empty() => {
                        Err(ExpandError::VariableEmpty {
                            name,
                            message,
                            offset,
                        })
                    }
                    Some(value) => Ok(value),
                }
            }
            '#' | '%' => {
                let value = value.unwrap_or_default();
                // `##`/`%%` is read from the expanded word, as BuildKit does.
                let longest = word.starts_with(ch);
                if longest {
                    word.remove(0);
                }
                if ch == '%' {
                    self.trim_suffix(&word, &value, longest, offset)
                } else {
                    self.trim_prefix(&word, &value, longest, offset)
                }
            }
            _ => Err(ExpandError::UnsupportedModifier { modifier, offset }),
        }
    }

    /// `${name/pattern/replacement}` and `${name//pattern/replacement}`, after the first `/`.
    fn process_replace(&mut self, name: String, offset: usize) -> Result<String, ExpandError> {
        let replace_all = self.scanner.peek() == Some('/');
        if replace_all {
            self.scanner.next();
        }
        let pattern = self.nested('/', true, ExpandError::MissingSlash { offset })?;
        let replacement = self.nested('}', true, ExpandError::MissingBrace { offset })?;

        let Some(value) = self.lookup(&name) else {
            if self.lexer.skip_unset {
                return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
            }
            return Ok(String::new());
        };
        let compiled = self.compile(&pattern, true, offset)?;
        if replace_all {
            Ok(replace_all_matches(&compiled, &value, &replacement))
        } else {
            Ok(match compiled.find(&value, 0, false) {
                Some((start, end)) => format!("{}{replacement}{}", &value[..start], &value[end..]),
                None => value,
            })
        }
    }

    fn compile(&self, pattern: &str, greedy: bool, offset: usize) -> Result<Pattern, ExpandError> {
        Pattern::compile(pattern, greedy, self.lexer.bracket_expressions).map_err(|escaped| {
            ExpandError::InvalidPattern {
                pattern: pattern.to_owned(),
                escaped,
                offset,
            }
        })
    }

    /// `${v#p}` / `${v##p}`: removes the shortest (longest) prefix matching `pattern`.
    fn trim_prefix(
        &self,
        pattern: &str,
        value: &str,
        longest: bool,
        offset: usize,
    ) -> Result<String, ExpandError> {
        let compiled = self.compile(pattern, longest, offset)?;
        Ok(match compiled.find(value, 0, true) {
            Some((_, end)) => value[end..].to_owned(),
            None => value.to_owned(),
        })
    }

    /// `${v%p}` / `${v%%p}`: BuildKit reverses the pattern (keeping `\x` pairs in order) and
    /// the value, trims a prefix, and reverses back.
    fn trim_suffix(
        &self,
        pattern: &str,
        value: &str,
        longest: bool,
        offset: usize,
    ) -> Result<String, ExpandError> {
        let reversed_value: String = value.chars().rev().collect();
        let trimmed = if self.lexer.bracket_expressions {
            // Reversing the text would break `[...]`: reverse the compiled pattern instead.
            let mut compiled = self.compile(pattern, longest, offset)?;
            compiled.tokens.reverse();
            match compiled.find(&reversed_value, 0, true) {
                Some((_, end)) => reversed_value[end..].to_owned(),
                None => reversed_value,
            }
        } else {
            self.trim_prefix(&reverse_pattern(pattern), &reversed_value, longest, offset)?
        };
        Ok(trimmed.chars().rev().collect())
    }

    /// BuildKit's `processName`: a run of digits (positional parameter), one special parameter
    /// character, or letters, digits and `_`. Empty when none of these follows.
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.scanner.peek() {
            if name.is_empty() && is_digit(ch) {
                while let Some(digit) = self.scanner.peek().filter(|&ch| is_digit(ch)) {
                    self.scanner.next();
                    name.push(digit);
                }
                return name;
            }
            if name.is_empty() && is_special_parameter(ch) {
                self.scanner.next();
                name.push(ch);
                return name;
            }
            if !is_letter(ch) && !is_digit(ch) && ch != '_' {
                break;
            }
            self.scanner.next();
            name.push(ch);
        }
        name
    }
}

/// Special parameters of the POSIX shell (`$@`, `$*`, `$#`, `$?`, `$-`, `$$`, `$!`, `$0`): never
/// set in a Dockerfile, so they expand to nothing.
fn is_special_parameter(ch: char) -> bool {
    matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

/// Go's `unicode.IsLetter`, approximated (see the module documentation).
fn is_letter(ch: char) -> bool {
    ch.is_alphabetic() && !ch.is_numeric()
}

/// Go's `unicode.IsDigit`, approximated (see the module documentation).
fn is_digit(ch: char) -> bool {
    ch.is_ascii_digit() || (!ch.is_ascii() && ch.is_numeric() && !ch.is_alphabetic())
}

/// BuildKit's `reversePattern`: reverses characters but keeps each `\x` pair in order.
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let Some(last) = chars.len().checked_sub(1) else {
        return String::new();
    };
    let mut out = vec!['\0'; chars.len()];
    let mut index = 0;
    while index <= last {
        let ch = chars[index];
        let target = last - index;
        if ch == '\\' && index != last {
            out[target - 1] = '\\';
            out[target] = chars[index + 1];
            index += 2;
        } else {
            out[target] = ch;
            index += 1;
        }
    }
    out.into_iter().collect()
}

/// Go's `Regexp.ReplaceAllString` for the regular expressions BuildKit builds from patterns:
/// an empty match right after a match is not replaced, and the replacement is a template
/// where `$$` is `$` and `$0`/`${0}` the match; other `$name` references expand to nothing.
fn replace_all_matches(pattern: &Pattern, value: &str, replacement: &str) -> String {
    let mut out = String::new();
    let mut last_match_end = 0;
    let mut search = 0;
    while search <= value.len() {
        let Some((start, end)) = pattern.find(value, search, false) else {
            break;
        };
        out.push_str(&value[last_match_end..start]);
        if end > last_match_end || start == 0 {
            expand_template(&mut out, replacement, &value[start..end]);
        }
        last_match_end = end;
        let width = value[search..].chars().next().map_or(0, char::len_utf8);
        if search + width > end {
            search += width;
        } else if search + 1 > end {
            search += 1;
        } else {
            search = end;
        }
    }
    out.push_str(&value[last_match_end..]);
    out
}

/// Go's `Regexp.Expand` with a single (whole match) group.
fn expand_template(out: &mut String, template: &str, whole: &str) {
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        let (braced, body) = match rest.strip_prefix('{') {
            Some(body) => (true, body),
            None => (false, rest),
        };
        let length: usize = body
            .chars()
            .take_while(|&ch| is_letter(ch) || is_digit(ch) || ch == '_')
            .map(char::len_utf8)
            .sum();
        if length == 0 || (braced && !body[length..].starts_with('}')) {
            // Not a reference: the `$` is literal.
            out.push('$');
            continue;
        }
        if &body[..length] == "0" {
            out.push_str(whole);
        }
        rest = &body[length + usize::from(braced)..];
    }
    out.push_str(rest);
}

/// One element of a compiled pattern.
#[derive(Debug, Clone)]
enum Token {
    /// Matches itself.
    Char(char),
    /// `?`: any character but a newline (Go's `.`).
    AnyChar,
    /// `*`: any run of characters without a newline (Go's `.*` or `.*?`).
    Star,
    /// `[...]` (only with [`Lexer::bracket_expressions`]).
    Set(Set),
}

#[derive(Debug, Clone)]
struct Set {
    negated: bool,
    ranges: Vec<(char, char)>,
}

impl Set {
    fn contains(&self, ch: char) -> bool {
        self.ranges
            .iter()
            .any(|&(low, high)| low <= ch && ch <= high)
            != self.negated
    }
}

/// A pattern of `#`, `%` or `/`, matched with the semantics of the Go regular expression
/// BuildKit builds from it (leftmost-first, stars all greedy or all lazy), by a Pike VM: time
/// is O(text × pattern), never exponential.
#[derive(Debug, Clone)]
struct Pattern {
    tokens: Vec<Token>,
    greedy: bool,
}

impl Pattern {
    /// BuildKit's `convertShellPatternToRegex`. `Err` holds the character after an invalid
    /// backslash (`None` at the end).
    fn compile(pattern: &str, greedy: bool, brackets: bool) -> Result<Self, Option<char>> {
        let mut scanner = Scanner::new(pattern);
        let mut tokens = Vec::new();
        while let Some(ch) = scanner.next() {
            let token = match ch {
                '*' => Token::Star,
                '?' => Token::AnyChar,
                '\\' => match scanner.peek() {
                    // `}` and `/` are escaped to get past the `${...}` syntax; the backslash is
                    // not part of the pattern.
                    Some('}' | '/') => continue,
                    Some(escaped @ ('*' | '?' | '\\')) => {
                        scanner.next();
                        Token::Char(escaped)
                    }
                    other => return Err(other),
                },
                '[' if brackets => match parse_set(&scanner.text[scanner.position..]) {
                    Some((set, length)) => {
                        scanner.position += length;
                        Token::Set(set)
                    }
                    None => Token::Char('['),
                },
                _ => Token::Char(ch),
            };
            tokens.push(token);
        }
        Ok(Self { tokens, greedy })
    }

    /// The leftmost-first match starting at or after byte `from` (exactly at `from` when
    /// `anchored`), as `(start, end)` byte offsets.
    fn find(&self, text: &str, from: usize, anchored: bool) -> Option<(usize, usize)> {
        let mut current = Threads::new(self.tokens.len() + 1);
        let mut next = Threads::new(self.tokens.len() + 1);
        let mut found = None;
        let mut position = from;
        loop {
            if found.is_none() && (!anchored || position == from) {
                self.add(&mut current, 0, position);
            }
            if current.list.is_empty() {
                break;
            }
            let ch = text[position..].chars().next();
            for &(state, start) in &current.list {
                let Some(token) = self.tokens.get(state) else {
                    // A match: lower-priority threads are cut off, higher ones go on.
                    found = Some((start, position));
                    break;
                };
                let Some(ch) = ch else { continue };
                match token {
                    Token::Star if ch != '\n' => self.add(&mut next, state, start),
                    Token::AnyChar if ch != '\n' => self.add(&mut next, state + 1, start),
                    Token::Char(expected) if *expected == ch => {
                        self.add(&mut next, state + 1, start)
                    }
                    Token::Set(set) if set.contains(ch) => self.add(&mut next, state + 1, start),
                    Token::Star | Token::AnyChar | Token::Char(_) | Token::Set(_) => {}
                }
            }
            current.clear();
            std::mem::swap(&mut current, &mut next);
            let Some(ch) = ch else { break };
            position += ch.len_utf8();
        }
        found
    }

    /// Adds the thread at `state` and its epsilon closure in priority order: a greedy star
    /// prefers consuming, a lazy one prefers moving on. Iterative, so a pattern of many stars
    /// does not recurse deeply.
    fn add(&self, threads: &mut Threads, state: usize, start: usize) {
        let mut stars = Vec::new();
        let mut at = state;
        let mut reached_end = true;
        while matches!(self.tokens.get(at), Some(Token::Star)) {
            if !threads.visit(at) {
                reached_end = false;
                break;
            }
            stars.push(at);
            at += 1;
        }
        let terminal = (reached_end && threads.visit(at)).then_some(at);
        if self.greedy {
            threads.list.extend(stars.iter().map(|&star| (star, start)));
            threads.list.extend(terminal.map(|state| (state, start)));
        } else {
            threads.list.extend(terminal.map(|state| (state, start)));
            threads
                .list
                .extend(stars.iter().rev().map(|&star| (star, start)));
        }
    }
}

/// Parses a bracket expression after its `[`; returns it and the bytes consumed (through the
/// closing `]`), or `None` when there is no closing `]` (then `[` is literal).
fn parse_set(text: &str) -> Option<(Set, usize)> {
    let mut chars = text.char_indices().peekable();
    let mut negated = false;
    if let Some(&(_, '!' | '^')) = chars.peek() {
        negated = true;
        chars.next();
    }
    let mut ranges = Vec::new();
    let mut first = true;
    while let Some((index, ch)) = chars.next() {
        if ch == ']' && !first {
            return Some((Set { negated, ranges }, index + 1));
        }
        first = false;
        let low = if ch == '\\' { chars.next()?.1 } else { ch };
        let is_range = matches!(chars.peek(), Some(&(_, '-')))
            && chars.clone().nth(1).is_some_and(|(_, after)| after != ']');
        if is_range {
            chars.next();
            let (_, high) = chars.next()?;
            let high = if high == '\\' { chars.next()?.1 } else { high };
            ranges.push((low, high));
        } else {
            ranges.push((low, low));
        }
    }
    None
}

/// The ordered thread list of the Pike VM, with a visited set cleared in O(1).
struct Threads {
    list: Vec<(usize, usize)>,
    visited: Vec<u32>,
    generation: u32,
}

impl Threads {
    fn new(states: usize) -> Self {
        Self {
            list: Vec::new(),
            visited: vec![0; states],
            generation: 1,
        }
    }

    /// Marks `state` visited; false if it already was.
    fn visit(&mut self, state: usize) -> bool {
        if self.visited[state] == self.generation {
            return false;
        }
        self.visited[state] = self.generation;
        true
    }

    fn clear(&mut self) {
        self.list.clear();
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.visited.fill(0);
            self.generation = 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(pattern: &str, greedy: bool, text: &str, anchored: bool) -> Option<(usize, usize)> {
        Pattern::compile(pattern, greedy, false)
            .expect("pattern compiles")
            .find(text, 0, anchored)
    }

    #[test]
    fn lazy_star_prefers_the_shortest_prefix() {
        assert_eq!(find("*x", false, "axbx", true), Some((0, 2)));
        assert_eq!(find("*x", true, "axbx", true), Some((0, 4)));
    }

    #[test]
    fn stars_do_not_cross_newlines_as_in_go_regexp() {
        assert_eq!(find("*", true, "ab\ncd", true), Some((0, 2)));
        assert_eq!(find("a?c", true, "a\nc", true), None);
    }

    #[test]
    fn unanchored_search_takes_the_leftmost_start() {
        assert_eq!(find("b*", true, "abcb", false), Some((1, 4)));
    }

    #[test]
    fn reverse_pattern_keeps_escape_pairs_in_order() {
        // The cases of BuildKit's TestReversePattern.
        assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
        assert_eq!(reverse_pattern("\\\\\\ab"), "b\\a\\\\");
        assert_eq!(reverse_pattern("ab\\"), "\\ba");
        assert_eq!(reverse_pattern("\\\\b"), "b\\\\");
    }

    #[test]
    fn template_follows_go_regexp_expand() {
        let mut out = String::new();
        expand_template(&mut out, "<$0|${0}|$$|$1|$x|${x|$-|$>", "M");
        assert_eq!(out, "<M|M|$|||${x|$-|$>");
    }
}
