//! `diff` (SPEC §5.5): between two snapshots, or a snapshot and the live workspace (through a
//! temporary read-only snapshot recorded as a pending deletion first).

use crate::api::Addressed;
use crate::diff::DiffEntry;
use crate::engine::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::fault;
use crate::ids::check_snapshot_id;
use crate::state::PendingKind;
use crate::store::new_op_id;
use serde::Serialize;

/// Result of `diff` (stable JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffResult {
    /// Workspace ID.
    pub ws_id: String,
    /// Older snapshot.
    pub from: String,
    /// Newer snapshot; `null` = the live workspace.
    pub to: Option<String>,
    /// Entries sorted by path.
    pub entries: Vec<DiffEntry>,
}

impl Engine {
    /// `ws-ckpt diff` (SPEC §5.5): entries between two snapshots, or between a snapshot and
    /// the live workspace (through a temporary read-only snapshot that a crash cannot strand:
    /// it is recorded as a pending deletion first).
    pub fn diff(&self, addressed: &Addressed, from: &str, to: Option<&str>) -> Result<DiffResult> {
        check_snapshot_id(from)?;
        if let Some(t) = to {
            check_snapshot_id(t)?;
        }
        // The live diff records a temporary snapshot as a pending deletion: a pass must not
        // finish it while the stream runs.
        self.in_workspace(addressed.ws_id(), || self.diff_locked(addressed, from, to))
    }

    fn diff_locked(
        &self,
        addressed: &Addressed,
        from: &str,
        to: Option<&str>,
    ) -> Result<DiffResult> {
        let ws = addressed.entry.clone();
        let res = self.storage_for(Some(&ws))?;
        self.check_path_addressed(addressed, &res)?;
        // An ID or a unique prefix of one (as upstream's `diff`).
        let from = self.resolve_snapshot(&ws, from)?;
        let to = to.map(|t| self.resolve_snapshot(&ws, t)).transpose()?;
        let (from, to) = (from.as_str(), to.as_deref());
        let from_path = self.usable_snapshot(&ws, &res, from)?;
        let diff_err = |e: crate::diff::DiffError| {
            Error::new(
                ErrorCode::OperationFailed,
                format!("diff of workspace {}: {e}", ws.ws_id),
            )
        };
        let entries = match to {
            Some(t) => {
                let to_path = self.usable_snapshot(&ws, &res, t)?;
                crate::diff::diff_subvolumes(self.sys(), &from_path, &to_path).map_err(diff_err)?
            }
            None => {
                let subvol = self.attached_subvol(&ws, &res)?;
                let tmp_id = format!(".diff-{}", new_op_id());
                let op = self.store.begin(PendingKind::DeleteSnapshots {
                    ws_id: ws.ws_id.clone(),
                    snapshots: vec![tmp_id.clone()],
                })?;
                let snap_dir = res.snap_dir(&ws.ws_id);
                let tmp = snap_dir.join(&tmp_id);
                let result = std::fs::create_dir_all(&snap_dir)
                    .map_err(|e| Error::io("create directory", &snap_dir, e))
                    .and_then(|_| {
                        self.sys()
                            .snapshot(&subvol, &tmp, true)
                            .map_err(Error::from)
                    })
                    .and_then(|_| {
                        fault::point("diff:after-snapshot");
                        crate::diff::diff_subvolumes(self.sys(), &from_path, &tmp).map_err(diff_err)
                    });
                let cleaned = self.sys().delete_subvolume_if_present(&tmp);
                match cleaned {
                    Ok(_) => self.store.end(&op)?,
                    // Left recorded: the next pass deletes it.
                    Err(e) => {
                        tracing::warn!(tmp = %tmp.display(), error = %e, "could not delete the temporary diff snapshot")
                    }
                }
                result?
            }
        };
        Ok(DiffResult {
            ws_id: ws.ws_id,
            from: from.to_string(),
            to: to.map(str::to_string),
            entries,
        })
    }
}
