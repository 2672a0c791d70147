//! Config errors with their position: file, 1-based line and column, dotted key, and what is
//! wrong and how to fix it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A rejected config: where (file, 1-based line and column), which key, and what is wrong.
///
/// Displays as ``<file>:<line>:<column>: `<key>`: <message>``, omitting the parts that are
/// `None`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    /// The file at fault.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters), when known.
    pub column: Option<usize>,
    /// Dotted key (`daemon.state_dir`, `workspace.path`), when known.
    pub key: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ConfigError {
    fn render(&self) -> String {
        let mut out = self.file.display().to_string();
        if let Some(line) = self.line {
            out.push_str(&format!(":{line}"));
            if let Some(column) = self.column {
                out.push_str(&format!(":{column}"));
            }
        }
        out.push_str(": ");
        if let Some(key) = &self.key {
            out.push_str(&format!("`{key}`: "));
        }
        out.push_str(&self.message);
        out
    }

    pub(super) fn io(file: &Path, what: &str, err: &std::io::Error) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: None,
            column: None,
            key: None,
            message: format!("cannot {what}: {err}; check that it is readable by this user"),
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// A [`ConfigError`] in `file` at byte `span` of `text` (no position when `span` is `None`).
pub(crate) fn error_at(
    file: &Path,
    text: &str,
    span: Option<&Range<usize>>,
    key: Option<String>,
    message: String,
) -> ConfigError {
    let (line, column) = match span.map(|s| line_col(text, s.start)) {
        Some((l, c)) => (Some(l), Some(c)),
        None => (None, None),
    };
    ConfigError {
        file: file.to_path_buf(),
        line,
        column,
        key,
        message,
    }
}

/// One file being validated: its name and text, for positioned errors.
pub(super) struct Source<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
}

impl Source<'_> {
    pub(super) fn err(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        error_at(
            self.file,
            self.text,
            span.as_ref(),
            Some(key.to_string()),
            message.into(),
        )
    }

    pub(super) fn loc(&self, span: Range<usize>) -> Loc {
        let (line, column) = line_col(self.text, span.start);
        Loc {
            file: self.file.to_path_buf(),
            line,
            column,
        }
    }
}

/// A position kept past validation, for merge errors.
#[derive(Debug, Clone)]
pub(super) struct Loc {
    file: PathBuf,
    line: usize,
    column: usize,
}

impl Loc {
    pub(super) fn err(&self, key: &str, message: String) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: Some(self.line),
            column: Some(self.column),
            key: Some(key.to_string()),
            message,
        }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}
