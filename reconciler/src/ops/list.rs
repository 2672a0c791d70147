//! `list` (SPEC §5.5): the recorded snapshots, newest last, of the workspaces a caller may use.

use crate::api::Caller;
use crate::engine::Engine;
use crate::error::Result;
use crate::state::WorkspaceEntry;
use crate::time::Timestamp;
use serde::Serialize;
use std::path::PathBuf;

/// Result of `list` (stable JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListResult {
    /// Workspaces the caller may use, in the order recorded.
    pub workspaces: Vec<ListWorkspace>,
}

/// One workspace in a [`ListResult`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListWorkspace {
    /// Workspace ID.
    pub ws_id: String,
    /// Workspace path.
    pub path: PathBuf,
    /// Why the workspace cannot be used right now (storage unavailable, detached, blocked);
    /// absent when it is usable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Snapshots, oldest first (newest last).
    pub snapshots: Vec<ListSnapshot>,
}

/// One snapshot in a [`ListWorkspace`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListSnapshot {
    /// Snapshot ID.
    pub id: String,
    /// Creation time (RFC 3339).
    pub created_at: Timestamp,
    /// Message.
    pub message: Option<String>,
    /// Free-form JSON metadata.
    pub metadata: Option<serde_json::Value>,
    /// Never deleted by retention or cleanup.
    pub pinned: bool,
    /// Its subvolume is gone (shown as MISSING).
    pub missing: bool,
}

fn sort_newest_last(mut v: Vec<ListSnapshot>) -> Vec<ListSnapshot> {
    // Stable: entries with equal or unparsable times keep their recorded order.
    v.sort_by_key(|s| s.created_at.time());
    v
}

impl Engine {
    /// `ws-ckpt list` (SPEC §5.5): recorded snapshots, newest last, of the workspaces the
    /// caller may use. A snapshot is MISSING when marked so or when its subvolume is gone.
    /// With a workspace named, an unusable backend is an error; otherwise it is reported per
    /// workspace in `problem`.
    pub fn list(&self, caller: &Caller, workspace: Option<&WorkspaceEntry>) -> Result<ListResult> {
        let (entries, storage) = match workspace {
            Some(w) => {
                let res = self.storage_for(Some(w))?;
                (vec![w.clone()], Ok(res))
            }
            None => {
                let config = self.config();
                let all: Vec<WorkspaceEntry> = self
                    .store
                    .read()
                    .state
                    .iter()
                    .flat_map(|s| s.workspaces.iter())
                    .filter(|w| crate::auth::may_use(&config, caller, w))
                    .cloned()
                    .collect();
                (all, self.light_resolution())
            }
        };
        let mut out = Vec::new();
        for w in entries {
            let problem = match &storage {
                Err(_) if workspace.is_none() => {
                    self.storage_for(Some(&w)).err().map(|e| e.message)
                }
                Err(e) => Some(e.message.clone()),
                Ok(res) => self.attached_subvol(&w, res).err().map(|e| e.message),
            };
            let index = self.store.read().indexes.get(&w.ws_id).cloned();
            let snapshots = index
                .map(|i| {
                    i.snapshots
                        .iter()
                        .map(|(id, e)| {
                            let gone = match &storage {
                                Ok(res) => !self
                                    .sys()
                                    .is_subvolume(&res.snapshot_path(&w.ws_id, id))
                                    .unwrap_or(true),
                                Err(_) => false,
                            };
                            ListSnapshot {
                                id: id.clone(),
                                created_at: e.created_at.clone(),
                                message: e.message.clone(),
                                metadata: e.metadata.clone(),
                                pinned: e.pinned,
                                missing: e.missing || gone,
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(ListWorkspace {
                ws_id: w.ws_id,
                path: w.workspace_path,
                problem,
                snapshots: sort_newest_last(snapshots),
            });
        }
        Ok(ListResult { workspaces: out })
    }
}
