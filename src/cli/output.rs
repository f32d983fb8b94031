//! Printing answers: aligned tables for people, the server's JSON for scripts.

use serde_json::Value;

/// Prints rows under headers, each column as wide as its widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints a JSON value, pretty.
pub fn json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("a Value always serialises")
    );
}

/// A field as text for a table cell; `-` for null or missing.
pub fn cell(value: &Value, pointer: &str) -> String {
    match value.pointer(pointer) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

pub fn secret_row(secret: &Value) -> Vec<String> {
    vec![
        cell(secret, "/name"),
        cell(secret, "/id"),
        cell(secret, "/display_name"),
        cell(secret, "/cache_ttl_secs"),
        cell(secret, "/version"),
        cell(secret, "/updated_at"),
    ]
}

pub const SECRET_HEADERS: &[&str] = &[
    "NAME",
    "ID",
    "DISPLAY NAME",
    "CACHE TTL",
    "VERSION",
    "UPDATED",
];

pub fn rule_row(rule: &Value) -> Vec<String> {
    let target = match (
        rule.pointer("/injection/header"),
        rule.pointer("/injection/param"),
    ) {
        (Some(Value::String(h)), _) => format!("header {h}"),
        (_, Some(Value::String(p))) => format!("param {p}"),
        _ => "-".to_owned(),
    };
    vec![
        cell(rule, "/id"),
        cell(rule, "/runtime"),
        cell(rule, "/host_pattern"),
        cell(rule, "/path_pattern"),
        cell(rule, "/injection/credential"),
        target,
        cell(rule, "/injection/value"),
    ]
}

pub const RULE_HEADERS: &[&str] = &[
    "ID",
    "RUNTIME",
    "HOST",
    "PATH",
    "CREDENTIAL",
    "INJECT",
    "VALUE",
];
