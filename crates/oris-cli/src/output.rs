//! How results are printed: tables (comfy-table; colours only on a terminal without
//! `NO_COLOR`), JSON as the API answered it, NDJSON for lists and streams. Data goes to
//! stdout, messages to stderr.

use std::io::{IsTerminal as _, Write as _};

use comfy_table::{Cell, Color, ContentArrangement, Table, presets};
use serde_json::Value;

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Readable tables (coloured on a terminal).
    Table,
    /// The API's JSON; lists and `--follow` print one JSON object per line (NDJSON).
    Json,
}

/// Where and how to print.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub format: Format,
    pub color: bool,
}

impl Out {
    pub fn new(format: Format) -> Self {
        let color = std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Out { format, color }
    }

    pub fn json(&self) -> bool {
        self.format == Format::Json
    }

    /// One JSON document (pretty) or NDJSON line (compact).
    pub fn value(&self, v: &Value) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }

    pub fn line(&self, v: &Value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }

    /// A table with `headers` and `rows`; the cells of column `status_col` are coloured by
    /// status.
    pub fn table(&self, headers: &[&str], rows: Vec<Vec<String>>, status_col: Option<usize>) {
        let mut t = Table::new();
        t.load_preset(presets::NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled);
        if !self.color {
            t.force_no_tty();
        }
        t.set_header(headers.iter().map(|h| {
            let c = Cell::new(h);
            if self.color {
                c.add_attribute(comfy_table::Attribute::Bold)
            } else {
                c
            }
        }));
        for row in rows {
            t.add_row(row.into_iter().enumerate().map(|(i, s)| {
                let c = Cell::new(&s);
                match (self.color, status_col == Some(i), status_color(&s)) {
                    (true, true, Some(col)) => c.fg(col),
                    _ => c,
                }
            }));
        }
        // No padding left of the first column: flush with the terminal's edge.
        if let Some(c) = t.column_mut(0) {
            c.set_padding((0, 1));
        }
        print_trimmed(&t.to_string());
    }

    /// `key  value` lines, aligned.
    pub fn fields(&self, fields: &[(&str, String)]) {
        let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = std::io::stdout().lock();
        for (k, v) in fields {
            let v = if self.color && *k == "status" {
                paint(v)
            } else {
                v.clone()
            };
            let _ = writeln!(out, "{k:width$}  {v}");
        }
    }
}

fn print_trimmed(s: &str) {
    let mut out = std::io::stdout().lock();
    for line in s.lines() {
        // The last column's padding is noise in a terminal and in golden files.
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn status_color(s: &str) -> Option<Color> {
    Some(match s {
        "completed" | "active" | "applied" | "ok" => Color::Green,
        "failed" | "stale" => Color::Red,
        "interrupted" | "waiting" | "pending" | "answered" => Color::Yellow,
        "queued" | "running" => Color::Cyan,
        "cancelled" | "stopped" | "closed" | "revoked" => Color::DarkGrey,
        _ => return None,
    })
}

fn paint(s: &str) -> String {
    let code = match status_color(s) {
        Some(Color::Green) => "32",
        Some(Color::Red) => "31",
        Some(Color::Yellow) => "33",
        Some(Color::Cyan) => "36",
        Some(_) => "90",
        None => return s.to_owned(),
    };
    format!("\x1b[{code}m{s}\x1b[0m")
}

/// A JSON value as a table cell: strings bare, null as `-`, the rest as compact JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(Value::is_string) => {
            if a.is_empty() {
                "-".to_owned()
            } else {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            }
        }
        other => other.to_string(),
    }
}

/// A message on stderr.
pub fn note(msg: impl std::fmt::Display) {
    eprintln!("{msg}");
}
