//! Text rendering of results for people, in the style of `psql`: aligned tables, status lines
//! for DDL/DML, and error blocks. Used by the `kalam` CLI; the output is plain text with no
//! terminal escapes, so it can be piped or compared in tests.

use std::fmt::Write as _;

use serde_json::Value;

use crate::wire::{ApiError, QueryResult, SqlSuccess};

/// One statement's result as text, ending with a newline.
///
/// A result with columns becomes a table with a `(N rows)` footer; one without becomes its
/// `message` (DDL) or `OK, N rows affected` (DML). Width is counted in chars, so wide (CJK)
/// characters can misalign: good enough without a Unicode-width dependency.
pub fn render(result: &QueryResult) -> String {
    let names: Vec<&str> = if !result.columns.is_empty() {
        result.columns.iter().map(|c| c.name.as_str()).collect()
    } else if let Some(first) = result.rows.first() {
        // A server that sent rows without column metadata: better to show them than hide them.
        first.keys().map(String::as_str).collect()
    } else {
        Vec::new()
    };
    if names.is_empty() {
        return status_line(result);
    }

    let cells: Vec<Vec<String>> = result
        .rows
        .iter()
        .map(|row| names.iter().map(|name| cell_text(row.get(*name))).collect())
        .collect();
    let right: Vec<bool> = names
        .iter()
        .enumerate()
        .map(|(i, name)| is_numeric_column(result, i, name))
        .collect();
    let widths: Vec<usize> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            cells
                .iter()
                .fold(width(name), |w, row| w.max(width(&row[i])))
        })
        .collect();

    let mut out = String::new();
    push_line(&mut out, names.iter().copied(), &widths, &right);
    let separator: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&separator.join("-+-"));
    out.push('\n');
    for row in &cells {
        push_line(&mut out, row.iter().map(String::as_str), &widths, &right);
    }
    match result.rows.len() {
        1 => out.push_str("(1 row)\n"),
        n => {
            let _ = writeln!(out, "({n} rows)");
        }
    }
    out
}

/// Every result of a request, separated by blank lines, then `Time: X ms` (the server's
/// `took_ms`), like `psql` with `\timing` on.
pub fn render_success(success: &SqlSuccess) -> String {
    let mut out = String::new();
    for result in &success.results {
        out.push_str(&render(result));
        out.push('\n');
    }
    let _ = writeln!(out, "Time: {:.3} ms", success.took_ms);
    out
}

/// An error of the node as `ERROR <CODE>: <message>`, then its details and the failing
/// statement. The statement is counted from 1 for people; the wire's 0-based
/// `statement_index` is shown next to it so the two are never confused.
pub fn render_error(error: &ApiError) -> String {
    let mut out = format!("ERROR {}: {}\n", error.code, error.message);
    if let Some(details) = &error.details {
        let _ = writeln!(out, "DETAIL: {details}");
    }
    if let Some(index) = error.statement_index {
        let _ = writeln!(out, "at statement {} (statement_index {index})", index + 1);
    }
    out
}

fn status_line(result: &QueryResult) -> String {
    if let Some(message) = &result.message {
        format!("{message}\n")
    } else if let Some(n) = result.affected_rows {
        format!("OK, {n} {} affected\n", if n == 1 { "row" } else { "rows" })
    } else {
        "OK\n".to_string()
    }
}

/// Pads cells to their column width; the last column is not padded when left-aligned, so no
/// line ends in spaces the data did not have.
fn push_line<'a>(
    out: &mut String,
    cells: impl Iterator<Item = &'a str>,
    widths: &[usize],
    right: &[bool],
) {
    for (i, cell) in cells.enumerate() {
        if i > 0 {
            out.push_str(" | ");
        }
        let pad = widths[i].saturating_sub(width(cell));
        if right[i] {
            push_spaces(out, pad);
            out.push_str(cell);
        } else {
            out.push_str(cell);
            if i + 1 < widths.len() {
                push_spaces(out, pad);
            }
        }
    }
    out.push('\n');
}

fn push_spaces(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn width(text: &str) -> usize {
    text.chars().count()
}

/// Strings unquoted, `NULL` for null (and for a column missing from the row), everything else
/// as compact JSON text. Control characters are escaped (`\n`) so a value cannot break the
/// table's lines.
fn cell_text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "NULL".to_string(),
        Some(Value::String(s)) => {
            let mut out = String::with_capacity(s.len());
            for c in s.chars() {
                if c.is_control() {
                    out.extend(c.escape_default());
                } else {
                    out.push(c);
                }
            }
            out
        }
        Some(other) => other.to_string(),
    }
}

/// Numeric columns are right-aligned as in `psql`: by their Arrow type, or, for a type this
/// client does not recognise, when every non-null value is a number.
fn is_numeric_column(result: &QueryResult, index: usize, name: &str) -> bool {
    if let Some(column) = result.columns.get(index) {
        let t = column.data_type.as_str();
        let numeric_type = matches!(
            t,
            "Int8"
                | "Int16"
                | "Int32"
                | "Int64"
                | "UInt8"
                | "UInt16"
                | "UInt32"
                | "UInt64"
                | "Float16"
                | "Float32"
                | "Float64"
        ) || t.starts_with("Decimal");
        if numeric_type {
            return true;
        }
    }
    let mut any_number = false;
    for row in &result.rows {
        match row.get(name) {
            Some(Value::Number(_)) => any_number = true,
            None | Some(Value::Null) => {}
            Some(_) => return false,
        }
    }
    any_number
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ErrorCode;

    fn result(json: &str) -> QueryResult {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn small_table() {
        let r = result(
            r#"{"columns":[{"name":"id","type":"Int64"},{"name":"text","type":"Utf8"}],
                "rows":[{"id":1,"text":"Hello"},{"id":22,"text":"Hi"}],"row_count":2}"#,
        );
        assert_eq!(
            render(&r),
            "id | text\n---+------\n 1 | Hello\n22 | Hi\n(2 rows)\n"
        );
    }

    #[test]
    fn null_unicode_and_nested_json() {
        let r = result(
            r#"{"columns":[{"name":"name","type":"Utf8"},{"name":"n","type":"Int64"},
                           {"name":"meta","type":"Utf8"}],
                "rows":[{"name":"Zoë","n":null,"meta":{"a":[1,2]}},
                        {"name":"日本","n":5,"meta":null}],"row_count":2}"#,
        );
        let expected = "\
name |    n | meta
-----+------+------------
Zoë  | NULL | {\"a\":[1,2]}
日本   |    5 | NULL
(2 rows)
";
        assert_eq!(render(&r), expected);
    }

    #[test]
    fn one_row_with_escaped_newline_and_bool() {
        let r = result(
            r#"{"columns":[{"name":"ok","type":"Boolean"},{"name":"s","type":"Utf8"}],
                "rows":[{"ok":true,"s":"a\nb"}],"row_count":1}"#,
        );
        assert_eq!(render(&r), "ok   | s\n-----+-----\ntrue | a\\nb\n(1 row)\n");
    }

    #[test]
    fn empty_result_keeps_header() {
        let r = result(r#"{"columns":[{"name":"id","type":"Int64"}],"rows":[],"row_count":0}"#);
        assert_eq!(render(&r), "id\n--\n(0 rows)\n");
    }

    #[test]
    fn dml_and_ddl_results() {
        let dml = result(r#"{"affected_rows":3,"row_count":0,"rows":[],"columns":[]}"#);
        assert_eq!(render(&dml), "OK, 3 rows affected\n");
        let one = result(r#"{"affected_rows":1}"#);
        assert_eq!(render(&one), "OK, 1 row affected\n");
        let ddl = result(r#"{"message":"Namespace 'app' created","rows":[],"columns":[]}"#);
        assert_eq!(render(&ddl), "Namespace 'app' created\n");
        assert_eq!(render(&QueryResult::default()), "OK\n");
    }

    #[test]
    fn whole_response_and_error() {
        let ok = SqlSuccess {
            results: vec![
                result(r#"{"affected_rows":2}"#),
                result(
                    r#"{"columns":[{"name":"n","type":"Int64"}],"rows":[{"n":7}],"row_count":1}"#,
                ),
            ],
            took_ms: 0.9,
        };
        assert_eq!(
            render_success(&ok),
            "OK, 2 rows affected\n\nn\n-\n7\n(1 row)\n\nTime: 0.900 ms\n"
        );

        let err = ApiError {
            code: ErrorCode::NamespaceNotEmpty,
            message: "namespace 'app' still has tables".into(),
            details: Some("tables: messages".into()),
            statement_index: Some(0),
        };
        assert_eq!(
            render_error(&err),
            "ERROR NAMESPACE_NOT_EMPTY: namespace 'app' still has tables\n\
             DETAIL: tables: messages\n\
             at statement 1 (statement_index 0)\n"
        );
    }
}
