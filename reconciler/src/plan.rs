//! The planner: a pure function of (desired, persisted, observed, resolved backend, now) that
//! returns ordered actions and findings (SPEC §4).
//!
//! Nothing here touches the system or the clock; every input is passed in, so each rule is
//! unit-tested over hand-built observations. The backend is resolved before planning (see
//! `resolve`) and passed in; the planner never resolves it again.

use crate::config::{Config, DeclState, Keep, WorkspaceDecl};
pub use crate::finding::{Finding, FindingKind, Severity};
use crate::ids;
use crate::model::{
    InitPhase, Observed, PathState, PendingKind, PendingOp, Persisted, ReleasePhase, RollbackPhase,
    StateProblem, StorageView,
};
use crate::resolve::{image_creation_bytes, image_target_bytes, Resolution};
use crate::state::{BackendType, SelectionMethod, WorkspaceIndex};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// More snapshots than this in one workspace gives an advisory.
pub const ADVISORY_SNAPSHOT_COUNT: usize = 1000;
/// Filesystem usage above this percentage gives an advisory.
pub const ADVISORY_FS_PERCENT: u32 = 90;
/// Name of the key in state.json recording that recorded workspaces were declared in config.
pub const DECLARED_MARKER: &str = "config_declared";
/// Key in `paths.loop_img` recording the size target the image was created or grown for.
pub const IMG_TARGET_KEY: &str = "img_target_bytes";

/// A snapshot the retention pass would delete, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionDelete {
    /// Snapshot ID.
    pub id: String,
    /// Reason, e.g. `beyond keep = 20`.
    pub reason: String,
}

/// A workspace found in legacy data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigratedWorkspace {
    /// Workspace ID.
    pub ws_id: String,
    /// User path.
    pub path: PathBuf,
    /// Snapshots recorded in its index.
    pub snapshots: usize,
}

/// An idempotent step towards the desired state. Names are the CLI's (SPEC §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Move the pre-FHS image to the configured path.
    MigrateImagePath {
        /// Old path.
        from: PathBuf,
        /// New path.
        to: PathBuf,
    },
    /// Adopt ws-ckpt ≤ 0.2 indexes found inside the btrfs filesystem.
    MigrateV0Indexes {
        /// Workspaces found.
        workspaces: Vec<MigratedWorkspace>,
    },
    /// Declare workspaces recorded by ws-ckpt 0.3 in `config.d/40-migrated.toml`.
    DeclareMigrated {
        /// Workspaces to declare.
        workspaces: Vec<MigratedWorkspace>,
    },
    /// Create/attach/mount the backend's filesystem, create its directories and record it.
    BootstrapBackend {
        /// Backend.
        backend_type: BackendType,
        /// How it was chosen.
        selection_method: SelectionMethod,
        /// Mount point.
        mount: PathBuf,
        /// data_root.
        data_root: PathBuf,
        /// snapshots_root.
        snapshots_root: PathBuf,
        /// Image (loop only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<PathBuf>,
        /// Create a new image of this many bytes first.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        create_image_bytes: Option<u64>,
        /// Size target to record for the image.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image_target_bytes: Option<u64>,
        /// Whether the filesystem must be mounted.
        mount_needed: bool,
    },
    /// Grow the loop image online.
    GrowImage {
        /// Image.
        image: PathBuf,
        /// Current size.
        from_bytes: u64,
        /// New size.
        to_bytes: u64,
    },
    /// Turn a directory into a workspace.
    InitWorkspace {
        /// ID to use.
        ws_id: String,
        /// User path.
        path: PathBuf,
    },
    /// Record an existing workspace subvolume (and create its symlink if the path is empty).
    AdoptWorkspace {
        /// ID.
        ws_id: String,
        /// User path.
        path: PathBuf,
        /// Create the symlink (path is missing).
        create_symlink: bool,
    },
    /// Record snapshot subvolumes that have no index entry.
    AdoptSnapshot {
        /// Workspace.
        ws_id: String,
        /// Snapshot IDs.
        snapshots: Vec<String>,
    },
    /// Re-create a missing or dangling workspace symlink.
    RepairSymlink {
        /// Workspace.
        ws_id: String,
        /// User path.
        path: PathBuf,
        /// Symlink target.
        target: PathBuf,
    },
    /// Mark recorded snapshots whose subvolume is gone.
    MarkMissing {
        /// Workspace.
        ws_id: String,
        /// Snapshot IDs.
        snapshots: Vec<String>,
    },
    /// Clear the mark of snapshots whose subvolume is back.
    ClearMissing {
        /// Workspace.
        ws_id: String,
        /// Snapshot IDs.
        snapshots: Vec<String>,
    },
    /// Complete an interrupted operation (proven from disk).
    FinishInterrupted {
        /// Operation ID.
        op_id: String,
        /// Operation name.
        operation: String,
        /// Workspace.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ws_id: Option<String>,
        /// What will be done.
        detail: String,
    },
    /// Undo an interrupted operation (proven from disk).
    RevertInterrupted {
        /// Operation ID.
        op_id: String,
        /// Operation name.
        operation: String,
        /// Workspace.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ws_id: Option<String>,
        /// What will be done.
        detail: String,
    },
    /// Delete snapshots per the retention policy.
    ApplyRetention {
        /// Workspace.
        ws_id: String,
        /// What to delete and why.
        delete: Vec<RetentionDelete>,
    },
    /// Give the data back as a plain directory and remove the workspace.
    ReleaseWorkspace {
        /// Workspace.
        ws_id: String,
        /// User path.
        path: PathBuf,
    },
}

impl Action {
    /// The CLI name of the action.
    pub fn name(&self) -> &'static str {
        match self {
            Action::MigrateImagePath { .. } => "migrate-image-path",
            Action::MigrateV0Indexes { .. } => "migrate-v0-indexes",
            Action::DeclareMigrated { .. } => "declare-migrated",
            Action::BootstrapBackend { .. } => "bootstrap-backend",
            Action::GrowImage { .. } => "grow-image",
            Action::InitWorkspace { .. } => "init-workspace",
            Action::AdoptWorkspace { .. } => "adopt-workspace",
            Action::AdoptSnapshot { .. } => "adopt-snapshot",
            Action::RepairSymlink { .. } => "repair-symlink",
            Action::MarkMissing { .. } => "mark-missing",
            Action::ClearMissing { .. } => "clear-missing",
            Action::FinishInterrupted { .. } => "finish-interrupted",
            Action::RevertInterrupted { .. } => "revert-interrupted",
            Action::ApplyRetention { .. } => "apply-retention",
            Action::ReleaseWorkspace { .. } => "release-workspace",
        }
    }

    /// Workspace the action is about, if any.
    pub fn ws_id(&self) -> Option<&str> {
        match self {
            Action::InitWorkspace { ws_id, .. }
            | Action::AdoptWorkspace { ws_id, .. }
            | Action::AdoptSnapshot { ws_id, .. }
            | Action::RepairSymlink { ws_id, .. }
            | Action::MarkMissing { ws_id, .. }
            | Action::ClearMissing { ws_id, .. }
            | Action::ApplyRetention { ws_id, .. }
            | Action::ReleaseWorkspace { ws_id, .. } => Some(ws_id),
            Action::FinishInterrupted { ws_id, .. } | Action::RevertInterrupted { ws_id, .. } => {
                ws_id.as_deref()
            }
            _ => None,
        }
    }

    /// One human line describing the action.
    pub fn describe(&self) -> String {
        let list = |v: &[String]| v.join(", ");
        match self {
            Action::MigrateImagePath { from, to } => {
                format!("move image {} → {}", from.display(), to.display())
            }
            Action::MigrateV0Indexes { workspaces } | Action::DeclareMigrated { workspaces } => {
                workspaces
                    .iter()
                    .map(|w| {
                        format!(
                            "{} {} ({} snapshots)",
                            w.ws_id,
                            w.path.display(),
                            w.snapshots
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            }
            Action::BootstrapBackend {
                backend_type,
                mount,
                image,
                create_image_bytes,
                mount_needed,
                ..
            } => {
                let mut s = format!("{backend_type:?} at {}", mount.display());
                if let (Some(img), Some(n)) = (image, create_image_bytes) {
                    s += &format!(", create image {} ({})", img.display(), human_bytes(*n));
                } else if let (Some(img), true) = (image, mount_needed) {
                    s += &format!(", attach and mount {}", img.display());
                }
                s
            }
            Action::GrowImage {
                image,
                from_bytes,
                to_bytes,
            } => format!(
                "{}: {} → {}",
                image.display(),
                human_bytes(*from_bytes),
                human_bytes(*to_bytes)
            ),
            Action::InitWorkspace { ws_id, path } => format!("{ws_id} {}", path.display()),
            Action::AdoptWorkspace { ws_id, path, .. } => format!("{ws_id} {}", path.display()),
            Action::RepairSymlink {
                ws_id,
                path,
                target,
            } => format!("{ws_id} {} → {}", path.display(), target.display()),
            Action::AdoptSnapshot { ws_id, snapshots }
            | Action::MarkMissing { ws_id, snapshots }
            | Action::ClearMissing { ws_id, snapshots } => {
                format!("{ws_id}: {}", list(snapshots))
            }
            Action::FinishInterrupted { detail, .. } | Action::RevertInterrupted { detail, .. } => {
                detail.clone()
            }
            Action::ApplyRetention { ws_id, delete } => format!(
                "{ws_id}: {}",
                delete
                    .iter()
                    .map(|d| format!("{}: {}", d.id, d.reason))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Action::ReleaseWorkspace { ws_id, path } => format!("{ws_id} {}", path.display()),
        }
    }
}

/// Format bytes with a binary unit.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The planner's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Effective backend (absent when it could not be resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Resolution>,
    /// Ordered actions.
    pub actions: Vec<Action>,
    /// Findings.
    pub findings: Vec<Finding>,
}

impl Plan {
    /// True when a blocking finding forbids every mutation.
    pub fn blocked(&self) -> bool {
        self.findings.iter().any(Finding::is_blocking)
    }
    /// True when any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

/// Options that change what is planned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Release undeclared workspaces (`apply --prune`).
    pub prune: bool,
}

/// System directories that may never become workspaces (the directory itself).
const SYSTEM_DIRS: &[&str] = &[
    "/",
    "/etc",
    "/usr",
    "/var",
    "/boot",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/home",
    "/root",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/opt",
    "/srv",
    "/tmp",
    "/var/tmp",
    "/mnt",
    "/media",
    "/usr/local",
    "/var/lib",
    "/var/log",
];
/// Trees nothing inside of which may become a workspace.
const SYSTEM_TREES: &[&str] = &["/proc", "/sys", "/dev", "/boot", "/etc", "/usr", "/run"];

/// Why `path` may not become a workspace, if it may not (SPEC §5.1 guards; pure).
pub fn init_guard(
    path: &Path,
    res: &Resolution,
    state_dir: &Path,
    others: &[&Path],
) -> Option<String> {
    if !path.is_absolute() {
        return Some(format!("{} is not an absolute path", path.display()));
    }
    if SYSTEM_DIRS.iter().any(|d| path == Path::new(d)) {
        return Some(format!("{} is a system directory", path.display()));
    }
    if let Some(t) = SYSTEM_TREES.iter().find(|t| path.starts_with(t)) {
        return Some(format!(
            "{} is inside the system directory {t}",
            path.display()
        ));
    }
    for (what, root) in [
        // For a loop backend the mount is the data root; for a base backend the mount is the
        // user's own filesystem, where workspaces may live (same-filesystem init).
        ("ws-ckpt's data root", &res.data_root),
        ("ws-ckpt's snapshots root", &res.snapshots_root),
        ("ws-ckpt's state directory", &state_dir.to_path_buf()),
    ] {
        if path.starts_with(root) || root.starts_with(path) {
            return Some(format!(
                "{} overlaps {what} {}",
                path.display(),
                root.display()
            ));
        }
    }
    if let Some(image) = &res.image {
        if image.starts_with(path) {
            return Some(format!(
                "{} contains the loop image {}",
                path.display(),
                image.display()
            ));
        }
    }
    for other in others {
        if *other == path {
            continue;
        }
        if path.starts_with(other) {
            return Some(format!(
                "{} is inside the workspace {}",
                path.display(),
                other.display()
            ));
        }
        if other.starts_with(path) {
            return Some(format!(
                "{} contains the workspace {}",
                path.display(),
                other.display()
            ));
        }
    }
    None
}

/// Snapshots the retention policy deletes: never pinned, never missing, never the newest.
pub fn retention_deletions(
    index: &WorkspaceIndex,
    keep: Keep,
    now: SystemTime,
) -> Vec<RetentionDelete> {
    let newest = index.snapshots.keys().last().cloned();
    let candidates: Vec<(&String, Option<SystemTime>)> = index
        .snapshots
        .iter()
        .filter(|(_, e)| !e.pinned)
        .map(|(id, e)| (id, crate::time::parse_rfc3339(&e.created_at)))
        .collect();
    let mut out = Vec::new();
    match keep {
        Keep::Count(n) => {
            let n = n as usize;
            if candidates.len() > n {
                for (id, _) in &candidates[..candidates.len() - n] {
                    out.push(RetentionDelete {
                        id: (*id).clone(),
                        reason: format!("beyond keep = {n}"),
                    });
                }
            }
        }
        Keep::Age(age) => {
            let cutoff = now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
            for (id, created) in &candidates {
                if created.is_some_and(|c| c < cutoff) {
                    out.push(RetentionDelete {
                        id: (*id).clone(),
                        reason: format!("older than {keep}"),
                    });
                }
            }
        }
    }
    out.retain(|d| Some(&d.id) != newest.as_ref() && !index.snapshots[&d.id].missing);
    out
}

/// Plan against `res`, the backend resolved from the same observation. Pure: same inputs,
/// same plan.
pub fn plan(
    config: &Config,
    persisted: &Persisted,
    obs: &Observed,
    res: &Resolution,
    opts: PlanOptions,
    now: SystemTime,
) -> Plan {
    let mut p = Plan::default();
    if let Some(StateProblem::NewerVersion { version, path }) = &persisted.problem {
        p.findings.push(Finding::new(
            FindingKind::NewerStateVersion,
            Severity::Error,
            format!(
                "{} has version {version}, written by a newer ws-ckpt; it is left untouched",
                path.display()
            ),
            "upgrade ws-ckpt to the version that wrote it".to_string(),
        ));
        return p;
    }
    if let Some(StateProblem::Corrupt { moved_to, error }) = &persisted.problem {
        p.findings.push(Finding::new(
            FindingKind::StateRebuilt,
            Severity::Warning,
            format!("state.json could not be read ({error}); it was moved to {} and the state is rebuilt from the disk", moved_to.display()),
            "compare the moved file with the rebuilt state.json, then delete it".to_string(),
        ));
    }
    for (ws_id, moved) in &persisted.corrupt_indexes {
        p.findings.push(Finding {
            ws_id: Some(ws_id.clone()),
            ..Finding::new(
                FindingKind::StateRebuilt,
                Severity::Warning,
                format!("the index of {ws_id} could not be read; it was moved to {} and is rebuilt from the snapshot subvolumes (messages and pins are lost)", moved.display()),
                "restore messages from the moved file if needed, then delete it".to_string(),
            )
        });
    }
    if let Some(conflict) = &res.conflict {
        p.findings.push(conflict.clone());
        p.backend = Some(res.clone());
        return p;
    }
    let mut planner = Planner {
        config,
        persisted,
        obs,
        res,
        opts,
        now,
        plan: p,
    };
    planner.run();
    let mut p = planner.plan;
    p.backend = Some(res.clone());
    p
}

struct Planner<'a> {
    config: &'a Config,
    persisted: &'a Persisted,
    obs: &'a Observed,
    res: &'a Resolution,
    opts: PlanOptions,
    now: SystemTime,
    plan: Plan,
}

impl Planner<'_> {
    fn act(&mut self, a: Action) {
        self.plan.actions.push(a);
    }
    fn find(&mut self, f: Finding) {
        self.plan.findings.push(f);
    }

    fn run(&mut self) {
        let storage_ready = self.backend();
        let busy = self.pending(storage_ready);
        let Some(view) = self.obs.storage.as_ref().filter(|_| storage_ready) else {
            return;
        };
        if self.migrations(view) {
            return;
        }
        self.recorded_workspaces(view, &busy);
        self.declared_workspaces(view, &busy);
        self.advisories(view);
    }

    /// Backend rules. Returns true when storage is mounted and ready for workspace planning.
    fn backend(&mut self) -> bool {
        let res = self.res;
        let state = self.persisted.state.as_ref();
        let recorded = state.map(|s| s.workspaces.len()).unwrap_or(0);
        let mut create_image_bytes = None;
        let mut image_target = None;
        if let Some(image) = &res.image {
            let lcfg = &self.config.backend.btrfs_loop;
            match (&self.obs.image, &self.obs.legacy_image) {
                (None, Some(_)) if lcfg.legacy_image != *image => {
                    self.act(Action::MigrateImagePath {
                        from: lcfg.legacy_image.clone(),
                        to: image.clone(),
                    });
                }
                (Some(_), Some(_)) if lcfg.legacy_image != *image => {
                    self.find(Finding::new(
                        FindingKind::Ambiguous,
                        Severity::Warning,
                        format!("both the pre-FHS image {} and {} exist; ws-ckpt uses the new one and leaves the old one alone", lcfg.legacy_image.display(), image.display()),
                        format!("check which holds your data; remove {} once it is no longer needed", lcfg.legacy_image.display()),
                    ));
                }
                (None, None) => {
                    if recorded > 0 {
                        self.storage_unavailable(&format!(
                            "the loop image {} is missing",
                            image.display()
                        ));
                        return false;
                    }
                    let host = self.obs.image_host_usage.as_ref();
                    create_image_bytes = Some(image_creation_bytes(self.config, host));
                    image_target = Some(image_target_bytes(self.config, host));
                }
                _ => {}
            }
        }
        let mounted = self.obs.storage.is_some();
        let view = self.obs.storage.as_ref();
        let record_differs = match state {
            None => true,
            Some(s) => {
                s.backend.backend_type != res.backend_type
                    || s.paths.mount_path != res.mount
                    || s.paths.data_root != res.data_root
                    || s.paths.snapshots_root != res.snapshots_root
                    || s.paths.loop_img.as_ref().map(|l| &l.img_path) != res.image.as_ref()
                    || (matches!(
                        res.selection_method,
                        SelectionMethod::Config | SelectionMethod::ConfigOverride
                    ) && s.backend.selection_method != res.selection_method)
            }
        };
        let dirs_missing = view.is_some_and(|v| !v.data_root_exists || !v.snapshots_root_exists);
        if !mounted || record_differs || dirs_missing || create_image_bytes.is_some() {
            self.act(Action::BootstrapBackend {
                backend_type: res.backend_type,
                selection_method: res.selection_method,
                mount: res.mount.clone(),
                data_root: res.data_root.clone(),
                snapshots_root: res.snapshots_root.clone(),
                image: res.image.clone(),
                create_image_bytes,
                image_target_bytes: image_target,
                mount_needed: !mounted,
            });
        }
        if !mounted {
            if create_image_bytes.is_some() {
                // A brand-new, empty filesystem: every declared workspace will be initialized.
                let empty = StorageView {
                    data_root_exists: true,
                    snapshots_root_exists: true,
                    ..Default::default()
                };
                self.declared_workspaces(&empty, &BTreeSet::new());
            }
            return false;
        }
        if let (Some(image), Some(info), Some(s)) = (&res.image, &self.obs.image, state) {
            self.grow(image, info.size, s);
        }
        true
    }

    fn grow(&mut self, image: &Path, current: u64, state: &crate::state::StateFile) {
        let target = image_target_bytes(self.config, self.obs.image_host_usage.as_ref());
        let recorded_target = state
            .paths
            .loop_img
            .as_ref()
            .and_then(|l| l.extra.get(IMG_TARGET_KEY))
            .and_then(|v| v.as_u64());
        let wanted_growth = match recorded_target {
            Some(r) => target > r,
            None => true,
        };
        if target > current && wanted_growth {
            self.act(Action::GrowImage {
                image: image.to_path_buf(),
                from_bytes: current,
                to_bytes: target,
            });
        } else if target < current && recorded_target.is_some_and(|r| target < r) {
            self.find(Finding::new(
                FindingKind::ImageShrinkRefused,
                Severity::Info,
                format!(
                    "the config asks for a {} image but {} is {}; ws-ckpt never shrinks an image",
                    human_bytes(target),
                    image.display(),
                    human_bytes(current)
                ),
                "raise img_size/img_max_percent again, or leave it: the image keeps its size"
                    .to_string(),
            ));
        }
    }

    /// Per-workspace storage-unavailable findings (SPEC §4 rule 3).
    fn storage_unavailable(&mut self, why: &str) {
        let Some(state) = &self.persisted.state else {
            return;
        };
        for w in &state.workspaces {
            let n = self
                .persisted
                .indexes
                .get(&w.ws_id)
                .map(|i| i.snapshots.len())
                .unwrap_or(0);
            let f = Finding::new(
                FindingKind::StorageUnavailable,
                Severity::Error,
                format!(
                    "workspace {} ({}) is unavailable: {why}; expected subvolume {}, {n} snapshot(s) recorded",
                    w.ws_id,
                    w.workspace_path.display(),
                    self.res.ws_subvol(&w.ws_id).display()
                ),
                "restore the image or mount the filesystem; the next pass picks it up by itself. Nothing was deleted".to_string(),
            )
            .ws(&w.ws_id, &w.workspace_path);
            self.find(f);
        }
    }

    /// Interrupted operations. Returns the workspaces that must not be planned this pass.
    fn pending(&mut self, storage_ready: bool) -> BTreeSet<String> {
        let mut busy = BTreeSet::new();
        for op in self.persisted.pending() {
            if let Some(ws) = op.kind.ws_id() {
                busy.insert(ws.to_string());
            }
            match &op.kind {
                PendingKind::MigrateImage { .. } | PendingKind::GrowImage { .. } => {
                    self.recover_image_op(&op);
                }
                _ if storage_ready => self.recover_ws_op(&op),
                _ => {}
            }
        }
        busy
    }

    fn recover_image_op(&mut self, op: &PendingOp) {
        let (action, detail) = match &op.kind {
            PendingKind::MigrateImage { from, to, tmp } => {
                let from_s = self.obs.path(from);
                let to_s = self.obs.path(to);
                let tmp_s = self.obs.path(tmp);
                match (from_s, to_s) {
                    (PathState::Missing, PathState::Other) => (
                        true,
                        format!("image already at {}; forget the move", to.display()),
                    ),
                    (PathState::Other, PathState::Missing) => (
                        false,
                        format!(
                            "image still at {}; remove the partial copy {}{}",
                            from.display(),
                            tmp.display(),
                            if *tmp_s == PathState::Missing {
                                " (absent)"
                            } else {
                                ""
                            }
                        ),
                    ),
                    (PathState::Other, PathState::Other) => (
                        true,
                        format!(
                            "copy complete at {}; remove the old {}",
                            to.display(),
                            from.display()
                        ),
                    ),
                    _ => {
                        self.find(Finding::new(
                            FindingKind::Ambiguous,
                            Severity::Error,
                            format!(
                                "interrupted image move {}: neither {} nor {} holds the image",
                                op.op_id,
                                from.display(),
                                to.display()
                            ),
                            format!(
                                "look for the image (partial copy: {}) and put it back at {}",
                                tmp.display(),
                                to.display()
                            ),
                        ));
                        return;
                    }
                }
            }
            PendingKind::GrowImage { image, to_bytes } => (
                true,
                format!(
                    "finish growing {} to {}",
                    image.display(),
                    human_bytes(*to_bytes)
                ),
            ),
            _ => return,
        };
        self.interrupted(op, action, detail);
    }

    fn interrupted(&mut self, op: &PendingOp, finish: bool, detail: String) {
        let a = if finish {
            Action::FinishInterrupted {
                op_id: op.op_id.clone(),
                operation: op.kind.name().to_string(),
                ws_id: op.kind.ws_id().map(str::to_string),
                detail,
            }
        } else {
            Action::RevertInterrupted {
                op_id: op.op_id.clone(),
                operation: op.kind.name().to_string(),
                ws_id: op.kind.ws_id().map(str::to_string),
                detail,
            }
        };
        self.act(a);
    }

    fn ambiguous(&mut self, op: &PendingOp, what: String) {
        let (ws, path) = match &op.kind {
            PendingKind::Init { ws_id, path, .. } | PendingKind::Release { ws_id, path, .. } => {
                (ws_id.clone(), path.clone())
            }
            _ => (String::new(), PathBuf::new()),
        };
        self.find(
            Finding::new(
                FindingKind::Ambiguous,
                Severity::Error,
                format!("interrupted {} {} cannot be finished or reverted safely: {what}; both copies are kept", op.kind.name(), op.op_id),
                "inspect the paths named, keep the right copy, then remove the operation with `ws-ckpt apply` after fixing".to_string(),
            )
            .ws(&ws, &path),
        );
    }

    fn points_to(&self, p: &Path, target: &Path) -> bool {
        matches!(self.obs.path(p), PathState::Symlink { target: t, .. } if t == target)
    }

    fn recover_ws_op(&mut self, op: &PendingOp) {
        match &op.kind {
            PendingKind::Init {
                path,
                subvol,
                tmp,
                phase,
                ..
            } => {
                let path_is_link = self.points_to(path, subvol);
                let path_is_dir = matches!(self.obs.path(path), PathState::Dir { .. });
                let tmp_state = self.obs.path(tmp).clone();
                let subvol_ok = self.obs.is_subvol(subvol);
                match (path_is_dir, path_is_link, phase) {
                    (true, _, _) if !matches!(tmp_state, PathState::Dir { .. }) => self
                        .interrupted(
                            op,
                            false,
                            format!(
                            "{} is still the original directory; delete the partial subvolume {}",
                            path.display(),
                            subvol.display()
                        ),
                        ),
                    (false, true, InitPhase::Verified) if subvol_ok => self.interrupted(
                        op,
                        true,
                        format!(
                            "{} already points to {}; remove the original copy left at {}",
                            path.display(),
                            subvol.display(),
                            tmp.display()
                        ),
                    ),
                    _ => self.ambiguous(
                        op,
                        format!(
                            "{} is {:?}, {} is {:?}, subvolume {} present: {subvol_ok}",
                            path.display(),
                            self.obs.path(path),
                            tmp.display(),
                            tmp_state,
                            subvol.display()
                        ),
                    ),
                }
            }
            PendingKind::Release {
                path,
                subvol,
                tmp,
                phase,
                ..
            } => {
                let path_is_link = self.points_to(path, subvol);
                let path_is_dir = matches!(self.obs.path(path), PathState::Dir { .. });
                let tmp_is_link = self.points_to(tmp, subvol);
                match (path_is_link, path_is_dir, tmp_is_link, phase) {
                    (true, _, _, _) => self.interrupted(
                        op,
                        false,
                        format!("{} is still the workspace; remove the partial copy {}", path.display(), tmp.display()),
                    ),
                    (false, true, true, ReleasePhase::Verified)
                    | (false, true, false, ReleasePhase::Verified)
                        if !matches!(self.obs.path(tmp), PathState::Dir { .. }) =>
                    {
                        self.interrupted(
                            op,
                            true,
                            format!("{} is already the plain directory; remove the workspace subvolume and snapshots", path.display()),
                        )
                    }
                    _ => self.ambiguous(
                        op,
                        format!("{} is {:?}, {} is {:?}", path.display(), self.obs.path(path), tmp.display(), self.obs.path(tmp)),
                    ),
                }
            }
            PendingKind::Rollback {
                subvol, tmp, phase, ..
            } => {
                let tmp_present = self.obs.is_subvol(tmp);
                let subvol_present = self.obs.is_subvol(subvol);
                match (phase, subvol_present, tmp_present) {
                    (_, true, false) => self.interrupted(op, true, format!("workspace {} is intact; forget the rollback", subvol.display())),
                    (RollbackPhase::Snapshotting, true, true) => self.interrupted(
                        op,
                        false,
                        format!("the workspace was not touched; delete the unfinished snapshot {}", tmp.display()),
                    ),
                    (RollbackPhase::Ready, true, true) => self.interrupted(
                        op,
                        true,
                        format!("the exchange may or may not have happened; the subvolume at {} is the live one (the workspace points to it); delete the other copy {}", subvol.display(), tmp.display()),
                    ),
                    _ => self.ambiguous(op, format!("workspace subvolume {} present: {subvol_present}, rollback copy {} present: {tmp_present}", subvol.display(), tmp.display())),
                }
            }
            PendingKind::DeleteSnapshots { ws_id, snapshots } => self.interrupted(
                op,
                true,
                format!("{ws_id}: finish deleting {}", snapshots.join(", ")),
            ),
            PendingKind::MigrateImage { .. } | PendingKind::GrowImage { .. } => {}
        }
    }

    /// Legacy data. Returns true when a migration must run before anything else is planned.
    fn migrations(&mut self, view: &StorageView) -> bool {
        let state = self.persisted.state.as_ref();
        let recorded: BTreeSet<&str> = state
            .map(|s| s.workspaces.iter().map(|w| w.ws_id.as_str()).collect())
            .unwrap_or_default();
        let v0: Vec<MigratedWorkspace> = view
            .v0_indexes
            .iter()
            .filter(|(id, _)| {
                !recorded.contains(id.as_str()) && !self.persisted.indexes.contains_key(*id)
            })
            .filter(|(id, _)| ids::is_valid_ws_id(id))
            .map(|(id, idx)| MigratedWorkspace {
                ws_id: id.clone(),
                path: idx.workspace_path.clone(),
                snapshots: idx.snapshots.len(),
            })
            .collect();
        if !v0.is_empty() {
            self.act(Action::MigrateV0Indexes { workspaces: v0 });
            return true;
        }
        if let Some(s) = state {
            let marked = s.extra.get(DECLARED_MARKER).and_then(|v| v.as_bool()) == Some(true);
            if !marked {
                let undeclared: Vec<MigratedWorkspace> = s
                    .workspaces
                    .iter()
                    .filter(|w| self.config.workspace(&w.workspace_path).is_none())
                    .map(|w| MigratedWorkspace {
                        ws_id: w.ws_id.clone(),
                        path: w.workspace_path.clone(),
                        snapshots: self
                            .persisted
                            .indexes
                            .get(&w.ws_id)
                            .map(|i| i.snapshots.len())
                            .unwrap_or(0),
                    })
                    .collect();
                self.act(Action::DeclareMigrated {
                    workspaces: undeclared,
                });
                return true;
            }
        }
        false
    }

    fn recorded_workspaces(&mut self, view: &StorageView, busy: &BTreeSet<String>) {
        let Some(state) = self.persisted.state.as_ref() else {
            return;
        };
        for w in &state.workspaces {
            if busy.contains(&w.ws_id) {
                continue;
            }
            let ws_id = &w.ws_id;
            let path = &w.workspace_path;
            let expected = self.res.ws_subvol(ws_id);
            let empty_index = WorkspaceIndex::new(path.clone());
            let index = self.persisted.indexes.get(ws_id).unwrap_or(&empty_index);
            if !view.workspace_subvols.contains(ws_id) {
                let f = Finding::new(
                    FindingKind::StorageUnavailable,
                    Severity::Error,
                    format!(
                        "workspace {ws_id} ({}) is unavailable: its subvolume {} is missing on {} ; {} snapshot(s) recorded",
                        path.display(),
                        expected.display(),
                        if view.device.is_empty() { "the backend".to_string() } else { view.device.clone() },
                        index.snapshots.len()
                    ),
                    "restore the subvolume (e.g. from a snapshot with `btrfs subvolume snapshot`), or release the workspace with `ws-ckpt release`".to_string(),
                )
                .ws(ws_id, path);
                self.find(f);
                continue;
            }
            let decl = self.config.workspace(path);
            let mut detached = false;
            match self.obs.path(path) {
                PathState::Symlink { target, .. } if *target == expected => {}
                PathState::Missing => self.act(Action::RepairSymlink {
                    ws_id: ws_id.clone(),
                    path: path.clone(),
                    target: expected.clone(),
                }),
                PathState::Symlink {
                    target_exists: false,
                    ..
                } => self.act(Action::RepairSymlink {
                    ws_id: ws_id.clone(),
                    path: path.clone(),
                    target: expected.clone(),
                }),
                other => {
                    detached = true;
                    let what = match other {
                        PathState::Dir { .. } => "a real directory".to_string(),
                        PathState::Symlink { target, .. } => {
                            format!("a symlink to {}", target.display())
                        }
                        _ => "a file".to_string(),
                    };
                    let f = Finding::new(
                        FindingKind::PathOccupied,
                        Severity::Error,
                        format!("workspace {ws_id} is detached: {} is {what}, not the symlink to {}; ws-ckpt will not overwrite it", path.display(), expected.display()),
                        format!("move {} aside, then run `ws-ckpt apply` to restore the symlink (the workspace data is intact in {})", path.display(), expected.display()),
                    )
                    .ws(ws_id, path);
                    self.find(f);
                }
            }
            match decl.map(|d| d.state) {
                Some(DeclState::Absent) if !detached => {
                    self.act(Action::ReleaseWorkspace {
                        ws_id: ws_id.clone(),
                        path: path.clone(),
                    });
                    continue;
                }
                Some(_) => {}
                None if self.opts.prune && !detached => {
                    self.act(Action::ReleaseWorkspace {
                        ws_id: ws_id.clone(),
                        path: path.clone(),
                    });
                    continue;
                }
                None => {
                    let f = Finding::new(
                        FindingKind::UndeclaredWorkspace,
                        Severity::Warning,
                        format!("workspace {ws_id} ({}) is recorded but declared in no config file", path.display()),
                        format!("declare it (`ws-ckpt init {}`), set state = \"absent\" to release it, or run `ws-ckpt apply --prune`", path.display()),
                    )
                    .ws(ws_id, path);
                    self.find(f);
                }
            }
            self.snapshots(ws_id, index, view);
            if let Some(d) = decl {
                if self.config.effective_auto_cleanup(d) {
                    let del = retention_deletions(index, self.config.effective_keep(d), self.now);
                    if !del.is_empty() {
                        self.act(Action::ApplyRetention {
                            ws_id: ws_id.clone(),
                            delete: del,
                        });
                    }
                }
            }
            if let Some(nested) = view.nested.get(ws_id) {
                let list: Vec<String> = nested.iter().map(|p| p.display().to_string()).collect();
                let f = Finding::new(
                    FindingKind::NestedSubvolume,
                    Severity::Warning,
                    format!(
                        "workspace {ws_id} ({}) contains the subvolume(s) {}: snapshots and rollbacks do not include their contents",
                        path.display(),
                        list.join(", ")
                    ),
                    "turn them into plain directories (copy the data out, `btrfs subvolume delete`, copy back) if they should be checkpointed".to_string(),
                )
                .ws(ws_id, path);
                self.find(f);
            }
            if index.snapshots.len() > ADVISORY_SNAPSHOT_COUNT {
                let f = Finding::new(
                    FindingKind::AdvisorySnapshotCount,
                    Severity::Info,
                    format!("workspace {ws_id} has {} snapshots", index.snapshots.len()),
                    "enable retention (`auto_cleanup = true`, `keep = N`) or run `ws-ckpt cleanup`"
                        .to_string(),
                )
                .ws(ws_id, path);
                self.find(f);
            }
        }
    }

    fn snapshots(&mut self, ws_id: &str, index: &WorkspaceIndex, view: &StorageView) {
        let empty = BTreeSet::new();
        let on_disk = view.snapshots.get(ws_id).unwrap_or(&empty);
        let mut mark = Vec::new();
        let mut clear = Vec::new();
        for (id, e) in &index.snapshots {
            let present = on_disk.contains(id);
            if !present && !e.missing {
                mark.push(id.clone());
            } else if present && e.missing {
                clear.push(id.clone());
            }
        }
        let adopt: Vec<String> = on_disk
            .iter()
            .filter(|id| !index.snapshots.contains_key(*id) && ids::is_valid_snapshot_id(id))
            .cloned()
            .collect();
        if !mark.is_empty() {
            self.act(Action::MarkMissing {
                ws_id: ws_id.to_string(),
                snapshots: mark,
            });
        }
        if !clear.is_empty() {
            self.act(Action::ClearMissing {
                ws_id: ws_id.to_string(),
                snapshots: clear,
            });
        }
        if !adopt.is_empty() {
            self.act(Action::AdoptSnapshot {
                ws_id: ws_id.to_string(),
                snapshots: adopt,
            });
        }
    }

    fn declared_workspaces(&mut self, view: &StorageView, busy: &BTreeSet<String>) {
        let state = self.persisted.state.as_ref();
        let mut taken: BTreeMap<String, PathBuf> = state
            .map(|s| {
                s.workspaces
                    .iter()
                    .map(|w| (w.ws_id.clone(), w.workspace_path.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for op in self.persisted.pending() {
            if let PendingKind::Init { ws_id, path, .. } = &op.kind {
                taken.insert(ws_id.clone(), path.clone());
            }
        }
        let mut others: Vec<PathBuf> = taken.values().cloned().collect();
        others.extend(
            self.config
                .workspaces
                .iter()
                .filter(|w| w.state == DeclState::Present)
                .map(|w| w.path.clone()),
        );
        // Unrecorded workspaces known from the indexes (state.json lost or rebuilt).
        let mut candidates: Vec<(Option<&WorkspaceDecl>, PathBuf, Option<String>)> = Vec::new();
        for d in self
            .config
            .workspaces
            .iter()
            .filter(|d| d.state == DeclState::Present)
        {
            candidates.push((Some(d), d.path.clone(), d.id.clone()));
        }
        for (id, idx) in &self.persisted.indexes {
            if !taken.contains_key(id) && self.config.workspace(&idx.workspace_path).is_none() {
                candidates.push((None, idx.workspace_path.clone(), Some(id.clone())));
            }
        }
        for (decl, path, explicit_id) in candidates {
            if taken.values().any(|p| *p == path) {
                continue;
            }
            let ws_id = explicit_id.clone().unwrap_or_else(|| {
                // An index already kept for this path (lost state.json) names its ID.
                self.persisted
                    .indexes
                    .iter()
                    .find(|(id, i)| i.workspace_path == path && !taken.contains_key(*id))
                    .map(|(id, _)| id.clone())
                    .unwrap_or_else(|| ids::allocate_ws_id(&path, |id| taken.contains_key(id)))
            });
            if busy.contains(&ws_id) {
                continue;
            }
            if taken.contains_key(&ws_id) {
                self.find(
                    Finding::new(
                        FindingKind::InvalidPath,
                        Severity::Error,
                        format!(
                            "id {ws_id} declared for {} is already used by {}",
                            path.display(),
                            taken[&ws_id].display()
                        ),
                        "choose another `id` or remove it to derive one from the path".to_string(),
                    )
                    .ws(&ws_id, &path),
                );
                continue;
            }
            taken.insert(ws_id.clone(), path.clone());
            let expected = self.res.ws_subvol(&ws_id);
            let subvol = view.workspace_subvols.contains(&ws_id);
            let other_refs: Vec<&Path> = others.iter().map(PathBuf::as_path).collect();
            let state_dir = &self.config.daemon.state_dir;
            let st = self.obs.path(&path).clone();
            match (&st, subvol) {
                (PathState::Symlink { target, .. }, true) if *target == expected => {
                    self.act(Action::AdoptWorkspace {
                        ws_id,
                        path,
                        create_symlink: false,
                    });
                }
                (PathState::Missing, true) => self.act(Action::AdoptWorkspace {
                    ws_id,
                    path,
                    create_symlink: true,
                }),
                _ if decl.is_none() => {}
                (PathState::Dir { .. }, true) => self.find(
                    Finding::new(
                        FindingKind::PathOccupied,
                        Severity::Error,
                        format!("{} is a real directory but an unrecorded workspace subvolume {} exists for it; ws-ckpt keeps both", path.display(), expected.display()),
                        format!("compare them; to keep the subvolume move {} aside and run `ws-ckpt apply`; to keep the directory, move the subvolume away", path.display()),
                    )
                    .ws(&ws_id, &path),
                ),
                (PathState::Dir { .. }, false) | (PathState::Missing, false) => {
                    if let Some(why) = init_guard(&path, self.res, state_dir, &other_refs) {
                        self.find(
                            Finding::new(
                                FindingKind::InvalidPath,
                                Severity::Error,
                                format!("cannot make a workspace of {}: {why}", path.display()),
                                "remove this [[workspace]] from the config or choose another directory".to_string(),
                            )
                            .ws(&ws_id, &path),
                        );
                    } else {
                        self.act(Action::InitWorkspace { ws_id, path });
                    }
                }
                _ => self.find(
                    Finding::new(
                        FindingKind::PathOccupied,
                        Severity::Error,
                        format!("{} is {:?}, not a directory ws-ckpt can turn into a workspace", path.display(), st),
                        format!("move {} aside or fix the declared path", path.display()),
                    )
                    .ws(&ws_id, &path),
                ),
            }
        }
    }

    fn advisories(&mut self, view: &StorageView) {
        let pct = view.usage.used_percent();
        if pct > ADVISORY_FS_PERCENT {
            self.find(Finding::new(
                FindingKind::AdvisoryFsUsage,
                Severity::Warning,
                format!(
                    "the filesystem at {} is {pct}% full",
                    self.res.mount.display()
                ),
                "delete old snapshots (`ws-ckpt cleanup`) or raise img_size".to_string(),
            ));
        }
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
