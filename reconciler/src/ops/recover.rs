//! `recover` (upstream's name for release, SPEC §5.4): what releasing would act on — one
//! workspace or every one the caller may release — with the number of snapshot subvolumes
//! that would be deleted, for the confirmation prompt (docs/compat.md §4.8). The release
//! itself is `Engine::release`.

use crate::api::{Addressed, Caller, Request, Target};
use crate::engine::Engine;
use crate::state::WorkspaceEntry;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Result of a recover preview (stable JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoverPreview {
    /// The workspaces a recover would release, in the order recorded.
    pub workspaces: Vec<RecoverTarget>,
}

/// One workspace a recover would release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoverTarget {
    /// Workspace ID.
    pub ws_id: String,
    /// Its registered path (the data goes back to a plain directory there).
    pub path: PathBuf,
    /// Snapshot subvolumes that would be deleted (those on disk; the recorded count when the
    /// backend cannot be reached).
    pub snapshots: usize,
    /// Why releasing it would fail now (e.g. a real directory occupies its path), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl Engine {
    /// What `recover -w WS` (`workspace`) or `recover --all` (`None`: every recorded
    /// workspace `caller` may release) would act on.
    pub fn recover_preview(
        &self,
        caller: &Caller,
        workspace: Option<&Addressed>,
    ) -> RecoverPreview {
        let config = self.config();
        let entries: Vec<WorkspaceEntry> = match workspace {
            Some(w) => vec![w.entry.clone()],
            None => self
                .store
                .snapshot()
                .state
                .iter()
                .flat_map(|s| s.workspaces.iter())
                .filter(|w| {
                    let req = Request::Release {
                        path: w.workspace_path.clone(),
                    };
                    let id = w.ws_id.clone();
                    let t = Target::Workspace(Addressed::new((*w).clone(), &id));
                    crate::auth::authorize(&config, caller, &req, &t).is_ok()
                })
                .cloned()
                .collect(),
        };
        let res = self.light_resolution().ok();
        let workspaces = entries
            .into_iter()
            .map(|w| {
                let recorded = self.snapshot_count(&w.ws_id);
                let snapshots = res
                    .as_ref()
                    .and_then(|r| self.sys().list_subvolumes(&r.snap_dir(&w.ws_id)).ok())
                    .map(|v| v.iter().filter(|n| !n.starts_with('.')).count())
                    .unwrap_or(recorded);
                RecoverTarget {
                    problem: crate::engine::release_blocker(&w),
                    ws_id: w.ws_id,
                    path: w.workspace_path,
                    snapshots,
                }
            })
            .collect();
        RecoverPreview { workspaces }
    }
}
