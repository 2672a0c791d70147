//! Programmatic, comment-preserving edits of config files (`ws-ckpt init`, `release`,
//! `apply --prune`, the 0.2/0.3 upgrade), done with `toml_edit`.
//!
//! Every edit re-validates the file it produces before writing it, and every write is atomic
//! (temporary file in the same directory, fsync, rename, fsync of the directory). Edits are
//! idempotent: repeating one reports `changed = false` and leaves the file untouched. This
//! module must not decide *whether* to edit (that is the caller's job), and it only ever
//! touches the single file it is asked to edit.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, TableLike, Value};

use super::{error_at, normalize_abs_path, Config, ConfigError, DeclState};

/// File name (inside the drop-in directory) of the upgrade declarations.
pub const MIGRATED_FILE_NAME: &str = "40-migrated.toml";

/// Why a config edit failed. Every variant names the file or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The existing file could not be read.
    #[error("cannot read {}: {error}; check that it exists and is readable", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        error: io::Error,
    },
    /// The file or its directory could not be written.
    #[error("cannot write {}: {error}; check that the directory exists and is writable by root", file.display())]
    Write {
        /// The file or directory.
        file: PathBuf,
        /// The I/O error.
        error: io::Error,
    },
    /// The file to edit does not validate as it stands; it is left untouched.
    #[error("{0}; fix this file before ws-ckpt edits it")]
    Invalid(Box<ConfigError>),
    /// The edited text would not validate; nothing was written.
    #[error("refusing to write {}: the edited file would not validate: {error}", file.display())]
    WouldBeInvalid {
        /// The file that was to be written.
        file: PathBuf,
        /// The validation error of the edited text.
        error: Box<ConfigError>,
    },
    /// The file has no `[[workspace]]` table for the path.
    #[error("{} has no [[workspace]] table with path = \"{}\"; run `ws-ckpt config show` to find the file that declares it", file.display(), path.display())]
    NotDeclared {
        /// The file searched.
        file: PathBuf,
        /// The workspace path.
        path: PathBuf,
    },
    /// A workspace ID is not valid (and would not be a safe file name).
    #[error("invalid workspace id \"{id}\": {problem}")]
    InvalidId {
        /// The rejected ID.
        id: String,
        /// What is wrong with it (see `ids::ws_id_problem`).
        problem: String,
    },
    /// A workspace path is not absolute, contains `..` or is not UTF-8.
    #[error("invalid workspace path \"{}\": {reason}", path.display())]
    InvalidPath {
        /// The rejected path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// `ws-ckpt init`: declare `path` in `<dropin_dir>/50-<ws_id>.toml` (creating the directory
/// and file, with a header comment saying who wrote it and when), or, if that file already
/// declares the path with `state = "absent"`, remove the `state` key. A file that exists but
/// does not declare the path gets a `[[workspace]]` table appended. Returns the file and
/// whether anything changed. Declarations in other files are the caller's concern.
pub fn declare_workspace(
    dropin_dir: &Path,
    ws_id: &str,
    path: &Path,
) -> Result<(PathBuf, bool), EditError> {
    if let Some(problem) = crate::ids::ws_id_problem(ws_id) {
        return Err(EditError::InvalidId {
            id: ws_id.to_string(),
            problem,
        });
    }
    let path = checked_path(path)?;
    let file = dropin_dir.join(format!("50-{ws_id}.toml"));
    let Some(mut doc) = load_doc(&file)? else {
        let text = format!(
            "# Declared by `ws-ckpt init` on {}. Edit freely; `ws-ckpt release` sets state = \"absent\".\n\n[[workspace]]\npath = {}\n",
            crate::time::now_rfc3339(),
            toml_str(&path)
        );
        create_dir(dropin_dir)?;
        save_text(&file, &text)?;
        return Ok((file, true));
    };
    let mut entries = workspace_entries_mut(&mut doc, &path);
    if entries.is_empty() {
        drop(entries);
        append_workspace(&mut doc, &path, None);
        save_doc(&file, &doc)?;
        return Ok((file, true));
    }
    let mut changed = false;
    for entry in entries.iter_mut() {
        if entry.get("state").and_then(Item::as_str) == Some("absent") {
            entry.remove("state");
            changed = true;
        }
    }
    drop(entries);
    if changed {
        save_doc(&file, &doc)?;
    }
    Ok((file, changed))
}

/// Set `state` of the `[[workspace]]` whose path is `path` in `file` (`Absent` →
/// `state = "absent"`, `Present` → remove the key), preserving all comments and formatting.
/// Every table in the file with that path is updated. Returns whether the file changed; an
/// error if the file has no such table.
pub fn set_workspace_state(file: &Path, path: &Path, state: DeclState) -> Result<bool, EditError> {
    let path = checked_path(path)?;
    let mut doc = load_doc(file)?.ok_or_else(|| EditError::NotDeclared {
        file: file.to_path_buf(),
        path: path.clone(),
    })?;
    let mut entries = workspace_entries_mut(&mut doc, &path);
    if entries.is_empty() {
        return Err(EditError::NotDeclared {
            file: file.to_path_buf(),
            path,
        });
    }
    let mut changed = false;
    for entry in entries.iter_mut() {
        let current = entry
            .get("state")
            .and_then(Item::as_str)
            .map(str::to_string);
        match state {
            DeclState::Absent if current.as_deref() == Some("absent") => {}
            DeclState::Absent => {
                match entry.get_mut("state").and_then(Item::as_value_mut) {
                    Some(existing) => {
                        let decor = existing.decor().clone();
                        *existing = Value::from("absent");
                        *existing.decor_mut() = decor;
                    }
                    None => {
                        entry.insert("state", toml_edit::value("absent"));
                    }
                }
                changed = true;
            }
            DeclState::Present if current.as_deref() == Some("absent") => {
                entry.remove("state");
                changed = true;
            }
            DeclState::Present => {}
        }
    }
    drop(entries);
    if changed {
        save_doc(file, &doc)?;
    }
    Ok(changed)
}

/// Remove every `[[workspace]]` table for `path` from `file` (used by `apply --prune` and
/// after a release). Comments separated from the removed table by a blank line are kept. A
/// generated `50-*.toml` left without any table or key is deleted. A missing file or a file
/// without the path is not an error: nothing changes. Returns whether anything changed.
pub fn remove_workspace(file: &Path, path: &Path) -> Result<bool, EditError> {
    let path = checked_path(path)?;
    let Some(mut doc) = load_doc(file)? else {
        return Ok(false);
    };
    // (position, comments to keep) of each removed table, last table first.
    let mut kept: Vec<(Option<isize>, String)> = Vec::new();
    let now_empty = match doc.get_mut("workspace") {
        Some(Item::ArrayOfTables(array)) => {
            let matching: Vec<usize> = (0..array.len())
                .filter(|&i| array.get(i).is_some_and(|t| declares(t, &path)))
                .collect();
            if matching.is_empty() {
                return Ok(false);
            }
            for &i in matching.iter().rev() {
                if let Some(t) = array.get(i) {
                    let prefix = t.decor().prefix().and_then(|p| p.as_str()).unwrap_or("");
                    kept.push((t.position(), leading_block(prefix).to_string()));
                }
                array.remove(i);
            }
            array.is_empty()
        }
        Some(Item::Value(Value::Array(array))) => {
            let before = array.len();
            array.retain(|v| !v.as_inline_table().is_some_and(|t| declares(t, &path)));
            if array.len() == before {
                return Ok(false);
            }
            array.is_empty()
        }
        _ => return Ok(false),
    };
    if now_empty {
        doc.remove("workspace");
    }
    // Last removed first, so comments of adjacent removed tables keep their order.
    for (position, comments) in kept {
        if !comments.is_empty() {
            reattach_comments(&mut doc, position, &comments);
        }
    }
    let generated = file
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("50-") && n.ends_with(".toml"));
    if generated && doc.as_table().is_empty() {
        fs::remove_file(file).map_err(|error| EditError::Write {
            file: file.to_path_buf(),
            error,
        })?;
        sync_dir(parent_dir(file)).map_err(|error| EditError::Write {
            file: parent_dir(file).to_path_buf(),
            error,
        })?;
        return Ok(true);
    }
    save_doc(file, &doc)?;
    Ok(true)
}

/// Upgrade: write or extend `<dropin_dir>/40-migrated.toml`, declaring each `(ws_id, path)`
/// that the file does not declare yet (matched by path), with `id = "<ws_id>"` and a comment
/// explaining why the file exists. Returns the file and whether anything changed.
pub fn write_migrated(
    dropin_dir: &Path,
    entries: &[(String, PathBuf)],
) -> Result<(PathBuf, bool), EditError> {
    let decls: Vec<MigratedDecl> = entries
        .iter()
        .map(|(id, path)| MigratedDecl {
            ws_id: id.clone(),
            path: path.clone(),
            policy: None,
        })
        .collect();
    write_migrated_decls(dropin_dir, &decls)
}

/// A workspace found in earlier ws-ckpt data, to declare in `40-migrated.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct MigratedDecl {
    /// Its ws_id.
    pub ws_id: String,
    /// Its path.
    pub path: PathBuf,
    /// Its own retention policy (ws-ckpt 0.5's `indexes/<ws_id>/policy.toml`), becoming
    /// `auto_cleanup` / `keep` of the declaration.
    pub policy: Option<MigratedPolicy>,
}

/// A ws-ckpt 0.5 per-workspace policy, as declaration values.
#[derive(Debug, Clone, PartialEq)]
pub struct MigratedPolicy {
    /// The file it came from (named in a comment; left in place, no longer read).
    pub file: PathBuf,
    /// `auto_cleanup`.
    pub auto_cleanup: Option<bool>,
    /// `keep`: a count or an age, as written there.
    pub keep: Option<SettingValue>,
}

/// [`write_migrated`] with per-workspace settings.
pub fn write_migrated_decls(
    dropin_dir: &Path,
    entries: &[MigratedDecl],
) -> Result<(PathBuf, bool), EditError> {
    let mut wanted: Vec<(String, PathBuf, Option<MigratedPolicy>)> = Vec::new();
    for d in entries {
        if let Some(problem) = crate::ids::ws_id_problem(&d.ws_id) {
            return Err(EditError::InvalidId {
                id: d.ws_id.clone(),
                problem,
            });
        }
        let path = checked_path(&d.path)?;
        if !wanted.iter().any(|(_, p, _)| *p == path) {
            wanted.push((d.ws_id.clone(), path, d.policy.clone()));
        }
    }
    let file = dropin_dir.join(MIGRATED_FILE_NAME);
    let Some(mut doc) = load_doc(&file)? else {
        if wanted.is_empty() {
            return Ok((file, false));
        }
        let mut text = format!(
            "# Generated by ws-ckpt on {} when it found workspaces recorded by ws-ckpt 0.2-0.5\n\
             # (state.json or index files) that no config file declared. They are declared here so\n\
             # that the upgrade leaves nothing undeclared and the config stays the single source of\n\
             # truth. Edit freely: change settings, move tables to other files, or set\n\
             # state = \"absent\" to release a workspace.\n",
            crate::time::now_rfc3339()
        );
        for (id, path, policy) in &wanted {
            text.push_str(&format!(
                "\n{}[[workspace]]\npath = {}\nid = {}\n{}",
                policy.as_ref().map(policy_comment).unwrap_or_default(),
                toml_str(path),
                Value::from(id.as_str()),
                policy.as_ref().map(policy_lines).unwrap_or_default()
            ));
        }
        create_dir(dropin_dir)?;
        save_text(&file, &text)?;
        return Ok((file, true));
    };
    let mut changed = false;
    for (id, path, policy) in &wanted {
        if workspace_entries_mut(&mut doc, path).is_empty() {
            append_workspace(&mut doc, path, Some(id));
            if let Some(p) = policy {
                for entry in workspace_entries_mut(&mut doc, path) {
                    if let Some(a) = p.auto_cleanup {
                        entry.insert("auto_cleanup", toml_edit::value(a));
                    }
                    if let Some(k) = &p.keep {
                        entry.insert("keep", Item::Value(k.to_value()));
                    }
                }
            }
            changed = true;
        }
    }
    if changed {
        save_doc(&file, &doc)?;
    }
    Ok((file, changed))
}

/// Read ws-ckpt 0.5's per-workspace policy file (`indexes/<ws_id>/policy.toml`: optional
/// `auto_cleanup = bool` and `auto_cleanup_keep = N | "30d"`, where 0 means disabled).
/// `Ok(None)` when the file does not exist or sets nothing; an error naming the file when it
/// cannot be read or its values are not upstream's.
pub fn read_upstream_policy(file: &Path) -> Result<Option<MigratedPolicy>, String> {
    let text = match fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("{} is not TOML: {e}", file.display()))?;
    let mut auto_cleanup = match table.get("auto_cleanup") {
        None => None,
        Some(toml::Value::Boolean(b)) => Some(*b),
        Some(other) => {
            return Err(format!(
                "{}: auto_cleanup = {other} is not true/false",
                file.display()
            ))
        }
    };
    let keep = match table.get("auto_cleanup_keep") {
        None => None,
        Some(toml::Value::Integer(0)) => {
            auto_cleanup = Some(false);
            None
        }
        Some(toml::Value::Integer(n)) if *n > 0 && *n <= i64::from(u32::MAX) => {
            Some(SettingValue::Int(*n))
        }
        Some(toml::Value::String(s)) if s.trim() == "0" || s.trim() == "0s" => {
            auto_cleanup = Some(false);
            None
        }
        Some(toml::Value::String(s)) if super::parse_duration(s).is_ok() => {
            Some(SettingValue::Str(s.clone()))
        }
        Some(other) => {
            return Err(format!(
                "{}: auto_cleanup_keep = {other} is neither a count nor an age",
                file.display()
            ))
        }
    };
    if auto_cleanup.is_none() && keep.is_none() {
        return Ok(None);
    }
    Ok(Some(MigratedPolicy {
        file: file.to_path_buf(),
        auto_cleanup,
        keep,
    }))
}

fn policy_comment(p: &MigratedPolicy) -> String {
    format!(
        "# auto_cleanup/keep below come from ws-ckpt 0.5's {} (left in place for a downgrade;\n# this file is what counts now).\n",
        p.file.display()
    )
}

fn policy_lines(p: &MigratedPolicy) -> String {
    let mut out = String::new();
    if let Some(a) = p.auto_cleanup {
        out.push_str(&format!("auto_cleanup = {a}\n"));
    }
    if let Some(k) = &p.keep {
        out.push_str(&format!("keep = {}\n", k.to_value()));
    }
    out
}

/// A value `config` writes: a flag, a number or a string (a keep age, a duration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingValue {
    /// `true` / `false`.
    Bool(bool),
    /// An integer (a count, GiB, a percentage).
    Int(i64),
    /// A string (`"30d"`, `"3600s"`).
    Str(String),
}

impl SettingValue {
    fn to_value(&self) -> Value {
        match self {
            SettingValue::Bool(b) => Value::from(*b),
            SettingValue::Int(n) => Value::from(*n),
            SettingValue::Str(s) => Value::from(s.as_str()),
        }
    }

    /// The value as written in a TOML file, when it is one of these kinds.
    pub fn from_toml(v: &Value) -> Option<SettingValue> {
        match v {
            Value::Boolean(b) => Some(SettingValue::Bool(*b.value())),
            Value::Integer(n) => Some(SettingValue::Int(*n.value())),
            Value::String(s) => Some(SettingValue::Str(s.value().clone())),
            _ => None,
        }
    }
}

/// A global setting `config -g` (upstream's flags) changes: its key, and its ws-ckpt
/// 0.2/0.3 top-level alias when it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalKey {
    /// `[retention] auto_cleanup` (alias `auto_cleanup`).
    AutoCleanup,
    /// `[retention] keep` (alias `auto_cleanup_keep`, counts only).
    Keep,
    /// `[retention] interval` (alias `auto_cleanup_interval_secs`, seconds).
    Interval,
    /// `[daemon] reconcile_interval` (alias `health_check_interval_secs`, seconds).
    HealthCheck,
    /// `[backend.btrfs-loop] img_size` (GiB).
    ImgSize,
    /// `[backend.btrfs-loop] img_max_percent`.
    ImgMaxPercent,
}

impl GlobalKey {
    fn path(self) -> &'static [&'static str] {
        match self {
            GlobalKey::AutoCleanup => &["retention", "auto_cleanup"],
            GlobalKey::Keep => &["retention", "keep"],
            GlobalKey::Interval => &["retention", "interval"],
            GlobalKey::HealthCheck => &["daemon", "reconcile_interval"],
            GlobalKey::ImgSize => &["backend", "btrfs-loop", "img_size"],
            GlobalKey::ImgMaxPercent => &["backend", "btrfs-loop", "img_max_percent"],
        }
    }

    fn alias(self) -> Option<&'static str> {
        match self {
            GlobalKey::AutoCleanup => Some("auto_cleanup"),
            GlobalKey::Keep => Some("auto_cleanup_keep"),
            GlobalKey::Interval => Some("auto_cleanup_interval_secs"),
            GlobalKey::HealthCheck => Some("health_check_interval_secs"),
            GlobalKey::ImgSize | GlobalKey::ImgMaxPercent => None,
        }
    }

    /// The key as a dotted name (`retention.keep`).
    pub fn name(self) -> String {
        self.path().join(".")
    }
}

fn lookup<'a>(table: &'a Table, path: &[&str]) -> Option<&'a Value> {
    let (last, parents) = path.split_last()?;
    let mut t: &dyn TableLike = table;
    for p in parents {
        t = t.get(p)?.as_table_like()?;
    }
    t.get(last)?.as_value()
}

/// The value `file` gives `key` (its key, else its alias), when it sets it.
pub fn raw_setting(file: &Path, key: GlobalKey) -> Option<Value> {
    let doc = fs::read_to_string(file).ok()?.parse::<DocumentMut>().ok()?;
    lookup(doc.as_table(), key.path())
        .or_else(|| key.alias().and_then(|a| doc.get(a)?.as_value()))
        .cloned()
}

/// The file among `files` (in merge order) whose value of `key` is in effect: the last one
/// setting it; `main` when none does.
pub fn setting_file(files: &[PathBuf], main: &Path, key: GlobalKey) -> PathBuf {
    files
        .iter()
        .rev()
        .find(|f| raw_setting(f, key).is_some())
        .cloned()
        .unwrap_or_else(|| main.to_path_buf())
}

/// Set global `key` to `value` in `file` (created if missing), keeping every comment: where
/// the file spells the setting with its 0.2/0.3 alias and the value fits the alias, the
/// alias is changed; otherwise the key is set (and the alias, now shadowed, removed).
/// `alias_value` is the value in the alias's unit (seconds for the intervals). Returns
/// whether the file changed.
pub fn set_global(
    file: &Path,
    key: GlobalKey,
    value: SettingValue,
    alias_value: Option<SettingValue>,
) -> Result<bool, EditError> {
    let mut doc = load_doc(file)?.unwrap_or_default();
    let before = doc.to_string();
    let has_key = lookup(doc.as_table(), key.path()).is_some();
    let alias = key.alias().filter(|a| doc.get(a).is_some());
    match (alias, alias_value) {
        (Some(a), Some(av)) if !has_key => set_value(doc.as_table_mut(), &[a], av.to_value()),
        (a, _) => {
            if let Some(a) = a {
                doc.remove(a);
            }
            set_value(doc.as_table_mut(), key.path(), value.to_value());
        }
    }
    if doc.to_string() == before {
        return Ok(false);
    }
    if let Some(dir) = file.parent() {
        create_dir(dir)?;
    }
    save_doc(file, &doc)?;
    Ok(true)
}

/// Set `path` (a key inside nested tables, created as needed) to `value`, keeping the
/// comments around a value it replaces.
fn set_value(table: &mut Table, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut t: &mut dyn TableLike = table;
    for p in parents {
        if t.get(p).and_then(Item::as_table_like).is_none() {
            let mut sub = Table::new();
            sub.set_implicit(true);
            t.insert(p, Item::Table(sub));
        }
        let Some(next) = t.get_mut(p).and_then(Item::as_table_like_mut) else {
            return;
        };
        t = next;
    }
    replace_value(t, last, Some(value));
}

/// Set (`Some`) or remove (`None`) `key` of `t`, keeping the decoration of a replaced value.
fn replace_value(t: &mut dyn TableLike, key: &str, value: Option<Value>) {
    match value {
        None => {
            t.remove(key);
        }
        Some(mut v) => match t.get_mut(key).and_then(Item::as_value_mut) {
            Some(existing) => {
                let decor = existing.decor().clone();
                *v.decor_mut() = decor;
                *existing = v;
            }
            None => {
                t.insert(key, Item::Value(v));
            }
        },
    }
}

/// The `keep` the declaration of `path` in `file` writes, as written (a count or an age).
pub fn workspace_raw_keep(file: &Path, path: &Path) -> Option<Value> {
    let path = checked_path(path).ok()?;
    let mut doc = fs::read_to_string(file).ok()?.parse::<DocumentMut>().ok()?;
    let entries = workspace_entries_mut(&mut doc, &path);
    entries
        .into_iter()
        .find_map(|e| e.get("keep").and_then(Item::as_value).cloned())
}

/// `config -w WS`: change the retention policy of the declaration of `path` in `file`,
/// keeping every comment. For each of `auto_cleanup` and `keep`: `None` leaves it,
/// `Some(None)` removes the key (the global value applies again), `Some(Some(v))` sets it.
/// Returns whether the file changed; an error if the file does not declare `path`.
pub fn set_workspace_policy(
    file: &Path,
    path: &Path,
    auto_cleanup: Option<Option<bool>>,
    keep: Option<Option<SettingValue>>,
) -> Result<bool, EditError> {
    let path = checked_path(path)?;
    let mut doc = load_doc(file)?.ok_or_else(|| EditError::NotDeclared {
        file: file.to_path_buf(),
        path: path.clone(),
    })?;
    let before = doc.to_string();
    let mut entries = workspace_entries_mut(&mut doc, &path);
    if entries.is_empty() {
        return Err(EditError::NotDeclared {
            file: file.to_path_buf(),
            path,
        });
    }
    for entry in entries.iter_mut() {
        if let Some(a) = auto_cleanup {
            replace_value(*entry, "auto_cleanup", a.map(Value::from));
        }
        if let Some(k) = &keep {
            replace_value(*entry, "keep", k.as_ref().map(SettingValue::to_value));
        }
    }
    drop(entries);
    if doc.to_string() == before {
        return Ok(false);
    }
    save_doc(file, &doc)?;
    Ok(true)
}

/// Normalize and check a workspace path given by a caller.
fn checked_path(path: &Path) -> Result<PathBuf, EditError> {
    let text = path.to_str().ok_or_else(|| EditError::InvalidPath {
        path: path.to_path_buf(),
        reason: "it is not valid UTF-8, which a TOML config cannot hold".into(),
    })?;
    normalize_abs_path(text).map_err(|reason| EditError::InvalidPath {
        path: path.to_path_buf(),
        reason,
    })
}

fn toml_str(path: &Path) -> String {
    Value::from(path.to_string_lossy().as_ref()).to_string()
}

fn toml_error(file: &Path, text: &str, e: &toml_edit::TomlError) -> ConfigError {
    error_at(
        file,
        text,
        e.span().as_ref(),
        None,
        e.message().trim().to_string(),
    )
}

/// Validate `text` as one complete config file named `file`.
fn validate(file: &Path, text: &str) -> Result<(), ConfigError> {
    Config::from_sources(file, &[(file.to_path_buf(), text.to_string())]).map(|_| ())
}

/// Read and validate `file`; `None` when it does not exist.
fn load_doc(file: &Path) -> Result<Option<DocumentMut>, EditError> {
    let text = match fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(EditError::Read {
                file: file.to_path_buf(),
                error,
            })
        }
    };
    validate(file, &text).map_err(|e| EditError::Invalid(Box::new(e)))?;
    text.parse::<DocumentMut>()
        .map(Some)
        .map_err(|e| EditError::Invalid(Box::new(toml_error(file, &text, &e))))
}

fn save_doc(file: &Path, doc: &DocumentMut) -> Result<(), EditError> {
    save_text(file, &doc.to_string())
}

fn save_text(file: &Path, text: &str) -> Result<(), EditError> {
    validate(file, text).map_err(|error| EditError::WouldBeInvalid {
        file: file.to_path_buf(),
        error: Box::new(error),
    })?;
    crate::state::write_atomic(file, text.as_bytes()).map_err(|error| EditError::Write {
        file: file.to_path_buf(),
        error,
    })
}

fn create_dir(dir: &Path) -> Result<(), EditError> {
    fs::create_dir_all(dir).map_err(|error| EditError::Write {
        file: dir.to_path_buf(),
        error,
    })
}

/// Whether a workspace table declares `path` (compared after normalization).
fn declares(table: &dyn TableLike, path: &Path) -> bool {
    table
        .get("path")
        .and_then(Item::as_str)
        .and_then(|s| normalize_abs_path(s).ok())
        .is_some_and(|p| p == path)
}

/// Every `[[workspace]]` table (or inline table of a `workspace = [...]` array) declaring
/// `path`.
fn workspace_entries_mut<'a>(doc: &'a mut DocumentMut, path: &Path) -> Vec<&'a mut dyn TableLike> {
    match doc.get_mut("workspace") {
        Some(Item::ArrayOfTables(array)) => array
            .iter_mut()
            .filter(|t| declares(*t, path))
            .map(|t| t as &mut dyn TableLike)
            .collect(),
        Some(Item::Value(Value::Array(array))) => array
            .iter_mut()
            .filter_map(Value::as_inline_table_mut)
            .filter(|t| declares(*t, path))
            .map(|t| t as &mut dyn TableLike)
            .collect(),
        _ => Vec::new(),
    }
}

/// Append a declaration of `path` (with `id` when given) in the file's existing style.
fn append_workspace(doc: &mut DocumentMut, path: &Path, id: Option<&str>) {
    let path_text = path.to_string_lossy().to_string();
    match doc.get_mut("workspace") {
        Some(Item::Value(Value::Array(array))) => {
            let mut t = toml_edit::InlineTable::new();
            t.insert("path", Value::from(path_text));
            if let Some(id) = id {
                t.insert("id", Value::from(id));
            }
            array.push(t);
        }
        _ => {
            let mut t = Table::new();
            t.insert("path", toml_edit::value(path_text));
            if let Some(id) = id {
                t.insert("id", toml_edit::value(id));
            }
            if !matches!(doc.get("workspace"), Some(Item::ArrayOfTables(_))) {
                doc.insert("workspace", Item::ArrayOfTables(ArrayOfTables::new()));
            }
            if let Some(Item::ArrayOfTables(array)) = doc.get_mut("workspace") {
                if !array.is_empty() {
                    t.decor_mut().set_prefix("\n");
                }
                array.push(t);
            }
        }
    }
}

/// The part of a removed table's leading whitespace/comments that belongs to what came
/// before it: everything before the last blank line (ending with one newline).
fn leading_block(prefix: &str) -> &str {
    match prefix.rfind("\n\n") {
        Some(i) if prefix[..i].contains('#') => &prefix[..i + 1],
        _ => "",
    }
}

/// Put comments kept from a removed table in front of the table that followed it, or at the
/// end of the document when it was the last one, so they stay where they were in the text.
fn reattach_comments(doc: &mut DocumentMut, after: Option<isize>, comments: &str) {
    let mut next: Option<isize> = None;
    if let Some(after) = after {
        visit_tables(doc.as_table(), &mut |t| {
            if let Some(p) = t.position() {
                if p > after && !matches!(next, Some(n) if n <= p) {
                    next = Some(p);
                }
            }
        });
    }
    if let Some(target) = next {
        let mut done = false;
        visit_tables_mut(doc.as_table_mut(), &mut |t| {
            if !done && t.position() == Some(target) {
                let old = t
                    .decor()
                    .prefix()
                    .and_then(|p| p.as_str())
                    .unwrap_or("")
                    .to_string();
                t.decor_mut().set_prefix(format!("{comments}{old}"));
                done = true;
            }
        });
        if done {
            return;
        }
    }
    let trailing = doc.trailing().as_str().unwrap_or("").to_string();
    doc.set_trailing(format!("{comments}{trailing}"));
}

fn visit_tables(table: &Table, f: &mut dyn FnMut(&Table)) {
    for (_, item) in table.iter() {
        match item {
            Item::Table(t) => {
                f(t);
                visit_tables(t, f);
            }
            Item::ArrayOfTables(a) => {
                for t in a.iter() {
                    f(t);
                    visit_tables(t, f);
                }
            }
            _ => {}
        }
    }
}

fn visit_tables_mut(table: &mut Table, f: &mut dyn FnMut(&mut Table)) {
    for (_, item) in table.iter_mut() {
        match item {
            Item::Table(t) => {
                f(t);
                visit_tables_mut(t, f);
            }
            Item::ArrayOfTables(a) => {
                for t in a.iter_mut() {
                    f(t);
                    visit_tables_mut(t, f);
                }
            }
            _ => {}
        }
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap()
    }

    /// Load the config whose drop-in dir is `dropin` (main file next to it).
    fn load(dropin: &Path) -> Config {
        let main = dropin.parent().unwrap().join("config.toml");
        Config::load(&main).unwrap_or_else(|e| panic!("{e}"))
    }

    fn no_temp_files_left(dir: &Path) {
        for e in fs::read_dir(dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            assert!(!name.contains(".tmp-"), "leftover temp file {name}");
        }
    }

    #[test]
    fn declare_release_redeclare_remove_cycle() {
        let tmp = tempfile::tempdir().unwrap();
        let dropin = tmp.path().join("config.d");
        let ws = Path::new("/srv/project/");

        let (file, changed) = declare_workspace(&dropin, "ws-4612d8", ws).unwrap();
        assert!(changed);
        assert_eq!(file, dropin.join("50-ws-4612d8.toml"));
        let text = read(&file);
        assert!(
            text.starts_with("# Declared by `ws-ckpt init` on "),
            "{text}"
        );
        assert!(
            text.lines()
                .next()
                .unwrap()
                .ends_with("Edit freely; `ws-ckpt release` sets state = \"absent\"."),
            "{text}"
        );
        assert!(
            text.contains("[[workspace]]\npath = \"/srv/project\"\n"),
            "{text}"
        );
        let c = load(&dropin);
        let decl = c.workspace(Path::new("/srv/project")).unwrap();
        assert_eq!(decl.state, DeclState::Present);
        assert_eq!(decl.source, file);

        // Idempotent.
        assert_eq!(
            declare_workspace(&dropin, "ws-4612d8", ws).unwrap(),
            (file.clone(), false)
        );
        assert_eq!(read(&file), text);

        // Release: state = "absent", everything else preserved.
        assert!(set_workspace_state(&file, ws, DeclState::Absent).unwrap());
        let released = read(&file);
        assert_eq!(released, format!("{text}state = \"absent\"\n"));
        assert_eq!(load(&dropin).workspaces[0].state, DeclState::Absent);
        assert!(!set_workspace_state(&file, ws, DeclState::Absent).unwrap());

        // init again removes the state key.
        assert_eq!(
            declare_workspace(&dropin, "ws-4612d8", ws).unwrap(),
            (file.clone(), true)
        );
        assert_eq!(read(&file), text);

        // Remove: the generated file disappears; a second removal changes nothing.
        assert!(remove_workspace(&file, ws).unwrap());
        assert!(!file.exists());
        assert!(!remove_workspace(&file, ws).unwrap());
        assert!(load(&dropin).workspaces.is_empty());
        no_temp_files_left(&dropin);
    }

    #[test]
    fn set_state_preserves_comments_and_formatting() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("config.toml");
        let original = "\
# Main config, maintained by hand.
[daemon]
log_level = \"debug\"   # noisy on purpose

# The team project.
[[workspace]]
path = \"/srv/team\"    # shared
keep   =  50

# Alice's sandbox.
[[workspace]]
path = \"/home/alice/sandbox\"
state = \"present\"  # flip me
allow_users = [ \"bob\" ]   # pair programming
";
        fs::write(&file, original).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();

        assert!(
            set_workspace_state(&file, Path::new("/home/alice/sandbox"), DeclState::Absent)
                .unwrap()
        );
        let expected = original.replace(
            "state = \"present\"  # flip me",
            "state = \"absent\"  # flip me",
        );
        assert_eq!(read(&file), expected);
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o640
        );

        assert!(set_workspace_state(&file, Path::new("/srv/team"), DeclState::Absent).unwrap());
        let expected2 = expected.replace("keep   =  50\n", "keep   =  50\nstate = \"absent\"\n");
        assert_eq!(read(&file), expected2);

        // Present removes the key again; the table for /srv/team is back to the original.
        assert!(set_workspace_state(&file, Path::new("/srv/team"), DeclState::Present).unwrap());
        assert_eq!(read(&file), expected);
        assert!(!set_workspace_state(&file, Path::new("/srv/team"), DeclState::Present).unwrap());

        let c = Config::load(&file).unwrap();
        assert_eq!(c.workspaces[1].state, DeclState::Absent);

        let err = set_workspace_state(&file, Path::new("/nope"), DeclState::Absent).unwrap_err();
        assert!(matches!(err, EditError::NotDeclared { .. }), "{err}");
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
        let err = set_workspace_state(
            &tmp.path().join("missing.toml"),
            Path::new("/a"),
            DeclState::Absent,
        )
        .unwrap_err();
        assert!(matches!(err, EditError::NotDeclared { .. }), "{err}");
        no_temp_files_left(tmp.path());
    }

    #[test]
    fn inline_workspace_arrays_are_edited_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("inline.toml");
        fs::write(
            &file,
            "workspace = [{ path = \"/a\" }, { path = \"/b\", state = \"absent\" }]\n",
        )
        .unwrap();
        assert!(set_workspace_state(&file, Path::new("/a"), DeclState::Absent).unwrap());
        assert!(set_workspace_state(&file, Path::new("/b"), DeclState::Present).unwrap());
        let c = Config::load(&file).unwrap();
        assert_eq!(c.workspaces[0].state, DeclState::Absent);
        assert_eq!(c.workspaces[1].state, DeclState::Present);
        assert!(remove_workspace(&file, Path::new("/a")).unwrap());
        let c = Config::load(&file).unwrap();
        assert_eq!(c.workspaces.len(), 1);
        assert_eq!(c.workspaces[0].path, PathBuf::from("/b"));
    }

    #[test]
    fn remove_keeps_other_tables_and_unrelated_comments() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("10-team.toml");
        let original = "\
# Team workspaces. Ask #infra before editing.

# first
[[workspace]]
path = \"/w/one\"

# second
[[workspace]]
path = \"/w/two\"

[retention]
keep = 5
";
        fs::write(&file, original).unwrap();
        assert!(remove_workspace(&file, Path::new("/w/one/")).unwrap());
        assert_eq!(
            read(&file),
            "# Team workspaces. Ask #infra before editing.\n\n# second\n[[workspace]]\npath = \"/w/two\"\n\n[retention]\nkeep = 5\n"
        );
        assert!(remove_workspace(&file, Path::new("/w/two")).unwrap());
        let text = read(&file);
        assert!(
            text.starts_with("# Team workspaces. Ask #infra before editing.\n"),
            "{text}"
        );
        assert!(!text.contains("[[workspace]]"), "{text}");
        assert!(text.contains("\n[retention]\nkeep = 5\n"), "{text}");
        assert!(file.exists(), "not a generated 50-* file: kept");
        let c = Config::load(&file).unwrap();
        assert!(c.workspaces.is_empty());
        assert_eq!(c.retention.keep, crate::config::Keep::Count(5));
        assert!(!remove_workspace(&file, Path::new("/w/two")).unwrap());
    }

    #[test]
    fn declare_appends_to_existing_file_and_keeps_generated_file_with_other_content() {
        let tmp = tempfile::tempdir().unwrap();
        let dropin = tmp.path().join("config.d");
        fs::create_dir(&dropin).unwrap();
        let file = dropin.join("50-ws-aaaaaa.toml");
        fs::write(&file, "# mine\n[[workspace]]\npath = \"/x\"\nkeep = 2\n").unwrap();
        assert!(
            declare_workspace(&dropin, "ws-aaaaaa", Path::new("/y"))
                .unwrap()
                .1
        );
        let text = read(&file);
        assert!(
            text.starts_with("# mine\n[[workspace]]\npath = \"/x\"\nkeep = 2\n"),
            "{text}"
        );
        let c = load(&dropin);
        assert_eq!(c.workspaces.len(), 2);
        assert_eq!(c.workspaces[1].path, PathBuf::from("/y"));
        // Removing one of two keeps the file.
        assert!(remove_workspace(&file, Path::new("/x")).unwrap());
        assert!(file.exists());
        assert_eq!(load(&dropin).workspaces.len(), 1);
    }

    #[test]
    fn write_migrated_creates_extends_and_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let dropin = tmp.path().join("config.d");
        let entries = vec![
            ("ws-4612d8".to_string(), PathBuf::from("/tmp/perf/wsA")),
            ("ws-77aa01".to_string(), PathBuf::from("/tmp/perf/wsB/")),
            ("ws-77aa01".to_string(), PathBuf::from("/tmp/perf/wsB")),
        ];
        let (file, changed) = write_migrated(&dropin, &entries).unwrap();
        assert!(changed);
        assert_eq!(file, dropin.join("40-migrated.toml"));
        let text = read(&file);
        assert!(text.starts_with("# Generated by ws-ckpt on "), "{text}");
        assert!(text.contains("ws-ckpt 0.2-0.5"), "{text}");
        assert!(text.contains("single source of\n# truth"), "{text}");
        let c = load(&dropin);
        assert_eq!(c.workspaces.len(), 2);
        assert_eq!(c.workspaces[0].id.as_deref(), Some("ws-4612d8"));
        assert_eq!(c.workspaces[1].path, PathBuf::from("/tmp/perf/wsB"));

        assert_eq!(
            write_migrated(&dropin, &entries).unwrap(),
            (file.clone(), false)
        );
        assert_eq!(read(&file), text);

        // A user comment added later survives an extension.
        let edited = text.replace(
            "[[workspace]]\npath = \"/tmp/perf/wsA\"",
            "# keep this one\n[[workspace]]\npath = \"/tmp/perf/wsA\"",
        );
        fs::write(&file, &edited).unwrap();
        let more = vec![("ws-0000ff".to_string(), PathBuf::from("/srv/c"))];
        assert!(write_migrated(&dropin, &more).unwrap().1);
        let text = read(&file);
        assert!(text.starts_with(&edited), "{text}");
        assert!(
            text.ends_with("\n[[workspace]]\npath = \"/srv/c\"\nid = \"ws-0000ff\"\n"),
            "{text}"
        );
        assert_eq!(load(&dropin).workspaces.len(), 3);

        // Nothing to write: no file is created.
        let other = tmp.path().join("other.d");
        assert_eq!(
            write_migrated(&other, &[]).unwrap(),
            (other.join(MIGRATED_FILE_NAME), false)
        );
        assert!(!other.exists());
        no_temp_files_left(&dropin);
    }

    #[test]
    fn rejects_bad_arguments_and_invalid_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dropin = tmp.path().join("config.d");
        assert!(matches!(
            declare_workspace(&dropin, "../../etc/x", Path::new("/a")),
            Err(EditError::InvalidId { .. })
        ));
        assert!(matches!(
            declare_workspace(&dropin, "ws-1", Path::new("rel/dir")),
            Err(EditError::InvalidPath { .. })
        ));
        assert!(matches!(
            write_migrated(&dropin, &[("ws-1".into(), PathBuf::from("/a/../b"))]),
            Err(EditError::InvalidPath { .. })
        ));
        assert!(!dropin.exists(), "nothing created for rejected arguments");

        // An existing file that does not validate is never rewritten.
        fs::create_dir(&dropin).unwrap();
        let file = dropin.join("50-ws-1.toml");
        let bad = "[[workspace]]\npath = \"/a\"\nbogus = 1\n";
        fs::write(&file, bad).unwrap();
        let err = declare_workspace(&dropin, "ws-1", Path::new("/a")).unwrap_err();
        match &err {
            EditError::Invalid(e) => {
                assert_eq!(e.file, file);
                assert_eq!(e.line, Some(3));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("fix this file"), "{err}");
        assert_eq!(read(&file), bad);
        assert!(matches!(
            remove_workspace(&file, Path::new("/a")),
            Err(EditError::Invalid(_))
        ));

        // Migrating an id already used by another path in the same file would not validate.
        fs::write(&file, "[[workspace]]\npath = \"/a\"\n").unwrap();
        let mig = dropin.join(MIGRATED_FILE_NAME);
        fs::write(&mig, "[[workspace]]\npath = \"/m\"\nid = \"ws-9\"\n").unwrap();
        let err = write_migrated(&dropin, &[("ws-9".into(), PathBuf::from("/n"))]).unwrap_err();
        assert!(matches!(err, EditError::WouldBeInvalid { .. }), "{err}");
        assert_eq!(read(&mig), "[[workspace]]\npath = \"/m\"\nid = \"ws-9\"\n");
    }

    #[test]
    fn shared_write_atomic_replaces_and_cleans_up() {
        use crate::state::write_atomic;
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a.toml");
        write_atomic(&file, b"one").unwrap();
        assert_eq!(read(&file), "one");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o644
        );
        write_atomic(&file, b"two").unwrap();
        assert_eq!(read(&file), "two");
        assert!(write_atomic(&tmp.path().join("missing-dir/a.toml"), b"x").is_err());
        no_temp_files_left(tmp.path());
    }
}
