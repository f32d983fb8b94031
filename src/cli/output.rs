//! Printing answers. For scripts (`--output json`) the server's JSON as it came; for people,
//! tables and sentences built from the answer read into its typed view (`admin::views`, the
//! types the server serialises), so a field the server renames fails to compile, not to print.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Output;
use super::client::CliError;

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

/// An optional field as a table cell: `-` when absent.
pub fn or_dash(text: Option<&str>) -> String {
    text.unwrap_or("-").to_owned()
}

/// Reads an answer of the server into its view.
pub fn view<T: DeserializeOwned>(answer: &Value) -> Result<T, CliError> {
    T::deserialize(answer).map_err(|e| CliError::Answer(e.to_string()))
}

/// One answer: as the server sent it, or a sentence about it for people.
pub fn one<T: DeserializeOwned>(
    out: Output,
    answer: &Value,
    human: impl FnOnce(T) -> String,
) -> Result<(), CliError> {
    match out {
        Output::Json => json(answer),
        Output::Table => println!("{}", human(view(answer)?)),
    }
    Ok(())
}

/// One answer: as the server sent it, or a one-row table for people.
pub fn item<T: DeserializeOwned>(
    out: Output,
    answer: &Value,
    headers: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> Result<(), CliError> {
    match out {
        Output::Json => json(answer),
        Output::Table => table(headers, &[row(&view(answer)?)]),
    }
    Ok(())
}

/// The items of a list (every page): a JSON array of them as the server sent them, or a table.
pub fn list<T: DeserializeOwned>(
    out: Output,
    items: &[Value],
    headers: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> Result<(), CliError> {
    match out {
        Output::Json => json(&Value::Array(items.to_vec())),
        Output::Table => {
            let rows = items
                .iter()
                .map(|item| view(item).map(|v| row(&v)))
                .collect::<Result<Vec<_>, _>>()?;
            table(headers, &rows);
        }
    }
    Ok(())
}

/// What a command that the server answers with no body did (a delete, a revocation): a small
/// JSON object of the CLI's own, or a sentence.
pub fn done(out: Output, what: &Value, human: impl FnOnce() -> String) {
    match out {
        Output::Json => json(what),
        Output::Table => println!("{}", human()),
    }
}
