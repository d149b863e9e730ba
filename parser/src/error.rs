//! Parse errors and their rendering as `FILE:LINE:COL: message`, the source line and a caret.
//!
//! Rendering is string formatting only: the CLI decides where the text goes.

use std::fmt::Write as _;

use crate::ast::{Position, Span};

/// What went wrong. Messages are lowercase, without a trailing period.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    #[error("the Dockerfile is empty: it needs at least a FROM instruction")]
    Empty,
    #[error("only one {0} parser directive can be used")]
    DuplicateDirective(String),
    #[error("invalid escape token {0:?}: the escape character must be ` or \\")]
    InvalidEscape(String),
    #[error("invalid check directive {0:?}: {1}")]
    InvalidCheck(String, String),
    #[error("{0} instruction found before any FROM")]
    MissingFrom(String),
    #[error("unknown instruction: {0}")]
    UnknownInstruction(String),
    #[error("{instruction} requires at least {count} argument{plural}", plural = if *.count == 1 { "" } else { "s" })]
    TooFewArguments { instruction: String, count: usize },
    #[error("{0} requires exactly one argument")]
    ExactlyOneArgument(String),
    #[error("FROM requires either one or three arguments: FROM IMAGE [AS NAME]")]
    FromArguments,
    #[error(
        "invalid name for build stage: {0:?}, name can't start with a number or contain symbols"
    )]
    InvalidStageName(String),
    #[error("unknown flag: --{flag} for {instruction}")]
    UnknownFlag { instruction: String, flag: String },
    #[error("missing a value on flag: --{0}")]
    MissingFlagValue(String),
    #[error("duplicate flag specified: --{0}")]
    DuplicateFlag(String),
    #[error("expecting boolean value for flag --{flag}, not: {value}")]
    InvalidBoolean { flag: String, value: String },
    #[error("invalid value {value:?} for --{flag}: expected one of {expected}")]
    InvalidFlagValue {
        flag: String,
        value: String,
        expected: &'static str,
    },
    #[error("invalid duration {value:?} for --{flag}: {reason}")]
    InvalidDuration {
        flag: String,
        value: String,
        reason: &'static str,
    },
    #[error("invalid value {0:?} for --retries: expected a number of retries, at least 0")]
    InvalidRetries(String),
    #[error("{0} requires the arguments to be a JSON array of strings")]
    NotStringArray(String),
    #[error("SHELL requires the arguments to be in JSON form")]
    ShellNotJson,
    #[error("syntax error - can't find = in {0:?}. Must be of the form: name=value")]
    MissingEquals(String),
    #[error("{0} names can not be blank")]
    BlankName(String),
    #[error("{0} must have two arguments")]
    LegacyNeedsTwoArguments(String),
    #[error("ARG names can not be blank")]
    BlankArgName,
    #[error("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")]
    OnbuildOnbuild,
    #[error("{0} isn't allowed as an ONBUILD trigger")]
    OnbuildTrigger(String),
    #[error("unknown type {0:?} in HEALTHCHECK (try CMD)")]
    HealthcheckType(String),
    #[error("HEALTHCHECK NONE takes no arguments")]
    HealthcheckNoneArguments,
    #[error("HEALTHCHECK CMD requires a command")]
    HealthcheckMissingCommand,
    #[error("invalid mount option {0:?}: expected key=value")]
    MountSyntax(String),
    #[error("unknown mount type {0:?}")]
    MountType(String),
    #[error("unknown mount option {0:?}")]
    MountOption(String),
    #[error("invalid value {value:?} for mount option {option}")]
    MountValue { option: String, value: String },
    #[error("mount option {option} is not allowed for type={kind}")]
    MountOptionForType { option: String, kind: String },
    #[error("mount type={0} requires a target")]
    MountTarget(String),
    #[error("unterminated heredoc: no line {0:?} before the end of the file")]
    UnterminatedHeredoc(String),
}

/// A syntax or semantic error in a Dockerfile, with where it is and maybe a hint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct ParseError {
    pub kind: ErrorKind,
    pub span: Span,
    /// A suggestion in human words ("did you mean RUN?").
    pub hint: Option<Box<str>>,
}

impl ParseError {
    pub(crate) fn new(kind: ErrorKind, span: Span) -> Self {
        Self {
            kind,
            span,
            hint: None,
        }
    }

    pub(crate) fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into().into_boxed_str());
        self
    }

    /// `FILE:LINE:COL: message`, then the source line with a caret under the error and the hint.
    pub fn render(&self, file: &str, source: &str) -> String {
        render(
            file,
            source,
            self.span,
            &self.kind.to_string(),
            self.hint.as_deref(),
        )
    }
}

/// Formats a diagnostic at `span` in `source`: `FILE:LINE:COL: message`, the source line, a caret
/// line under the span (to the end of the line when the span goes on), and `hint: ...`.
pub fn render(file: &str, source: &str, span: Span, message: &str, hint: Option<&str>) -> String {
    let Position { line, column } = span.start;
    let mut out = format!("{file}:{line}:{column}: {message}\n");
    if let Some(text) = source.lines().nth(line.saturating_sub(1)) {
        let text = text.trim_end_matches('\r');
        let width = text.chars().count();
        let start = column.max(1).min(width + 1);
        let end = if span.end.line == line && span.end.column > start {
            span.end.column.min(width + 1)
        } else {
            width + 1
        };
        let carets = end.saturating_sub(start).max(1);
        let gutter = line.to_string().len();
        let display: String = text
            .chars()
            .map(|c| if c == '\t' { ' ' } else { c })
            .collect();
        let _ = writeln!(out, "{:>gutter$} | {display}", line);
        let _ = writeln!(
            out,
            "{:>gutter$} | {}{}",
            "",
            " ".repeat(start - 1),
            "^".repeat(carets)
        );
    }
    if let Some(hint) = hint {
        let _ = writeln!(out, "hint: {hint}");
    }
    out
}
