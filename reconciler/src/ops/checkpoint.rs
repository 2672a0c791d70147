//! `checkpoint` (SPEC §5.2), under the workspace's lock: prepare, one snapshot ioctl, record
//! (one index-journal append, the store's only critical section). A plain directory is
//! initialized first.

use super::dir_is_empty;
use crate::api::{CheckpointArgs, Progress};
use crate::engine::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::execute::new_entry;
use crate::fault;
use crate::ids::{self, check_snapshot_id};
use crate::model::PathState;
use crate::observe::path_state;
use crate::state::CheckpointNote;
use crate::state::WorkspaceEntry;
use serde::Serialize;
use std::path::{Path, PathBuf};
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

/// A checkpoint validated under its workspace's lock, waiting for its snapshot ioctl.
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

impl PreparedCheckpoint {
    /// The directory the snapshot goes in (the workspace's snapshot directory).
    fn snap_dir(&self) -> &Path {
        self.dest.parent().unwrap_or(&self.dest)
    }
}

/// The snapshot ioctl of a prepared checkpoint (no engine state touched; runs under the
/// workspace's own lock only).
pub fn take_checkpoint_snapshot(sys: &dyn crate::sys::Sys, p: &PreparedCheckpoint) -> Result<()> {
    sys.snapshot(&p.subvol, &p.dest, true).map_err(|e| {
        if e.errno() == Some(libc::EEXIST) {
            Error::snapshot_exists(&p.ws_id, &p.id)
                .hint(format!("choose another ID; {} exists on disk (`ws-ckpt apply` records snapshots found there)", p.dest.display()))
        } else {
            Error::from(e)
        }
    })
}

/// Largest checkpoint message, in bytes of UTF-8 (SPEC §7.3).
pub(crate) const MAX_MESSAGE_BYTES: usize = 4096;
/// Largest checkpoint metadata, in bytes of compact JSON (SPEC §7.3).
pub(crate) const MAX_METADATA_BYTES: usize = 65536;

/// Refuse a message or metadata over its limit, naming the limit.
pub(crate) fn check_limits(args: &CheckpointArgs) -> Result<()> {
    if let Some(m) = &args.message {
        if m.len() > MAX_MESSAGE_BYTES {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "the checkpoint message is {} bytes; the limit is {MAX_MESSAGE_BYTES} bytes (4 KiB)",
                    m.len()
                ),
            )
            .hint("shorten the message; put longer text in a file inside the workspace"));
        }
    }
    if let Some(meta) = &args.metadata {
        let len = serde_json::to_string(meta).map_or(usize::MAX, |t| t.len());
        if len > MAX_METADATA_BYTES {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "the checkpoint metadata is {len} bytes of JSON; the limit is {MAX_METADATA_BYTES} bytes (64 KiB)"
                ),
            )
            .hint("keep metadata small (IDs, labels); put large data in a file inside the workspace"));
        }
    }
    Ok(())
}

impl Engine {
    /// `ws-ckpt checkpoint` (SPEC §5.2) of the recorded workspace `ws`, holding its lock: a
    /// read-only snapshot by ioctl, then one index-journal append. Checkpoints of different
    /// workspaces proceed in parallel.
    pub fn checkpoint(
        &self,
        ws: &WorkspaceEntry,
        args: CheckpointArgs,
    ) -> Result<CheckpointResult> {
        self.checkpoint_of(ws, args, false)
    }

    fn checkpoint_of(
        &self,
        ws: &WorkspaceEntry,
        args: CheckpointArgs,
        initialized: bool,
    ) -> Result<CheckpointResult> {
        self.in_workspace(&ws.ws_id, || {
            let prepared = self.checkpoint_prepare(ws, args, initialized)?;
            let entry = new_entry(
                prepared.created,
                prepared.message.clone(),
                prepared.metadata.clone(),
                prepared.pin,
            );
            // The record goes on the snapshot's directory first, so that it is committed by
            // the snapshot's own btrfs transaction or an earlier one; then the journal line's
            // fdatasync can run while the ioctl does: whichever of the two a power cut keeps,
            // the checkpoint is found with its message, metadata and pin (issues 9 and 10).
            // Not on the workspace root: a source changed in the snapshot's transaction makes
            // the ioctl write its tree too (about a millisecond more on a loop device).
            let carried = self.carry_record(&prepared, &entry);
            let unrecorded = |e: Error| self.not_recorded(&prepared, e);
            let line =
                match self
                    .store
                    .record_checkpoint_deferred(&prepared.ws_id, &prepared.id, &entry)
                {
                    Ok(line) => line,
                    Err(e) => {
                        if carried {
                            self.drop_record(&prepared);
                        }
                        return Err(unrecorded(e));
                    }
                };
            // The daemon answers as soon as the ioctl has committed the record with the
            // snapshot; the line is made durable, and the record removed, by its settle thread
            // (crate::settle), unless too many of this workspace's wait already.
            let settle_later = carried
                && self.settles_later()
                && self.unsettled.count(&prepared.ws_id) < crate::settle::MAX_UNSETTLED;
            let (snapshot, synced) = if settle_later {
                drop(line);
                fault::point("checkpoint:after-record");
                (take_checkpoint_snapshot(self.sys(), &prepared), Ok(()))
            } else if carried {
                std::thread::scope(|s| {
                    let sync = s.spawn(|| line.sync());
                    fault::point("checkpoint:after-record");
                    let snapshot = take_checkpoint_snapshot(self.sys(), &prepared);
                    let synced = sync
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    (snapshot, synced)
                })
            } else {
                // Intent before effect, one after the other.
                line.sync().map_err(|e| unrecorded(e.into()))?;
                fault::point("checkpoint:after-record");
                (take_checkpoint_snapshot(self.sys(), &prepared), Ok(()))
            };
            if let Err(e) = snapshot {
                self.store
                    .withdraw_checkpoint(&prepared.ws_id, &prepared.id);
                if carried {
                    self.drop_record(&prepared);
                }
                return Err(e);
            }
            if let Err(e) = synced {
                return self.checkpoint_unsynced(prepared, entry, e.into());
            }
            fault::point("checkpoint:after-snapshot");
            if settle_later {
                self.unsettled.push(
                    &prepared.ws_id,
                    crate::settle::Waiting {
                        dir: prepared.snap_dir().to_path_buf(),
                        id: prepared.id.clone(),
                    },
                );
            } else if carried {
                // The journal line is durable: it is the record from now on.
                self.drop_record(&prepared);
            }
            self.checkpoint_commit(prepared, entry)
        })
    }

    /// Put the checkpoint's record on its snapshot's directory until its journal line is
    /// durable. False when it cannot (too large for an xattr on this filesystem, or refused):
    /// the journal line is then made durable before the snapshot instead.
    fn carry_record(&self, p: &PreparedCheckpoint, entry: &crate::state::SnapshotEntry) -> bool {
        let note = CheckpointNote {
            ws_id: p.ws_id.clone(),
            id: p.id.clone(),
            entry: entry.clone(),
        };
        let Ok(bytes) = serde_json::to_vec(&note) else {
            return false;
        };
        if bytes.len() > crate::state::record::MAX_NOTE_BYTES {
            return false;
        }
        match self
            .sys()
            .set_checkpoint_record(p.snap_dir(), &p.id, &bytes)
        {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(ws_id = %p.ws_id, error = %e, "the checkpoint's record cannot go on its snapshot directory; recording it first");
                false
            }
        }
    }

    /// Remove the record [`Engine::carry_record`] put, now that the journal holds it or the
    /// checkpoint was not taken. Left behind (this fails, or the process dies first), it is
    /// only ever read for a snapshot of its own ID found without an index entry.
    fn drop_record(&self, p: &PreparedCheckpoint) {
        self.remove_record(&p.ws_id, p.snap_dir(), &p.id);
    }

    /// Remove the record of snapshot `id` from snapshot directory `dir`; true when one was
    /// removed or none was there. A missing directory (the workspace was released
    /// meanwhile) leaves nothing to remove; any other failure is logged: a record left
    /// behind is harmless.
    fn remove_record(&self, ws_id: &str, dir: &Path, id: &str) -> bool {
        match self.sys().remove_checkpoint_record(dir, id) {
            Ok(()) => true,
            Err(e) if e.errno() == Some(libc::ENOENT) => false,
            Err(e) => {
                tracing::warn!(ws_id, snapshot = id, error = %e, "cannot remove a checkpoint's record from its snapshot directory; it is harmless");
                false
            }
        }
    }

    /// Settle the checkpoints answered before their journal line was durable
    /// ([`crate::settle`]): for each workspace, under its lock, one `fdatasync` of its index
    /// journal, then the removal of their records. The lock keeps a later checkpoint that
    /// reuses a snapshot ID from having its record (same name) removed before its own line
    /// is durable. A workspace whose journal cannot be made durable keeps its records (they
    /// are the checkpoints' durable copy) and is retried later. Returns how many records were
    /// removed.
    pub fn settle_records(&self) -> usize {
        self.settle(true)
    }

    /// [`Engine::settle_records`]; unless `wait_for_busy`, a workspace whose lock is held
    /// (an init, a release, a cleanup on it) is left for a later round while it has fewer
    /// than [`crate::settle::SETTLE_AT_ONCE`] checkpoints waiting.
    fn settle(&self, wait_for_busy: bool) -> usize {
        let mut removed = 0;
        for (ws_id, waiting) in self.unsettled.take() {
            if !wait_for_busy
                && waiting.len() < crate::settle::SETTLE_AT_ONCE
                && self.workspace_busy(&ws_id)
            {
                self.unsettled.put_back(&ws_id, waiting);
                continue;
            }
            fault::point("settle:before-sync");
            removed += self.in_workspace(&ws_id, || self.settle_workspace(&ws_id, waiting));
        }
        removed
    }

    fn settle_workspace(&self, ws_id: &str, waiting: Vec<crate::settle::Waiting>) -> usize {
        if let Err(e) = self.store.sync_index_journal(ws_id) {
            tracing::warn!(ws_id, checkpoints = waiting.len(), error = %e.message, "cannot make the index journal durable; the checkpoints keep their records and are settled later");
            self.unsettled.put_back(ws_id, waiting);
            return 0;
        }
        waiting
            .iter()
            .filter(|w| self.remove_record(ws_id, &w.dir, &w.id))
            .count()
    }

    /// True when checkpoints answered before their journal line was durable wait to be
    /// settled.
    pub fn has_unsettled_records(&self) -> bool {
        !self.unsettled.is_empty()
    }

    /// The queue of answered checkpoints, for the daemon's settle thread to wait on without
    /// holding the engine (a stop waits until nothing else holds it).
    pub(crate) fn unsettled_queue(&self) -> std::sync::Arc<crate::settle::Unsettled> {
        std::sync::Arc::clone(&self.unsettled)
    }

    /// One round of the daemon's settle thread: [`Engine::settle_records`], leaving busy
    /// workspaces with few checkpoints waiting for a later round.
    pub(crate) fn settle_due(&self) -> usize {
        self.settle(false)
    }

    /// Remove the checkpoint records nothing needs any more: those of snapshots the index
    /// lists, and those of snapshots that do not exist (their checkpoint was not taken), once
    /// the index journal is durable. One is left behind when its process dies between the
    /// journal line's `fdatasync` and the record's removal, or a daemon before it settled its
    /// answered checkpoints. The record of a snapshot found without an index entry is kept: the
    /// next pass adopts that snapshot with it. The daemon runs this once, after its start-up
    /// pass (no checkpoint is in flight then: an in-process command holds the daemon lock).
    /// Nothing is done while the storage is not available. Returns how many were removed.
    pub fn sweep_checkpoint_records(&self) -> usize {
        // One resolution for every workspace (it also settles interrupted intents first).
        let Ok(res) = self.storage_for(None) else {
            return 0;
        };
        let workspaces: Vec<WorkspaceEntry> = self
            .store
            .read()
            .state
            .as_ref()
            .map(|s| s.workspaces.clone())
            .unwrap_or_default();
        workspaces
            .iter()
            .map(|ws| self.in_workspace(&ws.ws_id, || self.sweep_records_of(ws, &res)))
            .sum()
    }

    fn sweep_records_of(&self, ws: &WorkspaceEntry, res: &crate::resolve::Resolution) -> usize {
        let dir = res.snap_dir(&ws.ws_id);
        let records = match self.sys().checkpoint_records(&dir) {
            Ok(records) => records,
            Err(e) => {
                tracing::debug!(ws_id = %ws.ws_id, error = %e, "cannot list the checkpoint records of a snapshot directory");
                return 0;
            }
        };
        if records.is_empty() {
            return 0;
        }
        // The lines of listed snapshots may not be durable yet (a daemon killed before it
        // settled them, and restarted without a reboot): they are made so before any
        // record goes.
        if let Err(e) = self.store.sync_index_journal(&ws.ws_id) {
            tracing::warn!(ws_id = %ws.ws_id, error = %e.message, "cannot make the index journal durable; the checkpoint records stay");
            return 0;
        }
        let index = self.store.read().indexes.get(&ws.ws_id).cloned();
        let mut removed = 0;
        for bytes in records {
            // Anything that is not one of this workspace's records is left as it is.
            let Ok(note) = serde_json::from_slice::<CheckpointNote>(&bytes) else {
                continue;
            };
            if note.ws_id != ws.ws_id {
                continue;
            }
            let listed = index
                .as_ref()
                .is_some_and(|i| i.snapshots.contains_key(&note.id));
            // When unsure whether the snapshot exists, keep its record.
            let exists = || {
                self.sys()
                    .is_subvolume(&res.snapshot_path(&ws.ws_id, &note.id))
                    .unwrap_or(true)
            };
            if !listed && exists() {
                continue;
            }
            if self.remove_record(&ws.ws_id, &dir, &note.id) {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(ws_id = %ws.ws_id, removed, "removed the checkpoint records interrupted checkpoints left on their snapshot directory");
        }
        removed
    }

    /// The error of a checkpoint that was not taken because its record could not be written.
    fn not_recorded(&self, p: &PreparedCheckpoint, e: Error) -> Error {
        let dir = self.state_dir();
        Error::new(
            e.code,
            format!(
                "checkpoint {} of workspace {} was not taken: it could not be recorded: {}",
                p.id, p.ws_id, e.message
            ),
        )
        .hint(format!(
            "free space in {} (`df {}`) and retry; nothing was changed",
            dir.display(),
            dir.display()
        ))
    }

    /// The snapshot exists but the journal line could not be made durable: a failed
    /// checkpoint leaves no snapshot (issue 10), so it is deleted and the record withdrawn.
    /// When the deletion fails too, the snapshot stays, with its record on its directory: it
    /// is what any later process finds, so the checkpoint is reported taken.
    fn checkpoint_unsynced(
        &self,
        p: PreparedCheckpoint,
        entry: crate::state::SnapshotEntry,
        e: Error,
    ) -> Result<CheckpointResult> {
        match self
            .sys()
            .delete_subvolume(&p.dest)
            .and_then(|()| self.sys().commit(&p.dest))
        {
            Ok(()) => {
                self.store.withdraw_checkpoint(&p.ws_id, &p.id);
                self.drop_record(&p);
                Err(self.not_recorded(&p, e))
            }
            Err(d) => {
                tracing::warn!(ws_id = %p.ws_id, snapshot = %p.id, error = %e, delete_error = %d, "the journal line of a checkpoint failed and its snapshot could not be deleted; kept, with its record on its snapshot directory");
                self.checkpoint_commit(p, entry)
            }
        }
    }

    /// `ws-ckpt checkpoint` of `path`, which is not a recorded workspace: a directory is
    /// initialized first (SPEC §5.2); anything else fails (`not_found` when it is neither
    /// missing nor a directory).
    pub fn checkpoint_unrecorded(
        &self,
        path: &Path,
        not_found: Error,
        args: CheckpointArgs,
        caller: &crate::api::Caller,
        progress: Progress<'_>,
    ) -> Result<CheckpointResult> {
        check_limits(&args)?;
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
        let report = self.init(path, false, caller, progress)?;
        let ws = self.resolve_workspace(&report.ws_id)?;
        self.checkpoint_of(&ws, args, report.changed)
    }

    /// Everything a checkpoint of `ws` does before its snapshot ioctl: check storage and
    /// attachment, validate or generate the ID, create the workspace's snapshot directory.
    /// `initialized`: this request made `ws` a workspace first (reported in the result).
    fn checkpoint_prepare(
        &self,
        ws: &WorkspaceEntry,
        args: CheckpointArgs,
        initialized: bool,
    ) -> Result<PreparedCheckpoint> {
        tracing::debug!(ws_id = %ws.ws_id, "checkpoint");
        if let Some(id) = &args.snapshot {
            check_snapshot_id(id)?;
        }
        check_limits(&args)?;
        let res = self.storage_for(Some(ws))?;
        let subvol = self.attached_subvol(ws, &res)?;
        let ws_id = ws.ws_id.clone();
        let index = self.store.read().indexes.get(&ws_id).cloned();
        let taken = |id: &str| {
            index.as_ref().is_some_and(|i| i.snapshots.contains_key(id))
                || std::fs::symlink_metadata(res.snapshot_path(&ws_id, id)).is_ok()
        };
        let config = self.config();
        let max = config
            .workspace(&ws.workspace_path)
            .map_or(config.retention.max_snapshots, |d| {
                config.effective_max_snapshots(d)
            });
        let held = index.as_ref().map_or(0, |i| i.snapshots.len());
        if held >= max as usize {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "workspace {ws_id} already holds {held} snapshots, its limit (max_snapshots = {max}); checkpoint refused"
                ),
            )
            .hint(format!(
                "delete snapshots (`ws-ckpt delete -w {ws_id} -s ID`, `ws-ckpt cleanup -w {ws_id}`), or raise max_snapshots in the workspace's [[workspace]] table or [retention]"
            )));
        }
        let now = SystemTime::now();
        let id = match args.snapshot {
            Some(id) => {
                if taken(&id) {
                    return Err(Error::snapshot_exists(&ws_id, &id));
                }
                id
            }
            None => ids::generate_snapshot_id(now, taken),
        };
        let snap_dir = res.snap_dir(&ws_id);
        // Normally made (as a gate) at init; never created open (SPEC §7.3).
        crate::execute::gates::ensure_private_dir(&snap_dir)?;
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

    /// A recorded checkpoint whose snapshot now exists: list it (no further write; see
    /// [`crate::store::Store::confirm_checkpoint`]).
    fn checkpoint_commit(
        &self,
        p: PreparedCheckpoint,
        entry: crate::state::SnapshotEntry,
    ) -> Result<CheckpointResult> {
        let created_at = entry.created_at.as_str().to_string();
        // Listed from now on; the intent line already moved the lineage (it becomes the head,
        // `rollback -n 1`; see `state::lineage`).
        self.store.confirm_checkpoint(&p.ws_id, &p.id, entry);
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
}
