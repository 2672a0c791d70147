//! `rollback` (SPEC §5.3): a writable snapshot of the target beside the workspace subvolume,
//! an atomic exchange of the two names, deletion of the old state; each phase recorded first.

use super::procs;
use crate::engine::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::execute::{exchange, fsync_dir};
use crate::fault;
use crate::ids::check_snapshot_id;
use crate::state::WorkspaceEntry;
use crate::state::{PendingKind, RollbackPhase};
use crate::store::new_op_id;
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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

impl Engine {
    /// `ws-ckpt rollback` (SPEC §5.3): a writable snapshot of the target beside the workspace
    /// subvolume, an atomic exchange of the two names, then deletion of the old state. The
    /// phase is recorded first so a crash at any point is finished or reverted by the next pass.
    pub fn rollback(
        &self,
        ws: &WorkspaceEntry,
        snapshot: &str,
        force: bool,
    ) -> Result<RollbackResult> {
        check_snapshot_id(snapshot)?;
        self.in_workspace(&ws.ws_id, || self.rollback_locked(ws, snapshot, force))
    }

    fn rollback_locked(
        &self,
        ws: &WorkspaceEntry,
        snapshot: &str,
        force: bool,
    ) -> Result<RollbackResult> {
        let ws = ws.clone();
        let res = self.storage_for(Some(&ws))?;
        let subvol = self.attached_subvol(&ws, &res)?;
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
            let me = std::process::id() as i32;
            let users = procs::processes_with_cwd_on(Path::new("/proc"), dev, &[me]);
            if !users.is_empty() {
                return Err(Error::new(
                    ErrorCode::Busy,
                    format!(
                        "workspace {ws_id} ({}) is in use: processes with their working directory inside it: {}",
                        ws.workspace_path.display(),
                        procs::describe(&users)
                    ),
                )
                .hint("stop them or change their directory, or pass --force (they keep seeing the old state until they re-enter the workspace)"));
            }
        }
        let tmp = res.rollback_tmp(&ws_id, &new_op_id());
        let mut kind = PendingKind::Rollback {
            ws_id: ws_id.clone(),
            snapshot: snapshot.to_string(),
            subvol: subvol.clone(),
            tmp: tmp.clone(),
            phase: RollbackPhase::Snapshotting,
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
        if let PendingKind::Rollback { phase, .. } = &mut kind {
            *phase = RollbackPhase::Ready;
        }
        if let Err(e) = self.store.update(&op, kind) {
            self.abandon_rollback(&op, &tmp);
            return Err(e);
        }
        if let Err(e) = exchange(&tmp, &subvol) {
            self.abandon_rollback(&op, &tmp);
            return Err(Error::new(
                ErrorCode::OperationFailed,
                format!("rollback of workspace {ws_id} to {snapshot} failed; the workspace is unchanged: {}", e.message),
            ));
        }
        fsync_dir(&res.gate(&ws_id));
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
        // The deletion is committed before the end record: a power cut cannot leave the old
        // state's copy behind while the operation is already forgotten (issue 10).
        self.sys().commit(&res.mount)?;
        self.store.end(&op)?;
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
