//! The config file exactly as written: serde types mirroring the TOML, with
//! `toml::Spanned` on every value that gets a semantic check so errors can point at it.
//!
//! This module only parses text into these types and locates keys for error messages; it
//! must not validate meaning (that is [`super`]'s job) and must not touch the file system.

use serde::Deserialize;
use toml::Spanned;

/// One config file (the main file or a drop-in).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub daemon: Option<RawDaemon>,
    pub backend: Option<RawBackend>,
    pub retention: Option<RawRetention>,
    pub access: Option<RawAccess>,
    #[serde(default)]
    pub workspace: Vec<Spanned<RawWorkspace>>,
    /// ws-ckpt 0.2/0.3 alias of `retention.auto_cleanup`.
    pub auto_cleanup: Option<bool>,
    /// ws-ckpt 0.2/0.3 alias of `retention.keep` (count only).
    pub auto_cleanup_keep: Option<Spanned<i64>>,
    /// ws-ckpt 0.2/0.3 alias of `retention.interval`, in seconds.
    pub auto_cleanup_interval_secs: Option<Spanned<i64>>,
    /// ws-ckpt 0.2/0.3 alias of `daemon.reconcile_interval`, in seconds.
    pub health_check_interval_secs: Option<Spanned<i64>>,
}

/// `[daemon]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDaemon {
    pub state_dir: Option<Spanned<String>>,
    pub runtime_dir: Option<Spanned<String>>,
    /// Kept as a generic value so a bare integer gets a helpful message instead of a
    /// serde type error.
    pub reconcile_interval: Option<Spanned<toml::Value>>,
    pub log_level: Option<Spanned<String>>,
}

/// `[backend]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    #[serde(rename = "btrfs-loop")]
    pub btrfs_loop: Option<RawLoop>,
    #[serde(rename = "btrfs-base")]
    pub btrfs_base: Option<RawBase>,
}

/// `[backend.btrfs-loop]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLoop {
    pub image: Option<Spanned<String>>,
    pub mount: Option<Spanned<String>>,
    pub img_size: Option<Spanned<i64>>,
    pub img_max_percent: Option<Spanned<i64>>,
    pub legacy_image: Option<Spanned<String>>,
}

/// `[backend.btrfs-base]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBase {
    pub btrfs_mount: Option<Spanned<String>>,
}

/// `[retention]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetention {
    pub auto_cleanup: Option<bool>,
    /// Integer count or duration string.
    pub keep: Option<Spanned<toml::Value>>,
    pub interval: Option<Spanned<toml::Value>>,
    pub max_snapshots: Option<Spanned<i64>>,
}

/// `[access]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccess {
    pub user_init: Option<bool>,
}

/// One `[[workspace]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWorkspace {
    pub path: Spanned<String>,
    pub id: Option<Spanned<String>>,
    pub keep: Option<Spanned<toml::Value>>,
    pub auto_cleanup: Option<bool>,
    pub max_snapshots: Option<Spanned<i64>>,
    #[serde(default)]
    pub allow_users: Vec<Spanned<String>>,
    #[serde(default)]
    pub allow_groups: Vec<Spanned<String>>,
    pub state: Option<Spanned<String>>,
}

/// A parse failure with the byte span the TOML library reported.
#[derive(Debug)]
pub(crate) struct RawError {
    pub message: String,
    pub span: Option<std::ops::Range<usize>>,
}

/// Parse one file's text. Syntax errors, unknown keys and type mismatches come back with
/// the span the deserializer reported.
pub(crate) fn parse(text: &str) -> Result<RawFile, RawError> {
    toml::from_str::<RawFile>(text).map_err(|e| RawError {
        message: tidy_message(e.message()),
        span: e.span(),
    })
}

/// Keep the serde messages but speak TOML: `i64` is "an integer", a Rust struct is "a table".
fn tidy_message(message: &str) -> String {
    let mut out = message.trim().replace('\n', " ");
    for (rust, toml) in [
        ("expected i64", "expected an integer"),
        ("expected a sequence", "expected an array"),
        ("invalid type: sequence", "invalid type: array"),
        ("invalid type: map", "invalid type: table"),
    ] {
        out = out.replace(rust, toml);
    }
    if let Some(i) = out.find("expected struct Raw") {
        out.replace_range(i.., "expected a table");
    }
    if out == "missing field `path`" {
        out.push_str("; every [[workspace]] table needs path = \"/absolute/directory\"");
    }
    out
}

/// The dotted key (`daemon.state_dir`, `workspace.path`) whose key or value covers byte
/// `offset`, found by walking a span-preserving parse of the same text. `None` when the text
/// does not parse or nothing covers the offset.
pub(crate) fn key_at(text: &str, offset: usize) -> Option<String> {
    let doc = toml_edit::Document::parse(text).ok()?;
    let mut path = Vec::new();
    if walk_table(doc.as_table(), offset, &mut path) {
        Some(path.join("."))
    } else {
        None
    }
}

fn contains(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

fn walk_table(table: &toml_edit::Table, offset: usize, path: &mut Vec<String>) -> bool {
    for (name, item) in table.iter() {
        let key_span = table.key(name).and_then(|k| k.span());
        path.push(name.to_string());
        if walk_item(item, offset, path) || contains(key_span, offset) {
            return true;
        }
        path.pop();
    }
    false
}

fn walk_inline(table: &toml_edit::InlineTable, offset: usize, path: &mut Vec<String>) -> bool {
    for (name, value) in table.iter() {
        let key_span = table.key(name).and_then(|k| k.span());
        path.push(name.to_string());
        if walk_value(value, offset, path) || contains(key_span, offset) {
            return true;
        }
        path.pop();
    }
    false
}

fn walk_value(value: &toml_edit::Value, offset: usize, path: &mut Vec<String>) -> bool {
    match value {
        toml_edit::Value::InlineTable(t) => {
            walk_inline(t, offset, path) || contains(t.span(), offset)
        }
        toml_edit::Value::Array(a) => {
            a.iter().any(|v| walk_value(v, offset, path)) || contains(a.span(), offset)
        }
        v => contains(v.span(), offset),
    }
}

fn walk_item(item: &toml_edit::Item, offset: usize, path: &mut Vec<String>) -> bool {
    match item {
        toml_edit::Item::Table(t) => walk_table(t, offset, path) || contains(t.span(), offset),
        toml_edit::Item::ArrayOfTables(a) => {
            a.iter()
                .any(|t| walk_table(t, offset, path) || contains(t.span(), offset))
                || contains(a.span(), offset)
        }
        toml_edit::Item::Value(v) => walk_value(v, offset, path),
        toml_edit::Item::None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_at_finds_nested_and_array_keys() {
        let text = "top = 1\n[daemon]\nstate_dir = \"rel\"\n[[workspace]]\npath = \"/a\"\nallow_users = [\"x\", \"\"]\n";
        let at = |needle: &str| key_at(text, text.find(needle).unwrap());
        assert_eq!(at("top").as_deref(), Some("top"));
        assert_eq!(at("\"rel\"").as_deref(), Some("daemon.state_dir"));
        assert_eq!(at("state_dir").as_deref(), Some("daemon.state_dir"));
        assert_eq!(at("\"/a\"").as_deref(), Some("workspace.path"));
        assert_eq!(at("\"\"]").as_deref(), Some("workspace.allow_users"));
    }

    #[test]
    fn parse_reports_span_of_unknown_key() {
        let text = "[daemon]\nbogus = 1\n";
        let err = parse(text).unwrap_err();
        assert!(err.message.contains("bogus"), "{}", err.message);
        assert_eq!(err.span.map(|s| s.start), text.find("bogus"));
    }
}
