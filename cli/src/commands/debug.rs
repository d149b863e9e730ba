//! `kiln debug parse` and `kiln debug expand`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_parser::expand::Lexer;

use crate::Exit;
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the AST of a Dockerfile
    Parse(ParseArgs),
    /// Expand a word as a Dockerfile instruction argument is expanded
    Expand(ExpandArgs),
}

#[derive(Debug, clap::Args)]
pub struct ParseArgs {
    /// Print JSON: every instruction with its name, lines, flags, arguments and heredocs
    #[arg(long)]
    json: bool,
    /// The Dockerfile (`-` for stdin)
    file: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ExpandArgs {
    /// A variable visible to the expansion (repeatable)
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// The escape character, as the `# escape=` directive sets it
    #[arg(long, default_value = "\\", value_parser = escape_char)]
    escape: char,
    /// Split into words as multi-word instructions (EXPOSE, VOLUME, ...) do; one per line
    #[arg(long)]
    words: bool,
    /// The word to expand
    word: String,
}

fn escape_char(value: &str) -> Result<char, String> {
    match value {
        "\\" => Ok('\\'),
        "`" => Ok('`'),
        _ => Err(format!(
            "the escape character must be ` or \\, not {value:?}"
        )),
    }
}

pub fn run(command: Command) -> Exit {
    match command {
        Command::Parse(args) => parse(args),
        Command::Expand(args) => expand(args),
    }
}

fn parse(args: ParseArgs) -> Exit {
    let (name, text) = match super::read_dockerfile(&args.file) {
        Ok(read) => read,
        Err(message) => return output::error(message),
    };
    match kiln_parser::parse(&text) {
        Ok(dockerfile) if args.json => {
            let json = kiln_parser::dump::to_json(&dockerfile);
            output::out(&format!(
                "{}\n",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            ));
            Exit::Success
        }
        Ok(dockerfile) => {
            output::out(&kiln_parser::dump::to_text(&dockerfile));
            Exit::Success
        }
        Err(error) => {
            output::err(&error.render(&name, &text));
            Exit::Failure
        }
    }
}

fn expand(args: ExpandArgs) -> Exit {
    // As BuildKit's environment lists: `NAME` alone is set to the empty string; the last wins.
    let env: BTreeMap<String, String> = args
        .env
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => (name.to_string(), value.to_string()),
            None => (pair.clone(), String::new()),
        })
        .collect();
    let lexer = Lexer::new(args.escape);
    let result = if args.words {
        lexer
            .expand_words(&args.word, &env)
            .map(|expansion| expansion.words)
    } else {
        lexer
            .expand_word(&args.word, &env)
            .map(|expansion| vec![expansion.value])
    };
    match result {
        Ok(words) => {
            let mut text = String::new();
            for word in words {
                text.push_str(&word);
                text.push('\n');
            }
            output::out(&text);
            Exit::Success
        }
        Err(error) => {
            let column = args
                .word
                .get(..error.offset())
                .map_or(0, |prefix| prefix.chars().count());
            output::err(&format!(
                "kiln: failed to process {:?}: {error}\n  {}\n  {}^\n",
                args.word,
                args.word,
                " ".repeat(column)
            ));
            Exit::Failure
        }
    }
}
