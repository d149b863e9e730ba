//! Go's `text/template` as docker users write it in `--format`, rendered over a
//! `serde_json::Value`, plus docker's `table` formatting.
//!
//! Owns the template language (lexer, parser, executor, Go's `fmt` printing, docker's extra
//! functions) and the column alignment of docker's tabwriter. Does not own the data: each
//! command builds the object with Docker's field names (`ID`, `Repository`, `Config.Env` …)
//! and, for tables, names the header of each field. No I/O, no printing.
//!
//! # Data model
//!
//! The data is treated as Go treats JSON decoded into `interface{}` — which is what docker's
//! `inspect` falls back to — with these choices:
//!
//! - A **missing key** prints `<no value>` (Go over maps: `{{.Config.Nope}}`, and
//!   `{{index .Labels "nope"}}` too). Docker's typed structs would instead *fail* on an unknown
//!   field, and print an empty string for `index` of a missing `map[string]string` key; over JSON
//!   there is no way to tell a struct from a map, so maps win.
//! - An **explicit `null`** prints `<nil>`, as docker prints a nil pointer such as
//!   `{{.State.Health}}` (Go over decoded JSON would print `<no value>`). Everywhere else null
//!   behaves as Go's nil: false in `if`, empty in `range`, `<nil>` in `print`/`printf`, and
//!   `.Field` on it is an error (`nil pointer evaluating interface {}.Field`).
//! - **Numbers** keep their integer-ness: integers print without `.0` (`{{.Size}}` → `1024`),
//!   floats as Go's `%v` prints a `float64` (`1.5`, `1e+06`). `eq 1 1.0` is an error, as in Go.
//! - **Objects** print as `map[k:v]` and range in sorted key order; arrays print as `[a b]`.
//!
//! # Deviations from Go
//!
//! - `json` is docker's: no HTML escaping (`<` stays `<`), keys sorted.
//! - `join` accepts any array whose elements are all strings (Go's `[]string` parameter would
//!   reject a decoded `[]interface {}`; docker passes typed `[]string`).
//! - No custom delimiters, no `missingkey` option, no complex numbers, no hexadecimal float
//!   literals, no `%[n]` argument indexes or `%#v` Go-syntax printing.
//! - Text cut inside a UTF-8 sequence (`slice`, `truncate`, `"\xff"`) becomes U+FFFD.
//! - Nesting is limited so that parsing and execution never overflow the stack: 100 levels of
//!   parentheses and blocks per template, 100 nested `template` calls, 250 levels in all across
//!   calls (Go allows 10000 parentheses and 100000 template calls).
//! - Execution errors point where Go's do, which for a chain is its last field: `{{.Foo.Bar}}`
//!   fails at `:1:6`, the position of `.Bar`.

mod error;
mod exec;
mod float;
mod functions;
mod json;
mod lex;
mod parse;
mod printf;
mod quote;
mod table;
mod value;

pub use error::{
    CallProblem, ExecutionError, ExecutionProblem, LexicalProblem, SyntaxProblem, TemplateError,
};
pub use table::{COLUMN_PADDING, Format, MIN_COLUMN_WIDTH, TABLE_PREFIX, align_columns, is_table};

use parse::{Node, Operand, Pipe, Tree};

/// A parsed template, with the templates it `define`s. Cheap to render many times.
#[derive(Debug, Clone)]
pub struct Template {
    text: String,
    tree: Tree,
}

impl Template {
    /// Parses a template. A syntax error names the line and what was expected, as Go does
    /// (`template: :1: unexpected "}" in operand`). Function names are checked here: an unknown
    /// function is a parse error, not a render error.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        Ok(Template {
            text: text.to_owned(),
            tree: parse::parse(text)?,
        })
    }

    /// Renders against a value (see the crate documentation for how JSON maps onto Go values).
    /// An error names line, column and the failing expression, as Go does
    /// (`template: :1:6: executing "" at <.Foo.Bar>: can't evaluate field Bar in type string`);
    /// output written before the error is discarded.
    pub fn render(&self, data: &serde_json::Value) -> Result<String, TemplateError> {
        let mut out = String::new();
        exec::execute(&self.tree, &self.text, data, false, &mut out)?;
        Ok(out)
    }

    /// Renders the header row of a table, as docker does: the template runs over an object
    /// mapping each field name it uses to `headers(name)`, with `json`, `split`, `join`,
    /// `title`, `lower`, `upper` and `truncate` returning their first argument unchanged (so
    /// `{{upper .Name}}` heads its column `NAME`, not a transformed header). Fields without a
    /// header print `<no value>`. Like docker, an error stops the header where it happened
    /// instead of failing: the rows will report it.
    pub fn render_header(&self, headers: &dyn Fn(&str) -> Option<String>) -> String {
        let data = functions::header_data(&self.field_names(), headers);
        let mut out = String::new();
        // Errors are ignored on purpose (docker ignores them); the partial output is kept.
        let _ = exec::execute(&self.tree, &self.text, &data, true, &mut out);
        out
    }

    /// The top-level field names the template reads from dot, such as `ID` and `Config` in
    /// `{{.ID}} {{.Config.Env}}`, sorted and without duplicates.
    pub fn field_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for list in self.tree.templates.values() {
            collect_nodes(list, &mut names);
        }
        names.sort();
        names.dedup();
        names
    }
}

fn collect_nodes(list: &[Node], names: &mut Vec<String>) {
    for node in list {
        match node {
            Node::Text(_) | Node::Break | Node::Continue => {}
            Node::Action(pipe) => collect_pipe(pipe, names),
            Node::If(branch) | Node::With(branch) | Node::Range(branch) => {
                collect_pipe(&branch.pipe, names);
                collect_nodes(&branch.list, names);
                if let Some(else_list) = &branch.else_list {
                    collect_nodes(else_list, names);
                }
            }
            Node::Template(call) => {
                if let Some(pipe) = &call.pipe {
                    collect_pipe(pipe, names);
                }
            }
        }
    }
}

fn collect_pipe(pipe: &Pipe, names: &mut Vec<String>) {
    for command in &pipe.cmds {
        for operand in &command.args {
            collect_operand(operand, names);
        }
    }
}

fn collect_operand(operand: &Operand, names: &mut Vec<String>) {
    match operand {
        Operand::Field { idents, .. } => names.extend(idents.first().cloned()),
        Operand::Chain { node, .. } => collect_operand(node, names),
        Operand::Pipe(pipe) => collect_pipe(pipe, names),
        Operand::Variable { .. }
        | Operand::Identifier { .. }
        | Operand::Dot(_)
        | Operand::Nil(_)
        | Operand::Bool(..)
        | Operand::Number(..)
        | Operand::String { .. } => {}
    }
}
