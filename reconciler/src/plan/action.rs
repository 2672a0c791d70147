//! The planner's result vocabulary: the actions (`Action`, named as the CLI shows them) and
//! their one-line descriptions.
//!
//! Data only; the rules that choose actions are in the sibling modules.

use crate::access::GateForm;
use crate::state::{BackendType, ParentRecord, SelectionMethod};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::RetentionDelete;

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
///
/// Plain data: the variants say what each action does; their fields are the JSON contract of
/// `plan`/`apply` (docs/json.md), named for what they hold (`ws_id`, `path`, `snapshots`, …),
/// and carry a doc only where the name does not say it.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Move the pre-FHS image to the configured path.
    MigrateImagePath { from: PathBuf, to: PathBuf },
    /// Adopt ws-ckpt ≤ 0.2 indexes found inside the btrfs filesystem.
    MigrateV0Indexes { workspaces: Vec<MigratedWorkspace> },
    /// Declare workspaces recorded by ws-ckpt 0.3 in `config.d/40-migrated.toml`.
    DeclareMigrated { workspaces: Vec<MigratedWorkspace> },
    /// Create/attach/mount the backend's filesystem, create its directories and record it.
    BootstrapBackend {
        backend_type: BackendType,
        selection_method: SelectionMethod,
        mount: PathBuf,
        data_root: PathBuf,
        snapshots_root: PathBuf,
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
        image: PathBuf,
        from_bytes: u64,
        to_bytes: u64,
    },
    /// Turn a directory into a workspace.
    InitWorkspace { ws_id: String, path: PathBuf },
    /// Record an existing workspace subvolume (and create its symlink if the path is empty).
    AdoptWorkspace {
        ws_id: String,
        path: PathBuf,
        /// Create the symlink (path is missing).
        create_symlink: bool,
    },
    /// Record snapshot subvolumes that have no index entry.
    AdoptSnapshot {
        ws_id: String,
        snapshots: Vec<String>,
    },
    /// Re-create a missing or dangling workspace symlink.
    RepairSymlink {
        ws_id: String,
        path: PathBuf,
        target: PathBuf,
    },
    /// Mark recorded snapshots whose subvolume is gone.
    MarkMissing {
        ws_id: String,
        snapshots: Vec<String>,
    },
    /// Clear the mark of snapshots whose subvolume is back.
    ClearMissing {
        ws_id: String,
        snapshots: Vec<String>,
    },
    /// Complete an interrupted operation (proven from disk).
    FinishInterrupted {
        op_id: String,
        operation: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ws_id: Option<String>,
        /// What will be done (`step`, and in words `detail`).
        #[serde(flatten)]
        recovery: Recovery,
    },
    /// Undo an interrupted operation (proven from disk).
    RevertInterrupted {
        op_id: String,
        operation: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ws_id: Option<String>,
        /// What will be done (`step`, and in words `detail`).
        #[serde(flatten)]
        recovery: Recovery,
    },
    /// Delete snapshots per the retention policy.
    ApplyRetention {
        ws_id: String,
        delete: Vec<RetentionDelete>,
    },
    /// Give the data back as a plain directory and remove the workspace.
    ReleaseWorkspace { ws_id: String, path: PathBuf },
    /// Give ws-ckpt's storage directories (data_root, its gates directory, snapshots_root)
    /// to root with mode 0711, creating the gates directory when missing.
    SecureStorage { dirs: Vec<PathBuf> },
    /// Move a workspace subvolume from where earlier layouts kept it into its storage gate,
    /// then point the workspace symlink there.
    MigrateStorage {
        ws_id: String,
        path: PathBuf,
        from: PathBuf,
        to: PathBuf,
        /// Re-point the workspace symlink (its directory is the recorded one).
        relink: bool,
    },
    /// Write a workspace's storage gates (its data gate and its snapshot gate) so that they
    /// let in exactly the owner, `allow_users` and `allow_groups`.
    SetStorageAccess {
        ws_id: String,
        path: PathBuf,
        gates: Vec<PathBuf>,
        /// What each gate must be.
        form: GateForm,
        /// Record that others could search the original's ancestors (first decided now).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        record_others_search: Option<bool>,
    },
    /// Record the directory that holds a workspace path (a workspace recorded without it).
    RecordParent {
        ws_id: String,
        path: PathBuf,
        parent: ParentRecord,
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
            Action::SecureStorage { .. } => "secure-storage",
            Action::MigrateStorage { .. } => "migrate-storage",
            Action::SetStorageAccess { .. } => "set-storage-access",
            Action::RecordParent { .. } => "record-parent",
        }
    }

    /// What identifies this action across passes for the backoff of failing actions: its
    /// name and what it is about.
    pub fn failure_key(&self) -> String {
        match self {
            Action::FinishInterrupted { op_id, .. } | Action::RevertInterrupted { op_id, .. } => {
                format!("{} {op_id}", self.name())
            }
            _ => match self.ws_id() {
                Some(ws) => format!("{} {ws}", self.name()),
                None => self.name().to_string(),
            },
        }
    }

    /// The user path the action is about, if any.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Action::InitWorkspace { path, .. }
            | Action::AdoptWorkspace { path, .. }
            | Action::RepairSymlink { path, .. }
            | Action::ReleaseWorkspace { path, .. }
            | Action::MigrateStorage { path, .. }
            | Action::SetStorageAccess { path, .. }
            | Action::RecordParent { path, .. } => Some(path),
            _ => None,
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
            | Action::ReleaseWorkspace { ws_id, .. }
            | Action::MigrateStorage { ws_id, .. }
            | Action::SetStorageAccess { ws_id, .. }
            | Action::RecordParent { ws_id, .. } => Some(ws_id),
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
            Action::FinishInterrupted { recovery, .. }
            | Action::RevertInterrupted { recovery, .. } => recovery.0.describe(),
            Action::ApplyRetention { ws_id, delete } => format!(
                "{ws_id}: {}",
                delete
                    .iter()
                    .map(|d| format!("{}: {}", d.id, d.reason))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Action::ReleaseWorkspace { ws_id, path } => format!("{ws_id} {}", path.display()),
            Action::SecureStorage { dirs } => dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            Action::MigrateStorage {
                ws_id, from, to, ..
            } => {
                format!("{ws_id}: {} → {}", from.display(), to.display())
            }
            Action::SetStorageAccess {
                ws_id, gates, form, ..
            } => format!(
                "{ws_id}: {} → root:{} {:04o}{}",
                gates
                    .iter()
                    .map(|g| g.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                form.gid,
                form.mode,
                match &form.acl {
                    Some(acl) => {
                        let (u, g) = crate::access::named_in(acl);
                        let u: Vec<String> = u.iter().map(|x| x.to_string()).collect();
                        let g: Vec<String> = g.iter().map(|x| x.to_string()).collect();
                        format!(" + ACL users [{}] groups [{}]", u.join(","), g.join(","))
                    }
                    None => String::new(),
                }
            ),
            Action::RecordParent { ws_id, path, .. } => {
                format!("{ws_id}: the directory holding {}", path.display())
            }
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

/// How an interrupted operation is finished or reverted, as the planner proved it from the
/// recorded phase and what is on disk. The executor re-checks before acting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RecoveryStep {
    /// Image move: the image is already at its new path; only the record goes.
    ForgetImageMove {
        /// New image path.
        to: PathBuf,
    },
    /// Image move: the image is still at its old path; the partial copy goes.
    RemovePartialImageCopy {
        /// Old image path.
        from: PathBuf,
        /// Partial copy.
        tmp: PathBuf,
        /// Whether the partial copy exists at all.
        tmp_present: bool,
    },
    /// Image move: the copy is complete at the new path; the old image goes.
    RemoveOldImage {
        /// Old image path.
        from: PathBuf,
        /// New image path.
        to: PathBuf,
    },
    /// Image growth: grow to the recorded size (idempotent).
    FinishGrowing {
        /// Image file.
        image: PathBuf,
        /// Target size.
        to_bytes: u64,
    },
    /// Init: the path is still the original directory; the partial subvolume goes.
    DeletePartialSubvolume {
        /// User path.
        path: PathBuf,
        /// The new, unfinished workspace subvolume.
        subvol: PathBuf,
    },
    /// Init: the path already points to the subvolume; the original copy goes (after a
    /// last comparison with the subvolume).
    RemoveOriginalCopy {
        /// User path.
        path: PathBuf,
        /// Workspace subvolume.
        subvol: PathBuf,
        /// Where the original directory was moved.
        tmp: PathBuf,
    },
    /// Release: the path is still the workspace; the partial copy goes.
    RemovePartialCopy {
        /// User path.
        path: PathBuf,
        /// The unfinished plain-directory copy.
        tmp: PathBuf,
    },
    /// Release: the path is already the plain directory; the subvolume and snapshots go.
    RemoveWorkspaceSubvolume {
        /// User path.
        path: PathBuf,
    },
    /// Rollback: the workspace is intact and no copy is left; only the record goes.
    ForgetRollback {
        /// Workspace subvolume.
        subvol: PathBuf,
    },
    /// Rollback recorded with the live subvolume's id: its copy exists, so it is finished.
    /// Unless the exchange already happened (the subvolume under the workspace's name is no
    /// longer the recorded one), the copy takes the workspace's name now; then the previous
    /// state goes.
    FinishRollback {
        /// Workspace subvolume.
        subvol: PathBuf,
        /// The copy of the target (or, after the exchange, the previous state).
        tmp: PathBuf,
        /// Target snapshot ID.
        snapshot: String,
    },
    /// Rollback: whether or not the exchange happened, the subvolume under the workspace's
    /// name is live; the other copy goes.
    DeleteOtherCopy {
        /// Workspace subvolume (live).
        subvol: PathBuf,
        /// The other copy.
        tmp: PathBuf,
    },
    /// Snapshot deletion: delete the rest of the list.
    FinishDeleting {
        /// Workspace.
        ws_id: String,
        /// Snapshot IDs.
        snapshots: Vec<String>,
    },
}

impl RecoveryStep {
    /// True when the step completes the operation (finish), false when it undoes it (revert).
    pub fn finishes(&self) -> bool {
        !matches!(
            self,
            RecoveryStep::RemovePartialImageCopy { .. }
                | RecoveryStep::DeletePartialSubvolume { .. }
                | RecoveryStep::RemovePartialCopy { .. }
        )
    }

    /// The step in words.
    pub fn describe(&self) -> String {
        match self {
            RecoveryStep::ForgetImageMove { to } => {
                format!("image already at {}; forget the move", to.display())
            }
            RecoveryStep::RemovePartialImageCopy {
                from,
                tmp,
                tmp_present,
            } => format!(
                "image still at {}; remove the partial copy {}{}",
                from.display(),
                tmp.display(),
                if *tmp_present { "" } else { " (absent)" }
            ),
            RecoveryStep::RemoveOldImage { from, to } => format!(
                "copy complete at {}; remove the old {}",
                to.display(),
                from.display()
            ),
            RecoveryStep::FinishGrowing { image, to_bytes } => format!(
                "finish growing {} to {}",
                image.display(),
                human_bytes(*to_bytes)
            ),
            RecoveryStep::DeletePartialSubvolume { path, subvol } => format!(
                "{} is still the original directory; delete the partial subvolume {}",
                path.display(),
                subvol.display()
            ),
            RecoveryStep::RemoveOriginalCopy { path, subvol, tmp } => format!(
                "{} already points to {}; remove the original copy left at {}",
                path.display(),
                subvol.display(),
                tmp.display()
            ),
            RecoveryStep::RemovePartialCopy { path, tmp } => format!(
                "{} is still the workspace; remove the partial copy {}",
                path.display(),
                tmp.display()
            ),
            RecoveryStep::RemoveWorkspaceSubvolume { path } => format!(
                "{} is already the plain directory; remove the workspace subvolume and snapshots",
                path.display()
            ),
            RecoveryStep::ForgetRollback { subvol } => {
                format!("workspace {} is intact; forget the rollback", subvol.display())
            }
            RecoveryStep::FinishRollback {
                subvol,
                tmp,
                snapshot,
            } => format!(
                "finish the rollback to {snapshot}: the copy {} takes the place of {} unless it already has (told by subvolume id), then the previous state is deleted",
                tmp.display(),
                subvol.display()
            ),
            RecoveryStep::DeleteOtherCopy { subvol, tmp } => format!(
                "the exchange may or may not have happened; the subvolume at {} is the live one (the workspace points to it); delete the other copy {}",
                subvol.display(),
                tmp.display()
            ),
            RecoveryStep::FinishDeleting { ws_id, snapshots } => {
                format!("{ws_id}: finish deleting {}", snapshots.join(", "))
            }
        }
    }
}

/// A recovery step as actions carry it; in JSON `step` (the typed step) and `detail` (the
/// same in words, for people and older readers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RecoveryRepr", into = "RecoveryRepr")]
pub struct Recovery(pub RecoveryStep);

#[derive(Serialize, Deserialize)]
struct RecoveryRepr {
    step: RecoveryStep,
    #[serde(default)]
    detail: String,
}

impl From<RecoveryRepr> for Recovery {
    fn from(r: RecoveryRepr) -> Self {
        Recovery(r.step)
    }
}

impl From<Recovery> for RecoveryRepr {
    fn from(r: Recovery) -> Self {
        RecoveryRepr {
            detail: r.0.describe(),
            step: r.0,
        }
    }
}
