//! Executes a parsed template against a JSON value, following Go's `text/template/exec.go`
//! (variable scoping, pipelines passing their value as the last argument, argument checking,
//! error positions).

use std::borrow::Cow;

use serde_json::{Number, Value};

use crate::error::{ExecutionError, ExecutionProblem, TemplateError};
use crate::functions::{self, Param};
use crate::parse::{Branch, Command, Node, Number as Literal, Operand, Pipe, TemplateCall, Tree};
use crate::value::{Val, print, to_text};

/// `{{template}}` calls nested deeper than this fail. Go allows 100000; this engine recurses on
/// the native stack.
pub(crate) const MAX_TEMPLATE_DEPTH: usize = 100;

/// Blocks, parenthesized pipelines and template calls nested deeper than this, counted across
/// template calls, fail: each level is a native stack frame.
pub(crate) const MAX_NESTING: usize = 250;

/// Where evaluation is, for error messages.
#[derive(Clone, Copy)]
enum At<'t> {
    Start,
    Operand(&'t Operand),
    Command(&'t Command),
    Pipe(&'t Pipe),
    Template(&'t TemplateCall),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Normal,
    Break,
    Continue,
}

pub(crate) struct Exec<'t, 'd, 'o> {
    tree: &'t Tree,
    text: &'t str,
    name: &'t str,
    vars: Vec<(&'t str, Val<'d>)>,
    depth: usize,
    nesting: usize,
    at: At<'t>,
    out: &'o mut String,
    header: bool,
}

type Result<T> = std::result::Result<T, TemplateError>;

/// Renders the main template into `out`. On error, `out` holds what was written before it, as a
/// Go writer would.
pub(crate) fn execute(
    tree: &Tree,
    text: &str,
    data: &Value,
    header: bool,
    out: &mut String,
) -> Result<()> {
    // Go executes nil data as an invalid value, which prints `<no value>`.
    let dot = if data.is_null() {
        Val::Missing
    } else {
        Val::borrowed(data)
    };
    let Some(root) = tree.templates.get("") else {
        return Ok(());
    };
    let mut exec = Exec {
        tree,
        text,
        name: "",
        vars: vec![("$", dot.clone())],
        depth: 0,
        nesting: 0,
        at: At::Start,
        out,
        header,
    };
    exec.walk(&dot, root).map(|_| ())
}

impl<'t, 'd> Exec<'t, 'd, '_> {
    fn fail(&self, problem: ExecutionProblem) -> TemplateError {
        let (pos, context) = match self.at {
            At::Start => (0, String::new()),
            At::Operand(operand) => (operand.pos(), operand.to_string()),
            At::Command(command) => (command.pos, command.to_string()),
            At::Pipe(pipe) => (pipe.pos, pipe.to_string()),
            At::Template(call) => (call.pos, call.to_string()),
        };
        let before = &self.text[..pos.min(self.text.len())];
        let line = 1 + before.matches('\n').count();
        let column = match before.rfind('\n') {
            Some(newline) => pos - newline - 1,
            None => pos,
        };
        TemplateError::Execution(Box::new(ExecutionError {
            line,
            column,
            template: self.name.to_owned(),
            context,
            problem,
        }))
    }

    fn enter(&mut self) -> Result<()> {
        if self.nesting >= MAX_NESTING {
            return Err(self.fail(ExecutionProblem::TooDeeplyNested(MAX_NESTING)));
        }
        self.nesting += 1;
        Ok(())
    }

    fn walk(&mut self, dot: &Val<'d>, list: &'t [Node]) -> Result<Flow> {
        self.enter()?;
        let flow = self.walk_list(dot, list);
        self.nesting -= 1;
        flow
    }

    fn walk_list(&mut self, dot: &Val<'d>, list: &'t [Node]) -> Result<Flow> {
        for node in list {
            let flow = match node {
                Node::Text(text) => {
                    self.out.push_str(text);
                    Flow::Normal
                }
                Node::Action(pipe) => {
                    let value = self.eval_pipeline(dot, pipe)?;
                    if pipe.decl.is_empty() {
                        self.print_value(&value);
                    }
                    Flow::Normal
                }
                Node::If(branch) => self.walk_if_or_with(false, dot, branch)?,
                Node::With(branch) => self.walk_if_or_with(true, dot, branch)?,
                Node::Range(branch) => self.walk_range(dot, branch)?,
                Node::Template(call) => {
                    self.walk_template(dot, call)?;
                    Flow::Normal
                }
                Node::Break => Flow::Break,
                Node::Continue => Flow::Continue,
            };
            if flow != Flow::Normal {
                return Ok(flow);
            }
        }
        Ok(Flow::Normal)
    }

    /// Prints an action's value: `<no value>` for a missing key, `<nil>` for JSON null.
    fn print_value(&mut self, value: &Val<'d>) {
        match value.value() {
            None => self.out.push_str("<no value>"),
            Some(value) => print(value, self.out),
        }
    }

    fn walk_if_or_with(&mut self, with: bool, dot: &Val<'d>, branch: &'t Branch) -> Result<Flow> {
        let mark = self.vars.len();
        let value = self.eval_pipeline(dot, &branch.pipe)?;
        let flow = if value.truth() {
            if with {
                self.walk(&value, &branch.list)?
            } else {
                self.walk(dot, &branch.list)?
            }
        } else if let Some(else_list) = &branch.else_list {
            self.walk(dot, else_list)?
        } else {
            Flow::Normal
        };
        self.vars.truncate(mark);
        Ok(flow)
    }

    fn walk_range(&mut self, dot: &Val<'d>, branch: &'t Branch) -> Result<Flow> {
        let outer = self.vars.len();
        let value = self.eval_pipeline(dot, &branch.pipe)?;
        let mark = self.vars.len();
        let declared = branch.pipe.decl.len();
        let mut iterated = false;
        let mut items: Vec<(Val<'d>, Val<'d>)> = Vec::new();
        match value.value() {
            None | Some(Value::Null) => {}
            Some(Value::Array(array)) => {
                items = (0..array.len())
                    .map(|i| (Val::int(i as i64), value.element(i)))
                    .collect();
            }
            Some(Value::Object(_)) => {
                items = value
                    .entries()
                    .into_iter()
                    .map(|(key, item)| (Val::string(key), item))
                    .collect();
            }
            Some(Value::Number(number)) if number.is_i64() => {
                if declared > 1 {
                    return Err(self.fail(ExecutionProblem::RangeVariables(to_text(
                        &Value::Number(number.clone()),
                    ))));
                }
                let count = number.as_i64().unwrap_or(0);
                for i in 0..count {
                    iterated = true;
                    let flow =
                        self.iteration(&branch.list, declared, mark, Val::int(i), Val::int(i))?;
                    if flow == Flow::Break {
                        break;
                    }
                }
            }
            Some(other) => {
                return Err(self.fail(ExecutionProblem::RangeOver(to_text(other))));
            }
        }
        for (index, item) in items {
            iterated = true;
            let flow = self.iteration(&branch.list, declared, mark, index, item)?;
            if flow == Flow::Break {
                break;
            }
        }
        if !iterated && let Some(else_list) = &branch.else_list {
            self.walk(dot, else_list)?;
        }
        self.vars.truncate(outer);
        Ok(Flow::Normal)
    }

    fn iteration(
        &mut self,
        list: &'t [Node],
        declared: usize,
        mark: usize,
        index: Val<'d>,
        item: Val<'d>,
    ) -> Result<Flow> {
        // The last declared variable is the element, the one before it the index or key.
        if declared > 0
            && let Some(slot) = self.vars.get_mut(mark - 1)
        {
            slot.1 = item.clone();
        }
        if declared > 1
            && let Some(slot) = self.vars.get_mut(mark - 2)
        {
            slot.1 = index;
        }
        let flow = self.walk(&item, list)?;
        self.vars.truncate(mark);
        Ok(flow)
    }

    fn walk_template(&mut self, dot: &Val<'d>, call: &'t TemplateCall) -> Result<()> {
        self.at = At::Template(call);
        let Some((name, list)) = self.tree.templates.get_key_value(&call.name) else {
            return Err(self.fail(ExecutionProblem::UndefinedTemplate(call.name.clone())));
        };
        if self.depth >= MAX_TEMPLATE_DEPTH {
            return Err(self.fail(ExecutionProblem::TooDeep(MAX_TEMPLATE_DEPTH)));
        }
        let new_dot = match &call.pipe {
            Some(pipe) => self.eval_pipeline(dot, pipe)?,
            None => Val::Missing,
        };
        // No dynamic scoping: the template sees only `$`.
        let vars = std::mem::replace(&mut self.vars, vec![("$", new_dot.clone())]);
        let outer_name = std::mem::replace(&mut self.name, name.as_str());
        self.depth += 1;
        let result = self.walk(&new_dot, list);
        self.depth -= 1;
        self.name = outer_name;
        self.vars = vars;
        result.map(|_| ())
    }

    fn eval_pipeline(&mut self, dot: &Val<'d>, pipe: &'t Pipe) -> Result<Val<'d>> {
        self.at = At::Pipe(pipe);
        self.enter()?;
        let value = self.eval_pipeline_commands(dot, pipe);
        self.nesting -= 1;
        value
    }

    fn eval_pipeline_commands(&mut self, dot: &Val<'d>, pipe: &'t Pipe) -> Result<Val<'d>> {
        let mut value = None;
        for command in &pipe.cmds {
            value = Some(self.eval_command(dot, command, value)?);
        }
        let value = value.unwrap_or(Val::Missing);
        for name in &pipe.decl {
            if pipe.is_assign {
                self.set_var(name, value.clone())?;
            } else {
                self.vars.push((name.as_str(), value.clone()));
            }
        }
        Ok(value)
    }

    fn not_a_function(&self, args: &'t [Operand], last: &Option<Val<'d>>) -> Result<()> {
        if args.len() > 1 || last.is_some() {
            return Err(self.fail(ExecutionProblem::NotAFunction(args[0].to_string())));
        }
        Ok(())
    }

    fn eval_command(
        &mut self,
        dot: &Val<'d>,
        command: &'t Command,
        last: Option<Val<'d>>,
    ) -> Result<Val<'d>> {
        let first = &command.args[0];
        match first {
            Operand::Field { idents, .. } => {
                return self.eval_field_node(dot, first, idents, &command.args, last);
            }
            Operand::Chain { .. } => return self.eval_chain(dot, first, &command.args, last),
            Operand::Identifier { name, .. } => {
                return self.eval_function(
                    dot,
                    first,
                    name,
                    At::Command(command),
                    &command.args,
                    last,
                );
            }
            Operand::Pipe(pipe) => {
                self.not_a_function(&command.args, &last)?;
                return self.eval_pipeline(dot, pipe);
            }
            Operand::Variable { .. } => {
                return self.eval_variable(dot, first, &command.args, last);
            }
            Operand::Dot(_)
            | Operand::Nil(_)
            | Operand::Bool(..)
            | Operand::Number(..)
            | Operand::String { .. } => {}
        }
        self.at = At::Operand(first);
        self.not_a_function(&command.args, &last)?;
        match first {
            Operand::Bool(_, value) => Ok(Val::bool(*value)),
            Operand::Dot(_) => Ok(dot.clone()),
            Operand::Number(_, number) => self.ideal_constant(number),
            Operand::String { text, .. } => Ok(Val::string(text.clone())),
            Operand::Nil(_)
            | Operand::Field { .. }
            | Operand::Variable { .. }
            | Operand::Chain { .. }
            | Operand::Identifier { .. }
            | Operand::Pipe(_) => Err(self.fail(ExecutionProblem::NilCommand)),
        }
    }

    /// A number literal where no type is imposed: `'a'` and `0x10` are ints, `1.5` and `1e3`
    /// are floats.
    fn ideal_constant(&self, number: &Literal) -> Result<Val<'d>> {
        if number.float_syntax && !number.is_char {
            let float = number.float.unwrap_or_default();
            return Ok(
                Number::from_f64(float).map_or(Val::Missing, |n| Val::owned(Value::Number(n)))
            );
        }
        match number.int {
            Some(int) => Ok(Val::int(int)),
            None => Err(self.fail(ExecutionProblem::Overflow(number.text.clone()))),
        }
    }

    fn eval_field_node(
        &mut self,
        dot: &Val<'d>,
        node: &'t Operand,
        idents: &'t [String],
        args: &'t [Operand],
        last: Option<Val<'d>>,
    ) -> Result<Val<'d>> {
        self.at = At::Operand(node);
        self.eval_field_chain(dot.clone(), false, idents, args, last)
    }

    fn eval_chain(
        &mut self,
        dot: &Val<'d>,
        node: &'t Operand,
        args: &'t [Operand],
        last: Option<Val<'d>>,
    ) -> Result<Val<'d>> {
        self.at = At::Operand(node);
        let Operand::Chain {
            node: inner,
            fields,
            ..
        } = node
        else {
            return Ok(Val::Missing);
        };
        if matches!(inner.as_ref(), Operand::Nil(_)) {
            return Err(self.fail(ExecutionProblem::NilIndirection(node.to_string())));
        }
        let receiver = self.eval_arg(dot, None, inner)?;
        self.at = At::Operand(node);
        self.eval_field_chain(receiver, false, fields, args, last)
    }

    fn eval_variable(
        &mut self,
        _dot: &Val<'d>,
        node: &'t Operand,
        args: &'t [Operand],
        last: Option<Val<'d>>,
    ) -> Result<Val<'d>> {
        self.at = At::Operand(node);
        let Operand::Variable { idents, .. } = node else {
            return Ok(Val::Missing);
        };
        let value = self.var_value(&idents[0])?;
        if idents.len() == 1 {
            self.not_a_function(args, &last)?;
            return Ok(value);
        }
        self.eval_field_chain(value, false, &idents[1..], args, last)
    }

    /// `.X.Y.Z`, possibly with arguments (which only methods could take, and JSON has none).
    fn eval_field_chain(
        &mut self,
        mut receiver: Val<'d>,
        boxed: bool,
        idents: &'t [String],
        args: &'t [Operand],
        last: Option<Val<'d>>,
    ) -> Result<Val<'d>> {
        let n = idents.len();
        for (i, ident) in idents.iter().enumerate() {
            let final_field = i + 1 == n;
            let has_args = final_field && (args.len() > 1 || last.is_some());
            // Values looked up in an object are `interface {}` in Go's eyes.
            receiver = self.eval_field(ident, has_args, receiver, boxed || i > 0)?;
        }
        Ok(receiver)
    }

    fn eval_field(
        &self,
        field: &str,
        has_args: bool,
        receiver: Val<'d>,
        boxed: bool,
    ) -> Result<Val<'d>> {
        let type_name = |value: &Value| {
            if boxed {
                "interface {}".to_owned()
            } else {
                crate::value::type_name(value).to_owned()
            }
        };
        match receiver.value() {
            None => Ok(Val::Missing),
            Some(Value::Null) => Err(self.fail(ExecutionProblem::NilPointer {
                type_name: "interface {}".to_owned(),
                field: field.to_owned(),
            })),
            Some(Value::Object(_)) => {
                if has_args {
                    return Err(self.fail(ExecutionProblem::FieldWithArguments(field.to_owned())));
                }
                Ok(receiver.field(field).unwrap_or(Val::Missing))
            }
            Some(other) => Err(self.fail(ExecutionProblem::NoField {
                field: field.to_owned(),
                type_name: type_name(other),
            })),
        }
    }

    fn var_value(&self, name: &str) -> Result<Val<'d>> {
        match self.vars.iter().rev().find(|(var, _)| *var == name) {
            Some((_, value)) => Ok(value.clone()),
            None => Err(self.fail(ExecutionProblem::UndefinedVariable(name.to_owned()))),
        }
    }

    fn set_var(&mut self, name: &str, value: Val<'d>) -> Result<()> {
        match self.vars.iter_mut().rev().find(|(var, _)| *var == name) {
            Some(slot) => {
                slot.1 = value;
                Ok(())
            }
            None => Err(self.fail(ExecutionProblem::UndefinedVariable(name.to_owned()))),
        }
    }

    fn eval_function(
        &mut self,
        dot: &Val<'d>,
        node: &'t Operand,
        name: &'t str,
        call_site: At<'t>,
        args: &'t [Operand],
        last: Option<Val<'d>>,
    ) -> Result<Val<'d>> {
        self.at = At::Operand(node);
        let signature = functions::signature(name, self.header);
        let args = args.get(1..).unwrap_or_default();
        let count = args.len() + usize::from(last.is_some());
        let fixed = signature.fixed.len();
        if signature.variadic.is_some() {
            if count < fixed {
                return Err(self.fail(ExecutionProblem::WrongArgumentCount {
                    function: name.to_owned(),
                    want: fixed,
                    got: args.len(),
                    at_least: true,
                }));
            }
        } else if count != fixed {
            return Err(self.fail(ExecutionProblem::WrongArgumentCount {
                function: name.to_owned(),
                want: fixed,
                got: count,
                at_least: false,
            }));
        }
        let param = |i: usize| -> Param {
            signature
                .fixed
                .get(i)
                .copied()
                .or(signature.variadic)
                .unwrap_or(Param::Any)
        };

        // `and` and `or` stop evaluating at the first argument that decides the result.
        if name == "and" || name == "or" {
            let mut value = Val::Missing;
            for arg in args {
                value = self.eval_arg(dot, Some(Param::Value), arg)?;
                if value.truth() == (name == "or") {
                    return Ok(value);
                }
            }
            if let Some(last) = last {
                value = last;
            }
            return Ok(value);
        }

        let mut argv = Vec::with_capacity(count);
        for (i, arg) in args.iter().enumerate() {
            argv.push(self.eval_arg(dot, Some(param(i)), arg)?);
        }
        if let Some(last) = last {
            argv.push(self.validate(last, param(args.len()))?);
        }
        if name == "call" {
            self.at = call_site;
            let callee = args.first().map(ToString::to_string).unwrap_or_default();
            let problem = if argv[0].is_nil() {
                crate::error::CallProblem::CallOfNil
            } else {
                crate::error::CallProblem::NotAFunction {
                    name: callee,
                    type_name: argv[0].type_name().to_owned(),
                }
            };
            return Err(self.fail(ExecutionProblem::Call {
                function: name.to_owned(),
                problem,
            }));
        }
        functions::call(name, argv, self.header).map_err(|problem| {
            self.at = call_site;
            self.fail(ExecutionProblem::Call {
                function: name.to_owned(),
                problem,
            })
        })
    }

    /// Evaluates an argument for a parameter of type `param` (`None`: no type, as for the
    /// receiver of a chain).
    fn eval_arg(
        &mut self,
        dot: &Val<'d>,
        param: Option<Param>,
        node: &'t Operand,
    ) -> Result<Val<'d>> {
        self.at = At::Operand(node);
        let value = match node {
            Operand::Dot(_) => dot.clone(),
            Operand::Nil(_) => {
                return match param {
                    None | Some(Param::Any) => Ok(Val::owned(Value::Null)),
                    Some(Param::Value) => Ok(Val::Missing),
                    Some(Param::StrList) => Ok(Val::owned(Value::Array(Vec::new()))),
                    Some(typed @ (Param::Str | Param::Int)) => {
                        Err(self.fail(ExecutionProblem::NilArgument(typed.go_name())))
                    }
                };
            }
            Operand::Field { idents, .. } => {
                self.eval_field_node(dot, node, idents, std::slice::from_ref(node), None)?
            }
            Operand::Variable { .. } => self.eval_variable(dot, node, &[], None)?,
            Operand::Pipe(pipe) => self.eval_pipeline(dot, pipe)?,
            Operand::Identifier { name, .. } => {
                self.eval_function(dot, node, name, At::Operand(node), &[], None)?
            }
            Operand::Chain { .. } => self.eval_chain(dot, node, &[], None)?,
            Operand::Bool(_, value) => match param {
                None | Some(Param::Any | Param::Value) => Val::bool(*value),
                Some(Param::Str) => return Err(self.wrong_literal("string", node)),
                Some(Param::Int) => return Err(self.wrong_literal("integer", node)),
                Some(Param::StrList) => return Err(self.unhandled(node, Param::StrList)),
            },
            Operand::Number(_, number) => match param {
                None | Some(Param::Any | Param::Value) => self.ideal_constant(number)?,
                Some(Param::Int) => match number.int {
                    Some(int) => Val::int(int),
                    None => return Err(self.wrong_literal("integer", node)),
                },
                Some(Param::Str) => return Err(self.wrong_literal("string", node)),
                Some(Param::StrList) => return Err(self.unhandled(node, Param::StrList)),
            },
            Operand::String { text, .. } => match param {
                None | Some(Param::Any | Param::Value | Param::Str) => Val::string(text.clone()),
                Some(Param::Int) => return Err(self.wrong_literal("integer", node)),
                Some(Param::StrList) => return Err(self.unhandled(node, Param::StrList)),
            },
        };
        match param {
            None => Ok(value),
            Some(param) => {
                self.at = At::Operand(node);
                self.validate(value, param)
            }
        }
    }

    fn wrong_literal(&self, expected: &'static str, node: &Operand) -> TemplateError {
        self.fail(ExecutionProblem::WrongLiteral {
            expected,
            found: node.to_string(),
        })
    }

    fn unhandled(&self, node: &Operand, param: Param) -> TemplateError {
        self.fail(ExecutionProblem::UnhandledArgument {
            node: node.to_string(),
            expected: param.go_name(),
        })
    }

    /// Go's `validateType`: checks that a computed value fits a typed parameter.
    fn validate(&self, value: Val<'d>, param: Param) -> Result<Val<'d>> {
        let wrong = |found: &str| {
            self.fail(ExecutionProblem::WrongType {
                expected: param.go_name(),
                found: found.to_owned(),
            })
        };
        match param {
            Param::Value => Ok(value),
            // An untyped nil.
            Param::Any if value.is_nil() => Ok(Val::Present(Cow::Owned(Value::Null))),
            Param::Any => Ok(value),
            Param::StrList if value.is_nil() => Ok(Val::owned(Value::Array(Vec::new()))),
            Param::Str | Param::Int if value.is_nil() => {
                Err(self.fail(ExecutionProblem::InvalidValue(param.go_name())))
            }
            Param::Str => match value.value() {
                Some(Value::String(_)) => Ok(value),
                _ => Err(wrong(value.type_name())),
            },
            Param::Int => match value.as_int() {
                Some(_) => Ok(value),
                None => Err(wrong(value.type_name())),
            },
            Param::StrList => match value.value() {
                Some(Value::Array(items)) if items.iter().all(Value::is_string) => Ok(value),
                _ => Err(wrong(value.type_name())),
            },
        }
    }
}
