//! Finishing or reverting an interrupted operation by the step the planner proved, each
//! precondition checked again.

use super::{io_err, Change, Executor};
use crate::copy;
use crate::error::{Error, ErrorCode, Result};
use crate::model::PathState;
use crate::observe::path_state;
use crate::plan::RecoveryStep as Step;
use crate::state::{PendingKind, PendingOp};

impl Executor<'_> {
    /// Finish or revert the interrupted operation `op_id` by `step`, re-checking what the
    /// planner proved. `AlreadyPresent` when the operation is no longer recorded.
    pub(super) fn recover(&mut self, op_id: &str, step: &Step) -> Result<Change> {
        let Some(PendingOp { kind, .. }) = self.store.pending(op_id) else {
            return Ok(Change::AlreadyPresent);
        };
        match (kind, step) {
            (
                PendingKind::Init {
                    ws_id,
                    path,
                    subvol,
                    tmp,
                    ..
                },
                Step::RemoveOriginalCopy { .. },
            ) => self.finish_init(op_id, &ws_id, &path, &subvol, &tmp)?,
            (
                PendingKind::Init {
                    path, subvol, tmp, ..
                },
                Step::DeletePartialSubvolume { .. },
            ) => {
                if let PathState::Symlink { .. } = path_state(&tmp) {
                    std::fs::remove_file(&tmp).map_err(io_err("remove", &tmp))?;
                }
                if !matches!(path_state(&path), PathState::Dir { .. }) {
                    return Err(Error::new(
                        ErrorCode::OperationFailed,
                        format!(
                            "{} is no longer the original directory; not reverting",
                            path.display()
                        ),
                    ));
                }
                self.sys.delete_subvolume_if_present(&subvol)?;
                self.store.end(op_id)?;
            }
            (
                PendingKind::Release {
                    ws_id, path, tmp, ..
                },
                Step::RemoveWorkspaceSubvolume { .. },
            ) => self.finish_release(op_id, &ws_id, &path, &tmp)?,
            (
                PendingKind::Release {
                    path, subvol, tmp, ..
                },
                Step::RemovePartialCopy { .. },
            ) => {
                if !matches!(path_state(&path), PathState::Symlink { target, .. } if target == subvol)
                {
                    return Err(Error::new(
                        ErrorCode::OperationFailed,
                        format!(
                            "{} is no longer the workspace symlink; not reverting",
                            path.display()
                        ),
                    ));
                }
                if let PathState::Dir { .. } = path_state(&tmp) {
                    copy::remove_tree(&tmp)?;
                }
                self.store.end(op_id)?;
            }
            (
                PendingKind::MigrateImage { from, to, .. },
                Step::ForgetImageMove { .. } | Step::RemoveOldImage { .. },
            ) => {
                if from.exists() && to.exists() {
                    std::fs::remove_file(&from).map_err(io_err("remove old image", &from))?;
                }
                self.store.end(op_id)?;
            }
            (PendingKind::MigrateImage { tmp, .. }, Step::RemovePartialImageCopy { .. }) => {
                if tmp.exists() {
                    std::fs::remove_file(&tmp).map_err(io_err("remove partial copy", &tmp))?;
                }
                self.store.end(op_id)?;
            }
            (PendingKind::GrowImage { image, to_bytes }, Step::FinishGrowing { .. }) => {
                self.grow(&image, to_bytes)?;
                self.store.end(op_id)?;
            }
            (
                PendingKind::Rollback { tmp, .. },
                Step::ForgetRollback { .. }
                | Step::DeleteUnfinishedSnapshot { .. }
                | Step::DeleteOtherCopy { .. },
            ) => {
                // The workspace symlink points at `subvol` by name; whichever subvolume holds
                // that name is live (before or after the exchange). The other one is the copy
                // to drop, whether finishing or reverting.
                self.sys.delete_subvolume_if_present(&tmp)?;
                self.store.end(op_id)?;
            }
            (PendingKind::DeleteSnapshots { ws_id, snapshots }, Step::FinishDeleting { .. }) => {
                self.finish_delete(op_id, &ws_id, &snapshots)?
            }
            (kind, step) => {
                return Err(Error::new(
                    ErrorCode::OperationFailed,
                    format!(
                        "interrupted {} {op_id} no longer matches the planned step ({}); nothing was done",
                        kind.name(),
                        step.describe()
                    ),
                )
                .hint("run `ws-ckpt apply` again: the next pass plans from what is recorded now"))
            }
        }
        Ok(Change::Created)
    }
}
