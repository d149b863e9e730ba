//! The template syntax tree and the parser that builds it, following Go's
//! `text/template/parse` (same grammar, same error messages, same node positions).

// At each position the grammar accepts a few token kinds and reports every other one as
// unexpected, as Go's parser does: a wildcard arm is the natural spelling of "anything else".
#![allow(clippy::wildcard_enum_match_arm)]

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{SyntaxProblem, TemplateError};
use crate::functions;
use crate::lex::{Kind, Token, lex};
use crate::quote::unquote;

/// Nesting deeper than this (parentheses plus control structures) is a syntax error; Go allows
/// 10000 parentheses, but this engine recurses on the native stack and must not overflow it,
/// even on a 2 MiB thread in a debug build.
const MAX_DEPTH: usize = 100;

#[derive(Debug, Clone)]
pub(crate) enum Node {
    Text(String),
    Action(Pipe),
    If(Branch),
    With(Branch),
    Range(Branch),
    Template(TemplateCall),
    Break,
    Continue,
}

/// `if`, `with` and `range`: the pipeline, the body and the optional `else` body.
#[derive(Debug, Clone)]
pub(crate) struct Branch {
    pub(crate) pipe: Pipe,
    pub(crate) list: Vec<Node>,
    pub(crate) else_list: Option<Vec<Node>>,
}

#[derive(Debug, Clone)]
pub(crate) struct TemplateCall {
    pub(crate) pos: usize,
    pub(crate) name: String,
    pub(crate) pipe: Option<Pipe>,
}

#[derive(Debug, Clone)]
pub(crate) struct Pipe {
    pub(crate) pos: usize,
    /// Declared (`:=`) or assigned (`=`) variables, with their `$`.
    pub(crate) decl: Vec<String>,
    pub(crate) is_assign: bool,
    pub(crate) cmds: Vec<Command>,
}

#[derive(Debug, Clone)]
pub(crate) struct Command {
    pub(crate) pos: usize,
    pub(crate) args: Vec<Operand>,
}

/// A number literal with every interpretation Go's `NumberNode` allows.
#[derive(Debug, Clone)]
pub(crate) struct Number {
    pub(crate) text: String,
    pub(crate) int: Option<i64>,
    pub(crate) float: Option<f64>,
    pub(crate) is_char: bool,
    /// Whether the literal's syntax makes it a float (`1.0`, `1e3`) when no type is imposed.
    pub(crate) float_syntax: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum Operand {
    /// `.A.B`; `pos` is Go's (the position of the last `.Field` token when chained).
    Field {
        pos: usize,
        idents: Vec<String>,
    },
    /// `$x.A.B`; `idents[0]` is the variable name with its `$`.
    Variable {
        pos: usize,
        idents: Vec<String>,
    },
    /// `(pipeline).A.B`.
    Chain {
        pos: usize,
        node: Box<Operand>,
        fields: Vec<String>,
    },
    Identifier {
        pos: usize,
        name: String,
    },
    Dot(usize),
    Nil(usize),
    Bool(usize, bool),
    Number(usize, Number),
    String {
        pos: usize,
        quoted: String,
        text: String,
    },
    Pipe(Box<Pipe>),
}

impl Operand {
    pub(crate) fn pos(&self) -> usize {
        match self {
            Operand::Field { pos, .. }
            | Operand::Variable { pos, .. }
            | Operand::Chain { pos, .. }
            | Operand::Identifier { pos, .. }
            | Operand::Dot(pos)
            | Operand::Nil(pos)
            | Operand::Bool(pos, _)
            | Operand::Number(pos, _)
            | Operand::String { pos, .. } => *pos,
            Operand::Pipe(pipe) => pipe.pos,
        }
    }
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Field { idents, .. } => {
                for ident in idents {
                    write!(f, ".{ident}")?;
                }
                Ok(())
            }
            Operand::Variable { idents, .. } => f.write_str(&idents.join(".")),
            Operand::Chain { node, fields, .. } => {
                if let Operand::Pipe(pipe) = node.as_ref() {
                    write!(f, "({pipe})")?;
                } else {
                    write!(f, "{node}")?;
                }
                for field in fields {
                    write!(f, ".{field}")?;
                }
                Ok(())
            }
            Operand::Identifier { name, .. } => f.write_str(name),
            Operand::Dot(_) => f.write_str("."),
            Operand::Nil(_) => f.write_str("nil"),
            Operand::Bool(_, value) => write!(f, "{value}"),
            Operand::Number(_, number) => f.write_str(&number.text),
            Operand::String { quoted, .. } => f.write_str(quoted),
            Operand::Pipe(pipe) => write!(f, "{pipe}"),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, arg) in self.args.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            if let Operand::Pipe(pipe) = arg {
                write!(f, "({pipe})")?;
            } else {
                write!(f, "{arg}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Pipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.decl.is_empty() {
            f.write_str(&self.decl.join(", "))?;
            f.write_str(if self.is_assign { " = " } else { " := " })?;
        }
        for (i, cmd) in self.cmds.iter().enumerate() {
            if i > 0 {
                f.write_str(" | ")?;
            }
            write!(f, "{cmd}")?;
        }
        Ok(())
    }
}

impl fmt::Display for TemplateCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{{template {}", crate::quote::go_quote(&self.name))?;
        if let Some(pipe) = &self.pipe {
            write!(f, " {pipe}")?;
        }
        f.write_str("}}")
    }
}

/// The parsed templates: the main one under the empty name plus every `define` and `block`.
#[derive(Debug, Clone)]
pub(crate) struct Tree {
    pub(crate) templates: BTreeMap<String, Vec<Node>>,
}

/// Go's `IsEmptyTree`: only whitespace text.
fn is_empty(list: &[Node]) -> bool {
    list.iter()
        .all(|node| matches!(node, Node::Text(text) if text.trim().is_empty()))
}

pub(crate) fn line_of(text: &str, pos: usize) -> usize {
    1 + text.as_bytes()[..pos.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

enum Ending {
    End,
    Else { pos: usize },
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token>,
    index: usize,
    vars: Vec<String>,
    range_depth: usize,
    depth: usize,
    /// Position of the `{{` of the action being parsed, for lexical error messages.
    action_pos: Option<usize>,
    templates: BTreeMap<String, Vec<Node>>,
}

type Parsed<T> = Result<T, TemplateError>;

pub(crate) fn parse(text: &str) -> Parsed<Tree> {
    let mut parser = Parser {
        text,
        tokens: lex(text),
        index: 0,
        vars: vec!["$".to_owned()],
        range_depth: 0,
        depth: 0,
        action_pos: None,
        templates: BTreeMap::new(),
    };
    let root = parser.parse_top()?;
    parser.add("", root)?;
    Ok(Tree {
        templates: parser.templates,
    })
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        &self.tokens[self.index.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        // Past the end, the last token (EOF or an error) repeats; the index still moves so
        // that `backup` stays exact.
        let token = self.peek().clone();
        self.index += 1;
        token
    }

    fn backup(&mut self) {
        self.index -= 1;
    }

    fn next_non_space(&mut self) -> Token {
        loop {
            let token = self.next();
            if token.kind != Kind::Space {
                return token;
            }
        }
    }

    fn peek_non_space(&mut self) -> Token {
        let token = self.next_non_space();
        self.backup();
        token
    }

    fn error_at(&self, pos: usize, problem: SyntaxProblem) -> TemplateError {
        TemplateError::Syntax {
            line: line_of(self.text, pos),
            problem,
        }
    }

    /// An error at the most recently read token, as Go's `Tree.errorf`.
    fn error(&self, problem: SyntaxProblem) -> TemplateError {
        let current = self.index.saturating_sub(1);
        let pos = self.tokens.get(current).map_or(0, |token| token.pos);
        self.error_at(pos, problem)
    }

    fn unexpected(&self, token: &Token, context: &str) -> TemplateError {
        if let Kind::Error(problem) = &token.kind {
            let line = line_of(self.text, token.pos);
            let action_line = self
                .action_pos
                .map(|pos| line_of(self.text, pos))
                .filter(|&action_line| action_line != line);
            return self.error_at(
                token.pos,
                SyntaxProblem::Lexical {
                    problem: problem.clone(),
                    action_line,
                },
            );
        }
        self.error_at(
            token.pos,
            SyntaxProblem::Unexpected {
                found: token.describe(),
                context: context.to_owned(),
            },
        )
    }

    fn add(&mut self, name: &str, list: Vec<Node>) -> Parsed<()> {
        match self.templates.get(name) {
            Some(existing) if !is_empty(existing) => {
                if !is_empty(&list) {
                    return Err(self.error(SyntaxProblem::MultipleDefinition(name.to_owned())));
                }
            }
            _ => {
                self.templates.insert(name.to_owned(), list);
            }
        }
        Ok(())
    }

    fn parse_top(&mut self) -> Parsed<Vec<Node>> {
        let mut root = Vec::new();
        while self.peek().kind != Kind::Eof {
            if self.peek().kind == Kind::LeftDelim {
                let delim = self.index;
                self.next();
                if self.next_non_space().kind == Kind::Define {
                    self.action_pos = Some(self.tokens[delim].pos);
                    self.parse_definition()?;
                    self.action_pos = None;
                    continue;
                }
                self.index = delim;
            }
            match self.text_or_action()? {
                Item::Node(node) => root.push(node),
                Item::End(pos) => {
                    return Err(
                        self.error_at(pos, SyntaxProblem::UnexpectedControl("{{end}}".into()))
                    );
                }
                Item::Else(pos) => {
                    return Err(
                        self.error_at(pos, SyntaxProblem::UnexpectedControl("{{else}}".into()))
                    );
                }
            }
        }
        Ok(root)
    }

    fn parse_definition(&mut self) -> Parsed<()> {
        const CONTEXT: &str = "define clause";
        let token = self.next_non_space();
        let name = self.template_name(&token, CONTEXT)?;
        self.expect(Kind::RightDelim, CONTEXT)?;
        let saved = std::mem::replace(&mut self.vars, vec!["$".to_owned()]);
        let (list, ending) = self.item_list()?;
        self.vars = saved;
        if let Ending::Else { pos } = ending {
            return Err(self.error_at(
                pos,
                SyntaxProblem::Unexpected {
                    found: "{{else}}".into(),
                    context: CONTEXT.into(),
                },
            ));
        }
        self.add(&name, list)
    }

    fn expect(&mut self, kind: Kind, context: &str) -> Parsed<Token> {
        let token = self.next_non_space();
        if token.kind != kind {
            return Err(self.unexpected(&token, context));
        }
        Ok(token)
    }

    fn template_name(&self, token: &Token, context: &str) -> Parsed<String> {
        match token.kind {
            Kind::String | Kind::RawString => unquote(&token.text)
                .ok_or_else(|| self.error_at(token.pos, SyntaxProblem::InvalidString)),
            _ => Err(self.unexpected(token, context)),
        }
    }

    /// Nodes up to `{{end}}` or `{{else}}`.
    fn item_list(&mut self) -> Parsed<(Vec<Node>, Ending)> {
        let mut list = Vec::new();
        while self.peek_non_space().kind != Kind::Eof {
            match self.text_or_action()? {
                Item::Node(node) => list.push(node),
                Item::End(_) => return Ok((list, Ending::End)),
                Item::Else(pos) => return Ok((list, Ending::Else { pos })),
            }
        }
        let eof = self.peek_non_space();
        Err(self.error_at(eof.pos, SyntaxProblem::UnexpectedEof))
    }

    fn text_or_action(&mut self) -> Parsed<Item> {
        let token = self.next_non_space();
        match token.kind {
            Kind::Text => Ok(Item::Node(Node::Text(token.text))),
            Kind::LeftDelim => {
                let outer = self.action_pos.replace(token.pos);
                let item = self.action();
                self.action_pos = outer;
                item
            }
            _ => Err(self.unexpected(&token, "input")),
        }
    }

    fn action(&mut self) -> Parsed<Item> {
        let token = self.next_non_space();
        match token.kind {
            Kind::Block => return self.block_control().map(Item::Node),
            Kind::Break | Kind::Continue => {
                let word = if token.kind == Kind::Break {
                    "break"
                } else {
                    "continue"
                };
                let next = self.next_non_space();
                if next.kind != Kind::RightDelim {
                    return Err(self.unexpected(&next, &format!("{{{{{word}}}}}")));
                }
                if self.range_depth == 0 {
                    return Err(self.error_at(token.pos, SyntaxProblem::OutsideRange(word)));
                }
                return Ok(Item::Node(if token.kind == Kind::Break {
                    Node::Break
                } else {
                    Node::Continue
                }));
            }
            Kind::Else => {
                let peek = self.peek_non_space();
                if peek.kind == Kind::If || peek.kind == Kind::With {
                    return Ok(Item::Else(peek.pos));
                }
                let delim = self.expect(Kind::RightDelim, "else")?;
                return Ok(Item::Else(delim.pos));
            }
            Kind::End => {
                let delim = self.expect(Kind::RightDelim, "end")?;
                return Ok(Item::End(delim.pos));
            }
            Kind::If => {
                return self
                    .control("if")
                    .map(|branch| Item::Node(Node::If(branch)));
            }
            Kind::Range => {
                return self
                    .control("range")
                    .map(|branch| Item::Node(Node::Range(branch)));
            }
            Kind::With => {
                return self
                    .control("with")
                    .map(|branch| Item::Node(Node::With(branch)));
            }
            Kind::Template => return self.template_control().map(Item::Node),
            _ => {}
        }
        self.backup();
        let pipe = self.pipeline("command", Kind::RightDelim)?;
        Ok(Item::Node(Node::Action(pipe)))
    }

    fn enter(&mut self) -> Parsed<()> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(SyntaxProblem::TooDeep));
        }
        self.depth += 1;
        Ok(())
    }

    fn control(&mut self, context: &str) -> Parsed<Branch> {
        self.enter()?;
        let result = self.control_inner(context);
        self.depth -= 1;
        result
    }

    fn control_inner(&mut self, context: &str) -> Parsed<Branch> {
        let mark = self.vars.len();
        let pipe = self.pipeline(context, Kind::RightDelim)?;
        if context == "range" {
            self.range_depth += 1;
        }
        let body = self.item_list();
        if context == "range" {
            self.range_depth -= 1;
        }
        let (list, ending) = body?;
        let mut else_list = None;
        if let Ending::Else { .. } = ending {
            // `{{else if x}}` is `{{else}}{{if x}}…{{end}}{{end}}` with the inner end implied.
            let chained = match (context, &self.peek().kind) {
                ("if", Kind::If) => Some(("if", Node::If as fn(Branch) -> Node)),
                ("with", Kind::With) => Some(("with", Node::With as fn(Branch) -> Node)),
                _ => None,
            };
            if let Some((inner, wrap)) = chained {
                self.next();
                else_list = Some(vec![wrap(self.control(inner)?)]);
            } else {
                let (list, ending) = self.item_list()?;
                if let Ending::Else { pos } = ending {
                    return Err(self.error_at(pos, SyntaxProblem::ExpectedEnd("{{else}}".into())));
                }
                else_list = Some(list);
            }
        }
        self.vars.truncate(mark);
        Ok(Branch {
            pipe,
            list,
            else_list,
        })
    }

    fn block_control(&mut self) -> Parsed<Node> {
        const CONTEXT: &str = "block clause";
        let token = self.next_non_space();
        let name = self.template_name(&token, CONTEXT)?;
        let pipe = self.pipeline(CONTEXT, Kind::RightDelim)?;
        let saved_vars = std::mem::replace(&mut self.vars, vec!["$".to_owned()]);
        let saved_range = std::mem::replace(&mut self.range_depth, 0);
        self.enter()?;
        let body = self.item_list();
        self.depth -= 1;
        self.vars = saved_vars;
        self.range_depth = saved_range;
        let (list, ending) = body?;
        if let Ending::Else { pos } = ending {
            return Err(self.error_at(
                pos,
                SyntaxProblem::Unexpected {
                    found: "{{else}}".into(),
                    context: CONTEXT.into(),
                },
            ));
        }
        self.add(&name, list)?;
        Ok(Node::Template(TemplateCall {
            pos: token.pos,
            name,
            pipe: Some(pipe),
        }))
    }

    fn template_control(&mut self) -> Parsed<Node> {
        const CONTEXT: &str = "template clause";
        let token = self.next_non_space();
        let name = self.template_name(&token, CONTEXT)?;
        let pipe = if self.next_non_space().kind == Kind::RightDelim {
            None
        } else {
            self.backup();
            Some(self.pipeline(CONTEXT, Kind::RightDelim)?)
        };
        Ok(Node::Template(TemplateCall {
            pos: token.pos,
            name,
            pipe,
        }))
    }

    fn pipeline(&mut self, context: &str, end: Kind) -> Parsed<Pipe> {
        let start = self.peek_non_space();
        let mut pipe = Pipe {
            pos: start.pos,
            decl: Vec::new(),
            is_assign: false,
            cmds: Vec::new(),
        };
        loop {
            let variable = self.peek_non_space();
            if variable.kind != Kind::Variable {
                break;
            }
            let before = self.index;
            self.next_non_space();
            let next = self.peek_non_space();
            match next.kind {
                Kind::Assign | Kind::Declare => {
                    pipe.is_assign = next.kind == Kind::Assign;
                    self.next_non_space();
                    pipe.decl.push(variable.text.clone());
                    self.vars.push(variable.text);
                    break;
                }
                Kind::Char if next.text == "," => {
                    self.next_non_space();
                    pipe.decl.push(variable.text.clone());
                    self.vars.push(variable.text);
                    if context == "range" && pipe.decl.len() < 2 {
                        match self.peek_non_space().kind {
                            Kind::Variable | Kind::RightDelim | Kind::RightParen => continue,
                            _ => {
                                return Err(
                                    self.error(SyntaxProblem::RangeOnlyInitializesVariables)
                                );
                            }
                        }
                    }
                    return Err(self.error(SyntaxProblem::TooManyDeclarations(context.into())));
                }
                _ => {
                    self.index = before;
                    break;
                }
            }
        }
        loop {
            let token = self.next_non_space();
            if token.kind == end {
                self.check_pipeline(&pipe, context)?;
                return Ok(pipe);
            }
            match token.kind {
                Kind::Bool
                | Kind::CharConstant
                | Kind::Complex
                | Kind::Dot
                | Kind::Field
                | Kind::Identifier
                | Kind::Number
                | Kind::Nil
                | Kind::RawString
                | Kind::String
                | Kind::Variable
                | Kind::LeftParen => {
                    self.backup();
                    let command = self.command()?;
                    pipe.cmds.push(command);
                }
                _ => return Err(self.unexpected(&token, context)),
            }
        }
    }

    fn check_pipeline(&self, pipe: &Pipe, context: &str) -> Parsed<()> {
        if pipe.cmds.is_empty() {
            return Err(self.error(SyntaxProblem::MissingValue(context.into())));
        }
        for (i, command) in pipe.cmds.iter().enumerate().skip(1) {
            if matches!(
                command.args.first(),
                Some(
                    Operand::Bool(..)
                        | Operand::Dot(_)
                        | Operand::Nil(_)
                        | Operand::Number(..)
                        | Operand::String { .. }
                )
            ) {
                return Err(self.error(SyntaxProblem::NonExecutableCommand(i + 1)));
            }
        }
        Ok(())
    }

    fn command(&mut self) -> Parsed<Command> {
        let pos = self.peek_non_space().pos;
        let mut args = Vec::new();
        loop {
            self.peek_non_space();
            if let Some(operand) = self.operand()? {
                args.push(operand);
            }
            let token = self.next();
            match token.kind {
                Kind::Space => continue,
                Kind::RightDelim | Kind::RightParen => self.backup(),
                Kind::Pipe => {}
                _ => return Err(self.unexpected(&token, "operand")),
            }
            break;
        }
        if args.is_empty() {
            return Err(self.error(SyntaxProblem::EmptyCommand));
        }
        Ok(Command { pos, args })
    }

    fn operand(&mut self) -> Parsed<Option<Operand>> {
        let Some(node) = self.term()? else {
            return Ok(None);
        };
        if self.peek().kind != Kind::Field {
            return Ok(Some(node));
        }
        let pos = self.peek().pos;
        let mut fields = Vec::new();
        while self.peek().kind == Kind::Field {
            fields.push(self.next().text[1..].to_owned());
        }
        Ok(Some(match node {
            Operand::Field { mut idents, .. } => {
                idents.extend(fields);
                Operand::Field { pos, idents }
            }
            Operand::Variable { mut idents, .. } => {
                idents.extend(fields);
                Operand::Variable { pos, idents }
            }
            Operand::Bool(..)
            | Operand::String { .. }
            | Operand::Number(..)
            | Operand::Nil(_)
            | Operand::Dot(_) => {
                return Err(self.error(SyntaxProblem::DotAfterTerm(node.to_string())));
            }
            Operand::Chain { .. } | Operand::Identifier { .. } | Operand::Pipe(_) => {
                Operand::Chain {
                    pos,
                    node: Box::new(node),
                    fields,
                }
            }
        }))
    }

    fn term(&mut self) -> Parsed<Option<Operand>> {
        let token = self.next_non_space();
        let pos = token.pos;
        Ok(Some(match token.kind {
            Kind::Identifier => {
                if !functions::is_defined(&token.text) {
                    return Err(self.error(SyntaxProblem::UndefinedFunction(token.text)));
                }
                Operand::Identifier {
                    pos,
                    name: token.text,
                }
            }
            Kind::Dot => Operand::Dot(pos),
            Kind::Nil => Operand::Nil(pos),
            Kind::Variable => {
                if !self.vars.contains(&token.text) {
                    return Err(self.error(SyntaxProblem::UndefinedVariable(token.text)));
                }
                Operand::Variable {
                    pos,
                    idents: vec![token.text],
                }
            }
            Kind::Field => Operand::Field {
                pos,
                idents: vec![token.text[1..].to_owned()],
            },
            Kind::Bool => Operand::Bool(pos, token.text == "true"),
            Kind::CharConstant | Kind::Number | Kind::Complex => {
                Operand::Number(pos, self.number(&token)?)
            }
            Kind::LeftParen => {
                self.enter()?;
                let pipe = self.pipeline("parenthesized pipeline", Kind::RightParen);
                self.depth -= 1;
                Operand::Pipe(Box::new(pipe?))
            }
            Kind::String | Kind::RawString => {
                let Some(text) = unquote(&token.text) else {
                    return Err(self.error(SyntaxProblem::InvalidString));
                };
                Operand::String {
                    pos,
                    quoted: token.text,
                    text,
                }
            }
            _ => {
                self.backup();
                return Ok(None);
            }
        }))
    }

    fn number(&self, token: &Token) -> Parsed<Number> {
        let text = token.text.clone();
        if token.kind == Kind::Complex || text.ends_with('i') {
            return Err(self.error(SyntaxProblem::ComplexNumber(text)));
        }
        if token.kind == Kind::CharConstant {
            let Some(value) = unquote(&text).and_then(|s| s.chars().next()) else {
                return Err(self.error(SyntaxProblem::MalformedCharacter(text)));
            };
            let code = i64::from(u32::from(value));
            return Ok(Number {
                text,
                int: Some(code),
                float: Some(code as f64),
                is_char: true,
                float_syntax: false,
            });
        }
        let is_hex = text.trim_start_matches(['+', '-']).starts_with("0x")
            || text.trim_start_matches(['+', '-']).starts_with("0X");
        let float_syntax = if is_hex {
            text.contains(['p', 'P'])
        } else {
            text.contains(['.', 'e', 'E'])
        };
        let int = parse_go_int(&text);
        if let Some(int) = int {
            return Ok(Number {
                text,
                int: Some(int),
                float: Some(int as f64),
                is_char: false,
                float_syntax,
            });
        }
        if !float_syntax {
            // Too large for int64 (Go would accept it as uint64; templates can't use that).
            return Err(self.error(SyntaxProblem::IllegalNumber(text)));
        }
        let Some(float) = parse_go_float(&text) else {
            return Err(self.error(SyntaxProblem::IllegalNumber(text)));
        };
        let int = (float.fract() == 0.0 && float.abs() < 9.2e18).then_some(float as i64);
        Ok(Number {
            text,
            int,
            float: Some(float),
            is_char: false,
            float_syntax,
        })
    }
}

enum Item {
    Node(Node),
    End(usize),
    Else(usize),
}

/// Go's `strconv.ParseInt(text, 0, 64)`: sign, `0x`/`0o`/`0b`/leading-`0` prefixes and
/// underscores between digits.
fn parse_go_int(text: &str) -> Option<i64> {
    let (negative, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(rest) = lower.strip_prefix("0x") {
        (16, rest.to_owned(), true)
    } else if let Some(rest) = lower.strip_prefix("0o") {
        (8, rest.to_owned(), true)
    } else if let Some(rest) = lower.strip_prefix("0b") {
        (2, rest.to_owned(), true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_owned(), true)
    } else {
        (10, lower.clone(), false)
    };
    let digits = strip_underscores(&digits, prefixed)?;
    if digits.is_empty() {
        return None;
    }
    let magnitude = u64::from_str_radix(&digits, radix).ok()?;
    if negative {
        if magnitude == 1 << 63 {
            return Some(i64::MIN);
        }
        i64::try_from(magnitude).ok().map(|m| -m)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Removes Go digit separators, rejecting misplaced ones (`1__0`, `_1`, `1_`).
fn strip_underscores(digits: &str, prefixed: bool) -> Option<String> {
    if !digits.contains('_') {
        return Some(digits.to_owned());
    }
    let bytes = digits.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'_' {
            let before_ok = if i == 0 {
                prefixed
            } else {
                bytes[i - 1] != b'_'
            };
            let after_ok = i + 1 < bytes.len() && bytes[i + 1] != b'_';
            if !before_ok || !after_ok {
                return None;
            }
        }
    }
    Some(digits.replace('_', ""))
}

/// Go's `strconv.ParseFloat` for decimal literals (hexadecimal floats are not supported).
fn parse_go_float(text: &str) -> Option<f64> {
    let lower = text.trim_start_matches(['+', '-']).to_ascii_lowercase();
    if lower.starts_with("0x") {
        return None;
    }
    let plain = if text.contains('_') {
        strip_underscores(text, false)?
    } else {
        text.to_owned()
    };
    let value: f64 = plain.parse().ok()?;
    value.is_finite().then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_integer_literals() {
        assert_eq!(parse_go_int("0x1F"), Some(31));
        assert_eq!(parse_go_int("0o17"), Some(15));
        assert_eq!(parse_go_int("017"), Some(15));
        assert_eq!(parse_go_int("0b101"), Some(5));
        assert_eq!(parse_go_int("1_000"), Some(1000));
        assert_eq!(parse_go_int("-12"), Some(-12));
        assert_eq!(parse_go_int("1__0"), None);
        assert_eq!(parse_go_int("1.5"), None);
    }
}
