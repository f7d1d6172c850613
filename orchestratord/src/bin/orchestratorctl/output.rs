//! Human output: aligned tables for lists, `key: value` lines for single records.
//!
//! Everything is rendered from `serde_json::Value` rather than typed structs, so a field the
//! daemon adds later, or one it leaves out, never turns into a parse failure: a missing field
//! shows as `-`. Text from the daemon (display names, audit details, error messages) may hold
//! whatever a user typed, so control characters are neutralised before they reach a terminal.

use serde_json::Value;

/// A table column: the header and the JSON field it shows.
pub type Column = (&'static str, &'static str);

/// Replaces control characters (escape sequences, newlines) with `?` so that text chosen by
/// a tenant cannot rewrite the admin's terminal or forge extra output lines.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Like `sanitize`, for multi-line text (a box's log): newlines and tabs stay.
pub fn sanitize_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\t' => c,
            c if c.is_control() => '?',
            c => c,
        })
        .collect()
}

/// One value as a single line of text.
pub fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) if s.is_empty() => "-".to_owned(),
        Some(Value::String(s)) => sanitize(s),
        Some(Value::Bool(true)) => "yes".to_owned(),
        Some(Value::Bool(false)) => "no".to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Array(items)) if items.is_empty() => "-".to_owned(),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            let names: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            sanitize(&names.join(","))
        }
        Some(other) => sanitize(&other.to_string()),
    }
}

/// A table with a header row; columns separated by two spaces, no trailing blanks.
pub fn table(columns: &[Column], rows: &[Value]) -> String {
    let header: Vec<String> = columns.iter().map(|(h, _)| (*h).to_owned()).collect();
    let body = rows
        .iter()
        .map(|row| columns.iter().map(|(_, f)| cell(row.get(f))).collect());
    let lines: Vec<Vec<String>> = std::iter::once(header).chain(body).collect();
    let mut widths = vec![0; columns.len()];
    for line in &lines {
        for (width, text) in widths.iter_mut().zip(line) {
            *width = (*width).max(text.chars().count());
        }
    }
    let mut rendered = String::new();
    for line in &lines {
        let mut text = String::new();
        for (i, (value, width)) in line.iter().zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(&format!("{value:<width$}"));
        }
        rendered.push_str(text.trim_end());
        rendered.push('\n');
    }
    rendered
}

/// `key: value` lines: the `known` fields first in that order, then any other field the
/// daemon sent, sorted. Values line up after the longest key.
pub fn record(value: &Value, known: &[&str]) -> String {
    let Some(object) = value.as_object() else {
        return format!("{}\n", cell(Some(value)));
    };
    let mut keys: Vec<&str> = known.to_vec();
    let mut extra: Vec<&str> = object
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains(k))
        .collect();
    extra.sort_unstable();
    keys.extend(extra);
    let width = keys
        .iter()
        .map(|k| k.chars().count() + 1)
        .max()
        .unwrap_or(0);
    keys.iter()
        .map(|key| {
            let label = format!("{}:", sanitize(key));
            format!("{label:<width$} {}\n", cell(object.get(*key)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_aligns_columns_under_a_header_row() {
        let rows = [
            json!({"login": "alice", "role": "admin", "uid": 1000}),
            json!({"login": "bob-the-builder", "role": "member"}),
        ];
        let columns = [("LOGIN", "login"), ("ROLE", "role"), ("UID", "uid")];
        assert_eq!(
            table(&columns, &rows),
            "LOGIN            ROLE    UID\n\
             alice            admin   1000\n\
             bob-the-builder  member  -\n"
        );
    }

    #[test]
    fn table_of_no_rows_is_just_the_header() {
        assert_eq!(table(&[("ID", "id"), ("KIND", "kind")], &[]), "ID  KIND\n");
    }

    #[test]
    fn cells_render_nulls_lists_and_booleans_readably() {
        assert_eq!(cell(None), "-");
        assert_eq!(cell(Some(&json!(null))), "-");
        assert_eq!(cell(Some(&json!(["jellyfin", "git"]))), "jellyfin,git");
        assert_eq!(cell(Some(&json!([]))), "-");
        assert_eq!(cell(Some(&json!(true))), "yes");
        assert_eq!(cell(Some(&json!({"a": 1}))), r#"{"a":1}"#);
    }

    #[test]
    fn control_characters_in_cells_cannot_reach_the_terminal() {
        let hostile = json!("Eve\u{1b}[2J\nroot  admin");
        assert_eq!(cell(Some(&hostile)), "Eve?[2J?root  admin");
    }

    #[test]
    fn multi_line_text_keeps_its_lines_but_not_escape_sequences() {
        let log = "started\r\n\u{1b}]0;pwned\u{7}\tok\n";
        assert_eq!(sanitize_text(log), "started?\n?]0;pwned?\tok\n");
    }

    #[test]
    fn record_lists_known_fields_first_then_the_rest() {
        let user = json!({"zeta": 1, "email": "a@b.c", "login": "a", "services": ["x"]});
        assert_eq!(
            record(&user, &["login", "email", "services", "uid"]),
            "login:    a\nemail:    a@b.c\nservices: x\nuid:      -\nzeta:     1\n"
        );
    }
}
