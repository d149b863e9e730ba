//! `kiln check`: parse and lint a Dockerfile, as `docker build --check` does, with the
//! context's `.dockerignore` for CopyIgnoredFile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_builder::ignore;

use kiln_parser::lint::{self, CheckConfig, LintOptions};

use crate::Exit;
use crate::output;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Dockerfile (default: CONTEXT/Dockerfile; `-` for stdin)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// A build argument, `NAME=VALUE` or `NAME` to take it from the environment (repeatable)
    #[arg(long = "build-arg", value_name = "NAME[=VALUE]")]
    build_args: Vec<String>,
    /// Check settings, as the `# check=` directive takes them: `skip=Rule1,Rule2;error=true`.
    /// They override the directive (so does --build-arg BUILDKIT_DOCKERFILE_CHECK=...)
    #[arg(long = "check", value_name = "SETTINGS")]
    check: Option<String>,
    /// The build context directory
    #[arg(default_value = ".")]
    context: PathBuf,
}

impl Args {
    /// `kiln build --check`'s arguments: the build's Dockerfile, build arguments and context.
    pub fn for_build(file: Option<PathBuf>, build_args: Vec<String>, context: PathBuf) -> Args {
        Args {
            file,
            build_args,
            check: None,
            context,
        }
    }
}

pub fn run(args: Args) -> Exit {
    let path = args
        .file
        .clone()
        .unwrap_or_else(|| args.context.join("Dockerfile"));
    let (name, text) = match super::read_dockerfile(&path) {
        Ok(read) => read,
        Err(message) => return output::error(message),
    };
    // As `docker build --check`: lint what parses, then report the parse error, if any.
    let partial = kiln_parser::parse_partial(&text);
    let build_args: BTreeMap<String, String> = args
        .build_args
        .iter()
        .filter_map(|arg| super::name_value(arg))
        .collect();
    let config = match args.check.as_deref().map(CheckConfig::parse).transpose() {
        Ok(config) => config.unwrap_or_default(),
        Err(error) => return output::error(format!("invalid --check settings: {error}")),
    };
    // A Dockerfile from stdin has no `<Dockerfile>.dockerignore` beside it.
    let beside = if path == Path::new("-") {
        Path::new("")
    } else {
        path.as_path()
    };
    let ignore = match ignore::read_for(beside, &args.context) {
        Ok(matcher) => matcher.map(|matcher| Arc::new(matcher) as Arc<dyn lint::IgnoreMatcher>),
        Err(error) => return output::error_of(&error),
    };
    let options = LintOptions {
        config,
        build_args,
        ignore,
    };
    let effective = lint::check_config(&partial.dockerfile, &options);
    let (warnings, as_errors) = match effective.and_then(|config| {
        lint::lint(&partial.dockerfile, &options)
            .map(|warnings| (warnings, config.warnings_are_errors()))
    }) {
        Ok(result) => result,
        Err(error) => return output::error(format!("{name}: {error}")),
    };
    let mut report = String::new();
    for warning in &warnings {
        report.push_str(&format!(
            "{name}:{}: {}: {}\n",
            warning.line(),
            warning.rule,
            warning.message
        ));
    }
    output::out(&report);
    if let Some(error) = partial.error {
        output::err(&error.render(&name, &text));
        return Exit::Failure;
    }
    match (warnings.len(), as_errors) {
        (0, _) => {
            output::err("Check complete, no warnings found.\n");
            Exit::Success
        }
        (count, true) => {
            output::err(&format!(
                "kiln: {count} lint violation(s), and the check settings make them errors (error=true)\n"
            ));
            Exit::Failure
        }
        (count, false) => {
            output::err(&format!("Check complete, {count} warning(s) found.\n"));
            Exit::Success
        }
    }
}
