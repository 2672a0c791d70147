//! Finishing or reverting an interrupted operation by the step the planner proved, each
//! precondition checked again.

use super::gates::open_bound_parent;
use super::workspace::{job_for, remove_tree, tree_err, InitRecord, ReleaseRecord};
use super::{io_err, Change, Executor};
use crate::error::{Error, ErrorCode, Result};
use crate::model::PathState;
use crate::observe::state_in;
use crate::plan::RecoveryStep as Step;
use crate::state::{ParentRecord, PendingKind, PendingOp};
use crate::tree::Kind;
use std::path::Path;

/// Identities recorded in the user's directory, moved to the device number its filesystem
/// has now: after a reboot or a remount `st_dev` may differ while the filesystem (its ID) and
/// the inodes are the same ([`ParentRecord::matches`]).
fn rebase_identities(kind: &mut PendingKind) -> Result<()> {
    let (path, parent, ids) = match kind {
        PendingKind::Init {
            path,
            parent,
            original,
            ..
        } => (path, parent, vec![original]),
        PendingKind::Release {
            path,
            parent,
            copy,
            link,
            ..
        } => (path, parent, vec![copy, link]),
        _ => return Ok(()),
    };
    let Some(rec) = parent.as_mut() else {
        return Ok(());
    };
    let Ok((dir, _)) = open_bound_parent(path, Some(rec)) else {
        // The step itself reports it, with its own wording.
        return Ok(());
    };
    let now = crate::observe::parent_record(&dir).map_err(tree_err)?;
    for id in ids.into_iter().flatten() {
        *id = rec.rebase(&now, *id);
    }
    *rec = ParentRecord {
        uid: rec.uid,
        ..now
    };
    Ok(())
}

impl Executor<'_> {
    /// Finish or revert the interrupted operation `op_id` by `step`, re-checking what the
    /// planner proved. `AlreadyPresent` when the operation is no longer recorded.
    pub(super) fn recover(&mut self, op_id: &str, step: &Step) -> Result<Change> {
        let Some(PendingOp { mut kind, .. }) = self.store.pending(op_id) else {
            return Ok(Change::AlreadyPresent);
        };
        rebase_identities(&mut kind)?;
        match (kind, step) {
            (
                PendingKind::Init {
                    ws_id,
                    path,
                    subvol,
                    tmp,
                    parent,
                    original,
                    owner,
                    ..
                },
                Step::RemoveOriginalCopy { .. },
            ) => self.finish_init(
                &InitRecord {
                    op: op_id,
                    ws_id: &ws_id,
                    path: &path,
                    subvol: &subvol,
                    tmp: &tmp,
                    parent,
                    original,
                    owner,
                },
                true,
            )?,
            (
                PendingKind::Init {
                    ws_id,
                    path,
                    subvol,
                    tmp,
                    parent,
                    original,
                    ..
                },
                Step::DeletePartialSubvolume { .. },
            ) => {
                let (dir, name) = open_bound_parent(&path, parent.as_ref())?;
                let tmp_name = tmp.file_name().unwrap_or_default();
                if let Ok(Some((st, target))) = dir.read_symlink(tmp_name) {
                    if target == subvol {
                        dir.unlink_expecting(tmp_name, st.identity())
                            .map_err(tree_err)?;
                    }
                }
                let original_there = dir
                    .child_stat(name)
                    .map_err(tree_err)?
                    .is_some_and(|st| {
                        st.kind == Kind::Dir && original.is_none_or(|o| o == st.identity())
                    });
                if !original_there {
                    return Err(Error::new(
                        ErrorCode::OperationFailed,
                        format!(
                            "{} is no longer the original directory; not reverting",
                            path.display()
                        ),
                    ));
                }
                self.sys.delete_subvolume_if_present(&subvol)?;
                self.remove_gates(&ws_id)?;
                self.store.end(op_id)?;
            }
            (
                PendingKind::Release {
                    ws_id,
                    path,
                    subvol,
                    tmp,
                    parent,
                    copy,
                    link,
                    owner,
                    phase,
                },
                Step::RemoveWorkspaceSubvolume { .. },
            ) => self.finish_release(
                &ReleaseRecord {
                    op: op_id,
                    ws_id: &ws_id,
                    path: &path,
                    subvol: &subvol,
                    tmp: &tmp,
                    parent,
                    copy,
                    link,
                    owner,
                    phase,
                },
                true,
            )?,
            (
                PendingKind::Release {
                    path,
                    subvol,
                    tmp,
                    parent,
                    copy,
                    owner,
                    ..
                },
                Step::RemovePartialCopy { .. },
            ) => {
                let (dir, name) = open_bound_parent(&path, parent.as_ref())?;
                if !matches!(state_in(&dir, name), PathState::Symlink { target, .. } if target == subvol)
                {
                    return Err(Error::new(
                        ErrorCode::OperationFailed,
                        format!(
                            "{} is no longer the workspace symlink; not reverting",
                            path.display()
                        ),
                    ));
                }
                let tmp_name = tmp.file_name().unwrap_or_default();
                if let Some(st) = dir.child_stat(tmp_name).map_err(tree_err)? {
                    match copy {
                        Some(c) if st.kind == Kind::Dir && st.identity() == c => {
                            remove_tree(&mut job_for(owner.unwrap_or(0))?, &dir, tmp_name, c)
                                .map_err(tree_err)?;
                        }
                        // Made by ws-ckpt (root's, empty) but not yet recorded.
                        None if st.kind == Kind::Dir && st.uid == 0 => {
                            let _ = dir.remove_empty_dir(tmp_name);
                        }
                        _ => tracing::warn!(tmp = %tmp.display(), "not ws-ckpt's copy; left alone"),
                    }
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
                PendingKind::Rollback {
                    ws_id,
                    snapshot,
                    subvol,
                    tmp,
                    live_tree,
                    ..
                },
                Step::ForgetRollback { .. }
                | Step::DeleteOtherCopy { .. }
                | Step::FinishRollback { .. },
            ) => {
                // The workspace symlink points at `subvol` by name; whichever subvolume holds
                // that name is live. Without the live subvolume's id (earlier versions) the
                // other one is the copy to drop, whether finishing or reverting. With it, a
                // rollback whose copy exists is finished: the copy takes the name unless it
                // already has (the reply may have gone before the exchange was committed).
                if let (Some(live), true) = (live_tree, self.sys.is_subvolume(&tmp)?) {
                    self.finish_rollback_exchange(&ws_id, &snapshot, &subvol, &tmp, live)?;
                }
                self.sys.delete_subvolume_if_present(&tmp)?;
                // Always committed before the record goes: a deletion issued before the
                // interruption may not be committed yet.
                self.sys.commit(&self.res.mount)?;
                self.store.end(op_id)?;
            }
            (PendingKind::DeleteSnapshots { ws_id, snapshots }, Step::FinishDeleting { .. }) => {
                self.finish_delete_as(op_id, &ws_id, &snapshots, true)?
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

impl Executor<'_> {
    /// An interrupted rollback recorded with the live subvolume's id `live`, whose copy
    /// exists at `tmp`: when `subvol` is still that subvolume, exchange the names now and
    /// make the target the lineage head; when `tmp` is, the exchange happened. Anything
    /// else is not what the rollback left: both are kept and the error says so.
    fn finish_rollback_exchange(
        &self,
        ws_id: &str,
        snapshot: &str,
        subvol: &Path,
        tmp: &Path,
        live: u64,
    ) -> Result<()> {
        let at_name = self.sys.subvolume_id(subvol)?;
        let at_tmp = self.sys.subvolume_id(tmp)?;
        if at_name == Some(live) && at_tmp != Some(live) {
            super::exchange(tmp, subvol)?;
            tracing::info!(
                ws_id,
                snapshot,
                "finished an interrupted rollback: the copy took the workspace's place"
            );
            // No later snapshot of this workspace can exist: its commit would have committed
            // the exchange too.
            self.store.set_head(ws_id, snapshot)?;
            Ok(())
        } else if at_tmp == Some(live) && at_name != Some(live) {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::OperationFailed,
                format!(
                    "interrupted rollback of {ws_id}: neither {} (subvolume {at_name:?}) nor {} (subvolume {at_tmp:?}) is the workspace's previous subvolume {live}; both are kept",
                    subvol.display(),
                    tmp.display()
                ),
            )
            .hint("compare the two and remove the wrong one by hand (`btrfs subvolume delete`), then run `ws-ckpt apply`"))
        }
    }
}
