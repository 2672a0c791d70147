//! Snapshot deletion (retention, cleanup, delete), crash-safe: the list is recorded first.

use super::{Change, Executor, CLEANER_WAIT};
use crate::error::{Error, ErrorCode, Result};
use crate::fault;
use crate::state::PendingKind;

/// Snapshot deletions committed together at most, in a long deletion (a cleanup).
const DELETIONS_PER_COMMIT: usize = 16;

impl Executor<'_> {
    /// Delete snapshots (retention, cleanup, delete), crash-safe: the list is recorded first,
    /// each subvolume is deleted, then its entry; a restart finishes the list.
    pub fn delete_snapshots(&mut self, ws_id: &str, ids: &[String]) -> Result<Change> {
        if ids.is_empty() {
            return Ok(Change::AlreadyPresent);
        }
        let op = self.store.begin(PendingKind::DeleteSnapshots {
            ws_id: ws_id.to_string(),
            snapshots: ids.to_vec(),
        })?;
        fault::point("delete:after-begin");
        self.finish_delete(&op, ws_id, ids)?;
        Ok(Change::Created)
    }

    /// Delete `ids` for the recorded operation `op`. A deleted subvolume is the durable
    /// effect: its entry is forgotten even when the index line cannot be written (owed, see
    /// `store`), and the operation ends (forgotten in memory when that cannot be written), so
    /// a deletion that happened is reported done. When a subvolume cannot be deleted, the ones
    /// before it stay deleted and are named, the rest is kept and the operation is withdrawn
    /// (in recovery it stays recorded and the next pass retries): a reported failure has no
    /// later effect.
    pub(super) fn finish_delete(&mut self, op: &str, ws_id: &str, ids: &[String]) -> Result<()> {
        self.finish_delete_as(op, ws_id, ids, false)
    }

    pub(super) fn finish_delete_as(
        &mut self,
        op: &str,
        ws_id: &str,
        ids: &[String],
        recovering: bool,
    ) -> Result<()> {
        // Every subvolume is deleted first, then the deletions are committed, and only then
        // are their entries and the record forgotten: a power cut before the commit brings
        // the subvolumes back, and a record already ended would leave them unrecorded (then
        // adopted without their message, metadata and pin).
        let mut deleted = 0;
        let mut failure = None;
        for (n, id) in ids.iter().enumerate() {
            let p = self.res.snapshot_path(ws_id, id);
            if let Err(e) = self.sys.delete_subvolume_if_present(&p) {
                if recovering {
                    // The record stays; the next pass retries (deleting is idempotent).
                    return Err(e.into());
                }
                failure = Some((n, p, e));
                break;
            }
            fault::point("delete:after-subvolume");
            deleted = n + 1;
            if deleted % DELETIONS_PER_COMMIT == 0 && deleted < ids.len() {
                // Keep each transaction small: the commit of another workspace's checkpoint
                // writes out every deletion made since the last one (issue 9). Best effort:
                // the commit after the loop is the one that counts.
                if let Err(e) = self.sys.commit(&self.res.mount) {
                    tracing::debug!(ws_id, error = %e, "intermediate commit of deletions failed");
                }
            }
        }
        if deleted > 0 {
            // A failed commit leaves the record: the deletions were issued and take effect
            // with the next commit, so recovery finishing them is what happens anyway.
            self.sys.commit(&self.res.mount)?;
        }
        let owed = !self.store.forget_deleted_snapshots(ws_id, &ids[..deleted]);
        if let Some((n, p, e)) = failure {
            if !owed {
                self.store.end_or_forget(op);
            } else {
                self.store.forget_pending(op);
            }
            let done = if n == 0 {
                "nothing was deleted".to_string()
            } else {
                format!("deleted {}", ids[..n].join(", "))
            };
            return Err(Error::new(
                ErrorCode::OperationFailed,
                format!(
                    "cannot delete snapshot {} of workspace {ws_id} ({}): {e}; {done}; {} kept",
                    ids[n],
                    p.display(),
                    ids[n..].join(", ")
                ),
            ));
        }
        if owed {
            // The index on disk still lists a deleted snapshot: the record of this deletion
            // stays on disk until the index is written, so a restart finishes recording it.
            self.store.forget_pending(op);
        } else {
            self.store.end_or_forget(op);
        }
        fault::point("delete:before-cleaner-wait");
        if let Err(e) = self
            .sys
            .sync_and_wait_cleaner(&self.res.mount, CLEANER_WAIT)
        {
            tracing::warn!(mount = %self.res.mount.display(), error = %e, "could not wait for the btrfs cleaner; space may return later");
        }
        Ok(())
    }
}
