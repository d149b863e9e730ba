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
pub mod error;
pub mod expand;
mod grammar;
mod lower;
mod syntax;

pub use ast::{Dockerfile, Instruction, Position, Span, Statement, Word};
pub use compat::buildkit_dump;
pub use error::{ErrorKind, ParseError};
pub use lower::INSTRUCTIONS;

/// Parses a Dockerfile. The first error stops parsing and is returned with its position; nothing
/// is partially returned. Linear in the size of the input.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let source = syntax::Source::new(text);
    let (directives, parsed) = syntax::scan(&source)?;
    let mut statements = Vec::with_capacity(parsed.len());
    for item in &parsed {
        statements.push(lower::statement(item)?);
    }
    let Some(first) = statements
        .iter()
        .find(|statement| !matches!(statement.instruction, Instruction::Arg(_)))
    else {
        let last = source_last_line(text);
        return Err(ParseError::new(ErrorKind::Empty, last)
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
    Ok(Dockerfile {
        directives,
        statements,
    })
}

fn source_last_line(text: &str) -> Span {
    let line = text.lines().count().max(1);
    let position = Position { line, column: 1 };
    Span {
        start: position,
        end: position,
    }
}
