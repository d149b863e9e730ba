//! Turns the untyped nodes of `syntax.rs` into the typed AST, with the checks of BuildKit's
//! `instructions` package: argument counts, flags per instruction, forms, mounts, durations.

// Matches on the untyped `Arguments` accept the forms an instruction takes and reject the rest.
#![allow(clippy::wildcard_enum_match_arm)]

use std::ops::Range;
use std::time::Duration;

use crate::ast::{
    Add, Arg, ArgDeclaration, CommandLine, Copy, Expose, Flag, From, Healthcheck,
    HealthcheckCommand, Instruction, KeyValue, KeyValues, Mount, MountKind, Network, Onbuild,
    Paths, Run, Security, Sharing, Shell, Span, Statement, Volume, Word,
};
use crate::error::{ErrorKind, ParseError};
use crate::grammar::{self, RawFlag};
use crate::syntax::{Arguments, Logical, Node, Parsed};

/// The instruction names of the Dockerfile reference, in upper case.
pub const INSTRUCTIONS: [&str; 18] = [
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "MAINTAINER",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
];

/// How a flag takes its value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    /// `--name=value`, at most once.
    String,
    /// `--name=value`, any number of times.
    Strings,
    /// `--name` or `--name=true|false`.
    Bool,
}

/// The flags each instruction accepts.
fn flag_specs(instruction: &str) -> &'static [(&'static str, FlagKind)] {
    use FlagKind::{Bool, String, Strings};
    match instruction {
        "from" => &[("platform", String)],
        "run" => &[
            ("mount", Strings),
            ("network", String),
            ("security", String),
        ],
        "copy" => &[
            ("from", String),
            ("chown", String),
            ("chmod", String),
            ("link", Bool),
            ("parents", Bool),
            ("exclude", Strings),
        ],
        "add" => &[
            ("chown", String),
            ("chmod", String),
            ("link", Bool),
            ("keep-git-dir", Bool),
            ("checksum", String),
            ("exclude", Strings),
            ("unpack", Bool),
        ],
        "healthcheck" => &[
            ("interval", String),
            ("timeout", String),
            ("start-period", String),
            ("start-interval", String),
            ("retries", String),
        ],
        _ => &[],
    }
}

/// The validated flags of one instruction.
struct Flags<'l> {
    logical: &'l Logical<'l>,
    /// Each flag given, with its values (several for repeatable flags) and where they are.
    values: Vec<(&'static str, FlagValues)>,
}

type FlagValues = Vec<(Option<String>, Range<usize>)>;

impl<'l> Flags<'l> {
    fn parse(
        logical: &'l Logical<'l>,
        instruction: &str,
        raw: &[RawFlag],
    ) -> Result<Self, ParseError> {
        let specs = flag_specs(instruction);
        let mut values: Vec<(&'static str, FlagValues)> = Vec::new();
        for flag in raw {
            let span = logical.span(flag.range.clone());
            let Some(&(name, kind)) = specs.iter().find(|(name, _)| *name == flag.name) else {
                let error = ParseError::new(
                    ErrorKind::UnknownFlag {
                        instruction: instruction.to_ascii_uppercase(),
                        flag: flag.name.clone(),
                    },
                    span,
                );
                let owners: Vec<&str> = INSTRUCTIONS
                    .iter()
                    .filter(|other| {
                        flag_specs(&other.to_ascii_lowercase())
                            .iter()
                            .any(|(n, _)| *n == flag.name)
                    })
                    .copied()
                    .collect();
                return Err(if owners.is_empty() {
                    error
                } else {
                    error.with_hint(format!(
                        "--{} is a flag of {}",
                        flag.name,
                        owners.join(" and ")
                    ))
                });
            };
            match (kind, &flag.value) {
                (FlagKind::String | FlagKind::Strings, None) => {
                    return Err(ParseError::new(
                        ErrorKind::MissingFlagValue(flag.name.clone()),
                        span,
                    )
                    .with_hint(format!("write it as --{}=VALUE", flag.name)));
                }
                (FlagKind::Bool, Some(value))
                    if !value.eq_ignore_ascii_case("true")
                        && !value.eq_ignore_ascii_case("false") =>
                {
                    return Err(ParseError::new(
                        ErrorKind::InvalidBoolean {
                            flag: flag.name.clone(),
                            value: value.clone(),
                        },
                        span,
                    ));
                }
                _ => {}
            }
            match values.iter_mut().find(|(existing, _)| *existing == name) {
                Some((_, list)) if kind == FlagKind::Strings => {
                    list.push((flag.value.clone(), flag.range.clone()))
                }
                Some(_) => {
                    return Err(ParseError::new(
                        ErrorKind::DuplicateFlag(flag.name.clone()),
                        span,
                    ));
                }
                None => values.push((name, vec![(flag.value.clone(), flag.range.clone())])),
            }
        }
        Ok(Self { logical, values })
    }

    fn all(&self, name: &str) -> Vec<Word> {
        self.values
            .iter()
            .filter(|(existing, _)| *existing == name)
            .flat_map(|(_, list)| list.iter())
            .map(|(value, range)| Word {
                text: value.clone().unwrap_or_default(),
                span: self.logical.span(range.clone()),
            })
            .collect()
    }

    fn string(&self, name: &str) -> Option<Word> {
        self.all(name).into_iter().next()
    }

    fn boolean(&self, name: &str) -> Option<bool> {
        self.values
            .iter()
            .find(|(existing, _)| *existing == name)
            .map(|(_, list)| {
                list[0]
                    .0
                    .as_deref()
                    .is_none_or(|v| v.eq_ignore_ascii_case("true"))
            })
    }
}

/// Types one instruction read by the scanner.
pub(crate) fn statement(parsed: &Parsed<'_>) -> Result<Statement, ParseError> {
    let source_span = parsed
        .logical
        .span(parsed.node.keyword.start..parsed.logical.text.trim_end().len());
    let mut statement = lower(&parsed.logical, &parsed.node)?;
    statement.span = Span {
        start: source_span.start,
        end: statement
            .heredocs()
            .last()
            .map_or(source_span.end, |heredoc| heredoc.span.end),
    };
    statement.comments.clone_from(&parsed.comments);
    statement
        .empty_continuation_lines
        .clone_from(&parsed.empty_continuation_lines);
    Ok(statement)
}

fn word(logical: &Logical<'_>, range: Range<usize>) -> Word {
    Word {
        text: logical.text[range.clone()].to_string(),
        span: logical.span(range),
    }
}

fn lower(logical: &Logical<'_>, node: &Node) -> Result<Statement, ParseError> {
    let keyword = word(logical, node.keyword.clone());
    let name = node.name.as_str();
    let upper = name.to_ascii_uppercase();
    let rest_span = if node.rest.is_empty() {
        keyword.span
    } else {
        logical.span(node.rest.clone())
    };
    let Some(&canonical) = INSTRUCTIONS.iter().find(|known| **known == upper) else {
        let error = ParseError::new(
            ErrorKind::UnknownInstruction(keyword.text.clone()),
            keyword.span,
        );
        return Err(match suggest(&upper) {
            Some(suggestion) => error.with_hint(format!("did you mean {suggestion}?")),
            None => error.with_hint(format!("instructions are {}", INSTRUCTIONS.join(", "))),
        });
    };
    let flags = Flags::parse(logical, name, &node.flags)?;
    let too_few = |count: usize| {
        ParseError::new(
            ErrorKind::TooFewArguments {
                instruction: canonical.to_string(),
                count,
            },
            rest_span,
        )
    };
    let one_word = || match &node.arguments {
        Arguments::Text(range) => Ok(word(logical, range.clone())),
        _ => Err(ParseError::new(
            ErrorKind::ExactlyOneArgument(canonical.to_string()),
            rest_span,
        )),
    };
    let instruction = match name {
        "from" => {
            let words = split_words(logical, &node.arguments);
            let (image, alias, as_keyword) = match words.as_slice() {
                [image] => (image.clone(), None, None),
                [image, as_word, alias] if as_word.text.eq_ignore_ascii_case("as") => {
                    (image.clone(), Some(alias.clone()), Some(as_word.clone()))
                }
                _ => {
                    return Err(ParseError::new(ErrorKind::FromArguments, rest_span)
                        .with_hint("name a stage with `FROM image AS name`"));
                }
            };
            if let Some(alias) = alias
                .as_ref()
                .filter(|alias| !valid_stage_name(&alias.text))
            {
                return Err(ParseError::new(
                    ErrorKind::InvalidStageName(alias.text.clone()),
                    alias.span,
                )
                .with_hint(
                    "stage names start with a letter and hold letters, digits, `-`, `_` and `.`",
                ));
            }
            Instruction::From(From {
                image,
                platform: flags.string("platform"),
                alias,
                as_keyword,
            })
        }
        "run" => Instruction::Run(Run {
            command: command_line(logical, &node.arguments, keyword.span),
            heredocs: node.heredocs.clone(),
            mounts: flags
                .all("mount")
                .into_iter()
                .map(|value| mount(&value))
                .collect::<Result<_, _>>()?,
            network: flags
                .string("network")
                .map(|value| {
                    choice(
                        &value,
                        "network",
                        "default, none, host",
                        &[
                            ("default", Network::Default),
                            ("none", Network::None),
                            ("host", Network::Host),
                        ],
                    )
                })
                .transpose()?,
            security: flags
                .string("security")
                .map(|value| {
                    choice(
                        &value,
                        "security",
                        "sandbox, insecure",
                        &[
                            ("sandbox", Security::Sandbox),
                            ("insecure", Security::Insecure),
                        ],
                    )
                })
                .transpose()?,
        }),
        "cmd" => Instruction::Cmd(command_line(logical, &node.arguments, keyword.span)),
        "entrypoint" => {
            Instruction::Entrypoint(command_line(logical, &node.arguments, keyword.span))
        }
        "shell" => match &node.arguments {
            Arguments::Json(strings) if !strings.is_empty() => Instruction::Shell(Shell {
                shell: json_words(logical, strings),
            }),
            Arguments::Json(_) | Arguments::None => return Err(too_few(1)),
            _ => {
                return Err(ParseError::new(ErrorKind::ShellNotJson, rest_span)
                    .with_hint("write it as SHELL [\"/bin/sh\", \"-c\"]"));
            }
        },
        "label" | "env" => Instruction::from_pairs(
            name,
            key_values(logical, &node.arguments, canonical, rest_span)?,
        ),
        "maintainer" => Instruction::Maintainer(one_word()?),
        "expose" => {
            let ports = split_words(logical, &node.arguments);
            if ports.is_empty() {
                return Err(too_few(1));
            }
            Instruction::Expose(Expose { ports })
        }
        "add" | "copy" => {
            let (sources_and_destination, json) = match &node.arguments {
                Arguments::Json(strings) => (json_words(logical, strings), true),
                other => (split_words(logical, other), false),
            };
            let Some((destination, sources)) = sources_and_destination.split_last() else {
                return Err(too_few(2).with_hint(format!(
                    "{canonical} needs a source and a destination, as in `{canonical} app.py /app/`"
                )));
            };
            if sources.is_empty() {
                return Err(too_few(2).with_hint(format!(
                    "{canonical} needs a source and a destination, as in `{canonical} {} /app/`",
                    destination.text
                )));
            }
            let paths = Paths {
                sources: sources.to_vec(),
                destination: destination.clone(),
                json,
                heredocs: node.heredocs.clone(),
            };
            if name == "add" {
                Instruction::Add(Add {
                    paths,
                    chown: flags.string("chown"),
                    chmod: flags.string("chmod"),
                    link: flags.boolean("link").unwrap_or(false),
                    keep_git_dir: flags.boolean("keep-git-dir").unwrap_or(false),
                    checksum: flags.string("checksum"),
                    excludes: flags.all("exclude"),
                    unpack: flags.boolean("unpack"),
                })
            } else {
                Instruction::Copy(Copy {
                    paths,
                    from: flags.string("from"),
                    chown: flags.string("chown"),
                    chmod: flags.string("chmod"),
                    link: flags.boolean("link").unwrap_or(false),
                    parents: flags.boolean("parents").unwrap_or(false),
                    excludes: flags.all("exclude"),
                })
            }
        }
        "volume" => {
            let (paths, json) = match &node.arguments {
                Arguments::Json(strings) => (json_words(logical, strings), true),
                other => (split_words(logical, other), false),
            };
            if paths.is_empty() || paths.iter().any(|path| path.text.trim().is_empty()) {
                return Err(too_few(1).with_hint(
                    "VOLUME takes paths, as in `VOLUME /data` or `VOLUME [\"/data\"]`",
                ));
            }
            Instruction::Volume(Volume { paths, json })
        }
        "user" => Instruction::User(one_word()?),
        "workdir" => Instruction::Workdir(one_word()?),
        "stopsignal" => Instruction::Stopsignal(one_word()?),
        "arg" => {
            let Arguments::Words(words) = &node.arguments else {
                return Err(too_few(1));
            };
            let mut args = Vec::with_capacity(words.len());
            for (text, range) in words {
                let (name, default) = match text.split_once('=') {
                    Some((name, default)) => {
                        let name_range = range.start..range.start + name.len();
                        (
                            word(logical, name_range.clone()),
                            Some(Word {
                                text: default.to_string(),
                                span: logical.span(name_range.end + 1..range.end),
                            }),
                        )
                    }
                    None => (
                        Word {
                            text: text.clone(),
                            span: logical.span(range.clone()),
                        },
                        None,
                    ),
                };
                if name.text.is_empty() {
                    return Err(ParseError::new(ErrorKind::BlankArgName, name.span));
                }
                args.push(ArgDeclaration { name, default });
            }
            Instruction::Arg(Arg { args })
        }
        "onbuild" => {
            let Arguments::Onbuild(inner) = &node.arguments else {
                return Err(too_few(1));
            };
            let inner_keyword = word(logical, inner.keyword.clone());
            match inner.name.as_str() {
                "onbuild" => {
                    return Err(ParseError::new(
                        ErrorKind::OnbuildOnbuild,
                        inner_keyword.span,
                    ));
                }
                "from" => {
                    return Err(ParseError::new(
                        ErrorKind::OnbuildTrigger(inner.name.to_ascii_uppercase()),
                        inner_keyword.span,
                    )
                    .with_hint("a build that uses this image as its base chooses that base with its own FROM; ONBUILD can only add instructions after it"));
                }
                "maintainer" => {
                    return Err(ParseError::new(
                        ErrorKind::OnbuildTrigger(inner.name.to_ascii_uppercase()),
                        inner_keyword.span,
                    )
                    .with_hint(
                        "use ONBUILD LABEL org.opencontainers.image.authors=\"...\" instead",
                    ));
                }
                _ => {}
            }
            let trigger = lower(logical, inner)?;
            let mut expression = logical.text[node.rest.clone()].to_string();
            for heredoc in &inner.heredocs {
                expression.push('\n');
                expression.push_str(&heredoc.content);
                expression.push_str(&heredoc.name);
            }
            Instruction::Onbuild(Onbuild {
                trigger: Box::new(trigger),
                expression,
            })
        }
        "healthcheck" => healthcheck(logical, &node.arguments, &flags, rest_span)?,
        _ => {
            return Err(ParseError::new(
                ErrorKind::UnknownInstruction(keyword.text.clone()),
                keyword.span,
            ));
        }
    };
    let original_start = node.keyword.end;
    let original = logical.text[original_start..].trim().to_string();
    Ok(Statement {
        span: keyword.span,
        keyword,
        flags: node
            .flags
            .iter()
            .map(|flag| Flag {
                name: flag.name.clone(),
                value: flag.value.clone(),
                span: logical.span(flag.range.clone()),
            })
            .collect(),
        comments: Vec::new(),
        empty_continuation_lines: Vec::new(),
        original,
        instruction,
    })
}

impl Instruction {
    fn from_pairs(name: &str, pairs: KeyValues) -> Instruction {
        if name == "env" {
            Instruction::Env(pairs)
        } else {
            Instruction::Label(pairs)
        }
    }
}

/// Levenshtein distance, for "did you mean" hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (row[j] + 1)
                .min(current + 1)
                .min(previous + usize::from(ca != *cb));
            previous = current;
        }
    }
    row[b.len()]
}

/// The known instruction nearest to an unknown one, if it is a likely typo.
fn suggest(upper: &str) -> Option<&'static str> {
    if upper.chars().count() > 32 {
        return None;
    }
    INSTRUCTIONS
        .iter()
        .map(|known| (distance(upper, known), *known))
        .filter(|(d, known)| *d <= 2.min(known.len() / 2).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, known)| known)
}

/// BuildKit's stage-name rule: `^[a-z][a-z0-9-_\.]*$`, case-insensitively; names with variables
/// are checked after expansion by the builder.
fn valid_stage_name(name: &str) -> bool {
    if name.contains('$') {
        return true;
    }
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn split_words(logical: &Logical<'_>, arguments: &Arguments) -> Vec<Word> {
    match arguments {
        Arguments::Split(ranges) => ranges
            .iter()
            .map(|range| word(logical, range.clone()))
            .collect(),
        Arguments::Text(range) => vec![word(logical, range.clone())],
        Arguments::Json(strings) => json_words(logical, strings),
        _ => Vec::new(),
    }
}

fn json_words(logical: &Logical<'_>, strings: &[(String, Range<usize>)]) -> Vec<Word> {
    strings
        .iter()
        .map(|(text, range)| Word {
            text: text.clone(),
            span: logical.span(range.clone()),
        })
        .collect()
}

fn command_line(logical: &Logical<'_>, arguments: &Arguments, at: Span) -> CommandLine {
    match arguments {
        Arguments::Json(strings) => CommandLine::Exec(json_words(logical, strings)),
        Arguments::Text(range) => CommandLine::Shell(word(logical, range.clone())),
        _ => CommandLine::Shell(Word {
            text: String::new(),
            span: at,
        }),
    }
}

fn key_values(
    logical: &Logical<'_>,
    arguments: &Arguments,
    canonical: &str,
    at: Span,
) -> Result<KeyValues, ParseError> {
    let Arguments::Pairs { pairs, legacy } = arguments else {
        return Err(ParseError::new(
            ErrorKind::TooFewArguments {
                instruction: canonical.to_string(),
                count: 1,
            },
            at,
        )
        .with_hint(format!("write it as {canonical} key=value")));
    };
    let mut typed = Vec::with_capacity(pairs.len());
    for (key, value, key_range, value_range) in pairs {
        if key.is_empty() {
            return Err(ParseError::new(
                ErrorKind::BlankName(canonical.to_string()),
                logical.span(key_range.clone()),
            ));
        }
        typed.push(KeyValue {
            key: Word {
                text: key.clone(),
                span: logical.span(key_range.clone()),
            },
            value: Word {
                text: value.clone(),
                span: logical.span(value_range.clone()),
            },
        });
    }
    Ok(KeyValues {
        pairs: typed,
        legacy: *legacy,
    })
}

fn choice<T: std::marker::Copy>(
    value: &Word,
    flag: &str,
    expected: &'static str,
    options: &[(&str, T)],
) -> Result<T, ParseError> {
    options
        .iter()
        .find(|(name, _)| *name == value.text)
        .map(|(_, choice)| *choice)
        .ok_or_else(|| {
            ParseError::new(
                ErrorKind::InvalidFlagValue {
                    flag: flag.to_string(),
                    value: value.text.clone(),
                    expected,
                },
                value.span,
            )
        })
}

/// Parses a `--mount=` value (BuildKit's parseMount, before expansion).
fn mount(value: &Word) -> Result<Mount, ParseError> {
    let span = value.span;
    let fields = grammar::csv_fields(&value.text)
        .ok_or_else(|| ParseError::new(ErrorKind::MountSyntax(value.text.clone()), span))?;
    let fields: Vec<(String, Option<String>)> = fields
        .into_iter()
        .filter(|(field, _)| !field.is_empty())
        .map(|(field, _)| match field.split_once('=') {
            Some((key, value)) => (key.to_ascii_lowercase(), Some(value.to_string())),
            None => (field.to_ascii_lowercase(), None),
        })
        .collect();
    let kind = match fields.iter().find(|(key, _)| key == "type") {
        Some((_, Some(kind))) => match kind.to_ascii_lowercase().as_str() {
            "bind" => MountKind::Bind,
            "cache" => MountKind::Cache,
            "tmpfs" => MountKind::Tmpfs,
            "secret" => MountKind::Secret,
            "ssh" => MountKind::Ssh,
            _ => {
                return Err(ParseError::new(ErrorKind::MountType(kind.clone()), span)
                    .with_hint("mount types are bind, cache, tmpfs, secret and ssh"));
            }
        },
        Some((_, None)) => {
            return Err(ParseError::new(
                ErrorKind::MountSyntax("type".to_string()),
                span,
            ));
        }
        None => MountKind::Bind,
    };
    let kind_name = format!("{kind:?}").to_ascii_lowercase();
    let mut mount = Mount {
        kind,
        target: None,
        source: None,
        from: None,
        read_only: None,
        id: None,
        sharing: None,
        mode: None,
        uid: None,
        gid: None,
        required: None,
        size: None,
        env: None,
        span,
    };
    let only_for = |option: &str, allowed: &[MountKind]| {
        if allowed.contains(&kind) {
            Ok(())
        } else {
            Err(ParseError::new(
                ErrorKind::MountOptionForType {
                    option: option.to_string(),
                    kind: kind_name.clone(),
                },
                span,
            ))
        }
    };
    let bad_value = |option: &str, value: &str| {
        ParseError::new(
            ErrorKind::MountValue {
                option: option.to_string(),
                value: value.to_string(),
            },
            span,
        )
    };
    let text = |value: &str| Word {
        text: value.to_string(),
        span,
    };
    let boolean =
        |option: &str, value: Option<&str>| match value.map(str::to_ascii_lowercase).as_deref() {
            None | Some("true" | "1" | "t") => Ok(true),
            Some("false" | "0" | "f") => Ok(false),
            Some(other) => Err(bad_value(option, other)),
        };
    for (key, value) in &fields {
        let value_str = value.as_deref();
        let needs_value =
            || value_str.ok_or_else(|| ParseError::new(ErrorKind::MountSyntax(key.clone()), span));
        match key.as_str() {
            "type" => {}
            "readonly" | "ro" => mount.read_only = Some(boolean(key, value_str)?),
            "readwrite" | "rw" => mount.read_only = Some(!boolean(key, value_str)?),
            "required" => {
                only_for(key, &[MountKind::Secret, MountKind::Ssh])?;
                mount.required = Some(boolean(key, value_str)?);
            }
            "from" => mount.from = Some(text(needs_value()?)),
            "source" | "src" => mount.source = Some(text(needs_value()?)),
            "target" | "dst" | "destination" => mount.target = Some(text(needs_value()?)),
            "id" => mount.id = Some(text(needs_value()?)),
            "sharing" => {
                only_for(key, &[MountKind::Cache])?;
                let value = needs_value()?;
                mount.sharing = Some(match value.to_ascii_lowercase().as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    _ => return Err(bad_value(key, value)),
                });
            }
            "mode" => {
                let value = needs_value()?;
                if !value.contains('$') && u32::from_str_radix(value, 8).is_err() {
                    return Err(
                        bad_value(key, value).with_hint("mode is an octal number, as in mode=0755")
                    );
                }
                mount.mode = Some(text(value));
            }
            "uid" | "gid" => {
                let value = needs_value()?;
                if !value.contains('$') && value.parse::<u32>().is_err() {
                    return Err(bad_value(key, value));
                }
                if key == "uid" {
                    mount.uid = Some(text(value));
                } else {
                    mount.gid = Some(text(value));
                }
            }
            "size" => {
                only_for(key, &[MountKind::Tmpfs])?;
                mount.size = Some(text(needs_value()?));
            }
            "env" => {
                only_for(key, &[MountKind::Secret])?;
                mount.env = Some(text(needs_value()?));
            }
            _ => {
                return Err(ParseError::new(ErrorKind::MountOption(key.clone()), span).with_hint(
                    "mount options are type, target, source, from, ro, rw, id, sharing, mode, uid, gid, required, size, env",
                ));
            }
        }
    }
    if mount.target.is_none()
        && matches!(kind, MountKind::Bind | MountKind::Cache | MountKind::Tmpfs)
    {
        return Err(ParseError::new(ErrorKind::MountTarget(kind_name), span)
            .with_hint("add target=/path, the directory the mount appears at"));
    }
    Ok(mount)
}

fn healthcheck(
    logical: &Logical<'_>,
    arguments: &Arguments,
    flags: &Flags<'_>,
    at: Span,
) -> Result<Instruction, ParseError> {
    let Arguments::Healthcheck { kind, command } = arguments else {
        return Err(ParseError::new(
            ErrorKind::TooFewArguments {
                instruction: "HEALTHCHECK".to_string(),
                count: 1,
            },
            at,
        )
        .with_hint("write HEALTHCHECK NONE or HEALTHCHECK [OPTIONS] CMD command"));
    };
    let kind_word = word(logical, kind.clone());
    match kind_word.text.to_ascii_uppercase().as_str() {
        "NONE" => {
            if !matches!(**command, Arguments::None) {
                return Err(ParseError::new(ErrorKind::HealthcheckNoneArguments, at));
            }
            Ok(Instruction::Healthcheck(Healthcheck::None))
        }
        "CMD" => {
            let command = match &**command {
                Arguments::None => {
                    return Err(ParseError::new(
                        ErrorKind::HealthcheckMissingCommand,
                        kind_word.span,
                    ));
                }
                Arguments::Json(strings) if strings.is_empty() => {
                    return Err(ParseError::new(
                        ErrorKind::HealthcheckMissingCommand,
                        kind_word.span,
                    ));
                }
                other => command_line(logical, other, kind_word.span),
            };
            let retries = flags
                .string("retries")
                .map(|value| {
                    value.text.parse::<u32>().map_err(|_| {
                        ParseError::new(ErrorKind::InvalidRetries(value.text.clone()), value.span)
                    })
                })
                .transpose()?;
            Ok(Instruction::Healthcheck(Healthcheck::Check(
                HealthcheckCommand {
                    command,
                    interval: interval(flags, "interval")?,
                    timeout: interval(flags, "timeout")?,
                    start_period: interval(flags, "start-period")?,
                    start_interval: interval(flags, "start-interval")?,
                    retries,
                },
            )))
        }
        _ => Err(ParseError::new(
            ErrorKind::HealthcheckType(kind_word.text.clone()),
            kind_word.span,
        )),
    }
}

/// A HEALTHCHECK duration option: zero means Docker's default; otherwise at least 1ms.
fn interval(flags: &Flags<'_>, name: &str) -> Result<Option<Duration>, ParseError> {
    let Some(value) = flags.string(name) else {
        return Ok(None);
    };
    let invalid = |reason: &'static str| {
        ParseError::new(
            ErrorKind::InvalidDuration {
                flag: name.to_string(),
                value: value.text.clone(),
                reason,
            },
            value.span,
        )
    };
    let (negative, duration) = grammar::duration(&value.text)
        .ok_or_else(|| invalid("expected a duration such as 30s, 1m30s or 500ms"))?;
    if negative && !duration.is_zero() {
        return Err(invalid("it cannot be negative"));
    }
    if !duration.is_zero() && duration < Duration::from_millis(1) {
        return Err(invalid("it cannot be less than 1ms"));
    }
    Ok((!duration.is_zero()).then_some(duration))
}
