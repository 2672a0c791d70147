//! Snapshot operations on one workspace: checkpoint, rollback, list, delete, cleanup and diff
//! (SPEC §5.2, §5.3, §5.5), each crash-safe where it has more than one step (§5.6).
//!
//! Each operation that changes a workspace runs under that workspace's lock
//! ([`Engine::in_workspace`]): operations on one workspace are serialized, different
//! workspaces proceed in parallel, and nothing here holds a host-wide lock across a snapshot
//! ioctl, a send stream, a cleaner wait or a process scan (the store's critical section is
//! taken only for each record).
//!
//! These are the fast paths agents call around every risky step, so they never run a full
//! observe → plan pass (which lists every snapshot directory): [`Engine::light_resolution`]
//! reads only the mount table, the loop devices and the image file, and each operation then
//! touches only the paths it names. Recording a checkpoint is one snapshot ioctl plus one
//! index journal append, whatever the number of existing snapshots.
//!
//! What this module must not do: decide anything the planner owns (adoption, repair, marking
//! snapshots missing in bulk), spawn programs, or report success for work that was not done —
//! a workspace whose path no longer leads to its subvolume (SPEC §4 rule 5) or whose storage is
//! gone (rule 3) makes every operation that depends on it fail with what happened and how to
//! fix it.

mod checkpoint;
mod cleanup;
mod delete;
mod diff;
mod list;
mod recover;
mod rollback;
#[cfg(test)]
mod tests;

pub use checkpoint::{take_checkpoint_snapshot, CheckpointResult, PreparedCheckpoint};
pub use cleanup::CleanupResult;
pub use delete::DeleteResult;
pub use diff::DiffResult;
pub use list::{
    ListItem, ListMeta, ListPage, ListPageItems, ListResult, ListSnapshot, ListWorkspace, MAX_PAGE,
};
pub use recover::{RecoverPreview, RecoverTarget};
pub use rollback::{RollbackPreview, RollbackResult, RollbackTarget};

use crate::api::Addressed;
use crate::engine::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::finding::FindingKind;
use crate::ids::check_snapshot_id;
use crate::model::{Observed, PathState, StateProblem};
use crate::observe::path_state;
use crate::resolve::{resolve_backend, storage_mounted, Resolution};
use crate::state::PendingKind;
use crate::state::{SnapshotEntry, WorkspaceEntry};
use std::path::{Path, PathBuf};

fn is_tmpfs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// What a workspace path is instead of the workspace symlink, in words.
fn describe_path(path: &Path, st: &PathState) -> String {
    match st {
        PathState::Missing => "missing".to_string(),
        PathState::Symlink {
            target,
            target_exists,
        } => format!(
            "a symlink to {}{}",
            target.display(),
            if *target_exists {
                ""
            } else {
                " (which does not exist)"
            }
        ),
        PathState::Dir { .. } if is_tmpfs(path) => {
            "a real directory on a tmpfs (recreated after a reboot?)".to_string()
        }
        PathState::Dir { empty: true, .. } => "an empty real directory".to_string(),
        PathState::Dir { .. } => "a real directory".to_string(),
        PathState::Other => "a file (not a directory)".to_string(),
        PathState::Unreachable { why } => format!(
            "unreachable: the directory holding it cannot be opened without following a symlink ({why})"
        ),
    }
}

fn dir_is_empty(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false)
}

impl Engine {
    /// The effective backend for the fast paths: observes only the mount table, the loop
    /// devices and the image file (never a snapshot directory), then applies the backend rules.
    ///
    /// Errors: code `Blocked` for a backend conflict or a state file from a newer ws-ckpt;
    /// `StorageUnavailable` when the backend's filesystem is not mounted.
    pub fn light_resolution(&self) -> Result<Resolution> {
        self.storage_for(None)
    }

    /// [`Engine::light_resolution`], with errors naming the workspace when there is one.
    fn storage_for(&self, ws: Option<&WorkspaceEntry>) -> Result<Resolution> {
        let problem = self.store.read().problem.clone();
        if let Some(StateProblem::NewerVersion { version, path }) = &problem {
            return Err(Error::new(
                ErrorCode::Blocked,
                format!("{} was written by a newer ws-ckpt (state version {version}); nothing may change", path.display()),
            )
            .hint("upgrade ws-ckpt, or restore a state.json written by this version"));
        }
        let config = self.config();
        let obs = self.host_observation(&config);
        if let Some(e) = &obs.storage_error {
            return Err(Error::new(ErrorCode::Io, e.clone()));
        }
        let res = resolve_backend(&config, &self.store.read(), &obs);
        if let Some(f) = &res.conflict {
            let code = if f.is_blocking() || f.kind == FindingKind::BackendConflict {
                ErrorCode::Blocked
            } else {
                ErrorCode::StorageUnavailable
            };
            return Err(Error::new(code, f.message.clone()).hint(f.hint.clone()));
        }
        if !storage_mounted(&obs, &res) {
            return Err(self.storage_unavailable(&obs, &res, ws));
        }
        self.settle_checkpoints(&res);
        Ok(res)
    }

    /// Settle the checkpoints an interrupted process recorded without seeing their end
    /// (see `Store::settle_checkpoints`), by whether their snapshot exists on `res`.
    pub fn settle_checkpoints(&self, res: &Resolution) {
        if self.store.has_unsettled() {
            self.store.settle_checkpoints(|ws_id, id| {
                self.sys().is_subvolume(&res.snapshot_path(ws_id, id)).ok()
            });
        }
    }

    fn snapshot_count(&self, ws_id: &str) -> usize {
        self.store
            .read()
            .indexes
            .get(ws_id)
            .map(|i| i.snapshots.len())
            .unwrap_or(0)
    }

    fn storage_unavailable(
        &self,
        obs: &Observed,
        res: &Resolution,
        ws: Option<&WorkspaceEntry>,
    ) -> Error {
        let what = match &res.image {
            Some(img) if obs.image.is_none() => format!("the image {} is missing", img.display()),
            Some(img) => format!(
                "the image {} is not mounted at {} (no loop device of it is mounted there)",
                img.display(),
                res.mount.display()
            ),
            None => format!("no btrfs filesystem is mounted at {}", res.mount.display()),
        };
        let message = match ws {
            Some(w) => format!(
                "workspace {} ({}) is unavailable: {what}; its subvolume {} cannot be reached ({} snapshot(s) recorded)",
                w.ws_id,
                w.workspace_path.display(),
                res.ws_subvol(&w.ws_id).display(),
                self.snapshot_count(&w.ws_id)
            ),
            None => format!("ws-ckpt storage is unavailable: {what}"),
        };
        let fix = match &res.image {
            Some(img) if obs.image.is_none() => format!("restore {}", img.display()),
            Some(_) => "attach and mount it".to_string(),
            None => format!("mount the btrfs filesystem at {}", res.mount.display()),
        };
        Error::new(ErrorCode::StorageUnavailable, message).hint(format!(
            "{fix}, then run `ws-ckpt apply` (a running daemon recovers by itself); nothing recorded was changed"
        ))
    }

    /// `status -w PATH`: the workspace path must lead to the workspace (as for every
    /// path-addressed operation); the error points at the repair.
    pub fn check_attached(&self, ws: &Addressed, res: &Resolution) -> Result<()> {
        self.attached_subvol(&ws.entry, res).map(drop)
    }

    /// SPEC §4 rule 5: an operation that names the workspace by its path fails loudly when
    /// that path no longer leads to the workspace. By ws_id, snapshots stay manageable.
    fn check_path_addressed(&self, ws: &Addressed, res: &Resolution) -> Result<()> {
        if ws.by_id {
            return Ok(());
        }
        let ws = &ws.entry;
        self.attached_subvol(ws, res).map(drop).map_err(|e| {
            let hint = e.hint.clone().unwrap_or_default();
            e.hint(format!(
                "{hint}; its snapshots can still be managed by ID (`-w {}`)",
                ws.ws_id
            ))
        })
    }

    /// SPEC §4 rule 5: the workspace path must be the symlink to `<data_root>/<ws_id>`, and
    /// that subvolume must exist. Returns the subvolume.
    fn attached_subvol(&self, ws: &WorkspaceEntry, res: &Resolution) -> Result<PathBuf> {
        let subvol = res.ws_subvol(&ws.ws_id);
        if !self.sys().is_subvolume(&subvol)? {
            return Err(Error::new(
                ErrorCode::StorageUnavailable,
                format!(
                    "workspace {} ({}): its subvolume {} is gone ({} snapshot(s) recorded)",
                    ws.ws_id,
                    ws.workspace_path.display(),
                    subvol.display(),
                    self.snapshot_count(&ws.ws_id)
                ),
            )
            .hint(format!(
                "restore it (e.g. `btrfs subvolume snapshot <a snapshot of it> {}`) and run `ws-ckpt apply`; `ws-ckpt status` shows details",
                subvol.display()
            )));
        }
        let path = &ws.workspace_path;
        // Re-resolved safely: the directory holding the path, opened without following a
        // symlink, must be the one recorded at init (SPEC §7.3).
        let st = match crate::observe::open_parent(path) {
            Ok((dir, name)) => {
                let same = ws.parent.is_none_or(|rec| {
                    dir.stat()
                        .is_ok_and(|s| (s.dev, s.ino) == (rec.dev, rec.ino))
                });
                if !same {
                    return Err(Error::new(
                        ErrorCode::WorkspaceDetached,
                        format!(
                            "workspace {} is detached: the directory holding {} is not the one recorded when it became a workspace",
                            ws.ws_id,
                            path.display()
                        ),
                    )
                    .hint(format!(
                        "put the original directory back (the data is safe in {}), then run `ws-ckpt apply`",
                        subvol.display()
                    )));
                }
                crate::observe::state_in(&dir, name)
            }
            Err(_) => path_state(path),
        };
        if matches!(&st, PathState::Symlink { target, .. } if *target == subvol) {
            return Ok(subvol);
        }
        // Both repairs are named: upstream's (`recover`, back to a plain directory, which its
        // plugins and scripts point at) and ours (`apply`, which restores the link).
        let hint = match st {
            PathState::Missing => format!(
                "run `ws-ckpt recover -w {p}` to turn it back into a plain directory, or `ws-ckpt apply` to recreate the link {p} -> {s}; the data is safe in {s}",
                p = path.display(),
                s = subvol.display()
            ),
            _ => format!(
                "move {p} aside (e.g. `mv {p} {p}.moved`), then run `ws-ckpt recover -w {p}` to get the workspace back as a plain directory, or `ws-ckpt apply` to restore the link; the workspace data is safe in {s}",
                p = path.display(),
                s = subvol.display()
            ),
        };
        Err(Error::new(
            ErrorCode::WorkspaceDetached,
            format!(
                "workspace registered (ws_id={}) but detached: {} is now {}, not the symlink to {}; run 'ws-ckpt recover -w {}' to restore",
                ws.ws_id,
                path.display(),
                describe_path(path, &st),
                subvol.display(),
                path.display()
            ),
        )
        .hint(hint))
    }

    fn index_entry(&self, ws: &WorkspaceEntry, id: &str) -> Result<SnapshotEntry> {
        self.store
            .snapshot_entry(&ws.ws_id, id)
            .ok_or_else(|| Error::snapshot_not_found(&ws.ws_id, id))
    }

    /// The snapshot `spec` names in `ws`: its exact ID, else the one ID starting with it
    /// (upstream's rule for `rollback -s` and `diff`). Unknown → `snapshot not found`; a
    /// prefix of several → an error listing them.
    pub fn resolve_snapshot(&self, ws: &WorkspaceEntry, spec: &str) -> Result<String> {
        check_snapshot_id(spec)?;
        let Some(index) = self.store.read().indexes.get(&ws.ws_id).cloned() else {
            return Err(Error::snapshot_not_found(&ws.ws_id, spec));
        };
        if index.snapshots.contains_key(spec) {
            return Ok(spec.to_string());
        }
        let matches: Vec<&String> = index
            .snapshots
            .keys()
            .filter(|id| id.starts_with(spec))
            .collect();
        match matches.as_slice() {
            [] => Err(Error::snapshot_not_found(&ws.ws_id, spec)),
            [one] => Ok((*one).clone()),
            many => {
                let shown: Vec<&str> = many.iter().take(5).map(|s| s.as_str()).collect();
                Err(Error::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "snapshot prefix {spec:?} is ambiguous in workspace {}: it matches {} snapshots ({}{})",
                        ws.ws_id,
                        many.len(),
                        shown.join(", "),
                        if many.len() > shown.len() { ", …" } else { "" }
                    ),
                )
                .hint("give the whole snapshot ID (`ws-ckpt list -w WS` shows them)"))
            }
        }
    }

    fn missing_error(ws: &WorkspaceEntry, id: &str, path: &Path) -> Error {
        Error::new(
            ErrorCode::SnapshotMissing,
            format!(
                "snapshot {id} of workspace {} is MISSING: its subvolume {} is gone",
                ws.ws_id,
                path.display()
            ),
        )
        .hint(format!(
            "`ws-ckpt delete -w {} -s {id} --force` removes the entry; if you restore the subvolume, `ws-ckpt apply` clears the mark",
            ws.ws_id
        ))
    }

    /// The entry of a snapshot that must be usable (rollback, diff): recorded, not MISSING,
    /// and its subvolume present (else it is marked MISSING now).
    fn usable_snapshot(&self, ws: &WorkspaceEntry, res: &Resolution, id: &str) -> Result<PathBuf> {
        let entry = self.index_entry(ws, id)?;
        let path = res.snapshot_path(&ws.ws_id, id);
        if entry.missing {
            return Err(Self::missing_error(ws, id, &path));
        }
        if !self.sys().is_subvolume(&path)? {
            let mut e = entry;
            e.missing = true;
            if let Err(err) = self.store.put_snapshot(&ws.ws_id, id, e) {
                tracing::warn!(ws_id = %ws.ws_id, snapshot = id, error = %err, "could not record the MISSING mark");
            }
            return Err(Self::missing_error(ws, id, &path));
        }
        if self.pending_delete_of(&ws.ws_id, id) {
            return Err(Error::new(
                ErrorCode::OperationFailed,
                format!(
                    "snapshot {id} of workspace {} is being deleted by an interrupted operation",
                    ws.ws_id
                ),
            )
            .hint("run `ws-ckpt apply` to finish it"));
        }
        Ok(path)
    }

    fn pending_delete_of(&self, ws_id: &str, id: &str) -> bool {
        self.store.read().pending().iter().any(|o| {
            matches!(&o.kind, PendingKind::DeleteSnapshots { ws_id: w, snapshots } if w == ws_id && snapshots.iter().any(|s| s == id))
        })
    }

    /// Delete recorded snapshots crash-safely: the list is recorded first, then each subvolume
    /// is deleted and then its entry; a restart finishes the list (the executor's recovery of
    /// `PendingKind::DeleteSnapshots`). Finally commits and waits (bounded) for the cleaner.
    fn delete_recorded(&self, res: &Resolution, ws_id: &str, ids: &[String]) -> Result<()> {
        let config = self.config();
        self.executor(&config, res, &mut |_, _| {})
            .delete_snapshots(ws_id, ids)
            .map(drop)
    }
}
