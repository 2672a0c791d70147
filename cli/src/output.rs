//! Printing: tables for people, JSON for programs; errors as one line of what failed and one
//! line of how to fix it.

use serde::Serialize;
use std::borrow::Cow;
use std::fmt::Write as _;
use ws_ckpt::error::{Error, ErrorCode};

/// A string made safe for a terminal: control characters (C0 including newline and tab,
/// DEL, C1) are written as escapes (`\n`, `\r`, `\t`, `\x1b`, `\u{9b}`), so a path, message
/// or file name can neither move the cursor, set the clipboard, nor start a line of its own.
/// Text without them is returned as is. JSON output is never passed through this.
pub(crate) fn esc(s: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control();
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && unsafe_char(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Print a value as pretty JSON on stdout, written straight into a buffered stdout (a list
/// of thousands of snapshots is not built as one string first).
pub(crate) fn json<T: Serialize>(v: &T) {
    use std::io::Write as _;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let written = serde_json::to_writer_pretty(&mut out, v)
        .map_err(std::io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        // A closed stdout (`| head`) is not an error of ours to report.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: cannot write output: {e}");
        }
    }
}

/// Print a result's compact JSON text as [`json`] prints its value, from the text itself
/// (`crate::json`: nothing is decoded); an error when the text is not JSON.
pub(crate) fn json_text(text: &[u8]) -> Result<(), Error> {
    let Some(mut out) = crate::json::pretty(text) else {
        return Err(Error::new(
            ErrorCode::Io,
            "unexpected reply from ws-ckpt: the result is not valid JSON",
        ));
    };
    out.push(b'\n');
    write_stdout(&out);
    Ok(())
}

/// Write `bytes` to stdout in one go (a closed stdout is not reported).
pub(crate) fn write_stdout(bytes: &[u8]) {
    use std::io::Write as _;
    write_stdout_with(|w| w.write_all(bytes).and_then(|()| w.flush()));
}

/// Write to stdout with `write` (a closed stdout is not reported).
pub(crate) fn write_stdout_with(
    write: impl FnOnce(&mut std::io::StdoutLock<'_>) -> std::io::Result<()>,
) {
    let written = write(&mut std::io::stdout().lock());
    if let Err(e) = written {
        // A closed stdout (`| head`) is not an error of ours to report.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: cannot write output: {e}");
        }
    }
}

/// Upstream's timing line, the last stdout line after a successful change in table mode
/// (its OpenClaw plugin appends it to its replies): `Completed in <secs>s` since `started`.
pub(crate) fn completed(started: std::time::Instant) {
    println!("Completed in {:.3}s", started.elapsed().as_secs_f64());
}

/// Print an error: two lines on stderr (what failed, how to fix it), and in JSON mode the
/// error document on stdout as well. stdout stays empty in table mode, and the message is on
/// stderr in both modes, because upstream's agent plugins read the phrase from there.
pub(crate) fn error(e: &Error, as_json: bool) {
    if as_json {
        json(&serde_json::json!({ "error": e }));
    }
    eprintln!("error: {}", esc(&e.message));
    if let Some(h) = &e.hint {
        eprintln!("hint: {}", esc(h));
    }
}

/// A simple left-aligned table (every cell escaped with [`esc`]).
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| esc(c).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
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
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn control_characters_are_escaped_and_plain_text_is_untouched() {
        assert_eq!(esc("plain/path é"), "plain/path é");
        assert!(matches!(esc("plain"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(
            esc("a\u{1b}[31mb\u{7}\r\n\tc\u{7f}\u{9b}d"),
            "a\\x1b[31mb\\x07\\r\\n\\tc\\x7f\\u{9b}d"
        );
    }
}
