//! `kiln`: the command-line interface.
//!
//! Argument parsing (clap), one short handler per command, all terminal output (in `output`) and
//! exit codes. No build or runtime logic lives here.

mod commands;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// How a command ended. kiln's own errors exit 125, as Docker's do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exit 0.
    Success,
    /// Exit 1: the command ran and found problems (a Dockerfile that does not parse, lint errors,
    /// an expansion that fails).
    Failure,
    /// Exit 125: kiln could not do what was asked (bad flags, unreadable files).
    Error,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        match exit {
            Exit::Success => ExitCode::SUCCESS,
            Exit::Failure => ExitCode::from(1),
            Exit::Error => ExitCode::from(125),
        }
    }
}

/// A daemonless Dockerfile build toolkit.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Parse and lint a Dockerfile (BuildKit's check rules)
    Check(commands::check::Args),
    /// Look inside kiln: the parser's AST, word expansion
    #[command(subcommand)]
    Debug(commands::debug::Command),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return output::usage_error(&error).into(),
    };
    let exit = match cli.command {
        Command::Check(args) => commands::check::run(args),
        Command::Debug(command) => commands::debug::run(command),
    };
    exit.into()
}
