//! Snapshot deletion (retention, cleanup, delete), crash-safe: the list is recorded first.

use super::{Change, Executor, CLEANER_WAIT};
use crate::error::Result;
use crate::fault;
use crate::state::PendingKind;

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

    pub(super) fn finish_delete(&mut self, op: &str, ws_id: &str, ids: &[String]) -> Result<()> {
        for id in ids {
            let p = self.res.snapshot_path(ws_id, id);
            self.sys.delete_subvolume_if_present(&p)?;
            fault::point("delete:after-subvolume");
            let known = self.store.snapshot_entry(ws_id, id).is_some();
            if known {
                self.store.remove_snapshot(ws_id, id)?;
            }
        }
        self.store.end(op)?;
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
