//! Snapshot operations on one workspace: checkpoint, rollback, list, delete, cleanup and diff
//! (SPEC §5.2, §5.3, §5.5), each crash-safe where it has more than one step (§5.6).
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

pub mod procs;
#[cfg(test)]
mod tests;

use crate::api::{Addressed, Caller, CheckpointArgs, Progress};
use crate::config::Keep;
use crate::diff::DiffEntry;
use crate::engine::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::execute::{exchange, fsync_dir, new_entry};
use crate::fault;
use crate::finding::FindingKind;
use crate::ids::{self, check_snapshot_id};
use crate::model::{Observed, PathState};
use crate::model::{PendingKind, RollbackPhase, StateProblem};
use crate::observe::{observe_host, path_state};
use crate::plan::{retention_deletions, RetentionDelete};
use crate::resolve::{resolve_backend, storage_mounted, Resolution};
use crate::state::{SnapshotEntry, WorkspaceEntry};
use crate::store::new_op_id;
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

/// Result of `checkpoint` (stable JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointResult {
    /// Workspace ID.
    pub ws_id: String,
    /// Workspace path.
    pub workspace: PathBuf,
    /// Snapshot ID (given or generated).
    pub snapshot: String,
    /// Creation time recorded in the index (RFC 3339, UTC).
    pub created_at: String,
    /// Whether the snapshot is pinned.
    pub pinned: bool,
    /// The workspace had no entries (the snapshot was still taken).
    pub empty: bool,
    /// This call turned a plain directory into the workspace first.
    pub initialized: bool,
}

/// A checkpoint validated under the engine lock, waiting for its snapshot ioctl.
#[derive(Debug, Clone)]
pub struct PreparedCheckpoint {
    /// Workspace ID.
    pub ws_id: String,
    /// Workspace path.
    pub workspace: PathBuf,
    /// Snapshot ID.
    pub id: String,
    /// The workspace subvolume (snapshot source).
    pub subvol: PathBuf,
    /// The snapshot to create.
    pub dest: PathBuf,
    created: SystemTime,
    message: Option<String>,
    metadata: Option<serde_json::Value>,
    pin: bool,
    empty: bool,
    initialized: bool,
}

/// The snapshot ioctl of a prepared checkpoint (no engine state touched: safe to run without
/// the engine lock, under the workspace's own lock).
pub fn take_checkpoint_snapshot(sys: &dyn crate::sys::Sys, p: &PreparedCheckpoint) -> Result<()> {
    sys.snapshot(&p.subvol, &p.dest, true).map_err(|e| {
        if e.errno() == Some(libc::EEXIST) {
            Error::new(
                ErrorCode::SnapshotAlreadyExists,
                format!(
                    "workspace {} already has a snapshot {} ({} exists)",
                    p.ws_id,
                    p.id,
                    p.dest.display()
                ),
            )
            .hint("choose another ID; `ws-ckpt apply` records snapshots found on disk")
        } else {
            Error::from(e)
        }
    })
}

/// Result of `rollback` (stable JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RollbackResult {
    /// Workspace ID.
    pub ws_id: String,
    /// Workspace path.
    pub workspace: PathBuf,
    /// The snapshot the workspace now equals.
    pub snapshot: String,
}

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
    pub created_at: String,
    /// Message.
    pub message: Option<String>,
    /// Free-form JSON metadata.
    pub metadata: Option<serde_json::Value>,
    /// Never deleted by retention or cleanup.
    pub pinned: bool,
    /// Its subvolume is gone (shown as MISSING).
    pub missing: bool,
}

/// Result of `delete` (stable JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeleteResult {
    /// Workspace ID.
    pub ws_id: String,
    /// Deleted snapshot IDs.
    pub deleted: Vec<String>,
}

/// Result of `cleanup` (stable JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CleanupResult {
    /// Workspace ID.
    pub ws_id: String,
    /// The policy applied (`20` or `30d`).
    pub keep: String,
    /// Deleted snapshots and why.
    pub deleted: Vec<RetentionDelete>,
    /// Free space gained on the filesystem (after the btrfs cleaner ran; bounded wait).
    pub freed_bytes: u64,
}

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
    }
}

fn dir_is_empty(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false)
}

fn sort_newest_last(mut v: Vec<ListSnapshot>) -> Vec<ListSnapshot> {
    // Stable: entries with equal or unparsable times keep their recorded order.
    v.sort_by_key(|s| crate::time::parse_rfc3339(&s.created_at));
    v
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
        if let Some(StateProblem::NewerVersion { version, path }) = &self.store.p.problem {
            return Err(Error::new(
                ErrorCode::Blocked,
                format!("{} was written by a newer ws-ckpt (state version {version}); nothing may change", path.display()),
            )
            .hint("upgrade ws-ckpt, or restore a state.json written by this version"));
        }
        let obs = observe_host(self.sys(), &self.config);
        if let Some(e) = &obs.storage_error {
            return Err(Error::new(ErrorCode::Io, e.clone()));
        }
        let res = resolve_backend(&self.config, &self.store.p, &obs);
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
        Ok(res)
    }

    fn snapshot_count(&self, ws_id: &str) -> usize {
        self.store
            .p
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
        let st = path_state(path);
        let ok = match &st {
            PathState::Symlink { target, .. } => {
                *target == subvol
                    || matches!((std::fs::canonicalize(path), std::fs::canonicalize(&subvol)), (Ok(a), Ok(b)) if a == b)
            }
            _ => false,
        };
        if ok {
            return Ok(subvol);
        }
        let hint = match st {
            PathState::Missing => format!(
                "run `ws-ckpt apply` to recreate the link {} -> {}; the data is safe in {}",
                path.display(),
                subvol.display(),
                subvol.display()
            ),
            _ => format!(
                "move {} aside (e.g. `mv {} {}.moved`), then run `ws-ckpt apply` to restore the link; the workspace data is safe in {}",
                path.display(),
                path.display(),
                path.display(),
                subvol.display()
            ),
        };
        Err(Error::new(
            ErrorCode::WorkspaceDetached,
            format!(
                "workspace {} is detached: {} is now {}, not the symlink to {}",
                ws.ws_id,
                path.display(),
                describe_path(path, &st),
                subvol.display()
            ),
        )
        .hint(hint))
    }

    fn index_entry(&self, ws: &WorkspaceEntry, id: &str) -> Result<SnapshotEntry> {
        self.store
            .p
            .indexes
            .get(&ws.ws_id)
            .and_then(|i| i.snapshots.get(id))
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::SnapshotNotFound,
                    format!(
                        "workspace {} ({}) has no snapshot {id}",
                        ws.ws_id,
                        ws.workspace_path.display()
                    ),
                )
                .hint(format!(
                    "`ws-ckpt list -w {}` shows its snapshots",
                    ws.ws_id
                ))
            })
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
    fn usable_snapshot(
        &mut self,
        ws: &WorkspaceEntry,
        res: &Resolution,
        id: &str,
    ) -> Result<PathBuf> {
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
        self.store.p.pending().iter().any(|o| {
            matches!(&o.kind, PendingKind::DeleteSnapshots { ws_id: w, snapshots } if w == ws_id && snapshots.iter().any(|s| s == id))
        })
    }

    /// `ws-ckpt checkpoint` (SPEC §5.2) of the recorded workspace `ws`: a read-only snapshot
    /// by ioctl, then one index-journal append. Equivalent to [`Engine::checkpoint_prepare`] +
    /// [`take_checkpoint_snapshot`] + [`Engine::checkpoint_commit`]; the request path runs the
    /// middle step without holding the engine, so that checkpoints of different workspaces
    /// proceed in parallel in the daemon.
    pub fn checkpoint(
        &mut self,
        ws: &WorkspaceEntry,
        args: CheckpointArgs,
    ) -> Result<CheckpointResult> {
        let prepared = self.checkpoint_prepare(ws, args, false)?;
        take_checkpoint_snapshot(self.sys(), &prepared)?;
        self.checkpoint_commit(prepared)
    }

    /// `ws-ckpt checkpoint` of `path`, which is not a recorded workspace: a directory is
    /// initialized first (SPEC §5.2); anything else fails (`not_found` when it is neither
    /// missing nor a directory).
    pub fn checkpoint_unrecorded(
        &mut self,
        path: &Path,
        not_found: Error,
        args: CheckpointArgs,
        progress: Progress<'_>,
    ) -> Result<CheckpointResult> {
        match path_state(path) {
            PathState::Dir { .. } => {}
            PathState::Missing => {
                return Err(Error::new(
                    ErrorCode::InvalidPath,
                    format!("{} does not exist", path.display()),
                )
                .hint("give the path of an existing directory or workspace, or a ws_id from `ws-ckpt list`"))
            }
            _ => return Err(not_found),
        }
        let report = self.init(path, progress)?;
        let ws = self.resolve_workspace(&report.ws_id)?;
        let prepared = self.checkpoint_prepare(&ws, args, report.changed)?;
        take_checkpoint_snapshot(self.sys(), &prepared)?;
        self.checkpoint_commit(prepared)
    }

    /// Everything a checkpoint of `ws` does before its snapshot ioctl: check storage and
    /// attachment, validate or generate the ID, create the workspace's snapshot directory.
    /// `initialized`: this request made `ws` a workspace first (reported in the result).
    pub fn checkpoint_prepare(
        &mut self,
        ws: &WorkspaceEntry,
        args: CheckpointArgs,
        initialized: bool,
    ) -> Result<PreparedCheckpoint> {
        tracing::debug!(ws_id = %ws.ws_id, "checkpoint");
        if let Some(id) = &args.snapshot {
            check_snapshot_id(id)?;
        }
        let res = self.storage_for(Some(ws))?;
        let subvol = self.attached_subvol(ws, &res)?;
        let ws_id = ws.ws_id.clone();
        let index = self.store.p.indexes.get(&ws_id);
        let taken = |id: &str| {
            index.is_some_and(|i| i.snapshots.contains_key(id))
                || std::fs::symlink_metadata(res.snapshot_path(&ws_id, id)).is_ok()
        };
        let now = SystemTime::now();
        let id = match args.snapshot {
            Some(id) => {
                if taken(&id) {
                    return Err(Error::new(
                        ErrorCode::SnapshotAlreadyExists,
                        format!("workspace {ws_id} already has a snapshot {id}"),
                    )
                    .hint("choose another ID, or omit -s to get a generated one"));
                }
                id
            }
            None => ids::generate_snapshot_id(now, taken),
        };
        let snap_dir = res.snap_dir(&ws_id);
        std::fs::create_dir_all(&snap_dir)
            .map_err(|e| Error::io("create directory", &snap_dir, e))?;
        let dest = snap_dir.join(&id);
        Ok(PreparedCheckpoint {
            empty: dir_is_empty(&subvol),
            ws_id,
            workspace: ws.workspace_path.clone(),
            id,
            subvol,
            dest,
            created: now,
            message: args.message,
            metadata: args.metadata,
            pin: args.pin,
            initialized,
        })
    }

    /// Record a checkpoint whose snapshot exists. Re-checks that the workspace is still
    /// recorded (it may have been released meanwhile; then the stray snapshot is removed).
    pub fn checkpoint_commit(&mut self, p: PreparedCheckpoint) -> Result<CheckpointResult> {
        let still = self
            .store
            .p
            .state
            .as_ref()
            .and_then(|s| s.workspace(&p.ws_id))
            .is_some_and(|w| w.workspace_path == p.workspace);
        if !still {
            let _ = self.sys().delete_subvolume_if_present(&p.dest);
            return Err(Error::new(
                ErrorCode::WorkspaceNotFound,
                format!(
                    "workspace {} ({}) was released while the checkpoint was taken",
                    p.ws_id,
                    p.workspace.display()
                ),
            ));
        }
        let entry = new_entry(p.created, p.message, p.metadata, p.pin);
        let created_at = entry.created_at.clone();
        self.store.put_snapshot(&p.ws_id, &p.id, entry)?;
        tracing::debug!(ws_id = p.ws_id, snapshot = %p.id, empty = p.empty, "checkpoint recorded");
        Ok(CheckpointResult {
            ws_id: p.ws_id,
            workspace: p.workspace,
            snapshot: p.id,
            created_at,
            pinned: p.pin,
            empty: p.empty,
            initialized: p.initialized,
        })
    }

    /// `ws-ckpt rollback` (SPEC §5.3): a writable snapshot of the target beside the workspace
    /// subvolume, an atomic exchange of the two names, then deletion of the old state. The
    /// phase is recorded first so a crash at any point is finished or reverted by the next pass.
    pub fn rollback(
        &mut self,
        ws: &WorkspaceEntry,
        snapshot: &str,
        force: bool,
    ) -> Result<RollbackResult> {
        check_snapshot_id(snapshot)?;
        let ws = ws.clone();
        let res = self.storage_for(Some(&ws))?;
        let subvol = self.attached_subvol(&ws, &res)?;
        let target = self.usable_snapshot(&ws, &res, snapshot)?;
        let ws_id = ws.ws_id.clone();
        if let Some(op) = self.store.p.pending().into_iter().find(|o| {
            o.kind.ws_id() == Some(ws_id.as_str())
                && matches!(
                    o.kind,
                    PendingKind::Init { .. }
                        | PendingKind::Release { .. }
                        | PendingKind::Rollback { .. }
                )
        }) {
            return Err(Error::new(
                ErrorCode::Busy,
                format!(
                    "workspace {ws_id} has an interrupted {} (operation {}) awaiting recovery",
                    op.kind.name(),
                    op.op_id
                ),
            )
            .hint("run `ws-ckpt apply` to finish or revert it, then retry"));
        }
        if !force {
            let dev = std::fs::metadata(&subvol)
                .map_err(|e| Error::io("stat", &subvol, e))?
                .dev();
            let me = std::process::id() as i32;
            let users = procs::processes_with_cwd_on(Path::new("/proc"), dev, &[me]);
            if !users.is_empty() {
                return Err(Error::new(
                    ErrorCode::Busy,
                    format!(
                        "workspace {ws_id} ({}) is in use: processes with their working directory inside it: {}",
                        ws.workspace_path.display(),
                        procs::describe(&users)
                    ),
                )
                .hint("stop them or change their directory, or pass --force (they keep seeing the old state until they re-enter the workspace)"));
            }
        }
        let tmp = res
            .data_root
            .join(format!(".{ws_id}.rollback-{}", new_op_id()));
        let mut kind = PendingKind::Rollback {
            ws_id: ws_id.clone(),
            snapshot: snapshot.to_string(),
            subvol: subvol.clone(),
            tmp: tmp.clone(),
            phase: RollbackPhase::Snapshotting,
        };
        let op = self.store.begin(kind.clone())?;
        fault::point("rollback:after-begin");
        if let Err(e) = self.sys().snapshot(&target, &tmp, false) {
            self.abandon_rollback(&op, &tmp);
            return Err(Error::new(
                ErrorCode::OperationFailed,
                format!("rollback of workspace {ws_id} to {snapshot} failed before changing anything: {e}"),
            )
            .hint("the workspace is unchanged; check free space (`ws-ckpt status`) and retry"));
        }
        fault::point("rollback:after-snapshot");
        if let PendingKind::Rollback { phase, .. } = &mut kind {
            *phase = RollbackPhase::Ready;
        }
        if let Err(e) = self.store.update(&op, kind) {
            self.abandon_rollback(&op, &tmp);
            return Err(e);
        }
        if let Err(e) = exchange(&tmp, &subvol) {
            self.abandon_rollback(&op, &tmp);
            return Err(Error::new(
                ErrorCode::OperationFailed,
                format!("rollback of workspace {ws_id} to {snapshot} failed; the workspace is unchanged: {}", e.message),
            ));
        }
        fsync_dir(&res.data_root);
        fault::point("rollback:after-exchange");
        // `tmp` now holds the previous state of the workspace.
        if let Err(e) = self.sys().delete_subvolume(&tmp) {
            return Err(Error::new(
                ErrorCode::OperationFailed,
                format!(
                    "workspace {ws_id} was rolled back to {snapshot}, but its previous state at {} could not be deleted: {e}",
                    tmp.display()
                ),
            )
            .hint("move any nested subvolume out of it, then run `ws-ckpt apply` to finish"));
        }
        fault::point("rollback:after-delete-old");
        self.store.end(&op)?;
        Ok(RollbackResult {
            ws_id,
            workspace: ws.workspace_path,
            snapshot: snapshot.to_string(),
        })
    }

    /// Undo a rollback that failed before the exchange: drop the copy, forget the operation.
    fn abandon_rollback(&mut self, op: &str, tmp: &Path) {
        let cleaned = self.sys().delete_subvolume_if_present(tmp);
        match cleaned {
            // Keep the record when the copy could not be removed: the next pass retries.
            Err(e) => {
                tracing::warn!(tmp = %tmp.display(), error = %e, "could not remove the unfinished rollback copy")
            }
            Ok(_) => {
                if let Err(e) = self.store.end(op) {
                    tracing::warn!(op, error = %e, "could not forget the failed rollback");
                }
            }
        }
    }

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
                let all: Vec<WorkspaceEntry> = self
                    .store
                    .p
                    .state
                    .iter()
                    .flat_map(|s| s.workspaces.iter())
                    .filter(|w| crate::auth::may_use(&self.config, caller, w))
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
            let snapshots = self
                .store
                .p
                .indexes
                .get(&w.ws_id)
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

    /// `ws-ckpt delete` (SPEC §5.5): `-w` may be omitted when the ID is recorded in exactly one
    /// workspace; pinned or MISSING snapshots need `force`.
    pub fn delete(&mut self, ws: &Addressed, snapshot: &str, force: bool) -> Result<DeleteResult> {
        check_snapshot_id(snapshot)?;
        let res = self.storage_for(Some(&ws.entry))?;
        self.check_path_addressed(ws, &res)?;
        let ws = ws.entry.clone();
        let entry = self.index_entry(&ws, snapshot)?;
        let path = res.snapshot_path(&ws.ws_id, snapshot);
        if entry.pinned && !force {
            return Err(Error::new(
                ErrorCode::SnapshotPinned,
                format!("snapshot {snapshot} of workspace {} is pinned", ws.ws_id),
            )
            .hint(format!(
                "`ws-ckpt delete -w {} -s {snapshot} --force` deletes it anyway",
                ws.ws_id
            )));
        }
        if !force && (entry.missing || !self.sys().is_subvolume(&path)?) {
            if !entry.missing {
                let mut e = entry;
                e.missing = true;
                self.store.put_snapshot(&ws.ws_id, snapshot, e)?;
            }
            return Err(Self::missing_error(&ws, snapshot, &path));
        }
        let ids = vec![snapshot.to_string()];
        self.delete_recorded(&res, &ws.ws_id, &ids)?;
        Ok(DeleteResult {
            ws_id: ws.ws_id,
            deleted: ids,
        })
    }

    /// Every recorded workspace whose index records `snapshot` (a delete without `-w`).
    pub fn snapshot_holders(&self, snapshot: &str) -> Vec<WorkspaceEntry> {
        self.store
            .p
            .state
            .iter()
            .flat_map(|s| s.workspaces.iter())
            .filter(|w| {
                self.store
                    .p
                    .indexes
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
            .filter(|w| crate::auth::may_use(&self.config, caller, w))
            .cloned()
            .collect();
        match holders.len() {
            0 => Err(Error::new(
                ErrorCode::SnapshotNotFound,
                format!("no workspace has a snapshot {snapshot}"),
            )
            .hint("`ws-ckpt list` shows every snapshot")),
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
                        "snapshot {snapshot} exists in several workspaces: {}",
                        names.join(", ")
                    ),
                )
                .hint("name the workspace with -w"))
            }
        }
    }

    /// Delete recorded snapshots crash-safely: the list is recorded first, then each subvolume
    /// is deleted and then its entry; a restart finishes the list (the executor's recovery of
    /// `PendingKind::DeleteSnapshots`). Finally commits and waits (bounded) for the cleaner.
    fn delete_recorded(&mut self, res: &Resolution, ws_id: &str, ids: &[String]) -> Result<()> {
        self.executor(res, &mut |_, _| {})
            .delete_snapshots(ws_id, ids)
    }

    /// `ws-ckpt cleanup` (SPEC §5.5): apply `keep` (or the workspace's retention policy) now.
    /// Never deletes pinned, MISSING or the newest snapshot.
    pub fn cleanup(&mut self, addressed: &Addressed, keep: Option<&str>) -> Result<CleanupResult> {
        let ws = addressed.entry.clone();
        let keep = match keep {
            Some(k) => Keep::from_str(k).map_err(|e| {
                Error::new(
                    ErrorCode::InvalidArgument,
                    format!("invalid --keep {k:?}: {}", e.0),
                )
                .hint("use a count such as 20 or an age such as 30d")
            })?,
            None => self
                .config
                .workspace(&ws.workspace_path)
                .map(|d| self.config.effective_keep(d))
                .unwrap_or(self.config.retention.keep),
        };
        let res = self.storage_for(Some(&ws))?;
        self.check_path_addressed(addressed, &res)?;
        let deleted = self
            .store
            .p
            .indexes
            .get(&ws.ws_id)
            .map(|i| retention_deletions(i, keep, SystemTime::now()))
            .unwrap_or_default();
        fault::point("cleanup:after-plan");
        let before = self.sys().fs_usage(&res.mount).ok();
        let ids: Vec<String> = deleted.iter().map(|d| d.id.clone()).collect();
        self.delete_recorded(&res, &ws.ws_id, &ids)?;
        let after = self.sys().fs_usage(&res.mount).ok();
        let freed_bytes = match (before, after) {
            (Some(b), Some(a)) => a.free.saturating_sub(b.free),
            _ => 0,
        };
        Ok(CleanupResult {
            ws_id: ws.ws_id,
            keep: keep.to_string(),
            deleted,
            freed_bytes,
        })
    }

    /// `ws-ckpt diff` (SPEC §5.5): entries between two snapshots, or between a snapshot and
    /// the live workspace (through a temporary read-only snapshot that a crash cannot strand:
    /// it is recorded as a pending deletion first).
    pub fn diff(
        &mut self,
        addressed: &Addressed,
        from: &str,
        to: Option<&str>,
    ) -> Result<DiffResult> {
        check_snapshot_id(from)?;
        if let Some(t) = to {
            check_snapshot_id(t)?;
        }
        let ws = addressed.entry.clone();
        let res = self.storage_for(Some(&ws))?;
        self.check_path_addressed(addressed, &res)?;
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
                crate::diff::diff_subvolumes(&from_path, &to_path).map_err(diff_err)?
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
                        crate::diff::diff_subvolumes(&from_path, &tmp).map_err(diff_err)
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
