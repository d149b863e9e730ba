//! Properties of the engine over generated input: parsing and rendering return errors instead
//! of panicking, whatever the text.

use kiln_template::{Template, TemplateError};
use proptest::prelude::*;
use serde_json::{Value, json};

fn data() -> Value {
    json!({
        "A": [1, "two", null, {"B": 2.5}],
        "O": {"k": "v", "n": null},
        "S": "text",
        "N": 3,
        "T": true
    })
}

/// Pieces of template syntax, so that generated text reaches the parser and executor instead of
/// stopping at the first lexical error.
fn fragment() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "{{",
        "}}",
        "{{- ",
        " -}}",
        "{{/*",
        "*/}}",
        " ",
        "\n",
        ".",
        ".A",
        ".O",
        ".S",
        ".N",
        ".k",
        "$",
        "$x",
        ":=",
        "=",
        "|",
        "(",
        ")",
        ",",
        "\"s\"",
        "`r`",
        "'c'",
        "1",
        "-2",
        "1.5",
        "0x1F",
        "true",
        "nil",
        "if",
        "else",
        "end",
        "range",
        "with",
        "define",
        "template",
        "block",
        "break",
        "continue",
        "\"t\"",
        "index",
        "slice",
        "len",
        "printf",
        "\"%d %s %v %q\"",
        "print",
        "println",
        "and",
        "or",
        "not",
        "eq",
        "lt",
        "json",
        "split",
        "join",
        "upper",
        "pad",
        "truncate",
        "html",
        "js",
        "urlquery",
        "call",
        "text",
        "}",
        "{",
        "#",
        "é",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,60}") {
        if let Ok(template) = Template::parse(&text) {
            let _ = template.render(&data());
        }
    }

    #[test]
    fn template_like_text_parses_or_fails_with_a_syntax_error(
        fragments in prop::collection::vec(fragment(), 0..40)
    ) {
        let text = fragments.concat();
        match Template::parse(&text) {
            Ok(template) => {
                // Once parsed, only execution can fail.
                if let Err(error) = template.render(&data()) {
                    prop_assert!(matches!(error, TemplateError::Execution(_)), "{error}");
                }
            }
            Err(error) => prop_assert!(matches!(error, TemplateError::Syntax { .. }), "{error}"),
        }
    }

    #[test]
    fn text_without_actions_renders_as_itself(text in "[^{]{0,60}") {
        let template = Template::parse(&text).unwrap();
        prop_assert_eq!(template.render(&data()).unwrap(), text);
    }
}

#[test]
fn deep_nesting_is_a_syntax_error_not_a_stack_overflow() {
    let text = format!("{{{{{}1{}}}}}", "(".repeat(5000), ")".repeat(5000));
    let error = Template::parse(&text).unwrap_err();
    assert!(
        error.to_string().contains("max expression depth exceeded"),
        "{error}"
    );

    let text = format!("{}x{}", "{{if true}}".repeat(5000), "{{end}}".repeat(5000));
    assert!(Template::parse(&text).is_err());
}

#[test]
fn allowed_nesting_renders() {
    let text = format!("{}x{}", "{{if true}}".repeat(99), "{{end}}".repeat(99));
    assert_eq!(
        Template::parse(&text).unwrap().render(&data()).unwrap(),
        "x"
    );
}

#[test]
fn deep_nesting_across_template_calls_is_an_error_not_a_stack_overflow() {
    let body = format!(
        "{}{{{{template \"r\" .}}}}{}",
        "{{if true}}".repeat(90),
        "{{end}}".repeat(90)
    );
    let text = format!("{{{{define \"r\"}}}}{body}{{{{end}}}}{{{{template \"r\" .}}}}");
    let error = Template::parse(&text).unwrap().render(&data()).unwrap_err();
    assert!(
        error.to_string().contains("exceeded maximum nesting depth"),
        "{error}"
    );
}
