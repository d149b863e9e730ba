//! All terminal output of kiln goes through here.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write as _;

use crate::Exit;

/// Writes command output to stdout. A closed pipe (`kiln ... | head`) is not an error.
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Writes command output to stdout and says whether it arrived: an error means the reader
/// is gone (`kiln stats | head`), so a command that prints until stopped can end.
pub fn out_checked(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// A buffered stream to stdout for binary output (`kiln save` without `-o`).
pub fn stdout_stream() -> impl std::io::Write {
    std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock())
}

/// Writes a diagnostic or message to stderr.
pub fn err(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(text.as_bytes());
    let _ = stderr.flush();
}

/// Reports a kiln error (`kiln: message`) and returns the exit for it.
pub fn error(message: impl std::fmt::Display) -> Exit {
    err(&format!("kiln: {message}\n"));
    Exit::Error
}

/// Reports a kiln error with its causes (`kiln: a: b: c`) and returns the exit for it.
pub fn error_of(error: &dyn std::error::Error) -> Exit {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    error_message(&text)
}

fn error_message(text: &str) -> Exit {
    err(&format!("kiln: {text}\n"));
    Exit::Error
}

/// Prints clap's help, version or usage error. Usage errors exit 125, as Docker's do.
pub fn usage_error(error: &clap::Error) -> Exit {
    let _ = error.print();
    if error.use_stderr() {
        Exit::Error
    } else {
        Exit::Success
    }
}
