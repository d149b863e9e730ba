//! Replays BuildKit's conversion of a Dockerfile (`dockerfile2llb/convert.go`) far enough to run
//! its checks: the parse-time rules, stage names, instruction casing, the FROM lines against the
//! global ARGs, then every instruction of every stage with that stage's environment.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use crate::ast::{
    CommandLine, Dockerfile, Instruction, KeyValues, Position, Span, Statement, Word,
};
use crate::expand::{Environment, Lexer};

use super::names::{host_platform, is_valid_reference, looks_like_secret, parse_platform, suggest};
use super::{IgnoreMatcher, Reporter, Rule, Warning};

/// Docker's default `PATH` on Linux, which BuildKit sets in every stage that lacks one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// ARGs that configure the build and never enter the environment (BuildKit's `nonEnvArgs`).
const NON_ENV_ARGS: [&str; 2] = ["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// Stage names that refer to something else (BuildKit's `reservedStageNames`).
const RESERVED_STAGE_NAMES: [&str; 2] = ["context", "scratch"];

/// Variables in declaration order; setting one again replaces its value in place.
#[derive(Debug, Clone, Default)]
struct Env {
    vars: Vec<(String, String)>,
    index: BTreeMap<String, usize>,
}

impl Env {
    fn set(&mut self, key: &str, value: String) {
        match self.index.get(key) {
            Some(&position) => self.vars[position].1 = value,
            None => {
                self.index.insert(key.to_string(), self.vars.len());
                self.vars.push((key.to_string(), value));
            }
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.vars.iter().map(|(key, _)| key.as_str()).collect()
    }
}

impl Environment for Env {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.index
            .get(name)
            .map(|&position| self.vars[position].1.as_str())
    }
}

/// A stage by statement indices.
#[derive(Debug)]
struct StageIndex {
    from: usize,
    commands: Range<usize>,
    /// The `AS` name, lowercased as BuildKit stores it.
    name: Option<String>,
}

/// What a stage passes on to a stage built `FROM` it.
#[derive(Debug, Clone)]
struct StageState {
    env: Env,
    /// Names declared by ARG in this stage or its parents (BuildKit's `buildArgs`).
    declared: BTreeSet<String>,
    /// A SHELL instruction ran (the image config has a shell).
    shell_set: bool,
    /// A WORKDIR instruction ran.
    workdir_set: bool,
}

impl StageState {
    fn from_image() -> Self {
        let mut env = Env::default();
        env.set("PATH", DEFAULT_PATH.to_string());
        Self {
            env,
            declared: BTreeSet::new(),
            shell_set: false,
            workdir_set: false,
        }
    }
}

/// The last CMD, ENTRYPOINT and HEALTHCHECK of the stage being dispatched.
#[derive(Debug, Default)]
struct Trackers {
    cmd: Option<(usize, Span)>,
    entrypoint: Option<(usize, Span)>,
    healthcheck: Option<(usize, Span)>,
}

/// Where a dispatched instruction reports: its own statement, or for an inherited ONBUILD
/// trigger the FROM of the stage that runs it.
#[derive(Debug, Clone, Copy)]
struct At {
    statement: usize,
    span: Span,
}

struct Linter<'d> {
    dockerfile: &'d Dockerfile,
    build_args: &'d BTreeMap<String, String>,
    /// The build context's `.dockerignore`, for CopyIgnoredFile.
    ignore: Option<&'d dyn IgnoreMatcher>,
    reporter: Reporter,
    lexer: Lexer,
    stages: Vec<StageIndex>,
    /// The global ARGs and predefined ARGs, build arguments applied (BuildKit's `globalArgs`).
    global_env: Env,
}

/// Runs every rule over `dockerfile` and returns the warnings in the order found.
pub(super) fn run(
    dockerfile: &Dockerfile,
    build_args: &BTreeMap<String, String>,
    ignore: Option<&dyn IgnoreMatcher>,
    reporter: Reporter,
) -> Vec<Warning> {
    let mut linter = Linter {
        dockerfile,
        build_args,
        ignore,
        reporter,
        lexer: Lexer::new(dockerfile.directives.escape),
        stages: stage_indices(dockerfile),
        global_env: Env::default(),
    };
    linter.parse_time_rules();
    linter.stage_names();
    linter.instruction_casing();
    let bases = linter.check_from_lines();
    linter.dispatch_stages(&bases);
    linter.reporter.warnings
}

fn stage_indices(dockerfile: &Dockerfile) -> Vec<StageIndex> {
    let statements = &dockerfile.statements;
    let starts: Vec<usize> = statements
        .iter()
        .enumerate()
        .filter(|(_, statement)| matches!(statement.instruction, Instruction::From(_)))
        .map(|(index, _)| index)
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(position, &from)| {
            let end = starts
                .get(position + 1)
                .copied()
                .unwrap_or(statements.len());
            let name = if let Instruction::From(from) = &statements[from].instruction {
                from.alias
                    .as_ref()
                    .map(|alias| alias.text.to_ascii_lowercase())
            } else {
                None
            };
            StageIndex {
                from,
                commands: from + 1..end,
                name,
            }
        })
        .collect()
}

fn is_lowercase(text: &str) -> bool {
    text.to_lowercase() == text
}

fn is_uppercase(text: &str) -> bool {
    text.to_uppercase() == text
}

/// Names that stand for "any entry of the context root" when CopyIgnoredFile looks at `.`:
/// a plain name and a dot name, which only patterns that exclude every root entry (`*`, `**`,
/// `**/*`) both match.
const ROOT_PROBES: [&str; 2] = ["\u{1}kiln-root-entry", ".\u{1}kiln-root-entry"];

/// A URL source of ADD (`http(s)://`, a git URL), which the `.dockerignore` does not apply to.
fn is_remote_source(source: &str) -> bool {
    source.contains("://") || source.starts_with("git@")
}

/// The span of one whole line.
fn line_span(line: usize) -> Span {
    Span {
        start: Position { line, column: 1 },
        end: Position { line, column: 1 },
    }
}

/// The last line of the instruction itself, before any heredoc body: where BuildKit's parser
/// is when it reports an empty continuation line.
fn logical_end_line(statement: &Statement) -> usize {
    match statement.heredocs().first() {
        Some(heredoc) => heredoc
            .span
            .start
            .line
            .saturating_sub(1)
            .max(statement.span.start.line),
        None => statement.span.end.line,
    }
}

impl Linter<'_> {
    fn report(&mut self, rule: Rule, at: At, message: String) {
        self.reporter.report(rule, at.statement, at.span, message);
    }

    fn at(&self, statement: usize) -> At {
        At {
            statement,
            span: self.dockerfile.statements[statement].span,
        }
    }

    /// The rules BuildKit runs while parsing: empty continuation lines, stage name and `AS`
    /// casing, MAINTAINER, and definition descriptions of FROM and ARG.
    fn parse_time_rules(&mut self) {
        let dockerfile = self.dockerfile;
        for (index, statement) in dockerfile.statements.iter().enumerate() {
            let at = self.at(index);
            if !statement.empty_continuation_lines.is_empty() {
                let line = logical_end_line(statement);
                self.report(
                    Rule::NoEmptyContinuation,
                    At {
                        statement: index,
                        span: line_span(line),
                    },
                    "Empty continuation line".to_string(),
                );
            }
            match &statement.instruction {
                Instruction::From(from) => {
                    if let Some(alias) = &from.alias
                        && !is_lowercase(&alias.text)
                    {
                        self.report(
                            Rule::StageNameCasing,
                            at,
                            format!("Stage name '{}' should be lowercase", alias.text),
                        );
                    }
                    if let Some(as_keyword) = &from.as_keyword {
                        // A FROM keyword in mixed case is ConsistentInstructionCasing's business.
                        let keyword = statement.keyword.text.as_str();
                        let mismatch = if is_lowercase(keyword) {
                            !is_lowercase(&as_keyword.text)
                        } else if is_uppercase(keyword) {
                            !is_uppercase(&as_keyword.text)
                        } else {
                            false
                        };
                        if mismatch {
                            self.report(
                                Rule::FromAsCasing,
                                at,
                                format!(
                                    "'{}' and '{keyword}' keywords' casing do not match",
                                    as_keyword.text
                                ),
                            );
                        }
                    }
                    if let Some(alias) = &from.alias {
                        let name = alias.text.to_ascii_lowercase();
                        self.definition_description(statement, "FROM", &[name.as_str()], at);
                    }
                }
                Instruction::Maintainer(_) => self.report(
                    Rule::MaintainerDeprecated,
                    at,
                    "Maintainer instruction is deprecated in favor of using label".to_string(),
                ),
                Instruction::Arg(arg) => {
                    let names: Vec<&str> = arg
                        .args
                        .iter()
                        .map(|declaration| declaration.name.text.as_str())
                        .collect();
                    self.definition_description(statement, "ARG", &names, at);
                }
                Instruction::Run(_)
                | Instruction::Cmd(_)
                | Instruction::Label(_)
                | Instruction::Expose(_)
                | Instruction::Env(_)
                | Instruction::Add(_)
                | Instruction::Copy(_)
                | Instruction::Entrypoint(_)
                | Instruction::Volume(_)
                | Instruction::User(_)
                | Instruction::Workdir(_)
                | Instruction::Onbuild(_)
                | Instruction::Stopsignal(_)
                | Instruction::Healthcheck(_)
                | Instruction::Shell(_) => {}
            }
        }
    }

    /// InvalidDefinitionDescription: the last comment line above a FROM or ARG must start with
    /// the name it describes.
    fn definition_description(
        &mut self,
        statement: &Statement,
        instruction: &str,
        names: &[&str],
        at: At,
    ) {
        let (Some(comment), Some(first)) = (statement.comments.last(), names.first()) else {
            return;
        };
        let described = comment.split(' ').next().unwrap_or("");
        if names.contains(&described) {
            return;
        }
        let example = if names.len() > 1 { "<arg_key>" } else { first };
        self.report(
            Rule::InvalidDefinitionDescription,
            at,
            format!(
                "Comment for {instruction} should follow the format: `# {example} <description>`"
            ),
        );
    }

    /// ReservedStageName and DuplicateStageName, in stage order.
    fn stage_names(&mut self) {
        let mut seen = BTreeSet::new();
        for stage in 0..self.stages.len() {
            let Some(name) = self.stages[stage].name.clone() else {
                continue;
            };
            let at = self.at(self.stages[stage].from);
            if RESERVED_STAGE_NAMES.contains(&name.as_str()) {
                self.report(
                    Rule::ReservedStageName,
                    at,
                    format!("Stage name should not use the same name as reserved stage {name:?}"),
                );
            }
            if seen.contains(&name) {
                self.report(
                    Rule::DuplicateStageName,
                    at,
                    format!("Duplicate stage name {name:?}, stage names should be unique"),
                );
            }
            seen.insert(name);
        }
    }

    /// ConsistentInstructionCasing over the FROM lines and the instructions of the stages (not
    /// the global ARGs, which BuildKit keeps apart), against the majority casing (uppercase on a
    /// tie).
    fn instruction_casing(&mut self) {
        let dockerfile = self.dockerfile;
        let keywords: Vec<usize> = self
            .stages
            .iter()
            .flat_map(|stage| std::iter::once(stage.from).chain(stage.commands.clone()))
            .collect();
        let (mut lower, mut upper) = (0usize, 0usize);
        for &index in &keywords {
            let keyword = &dockerfile.statements[index].keyword.text;
            if is_lowercase(keyword) {
                lower += 1;
            } else if is_uppercase(keyword) {
                upper += 1;
            }
        }
        let majority_lower = lower > upper;
        for &index in &keywords {
            let keyword = &dockerfile.statements[index].keyword.text;
            let casing = if majority_lower && !is_lowercase(keyword) {
                "lowercase"
            } else if !majority_lower && !is_uppercase(keyword) {
                "uppercase"
            } else {
                continue;
            };
            let at = self.at(index);
            self.report(
                Rule::ConsistentInstructionCasing,
                at,
                format!(
                    "Command '{keyword}' should match the case of the command majority ({casing})"
                ),
            );
        }
    }

    /// The predefined platform ARGs (BuildKit's `defaultArgs`), build arguments applied.
    fn predefined_args(&self) -> Env {
        let (os, arch) = host_platform();
        let platform = format!("{os}/{arch}");
        let target_stage = self
            .stages
            .last()
            .and_then(|stage| stage.name.clone())
            .unwrap_or_default();
        let defaults = [
            ("BUILDPLATFORM", platform.clone()),
            ("BUILDOS", os.to_string()),
            ("BUILDOSVERSION", String::new()),
            ("BUILDARCH", arch.to_string()),
            ("BUILDVARIANT", String::new()),
            ("TARGETPLATFORM", platform),
            ("TARGETOS", os.to_string()),
            ("TARGETOSVERSION", String::new()),
            ("TARGETARCH", arch.to_string()),
            ("TARGETVARIANT", String::new()),
            ("TARGETSTAGE", target_stage),
        ];
        let mut env = Env::default();
        for (key, value) in defaults {
            let value = self.build_args.get(key).cloned().unwrap_or(value);
            env.set(key, value);
        }
        env
    }

    /// BuildKit's `buildMetaArgs`: the global ARGs in order, each taking its build argument, or
    /// its default expanded with the ARGs before it. Returns the environment, every declared
    /// name, and whether every default expanded.
    fn global_args(
        &self,
        mut env: Env,
        build_args: Option<&BTreeMap<String, String>>,
    ) -> (Env, Vec<String>, bool) {
        let mut declared = Vec::new();
        let mut ok = true;
        for statement in self.dockerfile.global_statements() {
            let Instruction::Arg(arg) = &statement.instruction else {
                continue;
            };
            for declaration in &arg.args {
                let key = declaration.name.text.as_str();
                let value = match (
                    build_args.and_then(|args| args.get(key)),
                    &declaration.default,
                ) {
                    (Some(value), _) => Some(value.clone()),
                    (None, Some(default)) => match self.lexer.expand_word(&default.text, &env) {
                        Ok(expansion) => Some(expansion.value),
                        Err(_) => {
                            ok = false;
                            None
                        }
                    },
                    (None, None) => None,
                };
                if let Some(value) = value {
                    env.set(key, value);
                }
                declared.push(key.to_string());
            }
        }
        (env, declared, ok)
    }

    /// The checks of the FROM lines: InvalidDefaultArgInFrom (with defaults only),
    /// UndefinedArgInFrom, RedundantTargetPlatform and FromPlatformFlagConstDisallowed. Returns
    /// for each stage the earlier stage it is built on, if any.
    fn check_from_lines(&mut self) -> Vec<Option<usize>> {
        let dockerfile = self.dockerfile;
        let predefined = self.predefined_args();

        // Base images must stay valid when no build argument is given.
        let (defaults_env, _, defaults_ok) = self.global_args(predefined.clone(), None);
        if defaults_ok {
            for stage in 0..self.stages.len() {
                let from_index = self.stages[stage].from;
                let Instruction::From(from) = &dockerfile.statements[from_index].instruction else {
                    continue;
                };
                let Ok(expansion) = self.lexer.expand_word(&from.image.text, &defaults_env) else {
                    break;
                };
                if !is_valid_reference(&expansion.value) {
                    let at = self.at(from_index);
                    self.report(
                        Rule::InvalidDefaultArgInFrom,
                        at,
                        format!(
                            "Default value for ARG {} results in empty or invalid base image name",
                            from.image.text
                        ),
                    );
                }
            }
        }

        let (global_env, declared, _) = self.global_args(predefined, Some(self.build_args));
        let mut known: BTreeSet<String> = declared.into_iter().collect();
        known.extend(global_env.keys().into_iter().map(str::to_string));
        self.global_env = global_env;

        let mut bases = Vec::with_capacity(self.stages.len());
        // The latest stage of each name so far: a stage is built on the latest earlier stage
        // of the name its image expands to.
        let mut named: BTreeMap<String, usize> = BTreeMap::new();
        for stage in 0..self.stages.len() {
            let from_index = self.stages[stage].from;
            let at = self.at(from_index);
            let Instruction::From(from) = &dockerfile.statements[from_index].instruction else {
                bases.push(None);
                continue;
            };
            let base_name = match self.lexer.expand_word(&from.image.text, &self.global_env) {
                Ok(expansion) => {
                    self.undefined_args_in_from(&expansion.unmatched, &known, at);
                    Some(expansion.value)
                }
                Err(_) => None,
            };
            if let Some(platform) = &from.platform {
                self.platform_flag(platform, stage, &known, at);
            }
            bases.push(base_name.and_then(|base_name| named.get(&base_name).copied()));
            if let Some(name) = &self.stages[stage].name {
                named.insert(name.clone(), stage);
            }
        }
        bases
    }

    fn undefined_args_in_from(
        &mut self,
        unmatched: &BTreeSet<String>,
        known: &BTreeSet<String>,
        at: At,
    ) {
        let options: Vec<&str> = known.iter().map(String::as_str).collect();
        for name in unmatched {
            if known.contains(name) {
                continue;
            }
            let mut message = format!("FROM argument '{name}' is not declared");
            if let Some(suggestion) = suggest(name, &options) {
                message.push_str(&format!(" (did you mean {suggestion}?)"));
            }
            self.report(Rule::UndefinedArgInFrom, at, message);
        }
    }

    fn platform_flag(&mut self, platform: &Word, stage: usize, known: &BTreeSet<String>, at: At) {
        let Ok(expansion) = self.lexer.expand_word(&platform.text, &self.global_env) else {
            return;
        };
        self.undefined_args_in_from(&expansion.unmatched, known, at);
        // Only `$TARGETPLATFORM` alone, expanding to the target platform, is redundant.
        if expansion.matched.len() == 1
            && expansion.unmatched.is_empty()
            && expansion.matched.contains("TARGETPLATFORM")
            && self.global_env.lookup("TARGETPLATFORM") == Some(expansion.value.as_str())
        {
            self.report(
                Rule::RedundantTargetPlatform,
                at,
                format!(
                    "Setting platform to predefined {} in FROM is redundant as this is the default behavior",
                    platform.text
                ),
            );
        }
        if expansion.matched.is_empty()
            && expansion.unmatched.is_empty()
            && let Some((os, arch)) = parse_platform(&expansion.value)
        {
            // A stage named after the platform is meant to be platform-specific.
            let name = self.stages[stage].name.as_deref().unwrap_or("");
            if !name.contains(&os) && !name.contains(&arch) {
                self.report(
                    Rule::FromPlatformFlagConstDisallowed,
                    at,
                    format!(
                        "FROM --platform flag should not use constant value {:?}",
                        expansion.value
                    ),
                );
            }
        }
    }

    /// Dispatches every stage in order, each from its parent stage's final state or from a
    /// fresh image, inherited ONBUILD triggers first.
    fn dispatch_stages(&mut self, bases: &[Option<usize>]) {
        let dockerfile = self.dockerfile;
        let mut finals: Vec<StageState> = Vec::with_capacity(self.stages.len());
        for stage in 0..self.stages.len() {
            let base = bases.get(stage).copied().flatten();
            let mut state = match base.and_then(|base| finals.get(base)) {
                Some(parent) => parent.clone(),
                None => StageState::from_image(),
            };
            let mut trackers = Trackers::default();
            let from_at = self.at(self.stages[stage].from);
            if let Some(base) = base {
                for index in self.stages[base].commands.clone() {
                    if let Instruction::Onbuild(onbuild) = &dockerfile.statements[index].instruction
                    {
                        self.dispatch(&mut state, &mut trackers, &onbuild.trigger, from_at);
                    }
                }
            }
            for index in self.stages[stage].commands.clone() {
                let at = self.at(index);
                self.dispatch(&mut state, &mut trackers, &dockerfile.statements[index], at);
            }
            finals.push(state);
        }
    }

    /// Expands `text` as the builder would and reports UndefinedVar for every unset name that is
    /// not a declared ARG. Returns the expanded text, or `None` when the word does not expand.
    fn expand(&mut self, state: &StageState, text: &str, lexer: &Lexer, at: At) -> Option<String> {
        let expansion = lexer.expand_word(text, &state.env).ok()?;
        if expansion.unmatched.is_empty() {
            return Some(expansion.value);
        }
        let keys = state.env.keys();
        for name in &expansion.unmatched {
            if state.declared.contains(name) || NON_ENV_ARGS.contains(&name.as_str()) {
                continue;
            }
            let mut message = format!("Usage of undefined variable '${name}'");
            if let Some(suggestion) = suggest(name, &keys) {
                message.push_str(&format!(" (did you mean ${suggestion}?)"));
            }
            self.report(Rule::UndefinedVar, at, message);
        }
        Some(expansion.value)
    }

    fn expand_word(&mut self, state: &StageState, word: &Word, at: At) -> Option<String> {
        let lexer = self.lexer.clone();
        self.expand(state, &word.text, &lexer, at)
    }

    fn used_once(&mut self, slot: &mut Option<(usize, Span)>, name: &str, at: At) {
        if let Some((statement, span)) = slot.replace((at.statement, at.span)) {
            self.report(
                Rule::MultipleInstructionsDisallowed,
                At { statement, span },
                format!(
                    "Multiple {name} instructions should not be used in the same stage because only the last one will be used"
                ),
            );
        }
    }

    fn json_args(&mut self, state: &StageState, command: &CommandLine, name: &str, at: At) {
        if !command.is_exec() && !state.shell_set {
            self.report(
                Rule::JsonArgsRecommended,
                at,
                format!(
                    "JSON arguments recommended for {name} to prevent unintended behavior related to OS signals"
                ),
            );
        }
    }

    fn legacy_key_values(&mut self, pairs: &KeyValues, name: &str, at: At) {
        if pairs.legacy {
            self.report(
                Rule::LegacyKeyValueFormat,
                at,
                format!("\"{name} key=value\" should be used instead of legacy \"{name} key value\" format"),
            );
        }
    }

    fn secret(&mut self, instruction: &str, key: &str, at: At) {
        if looks_like_secret(key) {
            self.report(
                Rule::SecretsUsedInArgOrEnv,
                at,
                format!(
                    "Do not use ARG or ENV instructions for sensitive data ({instruction} {key:?})"
                ),
            );
        }
    }

    /// ADD and COPY: `--chown`, (`--checksum`), the sources and the destination expand; heredoc
    /// bodies that expand do so with quotes kept (BuildKit's `ExpandRaw`). Returns the expanded
    /// sources that are paths (not heredocs), in order.
    fn paths(
        &mut self,
        state: &StageState,
        flags: &[Option<&Word>],
        paths: &crate::ast::Paths,
        at: At,
    ) -> Vec<String> {
        for word in flags.iter().flatten() {
            self.expand_word(state, word, at);
        }
        let mut sources = Vec::new();
        for source in &paths.sources {
            if !paths.heredocs.is_empty() && source.text.starts_with("<<") {
                continue;
            }
            if let Some(source) = self.expand_word(state, source, at) {
                sources.push(source);
            }
        }
        self.expand_word(state, &paths.destination, at);
        let raw = Lexer::new('\\').raw_quotes(true);
        for heredoc in paths.heredocs.iter().filter(|heredoc| heredoc.expand) {
            self.expand(state, &heredoc.content, &raw, at);
        }
        sources
    }

    /// CopyIgnoredFile, as BuildKit's `validateCopySourcePath`: each local source of a COPY or
    /// ADD from the build context (not `--from`, not a URL) is cleaned and looked up in the
    /// `.dockerignore`. Like BuildKit, nothing is reported when the file has exceptions, which
    /// can re-include files below an excluded directory. The context root (`.`, `/`) is not a
    /// name that a pattern like `.*` excludes: it warns only when every entry of the root is
    /// excluded (`*`, `**`), which is what BuildKit checks since it stopped treating `COPY . .`
    /// with `.*` as copying an ignored file named "." (moby/buildkit#6930).
    fn ignored_sources(&mut self, sources: &[String], instruction: &str, at: At) {
        let Some(ignore) = self.ignore else {
            return;
        };
        if ignore.has_exclusions() {
            return;
        }
        for source in sources {
            if is_remote_source(source) {
                continue;
            }
            // As BuildKit cleans a COPY source before it looks it up in the `.dockerignore`.
            let cleaned = crate::path::clean(source);
            let ignored = if cleaned == "." || cleaned == "/" {
                ROOT_PROBES.iter().all(|probe| ignore.is_ignored(probe))
            } else {
                ignore.is_ignored(&cleaned)
            };
            if ignored {
                self.report(
                    Rule::CopyIgnoredFile,
                    at,
                    format!(
                        "Attempting to {instruction} file {cleaned:?} that is excluded by .dockerignore"
                    ),
                );
            }
        }
    }

    fn expose(&mut self, state: &StageState, port: &Word, at: At) {
        let Ok(expansion) = self.lexer.expand_words(&port.text, &state.env) else {
            return;
        };
        for raw in &expansion.words {
            let parts: Vec<&str> = raw.split(':').collect();
            let count = parts.len();
            let (ip, host, container) = match count {
                1 => (String::new(), "", parts[0]),
                2 => (String::new(), parts[0], parts[1]),
                _ => (
                    parts[..count - 2].join(":"),
                    parts[count - 2],
                    parts[count - 1],
                ),
            };
            let (number, protocol) = container.split_once('/').unwrap_or((container, ""));
            let known = matches!(
                protocol.to_ascii_lowercase().as_str(),
                "" | "tcp" | "udp" | "sctp"
            );
            if number.is_empty() || !known {
                // BuildKit fails the build on this port before checking it.
                continue;
            }
            if !is_lowercase(protocol) {
                self.report(
                    Rule::ExposeProtoCasing,
                    at,
                    format!("Defined protocol '{raw}' in EXPOSE instruction should be lowercase"),
                );
            }
            if !ip.is_empty() || !host.is_empty() {
                self.report(
                    Rule::ExposeInvalidFormat,
                    at,
                    format!("EXPOSE instruction should not define an IP address or host-port mapping, found '{raw}'"),
                );
            }
        }
    }

    /// One instruction of a stage, as BuildKit's `dispatch`: expansion (with UndefinedVar) where
    /// the builder expands, then the instruction's own rules and its effect on the stage.
    fn dispatch(
        &mut self,
        state: &mut StageState,
        trackers: &mut Trackers,
        statement: &Statement,
        at: At,
    ) {
        let name = statement.keyword.text.as_str();
        match &statement.instruction {
            Instruction::From(_) | Instruction::Maintainer(_) | Instruction::Onbuild(_) => {}
            Instruction::Run(run) => {
                for mount in &run.mounts {
                    let words = [
                        &mount.target,
                        &mount.source,
                        &mount.from,
                        &mount.id,
                        &mount.mode,
                        &mount.uid,
                        &mount.gid,
                        &mount.size,
                        &mount.env,
                    ];
                    for word in words.into_iter().flatten() {
                        self.expand_word(state, word, at);
                    }
                }
            }
            Instruction::Cmd(command) => {
                self.used_once(&mut trackers.cmd, name, at);
                self.json_args(state, command, name, at);
            }
            Instruction::Entrypoint(command) => {
                self.used_once(&mut trackers.entrypoint, name, at);
                self.json_args(state, command, name, at);
            }
            Instruction::Healthcheck(_) => self.used_once(&mut trackers.healthcheck, name, at),
            Instruction::Label(pairs) => {
                for pair in &pairs.pairs {
                    self.expand_word(state, &pair.key, at);
                    self.expand_word(state, &pair.value, at);
                }
                self.legacy_key_values(pairs, name, at);
            }
            Instruction::Env(pairs) => {
                // Every pair expands against the environment before the instruction.
                let mut expanded = Vec::with_capacity(pairs.pairs.len());
                for pair in &pairs.pairs {
                    let key = self.expand_word(state, &pair.key, at);
                    let value = self.expand_word(state, &pair.value, at);
                    expanded.push((key, value));
                }
                for (key, value) in expanded {
                    self.legacy_key_values(pairs, name, at);
                    let Some(key) = key else {
                        continue;
                    };
                    self.secret("ENV", &key, at);
                    state.env.set(&key, value.unwrap_or_default());
                }
            }
            Instruction::Expose(expose) => {
                for port in &expose.ports {
                    self.expose(state, port, at);
                }
            }
            Instruction::Add(add) => {
                let flags = [add.chown.as_ref(), add.checksum.as_ref()];
                let sources = self.paths(state, &flags, &add.paths, at);
                self.ignored_sources(&sources, "Add", at);
            }
            Instruction::Copy(copy) => {
                let flags = [copy.chown.as_ref()];
                let sources = self.paths(state, &flags, &copy.paths, at);
                if copy.from.is_none() {
                    self.ignored_sources(&sources, "Copy", at);
                }
            }
            Instruction::Volume(volume) => {
                for path in &volume.paths {
                    self.expand_word(state, path, at);
                }
            }
            Instruction::User(word) | Instruction::Stopsignal(word) => {
                self.expand_word(state, word, at);
            }
            Instruction::Workdir(word) => {
                let path = self.expand_word(state, word, at);
                // Only the first WORKDIR of the stage (and its parents) matters: later relative
                // ones build on it.
                if let Some(path) = path
                    && !state.workdir_set
                    && !path.starts_with('/')
                {
                    self.report(
                        Rule::WorkdirRelativePath,
                        at,
                        format!("Relative workdir {path:?} can have unexpected results if the base image changes"),
                    );
                }
                state.workdir_set = true;
            }
            Instruction::Arg(arg) => {
                for declaration in &arg.args {
                    let key = declaration.name.text.as_str();
                    self.secret("ARG", key, at);
                    let build_arg = self.build_args.get(key).cloned();
                    let value = match (build_arg, &declaration.default) {
                        (Some(value), _) => Some(value),
                        (None, Some(default)) => self.expand_word(state, default, at),
                        // An ARG without a default takes the global value of that name.
                        (None, None) => self.global_env.lookup(key).map(str::to_string),
                    };
                    if let Some(value) = value
                        && !NON_ENV_ARGS.contains(&key)
                    {
                        state.env.set(key, value);
                    }
                    state.declared.insert(key.to_string());
                }
            }
            Instruction::Shell(_) => state.shell_set = true,
        }
    }
}
