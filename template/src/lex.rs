//! Splits template text into tokens, as Go's `text/template/parse` lexer does.
//!
//! Trim markers (`{{- ` and ` -}}`) are applied here, to the neighbouring text, and comments are
//! dropped. A lexical error ends the token stream with a [`Kind::Error`] token, which the parser
//! reports when it reaches it (so earlier syntax errors win, as in Go).

use crate::error::LexicalProblem;

const LEFT: &str = "{{";
const RIGHT: &str = "}}";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    LeftDelim,
    RightDelim,
    Space,
    Declare,
    Assign,
    Pipe,
    LeftParen,
    RightParen,
    /// Any other printable ASCII character, such as `,`.
    Char,
    String,
    RawString,
    CharConstant,
    Number,
    Complex,
    Bool,
    Field,
    Identifier,
    Variable,
    Eof,
    Error(LexicalProblem),
    // Keywords.
    Dot,
    Block,
    Break,
    Continue,
    Define,
    Else,
    End,
    If,
    Nil,
    Range,
    Template,
    With,
}

impl Kind {
    fn keyword(word: &str) -> Option<Kind> {
        Some(match word {
            "." => Kind::Dot,
            "block" => Kind::Block,
            "break" => Kind::Break,
            "continue" => Kind::Continue,
            "define" => Kind::Define,
            "else" => Kind::Else,
            "end" => Kind::End,
            "if" => Kind::If,
            "nil" => Kind::Nil,
            "range" => Kind::Range,
            "template" => Kind::Template,
            "with" => Kind::With,
            _ => return None,
        })
    }

    fn is_keyword(&self) -> bool {
        matches!(
            self,
            Kind::Dot
                | Kind::Block
                | Kind::Break
                | Kind::Continue
                | Kind::Define
                | Kind::Else
                | Kind::End
                | Kind::If
                | Kind::Nil
                | Kind::Range
                | Kind::Template
                | Kind::With
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) kind: Kind,
    /// Byte offset of the token in the template text.
    pub(crate) pos: usize,
    pub(crate) text: String,
}

impl Token {
    /// Go's `item.String()`, used in "unexpected X in Y" messages.
    #[allow(clippy::wildcard_enum_match_arm)] // Every other kind is quoted text.
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            Kind::Eof => "EOF".to_owned(),
            Kind::Error(problem) => problem.to_string(),
            kind if kind.is_keyword() => format!("<{}>", self.text),
            _ if self.text.chars().count() > 10 => {
                format!("{}...", crate::quote::go_quote_prefix(&self.text, 10))
            }
            _ => crate::quote::go_quote(&self.text),
        }
    }
}

/// Go's template `isSpace`: space, tab, carriage return and newline.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_alphanumeric(c: char) -> bool {
    c == '_' || c.is_alphabetic() || c.is_numeric()
}

fn has_left_trim_marker(rest: &str) -> bool {
    let mut chars = rest.chars();
    chars.next() == Some('-') && chars.next().is_some_and(is_space)
}

/// ` -}}` at the start of `rest`.
fn has_right_trim_marker(rest: &str) -> bool {
    let mut chars = rest.chars();
    chars.next().is_some_and(is_space) && rest[1..].starts_with('-') && rest[2..].starts_with(RIGHT)
}

struct Lexer<'a> {
    input: &'a str,
    pos: usize,
    start: usize,
    paren_depth: usize,
    tokens: Vec<Token>,
}

/// Tokenizes the whole text. The last token is `Eof` or `Error`.
pub(crate) fn lex(input: &str) -> Vec<Token> {
    let mut lexer = Lexer {
        input,
        pos: 0,
        start: 0,
        paren_depth: 0,
        tokens: Vec::new(),
    };
    lexer.run();
    lexer.tokens
}

impl Lexer<'_> {
    fn rest(&self) -> &str {
        &self.input[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn emit(&mut self, kind: Kind) {
        self.tokens.push(Token {
            kind,
            pos: self.start,
            text: self.input[self.start..self.pos].to_owned(),
        });
        self.start = self.pos;
    }

    fn emit_text(&mut self, end: usize, trim_right: bool) {
        let mut text = &self.input[self.start..end];
        if trim_right {
            text = text.trim_end_matches(is_space);
        }
        if !text.is_empty() {
            self.tokens.push(Token {
                kind: Kind::Text,
                pos: self.start,
                text: text.to_owned(),
            });
        }
    }

    fn fail(&mut self, problem: LexicalProblem) {
        self.tokens.push(Token {
            kind: Kind::Error(problem),
            pos: self.start,
            text: String::new(),
        });
    }

    fn accept(&mut self, valid: &str) -> bool {
        match self.peek() {
            Some(c) if valid.contains(c) => {
                self.pos += c.len_utf8();
                true
            }
            _ => false,
        }
    }

    fn accept_run(&mut self, valid: &str) {
        while self.accept(valid) {}
    }

    /// Returns whether the input continues with a right delimiter, and whether it is trimmed.
    fn at_right_delim(&self) -> (bool, bool) {
        if has_right_trim_marker(self.rest()) {
            return (true, true);
        }
        (self.rest().starts_with(RIGHT), false)
    }

    fn run(&mut self) {
        loop {
            // Text up to the next action.
            let Some(offset) = self.rest().find(LEFT) else {
                self.emit_text(self.input.len(), false);
                self.start = self.input.len();
                self.pos = self.start;
                self.emit(Kind::Eof);
                return;
            };
            let delim = self.pos + offset;
            let trim = has_left_trim_marker(&self.input[delim + LEFT.len()..]);
            self.emit_text(delim, trim);
            self.start = delim;
            self.pos = delim + LEFT.len();
            let after_marker = if trim { self.pos + 2 } else { self.pos };
            if self.input[after_marker..].starts_with("/*") {
                self.pos = after_marker;
                if !self.comment() {
                    return;
                }
                continue;
            }
            self.emit(Kind::LeftDelim);
            self.pos = after_marker;
            self.start = self.pos;
            self.paren_depth = 0;
            if !self.inside_action() {
                return;
            }
        }
    }

    /// Skips a comment; `pos` is at `/*`. Returns false after an error.
    fn comment(&mut self) -> bool {
        self.pos += 2;
        let Some(end) = self.rest().find("*/") else {
            self.fail(LexicalProblem::UnclosedComment);
            return false;
        };
        self.pos += end + 2;
        let (delim, trim) = self.at_right_delim();
        if !delim {
            self.fail(LexicalProblem::CommentEndsBeforeDelimiter);
            return false;
        }
        if trim {
            self.pos += 2;
        }
        self.pos += RIGHT.len();
        if trim {
            self.skip_leading_space();
        }
        self.start = self.pos;
        true
    }

    fn skip_leading_space(&mut self) {
        let trimmed = self.rest().trim_start_matches(is_space);
        self.pos = self.input.len() - trimmed.len();
    }

    /// Lexes one action up to and including its right delimiter. Returns false after an error.
    fn inside_action(&mut self) -> bool {
        loop {
            let (delim, trim) = self.at_right_delim();
            if delim {
                if self.paren_depth != 0 {
                    self.fail(LexicalProblem::UnclosedLeftParen);
                    return false;
                }
                if trim {
                    self.pos += 2;
                    self.start = self.pos;
                }
                self.pos += RIGHT.len();
                self.emit(Kind::RightDelim);
                if trim {
                    self.skip_leading_space();
                }
                self.start = self.pos;
                return true;
            }
            let Some(c) = self.next() else {
                self.fail(LexicalProblem::UnclosedAction);
                return false;
            };
            let ok = match c {
                c if is_space(c) => {
                    self.space();
                    true
                }
                '=' => {
                    self.emit(Kind::Assign);
                    true
                }
                ':' => {
                    if self.next() != Some('=') {
                        self.fail(LexicalProblem::ExpectedDeclare);
                        return false;
                    }
                    self.emit(Kind::Declare);
                    true
                }
                '|' => {
                    self.emit(Kind::Pipe);
                    true
                }
                '"' => self.quote(),
                '`' => self.raw_quote(),
                '$' => self.field_or_variable(Kind::Variable),
                '\'' => self.char_constant(),
                '.' if !self.peek().is_some_and(|c| c.is_ascii_digit()) => {
                    self.field_or_variable(Kind::Field)
                }
                '.' | '+' | '-' | '0'..='9' => {
                    self.pos = self.start;
                    self.number()
                }
                c if is_alphanumeric(c) => self.identifier(),
                '(' => {
                    self.emit(Kind::LeftParen);
                    self.paren_depth += 1;
                    true
                }
                ')' => {
                    self.emit(Kind::RightParen);
                    if self.paren_depth == 0 {
                        self.fail(LexicalProblem::UnexpectedRightParen);
                        return false;
                    }
                    self.paren_depth -= 1;
                    true
                }
                c if c.is_ascii() && !c.is_ascii_control() => {
                    self.emit(Kind::Char);
                    true
                }
                c => {
                    self.fail(LexicalProblem::UnrecognizedCharacter(c));
                    false
                }
            };
            if !ok {
                return false;
            }
        }
    }

    /// A run of spaces; the space of a ` -}}` trim marker is not part of it.
    fn space(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.next();
        }
        if self.pos > self.start && has_right_trim_marker(&self.input[self.pos - 1..]) {
            self.pos -= 1;
            if self.pos == self.start {
                return;
            }
        }
        self.emit(Kind::Space);
    }

    fn at_terminator(&self) -> bool {
        match self.peek() {
            None => true,
            Some(c) if is_space(c) => true,
            Some('.' | ',' | '|' | ':' | ')' | '(' | '}') => true,
            Some(_) => false,
        }
    }

    fn identifier(&mut self) -> bool {
        while self.peek().is_some_and(is_alphanumeric) {
            self.next();
        }
        if !self.at_terminator() {
            let c = self.peek().unwrap_or(' ');
            self.fail(LexicalProblem::BadCharacter(c));
            return false;
        }
        let word = &self.input[self.start..self.pos];
        let kind = match Kind::keyword(word) {
            Some(kind) => kind,
            None if word == "true" || word == "false" => Kind::Bool,
            None => Kind::Identifier,
        };
        self.emit(kind);
        true
    }

    /// `.Field`, `$var`, `.` or `$`; the `.` or `$` has been consumed.
    fn field_or_variable(&mut self, kind: Kind) -> bool {
        if self.at_terminator() {
            self.emit(if kind == Kind::Variable {
                Kind::Variable
            } else {
                Kind::Dot
            });
            return true;
        }
        while self.peek().is_some_and(is_alphanumeric) {
            self.next();
        }
        if !self.at_terminator() {
            let c = self.peek().unwrap_or(' ');
            self.fail(LexicalProblem::BadCharacter(c));
            return false;
        }
        self.emit(kind);
        true
    }

    fn char_constant(&mut self) -> bool {
        loop {
            match self.next() {
                Some('\\') => match self.next() {
                    Some(c) if c != '\n' => {}
                    _ => {
                        self.fail(LexicalProblem::UnterminatedCharacter);
                        return false;
                    }
                },
                None | Some('\n') => {
                    self.fail(LexicalProblem::UnterminatedCharacter);
                    return false;
                }
                Some('\'') => break,
                Some(_) => {}
            }
        }
        self.emit(Kind::CharConstant);
        true
    }

    fn quote(&mut self) -> bool {
        loop {
            match self.next() {
                Some('\\') => match self.next() {
                    Some(c) if c != '\n' => {}
                    _ => {
                        self.fail(LexicalProblem::UnterminatedString);
                        return false;
                    }
                },
                None | Some('\n') => {
                    self.fail(LexicalProblem::UnterminatedString);
                    return false;
                }
                Some('"') => break,
                Some(_) => {}
            }
        }
        self.emit(Kind::String);
        true
    }

    fn raw_quote(&mut self) -> bool {
        loop {
            match self.next() {
                None => {
                    self.fail(LexicalProblem::UnterminatedRawString);
                    return false;
                }
                Some('`') => break,
                Some(_) => {}
            }
        }
        self.emit(Kind::RawString);
        true
    }

    fn number(&mut self) -> bool {
        if !self.scan_number() {
            let text = self.input[self.start..self.pos].to_owned();
            self.fail(LexicalProblem::BadNumber(text));
            return false;
        }
        if matches!(self.peek(), Some('+' | '-')) {
            // Complex: 1+2i. No spaces, must end in 'i'.
            if !self.scan_number() || !self.input[..self.pos].ends_with('i') {
                let text = self.input[self.start..self.pos].to_owned();
                self.fail(LexicalProblem::BadNumber(text));
                return false;
            }
            self.emit(Kind::Complex);
        } else {
            self.emit(Kind::Number);
        }
        true
    }

    fn scan_number(&mut self) -> bool {
        self.accept("+-");
        let mut digits = "0123456789_";
        if self.accept("0") {
            if self.accept("xX") {
                digits = "0123456789abcdefABCDEF_";
            } else if self.accept("oO") {
                digits = "01234567_";
            } else if self.accept("bB") {
                digits = "01_";
            }
        }
        self.accept_run(digits);
        if self.accept(".") {
            self.accept_run(digits);
        }
        if digits.len() == 11 && self.accept("eE") {
            self.accept("+-");
            self.accept_run("0123456789_");
        }
        if digits.len() == 23 && self.accept("pP") {
            self.accept("+-");
            self.accept_run("0123456789_");
        }
        self.accept("i");
        if self.peek().is_some_and(is_alphanumeric) {
            self.next();
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<Kind> {
        lex(text).into_iter().map(|token| token.kind).collect()
    }

    #[test]
    fn trim_markers_eat_neighbouring_space() {
        let tokens = lex("a  {{- .X -}}  b");
        let texts: Vec<&str> = tokens.iter().map(|token| token.text.as_str()).collect();
        assert_eq!(texts, ["a", "{{", ".X", "}}", "b", ""]);
    }

    #[test]
    fn minus_without_space_is_a_number() {
        assert_eq!(
            kinds("{{-3}}"),
            [Kind::LeftDelim, Kind::Number, Kind::RightDelim, Kind::Eof]
        );
    }

    #[test]
    fn fields_split_at_dots() {
        assert_eq!(
            kinds("{{.A.B}}"),
            [
                Kind::LeftDelim,
                Kind::Field,
                Kind::Field,
                Kind::RightDelim,
                Kind::Eof
            ]
        );
    }
}
