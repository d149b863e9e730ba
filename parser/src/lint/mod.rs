//! BuildKit's Dockerfile checks (`docker build --check`) over the parsed AST.
//!
//! Owns: the stable rules of BuildKit's ruleset (plus the experimental
//! InvalidDefinitionDescription when enabled), with BuildKit's rule names, messages and lines;
//! the check configuration from the `# check=` directive, the `BUILDKIT_DOCKERFILE_CHECK` build
//! argument, `# check=` comments right above an instruction and the caller.
//!
//! Does not own: the outside world. CopyIgnoredFile asks the caller's [`IgnoreMatcher`] (the
//! builder's `.dockerignore` matcher; this crate cannot read the build context) and runs only
//! when one is given; InvalidBaseImagePlatform needs the base image's metadata and is left to
//! the builder. Base images are not resolved, so a stage built on an image starts with
//! Docker's default `PATH` as its only environment variable, where BuildKit would see the
//! image's whole environment.
//!
//! How it follows BuildKit: rules that BuildKit runs while parsing (stage name casing, `AS`
//! casing, MAINTAINER, definition descriptions, empty continuation lines) read the AST; rules
//! that BuildKit runs while converting to LLB are checked by replaying the conversion for every
//! stage, as the lint request does (every stage, reachable or not): global ARGs and the
//! predefined platform ARGs for FROM, then each instruction in order with the stage's
//! environment (ENV, ARG values, a parent stage's final state and its ONBUILD triggers), words
//! expanded with [`crate::expand`] exactly where the builder expands them, so that UndefinedVar
//! sees the same unset names. Where BuildKit stops at a build error (an empty base name, an
//! invalid platform, a word that fails to expand), this goes on and reports the rest.

mod config;
mod names;
mod rules;
mod stages;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::ast::{Dockerfile, Span};

pub use config::{CheckConfig, RuleSet};
pub use rules::Rule;

/// The build argument that replaces the `# check=` directive (`--build-arg
/// BUILDKIT_DOCKERFILE_CHECK=skip=all`), as in BuildKit.
pub const CHECK_BUILD_ARG: &str = "BUILDKIT_DOCKERFILE_CHECK";

/// What the caller adds to the Dockerfile: check settings from the command line, the build
/// arguments (`--build-arg`), which give ARGs their values, and the build context's
/// `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct LintOptions {
    /// Settings over the Dockerfile's own (see [`check_config`]).
    pub config: CheckConfig,
    /// `--build-arg` values, [`CHECK_BUILD_ARG`] included.
    pub build_args: BTreeMap<String, String>,
    /// The `.dockerignore` of the build context, if it has one; CopyIgnoredFile runs only with
    /// it, as in BuildKit.
    pub ignore: Option<Arc<dyn IgnoreMatcher>>,
}

/// The build context's `.dockerignore`, as CopyIgnoredFile needs it (implemented by the
/// builder's matcher; tests may supply their own).
pub trait IgnoreMatcher: fmt::Debug + Send + Sync {
    /// Whether `path` (relative to the context root, `/`-separated, cleaned) is excluded from
    /// the context: patternmatcher's `MatchesOrParentMatches`.
    fn is_ignored(&self, path: &str) -> bool;

    /// Whether any pattern is an exception (`!pattern`). BuildKit skips CopyIgnoredFile then:
    /// an excluded directory may still hold re-included files.
    fn has_exclusions(&self) -> bool;
}

/// One finding. `span` is the instruction the rule points at (for NoEmptyContinuation, the
/// instruction's last line); `url` is the rule's documentation page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub rule: &'static str,
    pub message: String,
    pub span: Span,
    pub url: String,
}

impl Warning {
    /// The 1-based line the warning points at.
    pub fn line(&self) -> usize {
        self.span.start.line
    }
}

/// Why the checks could not run, or (from [`CheckConfig::enforce`]) why they fail the build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LintError {
    #[error("invalid check option {0:?}: expected key=value")]
    MissingEquals(String),
    #[error("invalid check option {0:?}: the options are skip, error and experimental")]
    UnknownOption(String),
    #[error("failed to parse check option {0:?}: error takes true or false")]
    InvalidBoolean(String),
    #[error("Dockerfile:{line}: failed to parse check options")]
    Directive {
        line: usize,
        #[source]
        source: Box<LintError>,
    },
    #[error("failed to parse check options from the {CHECK_BUILD_ARG} build argument")]
    BuildArgument {
        #[source]
        source: Box<LintError>,
    },
    #[error("lint violation found for rules: {0}")]
    Violations(String),
}

/// The check configuration in force: the Dockerfile's `# check=` directive, replaced as a whole
/// by the [`CHECK_BUILD_ARG`] build argument when given (BuildKit ignores the directive then),
/// then `options.config` merged over it ([`CheckConfig::merge`]). Fails when the directive or the
/// build argument is malformed.
pub fn check_config(
    dockerfile: &Dockerfile,
    options: &LintOptions,
) -> Result<CheckConfig, LintError> {
    let from_file = match options.build_args.get(CHECK_BUILD_ARG) {
        Some(value) => CheckConfig::parse(value).map_err(|source| LintError::BuildArgument {
            source: Box::new(source),
        })?,
        None => match &dockerfile.directives.check {
            Some(directive) => {
                CheckConfig::parse(&directive.value).map_err(|source| LintError::Directive {
                    line: directive.line,
                    source: Box::new(source),
                })?
            }
            None => CheckConfig::default(),
        },
    };
    Ok(from_file.merge(options.config.clone()))
}

/// Runs every enabled rule; the config comes from [`check_config`], and a `# check=` comment
/// directly above an instruction adds its `skip=` (and `experimental=`) for the warnings of that
/// instruction only. Returns the warnings sorted by line (stable: warnings on one line keep the
/// order in which BuildKit finds them). Fails only for a malformed check directive or build
/// argument; never panics, whatever the Dockerfile.
pub fn lint(dockerfile: &Dockerfile, options: &LintOptions) -> Result<Vec<Warning>, LintError> {
    let config = check_config(dockerfile, options)?;
    let reporter = Reporter::new(dockerfile, config);
    let ignore = options.ignore.as_deref();
    let mut warnings = stages::run(dockerfile, &options.build_args, ignore, reporter);
    warnings.sort_by_key(Warning::line);
    Ok(warnings)
}

/// Collects warnings, dropping those of disabled rules.
#[derive(Debug)]
struct Reporter {
    config: CheckConfig,
    /// The `# check=` comment config of each statement, by index in `Dockerfile::statements`.
    local: Vec<Option<CheckConfig>>,
    warnings: Vec<Warning>,
}

impl Reporter {
    fn new(dockerfile: &Dockerfile, config: CheckConfig) -> Self {
        let local = dockerfile
            .statements
            .iter()
            .enumerate()
            .map(|(index, statement)| {
                // The first statement's comments include the parser directives at the top of the
                // file: the `# check=` directive there applies to the whole file, not only here.
                let mut skip_directive = index == 0 && dockerfile.directives.check.is_some();
                let mut local: Option<CheckConfig> = None;
                for comment in &statement.comments {
                    let Some((key, value)) = comment.split_once('=') else {
                        continue;
                    };
                    if !key.trim().eq_ignore_ascii_case("check") {
                        continue;
                    }
                    if std::mem::take(&mut skip_directive) {
                        continue;
                    }
                    // A malformed check comment is only a comment.
                    if let Ok(parsed) = CheckConfig::parse(value) {
                        local = Some(local.unwrap_or_default().merge(parsed));
                    }
                }
                local
            })
            .collect();
        Self {
            config,
            local,
            warnings: Vec::new(),
        }
    }

    fn enabled(&self, rule: Rule, statement: usize) -> bool {
        let local = self.local.get(statement).and_then(Option::as_ref);
        if rule.is_experimental() {
            self.config.is_enabled(rule)
                || local
                    .and_then(|local| local.experimental.as_ref())
                    .is_some_and(|rules| rules.contains(rule))
        } else {
            self.config.is_enabled(rule)
                && !local
                    .and_then(|local| local.skip.as_ref())
                    .is_some_and(|rules| rules.contains(rule))
        }
    }

    /// Records a warning of `rule` for the statement at index `statement`.
    fn report(&mut self, rule: Rule, statement: usize, span: Span, message: String) {
        if self.enabled(rule, statement) {
            self.warnings.push(Warning {
                rule: rule.name(),
                message,
                span,
                url: rule.url(),
            });
        }
    }
}
