//! Upstream's `config` command (ws-ckpt 0.3 and 0.5; docs/compat.md §4.9) over our desired
//! state: the overview, the global settings and one workspace's retention policy as
//! upstream's JSON documents (`ws-ckpt-overview/v1`, `ws-ckpt-config/v1`,
//! `ws-ckpt-policy/v1`), and every change as a comment-preserving edit of the config file that
//! sets the value (`config::edit`), followed by a reload. A change that leaves the merged
//! config invalid is undone (the edited files are restored) and reported.
//!
//! What it must not do: decide who may change what (`auth`: global changes need root, a
//! workspace's policy its owner), or touch anything but config files.

use crate::api::{Addressed, Caller, ConfigChange};
use crate::config::edit::{self, GlobalKey, SettingValue};
use crate::config::{format_duration, Config, Keep};
use crate::engine::Engine;
use crate::error::{Error, ErrorCode, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// What a `config` request shows (and changes).
#[derive(Debug, Clone, Copy)]
pub enum ConfigScope<'a> {
    /// No scope: the overview (a change is global, as in 0.3).
    Overview,
    /// `-g`.
    Global,
    /// `-w WS`.
    Workspace(&'a Addressed),
}

/// `--auto-cleanup-keep V` as a declaration value: `0` disables auto-cleanup (upstream's
/// meaning), anything else must be a keep count or age.
enum KeepChange {
    Disable,
    Set(SettingValue),
}

fn keep_change(text: &str) -> Result<KeepChange> {
    let t = text.trim();
    if t == "0" || t == "0s" {
        return Ok(KeepChange::Disable);
    }
    match Keep::from_str(t) {
        Ok(Keep::Count(n)) => Ok(KeepChange::Set(SettingValue::Int(i64::from(n)))),
        Ok(Keep::Age(_)) => Ok(KeepChange::Set(SettingValue::Str(t.to_string()))),
        Err(e) => Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("invalid --auto-cleanup-keep {text:?}: {}", e.0),
        )
        .hint("use a count such as 20 (0 disables auto-cleanup) or an age such as 30d")),
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidArgument, msg)
}

/// Refuse what upstream refuses: `--reset` without a workspace, global-only settings on a
/// workspace, out-of-range values.
fn check_change(scope: ConfigScope<'_>, c: &ConfigChange) -> Result<()> {
    match scope {
        ConfigScope::Workspace(_) => {
            if c.has_global_only() {
                let flag = if c.interval_secs.is_some() {
                    "--auto-cleanup-interval"
                } else if c.health_check_secs.is_some() {
                    "--health-check-interval"
                } else if c.img_size_gb.is_some() {
                    "--img-size"
                } else {
                    "--img-max-percent"
                };
                return Err(invalid(format!("{flag} is global-only; use -g")));
            }
        }
        ConfigScope::Global | ConfigScope::Overview => {
            if c.reset {
                return Err(invalid(
                    "--reset resets one workspace's policy: use it with -w WS",
                ));
            }
        }
    }
    if c.interval_secs == Some(0) {
        return Err(invalid("--auto-cleanup-interval must be at least 1 second"));
    }
    if c.img_size_gb == Some(0) {
        return Err(invalid("--img-size must be at least 1 (GB)"));
    }
    if let Some(p) = c.img_max_percent {
        if !(1..=100).contains(&p) {
            return Err(invalid(format!(
                "--img-max-percent {p} is out of range: use 1 to 100"
            )));
        }
    }
    if let Some(k) = &c.keep {
        keep_change(k)?;
    }
    Ok(())
}

/// Upstream's retention value: `{"mode":"count","count":N}` or `{"mode":"age","raw","secs"}`
/// (`raw` as written in the config file when it is known).
fn retention_json(keep: Keep, raw: Option<&toml_edit::Value>) -> Value {
    match keep {
        Keep::Count(n) => json!({"mode": "count", "count": n}),
        Keep::Age(d) => {
            let raw = raw
                .and_then(toml_edit::Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format_duration(d));
            json!({"mode": "age", "raw": raw, "secs": d.as_secs()})
        }
    }
}

/// The overview's bare keep: a number, or the age as a string.
fn bare_keep(keep: Keep, raw: Option<&toml_edit::Value>) -> Value {
    match retention_json(keep, raw) {
        Value::Object(m) if m["mode"] == "count" => m["count"].clone(),
        Value::Object(m) => m["raw"].clone(),
        other => other,
    }
}

/// The last file (merge order) that sets global `key`, if any.
fn source_of(config: &Config, key: GlobalKey) -> Option<PathBuf> {
    config
        .files
        .iter()
        .rev()
        .find(|f| edit::raw_setting(f, key).is_some())
        .cloned()
}

fn global_raw_keep(config: &Config) -> Option<toml_edit::Value> {
    source_of(config, GlobalKey::Keep).and_then(|f| edit::raw_setting(&f, GlobalKey::Keep))
}

fn source_text(p: Option<PathBuf>) -> Value {
    match p {
        Some(p) => Value::from(p.display().to_string()),
        None => Value::from("default"),
    }
}

/// `ws-ckpt-config/v1`: the global settings.
pub fn global_document(config: &Config) -> Value {
    let r = &config.retention;
    json!({
        "schema": "ws-ckpt-config/v1",
        "config_file": config.config_path,
        "mount_path": config.backend.btrfs_loop.mount,
        "socket_path": crate::ipc::socket_path(config),
        "auto_cleanup": r.auto_cleanup,
        "auto_cleanup_keep": retention_json(r.keep, global_raw_keep(config).as_ref()),
        "auto_cleanup_is_disabled": !r.auto_cleanup,
        "auto_cleanup_interval_secs": r.interval.as_secs(),
        "health_check_interval_secs": config.daemon.reconcile_interval.as_secs(),
        "img_size_gb": config.backend.btrfs_loop.img_size_gib,
        "img_max_percent": config.backend.btrfs_loop.img_max_percent,
        "sources": {
            "auto_cleanup": source_text(source_of(config, GlobalKey::AutoCleanup)),
            "auto_cleanup_keep": source_text(source_of(config, GlobalKey::Keep)),
            "auto_cleanup_interval_secs": source_text(source_of(config, GlobalKey::Interval)),
            "health_check_interval_secs": source_text(source_of(config, GlobalKey::HealthCheck)),
            "img_size_gb": source_text(source_of(config, GlobalKey::ImgSize)),
            "img_max_percent": source_text(source_of(config, GlobalKey::ImgMaxPercent)),
        },
    })
}

/// `ws-ckpt-policy/v1`: workspace `ws`'s effective retention policy, its own values
/// (`local`, null = inherited) and the global ones, with the file each effective value comes
/// from.
pub fn policy_document(config: &Config, ws_id: &str, path: &Path) -> Value {
    let decl = config.workspace(path);
    let r = &config.retention;
    let g_raw = global_raw_keep(config);
    let l_raw = decl.and_then(|d| edit::workspace_raw_keep(&d.source, path));
    let local_ac = decl.and_then(|d| d.auto_cleanup);
    let local_keep = decl.and_then(|d| d.keep);
    let eff_ac = local_ac.unwrap_or(r.auto_cleanup);
    let eff_keep = local_keep.unwrap_or(r.keep);
    let eff_raw = if local_keep.is_some() {
        l_raw.as_ref()
    } else {
        g_raw.as_ref()
    };
    let local_source = || decl.map(|d| d.source.clone());
    json!({
        "schema": "ws-ckpt-policy/v1",
        "ws_id": ws_id,
        "workspace": path,
        "effective": {
            "auto_cleanup": eff_ac,
            "auto_cleanup_keep": retention_json(eff_keep, eff_raw),
            "is_disabled": !eff_ac,
        },
        "local": {
            "auto_cleanup": local_ac,
            "auto_cleanup_keep": local_keep.map(|k| retention_json(k, l_raw.as_ref())),
        },
        "global": {
            "auto_cleanup": r.auto_cleanup,
            "auto_cleanup_keep": retention_json(r.keep, g_raw.as_ref()),
        },
        "sources": {
            "auto_cleanup": source_text(match local_ac {
                Some(_) => local_source(),
                None => source_of(config, GlobalKey::AutoCleanup),
            }),
            "auto_cleanup_keep": source_text(match local_keep {
                Some(_) => local_source(),
                None => source_of(config, GlobalKey::Keep),
            }),
        },
    })
}

impl Engine {
    /// `ws-ckpt config` (upstream's form): apply `change` to `scope` (nothing when it is
    /// empty), then return the scope's document. `caller` limits the overview's workspace
    /// counts to its own workspaces.
    pub fn config_request(
        &self,
        caller: &Caller,
        scope: ConfigScope<'_>,
        change: &ConfigChange,
    ) -> Result<Value> {
        check_change(scope, change)?;
        if !change.is_empty() {
            // Config edits are host steps (never two at once, never during an apply's).
            self.in_host(|| self.change_config(scope, change))?;
        }
        let config = self.config();
        Ok(match scope {
            ConfigScope::Overview => self.overview_document(caller),
            ConfigScope::Global => global_document(&config),
            ConfigScope::Workspace(w) => {
                policy_document(&config, w.ws_id(), &w.entry.workspace_path)
            }
        })
    }

    fn overview_document(&self, caller: &Caller) -> Value {
        let c = &*self.config();
        let state = self.store.read().state.clone();
        let mine: Vec<&crate::state::WorkspaceEntry> = state
            .iter()
            .flat_map(|s| s.workspaces.iter())
            .filter(|w| crate::auth::may_use(c, caller, w))
            .collect();
        let with_override = mine
            .iter()
            .filter(|w| {
                c.workspace(&w.workspace_path)
                    .is_some_and(|d| d.keep.is_some() || d.auto_cleanup.is_some())
            })
            .count();
        let r = &c.retention;
        json!({
            "schema": "ws-ckpt-overview/v1",
            "config_file": c.config_path,
            "global": {
                "mount_path": c.backend.btrfs_loop.mount,
                "socket_path": crate::ipc::socket_path(c),
                "log_level": c.daemon.log_level,
                "auto_cleanup": r.auto_cleanup,
                "auto_cleanup_keep": bare_keep(r.keep, global_raw_keep(c).as_ref()),
                "auto_cleanup_interval_secs": r.interval.as_secs(),
                "health_check_interval_secs": c.daemon.reconcile_interval.as_secs(),
                "img_size": c.backend.btrfs_loop.img_size_gib,
                "img_max_percent": c.backend.btrfs_loop.img_max_percent,
            },
            "workspaces": {
                "total": mine.len(),
                "with_override": with_override,
                "inherit_global": mine.len() - with_override,
            },
        })
    }

    /// Edit the files, reload; on a reload failure put every edited file back as it was.
    fn change_config(&self, scope: ConfigScope<'_>, c: &ConfigChange) -> Result<()> {
        let mut saved: Vec<(PathBuf, Option<String>)> = Vec::new();
        let result = match scope {
            ConfigScope::Workspace(w) => self.change_policy(w, c, &mut saved),
            ConfigScope::Global | ConfigScope::Overview => self.change_global(c, &mut saved),
        }
        .and_then(|()| self.reload_config());
        if let Err(e) = result {
            for (file, text) in saved.iter().rev() {
                let restored = match text {
                    Some(t) => crate::state::write_atomic(file, t.as_bytes()),
                    None => std::fs::remove_file(file),
                };
                if let Err(err) = restored {
                    tracing::error!(file = %file.display(), error = %err, "could not restore a config file after a failed change");
                }
            }
            let _ = self.reload_config();
            return Err(Error::new(
                ErrorCode::ConfigInvalid,
                format!("config change not applied: {}", e.message),
            )
            .hint("the files were restored as they were; `ws-ckpt config validate` shows what is wrong with the merged config"));
        }
        Ok(())
    }

    fn change_policy(
        &self,
        w: &Addressed,
        c: &ConfigChange,
        saved: &mut Vec<(PathBuf, Option<String>)>,
    ) -> Result<()> {
        let path = w.entry.workspace_path.clone();
        let config = self.config();
        let file = match config.workspace(&path) {
            Some(d) => d.source.clone(),
            None => {
                let file = config.dropin_dir.join(format!("50-{}.toml", w.ws_id()));
                remember(saved, &file);
                edit::declare_workspace(&config.dropin_dir, w.ws_id(), &path)?.0
            }
        };
        remember(saved, &file);
        let (mut auto_cleanup, mut keep) = if c.reset {
            (Some(None), Some(None))
        } else {
            (None, None)
        };
        if let Some(a) = c.auto_cleanup {
            auto_cleanup = Some(Some(a));
        }
        match c.keep.as_deref().map(keep_change).transpose()? {
            Some(KeepChange::Disable) => auto_cleanup = Some(Some(false)),
            Some(KeepChange::Set(v)) => keep = Some(Some(v)),
            None => {}
        }
        edit::set_workspace_policy(&file, &path, auto_cleanup, keep)?;
        Ok(())
    }

    fn change_global(
        &self,
        c: &ConfigChange,
        saved: &mut Vec<(PathBuf, Option<String>)>,
    ) -> Result<()> {
        let mut sets: Vec<(GlobalKey, SettingValue, Option<SettingValue>)> = Vec::new();
        let mut auto_cleanup = c.auto_cleanup;
        match c.keep.as_deref().map(keep_change).transpose()? {
            Some(KeepChange::Disable) => auto_cleanup = Some(false),
            Some(KeepChange::Set(v)) => {
                let alias = matches!(v, SettingValue::Int(_)).then(|| v.clone());
                sets.push((GlobalKey::Keep, v, alias));
            }
            None => {}
        }
        if let Some(a) = auto_cleanup {
            sets.push((
                GlobalKey::AutoCleanup,
                SettingValue::Bool(a),
                Some(SettingValue::Bool(a)),
            ));
        }
        let secs = |n: u64| {
            (
                SettingValue::Str(format!("{n}s")),
                Some(SettingValue::Int(n as i64)),
            )
        };
        if let Some(n) = c.interval_secs {
            let (v, a) = secs(n);
            sets.push((GlobalKey::Interval, v, a));
        }
        if let Some(n) = c.health_check_secs {
            let (v, a) = secs(n);
            sets.push((GlobalKey::HealthCheck, v, a));
        }
        if let Some(n) = c.img_size_gb {
            sets.push((GlobalKey::ImgSize, SettingValue::Int(n as i64), None));
        }
        if let Some(p) = c.img_max_percent {
            sets.push((
                GlobalKey::ImgMaxPercent,
                SettingValue::Int(i64::from(p)),
                None,
            ));
        }
        for (key, value, alias) in sets {
            let config = self.config();
            let file = edit::setting_file(&config.files, &config.config_path, key);
            remember(saved, &file);
            edit::set_global(&file, key, value, alias)?;
        }
        Ok(())
    }
}

/// Keep the text of `file` as it is now (once), to restore it when the change fails.
fn remember(saved: &mut Vec<(PathBuf, Option<String>)>, file: &Path) {
    if !saved.iter().any(|(f, _)| f == file) {
        saved.push((file.to_path_buf(), std::fs::read_to_string(file).ok()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, main: &str, dropin: &str) -> Config {
        std::fs::create_dir_all(dir.join("config.d")).unwrap();
        std::fs::write(dir.join("config.toml"), main).unwrap();
        std::fs::write(dir.join("config.d/50-ws-a.toml"), dropin).unwrap();
        Config::load(&dir.join("config.toml")).unwrap()
    }

    #[test]
    fn documents_have_upstreams_shape_and_name_the_sources() {
        let t = tempfile::tempdir().unwrap();
        let c = config(
            t.path(),
            "[retention]\nkeep = \"7d\"\n",
            "[[workspace]]\npath = \"/w/a\"\nauto_cleanup = true\n",
        );
        let p = policy_document(&c, "ws-a", Path::new("/w/a"));
        assert_eq!(p["schema"], "ws-ckpt-policy/v1");
        assert_eq!(p["effective"]["auto_cleanup"], true);
        assert_eq!(p["effective"]["is_disabled"], false);
        // The age as written, not as re-formatted ("1w").
        assert_eq!(
            p["effective"]["auto_cleanup_keep"],
            json!({"mode": "age", "raw": "7d", "secs": 604800})
        );
        assert_eq!(p["local"]["auto_cleanup_keep"], Value::Null);
        assert!(p["sources"]["auto_cleanup"]
            .as_str()
            .unwrap()
            .ends_with("50-ws-a.toml"));
        assert!(p["sources"]["auto_cleanup_keep"]
            .as_str()
            .unwrap()
            .ends_with("config.toml"));
        let g = global_document(&c);
        assert_eq!(g["schema"], "ws-ckpt-config/v1");
        assert_eq!(g["auto_cleanup_is_disabled"], true);
        assert_eq!(g["sources"]["img_size_gb"], "default");
    }

    #[test]
    fn changes_are_checked_like_upstream() {
        let ws = Addressed::new(
            crate::state::WorkspaceEntry {
                ws_id: "ws-a".into(),
                workspace_path: "/w/a".into(),
                registered_at: String::new(),
                origin_backend: crate::state::BackendType::BtrfsLoop,
                owner_uid: None,
                extra: Default::default(),
            },
            "ws-a",
        );
        let w = ConfigScope::Workspace(&ws);
        let c = |f: fn(&mut ConfigChange)| {
            let mut c = ConfigChange::default();
            f(&mut c);
            c
        };
        assert!(check_change(w, &c(|c| c.img_size_gb = Some(2))).is_err());
        assert!(check_change(w, &c(|c| c.keep = Some("7x".into()))).is_err());
        assert!(check_change(ConfigScope::Global, &c(|c| c.reset = true)).is_err());
        assert!(check_change(ConfigScope::Overview, &c(|c| c.reset = true)).is_err());
        assert!(check_change(ConfigScope::Global, &c(|c| c.img_max_percent = Some(101))).is_err());
        assert!(check_change(w, &c(|c| c.keep = Some("0".into()))).is_ok());
        assert!(check_change(w, &c(|c| c.reset = true)).is_ok());
    }
}
