//! Turns Dockerfile text into a typed, spanned AST, expands words, and lints.
//!
//! No I/O and no expansion with a real environment: the builder expands words at dispatch time,
//! when the stage's ARG/ENV values are known, through [`expand`]. The grammar stays inside this
//! crate: the public API is [`parse`], the [`ast`] types, [`expand`] and [`lint`].
//!
//! Reference: the Dockerfile reference of the current stable `docker/dockerfile:1` frontend;
//! where it is unclear, BuildKit's parser decides.

pub mod ast;
mod compat;
pub mod dump;
pub mod error;
pub mod expand;
mod grammar;
pub mod lint;
mod lower;
pub mod path;
mod syntax;

pub use ast::{Dockerfile, Instruction, Position, Span, Statement, Word};
pub use compat::buildkit_dump;
pub use error::{ErrorKind, ParseError};
pub use lower::INSTRUCTIONS;

/// Parses a Dockerfile. The first error stops parsing and is returned with its position; nothing
/// is partially returned. Linear in the size of the input.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let partial = parse_partial(text);
    match partial.error {
        Some(error) => Err(error),
        None => Ok(partial.dockerfile),
    }
}

/// What [`parse_partial`] read: the instructions before the first error, and that error.
#[derive(Debug, Clone)]
pub struct Partial {
    /// The directives and every instruction before the first error (all of them without one).
    pub dockerfile: Dockerfile,
    pub error: Option<ParseError>,
}

/// Parses as far as the file is valid. `kiln check` lints what parsed before reporting the
/// error, as `docker build --check` does. An error in the line structure itself (a directive, an
/// unterminated heredoc) leaves no instructions.
pub fn parse_partial(text: &str) -> Partial {
    let source = syntax::Source::new(text);
    let (directives, parsed) = match syntax::scan(&source) {
        Ok(scanned) => scanned,
        Err(error) => {
            return Partial {
                dockerfile: Dockerfile {
                    directives: ast::Directives::default(),
                    statements: Vec::new(),
                },
                error: Some(error),
            };
        }
    };
    let mut statements = Vec::with_capacity(parsed.len());
    let mut error = None;
    for item in &parsed {
        match lower::statement(item) {
            Ok(statement) => statements.push(statement),
            Err(first) => {
                error = Some(first);
                break;
            }
        }
    }
    if error.is_none() {
        error = check_structure(text, &statements).err();
    }
    Partial {
        dockerfile: Dockerfile {
            directives,
            statements,
        },
        error,
    }
}

/// A Dockerfile needs a FROM, and only ARG may come before it.
fn check_structure(text: &str, statements: &[Statement]) -> Result<(), ParseError> {
    let Some(first) = statements
        .iter()
        .find(|statement| !matches!(statement.instruction, Instruction::Arg(_)))
    else {
        return Err(ParseError::new(ErrorKind::Empty, source_last_line(text))
            .with_hint("start the Dockerfile with FROM, as in `FROM busybox`"));
    };
    if !matches!(first.instruction, Instruction::From(_)) {
        return Err(ParseError::new(
            ErrorKind::MissingFrom(first.keyword.text.to_ascii_uppercase()),
            first.keyword.span,
        )
        .with_hint(
            "a Dockerfile starts with FROM (only ARG and parser directives may come before it)",
        ));
    }
    Ok(())
}

fn source_last_line(text: &str) -> Span {
    let line = text.lines().count().max(1);
    let position = Position { line, column: 1 };
    Span {
        start: position,
        end: position,
    }
}
