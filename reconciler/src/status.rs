//! `status`: backend, daemon and per-workspace health derived from one observation and plan.
//!
//! [`build`] is pure, like the planner: a function of the config, the persisted state, the
//! observation, the plan made from them and what the serving daemon knows about itself. The
//! JSON shape of [`StatusReport`] is part of the CLI contract.
//!
//! The verdict ([`StatusReport::judge`]) is "healthy" only when the backend is mounted,
//! every workspace is ready, nothing is pending (no interrupted operation, no repair `apply`
//! would make; routine retention aside) and no finding is a warning or worse. Every reason
//! it is not is listed in `attention` with its fix. A report reduced to what a caller may
//! see, or to one workspace (`status -w`), is judged again on what is left.

use crate::config::Config;
use crate::finding::{Finding, FindingKind, Severity};
use crate::model::{Observed, PathState, Persisted};
use crate::plan::{Action, Plan};
use crate::state::{BackendType, SelectionMethod};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Overall health (`status --detailed-exitcode`: 0 / 3 / 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// The backend is mounted and every workspace ready; no warning finding.
    Healthy,
    /// Something needs attention; unaffected workspaces work.
    Degraded,
    /// Nothing can change until fixed (backend conflict, newer state).
    Error,
}

/// Per-workspace condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    /// Path, subvolume and snapshots as recorded: every operation works.
    Ready,
    /// Some snapshots are MISSING.
    MissingSnapshots,
    /// Its subvolume or the whole backend cannot be reached (image missing, not mounted).
    StorageUnavailable,
    /// The path no longer resolves to the subvolume.
    Detached,
    /// Recorded in state.json but declared in no config file (`apply --prune` releases it).
    Undeclared,
    /// An operation on it was interrupted and awaits recovery.
    Interrupted,
}

/// Usage of the backend's filesystem (`statvfs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Usage {
    /// Size of the filesystem.
    pub total_bytes: u64,
    /// Size minus free blocks (reserved blocks count as free).
    pub used_bytes: u64,
    /// What an unprivileged writer may still use.
    pub available_bytes: u64,
    /// `used_bytes` as a percentage of `total_bytes` (an advisory finding above 90).
    pub used_percent: u32,
}

/// Backend section: the effective backend and its filesystem.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendStatus {
    /// The effective backend (as resolved this pass).
    pub backend_type: BackendType,
    /// How it was chosen (as recorded in state.json, else as resolved).
    pub selection_method: SelectionMethod,
    /// Where its btrfs filesystem is (to be) mounted.
    pub mount: PathBuf,
    /// Whether that filesystem is mounted there (the right one: for a loop backend, a loop
    /// device of the image).
    pub mounted: bool,
    /// The mount source (`/dev/loopN`, or the base filesystem's device), when mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The image file of a loop backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
    /// Apparent size of the image file, when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size_bytes: Option<u64>,
    /// Loop device uses direct I/O (false = buffered, with a warning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_io: Option<bool>,
    /// Usage of the filesystem, when mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// Daemon section: whether a daemon serves requests, and what state.json says about stops.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// A daemon is serving.
    pub running: bool,
    /// The daemon's config could not be loaded; it keeps running on the last good one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_error: Option<String>,
    /// The serving daemon's process ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Seconds since it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<u64>,
    /// Last reconcile pass (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pass: Option<String>,
    /// Last unclean shutdown detected (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_unclean_shutdown: Option<String>,
    /// Last clean stop (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_clean_stop: Option<String>,
}

/// One recorded workspace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceStatus {
    /// Its ID (`ws-…`, or the `id` of its declaration).
    pub ws_id: String,
    /// Its user path (the symlink to its subvolume).
    pub path: PathBuf,
    /// The first thing wrong with it, in the order of [`Condition`]'s precedence, or ready.
    pub condition: Condition,
    /// Snapshots recorded in its index.
    pub snapshots: usize,
    /// Of which MISSING.
    pub missing: usize,
    /// Of which pinned.
    pub pinned: usize,
    /// Declared in config.
    pub declared: bool,
    /// The uid recorded as its owner at init (absent for workspaces from ws-ckpt 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uid: Option<u32>,
    /// Explanation when not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How to make it ready, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// Actions `apply` would take on it now (by name).
    #[serde(default)]
    pub pending: Vec<String>,
}

/// One reason the report is not healthy, with its fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attention {
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

/// The whole report (`status --format json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// Overall health; also the exit code ([`StatusReport::exit_code`]).
    pub health: Health,
    /// The effective backend; absent when state.json is from a newer ws-ckpt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendStatus>,
    /// The daemon serving the request, if any, and the last stops.
    pub daemon: DaemonStatus,
    /// Every recorded workspace the caller may see.
    pub workspaces: Vec<WorkspaceStatus>,
    /// The planner's findings the caller may see.
    pub findings: Vec<Finding>,
    /// Actions `apply` would take now.
    pub pending_actions: usize,
    /// Of those, the ones on no particular workspace (backend bootstrap, image growth, …) and
    /// interrupted host operations awaiting recovery, by name.
    #[serde(default)]
    pub host_pending: Vec<String>,
    /// Why the health is not "healthy", each with its fix (empty when healthy).
    #[serde(default)]
    pub attention: Vec<Attention>,
}

/// The action that runs on its own schedule when retention is on: pending between passes is
/// normal operation, not something to fix.
const ROUTINE_ACTION: &str = "apply-retention";

impl StatusReport {
    /// `status --detailed-exitcode`: 0 healthy, 3 degraded, 1 error.
    pub fn exit_code(&self) -> i32 {
        match self.health {
            Health::Healthy => 0,
            Health::Degraded => 3,
            Health::Error => 1,
        }
    }

    /// Keep only workspace `ws_id` (with its findings and the host-wide blocking ones) and
    /// judge the health on it alone (`status -w`).
    pub fn only_workspace(&mut self, ws_id: &str) {
        self.workspaces.retain(|w| w.ws_id == ws_id);
        self.findings.retain(|f| {
            f.ws_id.as_deref() == Some(ws_id) || (f.ws_id.is_none() && f.is_blocking())
        });
        self.pending_actions = self.workspaces.iter().map(|w| w.pending.len()).sum();
        self.host_pending.clear();
        self.judge();
    }

    /// Set `health` and `attention` from what the report holds.
    pub fn judge(&mut self) {
        let mut attention = Vec::new();
        match &self.backend {
            Some(b) if !b.mounted => attention.push(Attention {
                message: format!("the backend filesystem is not mounted at {}", b.mount.display()),
                fix: "run `ws-ckpt apply` (a running daemon mounts it by itself); `ws-ckpt plan` says what blocks it".into(),
            }),
            _ => {}
        }
        for f in self
            .findings
            .iter()
            .filter(|f| f.severity >= Severity::Warning)
        {
            attention.push(Attention {
                message: f.message.clone(),
                fix: f.hint.clone(),
            });
        }
        if let Some(e) = &self.daemon.config_error {
            attention.push(Attention {
                message: format!("the daemon's config does not load (it runs on the last good one): {e}"),
                fix: "fix the file named (`ws-ckpt config validate` checks it); the daemon picks it up by itself".into(),
            });
        }
        let noted: Vec<&str> = self
            .findings
            .iter()
            .filter(|f| f.severity >= Severity::Warning)
            .filter_map(|f| f.ws_id.as_deref())
            .collect();
        for w in &self.workspaces {
            if w.condition != Condition::Ready && !noted.contains(&w.ws_id.as_str()) {
                attention.push(Attention {
                    message: format!(
                        "workspace {} ({}) is {}: {}",
                        w.ws_id,
                        w.path.display(),
                        w.condition.as_str(),
                        w.detail.as_deref().unwrap_or("not ready")
                    ),
                    fix: w
                        .fix
                        .clone()
                        .unwrap_or_else(|| "run `ws-ckpt apply`".into()),
                });
            }
        }
        let repairs: Vec<String> = self
            .host_pending
            .iter()
            .cloned()
            .chain(
                self.workspaces
                    .iter()
                    .flat_map(|w| w.pending.iter().map(move |a| format!("{a} {}", w.ws_id))),
            )
            .filter(|a| !a.starts_with(ROUTINE_ACTION))
            .collect();
        if !repairs.is_empty() {
            attention.push(Attention {
                message: format!("{} change(s) pending: {}", repairs.len(), repairs.join(", ")),
                fix: "run `ws-ckpt apply` (a running daemon does at its next pass); `ws-ckpt plan` shows each with its details".into(),
            });
        }
        self.health = if self.findings.iter().any(Finding::is_blocking) {
            Health::Error
        } else if attention.is_empty() {
            Health::Healthy
        } else {
            Health::Degraded
        };
        self.attention = attention;
    }
}

impl Condition {
    /// The JSON spelling (`ready`, `missing-snapshots`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Ready => "ready",
            Condition::MissingSnapshots => "missing-snapshots",
            Condition::StorageUnavailable => "storage-unavailable",
            Condition::Detached => "detached",
            Condition::Undeclared => "undeclared",
            Condition::Interrupted => "interrupted",
        }
    }
}

/// What a running daemon knows about itself (absent when a command runs in-process).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonInfo {
    /// Its process ID.
    pub pid: u32,
    /// Seconds since it started.
    pub uptime_secs: u64,
    /// When its last reconcile pass ended (RFC 3339).
    pub last_pass: Option<String>,
    /// Why its config currently fails to load (it runs on the last good one).
    pub config_error: Option<String>,
}

/// Build the report. Pure: `plan` is the plan made from `config`, `persisted` and `obs`;
/// `daemon` describes the daemon serving the request, if one does.
pub fn build(
    config: &Config,
    persisted: &Persisted,
    obs: &Observed,
    p: &Plan,
    daemon: Option<&DaemonInfo>,
) -> StatusReport {
    let state = persisted.state.as_ref();
    let backend = p.backend.as_ref().map(|res| {
        let mounted = obs.storage.is_some();
        let device = obs.storage.as_ref().map(|s| s.device.clone());
        let direct_io = device.as_ref().and_then(|d| {
            obs.loops
                .iter()
                .find(|l| l.device.as_os_str() == d.as_str())
                .map(|l| l.direct_io)
        });
        BackendStatus {
            backend_type: res.backend_type,
            selection_method: state
                .map(|s| s.backend.selection_method)
                .unwrap_or(res.selection_method),
            mount: res.mount.clone(),
            mounted,
            device,
            image: res.image.clone(),
            image_size_bytes: obs.image.map(|i| i.size),
            direct_io,
            usage: obs.storage.as_ref().map(|s| Usage {
                total_bytes: s.usage.total,
                used_bytes: s.usage.total.saturating_sub(s.usage.free),
                available_bytes: s.usage.avail,
                used_percent: s.usage.used_percent(),
            }),
        }
    });
    let pending_ws: Vec<String> = persisted
        .pending()
        .iter()
        .filter_map(|o| o.kind.ws_id().map(str::to_string))
        .collect();
    let mut workspaces = Vec::new();
    if let Some(s) = state {
        for w in &s.workspaces {
            let idx = persisted.indexes.get(&w.ws_id);
            let snapshots = idx.map(|i| i.snapshots.len()).unwrap_or(0);
            let missing = idx
                .map(|i| i.snapshots.values().filter(|e| e.missing).count())
                .unwrap_or(0);
            let pinned = idx
                .map(|i| i.snapshots.values().filter(|e| e.pinned).count())
                .unwrap_or(0);
            let declared = config.workspace(&w.workspace_path).is_some();
            let finding = |k: FindingKind| {
                p.findings
                    .iter()
                    .find(|f| f.kind == k && f.ws_id.as_deref() == Some(w.ws_id.as_str()))
            };
            let p_disp = w.workspace_path.display();
            let detached_fix = format!(
                "move {p_disp} aside (e.g. `mv {p_disp} {p_disp}.moved`), then `ws-ckpt apply` restores the link, or `ws-ckpt recover -w {p_disp}` turns the workspace back into a plain directory"
            );
            let (condition, detail, fix) = if let Some(f) = finding(FindingKind::StorageUnavailable)
            {
                (
                    Condition::StorageUnavailable,
                    Some(f.message.clone()),
                    Some(f.hint.clone()),
                )
            } else if let Some(f) = finding(FindingKind::PathOccupied) {
                (
                    Condition::Detached,
                    Some(f.message.clone()),
                    Some(detached_fix),
                )
            } else if pending_ws.contains(&w.ws_id) {
                (
                    Condition::Interrupted,
                    Some("an interrupted operation awaits recovery".to_string()),
                    Some("run `ws-ckpt apply` to finish or revert it (a running daemon does at its next pass)".to_string()),
                )
            } else if p.backend.as_ref().is_some_and(|_| obs.storage.is_none()) {
                (
                    Condition::StorageUnavailable,
                    Some("the backend filesystem is not mounted".to_string()),
                    Some("run `ws-ckpt apply` (a running daemon mounts it by itself)".to_string()),
                )
            } else if missing > 0
                || p.actions
                    .iter()
                    .any(|a| matches!(a, Action::MarkMissing { ws_id, .. } if *ws_id == w.ws_id))
            {
                let n = missing.max(1);
                (
                    Condition::MissingSnapshots,
                    Some(format!(
                        "{n} snapshot(s) MISSING; `ws-ckpt list -w {}` shows them",
                        w.ws_id
                    )),
                    Some(format!(
                        "restore the subvolume to clear the mark, or forget it with `ws-ckpt delete -w {} -s ID --force`",
                        w.ws_id
                    )),
                )
            } else if !matches!(obs.path(&w.workspace_path), PathState::Symlink { .. }) {
                (
                    Condition::Detached,
                    Some(format!("{p_disp} is not the workspace symlink")),
                    Some(detached_fix),
                )
            } else if !declared {
                (
                    Condition::Undeclared,
                    Some("declared in no config file".to_string()),
                    Some(format!(
                        "declare it (`ws-ckpt init {p_disp}`), or release it with `ws-ckpt apply --prune`"
                    )),
                )
            } else {
                (Condition::Ready, None, None)
            };
            let pending: Vec<String> = p
                .actions
                .iter()
                .filter(|a| a.ws_id() == Some(w.ws_id.as_str()))
                .map(|a| a.name().to_string())
                .collect();
            workspaces.push(WorkspaceStatus {
                ws_id: w.ws_id.clone(),
                path: w.workspace_path.clone(),
                condition,
                snapshots,
                missing,
                pinned,
                declared,
                owner_uid: w.owner_uid,
                detail,
                fix,
                pending,
            });
        }
    }
    let config_error = daemon.and_then(|d| d.config_error.clone());
    let host_pending: Vec<String> = p
        .actions
        .iter()
        .filter(|a| a.ws_id().is_none())
        .map(|a| a.name().to_string())
        .chain(
            persisted
                .pending()
                .iter()
                .filter(|o| o.kind.ws_id().is_none())
                .map(|o| format!("interrupted {}", o.kind.name())),
        )
        .collect();
    let mut report = StatusReport {
        health: Health::Healthy,
        backend,
        daemon: DaemonStatus {
            running: daemon.is_some(),
            config_error,
            pid: daemon.map(|d| d.pid),
            uptime_secs: daemon.map(|d| d.uptime_secs),
            last_pass: daemon.and_then(|d| d.last_pass.clone()),
            last_unclean_shutdown: state.and_then(|s| s.last_unclean_shutdown.clone()),
            last_clean_stop: state.and_then(|s| s.last_clean_stop.clone()),
        },
        workspaces,
        findings: p.findings.clone(),
        pending_actions: p.actions.len(),
        host_pending,
        attention: Vec::new(),
    };
    report.judge();
    report
}
