//! `rollback` (SPEC §5.3): a writable snapshot of the target beside the workspace subvolume,
//! an atomic exchange of the two names, deletion of the old state; each phase recorded first.
//! The target is named (an ID or a unique prefix) or counted back along the lineage
//! (`-n N`, `state::lineage`); the target becomes the lineage head. `--preview` reports the
//! changes a rollback would revert and changes nothing.

use crate::api::{Addressed, Caller};
use crate::diff::DiffEntry;
use crate::engine::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::execute::exchange;
use crate::fault;
use crate::ids::check_snapshot_id;
use crate::procs;
use crate::state::lineage;
use crate::state::WorkspaceEntry;
use crate::state::{PendingKind, RollbackPhase};
use crate::store::new_op_id;
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Which snapshot a rollback goes back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackTarget {
    /// `-s ID`: the snapshot with this ID, else the one snapshot whose ID starts with it.
    Named(String),
    /// `-n N`: the N-th snapshot back along the lineage (1 = the head).
    Ancestors(u32),
}

/// Result of `rollback` (stable JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RollbackResult {
    /// Workspace ID.
    pub ws_id: String,
    /// Workspace path.
    pub workspace: PathBuf,
    /// The snapshot the workspace now equals.
    pub snapshot: String,
}

/// Result of `rollback --preview` (stable JSON): what the rollback would revert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RollbackPreview {
    /// Workspace ID.
    pub ws_id: String,
    /// Workspace path.
    pub workspace: PathBuf,
    /// The snapshot the workspace would equal.
    pub snapshot: String,
    /// Always true: nothing was changed.
    pub preview: bool,
    /// Changes in the live workspace since that snapshot (the rollback reverts them), as
    /// `diff -f SNAPSHOT` lists them.
    pub entries: Vec<DiffEntry>,
}

impl Engine {
    /// The snapshot ID `target` names in workspace `ws`: an exact ID, else a unique prefix
    /// (upstream's rule), or the N-th back along the lineage.
    pub fn rollback_target(&self, ws: &WorkspaceEntry, target: &RollbackTarget) -> Result<String> {
        match target {
            RollbackTarget::Named(spec) => self.resolve_snapshot(ws, spec),
            RollbackTarget::Ancestors(n) => {
                let index = self.store.read().indexes.get(&ws.ws_id).cloned();
                let index = index.unwrap_or_else(|| {
                    std::sync::Arc::new(crate::state::WorkspaceIndex::new(
                        ws.workspace_path.clone(),
                    ))
                });
                lineage::ancestor(&index, *n)
                    .map(str::to_string)
                    .map_err(|e| match e {
                        lineage::AncestorError::Zero => {
                            Error::new(ErrorCode::InvalidArgument, e.to_string())
                        }
                        _ => Error::new(
                            ErrorCode::SnapshotNotFound,
                            format!("snapshot not found: -n {n} in workspace {}: {e}", ws.ws_id),
                        )
                        .hint(format!(
                            "`ws-ckpt list -w {}` shows the snapshots; roll back to one with -s ID",
                            ws.ws_id
                        )),
                    })
            }
        }
    }

    /// `ws-ckpt rollback --preview`: the target resolved as for a rollback (MISSING refused),
    /// then the changes in the live workspace since it. Changes nothing, and processes inside
    /// the workspace do not matter (as upstream).
    pub fn rollback_preview(
        &self,
        ws: &Addressed,
        target: &RollbackTarget,
    ) -> Result<RollbackPreview> {
        self.in_workspace(ws.ws_id(), || self.rollback_preview_locked(ws, target))
    }

    fn rollback_preview_locked(
        &self,
        ws: &Addressed,
        target: &RollbackTarget,
    ) -> Result<RollbackPreview> {
        let entry = ws.entry.clone();
        let res = self.storage_for(Some(&entry))?;
        self.attached_subvol(&entry, &res)?;
        let snapshot = self.rollback_target(&entry, target)?;
        let d = self.diff(ws, &snapshot, None)?;
        Ok(RollbackPreview {
            ws_id: d.ws_id,
            workspace: entry.workspace_path,
            snapshot,
            preview: true,
            entries: d.entries,
        })
    }

    /// `ws-ckpt rollback` (SPEC §5.3): a writable snapshot of the target beside the workspace
    /// subvolume, an atomic exchange of the two names, then deletion of the old state. The
    /// phase is recorded first so a crash at any point is finished or reverted by the next pass.
    /// Unless `force`, refused while a process other than the caller has its working directory
    /// inside the workspace.
    pub fn rollback(
        &self,
        ws: &WorkspaceEntry,
        target: &RollbackTarget,
        force: bool,
        caller: &Caller,
    ) -> Result<RollbackResult> {
        if let RollbackTarget::Named(id) = target {
            check_snapshot_id(id)?;
        }
        self.in_workspace(&ws.ws_id, || {
            self.rollback_locked(ws, target, force, caller)
        })
    }

    fn rollback_locked(
        &self,
        ws: &WorkspaceEntry,
        target: &RollbackTarget,
        force: bool,
        caller: &Caller,
    ) -> Result<RollbackResult> {
        let ws = ws.clone();
        let res = self.storage_for(Some(&ws))?;
        let subvol = self.attached_subvol(&ws, &res)?;
        let snapshot = self.rollback_target(&ws, target)?;
        let snapshot = snapshot.as_str();
        let target = self.usable_snapshot(&ws, &res, snapshot)?;
        let ws_id = ws.ws_id.clone();
        let busy = self
            .store
            .read()
            .pending()
            .into_iter()
            .find(|o| {
                o.kind.ws_id() == Some(ws_id.as_str())
                    && matches!(
                        o.kind,
                        PendingKind::Init { .. }
                            | PendingKind::Release { .. }
                            | PendingKind::Rollback { .. }
                    )
            })
            .cloned();
        if let Some(op) = busy {
            return Err(Error::new(
                ErrorCode::Busy,
                format!(
                    "workspace {ws_id} has an interrupted {} (operation {}) awaiting recovery",
                    op.kind.name(),
                    op.op_id
                ),
            )
            .hint("run `ws-ckpt apply` to finish or revert it, then retry"));
        }
        if !force {
            let dev = std::fs::metadata(&subvol)
                .map_err(|e| Error::io("stat", &subvol, e))?
                .dev();
            // Neither this process (the daemon, or the in-process command) nor the command
            // that asked is a reason to refuse.
            let me = std::process::id() as i32;
            let users = procs::processes_with_cwd_on(Path::new("/proc"), dev, &[me, caller.pid]);
            if !users.is_empty() {
                return Err(procs::occupied_error(&ws.workspace_path, &users, caller)
                .hint("stop them or change their directory, or pass --force (they keep seeing the old state until they re-enter the workspace)"));
            }
        }
        let tmp = res.rollback_tmp(&ws_id, &new_op_id());
        // Recorded so that recovery can tell whether the exchange happened: the reply does
        // not wait for the exchange's commit, and a rollback whose copy exists is finished.
        let live_tree = self.sys().subvolume_id(&subvol)?;
        let kind = PendingKind::Rollback {
            ws_id: ws_id.clone(),
            snapshot: snapshot.to_string(),
            subvol: subvol.clone(),
            tmp: tmp.clone(),
            phase: RollbackPhase::Snapshotting,
            live_tree,
        };
        let op = self.store.begin(kind.clone())?;
        fault::point("rollback:after-begin");
        if let Err(e) = self.sys().snapshot(&target, &tmp, false) {
            self.abandon_rollback(&op, &tmp);
            return Err(Error::new(
                ErrorCode::OperationFailed,
                format!("rollback of workspace {ws_id} to {snapshot} failed before changing anything: {e}"),
            )
            .hint("the workspace is unchanged; check free space (`ws-ckpt status`) and retry"));
        }
        fault::point("rollback:after-snapshot");
        // No record of the copy's completion: it is complete once it exists, and recovery
        // of either phase keeps whichever subvolume holds the workspace's name.
        if let Err(e) = exchange(&tmp, &subvol) {
            self.abandon_rollback(&op, &tmp);
            return Err(Error::new(
                ErrorCode::OperationFailed,
                format!("rollback of workspace {ws_id} to {snapshot} failed; the workspace is unchanged: {}", e.message),
            ));
        }
        // No commit of its own: the exchange is made durable by the commit after the deletion
        // below (btrfs commits are ordered, so a power cut keeps the exchange without the
        // deletion, or neither; recovery, told by `live_tree` which subvolume is which,
        // finishes the rollback either way).
        fault::point("rollback:after-exchange");
        // `tmp` now holds the previous state of the workspace.
        if let Err(e) = self.sys().delete_subvolume(&tmp) {
            return Err(Error::new(
                ErrorCode::OperationFailed,
                format!(
                    "workspace {ws_id} was rolled back to {snapshot}, but its previous state at {} could not be deleted: {e}",
                    tmp.display()
                ),
            )
            .hint("move any nested subvolume out of it, then run `ws-ckpt apply` to finish"));
        }
        fault::point("rollback:after-delete-old");
        // The live workspace now descends from the target (`rollback -n` counts from it).
        if let Err(e) = self.store.set_head(&ws_id, snapshot) {
            tracing::warn!(ws_id = %ws_id, snapshot, error = %e, "could not record the lineage head after the rollback");
        }
        // The deletion is committed before the end record: a power cut cannot leave the old
        // state's copy behind while the operation is already forgotten (issue 10). The
        // daemon answers first and commits right after, still before anything else runs on
        // this workspace (`Engine::in_workspace`); a power cut meanwhile is finished by
        // recovery (the copy takes the workspace's place again if the exchange was lost).
        let finish = crate::engine::OwedFinish {
            op_id: op,
            mount: res.mount.clone(),
        };
        if live_tree.is_some() && self.defers_finishing() {
            self.owe_finish(&ws_id, finish);
        } else {
            self.finish(finish)?;
        }
        Ok(RollbackResult {
            ws_id,
            workspace: ws.workspace_path,
            snapshot: snapshot.to_string(),
        })
    }

    /// Undo a rollback that failed before the exchange: drop the copy, forget the operation.
    fn abandon_rollback(&self, op: &str, tmp: &Path) {
        let cleaned = self.sys().delete_subvolume_if_present(tmp);
        match cleaned {
            // Keep the record when the copy could not be removed: the next pass retries.
            Err(e) => {
                tracing::warn!(tmp = %tmp.display(), error = %e, "could not remove the unfinished rollback copy")
            }
            Ok(_) => {
                if let Err(e) = self.store.end(op) {
                    tracing::warn!(op, error = %e, "could not forget the failed rollback");
                }
            }
        }
    }
}
