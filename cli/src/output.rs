//! Printing: tables for people, JSON for programs; errors as one line of what failed and one
//! line of how to fix it.

use serde::Serialize;
use ws_ckpt::error::Error;

/// Print a value as pretty JSON on stdout.
pub(crate) fn json<T: Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot encode output: {e}"),
    }
}

/// Print an error: two lines on stderr (what failed, how to fix it), and in JSON mode the
/// error document on stdout as well. stdout stays empty in table mode, and the message is on
/// stderr in both modes, because upstream's agent plugins read the phrase from there.
pub(crate) fn error(e: &Error, as_json: bool) {
    if as_json {
        json(&serde_json::json!({ "error": e }));
    }
    eprintln!("error: {}", e.message);
    if let Some(h) = &e.hint {
        eprintln!("hint: {h}");
    }
}

/// A simple left-aligned table.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s += c;
            } else {
                s += &format!("{c:<w$}  ", w = widths[i]);
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}
