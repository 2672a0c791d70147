//! Desired state: the TOML configuration (SPEC §2) parsed, validated and merged into one
//! [`Config`].
//!
//! Three steps: `raw` mirrors the TOML with serde; a pure validation turns each file into
//! typed settings with positioned errors; a pure merge combines the main file and the
//! `config.d/*.toml` drop-ins. Only [`Config::load`] reads files, and [`edit`] writes them.
//! This module must not look at the live system: whether a path exists, is mounted or is a
//! btrfs filesystem is observation's business, not the config's.
//!
//! Merge rules: files are applied in order (the main file, then drop-ins in lexical order);
//! a later file overrides each scalar key it sets. `[[workspace]]` tables are merged by path:
//! an identical re-declaration is accepted, a different one is an error naming both files.
//! The ws-ckpt 0.2/0.3 top-level keys `auto_cleanup`, `auto_cleanup_keep`,
//! `auto_cleanup_interval_secs` and `health_check_interval_secs` are aliases of
//! `retention.auto_cleanup`, `retention.keep`, `retention.interval` and
//! `daemon.reconcile_interval`; when one file sets both an alias and the new key, the new key
//! wins (and the alias is still validated). Across files, the later file wins whichever
//! spelling it uses.

pub mod duration;
pub mod edit;
pub mod keys;
mod raw;

use std::fmt;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use indexmap::IndexMap;
use toml::Spanned;

pub use duration::{format_duration, parse_duration, DurationError};
pub use edit::{
    declare_workspace, remove_workspace, set_workspace_state, write_migrated, EditError,
};

/// Where the main config file lives unless `--config`/`WS_CKPT_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/ws-ckpt/config.toml";
/// Name of the drop-in directory next to the main config file.
pub const DROPIN_DIR_NAME: &str = "config.d";
/// Default `[daemon] state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ws-ckpt";
/// Default `[daemon] runtime_dir`.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/ws-ckpt";
/// Where ws-ckpt ≤ 0.2 kept the loop image (moved to the FHS path on upgrade).
pub const DEFAULT_LEGACY_IMAGE: &str = "/data/ws-ckpt/btrfs-data.img";
/// Default `[backend.btrfs-loop] mount`.
pub const DEFAULT_LOOP_MOUNT: &str = "/mnt/btrfs-workspace";
/// File name of the loop image inside `state_dir` when `image` is not set.
pub const DEFAULT_IMAGE_NAME: &str = "btrfs-data.img";

const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// Which storage backend to use (`[backend] type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// Keep the persisted choice; detect once when there is none.
    Auto,
    /// An image file on a loop device.
    BtrfsLoop,
    /// An already mounted btrfs filesystem.
    BtrfsBase,
}

impl BackendKind {
    /// The TOML spelling: `auto`, `btrfs-loop` or `btrfs-base`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Auto => "auto",
            BackendKind::BtrfsLoop => "btrfs-loop",
            BackendKind::BtrfsBase => "btrfs-base",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BackendKind::Auto),
            "btrfs-loop" => Ok(BackendKind::BtrfsLoop),
            "btrfs-base" => Ok(BackendKind::BtrfsBase),
            other => Err(InvalidValue(format!(
                "unknown backend type \"{other}\"; use \"auto\", \"btrfs-loop\" or \"btrfs-base\""
            ))),
        }
    }
}

/// Retention policy: keep the N newest unpinned snapshots, or drop unpinned ones older than
/// an age. TOML: an integer, or a duration string such as `"30d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Keep this many newest unpinned snapshots (at least 1).
    Count(u32),
    /// Drop unpinned snapshots older than this (never zero).
    Age(Duration),
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keep::Count(n) => write!(f, "{n}"),
            Keep::Age(d) => f.write_str(&format_duration(*d)),
        }
    }
}

impl FromStr for Keep {
    type Err = InvalidValue;
    /// `"20"` → `Count(20)`, `"30d"` → `Age(30 days)`; used for `cleanup --keep`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<u32>() {
                Ok(0) => Err(InvalidValue(
                    "keep = 0 would keep nothing; use at least 1 (the newest snapshot is never deleted)".into(),
                )),
                Ok(n) => Ok(Keep::Count(n)),
                Err(_) => Err(InvalidValue(format!(
                    "keep count {s} is too large; the maximum is {}",
                    u32::MAX
                ))),
            };
        }
        match parse_duration(s) {
            Ok(d) if d.is_zero() => Err(InvalidValue(
                "a keep age of 0 would keep nothing; use e.g. \"30d\"".into(),
            )),
            Ok(d) => Ok(Keep::Age(d)),
            Err(e) => Err(InvalidValue(format!(
                "keep must be a count such as 20 or an age such as \"30d\": {e}"
            ))),
        }
    }
}

/// Whether a declared workspace should exist (`state` key of `[[workspace]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeclState {
    /// Managed as a workspace (the default).
    #[default]
    Present,
    /// Released: data goes back to a plain directory.
    Absent,
}

impl DeclState {
    /// The TOML spelling: `present` or `absent`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeclState::Present => "present",
            DeclState::Absent => "absent",
        }
    }
}

impl fmt::Display for DeclState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeclState {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "present" => Ok(DeclState::Present),
            "absent" => Ok(DeclState::Absent),
            other => Err(InvalidValue(format!(
                "state must be \"present\" or \"absent\", not \"{other}\""
            ))),
        }
    }
}

/// A single value (CLI argument or config string) that failed to parse; the message says
/// what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

/// `[daemon]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonSettings {
    /// `state.json`, indexes, lock, audit log (and the default loop image).
    pub state_dir: PathBuf,
    /// Holds the IPC socket.
    pub runtime_dir: PathBuf,
    /// Periodic full pass; [`Duration::ZERO`] = only on events.
    pub reconcile_interval: Duration,
    /// One of `error`, `warn`, `info`, `debug`, `trace`.
    pub log_level: String,
}

/// `[backend.btrfs-loop]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopSettings {
    /// Image file; defaults to `<state_dir>/btrfs-data.img`.
    pub image: PathBuf,
    /// Where the image is mounted (the data root).
    pub mount: PathBuf,
    /// Absolute size cap in GiB (`img_size`).
    pub img_size_gib: u64,
    /// Cap as a percentage (1..=100) of the host filesystem holding the image.
    pub img_max_percent: u32,
    /// Where ws-ckpt ≤ 0.2 kept the image (pre-FHS); moved to `image` on upgrade.
    pub legacy_image: PathBuf,
}

/// `[backend.btrfs-base]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseSettings {
    /// Mount point of the btrfs filesystem; `None` = detect.
    pub btrfs_mount: Option<PathBuf>,
}

/// `[backend]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSettings {
    /// `type`.
    pub kind: BackendKind,
    /// Loop-image settings (used when the effective backend is btrfs-loop).
    pub btrfs_loop: LoopSettings,
    /// Existing-filesystem settings (used when the effective backend is btrfs-base).
    pub btrfs_base: BaseSettings,
}

/// `[retention]`: defaults for every workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionSettings {
    /// Run the retention pass automatically.
    pub auto_cleanup: bool,
    /// What to keep.
    pub keep: Keep,
    /// How often the retention pass runs (never zero).
    pub interval: Duration,
}

/// `[access]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessSettings {
    /// A non-root caller may declare a workspace it owns.
    pub user_init: bool,
}

/// One `[[workspace]]` table after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceDecl {
    /// Absolute, normalized path (no trailing slash, no `.`/`..`).
    pub path: PathBuf,
    /// Explicit ws_id; `None` = derived from the path.
    pub id: Option<String>,
    /// Overrides `[retention] keep`.
    pub keep: Option<Keep>,
    /// Overrides `[retention] auto_cleanup`.
    pub auto_cleanup: Option<bool>,
    /// Users allowed besides the owner and root.
    pub allow_users: Vec<String>,
    /// Groups whose members are allowed.
    pub allow_groups: Vec<String>,
    /// Present or absent (released).
    pub state: DeclState,
    /// The file that declared it (the first one, for identical re-declarations).
    pub source: PathBuf,
}

/// The merged, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[daemon]`.
    pub daemon: DaemonSettings,
    /// `[backend]`.
    pub backend: BackendSettings,
    /// `[retention]`.
    pub retention: RetentionSettings,
    /// `[access]`.
    pub access: AccessSettings,
    /// Declared workspaces in declaration order (files in order, tables in file order).
    pub workspaces: Vec<WorkspaceDecl>,
    /// The main config file (whether or not it exists).
    pub config_path: PathBuf,
    /// `<dir of config_path>/config.d`.
    pub dropin_dir: PathBuf,
    /// Files actually read, in order.
    pub files: Vec<PathBuf>,
}

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

    fn io(file: &Path, what: &str, err: &std::io::Error) -> Self {
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
struct Source<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn err(
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

    fn loc(&self, span: Range<usize>) -> Loc {
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
struct Loc {
    file: PathBuf,
    line: usize,
    column: usize,
}

impl Loc {
    fn err(&self, key: &str, message: String) -> ConfigError {
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

/// Lexically normalize an absolute path: drop trailing slashes, repeated slashes and `.`
/// components. Relative paths and `..` components are refused with a reason.
pub(crate) fn normalize_abs_path(text: &str) -> Result<PathBuf, String> {
    if text.is_empty() {
        return Err("path is empty; use an absolute path such as \"/srv/project\"".into());
    }
    if text.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    let path = Path::new(text);
    if !path.is_absolute() {
        return Err(format!(
            "\"{text}\" is a relative path; use an absolute path starting with \"/\""
        ));
    }
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                return Err(format!(
                    "\"{text}\" contains a `..` component; write the path without `..`"
                ))
            }
            Component::Prefix(_) => return Err(format!("\"{text}\" is not a Linux path")),
        }
    }
    Ok(out)
}

/// The settings one file sets (`None` = not set in this file).
#[derive(Debug, Default)]
struct Layer {
    state_dir: Option<PathBuf>,
    runtime_dir: Option<PathBuf>,
    reconcile_interval: Option<Duration>,
    log_level: Option<String>,
    kind: Option<BackendKind>,
    image: Option<PathBuf>,
    mount: Option<PathBuf>,
    img_size_gib: Option<u64>,
    img_max_percent: Option<u32>,
    legacy_image: Option<PathBuf>,
    btrfs_mount: Option<PathBuf>,
    auto_cleanup: Option<bool>,
    keep: Option<Keep>,
    retention_interval: Option<Duration>,
    user_init: Option<bool>,
    workspaces: Vec<(WorkspaceDecl, Loc, Option<Loc>)>,
}

fn abs_path(
    src: &Source<'_>,
    value: Option<Spanned<String>>,
    key: &str,
) -> Result<Option<PathBuf>, ConfigError> {
    match value {
        None => Ok(None),
        Some(v) => normalize_abs_path(v.get_ref())
            .map(Some)
            .map_err(|m| src.err(Some(v.span()), key, m)),
    }
}

fn toml_type(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

fn duration_value(
    src: &Source<'_>,
    value: Option<Spanned<toml::Value>>,
    key: &str,
    allow_zero: bool,
) -> Result<Option<Duration>, ConfigError> {
    let Some(v) = value else { return Ok(None) };
    let span = v.span();
    let d = match v.get_ref() {
        toml::Value::String(s) => {
            parse_duration(s).map_err(|e| src.err(Some(span.clone()), key, e.to_string()))?
        }
        toml::Value::Integer(n) => {
            return Err(src.err(
                Some(span),
                key,
                format!("durations are strings with a unit, e.g. \"{n}s\"; bare integers are only accepted by *_secs keys"),
            ))
        }
        other => {
            return Err(src.err(
                Some(span),
                key,
                format!("expected a duration string such as \"60s\" or \"24h\", found {}", toml_type(other)),
            ))
        }
    };
    if d.is_zero() && !allow_zero {
        return Err(src.err(Some(span), key, "must be greater than zero"));
    }
    Ok(Some(d))
}

fn keep_value(
    src: &Source<'_>,
    value: Option<Spanned<toml::Value>>,
    key: &str,
) -> Result<Option<Keep>, ConfigError> {
    let Some(v) = value else { return Ok(None) };
    let span = v.span();
    match v.get_ref() {
        toml::Value::Integer(n) => count_keep(src, *n, span, key).map(Some),
        toml::Value::String(s)
            if !s.trim().is_empty() && s.trim().bytes().all(|b| b.is_ascii_digit()) =>
        {
            Err(src.err(
                Some(span),
                key,
                format!(
                    "write a count as an integer (keep = {}) or an age with a unit (\"{}d\")",
                    s.trim(),
                    s.trim()
                ),
            ))
        }
        toml::Value::String(s) => s
            .parse::<Keep>()
            .map(Some)
            .map_err(|e| src.err(Some(span), key, e.0)),
        other => Err(src.err(
            Some(span),
            key,
            format!(
                "expected a count such as 20 or an age such as \"30d\", found {}",
                toml_type(other)
            ),
        )),
    }
}

fn count_keep(
    src: &Source<'_>,
    n: i64,
    span: Range<usize>,
    key: &str,
) -> Result<Keep, ConfigError> {
    match u32::try_from(n) {
        Ok(0) => Err(src.err(
            Some(span),
            key,
            "keep = 0 would keep nothing; use at least 1 (the newest snapshot is never deleted)",
        )),
        Ok(n) => Ok(Keep::Count(n)),
        Err(_) => Err(src.err(
            Some(span),
            key,
            format!("keep must be between 1 and {}, not {n}", u32::MAX),
        )),
    }
}

fn secs_value(
    src: &Source<'_>,
    value: Option<Spanned<i64>>,
    key: &str,
    allow_zero: bool,
) -> Result<Option<Duration>, ConfigError> {
    let Some(v) = value else { return Ok(None) };
    let n = *v.get_ref();
    if n < 0 || (n == 0 && !allow_zero) {
        let min = if allow_zero { 0 } else { 1 };
        return Err(src.err(
            Some(v.span()),
            key,
            format!("must be at least {min} second(s), not {n}"),
        ));
    }
    Ok(Some(Duration::from_secs(n.unsigned_abs())))
}

fn name_list(
    src: &Source<'_>,
    values: Vec<Spanned<String>>,
    key: &str,
    what: &str,
) -> Result<Vec<String>, ConfigError> {
    values
        .into_iter()
        .map(|v| {
            let name = v.get_ref().trim();
            if name.is_empty() {
                Err(src.err(
                    Some(v.span()),
                    key,
                    format!("empty {what} name; remove the empty entry or write a {what} name"),
                ))
            } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                Err(src.err(
                    Some(v.span()),
                    key,
                    format!(
                        "{what} name \"{name}\" contains whitespace; write one {what} per entry"
                    ),
                ))
            } else {
                Ok(name.to_string())
            }
        })
        .collect()
}

/// Parse and validate one file (pure). Positions refer to `text`.
fn validate_file(file: &Path, text: &str) -> Result<Layer, ConfigError> {
    let src = Source { file, text };
    let raw = raw::parse(text).map_err(|e| {
        let key = e.span.as_ref().and_then(|s| raw::key_at(text, s.start));
        error_at(file, text, e.span.as_ref(), key, e.message)
    })?;

    let mut layer = Layer::default();

    let daemon = raw.daemon.unwrap_or_default();
    layer.state_dir = abs_path(&src, daemon.state_dir, "daemon.state_dir")?;
    layer.runtime_dir = abs_path(&src, daemon.runtime_dir, "daemon.runtime_dir")?;
    let legacy_health = secs_value(
        &src,
        raw.health_check_interval_secs,
        "health_check_interval_secs",
        true,
    )?;
    layer.reconcile_interval = duration_value(
        &src,
        daemon.reconcile_interval,
        "daemon.reconcile_interval",
        true,
    )?
    .or(legacy_health);
    if let Some(level) = daemon.log_level {
        let l = level.get_ref().trim().to_ascii_lowercase();
        if !LOG_LEVELS.contains(&l.as_str()) {
            return Err(src.err(
                Some(level.span()),
                "daemon.log_level",
                format!(
                    "unknown log level \"{}\"; use one of {}",
                    level.get_ref(),
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
        layer.log_level = Some(l);
    }

    let backend = raw.backend.unwrap_or_default();
    if let Some(kind) = backend.kind {
        layer.kind = Some(
            kind.get_ref()
                .parse::<BackendKind>()
                .map_err(|e| src.err(Some(kind.span()), "backend.type", e.0))?,
        );
    }
    let lp = backend.btrfs_loop.unwrap_or_default();
    layer.image = abs_path(&src, lp.image, "backend.btrfs-loop.image")?;
    layer.mount = abs_path(&src, lp.mount, "backend.btrfs-loop.mount")?;
    layer.legacy_image = abs_path(&src, lp.legacy_image, "backend.btrfs-loop.legacy_image")?;
    if let Some(size) = lp.img_size {
        let n = *size.get_ref();
        if n < 1 {
            return Err(src.err(
                Some(size.span()),
                "backend.btrfs-loop.img_size",
                format!("image size is in GiB and must be at least 1, not {n}"),
            ));
        }
        layer.img_size_gib = Some(n.unsigned_abs());
    }
    if let Some(pct) = lp.img_max_percent {
        let n = *pct.get_ref();
        if !(1..=100).contains(&n) {
            return Err(src.err(
                Some(pct.span()),
                "backend.btrfs-loop.img_max_percent",
                format!("must be a percentage between 1 and 100, not {n}"),
            ));
        }
        layer.img_max_percent = u32::try_from(n).ok();
    }
    let base = backend.btrfs_base.unwrap_or_default();
    layer.btrfs_mount = abs_path(&src, base.btrfs_mount, "backend.btrfs-base.btrfs_mount")?;

    let retention = raw.retention.unwrap_or_default();
    layer.auto_cleanup = retention.auto_cleanup.or(raw.auto_cleanup);
    let legacy_keep = match raw.auto_cleanup_keep {
        Some(v) => Some(count_keep(
            &src,
            *v.get_ref(),
            v.span(),
            "auto_cleanup_keep",
        )?),
        None => None,
    };
    layer.keep = keep_value(&src, retention.keep, "retention.keep")?.or(legacy_keep);
    let legacy_interval = secs_value(
        &src,
        raw.auto_cleanup_interval_secs,
        "auto_cleanup_interval_secs",
        false,
    )?;
    layer.retention_interval =
        duration_value(&src, retention.interval, "retention.interval", false)?.or(legacy_interval);

    layer.user_init = raw.access.unwrap_or_default().user_init;

    for table in raw.workspace {
        let ws = table.into_inner();
        let path_span = ws.path.span();
        let path = normalize_abs_path(ws.path.get_ref())
            .map_err(|m| src.err(Some(path_span.clone()), "workspace.path", m))?;
        let mut id_loc = None;
        let id = match ws.id {
            Some(id) => {
                if let Some(problem) = crate::ids::ws_id_problem(id.get_ref()) {
                    return Err(src.err(
                        Some(id.span()),
                        "workspace.id",
                        format!(
                            "invalid workspace id \"{}\": {problem} (e.g. \"ws-1a2b3c\"); or remove it to derive one from the path",
                            id.get_ref()
                        ),
                    ));
                }
                id_loc = Some(src.loc(id.span()));
                Some(id.into_inner())
            }
            None => None,
        };
        let keep = keep_value(&src, ws.keep, "workspace.keep")?;
        let allow_users = name_list(&src, ws.allow_users, "workspace.allow_users", "user")?;
        let allow_groups = name_list(&src, ws.allow_groups, "workspace.allow_groups", "group")?;
        let state = match ws.state {
            Some(s) => s
                .get_ref()
                .parse::<DeclState>()
                .map_err(|e| src.err(Some(s.span()), "workspace.state", e.0))?,
            None => DeclState::Present,
        };
        layer.workspaces.push((
            WorkspaceDecl {
                path,
                id,
                keep,
                auto_cleanup: ws.auto_cleanup,
                allow_users,
                allow_groups,
                state,
                source: file.to_path_buf(),
            },
            src.loc(path_span),
            id_loc,
        ));
    }
    Ok(layer)
}

/// Names of the settings in which two declarations of one path differ.
fn decl_differences(a: &WorkspaceDecl, b: &WorkspaceDecl) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.id != b.id {
        out.push("id");
    }
    if a.keep != b.keep {
        out.push("keep");
    }
    if a.auto_cleanup != b.auto_cleanup {
        out.push("auto_cleanup");
    }
    if a.allow_users != b.allow_users {
        out.push("allow_users");
    }
    if a.allow_groups != b.allow_groups {
        out.push("allow_groups");
    }
    if a.state != b.state {
        out.push("state");
    }
    out
}

/// `<dir of config_path>/config.d`.
pub fn dropin_dir_for(config_path: &Path) -> PathBuf {
    match config_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(DROPIN_DIR_NAME),
        _ => PathBuf::from(DROPIN_DIR_NAME),
    }
}

impl Config {
    /// All defaults (SPEC §2), as if `config_path` did not exist.
    pub fn defaults(config_path: &Path) -> Config {
        let state_dir = PathBuf::from(DEFAULT_STATE_DIR);
        Config {
            daemon: DaemonSettings {
                runtime_dir: PathBuf::from(DEFAULT_RUNTIME_DIR),
                reconcile_interval: Duration::from_secs(60),
                log_level: "info".to_string(),
                state_dir: state_dir.clone(),
            },
            backend: BackendSettings {
                kind: BackendKind::Auto,
                btrfs_loop: LoopSettings {
                    image: state_dir.join(DEFAULT_IMAGE_NAME),
                    mount: PathBuf::from(DEFAULT_LOOP_MOUNT),
                    img_size_gib: 30,
                    img_max_percent: 40,
                    legacy_image: PathBuf::from(DEFAULT_LEGACY_IMAGE),
                },
                btrfs_base: BaseSettings { btrfs_mount: None },
            },
            retention: RetentionSettings {
                auto_cleanup: false,
                keep: Keep::Count(20),
                interval: Duration::from_secs(24 * 3600),
            },
            access: AccessSettings { user_init: true },
            workspaces: Vec::new(),
            config_path: config_path.to_path_buf(),
            dropin_dir: dropin_dir_for(config_path),
            files: Vec::new(),
        }
    }

    /// Read `config_path` (missing = all defaults) then `<dir of config_path>/config.d/*.toml`
    /// in lexical order (hidden files skipped; a missing `config.d` = no drop-ins). An
    /// unreadable file or directory is an error naming it.
    pub fn load(config_path: &Path) -> Result<Config, ConfigError> {
        let mut sources = Vec::new();
        match std::fs::read_to_string(config_path) {
            Ok(text) => sources.push((config_path.to_path_buf(), text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ConfigError::io(config_path, "read the config file", &e)),
        }
        let dropin_dir = dropin_dir_for(config_path);
        match std::fs::read_dir(&dropin_dir) {
            Ok(entries) => {
                let mut files = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|e| {
                        ConfigError::io(&dropin_dir, "list the drop-in directory", &e)
                    })?;
                    let name = entry.file_name();
                    let Some(name_str) = name.to_str() else {
                        continue;
                    };
                    if name_str.starts_with('.') || !name_str.ends_with(".toml") {
                        continue;
                    }
                    let path = entry.path();
                    let meta = std::fs::metadata(&path)
                        .map_err(|e| ConfigError::io(&path, "read the drop-in file", &e))?;
                    if meta.is_file() {
                        files.push(path);
                    }
                }
                files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
                for path in files {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| ConfigError::io(&path, "read the drop-in file", &e))?;
                    sources.push((path, text));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ConfigError::io(
                    &dropin_dir,
                    "list the drop-in directory",
                    &e,
                ))
            }
        }
        Config::from_sources(config_path, &sources)
    }

    /// Pure: parse, validate and merge the given `(file, text)` pairs in order (the main
    /// config file first, then drop-ins). [`Config::load`] uses it.
    pub fn from_sources(
        config_path: &Path,
        sources: &[(PathBuf, String)],
    ) -> Result<Config, ConfigError> {
        let mut config = Config::defaults(config_path);
        let mut image = None;
        let mut workspaces: IndexMap<PathBuf, (WorkspaceDecl, Loc)> = IndexMap::new();
        let mut ids: IndexMap<String, (PathBuf, Loc)> = IndexMap::new();
        for (file, text) in sources {
            let layer = validate_file(file, text)?;
            config.files.push(file.clone());
            let d = &mut config.daemon;
            set(&mut d.state_dir, layer.state_dir);
            set(&mut d.runtime_dir, layer.runtime_dir);
            set(&mut d.reconcile_interval, layer.reconcile_interval);
            set(&mut d.log_level, layer.log_level);
            let b = &mut config.backend;
            set(&mut b.kind, layer.kind);
            if layer.image.is_some() {
                image = layer.image;
            }
            set(&mut b.btrfs_loop.mount, layer.mount);
            set(&mut b.btrfs_loop.img_size_gib, layer.img_size_gib);
            set(&mut b.btrfs_loop.img_max_percent, layer.img_max_percent);
            set(&mut b.btrfs_loop.legacy_image, layer.legacy_image);
            if layer.btrfs_mount.is_some() {
                b.btrfs_base.btrfs_mount = layer.btrfs_mount;
            }
            let r = &mut config.retention;
            set(&mut r.auto_cleanup, layer.auto_cleanup);
            set(&mut r.keep, layer.keep);
            set(&mut r.interval, layer.retention_interval);
            set(&mut config.access.user_init, layer.user_init);

            for (decl, loc, id_loc) in layer.workspaces {
                if let Some((first, first_loc)) = workspaces.get(&decl.path) {
                    let diff = decl_differences(first, &decl);
                    if diff.is_empty() {
                        continue;
                    }
                    return Err(loc.err(
                        "workspace.path",
                        format!(
                            "workspace {} is also declared at {first_loc} with different {}; keep one [[workspace]] table for this path (or make both identical)",
                            decl.path.display(),
                            diff.join(", ")
                        ),
                    ));
                }
                if let (Some(id), Some(id_loc)) = (&decl.id, id_loc) {
                    if let Some((other_path, other_loc)) = ids.get(id) {
                        return Err(id_loc.err(
                            "workspace.id",
                            format!(
                                "id \"{id}\" is already used by workspace {} at {other_loc}; give each workspace its own id",
                                other_path.display()
                            ),
                        ));
                    }
                    ids.insert(id.clone(), (decl.path.clone(), id_loc));
                }
                workspaces.insert(decl.path.clone(), (decl, loc));
            }
        }
        config.backend.btrfs_loop.image =
            image.unwrap_or_else(|| config.daemon.state_dir.join(DEFAULT_IMAGE_NAME));
        config.workspaces = workspaces.into_values().map(|(d, _)| d).collect();
        Ok(config)
    }

    /// The declaration whose path is exactly `path` (after removing trailing slashes and `.`
    /// components; no symlink resolution).
    pub fn workspace(&self, path: &Path) -> Option<&WorkspaceDecl> {
        let wanted = path
            .to_str()
            .and_then(|s| normalize_abs_path(s).ok())
            .unwrap_or_else(|| path.to_path_buf());
        self.workspaces.iter().find(|w| w.path == wanted)
    }

    /// The workspace's `keep`, else `[retention] keep`.
    pub fn effective_keep(&self, ws: &WorkspaceDecl) -> Keep {
        ws.keep.unwrap_or(self.retention.keep)
    }

    /// The workspace's `auto_cleanup`, else `[retention] auto_cleanup`.
    pub fn effective_auto_cleanup(&self, ws: &WorkspaceDecl) -> bool {
        ws.auto_cleanup.unwrap_or(self.retention.auto_cleanup)
    }

    /// The whole effective config, defaults included, as one TOML document in a fixed key
    /// order. Parsing it back with [`Config::from_sources`] yields an equal `Config` apart
    /// from `files` and each workspace's `source` (written as a comment above each table).
    pub fn to_canonical_toml(&self) -> String {
        let q = |s: &str| toml_edit::Value::from(s).to_string();
        let p = |p: &Path| q(&p.to_string_lossy());
        let keep = |k: Keep| match k {
            Keep::Count(n) => n.to_string(),
            Keep::Age(d) => q(&format_duration(d)),
        };
        let mut out = String::new();
        out.push_str("# Effective ws-ckpt configuration (defaults included).\n");
        if self.files.is_empty() {
            out.push_str("# No config file was read: every value is a default.\n");
        } else {
            out.push_str("# Read from:\n");
            for f in &self.files {
                out.push_str(&format!("#   {}\n", comment_safe(f)));
            }
        }
        let d = &self.daemon;
        out.push_str("\n[daemon]\n");
        out.push_str(&format!("state_dir = {}\n", p(&d.state_dir)));
        out.push_str(&format!("runtime_dir = {}\n", p(&d.runtime_dir)));
        out.push_str(&format!(
            "reconcile_interval = {}\n",
            q(&format_duration(d.reconcile_interval))
        ));
        out.push_str(&format!("log_level = {}\n", q(&d.log_level)));
        let b = &self.backend;
        out.push_str("\n[backend]\n");
        out.push_str(&format!("type = {}\n", q(b.kind.as_str())));
        out.push_str("\n[backend.btrfs-loop]\n");
        out.push_str(&format!("image = {}\n", p(&b.btrfs_loop.image)));
        out.push_str(&format!("mount = {}\n", p(&b.btrfs_loop.mount)));
        out.push_str(&format!("img_size = {}\n", b.btrfs_loop.img_size_gib));
        out.push_str(&format!(
            "img_max_percent = {}\n",
            b.btrfs_loop.img_max_percent
        ));
        out.push_str(&format!(
            "legacy_image = {}\n",
            p(&b.btrfs_loop.legacy_image)
        ));
        out.push_str("\n[backend.btrfs-base]\n");
        match &b.btrfs_base.btrfs_mount {
            Some(m) => out.push_str(&format!("btrfs_mount = {}\n", p(m))),
            None => out.push_str("# btrfs_mount is not set: detected at run time\n"),
        }
        let r = &self.retention;
        out.push_str("\n[retention]\n");
        out.push_str(&format!("auto_cleanup = {}\n", r.auto_cleanup));
        out.push_str(&format!("keep = {}\n", keep(r.keep)));
        out.push_str(&format!("interval = {}\n", q(&format_duration(r.interval))));
        out.push_str("\n[access]\n");
        out.push_str(&format!("user_init = {}\n", self.access.user_init));
        for w in &self.workspaces {
            out.push_str(&format!(
                "\n# declared in {}\n[[workspace]]\n",
                comment_safe(&w.source)
            ));
            out.push_str(&format!("path = {}\n", p(&w.path)));
            if let Some(id) = &w.id {
                out.push_str(&format!("id = {}\n", q(id)));
            }
            if let Some(k) = w.keep {
                out.push_str(&format!("keep = {}\n", keep(k)));
            }
            if let Some(a) = w.auto_cleanup {
                out.push_str(&format!("auto_cleanup = {a}\n"));
            }
            let list = |v: &[String]| v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ");
            if !w.allow_users.is_empty() {
                out.push_str(&format!("allow_users = [{}]\n", list(&w.allow_users)));
            }
            if !w.allow_groups.is_empty() {
                out.push_str(&format!("allow_groups = [{}]\n", list(&w.allow_groups)));
            }
            out.push_str(&format!("state = {}\n", q(w.state.as_str())));
        }
        out
    }

    /// The same content as [`Config::to_canonical_toml`], as JSON. Shape (keys in this
    /// order; durations are strings as in TOML, `keep` is a number or a duration string):
    ///
    /// ```json
    /// {
    ///   "config_path": "/etc/ws-ckpt/config.toml",
    ///   "dropin_dir": "/etc/ws-ckpt/config.d",
    ///   "files": ["/etc/ws-ckpt/config.toml"],
    ///   "daemon": {"state_dir": "...", "runtime_dir": "...", "reconcile_interval": "1m",
    ///              "reconcile_interval_secs": 60, "log_level": "info"},
    ///   "backend": {"type": "auto",
    ///               "btrfs-loop": {"image": "...", "mount": "...", "img_size": 30,
    ///                              "img_max_percent": 40},
    ///               "btrfs-base": {"btrfs_mount": null}},
    ///   "retention": {"auto_cleanup": false, "keep": 20, "interval": "1d",
    ///                 "interval_secs": 86400},
    ///   "access": {"user_init": true},
    ///   "workspaces": [{"path": "/srv/p", "id": null, "keep": null, "auto_cleanup": null,
    ///                   "allow_users": [], "allow_groups": [], "state": "present",
    ///                   "source": "/etc/ws-ckpt/config.d/50-ws-1a2b3c.toml",
    ///                   "effective_keep": 20, "effective_auto_cleanup": false}]
    /// }
    /// ```
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let keep = |k: Keep| match k {
            Keep::Count(n) => json!(n),
            Keep::Age(d) => json!(format_duration(d)),
        };
        let p = |p: &Path| json!(p.to_string_lossy());
        let d = &self.daemon;
        let b = &self.backend;
        let r = &self.retention;
        json!({
            "config_path": p(&self.config_path),
            "dropin_dir": p(&self.dropin_dir),
            "files": self.files.iter().map(|f| p(f)).collect::<Vec<_>>(),
            "daemon": {
                "state_dir": p(&d.state_dir),
                "runtime_dir": p(&d.runtime_dir),
                "reconcile_interval": format_duration(d.reconcile_interval),
                "reconcile_interval_secs": d.reconcile_interval.as_secs(),
                "log_level": d.log_level,
            },
            "backend": {
                "type": b.kind,
                "btrfs-loop": {
                    "image": p(&b.btrfs_loop.image),
                    "mount": p(&b.btrfs_loop.mount),
                    "img_size": b.btrfs_loop.img_size_gib,
                    "img_max_percent": b.btrfs_loop.img_max_percent,
                    "legacy_image": p(&b.btrfs_loop.legacy_image),
                },
                "btrfs-base": {
                    "btrfs_mount": b.btrfs_base.btrfs_mount.as_deref().map(p),
                },
            },
            "retention": {
                "auto_cleanup": r.auto_cleanup,
                "keep": keep(r.keep),
                "interval": format_duration(r.interval),
                "interval_secs": r.interval.as_secs(),
            },
            "access": {"user_init": self.access.user_init},
            "workspaces": self.workspaces.iter().map(|w| json!({
                "path": p(&w.path),
                "id": w.id,
                "keep": w.keep.map(keep),
                "auto_cleanup": w.auto_cleanup,
                "allow_users": w.allow_users,
                "allow_groups": w.allow_groups,
                "state": w.state.as_str(),
                "source": p(&w.source),
                "effective_keep": keep(self.effective_keep(w)),
                "effective_auto_cleanup": self.effective_auto_cleanup(w),
            })).collect::<Vec<_>>(),
        })
    }
}

/// A path as text that cannot end a TOML comment early.
fn comment_safe(path: &Path) -> String {
    path.display()
        .to_string()
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

impl From<ConfigError> for crate::error::Error {
    fn from(e: ConfigError) -> Self {
        let hint = if e.line.is_some() {
            "fix the file at the position shown; `ws-ckpt config validate` checks it"
        } else {
            "check that the file exists and is readable (`ws-ckpt --config PATH` or WS_CKPT_CONFIG picks another one)"
        };
        crate::error::Error::new(crate::error::ErrorCode::ConfigInvalid, e.to_string()).hint(hint)
    }
}

impl From<EditError> for crate::error::Error {
    fn from(e: EditError) -> Self {
        crate::error::Error::new(crate::error::ErrorCode::ConfigInvalid, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = "/etc/ws-ckpt/config.toml";

    fn one(text: &str) -> Result<Config, ConfigError> {
        Config::from_sources(Path::new(MAIN), &[(PathBuf::from(MAIN), text.to_string())])
    }

    fn many(files: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let sources: Vec<(PathBuf, String)> = files
            .iter()
            .map(|(f, t)| (PathBuf::from(f), t.to_string()))
            .collect();
        Config::from_sources(Path::new(MAIN), &sources)
    }

    /// Assert that `text` is rejected at `line:column` with `key`, and the message contains
    /// `needle`.
    #[track_caller]
    fn rejects(text: &str, line: usize, column: usize, key: &str, needle: &str) {
        let err = one(text).expect_err("config should be rejected");
        assert_eq!(err.file, PathBuf::from(MAIN), "{err}");
        assert_eq!((err.line, err.column), (Some(line), Some(column)), "{err}");
        assert_eq!(err.key.as_deref(), Some(key), "{err}");
        assert!(err.message.contains(needle), "{err:?} lacks {needle:?}");
    }

    #[test]
    fn empty_file_gives_spec_defaults() {
        let c = one("").unwrap();
        let mut expected = Config::defaults(Path::new(MAIN));
        expected.files = vec![PathBuf::from(MAIN)];
        assert_eq!(c, expected);
        assert_eq!(c.daemon.state_dir, PathBuf::from("/var/lib/ws-ckpt"));
        assert_eq!(c.daemon.runtime_dir, PathBuf::from("/run/ws-ckpt"));
        assert_eq!(c.daemon.reconcile_interval, Duration::from_secs(60));
        assert_eq!(c.daemon.log_level, "info");
        assert_eq!(c.backend.kind, BackendKind::Auto);
        assert_eq!(
            c.backend.btrfs_loop.image,
            PathBuf::from("/var/lib/ws-ckpt/btrfs-data.img")
        );
        assert_eq!(
            c.backend.btrfs_loop.mount,
            PathBuf::from("/mnt/btrfs-workspace")
        );
        assert_eq!(c.backend.btrfs_loop.img_size_gib, 30);
        assert_eq!(c.backend.btrfs_loop.img_max_percent, 40);
        assert_eq!(c.backend.btrfs_base.btrfs_mount, None);
        assert!(!c.retention.auto_cleanup);
        assert_eq!(c.retention.keep, Keep::Count(20));
        assert_eq!(c.retention.interval, Duration::from_secs(86_400));
        assert!(c.access.user_init);
        assert_eq!(c.dropin_dir, PathBuf::from("/etc/ws-ckpt/config.d"));
    }

    #[test]
    fn spec_sample_parses() {
        let text = r#"
[daemon]
state_dir = "/var/lib/ws-ckpt"
runtime_dir = "/run/ws-ckpt"
reconcile_interval = "60s"        # periodic full pass; "0" = only on events
log_level = "info"

[backend]
type = "auto"                     # auto | btrfs-loop | btrfs-base

[backend.btrfs-loop]
image = "/var/lib/ws-ckpt/btrfs-data.img"
mount = "/mnt/btrfs-workspace"
img_size = 30
img_max_percent = 40

[backend.btrfs-base]
btrfs_mount = "/data"

[retention]
auto_cleanup = false
keep = 20
interval = "24h"

[access]
user_init = true

[[workspace]]
path = "/home/alice/project"
id = "ws-1a2b3c"
keep = 50
auto_cleanup = true
allow_users = ["bob"]
allow_groups = ["agents"]
state = "present"
"#;
        let c = one(text).unwrap();
        assert_eq!(
            c.backend.btrfs_base.btrfs_mount,
            Some(PathBuf::from("/data"))
        );
        assert_eq!(c.workspaces.len(), 1);
        let w = &c.workspaces[0];
        assert_eq!(w.path, PathBuf::from("/home/alice/project"));
        assert_eq!(w.id.as_deref(), Some("ws-1a2b3c"));
        assert_eq!(w.keep, Some(Keep::Count(50)));
        assert_eq!(w.auto_cleanup, Some(true));
        assert_eq!(w.allow_users, vec!["bob".to_string()]);
        assert_eq!(w.allow_groups, vec!["agents".to_string()]);
        assert_eq!(w.state, DeclState::Present);
        assert_eq!(w.source, PathBuf::from(MAIN));
        assert_eq!(c.effective_keep(w), Keep::Count(50));
        assert!(c.effective_auto_cleanup(w));
    }

    #[test]
    fn image_defaults_to_state_dir_unless_set() {
        let c = one("[daemon]\nstate_dir = \"/tmp/demo/state\"\n").unwrap();
        assert_eq!(
            c.backend.btrfs_loop.image,
            PathBuf::from("/tmp/demo/state/btrfs-data.img")
        );
        // state_dir moved in a later file still moves the default image.
        let c = many(&[
            (MAIN, ""),
            (
                "/etc/ws-ckpt/config.d/10.toml",
                "[daemon]\nstate_dir = \"/s\"\n",
            ),
        ])
        .unwrap();
        assert_eq!(
            c.backend.btrfs_loop.image,
            PathBuf::from("/s/btrfs-data.img")
        );
        // An explicit image wins whatever the order.
        let c = many(&[
            (MAIN, "[backend.btrfs-loop]\nimage = \"/img/x.img\"\n"),
            (
                "/etc/ws-ckpt/config.d/10.toml",
                "[daemon]\nstate_dir = \"/s\"\n",
            ),
        ])
        .unwrap();
        assert_eq!(c.backend.btrfs_loop.image, PathBuf::from("/img/x.img"));
    }

    #[test]
    fn later_files_override_scalars_and_workspaces_accumulate() {
        let c = many(&[
            (
                MAIN,
                "[daemon]\nlog_level = \"warn\"\nreconcile_interval = \"5m\"\n[retention]\nkeep = 5\n[[workspace]]\npath = \"/a\"\n",
            ),
            (
                "/etc/ws-ckpt/config.d/10-x.toml",
                "[daemon]\nlog_level = \"debug\"\n[[workspace]]\npath = \"/b\"\n",
            ),
            (
                "/etc/ws-ckpt/config.d/20-y.toml",
                "[retention]\nkeep = \"30d\"\n[backend]\ntype = \"btrfs-base\"\n",
            ),
        ])
        .unwrap();
        assert_eq!(c.daemon.log_level, "debug");
        assert_eq!(c.daemon.reconcile_interval, Duration::from_secs(300));
        assert_eq!(
            c.retention.keep,
            Keep::Age(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(c.backend.kind, BackendKind::BtrfsBase);
        let paths: Vec<_> = c.workspaces.iter().map(|w| w.path.clone()).collect();
        assert_eq!(paths, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(
            c.workspaces[1].source,
            PathBuf::from("/etc/ws-ckpt/config.d/10-x.toml")
        );
        assert_eq!(c.files.len(), 3);
        assert_eq!(c.effective_keep(&c.workspaces[0]), c.retention.keep);
    }

    #[test]
    fn identical_redeclaration_is_fine_conflicting_one_names_both_files() {
        let c = many(&[
            (MAIN, "[[workspace]]\npath = \"/a/b\"\nkeep = 3\n"),
            (
                "/etc/ws-ckpt/config.d/50-x.toml",
                "[[workspace]]\npath = \"/a/b/\"\nkeep = 3\n",
            ),
        ])
        .unwrap();
        assert_eq!(c.workspaces.len(), 1);
        assert_eq!(c.workspaces[0].source, PathBuf::from(MAIN));

        let err = many(&[
            (MAIN, "[[workspace]]\npath = \"/a/b\"\nkeep = 3\n"),
            (
                "/etc/ws-ckpt/config.d/50-x.toml",
                "# comment\n[[workspace]]\npath = \"/a/b/\"\nstate = \"absent\"\n",
            ),
        ])
        .unwrap_err();
        assert_eq!(err.file, PathBuf::from("/etc/ws-ckpt/config.d/50-x.toml"));
        assert_eq!((err.line, err.column), (Some(3), Some(8)));
        assert_eq!(err.key.as_deref(), Some("workspace.path"));
        assert!(
            err.message.contains("/etc/ws-ckpt/config.toml:2:8"),
            "{err}"
        );
        assert!(err.message.contains("keep, state"), "{err}");
        let shown = err.to_string();
        assert!(
            shown.starts_with(
                "/etc/ws-ckpt/config.d/50-x.toml:3:8: `workspace.path`: workspace /a/b"
            ),
            "{shown}"
        );
    }

    #[test]
    fn conflicting_duplicate_within_one_file() {
        rejects(
            "[[workspace]]\npath = \"/a\"\n\n[[workspace]]\npath = \"/a\"\nid = \"x1\"\n",
            5,
            8,
            "workspace.path",
            "/etc/ws-ckpt/config.toml:2:8 with different id",
        );
    }

    #[test]
    fn duplicate_ids_across_paths_are_rejected() {
        let err = many(&[
            (MAIN, "[[workspace]]\npath = \"/a\"\nid = \"same\"\n"),
            (
                "/x/config.d/a.toml",
                "[[workspace]]\npath = \"/b\"\nid = \"same\"\n",
            ),
        ])
        .unwrap_err();
        assert_eq!(err.file, PathBuf::from("/x/config.d/a.toml"));
        assert_eq!(
            (err.line, err.column, err.key.as_deref()),
            (Some(3), Some(6), Some("workspace.id"))
        );
        assert!(err.message.contains("/a"), "{err}");
    }

    #[test]
    fn legacy_keys_are_aliases_and_new_keys_win_in_one_file() {
        let c = one(
            "auto_cleanup = true\nauto_cleanup_keep = 7\nauto_cleanup_interval_secs = 3600\nhealth_check_interval_secs = 30\n",
        )
        .unwrap();
        assert!(c.retention.auto_cleanup);
        assert_eq!(c.retention.keep, Keep::Count(7));
        assert_eq!(c.retention.interval, Duration::from_secs(3600));
        assert_eq!(c.daemon.reconcile_interval, Duration::from_secs(30));

        let c = one(
            "auto_cleanup = true\nauto_cleanup_keep = 7\nauto_cleanup_interval_secs = 3600\nhealth_check_interval_secs = 30\n\
             [daemon]\nreconcile_interval = \"0\"\n[retention]\nauto_cleanup = false\nkeep = 9\ninterval = \"2h\"\n",
        )
        .unwrap();
        assert!(!c.retention.auto_cleanup);
        assert_eq!(c.retention.keep, Keep::Count(9));
        assert_eq!(c.retention.interval, Duration::from_secs(7200));
        assert_eq!(c.daemon.reconcile_interval, Duration::ZERO);

        // Across files, the later file wins whichever spelling it uses.
        let c = many(&[
            (MAIN, "[retention]\nkeep = 9\n"),
            ("/d/x.toml", "auto_cleanup_keep = 4\n"),
        ])
        .unwrap();
        assert_eq!(c.retention.keep, Keep::Count(4));

        rejects(
            "auto_cleanup_keep = -1\n",
            1,
            21,
            "auto_cleanup_keep",
            "between 1 and",
        );
        rejects(
            "auto_cleanup_interval_secs = 0\n",
            1,
            30,
            "auto_cleanup_interval_secs",
            "at least 1",
        );
        rejects(
            "health_check_interval_secs = \"60s\"\n",
            1,
            30,
            "health_check_interval_secs",
            "integer",
        );
    }

    #[test]
    fn durations_in_config() {
        let c = one("[daemon]\nreconcile_interval = \"0\"\n[retention]\ninterval = \"2w\"\nkeep = \"90s\"\n").unwrap();
        assert_eq!(c.daemon.reconcile_interval, Duration::ZERO);
        assert_eq!(c.retention.interval, Duration::from_secs(14 * 86_400));
        assert_eq!(c.retention.keep, Keep::Age(Duration::from_secs(90)));
        rejects(
            "[daemon]\nreconcile_interval = \"60\"\n",
            2,
            22,
            "daemon.reconcile_interval",
            "without a unit",
        );
        rejects(
            "[daemon]\nreconcile_interval = 60\n",
            2,
            22,
            "daemon.reconcile_interval",
            "\"60s\"",
        );
        rejects(
            "[daemon]\nreconcile_interval = \"1y\"\n",
            2,
            22,
            "daemon.reconcile_interval",
            "`y`",
        );
        rejects(
            "[retention]\ninterval = \"0\"\n",
            2,
            12,
            "retention.interval",
            "greater than zero",
        );
        rejects(
            "[retention]\ninterval = true\n",
            2,
            12,
            "retention.interval",
            "a boolean",
        );
        rejects(
            "[retention]\nkeep = \"20\"\n",
            2,
            8,
            "retention.keep",
            "keep = 20",
        );
        rejects(
            "[retention]\nkeep = 0\n",
            2,
            8,
            "retention.keep",
            "at least 1",
        );
        rejects(
            "[retention]\nkeep = \"0\"\n",
            2,
            8,
            "retention.keep",
            "keep = 0",
        );
        rejects(
            "[retention]\nkeep = \"3 days\"\n",
            2,
            8,
            "retention.keep",
            "invalid duration",
        );
        rejects(
            "[[workspace]]\npath = \"/a\"\nkeep = 1.5\n",
            3,
            8,
            "workspace.keep",
            "a float",
        );
    }

    #[test]
    fn rejects_unknown_keys_with_position() {
        rejects(
            "[daemon]\nstate_dri = \"/x\"\n",
            2,
            1,
            "daemon.state_dri",
            "unknown field `state_dri`",
        );
        rejects("bogus = 1\n", 1, 1, "bogus", "unknown field `bogus`");
        rejects(
            "[backend.btrfs-loop]\nsize = 3\n",
            2,
            1,
            "backend.btrfs-loop.size",
            "unknown field",
        );
        rejects(
            "[[workspace]]\npath = \"/a\"\nowner = \"me\"\n",
            3,
            1,
            "workspace.owner",
            "unknown field",
        );
        let err = one("[nope]\nx = 1\n").unwrap_err();
        assert_eq!(err.line, Some(1), "{err}");
        assert!(err.message.contains("nope"), "{err}");
    }

    #[test]
    fn rejects_wrong_types_with_position() {
        rejects(
            "[daemon]\nstate_dir = 5\n",
            2,
            13,
            "daemon.state_dir",
            "invalid type",
        );
        rejects(
            "[access]\nuser_init = \"yes\"\n",
            2,
            13,
            "access.user_init",
            "invalid type",
        );
        rejects(
            "[backend.btrfs-loop]\nimg_size = \"30G\"\n",
            2,
            12,
            "backend.btrfs-loop.img_size",
            "invalid type",
        );
        rejects(
            "[[workspace]]\npath = \"/a\"\nallow_users = \"bob\"\n",
            3,
            15,
            "workspace.allow_users",
            "invalid type",
        );
        rejects("auto_cleanup = 1\n", 1, 16, "auto_cleanup", "invalid type");
    }

    #[test]
    fn rejects_syntax_errors_with_position() {
        let err = one("[daemon]\nstate_dir = \"/x\n").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        assert!(err.column.is_some(), "{err}");
        assert!(
            err.to_string().starts_with("/etc/ws-ckpt/config.toml:2:"),
            "{err}"
        );
        let err = one("[daemon]\nlog_level = \"info\"\nlog_level = \"debug\"\n").unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
    }

    #[test]
    fn rejects_bad_paths() {
        rejects(
            "[daemon]\nstate_dir = \"var/lib\"\n",
            2,
            13,
            "daemon.state_dir",
            "relative path",
        );
        rejects(
            "[daemon]\nruntime_dir = \"/run/../x\"\n",
            2,
            15,
            "daemon.runtime_dir",
            "`..`",
        );
        rejects(
            "[backend.btrfs-loop]\nimage = \"img\"\n",
            2,
            9,
            "backend.btrfs-loop.image",
            "relative",
        );
        rejects(
            "[backend.btrfs-loop]\nmount = \"\"\n",
            2,
            9,
            "backend.btrfs-loop.mount",
            "empty",
        );
        rejects(
            "[backend.btrfs-base]\nbtrfs_mount = \"data\"\n",
            2,
            15,
            "backend.btrfs-base.btrfs_mount",
            "relative",
        );
        rejects(
            "[[workspace]]\npath = \"project\"\n",
            2,
            8,
            "workspace.path",
            "relative",
        );
        rejects(
            "[[workspace]]\n  path = \"/a/../b\"\n",
            2,
            10,
            "workspace.path",
            "`..`",
        );
        rejects(
            "\n[[workspace]]\nid = \"x\"\n",
            2,
            1,
            "workspace",
            "missing field `path`",
        );
    }

    #[test]
    fn normalizes_trailing_slashes_and_dots() {
        let c =
            one("[daemon]\nstate_dir = \"/srv/ws//state/\"\n[[workspace]]\npath = \"/a/./b/\"\n")
                .unwrap();
        assert_eq!(c.daemon.state_dir, PathBuf::from("/srv/ws/state"));
        assert_eq!(c.workspaces[0].path, PathBuf::from("/a/b"));
        assert!(c.workspace(Path::new("/a/b/")).is_some());
        assert!(c.workspace(Path::new("/a/b")).is_some());
        assert!(c.workspace(Path::new("/a")).is_none());
        assert!(c.workspace(Path::new("/a/b/c")).is_none());
    }

    #[test]
    fn reserved_workspace_id_is_rejected() {
        // On the loop backend `<data_root>/snapshots` is the snapshots root itself.
        rejects(
            "[[workspace]]\npath = \"/a\"\nid = \"snapshots\"\n",
            3,
            6,
            "workspace.id",
            "snapshot directory",
        );
    }

    #[test]
    fn rejects_bad_ids_names_states_and_ranges() {
        rejects(
            "[[workspace]]\npath = \"/a\"\nid = \"../x\"\n",
            3,
            6,
            "workspace.id",
            "invalid workspace id",
        );
        rejects(
            "[[workspace]]\npath = \"/a\"\nid = \"\"\n",
            3,
            6,
            "workspace.id",
            "invalid workspace id",
        );
        let long = "a".repeat(65);
        rejects(
            &format!("[[workspace]]\npath = \"/a\"\nid = \"{long}\"\n"),
            3,
            6,
            "workspace.id",
            "invalid",
        );
        assert!(one(&format!(
            "[[workspace]]\npath = \"/a\"\nid = \"{}\"\n",
            "a".repeat(64)
        ))
        .is_ok());
        rejects(
            "[[workspace]]\npath = \"/a\"\nid = \"-x\"\n",
            3,
            6,
            "workspace.id",
            "invalid",
        );
        rejects(
            "[[workspace]]\npath = \"/a\"\nallow_users = [\"bob\", \"\"]\n",
            3,
            23,
            "workspace.allow_users",
            "empty user",
        );
        rejects(
            "[[workspace]]\npath = \"/a\"\nallow_groups = [\" \"]\n",
            3,
            17,
            "workspace.allow_groups",
            "empty group",
        );
        rejects(
            "[[workspace]]\npath = \"/a\"\nstate = \"gone\"\n",
            3,
            9,
            "workspace.state",
            "\"present\" or \"absent\"",
        );
        rejects(
            "[backend]\ntype = \"zfs\"\n",
            2,
            8,
            "backend.type",
            "btrfs-loop",
        );
        rejects(
            "[daemon]\nlog_level = \"verbose\"\n",
            2,
            13,
            "daemon.log_level",
            "error, warn, info, debug, trace",
        );
        rejects(
            "[backend.btrfs-loop]\nimg_max_percent = 0\n",
            2,
            19,
            "backend.btrfs-loop.img_max_percent",
            "between 1 and 100",
        );
        rejects(
            "[backend.btrfs-loop]\nimg_max_percent = 101\n",
            2,
            19,
            "backend.btrfs-loop.img_max_percent",
            "between 1 and 100",
        );
        rejects(
            "[backend.btrfs-loop]\nimg_size = 0\n",
            2,
            12,
            "backend.btrfs-loop.img_size",
            "at least 1",
        );
        let c = one("[[workspace]]\npath = \"/a\"\nstate = \"absent\"\n").unwrap();
        assert_eq!(c.workspaces[0].state, DeclState::Absent);
    }

    #[test]
    fn column_counts_characters_not_bytes() {
        rejects(
            "# ünïcödé\n[[workspace]]\npath = \"/a\" # é\nid = \"é\"\n",
            4,
            6,
            "workspace.id",
            "invalid",
        );
        let err = one("[[workspace]]\npath = \"/ä\"\nstate = \"x\"\n").unwrap_err();
        assert_eq!(err.column, Some(9));
    }

    #[test]
    fn error_display_omits_missing_parts() {
        let mut e = ConfigError {
            file: PathBuf::from("/f.toml"),
            line: Some(3),
            column: Some(7),
            key: Some("daemon.x".into()),
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "/f.toml:3:7: `daemon.x`: bad");
        e.column = None;
        assert_eq!(e.to_string(), "/f.toml:3: `daemon.x`: bad");
        e.line = None;
        e.key = None;
        assert_eq!(e.to_string(), "/f.toml: bad");
    }

    fn rich_config() -> Config {
        many(&[
            (
                MAIN,
                "[daemon]\nstate_dir = \"/s\"\nreconcile_interval = \"90s\"\nlog_level = \"TRACE\"\n\
                 [backend]\ntype = \"btrfs-loop\"\n[backend.btrfs-base]\nbtrfs_mount = \"/data\"\n\
                 [retention]\nauto_cleanup = true\nkeep = \"30d\"\ninterval = \"1h30m\"\n[access]\nuser_init = false\n\
                 [[workspace]]\npath = \"/w/\\\"quoted\\\" dir\"\nid = \"q.1\"\nkeep = 3\nauto_cleanup = false\n\
                 allow_users = [\"bob\", \"carol\"]\nallow_groups = [\"agents\"]\n",
            ),
            (
                "/etc/ws-ckpt/config.d/50-ws-abc.toml",
                "[[workspace]]\npath = \"/home/x\"\nstate = \"absent\"\nkeep = \"2w\"\n",
            ),
        ])
        .unwrap()
    }

    #[test]
    fn canonical_toml_round_trips() {
        let c = rich_config();
        assert_eq!(c.daemon.log_level, "trace");
        let text = c.to_canonical_toml();
        assert_eq!(text, c.to_canonical_toml(), "deterministic");
        let back = one(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let mut expected = c.clone();
        expected.files = vec![PathBuf::from(MAIN)];
        for w in &mut expected.workspaces {
            w.source = PathBuf::from(MAIN);
        }
        assert_eq!(back, expected, "{text}");
        assert!(
            text.contains("# declared in /etc/ws-ckpt/config.d/50-ws-abc.toml"),
            "{text}"
        );
        // Defaults round-trip exactly, including the comment-only btrfs_mount.
        let d = Config::defaults(Path::new(MAIN));
        let mut back = one(&d.to_canonical_toml()).unwrap();
        back.files.clear();
        assert_eq!(back, d);
        // A single-file config round-trips to an identical Config.
        let single = one(&text).unwrap();
        assert_eq!(one(&single.to_canonical_toml()).unwrap(), single);
    }

    #[test]
    fn json_has_documented_shape() {
        let c = rich_config();
        let j = c.to_json();
        assert_eq!(j["daemon"]["state_dir"], "/s");
        assert_eq!(j["daemon"]["reconcile_interval"], "90s");
        assert_eq!(j["daemon"]["reconcile_interval_secs"], 90);
        assert_eq!(j["backend"]["type"], "btrfs-loop");
        assert_eq!(j["backend"]["btrfs-loop"]["image"], "/s/btrfs-data.img");
        assert_eq!(j["backend"]["btrfs-loop"]["img_size"], 30);
        assert_eq!(j["backend"]["btrfs-base"]["btrfs_mount"], "/data");
        assert_eq!(j["retention"]["keep"], "30d");
        assert_eq!(j["retention"]["interval_secs"], 5400);
        assert_eq!(j["access"]["user_init"], false);
        assert_eq!(j["files"].as_array().map(Vec::len), Some(2));
        let ws = &j["workspaces"];
        assert_eq!(ws[0]["path"], "/w/\"quoted\" dir");
        assert_eq!(ws[0]["keep"], 3);
        assert_eq!(ws[0]["allow_users"], serde_json::json!(["bob", "carol"]));
        assert_eq!(ws[1]["id"], serde_json::Value::Null);
        assert_eq!(ws[1]["state"], "absent");
        assert_eq!(ws[1]["keep"], "2w");
        assert_eq!(ws[1]["effective_auto_cleanup"], true);
        assert_eq!(ws[1]["source"], "/etc/ws-ckpt/config.d/50-ws-abc.toml");
        let d = Config::defaults(Path::new(MAIN)).to_json();
        assert_eq!(
            d["backend"]["btrfs-base"]["btrfs_mount"],
            serde_json::Value::Null
        );
        assert_eq!(d["retention"]["keep"], 20);
    }

    #[test]
    fn keep_and_kinds_parse_and_display() {
        assert_eq!("20".parse::<Keep>(), Ok(Keep::Count(20)));
        assert_eq!(
            "30d".parse::<Keep>(),
            Ok(Keep::Age(Duration::from_secs(30 * 86_400)))
        );
        assert!("0".parse::<Keep>().is_err());
        assert!("0s".parse::<Keep>().is_err());
        assert!("4294967296".parse::<Keep>().is_err());
        assert!("abc".parse::<Keep>().is_err());
        assert_eq!(Keep::Count(20).to_string(), "20");
        assert_eq!(
            Keep::Age(Duration::from_secs(30 * 86_400)).to_string(),
            "30d"
        );
        for k in [
            BackendKind::Auto,
            BackendKind::BtrfsLoop,
            BackendKind::BtrfsBase,
        ] {
            assert_eq!(k.to_string().parse::<BackendKind>(), Ok(k));
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.to_string())
            );
        }
        assert_eq!(BackendKind::BtrfsLoop.to_string(), "btrfs-loop");
        assert_eq!("absent".parse::<DeclState>(), Ok(DeclState::Absent));
        assert_eq!(DeclState::default(), DeclState::Present);
    }

    #[test]
    fn load_reads_main_then_dropins_in_lexical_order() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        // Missing everything: defaults, nothing read.
        let c = Config::load(&main).unwrap();
        assert!(c.files.is_empty());
        assert_eq!(c.dropin_dir, dir.path().join("config.d"));
        assert_eq!(c.daemon.log_level, "info");

        std::fs::write(&main, "[daemon]\nlog_level = \"warn\"\n").unwrap();
        let d = dir.path().join("config.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("20-b.toml"), "[daemon]\nlog_level = \"debug\"\n").unwrap();
        std::fs::write(d.join("10-a.toml"), "[daemon]\nlog_level = \"error\"\n").unwrap();
        std::fs::write(d.join(".hidden.toml"), "garbage [[[").unwrap();
        std::fs::write(d.join("notes.txt"), "garbage [[[").unwrap();
        std::fs::write(d.join(".50-x.toml.tmp-1-0"), "garbage [[[").unwrap();
        std::fs::create_dir(d.join("sub.toml")).unwrap();
        let c = Config::load(&main).unwrap();
        assert_eq!(
            c.files,
            vec![main.clone(), d.join("10-a.toml"), d.join("20-b.toml")]
        );
        assert_eq!(c.daemon.log_level, "debug");

        // Only drop-ins, no main file.
        std::fs::remove_file(&main).unwrap();
        let c = Config::load(&main).unwrap();
        assert_eq!(c.files, vec![d.join("10-a.toml"), d.join("20-b.toml")]);

        // A bad drop-in is reported with its own name.
        std::fs::write(d.join("30-bad.toml"), "[daemon]\nfoo = 1\n").unwrap();
        let err = Config::load(&main).unwrap_err();
        assert_eq!(err.file, d.join("30-bad.toml"));
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn load_reports_unreadable_files() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the config file should be.
        let main = dir.path().join("config.toml");
        std::fs::create_dir(&main).unwrap();
        let err = Config::load(&main).unwrap_err();
        assert_eq!(err.file, main);
        assert!(err.to_string().contains("cannot read"), "{err}");
        // A drop-in "directory" that is a file.
        let dir2 = tempfile::tempdir().unwrap();
        std::fs::write(dir2.path().join("config.d"), "").unwrap();
        let err = Config::load(&dir2.path().join("config.toml")).unwrap_err();
        assert_eq!(err.file, dir2.path().join("config.d"));
        // Invalid UTF-8.
        std::fs::write(dir2.path().join("x.toml"), [0xff, 0xfe]).unwrap();
        let err = Config::load(&dir2.path().join("x.toml")).unwrap_err();
        assert_eq!(err.file, dir2.path().join("x.toml"));
    }

    #[test]
    fn hostile_input_never_panics() {
        let inputs = [
            "\u{0}",
            "[[workspace]]",
            "[[workspace]]\npath = 1",
            "workspace = 3",
            "workspace = [1]",
            "[daemon]\nreconcile_interval = \"99999999999999999999s\"",
            "keep = []",
            "[retention]\nkeep = -5",
            "[retention]\nkeep = 99999999999",
            "[backend.btrfs-loop]\nimg_size = -1",
            "a.b.c.d = 1",
            "[[workspace]]\npath = \"/\\u0000x\"",
            "\"\" = 1",
            "[backend]\ntype = [\"auto\"]",
        ];
        for input in inputs {
            let _ = one(input);
        }
        assert!(one("[[workspace]]\npath = \"/\\u0000x\"").is_err());
    }
}
