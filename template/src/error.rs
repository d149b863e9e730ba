//! Typed template errors whose `Display` is the text Go's text/template prints.
//!
//! Parse errors name the line (`template: :1: unexpected "}" in operand`); execution errors name
//! line, byte column, the template being executed and the node being evaluated
//! (`template: :1:6: executing "" at <.Foo.Bar>: can't evaluate field Bar in type string`).
//! The template name is always empty: docker parses `--format` with `template.New("")`.

use crate::quote::go_quote;

/// A template that could not be parsed or executed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The text is not a valid template. `line` is 1-based.
    #[error("template: :{line}: {problem}")]
    Syntax { line: usize, problem: SyntaxProblem },
    /// Rendering failed.
    #[error(transparent)]
    Execution(Box<ExecutionError>),
}

/// Where and why rendering failed. `line` is 1-based and `column` is the 0-based byte offset
/// in the line, as Go reports them; `template` is the `define`d template being executed (empty
/// for the main one) and `context` is the source text of the node being evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "template: :{line}:{column}: executing {} at <{context}>: {problem}",
    go_quote(.template)
)]
pub struct ExecutionError {
    pub line: usize,
    pub column: usize,
    pub template: String,
    pub context: String,
    pub problem: ExecutionProblem,
}

/// Why a template's text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxProblem {
    /// A lexical error; `action_line` is the line where the action opened, when different.
    #[error("{problem}{}", started_at(problem, *action_line))]
    Lexical {
        problem: LexicalProblem,
        action_line: Option<usize>,
    },
    /// A token that cannot appear here; `found` is spelt as Go spells tokens (`"}"`, `<end>`).
    #[error("unexpected {found} in {context}")]
    Unexpected { found: String, context: String },
    /// `{{end}}` or `{{else}}` with nothing to close.
    #[error("unexpected {0}")]
    UnexpectedControl(String),
    /// The text ended inside `if`, `range`, `with`, `define` or `block`.
    #[error("unexpected EOF")]
    UnexpectedEof,
    /// Something other than `{{end}}` closed an `else` branch.
    #[error("expected end; found {0}")]
    ExpectedEnd(String),
    #[error("function {} not defined", go_quote(.0))]
    UndefinedFunction(String),
    #[error("undefined variable {}", go_quote(.0))]
    UndefinedVariable(String),
    #[error("empty command")]
    EmptyCommand,
    /// `{{if}}`, `{{range}}`, `{{}}` and friends without a pipeline.
    #[error("missing value for {0}")]
    MissingValue(String),
    /// A literal (or `.`) after `|`, which cannot receive the piped value.
    #[error("non executable command in pipeline stage {0}")]
    NonExecutableCommand(usize),
    #[error("too many declarations in {0}")]
    TooManyDeclarations(String),
    #[error("range can only initialize variables")]
    RangeOnlyInitializesVariables,
    /// A field access on a literal, as in `{{"a".B}}`.
    #[error("unexpected . after term {}", go_quote(.0))]
    DotAfterTerm(String),
    #[error("illegal number syntax: {}", go_quote(.0))]
    IllegalNumber(String),
    /// A complex or imaginary number literal, which this engine does not support.
    #[error("complex numbers are not supported: {}", go_quote(.0))]
    ComplexNumber(String),
    #[error("malformed character constant: {0}")]
    MalformedCharacter(String),
    /// A string literal with an invalid escape (Go's `strconv.Unquote` error).
    #[error("invalid syntax")]
    InvalidString,
    #[error("{{{{{0}}}}} outside {{{{range}}}}")]
    OutsideRange(&'static str),
    #[error("template: multiple definition of template {}", go_quote(.0))]
    MultipleDefinition(String),
    /// Parentheses or control structures nested deeper than the engine allows.
    #[error("max expression depth exceeded")]
    TooDeep,
}

fn started_at(problem: &LexicalProblem, action_line: Option<usize>) -> String {
    match action_line {
        None => String::new(),
        Some(line) if problem.to_string().ends_with(" action") => format!(" started at :{line}"),
        Some(line) => format!(" in action started at :{line}"),
    }
}

/// Errors found while splitting the text into tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LexicalProblem {
    #[error("unclosed action")]
    UnclosedAction,
    #[error("unclosed comment")]
    UnclosedComment,
    #[error("comment ends before closing delimiter")]
    CommentEndsBeforeDelimiter,
    #[error("unclosed left paren")]
    UnclosedLeftParen,
    #[error("unexpected right paren U+0029 ')'")]
    UnexpectedRightParen,
    #[error("expected :=")]
    ExpectedDeclare,
    #[error("unrecognized character in action: {}", unicode_name(*.0))]
    UnrecognizedCharacter(char),
    #[error("bad character {}", unicode_name(*.0))]
    BadCharacter(char),
    #[error("bad number syntax: {}", go_quote(.0))]
    BadNumber(String),
    #[error("unterminated quoted string")]
    UnterminatedString,
    #[error("unterminated raw quoted string")]
    UnterminatedRawString,
    #[error("unterminated character constant")]
    UnterminatedCharacter,
}

/// Go's `%#U`: `U+0041 'A'`.
fn unicode_name(c: char) -> String {
    format!("U+{:04X} '{c}'", u32::from(c))
}

/// Why rendering failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecutionProblem {
    /// `.Field` on something that is neither an object nor nil.
    #[error("can't evaluate field {field} in type {type_name}")]
    NoField { field: String, type_name: String },
    /// `.Key arg` on an object: object values are not methods.
    /// `.Field` on an explicit `null` (Go: a nil `interface {}`).
    #[error("nil pointer evaluating {type_name}.{field}")]
    NilPointer { type_name: String, field: String },
    #[error("{0} is not a method but has arguments")]
    FieldWithArguments(String),
    #[error("can't give argument to non-function {0}")]
    NotAFunction(String),
    #[error("nil is not a command")]
    NilCommand,
    #[error("indirection through explicit nil in {0}")]
    NilIndirection(String),
    #[error("wrong number of args for {function}: want {}{want} got {got}", if *.at_least { "at least " } else { "" })]
    WrongArgumentCount {
        function: String,
        want: usize,
        got: usize,
        at_least: bool,
    },
    /// A literal of the wrong kind for a typed parameter (`expected integer; found "a"`).
    #[error("expected {expected}; found {found}")]
    WrongLiteral {
        expected: &'static str,
        found: String,
    },
    /// A value of the wrong Go type for a typed parameter.
    #[error("wrong type for value; expected {expected}; got {found}")]
    WrongType {
        expected: &'static str,
        found: String,
    },
    /// A missing value or nil where a typed parameter needs a value.
    #[error("invalid value; expected {0}")]
    InvalidValue(&'static str),
    #[error("cannot assign nil to {0}")]
    NilArgument(&'static str),
    #[error("can't handle {node} for arg of type {expected}")]
    UnhandledArgument {
        node: String,
        expected: &'static str,
    },
    /// A function returned an error.
    #[error("error calling {function}: {problem}")]
    Call {
        function: String,
        problem: CallProblem,
    },
    #[error("range can't iterate over {0}")]
    RangeOver(String),
    #[error("can't use {0} to iterate over more than one variable")]
    RangeVariables(String),
    #[error("template {} not defined", go_quote(.0))]
    UndefinedTemplate(String),
    #[error("exceeded maximum template depth ({0})")]
    TooDeep(usize),
    /// Blocks and template calls nested beyond this engine's limit (Go has none).
    #[error("exceeded maximum nesting depth ({0})")]
    TooDeeplyNested(usize),
    #[error("{0} overflows int")]
    Overflow(String),
    #[error("undefined variable: {0}")]
    UndefinedVariable(String),
}

/// Errors returned by builtin and docker functions (the part after `error calling f: `).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallProblem {
    #[error("index out of range: {0}")]
    IndexOutOfRange(i64),
    #[error("index of untyped nil")]
    IndexOfNil,
    #[error("index of nil pointer")]
    IndexOfNilPointer,
    #[error("cannot index slice/array with nil")]
    IndexWithNil,
    #[error("cannot index slice/array with type {0}")]
    IndexWithType(String),
    #[error("can't index item of type {0}")]
    CannotIndex(String),
    #[error("value is nil; should be of type {0}")]
    NilKey(String),
    #[error("non-comparable type {value}: {type_name}")]
    NonComparable { value: String, type_name: String },
    #[error("strings: negative Repeat count")]
    NegativeRepeat,
    #[error("value has type {found}; should be {expected}")]
    KeyType { found: String, expected: String },
    #[error("slice of untyped nil")]
    SliceOfNil,
    #[error("can't slice item of type {0}")]
    CannotSlice(String),
    #[error("too many slice indexes: {0}")]
    TooManySliceIndexes(usize),
    #[error("cannot 3-index slice a string")]
    ThreeIndexString,
    #[error("invalid slice index: {0} > {1}")]
    InvalidSliceIndex(i64, i64),
    #[error("len of nil pointer")]
    LenOfNil,
    #[error("len of type {0}")]
    LenOfType(String),
    #[error("invalid type for comparison")]
    BadComparisonType,
    #[error("incompatible types for comparison")]
    BadComparison,
    #[error("missing argument for comparison")]
    NoComparison,
    #[error("call of nil")]
    CallOfNil,
    #[error("non-function {name} of type {type_name}")]
    NotAFunction { name: String, type_name: String },
    /// Go's runtime panic for `truncate` with a negative length, recovered by text/template.
    #[error("runtime error: slice bounds out of range [:{0}]")]
    SliceBounds(i64),
}
