//! docker's `--format` handling around the template engine: the `table` and `json` keywords,
//! the header row, and column alignment with Go's `text/tabwriter`
//! (docker/cli `cli/command/formatter/formatter.go`).

use serde_json::Value;

use crate::{Template, TemplateError};

/// The `--format` prefix that asks for a table with a header row.
pub const TABLE_PREFIX: &str = "table";

/// docker's `tabwriter.NewWriter(output, 10, 1, 3, ' ', 0)`: every column is at least 10
/// characters wide and separated from the next by at least 3 spaces.
pub const MIN_COLUMN_WIDTH: usize = 10;
/// See [`MIN_COLUMN_WIDTH`].
pub const COLUMN_PADDING: usize = 3;

/// Whether a `--format` value asks for a table. Like docker, any text starting with `table`
/// does (`table{{.ID}}` included).
pub fn is_table(format: &str) -> bool {
    format.starts_with(TABLE_PREFIX)
}

/// Aligns tab-separated cells into columns exactly as docker's tabwriter does: a cell is the
/// text before a `\t`; the text after a line's last tab is not part of any column. A column's
/// width is the widest of its cells in a block of consecutive lines that have that column, plus
/// [`COLUMN_PADDING`], and at least [`MIN_COLUMN_WIDTH`]. Widths count characters. Padding
/// goes after the text (left-aligned); lines keep their newlines, and text without a final
/// newline stays without one.
pub fn align_columns(text: &str) -> String {
    let lines: Vec<Vec<&str>> = text.split('\n').map(|line| cells(line)).collect();
    let mut out = String::with_capacity(text.len() * 2);
    let mut widths = Vec::new();
    format_block(&lines, 0, lines.len(), &mut widths, &mut out);
    out
}

/// The cells of a line: every tab-terminated cell, then the trailing text (possibly empty),
/// which belongs to no column.
fn cells(line: &str) -> Vec<&str> {
    line.split('\t').collect()
}

/// Go's `Writer.format`: lays out lines `start..end`, whose columns left of `widths.len()` are
/// already sized.
fn format_block(
    lines: &[Vec<&str>],
    start: usize,
    end: usize,
    widths: &mut Vec<usize>,
    out: &mut String,
) {
    let column = widths.len();
    let mut line0 = start;
    let mut this = start;
    while this < end {
        if !is_cell(lines, this, column) {
            this += 1;
            continue;
        }
        write_lines(lines, line0, this, widths, out);
        line0 = this;
        let mut width = MIN_COLUMN_WIDTH;
        while this < end && is_cell(lines, this, column) {
            let cell_width = lines[this][column].chars().count() + COLUMN_PADDING;
            width = width.max(cell_width);
            this += 1;
        }
        widths.push(width);
        format_block(lines, line0, this, widths, out);
        widths.pop();
        line0 = this;
    }
    write_lines(lines, line0, end, widths, out);
}

/// Whether line `index` has a tab-terminated cell in `column`.
fn is_cell(lines: &[Vec<&str>], index: usize, column: usize) -> bool {
    column + 1 < lines[index].len()
}

fn write_lines(lines: &[Vec<&str>], start: usize, end: usize, widths: &[usize], out: &mut String) {
    for (index, line) in lines.iter().enumerate().take(end).skip(start) {
        for (j, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if let Some(&width) = widths.get(j) {
                let used = cell.chars().count();
                out.extend(std::iter::repeat_n(' ', width.saturating_sub(used)));
            }
        }
        if index + 1 < lines.len() {
            out.push('\n');
        }
    }
}

/// A `--format` value, resolved as docker resolves it: `table …` renders a header row and
/// aligned columns, `json` is `{{json .}}`, anything else is a template printed once per row.
/// The two-character sequences `\t` and `\n` in the format become a tab and a newline, and
/// surrounding spaces are trimmed, so `--format 'table {{.ID}}\t{{.Tag}}'` works from a shell.
#[derive(Debug, Clone)]
pub struct Format {
    table: bool,
    template: Template,
}

impl Format {
    /// Parses a `--format` value.
    pub fn parse(format: &str) -> Result<Format, TemplateError> {
        let table = is_table(format);
        let body = if table {
            &format[TABLE_PREFIX.len()..]
        } else if format == "json" {
            "{{json .}}"
        } else {
            format
        };
        let body = body
            .trim_matches(' ')
            .replace("\\t", "\t")
            .replace("\\n", "\n");
        Ok(Format {
            table,
            template: Template::parse(&body)?,
        })
    }

    /// Parses a `--format` value, using `default` (usually a command's `table …` layout) when
    /// the value is empty or the bare word `table`, as docker's commands do.
    pub fn parse_or_default(format: &str, default: &str) -> Result<Format, TemplateError> {
        if format.trim().is_empty() || format.trim() == TABLE_PREFIX {
            Format::parse(default)
        } else {
            Format::parse(format)
        }
    }

    /// Whether this format renders a table with a header row.
    pub fn is_table(&self) -> bool {
        self.table
    }

    /// The template applied to each row.
    pub fn template(&self) -> &Template {
        &self.template
    }

    /// Renders every row followed by a newline. For a table, a header row comes first (see
    /// [`Template::render_header`]) and the whole output goes through [`align_columns`]; the
    /// header is printed even when there are no rows, as docker does.
    pub fn render<'a>(
        &self,
        rows: impl IntoIterator<Item = &'a Value>,
        headers: &dyn Fn(&str) -> Option<String>,
    ) -> Result<String, TemplateError> {
        let mut out = String::new();
        if self.table {
            out.push_str(&self.template.render_header(headers));
            out.push('\n');
        }
        for row in rows {
            out.push_str(&self.template.render(row)?);
            out.push('\n');
        }
        Ok(if self.table { align_columns(&out) } else { out })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_get_min_width_and_padding() {
        // "IMAGE ID" (8) plus padding 3 is 11, over the minimum 10; "nginx-proxy-long" (16)
        // sets its column to 16 + 3; "TAG"/"latest" is the last cell, never padded.
        let text = "IMAGE ID\tREPOSITORY\tTAG\nabc\tnginx-proxy-long\tlatest\n";
        assert_eq!(
            align_columns(text),
            "IMAGE ID   REPOSITORY         TAG\nabc        nginx-proxy-long   latest\n"
        );
        // Short cells get the minimum width of 10.
        assert_eq!(align_columns("ID\tX\n"), "ID        X\n");
    }

    #[test]
    fn last_cell_is_not_a_column() {
        assert_eq!(
            align_columns("a\tb\nlonger-than-ten\tc"),
            "a                 b\nlonger-than-ten   c"
        );
    }

    #[test]
    fn trailing_tab_makes_a_padded_column() {
        assert_eq!(align_columns("a\tb\t\n"), "a         b         \n");
    }

    #[test]
    fn a_line_without_tabs_ends_the_block() {
        let text = "a\tb\nplain line\nlonger-cell-here\tc\n";
        assert_eq!(
            align_columns(text),
            "a         b\nplain line\nlonger-cell-here   c\n"
        );
    }

    #[test]
    fn nested_blocks_size_columns_independently() {
        // Column 1 exists only on the first two lines, so only they share its width.
        let text = "x\ty\tz\nxx\tyyyyyyyyyyyy\tz\nx\ty\n";
        assert_eq!(
            align_columns(text),
            "x         y              z\nxx        yyyyyyyyyyyy   z\nx         y\n"
        );
    }

    #[test]
    fn widths_count_characters_not_bytes() {
        assert_eq!(align_columns("é\tx\n"), "é         x\n");
    }

    #[test]
    fn empty_text_stays_empty() {
        assert_eq!(align_columns(""), "");
        assert_eq!(align_columns("\n"), "\n");
    }
}
