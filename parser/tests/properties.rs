//! Properties of [`kiln_parser::parse`] and [`kiln_parser::buildkit_dump`] over generated input,
//! and pathological inputs of the kind that make parsers panic or go super-linear.
//!
//! The properties: no input panics either function; on success every statement lies inside the
//! file, in file order, without overlapping its neighbours; on failure the error points inside the
//! file and renders; parsing is deterministic; blank and comment lines between instructions, and
//! CRLF line endings, change positions only, never what the instructions say.
//!
//! Nothing here is timed: speed targets are checked by `benches/parse.rs` (see `BENCHMARKS.md`).
//! The regression inputs are sized (100k lines, 1 MB lines) so that a quadratic parser would keep
//! `cargo test` busy for minutes, while a linear one parses each of them in a fraction of a
//! second, even in a debug build.
//!
//! The default case count is proptest's (256, or `PROPTEST_CASES`), with inputs of a few KB, so
//! that `cargo test` stays fast in debug mode; run with `PROPTEST_CASES=100000 cargo test --release
//! -p kiln-parser --test properties` for a longer fuzzing session. Failures are not persisted to
//! `proptest-regressions/`: a failing input becomes an explicit regression test below.

use kiln_parser::ast::{CommandLine, Instruction};
use kiln_parser::{Dockerfile, ErrorKind, ParseError, Position};
use proptest::prelude::*;
use proptest::test_runner::Config;

fn config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

// -------------------------------------------------------------------------------------------------
// Invariants checked on every input.

/// The physical lines of `text` as the parser counts them: split at `\n`, a final `\n` ends the
/// last line rather than starting a new one, and an empty file has one (empty) line.
fn line_count(text: &str) -> usize {
    text.split('\n').count() - usize::from(text.ends_with('\n'))
}

/// Parses `text` twice and dumps it twice, and checks every property that holds for any input.
/// Returns the parse result for further checks.
fn check_any_input(text: &str) -> Result<Dockerfile, ParseError> {
    let parsed = kiln_parser::parse(text);
    let dump = kiln_parser::buildkit_dump(text);

    // Deterministic: no hidden state, no iteration over hash maps in the output.
    assert_eq!(
        format!("{parsed:?}"),
        format!("{:?}", kiln_parser::parse(text)),
        "parsing the same text twice gave different results"
    );
    assert_eq!(
        format!("{dump:?}"),
        format!("{:?}", kiln_parser::buildkit_dump(text)),
        "dumping the same text twice gave different results"
    );

    // The dump is the line scanner alone, so it accepts everything `parse` accepts.
    if parsed.is_ok() {
        assert!(
            dump.is_ok(),
            "parse succeeded but buildkit_dump failed: {dump:?}"
        );
    }

    let lines = line_count(text);
    match &parsed {
        Ok(dockerfile) => check_statement_spans(dockerfile, lines),
        Err(error) => check_error_position(error, text, lines),
    }
    if let Err(error) = &dump {
        check_error_position(error, text, lines);
    }
    parsed
}

/// Every statement lies within the file's lines, starts at its keyword, and ends before the next
/// statement starts; heredoc bodies and flags lie inside their statement.
fn check_statement_spans(dockerfile: &Dockerfile, lines: usize) {
    let mut previous_end = 0;
    for statement in &dockerfile.statements {
        let span = statement.span;
        assert!(
            span.start.line >= 1 && span.start.column >= 1,
            "{} starts at {:?}",
            statement.name(),
            span.start
        );
        assert!(
            span.start.line <= span.end.line && span.end.line <= lines,
            "{} spans lines {}..={} of a {lines}-line file",
            statement.name(),
            span.start.line,
            span.end.line
        );
        assert!(
            span.start.line > previous_end,
            "{} starts on line {} but the statement before it ends on line {previous_end}",
            statement.name(),
            span.start.line
        );
        assert_eq!(statement.keyword.span.start, span.start);
        for heredoc in statement.heredocs() {
            assert!(
                span.start.line < heredoc.span.start.line && heredoc.span.end.line <= span.end.line,
                "heredoc {} at lines {}..={} is outside its {} at {}..={}",
                heredoc.name,
                heredoc.span.start.line,
                heredoc.span.end.line,
                statement.name(),
                span.start.line,
                span.end.line
            );
        }
        for flag in &statement.flags {
            assert!(
                span.start.line <= flag.span.start.line && flag.span.end.line <= span.end.line,
                "flag --{} is outside its {}",
                flag.name,
                statement.name()
            );
        }
        previous_end = span.end.line;
    }
}

/// An error points at a line of the file (or just past its end) and renders as `FILE:LINE:COL:`.
fn check_error_position(error: &ParseError, text: &str, lines: usize) {
    let start = error.span.start;
    assert!(
        (1..=lines + 1).contains(&start.line) && start.column >= 1,
        "error {error} at {start:?} in a {lines}-line file"
    );
    assert!(
        error.span.end >= start,
        "error span {:?} ends before it starts",
        error.span
    );
    let rendered = error.render("Dockerfile", text);
    assert!(
        rendered.starts_with(&format!("Dockerfile:{}:{}: ", start.line, start.column)),
        "rendered as {rendered:?}"
    );
}

/// What an instruction says, without where it says it: names, flags, arguments and heredocs.
fn shape(dockerfile: &Dockerfile) -> Vec<String> {
    dockerfile
        .statements
        .iter()
        .map(|statement| {
            let flags: Vec<_> = statement
                .flags
                .iter()
                .map(|flag| (&flag.name, &flag.value))
                .collect();
            let heredocs: Vec<_> = statement
                .heredocs()
                .iter()
                .map(|h| (&h.name, &h.content, h.expand, h.chomp, h.file_descriptor))
                .collect();
            format!(
                "{} {} {flags:?} {:?} {heredocs:?}",
                statement.name(),
                statement.keyword.text,
                statement.arguments()
            )
        })
        .collect()
}

// -------------------------------------------------------------------------------------------------
// Strategies.

/// Pieces of Dockerfile syntax, chosen to reach every branch of the scanner and the grammar:
/// keywords, flags, quotes, escapes, directives, heredocs, JSON, expansions, white space that Go
/// and Rust disagree on, and characters of every UTF-8 length.
const PIECES: &[&str] = &[
    // Keywords, at the start of a line and not.
    "FROM ",
    "RUN ",
    "CMD ",
    "LABEL ",
    "MAINTAINER ",
    "EXPOSE ",
    "ENV ",
    "ADD ",
    "COPY ",
    "ENTRYPOINT ",
    "VOLUME ",
    "USER ",
    "WORKDIR ",
    "ARG ",
    "ONBUILD ",
    "STOPSIGNAL ",
    "HEALTHCHECK ",
    "SHELL ",
    "run ",
    "Copy ",
    "NONE",
    "CMD",
    " AS ",
    " as ",
    "\nFROM busybox\n",
    "\nRUN ",
    "\nCOPY ",
    "\nADD ",
    "\nENV ",
    "\nONBUILD RUN ",
    "\nONBUILD ONBUILD ",
    "\nFROM a AS b\n",
    "\nHEALTHCHECK --interval=5s CMD ",
    "\nSHELL [\"sh\"]",
    "\nARG ",
    "RNU ",
    // Flags, valid and not.
    "--mount=type=cache,target=/x ",
    "--mount=type=secret,id=a,required ",
    "--mount=type=bind,source=a,target=/b,ro ",
    "--mount=type=tmpfs,target=/t,size=1m ",
    "--mount=\"type=cache,target=/a b\" ",
    "--mount=type=",
    "--mount=type=ssh,mode=0600 ",
    "--mount=type=cache,target=/c,sharing=locked,uid=1,gid=x ",
    "--mount=a\"b ",
    "--network=none ",
    "--network=host ",
    "--security=insecure ",
    "--from=build ",
    "--chown=1:1 ",
    "--chmod=755 ",
    "--link ",
    "--link=maybe ",
    "--parents ",
    "--exclude=*.md ",
    "--checksum=sha256:abc ",
    "--keep-git-dir=true ",
    "--unpack ",
    "--platform=linux/amd64 ",
    "--interval=30s ",
    "--timeout=1.5h ",
    "--retries=3 ",
    "--retries=-1 ",
    "--start-period=0 ",
    "--start-interval=1ns ",
    "--interval=-1s ",
    "--timeout=99999999999h ",
    "--",
    "-- ",
    "--=",
    "--x=\"y",
    "--x='y ",
    "--\\",
    "-",
    // Quotes and escapes.
    "\"",
    "'",
    "\\",
    "\\\n",
    "`",
    "`\n",
    "\\\\",
    "\\ ",
    "\\\t\n",
    "\\\r\n",
    "\\\n\n",
    "\\\n# c\n",
    // Parser directives and comments.
    "# escape=`\n",
    "# escape=\\\n",
    "# escape=x\n",
    "# syntax=docker/dockerfile:1\n",
    "#check=skip=all\n",
    "# directive=value\n",
    "#",
    "# comment\n",
    "\n#\n",
    // Heredocs, terminated or not.
    "<<EOF",
    "<<-EOF",
    "<<\"EOF\"",
    "<<'EOF'",
    "3<<EOF",
    "<<",
    "<<<",
    "<<-",
    "<<\"\"",
    "\nEOF\n",
    "EOF",
    "\n\tEOF\n",
    "<<EOF\nbody\nEOF\n",
    "<<A <<B\na\nA\nb\nB\n",
    "$((1 << 2))",
    // JSON, valid, nested, unterminated.
    "[",
    "]",
    "[\"a\", \"b\"]",
    "[\"a\", [\"b\"]]",
    "[1, true, null]",
    "{\"a\": [",
    "[]",
    "[\"\\u00e9\\ud83d\"]",
    "[\"\\x\"]",
    "\"\\",
    "[[[[",
    "]]]]",
    "{",
    "}",
    ",",
    ":",
    "1e5",
    // Expansions and pairs.
    "$",
    "${",
    "}",
    "${a:-b}",
    "$a",
    "${a:+${b}}",
    "$$",
    "=",
    " = ",
    "a=b ",
    "a=\"b c\" ",
    "a=",
    "=b",
    "${a/b/c}",
    "${#a}",
    // White space: ASCII, Go-only and Rust-only, line endings.
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\r",
    "\n\n",
    "\u{0b}",
    "\u{0c}",
    "\u{a0}",
    "\u{2028}",
    "\u{85}",
    "\u{feff}",
    "\u{3000}",
    // Characters of every UTF-8 length, control characters, a combining mark.
    "é",
    "😀",
    "日本",
    "\u{0}",
    "\u{7f}",
    "Ω",
    "e\u{301}",
    "\u{1b}[0m",
];

/// One piece of text: mostly syntax pieces, plus words, random characters and long runs.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => prop::sample::select(PIECES).prop_map(str::to_string),
        3 => "[a-zA-Z0-9_./:-]{1,12}",
        2 => any::<char>().prop_map(String::from),
        1 => (1..600usize, prop::sample::select(&["a", " ", "\\", "[", "\"", "$", "=", "é"][..]))
            .prop_map(|(count, unit)| unit.repeat(count)),
        1 => (1..100usize).prop_map(|depth| "[".repeat(depth) + &"]".repeat(depth / 2)),
    ]
}

/// Dockerfile-ish text: an optional directive, usually a FROM, then up to 300 pieces.
fn dockerfile_ish() -> impl Strategy<Value = String> {
    (
        prop::sample::select(&["", "", "# escape=`\n", "# syntax=x\n", "\u{feff}"][..]),
        prop::bool::weighted(0.75),
        prop::collection::vec(piece(), 0..300),
    )
        .prop_map(|(directive, from, pieces)| {
            let mut text = directive.to_string();
            if from {
                text.push_str("FROM busybox\n");
            }
            text.extend(pieces);
            text
        })
}

/// A word that is valid anywhere in the generated valid Dockerfiles.
fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,6}"
}

/// How many instruction templates [`instruction`] knows.
const TEMPLATES: usize = 27;

/// One valid instruction (with its heredoc body, if any), ending with a newline.
fn instruction(template: usize, w: &[String], escape: char) -> String {
    let e = escape;
    match template {
        0 => format!("FROM {}\n", w[0]),
        1 => format!(
            "FROM --platform=linux/amd64 {}:{} AS {}\n",
            w[0], w[1], w[2]
        ),
        2 => format!("RUN {} {}\n", w[0], w[1]),
        3 => format!(
            "RUN {} {e}\n    && {} {e}\n    && {} {e}\n    && {}\n",
            w[0], w[1], w[2], w[3]
        ),
        4 => format!(
            "RUN --mount=type=cache,target=/{} {} {}\n",
            w[0], w[1], w[2]
        ),
        5 => format!("RUN <<EOF\n{}\n  {} {}\nEOF\n", w[0], w[1], w[2]),
        6 => format!("RUN <<-EOT sh\n\t{}\n\t\t{}\n\tEOT\n", w[0], w[1]),
        7 => format!(
            "RUN cat <<A >/{} && cat <<'B'\n{}\nA\n${}\nB\n",
            w[0], w[1], w[2]
        ),
        8 => format!("CMD [\"{}\", \"--{}\"]\n", w[0], w[1]),
        9 => format!("ENTRYPOINT [\"/bin/{}\"]\n", w[0]),
        10 => format!("ENV {}={} {}=\"{} {}\"\n", w[0], w[1], w[2], w[3], w[4]),
        11 => format!("LABEL {}={} {e}\n      {}=\"{}\"\n", w[0], w[1], w[2], w[3]),
        12 => format!("COPY --from={} --chown=1:1 /{} /{}/\n", w[0], w[1], w[2]),
        13 => format!("COPY <<EOF /{}\n{}={}\nEOF\n", w[0], w[1], w[2]),
        14 => format!("ADD --link {} /{}\n", w[0], w[1]),
        15 => "EXPOSE 80/tcp 443\n".to_string(),
        16 => format!("WORKDIR /{}\n", w[0]),
        17 => format!("USER {}\n", w[0]),
        18 => format!("ARG {}={}\n", w[0], w[1]),
        19 => format!("VOLUME [\"/{}\"]\n", w[0]),
        20 => "STOPSIGNAL SIGTERM\n".to_string(),
        21 => format!(
            "HEALTHCHECK --interval=30s --retries=3 CMD {} {}\n",
            w[0], w[1]
        ),
        22 => "SHELL [\"/bin/sh\", \"-c\"]\n".to_string(),
        23 => format!("ONBUILD RUN {}\n", w[0]),
        24 => format!("MAINTAINER {}\n", w[0]),
        25 => format!("COPY [\"{} {}\", \"/{}/\"]\n", w[0], w[1], w[2]),
        _ => format!("ENV {} {} {}\n", w[0].to_uppercase(), w[1], w[2]),
    }
}

/// A valid Dockerfile as its optional escape directive and its instructions (a FROM first).
fn valid_dockerfile() -> impl Strategy<Value = (String, Vec<String>)> {
    (
        prop::bool::ANY,
        prop::collection::vec((0..TEMPLATES, prop::collection::vec(name(), 5)), 0..16),
        name(),
    )
        .prop_map(|(backtick, templates, image)| {
            let escape = if backtick { '`' } else { '\\' };
            let header = if backtick { "# escape=`\n" } else { "" };
            let mut instructions = vec![format!("FROM {image}\n")];
            instructions.extend(
                templates
                    .iter()
                    .map(|(template, words)| instruction(*template, words, escape)),
            );
            (header.to_string(), instructions)
        })
}

/// Lines that mean nothing between two instructions.
fn filler() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(
            &[
                "\n",
                "\n",
                "   \n",
                "\t\n",
                "#\n",
                "# a comment\n",
                "  # an indented comment with `\\` at the end \\\n",
                "#RUN commented out\n",
                "\r\n",
            ][..],
        ),
        0..4,
    )
    .prop_map(|lines| lines.concat())
}

// -------------------------------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(config())]

    #[test]
    fn dockerfile_ish_text_never_panics_and_keeps_positions_in_the_file(text in dockerfile_ish()) {
        let _ = check_any_input(&text);
    }

    #[test]
    fn random_unicode_never_panics_and_keeps_positions_in_the_file(
        text in prop::collection::vec(any::<char>(), 0..2000).prop_map(String::from_iter)
    ) {
        let _ = check_any_input(&text);
    }

    #[test]
    fn random_printable_lines_never_panic(text in "(\\PC{0,80}\n){0,40}") {
        let _ = check_any_input(&text);
    }

    #[test]
    fn generated_dockerfiles_are_valid((header, instructions) in valid_dockerfile()) {
        let text = header + &instructions.concat();
        let dockerfile = check_any_input(&text)
            .unwrap_or_else(|error| panic!("{}\n{text}", error.render("Dockerfile", &text)));
        prop_assert_eq!(dockerfile.statements.len(), instructions.len());
    }

    #[test]
    fn blank_and_comment_lines_between_instructions_change_only_positions(
        (header, instructions) in valid_dockerfile(),
        fillers in prop::collection::vec(filler(), 25),
    ) {
        let plain = header.clone() + &instructions.concat();
        let mut spaced = header;
        for (instruction, filler) in instructions.iter().zip(&fillers) {
            spaced.push_str(filler);
            spaced.push_str(instruction);
        }
        spaced.push_str(&fillers[fillers.len() - 1]);
        let plain_parsed = check_any_input(&plain).expect("the generated Dockerfile is valid");
        let spaced_parsed = check_any_input(&spaced)
            .unwrap_or_else(|error| panic!("{}\n{spaced}", error.render("Dockerfile", &spaced)));
        prop_assert_eq!(shape(&plain_parsed), shape(&spaced_parsed));
    }

    #[test]
    fn crlf_line_endings_change_nothing((header, instructions) in valid_dockerfile()) {
        let unix = header + &instructions.concat();
        let windows = unix.replace('\n', "\r\n");
        let unix_parsed = check_any_input(&unix).expect("the generated Dockerfile is valid");
        let windows_parsed = check_any_input(&windows)
            .unwrap_or_else(|error| panic!("{}\n{windows}", error.render("Dockerfile", &windows)));
        prop_assert_eq!(shape(&unix_parsed), shape(&windows_parsed));
        prop_assert_eq!(
            format!("{:?}", unix_parsed.statements.iter().map(|s| s.span).collect::<Vec<_>>()),
            format!("{:?}", windows_parsed.statements.iter().map(|s| s.span).collect::<Vec<_>>())
        );
    }
}

// -------------------------------------------------------------------------------------------------
// Pathological inputs. Each must parse (or fail) promptly in a debug build; see the module docs.

fn run_command(dockerfile: &Dockerfile, index: usize) -> &CommandLine {
    let statement = &dockerfile.statements[index];
    let Instruction::Run(run) = &statement.instruction else {
        panic!("statement {index} is {}, not RUN", statement.name());
    };
    &run.command
}

fn shell_text(command: &CommandLine) -> &str {
    match command {
        CommandLine::Shell(word) => &word.text,
        CommandLine::Exec(words) => panic!("expected the shell form, got exec form {words:?}"),
    }
}

#[test]
fn a_hundred_thousand_open_brackets_are_shell_form_not_a_stack_overflow() {
    let brackets = "[".repeat(100_000);
    let text = format!("FROM busybox\nRUN {brackets}\n");
    let dockerfile = check_any_input(&text).unwrap();
    assert_eq!(shell_text(run_command(&dockerfile, 1)), brackets);
    assert!(kiln_parser::buildkit_dump(&text).is_ok());
}

#[test]
fn json_nested_a_hundred_thousand_deep_is_shell_form() {
    // Balanced, so only the depth limit in front of the (recursive) JSON grammar keeps it out.
    let nested = "[".repeat(100_000) + &"]".repeat(100_000);
    let text = format!("FROM busybox\nCMD {nested}\n");
    let dockerfile = check_any_input(&text).unwrap();
    let Instruction::Cmd(command) = &dockerfile.statements[1].instruction else {
        panic!("not CMD");
    };
    assert_eq!(shell_text(command), nested);
}

#[test]
fn json_nested_at_the_depth_limit_is_rejected_as_not_strings() {
    // Go's encoding/json reads `[[...["a"]...]]` fine, and BuildKit then rejects the non-string
    // element; depth 64 still goes through the grammar.
    let nested = "[".repeat(64) + "\"a\"" + &"]".repeat(64);
    let error = check_any_input(&format!("FROM busybox\nCMD {nested}\n")).unwrap_err();
    assert_eq!(error.kind, ErrorKind::NotStringArray("CMD".to_string()));
    assert_eq!(error.span.start.line, 2);
}

#[test]
fn a_hundred_thousand_continuation_lines_join_into_one_instruction() {
    let text = format!(
        "FROM busybox\nRUN echo \\\n{}done\n",
        "  x \\\n".repeat(100_000)
    );
    let dockerfile = check_any_input(&text).unwrap();
    assert_eq!(dockerfile.statements.len(), 2);
    assert_eq!(dockerfile.statements[1].span.start.line, 2);
    assert_eq!(dockerfile.statements[1].span.end.line, 100_003);
    let command = shell_text(run_command(&dockerfile, 1));
    assert!(command.starts_with("echo   x   x ") && command.ends_with("  x done"));
}

#[test]
fn a_hundred_thousand_lone_escape_lines_join_into_one_instruction() {
    let text = format!("FROM busybox\nRUN true \\\n{}\n", "\\\n".repeat(100_000));
    let dockerfile = check_any_input(&text).unwrap();
    assert_eq!(dockerfile.statements.len(), 2);
    assert_eq!(shell_text(run_command(&dockerfile, 1)), "true");
}

#[test]
fn a_one_megabyte_run_line_parses() {
    let unit = "echo \"$HOME\" 'a b' ${X:-y} | tr a-z A-Z && ";
    let script = unit.repeat(1_000_000 / unit.len()) + "true";
    let text = format!("FROM busybox\nRUN --network=none {script}\n");
    assert!(text.len() > 1_000_000);
    let dockerfile = check_any_input(&text).unwrap();
    assert_eq!(shell_text(run_command(&dockerfile, 1)), script);
}

#[test]
fn ten_thousand_heredoc_instructions_parse() {
    let text = "FROM busybox\n".to_string() + &"RUN <<EOF\necho hi\nEOF\n".repeat(10_000);
    let dockerfile = check_any_input(&text).unwrap();
    assert_eq!(dockerfile.statements.len(), 10_001);
    let last = dockerfile.statements.last().unwrap();
    assert_eq!(last.heredocs()[0].content, "echo hi\n");
    assert_eq!(last.span.end.line, 30_001);
}

#[test]
fn one_run_opening_ten_thousand_heredocs_parses() {
    let mut text = String::from("FROM busybox\nRUN cat");
    for index in 0..10_000 {
        text.push_str(&format!(" <<E{index}"));
    }
    text.push('\n');
    for index in 0..10_000 {
        text.push_str(&format!("body {index}\nE{index}\n"));
    }
    let dockerfile = check_any_input(&text).unwrap();
    let heredocs = dockerfile.statements[1].heredocs();
    assert_eq!(heredocs.len(), 10_000);
    assert_eq!(heredocs[9_999].name, "E9999");
    assert_eq!(heredocs[9_999].content, "body 9999\n");
}

#[test]
fn fifty_thousand_dollar_braces_are_kept_as_written() {
    // `parse` does not expand: the value is kept verbatim for the builder's expander.
    let braces = "${".repeat(50_000);
    for instruction in ["ENV", "LABEL", "ARG"] {
        let text = format!("FROM busybox\n{instruction} A={braces}\n");
        let dockerfile = check_any_input(&text).unwrap();
        assert_eq!(
            dockerfile.statements[1].arguments(),
            [format!("A={braces}")]
        );
    }
    let quoted = format!("FROM busybox\nENV A=\"{braces}\nRUN x\n");
    check_any_input(&quoted).unwrap();
}

#[test]
fn an_unterminated_heredoc_on_line_one_of_fifty_thousand_lines_is_reported_at_its_marker() {
    let text = "RUN <<EOF\n".to_string() + &"RUN true\n".repeat(50_000);
    let error = check_any_input(&text).unwrap_err();
    assert_eq!(
        error.kind,
        ErrorKind::UnterminatedHeredoc("EOF".to_string())
    );
    assert_eq!(error.span.start, Position { line: 1, column: 5 });
}

#[test]
fn unterminated_quotes_flags_and_heredoc_names_fail_cleanly() {
    for text in [
        "FROM busybox\nRUN --mount=\"type=cache",
        "FROM busybox\nCOPY --from=\"a b",
        "FROM busybox\nRUN [\"a\", \"b",
        "FROM busybox\nRUN <<\"EOF\n",
        "FROM busybox\nRUN <<EOF",
        "FROM busybox\nENV a=\"b\\",
        "FROM busybox\nARG a='b",
        "# escape=`\nFROM busybox\nRUN a `",
        "\\",
        "\u{feff}",
        "",
    ] {
        let _ = check_any_input(text);
    }
}

/// Many words on one physical line (a regression: columns were once counted from the start of
/// the line for every word's span, which made this quadratic).
#[test]
fn a_quarter_megabyte_line_of_copy_sources_parses_in_linear_time() {
    let sources = "src ".repeat(60_000);
    let text = format!("FROM busybox\nCOPY {sources}/dst/\n");
    let dockerfile = check_any_input(&text).unwrap();
    let Instruction::Copy(copy) = &dockerfile.statements[1].instruction else {
        panic!("not COPY");
    };
    assert_eq!(copy.paths.sources.len(), 60_000);
}

/// The same cause through ENV/LABEL pairs and exec-form strings.
#[test]
fn long_lines_of_label_pairs_or_json_strings_parse_in_linear_time() {
    let pairs = "é=b ".repeat(60_000);
    let dockerfile = check_any_input(&format!("FROM busybox\nLABEL {pairs}\n")).unwrap();
    let Instruction::Label(label) = &dockerfile.statements[1].instruction else {
        panic!("not LABEL");
    };
    assert_eq!(label.pairs.len(), 60_000);
    let strings = "\"a\", ".repeat(50_000);
    let dockerfile = check_any_input(&format!("FROM busybox\nCMD [{strings}\"z\"]\n")).unwrap();
    assert!(matches!(
        &dockerfile.statements[1].instruction,
        Instruction::Cmd(CommandLine::Exec(words)) if words.len() == 50_001
    ));
}

#[test]
fn every_instruction_that_reads_json_survives_deep_brackets() {
    let deep = "[".repeat(10_000);
    for keyword in [
        "RUN",
        "CMD",
        "ENTRYPOINT",
        "SHELL",
        "COPY",
        "ADD",
        "VOLUME",
        "HEALTHCHECK CMD",
        "ONBUILD RUN",
    ] {
        let text = format!("FROM busybox\n{keyword} {deep} /x\n");
        if let Ok(dockerfile) = check_any_input(&text) {
            assert_eq!(dockerfile.statements.len(), 2, "{keyword}");
        }
    }
}
