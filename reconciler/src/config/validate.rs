//! Validation of one file (pure): the serde mirror of the TOML (`raw`) becomes the settings
//! that file sets, each value checked with a positioned error; legacy 0.2/0.3 keys are read as
//! aliases of the new ones.

use super::duration::parse_duration;
use super::error::{error_at, ConfigError, Loc, Source};
use super::raw;
use super::types::{BackendKind, DeclState, Keep, WorkspaceDecl};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

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
pub(super) struct Layer {
    pub(super) state_dir: Option<PathBuf>,
    pub(super) runtime_dir: Option<PathBuf>,
    pub(super) reconcile_interval: Option<Duration>,
    pub(super) log_level: Option<String>,
    pub(super) kind: Option<BackendKind>,
    pub(super) image: Option<PathBuf>,
    pub(super) mount: Option<PathBuf>,
    pub(super) img_size_gib: Option<u64>,
    pub(super) img_max_percent: Option<u32>,
    pub(super) legacy_image: Option<PathBuf>,
    pub(super) btrfs_mount: Option<PathBuf>,
    pub(super) auto_cleanup: Option<bool>,
    pub(super) keep: Option<Keep>,
    pub(super) retention_interval: Option<Duration>,
    pub(super) max_snapshots: Option<u32>,
    pub(super) user_init: Option<bool>,
    pub(super) workspaces: Vec<(WorkspaceDecl, Loc, Option<Loc>)>,
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
pub(super) fn validate_file(file: &Path, text: &str) -> Result<Layer, ConfigError> {
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

    layer.max_snapshots =
        max_snapshots_value(&src, retention.max_snapshots, "retention.max_snapshots")?;
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
        let max_snapshots = max_snapshots_value(&src, ws.max_snapshots, "workspace.max_snapshots")?;
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
                max_snapshots,
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

/// `max_snapshots`: an integer from 1 to [`super::MAX_MAX_SNAPSHOTS`].
fn max_snapshots_value(
    src: &Source<'_>,
    value: Option<Spanned<i64>>,
    key: &str,
) -> Result<Option<u32>, ConfigError> {
    let Some(v) = value else { return Ok(None) };
    let n = *v.get_ref();
    match u32::try_from(n) {
        Ok(m) if (1..=super::MAX_MAX_SNAPSHOTS).contains(&m) => Ok(Some(m)),
        _ => Err(src.err(
            Some(v.span()),
            key,
            format!(
                "max_snapshots must be between 1 and {}, not {n}",
                super::MAX_MAX_SNAPSHOTS
            ),
        )),
    }
}
