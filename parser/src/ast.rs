//! The typed, spanned Dockerfile AST.
//!
//! Every value keeps the text as written (unexpanded, quotes and escapes intact) and where it
//! came from. Expansion against ARG/ENV values is the builder's job at dispatch time, through
//! [`crate::expand`]: which fields expand is documented on each field, following the Dockerfile
//! reference (RUN, CMD, ENTRYPOINT, SHELL and HEALTHCHECK are never expanded by the builder).

use std::time::Duration;

use serde::{Serialize, Serializer};

/// A place in the source: 1-based line, 1-based column counted in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// A range of the source. `end` is the position just past the last character; for text spread
/// over continuation lines it lies on the last physical line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Span {
    pub start: Position,
    pub end: Position,
}

/// Text as written in the Dockerfile, with its span. Continuation lines are already joined (the
/// escape character, the newline and comment lines in between are gone), quotes and escapes are
/// kept: the builder expands the word with [`crate::expand::Lexer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub span: Span,
}

impl Serialize for Word {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl Word {
    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A parsed Dockerfile: the parser directives and every instruction in file order (global ARGs
/// before the first FROM included).
#[derive(Debug, Clone, Serialize)]
pub struct Dockerfile {
    pub directives: Directives,
    pub statements: Vec<Statement>,
}

/// The parser directives at the top of the file (`# syntax=`, `# escape=`, `# check=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Directives {
    /// The escape character: `\` unless `# escape=` says `` ` ``.
    pub escape: char,
    /// The `# syntax=` frontend image, as written. kiln has one built-in frontend and records it only.
    pub syntax: Option<Directive>,
    /// The `# check=` lint settings.
    pub check: Option<Directive>,
    /// `# escape=` as written, for diagnostics.
    pub escape_directive: Option<Directive>,
}

impl Default for Directives {
    fn default() -> Self {
        Self {
            escape: '\\',
            syntax: None,
            check: None,
            escape_directive: None,
        }
    }
}

/// One parser directive: its value and the line it is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Directive {
    pub value: String,
    pub line: usize,
}

/// One instruction as written: the typed instruction plus what the linter and diagnostics need
/// about its source form.
#[derive(Debug, Clone, Serialize)]
pub struct Statement {
    /// The instruction keyword as written (`run`, `RUN`, `Run`).
    pub keyword: Word,
    /// From the keyword's first character to the end of the last line of the instruction, heredoc
    /// bodies included.
    pub span: Span,
    /// Every `--flag[=value]` as written, in order (quotes removed, as BuildKit does). The typed
    /// instruction carries the validated values.
    pub flags: Vec<Flag>,
    /// The comment lines above the instruction since the previous instruction, without `#` and
    /// trimmed (BuildKit's `PrevComment`, used by the InvalidDefinitionDescription rule). As in
    /// BuildKit, blank lines do not reset them; an empty `#` line does.
    pub comments: Vec<String>,
    /// Lines that were empty inside this instruction's line continuations (deprecated syntax).
    pub empty_continuation_lines: Vec<usize>,
    /// The source text of the instruction after the keyword, continuation lines joined (what
    /// Docker records for ONBUILD triggers and in history).
    pub original: String,
    pub instruction: Instruction,
}

impl Statement {
    /// The instruction's lowercase name (`run`, `copy`, ...).
    pub fn name(&self) -> &'static str {
        self.instruction.name()
    }
}

/// A `--name[=value]` flag as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flag {
    pub name: String,
    pub value: Option<String>,
    pub span: Span,
}

/// The instructions of the Dockerfile reference (current stable `docker/dockerfile:1`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "value")]
pub enum Instruction {
    From(From),
    Run(Run),
    Cmd(CommandLine),
    Label(KeyValues),
    Maintainer(Word),
    Expose(Expose),
    Env(KeyValues),
    Add(Add),
    Copy(Copy),
    Entrypoint(CommandLine),
    Volume(Volume),
    User(Word),
    Workdir(Word),
    Arg(Arg),
    Onbuild(Onbuild),
    Stopsignal(Word),
    Healthcheck(Healthcheck),
    Shell(Shell),
}

impl Instruction {
    /// The lowercase instruction name.
    pub fn name(&self) -> &'static str {
        match self {
            Instruction::From(_) => "from",
            Instruction::Run(_) => "run",
            Instruction::Cmd(_) => "cmd",
            Instruction::Label(_) => "label",
            Instruction::Maintainer(_) => "maintainer",
            Instruction::Expose(_) => "expose",
            Instruction::Env(_) => "env",
            Instruction::Add(_) => "add",
            Instruction::Copy(_) => "copy",
            Instruction::Entrypoint(_) => "entrypoint",
            Instruction::Volume(_) => "volume",
            Instruction::User(_) => "user",
            Instruction::Workdir(_) => "workdir",
            Instruction::Arg(_) => "arg",
            Instruction::Onbuild(_) => "onbuild",
            Instruction::Stopsignal(_) => "stopsignal",
            Instruction::Healthcheck(_) => "healthcheck",
            Instruction::Shell(_) => "shell",
        }
    }
}

/// `FROM [--platform=P] IMAGE [AS NAME]`. `image` and `platform` expand against global ARGs only.
#[derive(Debug, Clone, Serialize)]
pub struct From {
    pub image: Word,
    pub platform: Option<Word>,
    /// The stage name (`AS name`), as written; stage names match case-insensitively.
    pub alias: Option<Word>,
    /// The `AS` keyword as written, for the FromAsCasing rule.
    pub as_keyword: Option<Word>,
}

/// Exec form (a JSON array of strings) or shell form (text for the shell).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase", tag = "form", content = "value")]
pub enum CommandLine {
    /// `["executable", "arg"]`: JSON-decoded strings, never expanded.
    Exec(Vec<Word>),
    /// `command arg`: the text is handed to the SHELL (`/bin/sh -c` by default), never expanded
    /// by the builder.
    Shell(Word),
}

impl CommandLine {
    /// True for the JSON (exec) form.
    pub fn is_exec(&self) -> bool {
        matches!(self, CommandLine::Exec(_))
    }
}

/// `RUN [--mount=...]... [--network=...] [--security=...] COMMAND`.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub command: CommandLine,
    pub heredocs: Vec<Heredoc>,
    pub mounts: Vec<Mount>,
    pub network: Option<Network>,
    pub security: Option<Security>,
}

/// `RUN --network=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    Default,
    None,
    Host,
}

/// `RUN --security=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    Sandbox,
    Insecure,
}

/// `RUN --mount=type=...`: the option values are words that expand at dispatch time (BuildKit
/// expands every value except `type`).
#[derive(Debug, Clone, Serialize)]
pub struct Mount {
    pub kind: MountKind,
    /// `target`, `dst`, `destination`. Required except for `secret` and `ssh`.
    pub target: Option<Word>,
    /// `source`, `src`.
    pub source: Option<Word>,
    /// `from`: a stage name or an image.
    pub from: Option<Word>,
    /// `readonly`/`ro` (true) or `readwrite`/`rw` (false) when given; otherwise the kind's
    /// default (bind, secret and ssh read-only; cache and tmpfs writable).
    pub read_only: Option<bool>,
    /// `id` (cache, secret, ssh).
    pub id: Option<Word>,
    /// `sharing` (cache).
    pub sharing: Option<Sharing>,
    /// `mode` (octal file mode for cache, secret, ssh).
    pub mode: Option<Word>,
    pub uid: Option<Word>,
    pub gid: Option<Word>,
    /// `required` (secret, ssh): fail when the secret or agent is missing.
    pub required: Option<bool>,
    /// `size` (tmpfs), in bytes with an optional unit.
    pub size: Option<Word>,
    /// `env` (secret): expose the secret as this environment variable.
    pub env: Option<Word>,
    pub span: Span,
}

impl Mount {
    /// Whether the mount is read-only once defaults are applied.
    pub fn is_read_only(&self) -> bool {
        self.read_only.unwrap_or(match self.kind {
            MountKind::Bind | MountKind::Secret | MountKind::Ssh => true,
            MountKind::Cache | MountKind::Tmpfs => false,
        })
    }
}

/// The kinds of `RUN --mount`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

/// `RUN --mount=type=cache,sharing=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

/// A here-document (`<<EOF` ... `EOF`).
#[derive(Debug, Clone, Serialize)]
pub struct Heredoc {
    /// The delimiter, unquoted.
    pub name: String,
    /// The file descriptor number written before `<<` (`3<<EOF`), if any.
    pub file_descriptor: Option<u32>,
    /// False when the delimiter was quoted (`<<"EOF"`, `<<'EOF'`): the body is not expanded.
    pub expand: bool,
    /// `<<-EOF`: leading tabs are stripped from the body lines and from the delimiter line.
    pub chomp: bool,
    /// The body exactly as written, every line ending with `\n`, leading tabs already stripped when
    /// `chomp` is set.
    pub content: String,
    /// From the first body line to the delimiter line.
    pub span: Span,
}

/// `ADD [flags] SRC... DEST`.
#[derive(Debug, Clone, Serialize)]
pub struct Add {
    pub paths: Paths,
    pub chown: Option<Word>,
    pub chmod: Option<Word>,
    pub link: bool,
    pub keep_git_dir: bool,
    pub checksum: Option<Word>,
    pub excludes: Vec<Word>,
    /// `--unpack[=bool]`: `None` means the default (local archives unpack, remote ones do not).
    pub unpack: Option<bool>,
}

/// `COPY [flags] SRC... DEST`.
#[derive(Debug, Clone, Serialize)]
pub struct Copy {
    pub paths: Paths,
    pub from: Option<Word>,
    pub chown: Option<Word>,
    pub chmod: Option<Word>,
    pub link: bool,
    pub parents: bool,
    pub excludes: Vec<Word>,
}

/// The sources and destination of ADD and COPY. Each word expands on its own (no splitting).
#[derive(Debug, Clone, Serialize)]
pub struct Paths {
    /// At least one. A heredoc source appears as its `<<NAME` word and in `heredocs`.
    pub sources: Vec<Word>,
    pub destination: Word,
    /// True for the JSON form (`COPY ["a b", "/dst/"]`).
    pub json: bool,
    pub heredocs: Vec<Heredoc>,
}

/// `ENV` and `LABEL`: `key=value` pairs (or the legacy `KEY value` form). Keys and values expand.
#[derive(Debug, Clone, Serialize)]
pub struct KeyValues {
    pub pairs: Vec<KeyValue>,
    /// The deprecated `ENV key value` form (a single pair whose value is the rest of the line).
    pub legacy: bool,
}

/// One `key=value`.
#[derive(Debug, Clone, Serialize)]
pub struct KeyValue {
    pub key: Word,
    pub value: Word,
}

/// `EXPOSE PORT[/PROTO]...`: each word expands and may split into several ports.
#[derive(Debug, Clone, Serialize)]
pub struct Expose {
    pub ports: Vec<Word>,
}

/// `VOLUME PATH...` or `VOLUME ["PATH", ...]`.
#[derive(Debug, Clone, Serialize)]
pub struct Volume {
    pub paths: Vec<Word>,
    pub json: bool,
}

/// `ARG NAME[=DEFAULT]...`.
#[derive(Debug, Clone, Serialize)]
pub struct Arg {
    pub args: Vec<ArgDeclaration>,
}

/// One `NAME[=DEFAULT]` of an ARG line. The default expands when the ARG is reached.
#[derive(Debug, Clone, Serialize)]
pub struct ArgDeclaration {
    pub name: Word,
    pub default: Option<Word>,
}

/// `ONBUILD INSTRUCTION`: stored in the image config, run by builds that use the image as a base.
#[derive(Debug, Clone, Serialize)]
pub struct Onbuild {
    /// The trigger instruction, already parsed (never FROM, MAINTAINER or ONBUILD).
    pub trigger: Box<Statement>,
    /// The trigger as Docker records it in the image config (`RUN echo hi`), heredocs included.
    pub expression: String,
}

/// `HEALTHCHECK NONE` or `HEALTHCHECK [options] CMD command`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum Healthcheck {
    /// Disables any healthcheck inherited from the base image.
    None,
    Check(HealthcheckCommand),
}

/// The `CMD` form of HEALTHCHECK and its options (None means Docker's default).
#[derive(Debug, Clone, Serialize)]
pub struct HealthcheckCommand {
    pub command: CommandLine,
    #[serde(serialize_with = "serialize_duration")]
    pub interval: Option<Duration>,
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Option<Duration>,
    #[serde(serialize_with = "serialize_duration")]
    pub start_period: Option<Duration>,
    #[serde(serialize_with = "serialize_duration")]
    pub start_interval: Option<Duration>,
    pub retries: Option<u32>,
}

fn serialize_duration<S: Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(duration) => serializer.serialize_str(&format!("{duration:?}")),
        None => serializer.serialize_none(),
    }
}

/// `SHELL ["executable", "parameters"]` (JSON form only).
#[derive(Debug, Clone, Serialize)]
pub struct Shell {
    pub shell: Vec<Word>,
}

/// A build stage: its FROM and the instructions up to the next FROM.
#[derive(Debug, Clone, Copy)]
pub struct Stage<'a> {
    /// The stage's position among the stages, from 0.
    pub index: usize,
    pub from_statement: &'a Statement,
    pub from: &'a From,
    /// The instructions after FROM, in order.
    pub statements: &'a [Statement],
}

impl Dockerfile {
    /// The ARG instructions before the first FROM (usable in FROM lines only).
    pub fn global_statements(&self) -> &[Statement] {
        let first_from = self
            .statements
            .iter()
            .position(|statement| matches!(statement.instruction, Instruction::From(_)))
            .unwrap_or(self.statements.len());
        &self.statements[..first_from]
    }

    /// The build stages in order.
    pub fn stages(&self) -> Vec<Stage<'_>> {
        let mut stages = Vec::new();
        let starts: Vec<usize> = self
            .statements
            .iter()
            .enumerate()
            .filter(|(_, statement)| matches!(statement.instruction, Instruction::From(_)))
            .map(|(index, _)| index)
            .collect();
        for (index, &start) in starts.iter().enumerate() {
            let end = starts
                .get(index + 1)
                .copied()
                .unwrap_or(self.statements.len());
            let from_statement = &self.statements[start];
            let Instruction::From(from) = &from_statement.instruction else {
                continue;
            };
            stages.push(Stage {
                index,
                from_statement,
                from,
                statements: &self.statements[start + 1..end],
            });
        }
        stages
    }
}
