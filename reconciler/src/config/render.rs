//! Rendering the effective config (`ws-ckpt config show`): one serde view of the typed
//! [`Config`], serialized as TOML (with comments saying where each value came from) or as
//! JSON (with the derived values scripts want: seconds, effective per-workspace policy).
//!
//! Pure: no file is read or written here.

use super::duration::format_duration;
use super::types::{Config, Keep, WorkspaceDecl};
use serde::Serialize;
use std::path::Path;

/// `keep`: a count is an integer, an age a duration string, in TOML and JSON alike.
#[derive(Serialize)]
#[serde(untagged)]
enum KeepView {
    Count(u32),
    Age(String),
}

impl From<Keep> for KeepView {
    fn from(k: Keep) -> Self {
        match k {
            Keep::Count(n) => KeepView::Count(n),
            Keep::Age(d) => KeepView::Age(format_duration(d)),
        }
    }
}

/// Which rendering: TOML (re-readable by `Config::from_sources`) or JSON (with extras).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Toml,
    Json,
}

#[derive(Serialize)]
struct View<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    config_path: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dropin_dir: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<&'a [std::path::PathBuf]>,
    daemon: DaemonView<'a>,
    backend: BackendView<'a>,
    retention: RetentionView,
    access: AccessView,
    /// `[[workspace]]` in TOML, `workspaces` in JSON.
    #[serde(rename = "workspace", skip_serializing_if = "Option::is_none")]
    workspace: Option<Vec<WorkspaceView<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workspaces: Option<Vec<WorkspaceView<'a>>>,
}

#[derive(Serialize)]
struct DaemonView<'a> {
    state_dir: &'a Path,
    runtime_dir: &'a Path,
    reconcile_interval: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reconcile_interval_secs: Option<u64>,
    log_level: &'a str,
}

#[derive(Serialize)]
struct BackendView<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "btrfs-loop")]
    btrfs_loop: LoopView<'a>,
    #[serde(rename = "btrfs-base")]
    btrfs_base: BaseView<'a>,
}

#[derive(Serialize)]
struct LoopView<'a> {
    image: &'a Path,
    mount: &'a Path,
    img_size: u64,
    img_max_percent: u32,
    legacy_image: &'a Path,
}

/// `btrfs_mount` is absent in TOML when unset (detected at run time), `null` in JSON.
#[derive(Serialize)]
struct BaseView<'a> {
    #[serde(skip_serializing_if = "Unset::is_unset")]
    btrfs_mount: Unset<&'a Path>,
}

/// An optional value: omitted in TOML when `None` (TOML has no null), `null` in JSON.
#[derive(Serialize)]
#[serde(transparent)]
struct Unset<T>(Option<T>, #[serde(skip)] Form);

impl<T> Unset<T> {
    fn is_unset(&self) -> bool {
        self.0.is_none() && self.1 == Form::Toml
    }
}

#[derive(Serialize)]
struct RetentionView {
    auto_cleanup: bool,
    keep: KeepView,
    interval: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval_secs: Option<u64>,
    max_snapshots: u32,
}

#[derive(Serialize)]
struct AccessView {
    user_init: bool,
}

#[derive(Serialize)]
struct WorkspaceView<'a> {
    path: &'a Path,
    #[serde(skip_serializing_if = "Unset::is_unset")]
    id: Unset<&'a str>,
    #[serde(skip_serializing_if = "Unset::is_unset")]
    keep: Unset<KeepView>,
    #[serde(skip_serializing_if = "Unset::is_unset")]
    auto_cleanup: Unset<bool>,
    #[serde(skip_serializing_if = "Unset::is_unset")]
    max_snapshots: Unset<u32>,
    /// Omitted in TOML when empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_users: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_groups: Option<&'a [String]>,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    effective_keep: Option<KeepView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    effective_auto_cleanup: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    effective_max_snapshots: Option<u32>,
}

impl Config {
    fn view(&self, form: Form) -> View<'_> {
        let json = form == Form::Json;
        let d = &self.daemon;
        let b = &self.backend;
        let r = &self.retention;
        let workspaces: Vec<WorkspaceView<'_>> = self
            .workspaces
            .iter()
            .map(|w| self.workspace_view(w, form))
            .collect();
        let (workspace, workspaces) = match form {
            Form::Json => (None, Some(workspaces)),
            Form::Toml => ((!workspaces.is_empty()).then_some(workspaces), None),
        };
        View {
            config_path: json.then_some(self.config_path.as_path()),
            dropin_dir: json.then_some(self.dropin_dir.as_path()),
            files: json.then_some(self.files.as_slice()),
            daemon: DaemonView {
                state_dir: &d.state_dir,
                runtime_dir: &d.runtime_dir,
                reconcile_interval: format_duration(d.reconcile_interval),
                reconcile_interval_secs: json.then_some(d.reconcile_interval.as_secs()),
                log_level: &d.log_level,
            },
            backend: BackendView {
                kind: b.kind.as_str(),
                btrfs_loop: LoopView {
                    image: &b.btrfs_loop.image,
                    mount: &b.btrfs_loop.mount,
                    img_size: b.btrfs_loop.img_size_gib,
                    img_max_percent: b.btrfs_loop.img_max_percent,
                    legacy_image: &b.btrfs_loop.legacy_image,
                },
                btrfs_base: BaseView {
                    btrfs_mount: Unset(b.btrfs_base.btrfs_mount.as_deref(), form),
                },
            },
            retention: RetentionView {
                auto_cleanup: r.auto_cleanup,
                keep: r.keep.into(),
                interval: format_duration(r.interval),
                interval_secs: json.then_some(r.interval.as_secs()),
                max_snapshots: r.max_snapshots,
            },
            access: AccessView {
                user_init: self.access.user_init,
            },
            workspace,
            workspaces,
        }
    }

    fn workspace_view<'a>(&'a self, w: &'a WorkspaceDecl, form: Form) -> WorkspaceView<'a> {
        let json = form == Form::Json;
        let list = |v: &'a [String]| (json || !v.is_empty()).then_some(v);
        WorkspaceView {
            path: &w.path,
            id: Unset(w.id.as_deref(), form),
            keep: Unset(w.keep.map(KeepView::from), form),
            auto_cleanup: Unset(w.auto_cleanup, form),
            max_snapshots: Unset(w.max_snapshots, form),
            allow_users: list(&w.allow_users),
            allow_groups: list(&w.allow_groups),
            state: w.state.as_str(),
            source: json.then_some(w.source.as_path()),
            effective_keep: json.then(|| self.effective_keep(w).into()),
            effective_auto_cleanup: json.then(|| self.effective_auto_cleanup(w)),
            effective_max_snapshots: json.then(|| self.effective_max_snapshots(w)),
        }
    }

    /// The whole effective config, defaults included, as one TOML document in a fixed key
    /// order. Parsing it back with [`Config::from_sources`] yields an equal `Config` apart
    /// from `files` and each workspace's `source` (written as a comment above each table).
    pub fn to_canonical_toml(&self) -> String {
        let body = toml::to_string(&self.view(Form::Toml))
            .expect("the config view always serializes to TOML");
        let mut doc: toml_edit::DocumentMut =
            body.parse().expect("the TOML just written parses again");
        let mut header = String::from("# Effective ws-ckpt configuration (defaults included).\n");
        if self.files.is_empty() {
            header.push_str("# No config file was read: every value is a default.\n");
        } else {
            header.push_str("# Read from:\n");
            for f in &self.files {
                header.push_str(&format!("#   {}\n", comment_safe(f)));
            }
        }
        header.push('\n');
        if let Some(t) = doc.get_mut("daemon").and_then(|i| i.as_table_mut()) {
            t.decor_mut().set_prefix(header);
        }
        if self.backend.btrfs_base.btrfs_mount.is_none() {
            if let Some(t) = doc
                .get_mut("backend")
                .and_then(|b| b.get_mut("btrfs-base"))
                .and_then(|i| i.as_table_mut())
            {
                t.set_implicit(false);
            }
            // The comment closes the (empty) [backend.btrfs-base] table: it is the text before
            // the next table.
            if let Some(t) = doc.get_mut("retention").and_then(|i| i.as_table_mut()) {
                t.decor_mut()
                    .set_prefix("# btrfs_mount is not set: detected at run time\n\n");
            }
        }
        if let Some(tables) = doc
            .get_mut("workspace")
            .and_then(|i| i.as_array_of_tables_mut())
        {
            for (t, w) in tables.iter_mut().zip(&self.workspaces) {
                t.decor_mut()
                    .set_prefix(format!("\n# declared in {}\n", comment_safe(&w.source)));
            }
        }
        doc.to_string()
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
        serde_json::to_value(self.view(Form::Json))
            .expect("the config view always serializes to JSON")
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
