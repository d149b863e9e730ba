//! The `--format` API a command uses: headers, defaults, field names.

use kiln_template::{Format, Template, is_table};
use serde_json::json;

fn image_headers(name: &str) -> Option<String> {
    let header = match name {
        "ID" => "IMAGE ID",
        "Repository" => "REPOSITORY",
        "Tag" => "TAG",
        _ => return None,
    };
    Some(header.to_owned())
}

#[test]
fn bare_table_uses_the_command_default() {
    let format = Format::parse_or_default("table", "table {{.Repository}}\\t{{.Tag}}").unwrap();
    let rows = [json!({"Repository": "alpine", "Tag": "3.19"})];
    assert_eq!(
        format.render(&rows, &image_headers).unwrap(),
        "REPOSITORY   TAG\nalpine       3.19\n"
    );
}

#[test]
fn empty_format_uses_the_command_default() {
    let format = Format::parse_or_default("", "{{.ID}}").unwrap();
    assert!(!format.is_table());
    assert_eq!(
        format
            .render(&[json!({"ID": "x"})], &image_headers)
            .unwrap(),
        "x\n"
    );
}

#[test]
fn table_detection_follows_docker() {
    assert!(is_table("table {{.ID}}"));
    assert!(is_table("table"));
    assert!(!is_table("{{.ID}} table"));
    assert!(!is_table("json"));
}

#[test]
fn header_row_uses_header_functions() {
    let template = Template::parse("{{.ID}}\t{{lower .Repository}}\t{{truncate .Tag 1}}").unwrap();
    assert_eq!(
        template.render_header(&image_headers),
        "IMAGE ID\tREPOSITORY\tTAG"
    );
}

#[test]
fn header_errors_keep_the_partial_header() {
    // docker ignores errors while rendering the header; the rows report them.
    let template = Template::parse("{{.ID}}\t{{range .ID}}x{{end}}").unwrap();
    assert_eq!(template.render_header(&image_headers), "IMAGE ID\t");
}

#[test]
fn field_names_are_the_top_level_fields() {
    let template = Template::parse(
        "{{.ID}} {{.Config.Env}} {{range .RepoTags}}{{.}}{{end}} {{(.State).Running}}",
    )
    .unwrap();
    assert_eq!(
        template.field_names(),
        ["Config", "ID", "RepoTags", "State"]
    );
}

#[test]
fn row_errors_fail_the_render() {
    let format = Format::parse("{{.ID.X}}").unwrap();
    let error = format
        .render(&[json!({"ID": "x"})], &image_headers)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "template: :1:5: executing \"\" at <.ID.X>: can't evaluate field X in type interface {}"
    );
}
