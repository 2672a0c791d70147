//! `delete` (SPEC §5.5): one snapshot, by workspace or by a snapshot ID unique among the
//! workspaces the caller may use; pinned or MISSING snapshots need `force`.

use crate::api::{Addressed, Caller};
use crate::engine::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::check_snapshot_id;
use crate::state::WorkspaceEntry;
use serde::Serialize;

/// Result of `delete` (stable JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeleteResult {
    /// Workspace ID.
    pub ws_id: String,
    /// Deleted snapshot IDs (with `dry_run`: those that would be deleted).
    pub deleted: Vec<String>,
    /// Nothing was deleted: `--dry-run`.
    pub dry_run: bool,
}

impl Engine {
    /// `ws-ckpt delete` (SPEC §5.5): `-w` may be omitted when the ID is recorded in exactly one
    /// workspace; pinned or MISSING snapshots need `force`. With `dry_run` every check is made
    /// and nothing is deleted.
    pub fn delete(
        &self,
        ws: &Addressed,
        snapshot: &str,
        force: bool,
        dry_run: bool,
    ) -> Result<DeleteResult> {
        check_snapshot_id(snapshot)?;
        self.in_workspace(ws.ws_id(), || {
            self.delete_locked(ws, snapshot, force, dry_run)
        })
    }

    fn delete_locked(
        &self,
        ws: &Addressed,
        snapshot: &str,
        force: bool,
        dry_run: bool,
    ) -> Result<DeleteResult> {
        let res = self.storage_for(Some(&ws.entry))?;
        self.check_path_addressed(ws, &res)?;
        let ws = ws.entry.clone();
        let entry = self.index_entry(&ws, snapshot)?;
        let path = res.snapshot_path(&ws.ws_id, snapshot);
        if entry.pinned && !force {
            return Err(Error::new(
                ErrorCode::SnapshotPinned,
                format!(
                    "snapshot {snapshot} of workspace {} is pinned: confirmation required",
                    ws.ws_id
                ),
            )
            .hint(format!(
                "`ws-ckpt delete -w {} -s {snapshot} --force` deletes it anyway",
                ws.ws_id
            )));
        }
        if !force && (entry.missing || !self.sys().is_subvolume(&path)?) {
            if !entry.missing && !dry_run {
                let mut e = entry;
                e.missing = true;
                self.store.put_snapshot(&ws.ws_id, snapshot, e)?;
            }
            return Err(Self::missing_error(&ws, snapshot, &path));
        }
        let ids = vec![snapshot.to_string()];
        if !dry_run {
            self.delete_recorded(&res, &ws.ws_id, &ids)?;
        }
        Ok(DeleteResult {
            ws_id: ws.ws_id,
            deleted: ids,
            dry_run,
        })
    }

    /// Every recorded workspace whose index records `snapshot` (a delete without `-w`).
    pub fn snapshot_holders(&self, snapshot: &str) -> Vec<WorkspaceEntry> {
        let p = self.store.read();
        p.state
            .iter()
            .flat_map(|s| s.workspaces.iter())
            .filter(|w| {
                p.indexes
                    .get(&w.ws_id)
                    .is_some_and(|i| i.snapshots.contains_key(snapshot))
            })
            .cloned()
            .collect()
    }

    /// The one workspace among `holders` (see [`Engine::snapshot_holders`]) visible to
    /// `caller`, addressed by its ID (`-w` may be omitted when the snapshot ID is unique).
    pub fn unique_holder(
        &self,
        caller: &Caller,
        holders: &[WorkspaceEntry],
        snapshot: &str,
    ) -> Result<Addressed> {
        let mut holders: Vec<WorkspaceEntry> = holders
            .iter()
            .filter(|w| crate::auth::may_use(&self.config(), caller, w))
            .cloned()
            .collect();
        match holders.len() {
            0 => Err(Error::new(
                ErrorCode::SnapshotNotFound,
                format!("snapshot not found: {snapshot} (in none of your workspaces)"),
            )
            .hint("`ws-ckpt list` shows every snapshot you may use")),
            1 => {
                let entry = holders.swap_remove(0);
                let id = entry.ws_id.clone();
                Ok(Addressed::new(entry, &id))
            }
            _ => {
                let names: Vec<String> = holders
                    .iter()
                    .map(|w| format!("{} ({})", w.ws_id, w.workspace_path.display()))
                    .collect();
                Err(Error::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "snapshot {snapshot} matches in multiple workspaces: {}",
                        names.join(", ")
                    ),
                )
                .hint("please specify --workspace/-w"))
            }
        }
    }
}
