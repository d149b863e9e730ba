//! The line scanner and the untyped instruction nodes, as BuildKit's `parser` package has them.
//!
//! The scanner reads physical lines: parser directives at the top, comments, blank lines,
//! continuation lines (joined, with comment and empty lines inside them skipped) and heredoc bodies.
//! Each instruction's arguments are then split the way BuildKit's parser splits them for that
//! instruction ([`Arguments`]). `lower.rs` turns these nodes into the typed AST; `compat.rs` dumps
//! them in BuildKit's test format.

// Matches on `Arguments` pick the forms they handle; `Arguments` is private to the parser.
#![allow(clippy::wildcard_enum_match_arm)]

use std::ops::Range;

use crate::ast::{Directive, Directives, Heredoc, Position, Span};
use crate::error::{ErrorKind, ParseError};
use crate::grammar::{self, JsonArray, RawFlag};

/// The physical lines of a Dockerfile, without their line endings.
#[derive(Debug)]
pub(crate) struct Source<'a> {
    lines: Vec<&'a str>,
    /// For each line that is not ASCII: (byte offset, characters before it) every
    /// [`CHECKPOINT`] bytes, so that a column costs O(log n + CHECKPOINT), not O(line length).
    checkpoints: Vec<Option<Vec<(usize, usize)>>>,
}

/// Bytes between two column checkpoints of a non-ASCII line.
const CHECKPOINT: usize = 256;

impl<'a> Source<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut lines: Vec<&str> = text.split('\n').map(trim_newline).collect();
        if text.ends_with('\n') {
            lines.pop();
        }
        let checkpoints = lines
            .iter()
            .map(|line| (!line.is_ascii()).then(|| checkpoints(line)))
            .collect();
        Self { lines, checkpoints }
    }

    /// The position of byte `column` (0-based) of line `index` (0-based).
    fn position(&self, index: usize, column: usize) -> Position {
        let line = self.lines.get(index).copied().unwrap_or("");
        let column = column.min(line.len());
        let chars = match self.checkpoints.get(index).and_then(Option::as_ref) {
            // ASCII: a byte is a character.
            None => column,
            Some(checkpoints) => {
                let at = checkpoints
                    .partition_point(|&(offset, _)| offset <= column)
                    .saturating_sub(1);
                let (offset, before) = checkpoints.get(at).copied().unwrap_or((0, 0));
                before
                    + line
                        .get(offset..column)
                        .map_or(column - offset, |piece| piece.chars().count())
            }
        };
        Position {
            line: index + 1,
            column: chars + 1,
        }
    }

    /// A span covering the whole of the given (0-based) lines.
    pub(crate) fn lines_span(&self, first: usize, last: usize) -> Span {
        let width = self.lines.get(last).map_or(0, |line| line.len());
        Span {
            start: self.position(first, 0),
            end: self.position(last, width),
        }
    }
}

/// (byte offset, characters before it) at character boundaries about every [`CHECKPOINT`] bytes.
fn checkpoints(line: &str) -> Vec<(usize, usize)> {
    let mut checkpoints = vec![(0, 0)];
    let mut next = CHECKPOINT;
    for (count, (offset, _)) in line.char_indices().enumerate() {
        if offset >= next {
            checkpoints.push((offset, count));
            next = offset + CHECKPOINT;
        }
    }
    checkpoints
}

/// BuildKit's trimNewline: drops trailing `\r` and `\n`.
fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

/// A logical line: physical lines joined at continuation characters, with a map back to the
/// physical positions of its bytes.
#[derive(Debug)]
pub(crate) struct Logical<'s> {
    pub text: String,
    /// (offset in `text`, physical line index, byte column in that line), in order.
    segments: Vec<(usize, usize, usize)>,
    source: &'s Source<'s>,
}

impl Logical<'_> {
    fn push(&mut self, piece: &str, line: usize, column: usize) {
        self.segments.push((self.text.len(), line, column));
        self.text.push_str(piece);
    }

    fn locate(&self, offset: usize, at_end: bool) -> Position {
        let index = self
            .segments
            .partition_point(|&(start, _, _)| {
                if at_end {
                    start < offset
                } else {
                    start <= offset
                }
            })
            .saturating_sub(1);
        match self.segments.get(index) {
            Some(&(start, line, column)) => self
                .source
                .position(line, column + offset.saturating_sub(start)),
            None => Position { line: 1, column: 1 },
        }
    }

    /// The span of a byte range of the logical text.
    pub(crate) fn span(&self, range: Range<usize>) -> Span {
        let start = self.locate(range.start, false);
        let end = if range.end > range.start {
            self.locate(range.end, true)
        } else {
            start
        };
        Span { start, end }
    }
}

/// How BuildKit's parser splits an instruction's arguments (its dispatch table).
#[derive(Debug, Clone)]
pub(crate) enum Arguments {
    /// No arguments at all.
    None,
    /// A JSON array of strings (exec form of RUN/CMD/ENTRYPOINT/SHELL, JSON form of ADD/COPY/VOLUME).
    Json(Vec<(String, Range<usize>)>),
    /// The rest of the line as one string (shell form, MAINTAINER, USER, WORKDIR, STOPSIGNAL).
    Text(Range<usize>),
    /// White-space separated strings (FROM, EXPOSE, and ADD/COPY/VOLUME outside JSON).
    Split(Vec<Range<usize>>),
    /// ENV and LABEL pairs; `legacy` is the `KEY value` form.
    Pairs {
        pairs: Vec<(String, String, Range<usize>, Range<usize>)>,
        legacy: bool,
    },
    /// ARG words, quotes and escapes kept.
    Words(Vec<(String, Range<usize>)>),
    /// HEALTHCHECK: the type word and what follows it.
    Healthcheck {
        kind: Range<usize>,
        command: Box<Arguments>,
    },
    /// ONBUILD: the trigger instruction.
    Onbuild(Box<Node>),
}

/// One instruction, split as BuildKit's parser splits it, before any typing.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub keyword: Range<usize>,
    /// The keyword in lowercase.
    pub name: String,
    pub flags: Vec<RawFlag>,
    /// Where the arguments (after the flags) start and end.
    pub rest: Range<usize>,
    pub arguments: Arguments,
    pub heredocs: Vec<Heredoc>,
}

/// The instructions that may carry heredocs (BuildKit's heredocDirectives).
const HEREDOC_INSTRUCTIONS: [&str; 3] = ["run", "copy", "add"];

/// An instruction as read from the file: its logical line, its node and its physical lines.
#[derive(Debug)]
pub(crate) struct Parsed<'s> {
    pub logical: Logical<'s>,
    pub node: Node,
    pub comments: Vec<String>,
    pub empty_continuation_lines: Vec<usize>,
}

/// Reads every instruction of the file. Stops at the first error.
pub(crate) fn scan<'s>(
    source: &'s Source<'s>,
) -> Result<(Directives, Vec<Parsed<'s>>), ParseError> {
    let mut directives = Directives::default();
    let mut directives_done = false;
    let mut parsed = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    let lines = &source.lines;
    let mut index = 0;
    while index < lines.len() {
        let raw = lines[index];
        if !directives_done {
            directives_done = !read_directive(raw, index, &mut directives, source)?;
        }
        let trimmed = raw.trim_start();
        let first_column = raw.len() - trimmed.len();
        if let Some(comment) = trimmed.strip_prefix('#') {
            let comment = comment.trim();
            if comment.is_empty() {
                comments.clear();
            } else {
                comments.push(comment.to_string());
            }
            index += 1;
            continue;
        }
        let (first, mut continues) = trim_continuation(trimmed, directives.escape);
        if !continues && first.is_empty() {
            // A blank line does not end the comments above an instruction: only an empty `#`
            // line does (BuildKit's parser; its lint conformance cases depend on it).
            index += 1;
            continue;
        }
        let mut logical = Logical {
            text: String::new(),
            segments: Vec::new(),
            source,
        };
        logical.push(first, index, first_column);
        let mut empty_continuation_lines = Vec::new();
        index += 1;
        while continues && index < lines.len() {
            let raw = lines[index];
            let this = index;
            index += 1;
            if raw.trim_start().starts_with('#') {
                continue;
            }
            if raw.trim_start().is_empty() {
                empty_continuation_lines.push(this + 1);
                continue;
            }
            let (piece, more) = trim_continuation(raw, directives.escape);
            continues = more;
            logical.push(piece, this, 0);
        }
        // BuildKit's splitCommand trims the joined line (it may start on a continuation line).
        let end = logical.text.trim_end().len();
        let start = logical.text.len() - logical.text.trim_start().len();
        let mut node = node_from_line(&logical, start.min(end)..end, directives.escape)?;
        if let Some(markers) = heredoc_markers(&logical, &node, directives.escape) {
            let mut heredocs = Vec::with_capacity(markers.len());
            for (marker, expand, at) in markers {
                let (heredoc, next) = read_heredoc(source, index, marker, expand, at)?;
                heredocs.push(heredoc);
                index = next;
            }
            attach_heredocs(&mut node, heredocs);
        }
        parsed.push(Parsed {
            logical,
            node,
            comments: std::mem::take(&mut comments),
            empty_continuation_lines,
        });
    }
    Ok((directives, parsed))
}

/// Reads a parser directive on line `index`. Returns false (directives are over) when the line is
/// not a known directive.
fn read_directive(
    raw: &str,
    index: usize,
    directives: &mut Directives,
    source: &Source<'_>,
) -> Result<bool, ParseError> {
    // BuildKit: `^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`
    let Some(body) = raw.strip_prefix('#') else {
        return Ok(false);
    };
    let Some((key, value)) = body.split_once('=') else {
        return Ok(false);
    };
    let key = key.trim();
    let value = value.trim();
    let mut chars = key.chars();
    let valid_key = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric());
    if !valid_key || value.is_empty() {
        return Ok(false);
    }
    let span = source.lines_span(index, index);
    let key = key.to_ascii_lowercase();
    let slot = match key.as_str() {
        "syntax" => &mut directives.syntax,
        "escape" => &mut directives.escape_directive,
        "check" => &mut directives.check,
        // An unknown directive is a comment, and ends the directives.
        _ => return Ok(false),
    };
    if slot.is_some() {
        return Err(ParseError::new(ErrorKind::DuplicateDirective(key), span));
    }
    *slot = Some(Directive {
        value: value.to_string(),
        line: index + 1,
    });
    if key == "escape" {
        directives.escape = match value {
            "\\" => '\\',
            "`" => '`',
            _ => {
                return Err(ParseError::new(
                    ErrorKind::InvalidEscape(value.to_string()),
                    span,
                ));
            }
        };
    }
    Ok(true)
}

/// Strips a trailing escape character (and the blanks after it). Returns whether the line goes on.
/// As in BuildKit (`([^\\])\\[ \t]*$` or a line of just the escape), an escape that is itself
/// escaped (`\\` at the end) does not continue the line.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let without_blanks = line.trim_end_matches([' ', '\t']);
    match without_blanks.strip_suffix(escape) {
        Some(rest) if !rest.ends_with(escape) => (rest, true),
        _ => (line, false),
    }
}

/// Splits `range` of a logical line into a node: keyword, flags and the arguments as BuildKit's
/// dispatch table splits them for that keyword.
pub(crate) fn node_from_line(
    logical: &Logical<'_>,
    range: Range<usize>,
    escape: char,
) -> Result<Node, ParseError> {
    let line = &logical.text[range.clone()];
    let base = range.start;
    let (keyword, arguments) =
        grammar::split_instruction(line).unwrap_or((0..line.len(), line.len()..line.len()));
    let keyword = base + keyword.start..base + keyword.end;
    let name = logical.text[keyword.clone()].to_ascii_lowercase();
    let args_text = &line[arguments.clone()];
    let args_base = base + arguments.start;
    let (mut flags, rest_start) = grammar::extract_flags(args_text);
    for flag in &mut flags {
        flag.range = args_base + flag.range.start..args_base + flag.range.end;
    }
    let rest_text = &args_text[rest_start..];
    let leading = rest_text.len() - rest_text.trim_start().len();
    let rest = args_base + rest_start + leading..args_base + args_text.len();
    let arguments = split_arguments(logical, &name, rest.clone(), escape)?;
    Ok(Node {
        keyword,
        name,
        flags,
        rest,
        arguments,
        heredocs: Vec::new(),
    })
}

fn split_arguments(
    logical: &Logical<'_>,
    name: &str,
    rest: Range<usize>,
    escape: char,
) -> Result<Arguments, ParseError> {
    let text = &logical.text[rest.clone()];
    let base = rest.start;
    let shift =
        |(value, range): (String, Range<usize>)| (value, base + range.start..base + range.end);
    if text.is_empty() {
        return Ok(Arguments::None);
    }
    let json = |allow_list: bool| -> Result<Arguments, ParseError> {
        match grammar::json_array(text) {
            JsonArray::Strings(strings) => {
                Ok(Arguments::Json(strings.into_iter().map(shift).collect()))
            }
            JsonArray::NotStrings => Err(ParseError::new(
                ErrorKind::NotStringArray(name.to_ascii_uppercase()),
                logical.span(rest.clone()),
            )),
            JsonArray::Invalid if allow_list => Ok(Arguments::Split(whitespace_split(text, base))),
            JsonArray::Invalid => Ok(Arguments::Text(rest.clone())),
        }
    };
    match name {
        "run" | "cmd" | "entrypoint" | "shell" => json(false),
        "add" | "copy" | "volume" => json(true),
        "from" | "expose" => Ok(Arguments::Split(whitespace_split(text, base))),
        "env" | "label" => pairs(logical, name, rest, escape),
        "arg" => Ok(Arguments::Words(
            grammar::split_words(text, escape)
                .into_iter()
                .map(shift)
                .collect(),
        )),
        "healthcheck" => {
            let kind_end = text.find(char::is_whitespace).unwrap_or(text.len());
            let after = &text[kind_end..];
            let command_start = kind_end + (after.len() - after.trim_start().len());
            let command_range = base + command_start..rest.end;
            let command = if command_range.is_empty() {
                Arguments::None
            } else {
                match grammar::json_array(&logical.text[command_range.clone()]) {
                    JsonArray::Strings(strings) => Arguments::Json(
                        strings
                            .into_iter()
                            .map(|(v, r)| {
                                (
                                    v,
                                    command_range.start + r.start..command_range.start + r.end,
                                )
                            })
                            .collect(),
                    ),
                    JsonArray::NotStrings => {
                        return Err(ParseError::new(
                            ErrorKind::NotStringArray("HEALTHCHECK".to_string()),
                            logical.span(command_range),
                        ));
                    }
                    JsonArray::Invalid => Arguments::Text(command_range),
                }
            };
            Ok(Arguments::Healthcheck {
                kind: base..base + kind_end,
                command: Box::new(command),
            })
        }
        "onbuild" => Ok(Arguments::Onbuild(Box::new(node_from_line(
            logical, rest, escape,
        )?))),
        // MAINTAINER, USER, WORKDIR, STOPSIGNAL, and unknown instructions (rejected when typed).
        _ => Ok(Arguments::Text(rest)),
    }
}

/// BuildKit's parseStringsWhitespaceDelimited: splits on `[\t\v\f\r ]+`.
fn whitespace_split(text: &str, base: usize) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = None;
    for (offset, c) in text.char_indices() {
        let blank = matches!(c, ' ' | '\t' | '\u{b}' | '\u{c}' | '\r');
        match (blank, start) {
            (true, Some(begin)) => {
                ranges.push(base + begin..base + offset);
                start = None;
            }
            (false, None) => start = Some(offset),
            _ => {}
        }
    }
    if let Some(begin) = start {
        ranges.push(base + begin..base + text.len());
    }
    ranges
}

/// BuildKit's parseNameVal for ENV and LABEL.
fn pairs(
    logical: &Logical<'_>,
    name: &str,
    rest: Range<usize>,
    escape: char,
) -> Result<Arguments, ParseError> {
    let text = &logical.text[rest.clone()];
    let base = rest.start;
    let words = grammar::split_words(text, escape);
    let Some((first, _)) = words.first() else {
        return Ok(Arguments::None);
    };
    if !first.contains('=') {
        // The legacy `KEY value` form: the value is the rest of the line, as written.
        let key_end = text
            .find([' ', '\t', '\u{b}', '\u{c}', '\r'])
            .ok_or_else(|| {
                ParseError::new(
                    ErrorKind::LegacyNeedsTwoArguments(name.to_ascii_uppercase()),
                    logical.span(rest.clone()),
                )
            })?;
        let after = &text[key_end..];
        let value_start = key_end
            + (after.len()
                - after
                    .trim_start_matches([' ', '\t', '\u{b}', '\u{c}', '\r'])
                    .len());
        return Ok(Arguments::Pairs {
            pairs: vec![(
                text[..key_end].to_string(),
                text[value_start..].to_string(),
                base..base + key_end,
                base + value_start..rest.end,
            )],
            legacy: true,
        });
    }
    let mut pairs = Vec::with_capacity(words.len());
    for (word, range) in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(ParseError::new(
                ErrorKind::MissingEquals(word.clone()),
                logical.span(base + range.start..base + range.end),
            ));
        };
        let key_range = base + range.start..base + range.start + key.len();
        let value_range = key_range.end + 1..base + range.end;
        pairs.push((key.to_string(), value.to_string(), key_range, value_range));
    }
    Ok(Arguments::Pairs {
        pairs,
        legacy: false,
    })
}

/// The heredocs a node opens, with whether each body expands, or None when it opens none.
fn heredoc_markers(
    logical: &Logical<'_>,
    node: &Node,
    escape: char,
) -> Option<Vec<(grammar::HeredocMarker, bool, Span)>> {
    let target = match &node.arguments {
        Arguments::Onbuild(inner) => inner,
        _ => node,
    };
    if !HEREDOC_INSTRUCTIONS.contains(&target.name.as_str())
        || matches!(target.arguments, Arguments::Json(_))
        || !logical.text.contains("<<")
    {
        return None;
    }
    let mut markers = Vec::new();
    for (word, range) in grammar::split_words(&logical.text, escape) {
        let Some(mut marker) = grammar::heredoc_marker(&word) else {
            continue;
        };
        let name = unquote(&marker.name, escape);
        if name.is_empty() {
            // A bare `<<` is the shell's shift operator (`$((1 << 2))`), not a heredoc. BuildKit
            // fails on it ("internal lexing of heredoc produced inconsistent results").
            continue;
        }
        let expand = name == marker.name;
        marker.name = name;
        markers.push((marker, expand, logical.span(range)));
    }
    (!markers.is_empty()).then_some(markers)
}

/// Removes quotes and escape characters from a heredoc delimiter.
fn unquote(raw: &str, escape: char) -> String {
    let mut text = String::with_capacity(raw.len());
    let mut quote = None;
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(open) if c == open => quote = None,
            Some('"') if c == escape => text.extend(chars.next()),
            Some(_) => text.push(c),
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == escape => text.extend(chars.next()),
            None => text.push(c),
        }
    }
    text
}

/// Reads a heredoc body from line `start`. Returns it and the index of the line after its end.
fn read_heredoc(
    source: &Source<'_>,
    start: usize,
    marker: grammar::HeredocMarker,
    expand: bool,
    at: Span,
) -> Result<(Heredoc, usize), ParseError> {
    let mut content = String::new();
    let mut index = start;
    while index < source.lines.len() {
        let line = source.lines[index];
        let candidate = if marker.chomp {
            line.trim_start_matches('\t')
        } else {
            line
        };
        if candidate == marker.name {
            let span = source.lines_span(start.min(index), index);
            let heredoc = Heredoc {
                name: marker.name,
                file_descriptor: marker.file_descriptor,
                expand,
                chomp: marker.chomp,
                content,
                span,
            };
            return Ok((heredoc, index + 1));
        }
        content.push_str(candidate);
        content.push('\n');
        index += 1;
    }
    Err(
        ParseError::new(ErrorKind::UnterminatedHeredoc(marker.name.clone()), at).with_hint(
            format!(
                "end the heredoc with a line that holds only {}",
                marker.name
            ),
        ),
    )
}

fn attach_heredocs(node: &mut Node, heredocs: Vec<Heredoc>) {
    match &mut node.arguments {
        Arguments::Onbuild(inner) => inner.heredocs = heredocs,
        _ => node.heredocs = heredocs,
    }
}
