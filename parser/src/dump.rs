//! The AST as JSON (`kiln debug parse --json`) and as indented text (`kiln debug parse`).
//!
//! The JSON has one object per instruction: its lowercase `name`, `start_line` and `end_line`,
//! `flags` as written, `arguments` as written (exec-form strings decoded), `heredocs`, the typed
//! fields under `instruction`, and for ONBUILD the inner instruction under `trigger`.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::ast::{CommandLine, Dockerfile, Healthcheck, Heredoc, Instruction, Statement};

/// The whole file as JSON: directives and instructions.
pub fn to_json(dockerfile: &Dockerfile) -> Value {
    json!({
        "directives": {
            "escape": dockerfile.directives.escape.to_string(),
            "syntax": dockerfile.directives.syntax.as_ref().map(|d| &d.value),
            "check": dockerfile.directives.check.as_ref().map(|d| &d.value),
        },
        "instructions": dockerfile.statements.iter().map(statement_json).collect::<Vec<_>>(),
    })
}

fn statement_json(statement: &Statement) -> Value {
    let mut value = json!({
        "name": statement.name(),
        "keyword": statement.keyword.text,
        "start_line": statement.span.start.line,
        "end_line": statement.span.end.line,
        "flags": statement.flags.iter().map(|flag| match &flag.value {
            Some(value) => format!("--{}={value}", flag.name),
            None => format!("--{}", flag.name),
        }).collect::<Vec<_>>(),
        "arguments": statement.arguments(),
        "heredocs": statement.heredocs().iter().map(heredoc_json).collect::<Vec<_>>(),
        "instruction": serde_json::to_value(&statement.instruction).unwrap_or(Value::Null),
    });
    if let Instruction::Onbuild(onbuild) = &statement.instruction {
        value["trigger"] = statement_json(&onbuild.trigger);
        value["expression"] = Value::String(onbuild.expression.clone());
        if let Some(object) = value["instruction"]["value"].as_object_mut() {
            object.remove("trigger");
        }
    }
    value
}

fn heredoc_json(heredoc: &Heredoc) -> Value {
    json!({
        "name": heredoc.name,
        "file_descriptor": heredoc.file_descriptor,
        "expand": heredoc.expand,
        "chomp": heredoc.chomp,
        "content": heredoc.content,
        "start_line": heredoc.span.start.line,
        "end_line": heredoc.span.end.line,
    })
}

impl Statement {
    /// The arguments as written, one string per argument: exec-form strings decoded, the shell
    /// form as one string, `key=value` for ENV/LABEL/ARG pairs.
    pub fn arguments(&self) -> Vec<String> {
        let words =
            |words: &[crate::ast::Word]| words.iter().map(|w| w.text.clone()).collect::<Vec<_>>();
        let command = |command: &CommandLine| match command {
            CommandLine::Exec(words_) => words(words_),
            CommandLine::Shell(text) => vec![text.text.clone()],
        };
        match &self.instruction {
            Instruction::From(from) => {
                let mut out = vec![from.image.text.clone()];
                if let (Some(as_keyword), Some(alias)) = (&from.as_keyword, &from.alias) {
                    out.push(as_keyword.text.clone());
                    out.push(alias.text.clone());
                }
                out
            }
            Instruction::Run(run) => command(&run.command),
            Instruction::Cmd(line) | Instruction::Entrypoint(line) => command(line),
            Instruction::Label(pairs) | Instruction::Env(pairs) => pairs
                .pairs
                .iter()
                .map(|pair| {
                    if pairs.legacy {
                        format!("{} {}", pair.key.text, pair.value.text)
                    } else {
                        format!("{}={}", pair.key.text, pair.value.text)
                    }
                })
                .collect(),
            Instruction::Maintainer(word)
            | Instruction::User(word)
            | Instruction::Workdir(word)
            | Instruction::Stopsignal(word) => vec![word.text.clone()],
            Instruction::Expose(expose) => words(&expose.ports),
            Instruction::Add(add) => {
                let mut out = words(&add.paths.sources);
                out.push(add.paths.destination.text.clone());
                out
            }
            Instruction::Copy(copy) => {
                let mut out = words(&copy.paths.sources);
                out.push(copy.paths.destination.text.clone());
                out
            }
            Instruction::Volume(volume) => words(&volume.paths),
            Instruction::Arg(arg) => arg
                .args
                .iter()
                .map(|decl| match &decl.default {
                    Some(default) => format!("{}={}", decl.name.text, default.text),
                    None => decl.name.text.clone(),
                })
                .collect(),
            Instruction::Onbuild(onbuild) => vec![onbuild.expression.clone()],
            Instruction::Healthcheck(Healthcheck::None) => vec!["NONE".to_string()],
            Instruction::Healthcheck(Healthcheck::Check(check)) => {
                let mut out = vec!["CMD".to_string()];
                out.extend(command(&check.command));
                out
            }
            Instruction::Shell(shell) => words(&shell.shell),
        }
    }

    /// The heredocs of RUN, COPY and ADD (for ONBUILD, those of its trigger).
    pub fn heredocs(&self) -> &[Heredoc] {
        match &self.instruction {
            Instruction::Run(run) => &run.heredocs,
            Instruction::Copy(copy) => &copy.paths.heredocs,
            Instruction::Add(add) => &add.paths.heredocs,
            Instruction::Onbuild(onbuild) => onbuild.trigger.heredocs(),
            Instruction::From(_)
            | Instruction::Cmd(_)
            | Instruction::Label(_)
            | Instruction::Maintainer(_)
            | Instruction::Expose(_)
            | Instruction::Env(_)
            | Instruction::Entrypoint(_)
            | Instruction::Volume(_)
            | Instruction::User(_)
            | Instruction::Workdir(_)
            | Instruction::Arg(_)
            | Instruction::Stopsignal(_)
            | Instruction::Healthcheck(_)
            | Instruction::Shell(_) => &[],
        }
    }
}

/// The whole file as indented text: one block per instruction, `LINE[-LINE] NAME`, then its
/// non-empty fields.
pub fn to_text(dockerfile: &Dockerfile) -> String {
    let mut out = String::new();
    let directives = &dockerfile.directives;
    if let Some(syntax) = &directives.syntax {
        let _ = writeln!(out, "# syntax={}", syntax.value);
    }
    if directives.escape != '\\' {
        let _ = writeln!(out, "# escape={}", directives.escape);
    }
    if let Some(check) = &directives.check {
        let _ = writeln!(out, "# check={}", check.value);
    }
    for statement in &dockerfile.statements {
        write_statement(&mut out, statement, 0);
    }
    out
}

fn write_statement(out: &mut String, statement: &Statement, indent: usize) {
    let pad = "  ".repeat(indent);
    let (start, end) = (statement.span.start.line, statement.span.end.line);
    let lines = if start == end {
        format!("{start}")
    } else {
        format!("{start}-{end}")
    };
    let _ = writeln!(
        out,
        "{pad}{lines} {}",
        statement.name().to_ascii_uppercase()
    );
    let value = serde_json::to_value(&statement.instruction).unwrap_or(Value::Null);
    match &value["value"] {
        Value::Object(fields) => {
            for (key, field) in fields {
                if key == "trigger" || is_empty(field) {
                    continue;
                }
                write_field(out, key, field, indent + 1);
            }
        }
        other @ (Value::Null
        | Value::Bool(_)
        | Value::Number(_)
        | Value::String(_)
        | Value::Array(_)) => {
            if !is_empty(other) {
                write_field(out, "value", other, indent + 1);
            }
        }
    }
    if let Instruction::Onbuild(onbuild) = &statement.instruction {
        write_statement(out, &onbuild.trigger, indent + 1);
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.values().all(is_empty),
        Value::String(_) | Value::Number(_) | Value::Bool(true) => false,
    }
}

fn write_field(out: &mut String, key: &str, value: &Value, indent: usize) {
    let pad = "  ".repeat(indent);
    match value {
        Value::Object(fields) => {
            let _ = writeln!(out, "{pad}{key}:");
            for (inner_key, inner) in fields {
                if !is_empty(inner) {
                    write_field(out, inner_key, inner, indent + 1);
                }
            }
        }
        Value::Array(items) if items.iter().all(|item| !item.is_object()) => {
            let _ = writeln!(out, "{pad}{key}: {value}");
        }
        Value::Array(items) => {
            let _ = writeln!(out, "{pad}{key}:");
            for item in items {
                write_field(out, "-", item, indent + 1);
            }
        }
        Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null => {
            let _ = writeln!(out, "{pad}{key}: {value}");
        }
    }
}
