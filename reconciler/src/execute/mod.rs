//! The executor: carries out planned actions, persisting state after each one (SPEC §4, §5.6).
//!
//! It is the only code that changes the system on behalf of the planner (the snapshot
//! operations in `ops` are the other mutator: see the crate documentation). It does not
//! decide what to do (the planner does); it re-checks each precondition it relies on and fails
//! the action, never guesses. Multi-step actions record their phase durably before their
//! first irreversible step. Every step says whether it changed anything ([`Change`]), so
//! "apply twice, the second changes nothing" is computed, not inferred.

mod backend;
pub mod gates;
mod recovery;
mod snapshots;
#[cfg(test)]
mod tests;
mod workspace;

use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use crate::fault;
use crate::model::PathState;
use crate::plan::Action;
use crate::resolve::Resolution;
use crate::state::{PendingKind, SnapshotEntry, WorkspaceEntry};
use crate::store::Store;
use crate::sys::Sys;
use crate::tree::Progress;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long to wait for the btrfs cleaner after deleting subvolumes.
pub const CLEANER_WAIT: Duration = Duration::from_secs(30);

/// What one step did to the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It changed something to reach what the action asks for.
    Created,
    /// What the action asks for was already so; nothing was changed.
    AlreadyPresent,
}

impl Change {
    /// `Created` when `changed`, else `AlreadyPresent`.
    pub fn from_changed(changed: bool) -> Change {
        if changed {
            Change::Created
        } else {
            Change::AlreadyPresent
        }
    }

    /// True for `Created`.
    pub fn changed(self) -> bool {
        self == Change::Created
    }

    /// `Created` when either is.
    pub fn and(self, other: Change) -> Change {
        Change::from_changed(self.changed() || other.changed())
    }
}

/// How an action ended (JSON `result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It ran to the end.
    Done,
    /// It failed; `error` says why.
    Failed,
    /// It was only planned (`apply --check`).
    Planned,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Done => "done",
            Outcome::Failed => "failed",
            Outcome::Planned => "planned",
        })
    }
}

/// What happened to one action.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionOutcome {
    /// The action.
    #[serde(flatten)]
    pub action: Action,
    /// `done`, `failed` or `planned` (check mode).
    pub result: Outcome,
    /// Whether it changed the system (false for a done action that found everything as it
    /// should be, and for planned and failed ones).
    #[serde(default)]
    pub changed: bool,
    /// Error, when failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
}

/// Receives progress of long copies: (what, progress).
pub type ProgressFn<'a> = &'a mut dyn FnMut(&str, &Progress);

/// Carries out actions against one resolved backend.
pub struct Executor<'a> {
    /// System access.
    pub sys: &'a dyn Sys,
    /// Effective config.
    pub config: &'a Config,
    /// Persisted state (shared: each call is one short critical section; long steps run
    /// between calls, holding only the workspace's lock, which the caller took).
    pub store: &'a Store,
    /// Effective backend.
    pub res: &'a Resolution,
    /// Progress sink for long copies.
    pub progress: ProgressFn<'a>,
    /// An init on behalf of a user: (its path, her uid). The directory must be hers when it
    /// is opened for the copy; nothing is done otherwise.
    pub init_owner: Option<&'a (PathBuf, u32)>,
}

fn io_err<'p>(what: &str, path: &'p Path) -> impl FnOnce(std::io::Error) -> Error + 'p {
    let what = what.to_string();
    move |e| Error::io(&what, path, e)
}

/// Atomically swap two paths (`renameat2(RENAME_EXCHANGE)`).
pub fn exchange(a: &Path, b: &Path) -> Result<()> {
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        a,
        nix::fcntl::AT_FDCWD,
        b,
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    )
    .map_err(|e| {
        Error::new(
            ErrorCode::Io,
            format!("exchange {} with {}: {e}", a.display(), b.display()),
        )
    })
}

/// A sibling name for `path`, derived (never appended) so it fits NAME_MAX:
/// [`crate::tree::names::temp_sibling`].
pub fn sibling(path: &Path, tag: &str, op_id: &str) -> PathBuf {
    crate::tree::names::temp_sibling(path, tag, op_id)
}

impl Executor<'_> {
    /// Run one action. State is persisted by each step.
    pub fn run(&mut self, action: &Action) -> Result<Change> {
        tracing::info!(action = action.name(), detail = %action.describe(), "executing");
        const DONE: Change = Change::Created;
        match action {
            Action::MigrateImagePath { from, to } => self.migrate_image(from, to).map(|()| DONE),
            Action::MigrateV0Indexes { workspaces } => self.migrate_v0(workspaces).map(|()| DONE),
            Action::DeclareMigrated { workspaces } => self.declare_migrated(workspaces),
            Action::BootstrapBackend {
                create_image_bytes,
                image_target_bytes,
                mount_needed,
                ..
            } => self.bootstrap(*create_image_bytes, *image_target_bytes, *mount_needed),
            Action::GrowImage {
                image, to_bytes, ..
            } => {
                let op = self.store.begin(PendingKind::GrowImage {
                    image: image.clone(),
                    to_bytes: *to_bytes,
                })?;
                fault::point("grow:after-begin");
                let change = self.grow(image, *to_bytes)?;
                self.store.end(&op)?;
                Ok(change)
            }
            Action::InitWorkspace { ws_id, path } => {
                self.init_workspace(ws_id, path).map(|()| DONE)
            }
            Action::AdoptWorkspace {
                ws_id,
                path,
                create_symlink,
            } => self.adopt_workspace(ws_id, path, *create_symlink),
            Action::AdoptSnapshot { ws_id, snapshots } => {
                for id in snapshots {
                    let p = self.res.snapshot_path(ws_id, id);
                    // ws-ckpt's own storage path: its creation time, nothing followed.
                    let created = std::fs::symlink_metadata(&p)
                        .and_then(|m| m.created())
                        .unwrap_or_else(|_| SystemTime::now());
                    // A checkpoint whose index line a power cut lost: its record (message,
                    // metadata, pin) is on its snapshot directory (or, from earlier builds,
                    // on the snapshot's root), and it takes its place in the lineage as the
                    // checkpoint would have.
                    let carried = self
                        .sys
                        .checkpoint_record(&p)
                        .ok()
                        .flatten()
                        .and_then(|b| crate::state::CheckpointNote::entry_for(&b, ws_id, id));
                    match carried {
                        Some(entry) => {
                            tracing::info!(ws_id, snapshot = %id, "adopting a checkpoint with its record");
                            self.store.record_checkpoint(ws_id, id, &entry)?;
                            self.store.confirm_checkpoint(ws_id, id, entry);
                            let dir = self.res.snap_dir(ws_id);
                            if let Err(e) = self.sys.remove_checkpoint_record(&dir, id) {
                                tracing::warn!(ws_id, snapshot = %id, error = %e, "cannot remove an adopted checkpoint's record from its snapshot directory; it is harmless");
                            }
                        }
                        None => {
                            let entry = new_entry(created, None, None, false);
                            self.store.put_snapshot(ws_id, id, entry)?;
                        }
                    }
                }
                Ok(Change::from_changed(!snapshots.is_empty()))
            }
            Action::RepairSymlink {
                ws_id,
                path,
                target,
            } => self.repair_symlink(ws_id, path, target),
            Action::MarkMissing { ws_id, snapshots } => self.set_missing(ws_id, snapshots, true),
            Action::ClearMissing { ws_id, snapshots } => self.set_missing(ws_id, snapshots, false),
            Action::ApplyRetention { ws_id, delete } => {
                let ids: Vec<String> = delete.iter().map(|d| d.id.clone()).collect();
                self.delete_snapshots(ws_id, &ids)
            }
            Action::ReleaseWorkspace { ws_id, path } => {
                self.release_workspace(ws_id, path).map(|()| DONE)
            }
            Action::FinishInterrupted {
                op_id, recovery, ..
            }
            | Action::RevertInterrupted {
                op_id, recovery, ..
            } => self.recover(op_id, &recovery.0),
            Action::SecureStorage { dirs } => self.secure_storage(dirs),
            Action::MigrateStorage {
                ws_id,
                path,
                from,
                to,
                relink,
            } => self.migrate_storage(ws_id, path, from, to, *relink),
            Action::SetStorageAccess {
                ws_id,
                gates,
                form,
                record_others_search,
                ..
            } => self.set_storage_access(ws_id, gates, form, *record_others_search),
            Action::RecordParent {
                ws_id,
                path,
                parent,
            } => self.record_parent(ws_id, path, parent),
        }
    }

    /// `adopt-workspace`: record a workspace whose subvolume exists (in its gate, or where
    /// earlier layouts kept it; the next pass moves it), creating the symlink when the path
    /// is missing.
    fn adopt_workspace(
        &mut self,
        ws_id: &str,
        path: &Path,
        create_symlink: bool,
    ) -> Result<Change> {
        let subvol = if self.sys.is_subvolume(&self.res.ws_subvol(ws_id))? {
            self.res.ws_subvol(ws_id)
        } else {
            self.res.legacy_ws_subvol(ws_id)
        };
        let (parent, name) = gates::open_bound_parent(path, None)?;
        let owner = crate::tree::Dir::open_no_symlinks(&subvol)
            .and_then(|d| d.stat())
            .ok()
            .map(|s| s.uid);
        if create_symlink {
            let st = parent.symlink(name, &subvol).map_err(workspace::tree_err)?;
            if let Some((uid, gid)) = gates::link_owner(owner) {
                parent
                    .chown_symlink(name, st.identity(), uid, gid)
                    .map_err(workspace::tree_err)?;
            }
            parent.sync().map_err(workspace::tree_err)?;
        }
        let record = crate::observe::parent_record(&parent).map_err(workspace::tree_err)?;
        self.record_workspace(ws_id, path, owner, Some(record), None)
            .map(|()| Change::Created)
    }

    /// `repair-symlink`: in the recorded directory only; a missing path gets the link, a
    /// dangling link to this workspace's subvolume (an earlier layout or mount point) is
    /// replaced atomically; anything else is left alone.
    fn repair_symlink(&mut self, ws_id: &str, path: &Path, target: &Path) -> Result<Change> {
        let w = self
            .store
            .read()
            .state
            .as_ref()
            .and_then(|s| s.workspace(ws_id))
            .cloned();
        let recorded = w.as_ref().and_then(|w| w.parent);
        let owner = gates::link_owner(w.as_ref().and_then(|w| w.owner_uid));
        let (parent, name) = gates::open_bound_parent(path, recorded.as_ref())?;
        match crate::observe::state_in(&parent, name) {
            PathState::Missing => {
                let st = parent.symlink(name, target).map_err(workspace::tree_err)?;
                if let Some((uid, gid)) = owner {
                    parent
                        .chown_symlink(name, st.identity(), uid, gid)
                        .map_err(workspace::tree_err)?;
                }
                parent.sync().map_err(workspace::tree_err)?;
                Ok(Change::Created)
            }
            PathState::Symlink { target: t, .. } if t == target => Ok(Change::AlreadyPresent),
            PathState::Symlink {
                target: t,
                target_exists: false,
            } if crate::resolve::names_workspace_subvol(&t, ws_id) => {
                gates::replace_symlink(&parent, name, target, owner).map(|()| Change::Created)
            }
            other => Err(Error::new(
                ErrorCode::WorkspaceDetached,
                format!("{} is now {other:?}; not replacing it", path.display()),
            )),
        }
    }

    fn set_missing(&mut self, ws_id: &str, snapshots: &[String], missing: bool) -> Result<Change> {
        let mut change = Change::AlreadyPresent;
        for id in snapshots {
            let Some(mut e) = self.store.snapshot_entry(ws_id, id) else {
                continue;
            };
            if e.missing == missing {
                continue;
            }
            e.missing = missing;
            self.store.put_snapshot(ws_id, id, e)?;
            change = Change::Created;
        }
        Ok(change)
    }

    fn record_workspace(
        &mut self,
        ws_id: &str,
        path: &Path,
        owner: Option<u32>,
        parent: Option<crate::state::ParentRecord>,
        others_search: Option<bool>,
    ) -> Result<()> {
        let entry = WorkspaceEntry {
            ws_id: ws_id.to_string(),
            workspace_path: path.to_path_buf(),
            registered_at: crate::time::now_rfc3339(),
            origin_backend: self.res.backend_type,
            owner_uid: owner,
            parent,
            others_search,
            extra: Default::default(),
        };
        self.store.add_workspace(entry)
    }
}

/// A new index entry.
pub fn new_entry(
    created: SystemTime,
    message: Option<String>,
    metadata: Option<serde_json::Value>,
    pinned: bool,
) -> SnapshotEntry {
    let mut e = SnapshotEntry::new(crate::time::Timestamp::nanos(created));
    e.set_message(message);
    e.set_metadata(metadata);
    e.pinned = pinned;
    e
}

/// fsync a directory (best effort; logged on failure).
pub fn fsync_dir(dir: &Path) {
    if let Err(e) = crate::state::fsync_dir(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "fsync of directory failed");
    }
}
