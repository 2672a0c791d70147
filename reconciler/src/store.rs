//! The persisted-state store: state.json plus the indexes, loaded once, changed in memory and
//! written after every change (atomically, or by journal append).
//!
//! The store is shared: every method takes `&self` and holds the store's own mutex for
//! exactly one in-memory update and the write that makes it durable. That mutex is the
//! host-wide critical section of ws-ckpt; nothing else is ever done while holding it (no
//! copy, verify, ioctl, cleaner wait, process scan). Long steps run without it and call the
//! short methods here between their phases. Every change is all-or-nothing: when the write
//! fails, the in-memory state is put back as it was, so a record that could not be persisted
//! has no later effect.
//!
//! Two kinds of change are kept in memory even when they cannot be written (a full state
//! directory), because the disk already says so or because keeping the old record would give
//! a failed operation a later effect: the withdrawal of an operation that failed
//! ([`Store::forget_pending`]) and the record of an effect that is already durable
//! ([`Store::forget_deleted_snapshots`], [`Store::forget_released`]). Such a write is *owed*:
//! the next write of that file writes it whole first (the indexes before `state.json`, so a
//! pending deletion is never forgotten on disk while its index still lists what it deleted),
//! and [`Store::flush_owed`] retries it. Until it is written, what the disk records is an
//! operation that recovery reverts (a withdrawal) or finishes the way it was reported (a
//! durable effect).
//!
//! Readers use [`Store::read`] (a guard: keep it for one expression, never across another
//! store call or any I/O) or [`Store::snapshot`] (a consistent copy for observe/plan/status;
//! cheap, indexes are shared until changed).
//!
//! It never decides anything; it only loads, holds and persists.

use crate::error::{Error, ErrorCode, Result};
use crate::model::{Persisted, StateProblem};
use crate::state::lineage;
use crate::state::{
    load_state, IndexLoad, IndexOp, IndexStore, SnapshotEntry, StateFile, StateLoad,
    WorkspaceEntry, WorkspaceIndex,
};
use crate::state::{PendingChange, PendingKind, PendingOp, StateJournal};
use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// state.json + indexes, in memory and on disk, safe to share between threads.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    p: Persisted,
    indexes: IndexStore,
    /// state.json and the journal of its pending operations.
    journal: StateJournal,
    /// ws_id → checkpoint intents withdrawn in memory whose `remove` line could not be
    /// written yet: written before anything else is appended to that journal.
    withdrawn: BTreeMap<String, Vec<String>>,
    /// The in-memory state holds a change `state.json` does not (see the module docs): the
    /// next write of the state writes it whole.
    owed_state: bool,
    /// Workspaces whose in-memory index holds a change their index files do not: written
    /// whole before the next line of that journal, and before the state is written.
    owed_indexes: std::collections::BTreeSet<String>,
    /// ws_id → changes recorded for that workspace (its index, its pending operations, its
    /// entry); `None` → host-level changes. A plan made from a snapshot is still valid for a
    /// workspace whose generation did not move.
    generations: BTreeMap<Option<String>, u64>,
}

impl Inner {
    fn bump(&mut self, ws_id: Option<&str>) {
        *self
            .generations
            .entry(ws_id.map(str::to_string))
            .or_default() += 1;
    }

    /// Write the owed indexes, then state.json whole (folding its journal).
    fn save(&mut self) -> Result<()> {
        self.flush_owed_indexes()?;
        if let Some(s) = &self.p.state {
            self.journal.save(s)?;
        }
        self.owed_state = false;
        Ok(())
    }

    /// Drop a pending operation from memory; writing its absence is owed.
    fn forget_pending(&mut self, op_id: &str) {
        let ws = self
            .p
            .pending()
            .into_iter()
            .find(|o| o.op_id == op_id)
            .and_then(|o| o.kind.ws_id().map(str::to_string));
        if let Some(s) = self.p.state.as_mut() {
            let n = s.pending.len();
            s.pending
                .retain(|e| e.op().is_none_or(|op| op.op_id != op_id));
            if s.pending.len() != n {
                self.owed_state = true;
            }
        }
        self.bump(ws.as_deref());
    }

    /// Write every index whose in-memory form is ahead of its files.
    fn flush_owed_indexes(&mut self) -> Result<()> {
        for ws_id in self.owed_indexes.clone() {
            if let Some(idx) = self.p.indexes.get(&ws_id).cloned() {
                self.indexes.write_full(&ws_id, &idx)?;
            }
            self.owed_indexes.remove(&ws_id);
        }
        Ok(())
    }

    /// Record one change of the pending operations (one journal line), then apply it. When
    /// the state is owed (see the module docs) it is written whole instead, with the change.
    fn change_pending(&mut self, change: PendingChange, ws_id: Option<&str>) -> Result<()> {
        let state = self.p.state.as_ref().ok_or_else(no_state)?;
        if self.owed_state {
            let mut after = state.clone();
            change.apply(&mut after);
            let before = self.p.state.replace(after);
            if let Err(e) = self.save() {
                self.p.state = before;
                return Err(e);
            }
        } else {
            self.journal.append(&change, state)?;
            if let Some(s) = self.p.state.as_mut() {
                change.apply(s);
            }
        }
        self.bump(ws_id);
        Ok(())
    }

    /// Before another line goes to `ws_id`'s journal: write the withdrawals still owed, and
    /// keep an intent left unsettled since the load (the next line would confirm it anyway;
    /// kept, a snapshot that does not exist shows as MISSING, never a pin silently lost).
    fn prepare_append(&mut self, ws_id: &str) -> Result<()> {
        if self.owed_indexes.contains(ws_id) {
            if let Some(idx) = self.p.indexes.get(ws_id).cloned() {
                self.indexes.write_full(ws_id, &idx)?;
            }
            self.owed_indexes.remove(ws_id);
        }
        if let Some(ids) = self.withdrawn.get(ws_id).cloned() {
            for id in ids {
                let before = self.index_or_new(ws_id);
                self.indexes
                    .append(ws_id, &lineage::withdraw(&before, &id), &before)?;
                if let Some(list) = self.withdrawn.get_mut(ws_id) {
                    list.retain(|x| *x != id);
                }
            }
            self.withdrawn.remove(ws_id);
        }
        if let Some(idx) = self.p.indexes.get_mut(ws_id) {
            if let Some((id, entry)) = Arc::make_mut(idx).unsettled.take() {
                tracing::warn!(ws_id, snapshot = %id, "keeping an unsettled checkpoint record");
                Arc::make_mut(idx).apply(&IndexOp::Checkpoint { id, entry });
            }
        }
        Ok(())
    }

    fn index_or_new(&self, ws_id: &str) -> Arc<WorkspaceIndex> {
        self.p.indexes.get(ws_id).cloned().unwrap_or_else(|| {
            let path = self
                .p
                .state
                .as_ref()
                .and_then(|s| s.workspace(ws_id))
                .map(|w| w.workspace_path.clone())
                .unwrap_or_default();
            Arc::new(WorkspaceIndex::new(path))
        })
    }

    /// Change the state with `f`, write it when it changed, and put it back when the write
    /// fails.
    fn update_state<R>(&mut self, f: impl FnOnce(&mut Option<StateFile>) -> R) -> Result<R> {
        let before = self.p.state.clone();
        let r = f(&mut self.p.state);
        if self.p.state == before && !self.owed_state {
            return Ok(r);
        }
        if let Err(e) = self.save() {
            self.p.state = before;
            return Err(e);
        }
        Ok(r)
    }

    /// Append `op` to `ws_id`'s journal, then apply it in memory (never before).
    fn apply_index_op(&mut self, ws_id: &str, op: IndexOp) -> Result<()> {
        self.prepare_append(ws_id)?;
        let before = self.index_or_new(ws_id);
        self.indexes.append(ws_id, &op, &before)?;
        self.change_index(ws_id, before, |i| i.apply(&op));
        Ok(())
    }

    /// Replace `ws_id`'s index by `idx` changed by `f` (in place when nothing else shares it).
    fn change_index(
        &mut self,
        ws_id: &str,
        mut idx: Arc<WorkspaceIndex>,
        f: impl FnOnce(&mut WorkspaceIndex),
    ) {
        self.p.indexes.remove(ws_id);
        f(Arc::make_mut(&mut idx));
        self.p.indexes.insert(ws_id.to_string(), idx);
        self.bump(Some(ws_id));
    }
}

/// A read guard on the store's state (see [`Store::read`]).
pub struct StoreRead<'a>(MutexGuard<'a, Inner>);

impl Deref for StoreRead<'_> {
    type Target = Persisted;
    fn deref(&self) -> &Persisted {
        &self.0.p
    }
}

fn no_state() -> Error {
    Error::new(ErrorCode::OperationFailed, "no backend is recorded yet")
        .hint("run `ws-ckpt apply` first")
}

impl Store {
    /// Load `<state_dir>/state.json` and every index. Corrupt files are moved aside (reported
    /// through `p.problem` / `p.corrupt_indexes`); a newer state version is left alone.
    pub fn load(state_dir: &Path, now: SystemTime) -> Result<Store> {
        let state_path = state_dir.join("state.json");
        let mut p = Persisted {
            state_path: state_path.clone(),
            ..Default::default()
        };
        let journal = StateJournal::new(&state_path);
        match load_state(&state_path, now)? {
            StateLoad::Missing => {}
            StateLoad::Loaded(mut s) => {
                journal.replay_into(&mut s, now)?;
                p.state = Some(s)
            }
            StateLoad::Corrupt { moved_to, error } => {
                tracing::warn!(path = %state_path.display(), moved_to = %moved_to.display(), %error, "state.json is corrupt; moved aside, rebuilding from disk");
                p.problem = Some(StateProblem::Corrupt { moved_to, error })
            }
            StateLoad::NewerVersion { version } => {
                p.problem = Some(StateProblem::NewerVersion {
                    version,
                    path: state_path.clone(),
                })
            }
        }
        let indexes = IndexStore::new(state_dir);
        for ws_id in indexes.list()? {
            match indexes.load(&ws_id, now)? {
                IndexLoad::Loaded(i) => {
                    p.indexes.insert(ws_id, Arc::new(i));
                }
                IndexLoad::Corrupt { moved_to, error } => {
                    tracing::warn!(ws_id, moved_to = %moved_to.display(), %error, "index is corrupt; moved aside");
                    p.corrupt_indexes.insert(ws_id, moved_to);
                }
                IndexLoad::Missing => {}
            }
        }
        Ok(Store::from_parts(p, indexes))
    }

    /// A store holding `p`, persisting under `indexes` (tests, and [`Store::load`]).
    pub fn from_parts(p: Persisted, indexes: IndexStore) -> Store {
        Store {
            inner: Mutex::new(Inner {
                journal: StateJournal::new(&p.state_path),
                p,
                indexes,
                withdrawn: BTreeMap::new(),
                owed_state: false,
                owed_indexes: Default::default(),
                generations: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the store never leaves memory ahead of the disk (every change
        // is written before it is kept), so the state behind a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current state, for reading. Holds the store's lock: keep it for one expression
    /// (`store.read().indexes.get(..).cloned()`), never across another store call or I/O.
    pub fn read(&self) -> StoreRead<'_> {
        StoreRead(self.lock())
    }

    /// A consistent copy of the state (indexes shared until they change), for work that must
    /// not hold the lock: observation, planning, status.
    pub fn snapshot(&self) -> Persisted {
        self.lock().p.clone()
    }

    /// [`Store::snapshot`] with the generation of every workspace at that instant (see
    /// [`Store::generation`]).
    pub fn snapshot_with_generations(&self) -> (Persisted, BTreeMap<Option<String>, u64>) {
        let g = self.lock();
        (g.p.clone(), g.generations.clone())
    }

    /// How many changes were recorded for workspace `ws_id` (`None`: host-level changes) since
    /// the store was loaded. Unchanged generation ⇒ a plan made before is still current for it.
    pub fn generation(&self, ws_id: Option<&str>) -> u64 {
        self.lock()
            .generations
            .get(&ws_id.map(str::to_string))
            .copied()
            .unwrap_or(0)
    }

    /// Write state.json as it is (no-op when there is no state yet).
    pub fn save(&self) -> Result<()> {
        self.lock().save()
    }

    /// Change the state (creating or replacing it as `f` likes), then write it when it
    /// changed. When the write fails the change is undone in memory too.
    pub fn update_state<R>(&self, f: impl FnOnce(&mut Option<StateFile>) -> R) -> Result<R> {
        let mut g = self.lock();
        let r = g.update_state(f)?;
        g.bump(None);
        Ok(r)
    }

    /// [`Store::update_state`] of a state that must exist (after bootstrap).
    pub fn modify_state<R>(&self, f: impl FnOnce(&mut StateFile) -> R) -> Result<R> {
        self.update_state(|s| s.as_mut().map(f))?
            .ok_or_else(no_state)
    }

    /// Record a pending operation durably (one journal line); returns its ID. When it cannot
    /// be written it is not recorded in memory either.
    pub fn begin(&self, kind: PendingKind) -> Result<String> {
        let op_id = new_op_id();
        let ws = kind.ws_id().map(str::to_string);
        let pending = PendingOp {
            op_id: op_id.clone(),
            started_at: crate::time::now_rfc3339(),
            kind,
        };
        self.lock()
            .change_pending(PendingChange::Begin { pending }, ws.as_deref())?;
        Ok(op_id)
    }

    /// Replace a pending operation's recorded kind (phase change) durably (one journal line).
    pub fn update(&self, op_id: &str, kind: PendingKind) -> Result<()> {
        let ws = kind.ws_id().map(str::to_string);
        let change = PendingChange::Update {
            op_id: op_id.to_string(),
            kind,
        };
        self.lock().change_pending(change, ws.as_deref())
    }

    /// Forget a finished pending operation durably (one journal line).
    pub fn end(&self, op_id: &str) -> Result<()> {
        let mut g = self.lock();
        let ws =
            g.p.pending()
                .into_iter()
                .find(|o| o.op_id == op_id)
                .and_then(|o| o.kind.ws_id().map(str::to_string));
        let change = PendingChange::End {
            op_id: op_id.to_string(),
        };
        g.change_pending(change, ws.as_deref())
    }

    /// Drop a pending operation from memory only (its removal could not be written): it has
    /// no later effect in this process, and the next write of the state writes it whole,
    /// without it (owed; see the module docs).
    pub fn forget_pending(&self, op_id: &str) {
        let mut g = self.lock();
        g.forget_pending(op_id);
    }

    /// Write what is owed (see the module docs) now; `Ok` when nothing is. A caller that
    /// starts a pass calls it so that a withdrawal is persisted as soon as space is back.
    pub fn flush_owed(&self) -> Result<()> {
        let mut g = self.lock();
        if g.owed_state {
            g.save()
        } else {
            g.flush_owed_indexes()
        }
    }

    /// Whether some change is held in memory only (see the module docs).
    pub fn has_owed(&self) -> bool {
        let g = self.lock();
        g.owed_state || !g.owed_indexes.is_empty()
    }

    /// End a pending operation; when that cannot be written it is dropped from memory
    /// anyway and the write is owed ([`Store::forget_pending`]). For an operation that failed
    /// (its record must have no later effect) or whose effect is durable already.
    pub fn end_or_forget(&self, op_id: &str) {
        if let Err(e) = self.end(op_id) {
            tracing::warn!(op = op_id, error = %e, "cannot record the end of an operation yet; it is forgotten in memory and written with the next change of the state");
            self.forget_pending(op_id);
        }
    }

    /// The subvolumes of snapshots `ids` are deleted (durable): forget their entries as
    /// [`Store::remove_snapshot`] does, with the lineage links they move, in one journal line
    /// (one `fdatasync` for a whole cleanup); in memory even when the line cannot be written
    /// (owed: the index is then written whole before its next line; until then the pending
    /// deletion that deleted them stays recorded on disk, so a restart finishes recording
    /// it). Returns whether the line was written.
    pub fn forget_deleted_snapshots(&self, ws_id: &str, ids: &[String]) -> bool {
        let line = {
            let mut g = self.lock();
            if !g.p.indexes.contains_key(ws_id) {
                return true;
            }
            if let Err(e) = g.prepare_append(ws_id) {
                tracing::warn!(ws_id, error = %e, "cannot write the index before forgetting deleted snapshots; written with the next change");
                g.owed_indexes.insert(ws_id.to_string());
            }
            let before = g.index_or_new(ws_id);
            let mut after = (*before).clone();
            let mut ops = Vec::new();
            for id in ids {
                if after.snapshots.contains_key(id) {
                    let op = lineage::remove(&after, id);
                    after.apply(&op);
                    ops.push(op);
                }
            }
            let op = match ops.len() {
                0 => return true,
                1 => ops.swap_remove(0),
                _ => IndexOp::Batch { ops },
            };
            let line = if g.owed_indexes.contains(ws_id) {
                None
            } else {
                match g.indexes.append_deferred(ws_id, &op, &before) {
                    Ok(line) => Some(line),
                    Err(e) => {
                        tracing::warn!(ws_id, error = %e, "the snapshots are deleted but their index entries cannot be removed yet; forgotten in memory, written with the next change");
                        g.owed_indexes.insert(ws_id.to_string());
                        None
                    }
                }
            };
            drop(before);
            g.p.indexes.insert(ws_id.to_string(), Arc::new(after));
            g.bump(Some(ws_id));
            match line {
                Some(line) => line,
                None => return false,
            }
        };
        // The fdatasync outside the store's lock (the caller holds the workspace's): the
        // checkpoints of other workspaces go on meanwhile (issue 9).
        match line.sync() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(ws_id, error = %e, "the snapshots are deleted but the removal of their index entries is not durable; written with the next change");
                self.lock().owed_indexes.insert(ws_id.to_string());
                false
            }
        }
    }

    /// A release's deletions are committed (durable): forget the workspace, its index and the
    /// operation `op_id` — in memory even when `state.json` cannot be written (owed; a restart
    /// before it is written finds the operation in its last phase and finishes recording it).
    /// Returns whether everything was written.
    pub fn forget_released(&self, ws_id: &str, op_id: &str) -> bool {
        let mut g = self.lock();
        // The index goes first: a power cut after `state.json` forgot the workspace but before
        // the index was removed would leave the index of an unrecorded workspace behind (and
        // a later init of the same path, same ID, would list the released snapshots again).
        // The other way round, the cut leaves the release recorded in its last phase, and
        // recovery finishes recording it.
        g.owed_indexes.remove(ws_id);
        let index_removed = g.indexes.remove(ws_id).map_err(|e| {
            tracing::warn!(ws_id, error = %e, "cannot remove the index of a released workspace; it is ignored and removed by the next release of this ID");
        });
        g.p.indexes.remove(ws_id);
        g.withdrawn.remove(ws_id);
        crate::fault::point("release:after-index-removed");
        let written = g
            .update_state(|s| {
                if let Some(s) = s.as_mut() {
                    s.workspaces.retain(|w| w.ws_id != ws_id);
                    PendingChange::End {
                        op_id: op_id.to_string(),
                    }
                    .apply(s);
                }
            })
            .map_err(|e| {
                tracing::warn!(ws_id, op = op_id, error = %e, "the workspace is released but state.json cannot be written yet; forgotten in memory, written with the next change");
            })
            .is_ok();
        if !written {
            if let Some(s) = g.p.state.as_mut() {
                s.workspaces.retain(|w| w.ws_id != ws_id);
                PendingChange::End {
                    op_id: op_id.to_string(),
                }
                .apply(s);
            }
            g.owed_state = true;
        }
        g.bump(Some(ws_id));
        written && index_removed.is_ok()
    }

    /// The pending operation with this ID.
    pub fn pending(&self, op_id: &str) -> Option<PendingOp> {
        self.lock()
            .p
            .pending()
            .into_iter()
            .find(|o| o.op_id == op_id)
            .cloned()
    }

    /// The recorded index entry of snapshot `id` of `ws_id`.
    pub fn snapshot_entry(&self, ws_id: &str, id: &str) -> Option<SnapshotEntry> {
        self.lock()
            .p
            .indexes
            .get(ws_id)
            .and_then(|i| i.snapshots.get(id))
            .cloned()
    }

    /// Record a workspace (replacing one with the same ID) and give it an index.
    pub fn add_workspace(&self, entry: WorkspaceEntry) -> Result<()> {
        let ws_id = entry.ws_id.clone();
        let path = entry.workspace_path.clone();
        let mut g = self.lock();
        g.update_state(|s| {
            s.as_mut().map(|s| {
                s.workspaces.retain(|w| w.ws_id != ws_id);
                s.workspaces.push(entry);
            })
        })?
        .ok_or_else(no_state)?;
        g.bump(Some(&ws_id));
        let current = g.p.indexes.get(&ws_id).map(|i| i.workspace_path.clone());
        match current {
            Some(p) if p == path => {}
            Some(_) => g.apply_index_op(&ws_id, IndexOp::SetWorkspacePath { path })?,
            None => {
                let idx = WorkspaceIndex::new(path);
                g.indexes.write_full(&ws_id, &idx)?;
                g.p.indexes.insert(ws_id, Arc::new(idx));
            }
        }
        Ok(())
    }

    /// Forget a workspace and its index.
    pub fn remove_workspace(&self, ws_id: &str) -> Result<()> {
        let mut g = self.lock();
        g.owed_indexes.remove(ws_id);
        g.update_state(|s| {
            s.as_mut()
                .map(|s| s.workspaces.retain(|w| w.ws_id != ws_id))
        })?
        .ok_or_else(no_state)?;
        g.bump(Some(ws_id));
        g.indexes.remove(ws_id)?;
        g.p.indexes.remove(ws_id);
        g.withdrawn.remove(ws_id);
        Ok(())
    }

    /// Replace a whole index (migration).
    pub fn set_index(&self, ws_id: &str, index: WorkspaceIndex) -> Result<()> {
        let mut g = self.lock();
        g.indexes.write_full(ws_id, &index)?;
        g.p.indexes.insert(ws_id.to_string(), Arc::new(index));
        g.bump(Some(ws_id));
        Ok(())
    }

    /// Add or replace one snapshot entry (one journal append).
    pub fn put_snapshot(&self, ws_id: &str, id: &str, entry: SnapshotEntry) -> Result<()> {
        let op = IndexOp::Put {
            id: id.to_string(),
            entry,
        };
        self.lock().apply_index_op(ws_id, op)
    }

    /// The live workspace now equals snapshot `id` (after a rollback): it becomes the lineage
    /// head. One journal append.
    pub fn set_head(&self, ws_id: &str, id: &str) -> Result<()> {
        let mut g = self.lock();
        let Some(idx) = g.p.indexes.get(ws_id) else {
            return Ok(());
        };
        let op = lineage::rolled_back_to(idx, id);
        g.apply_index_op(ws_id, op)
    }

    /// Remove one snapshot entry, linking its lineage children to its parent (one journal
    /// append).
    pub fn remove_snapshot(&self, ws_id: &str, id: &str) -> Result<()> {
        let mut g = self.lock();
        let op = match g.p.indexes.get(ws_id) {
            Some(idx) => lineage::remove(idx, id),
            None => IndexOp::Remove { id: id.to_string() },
        };
        g.apply_index_op(ws_id, op)
    }

    /// The one durable record of a checkpoint, written BEFORE its snapshot ioctl (message,
    /// metadata and pin included): a checkpoint interrupted after its snapshot is adopted with
    /// them. Memory is unchanged until [`Store::confirm_checkpoint`]; on error nothing is
    /// recorded. The caller holds the workspace's lock until it confirms or withdraws.
    pub fn record_checkpoint(&self, ws_id: &str, id: &str, entry: &SnapshotEntry) -> Result<()> {
        self.record_checkpoint_deferred(ws_id, id, entry)?.sync()?;
        Ok(())
    }

    /// [`Store::record_checkpoint`] with the line's `fdatasync` left to the caller, who
    /// makes it while the snapshot ioctl runs when the same record is on the snapshot's
    /// directory ([`crate::sys::Sys::set_checkpoint_record`]): whichever of the two a power
    /// cut keeps, the checkpoint is found with its message, metadata and pin.
    pub fn record_checkpoint_deferred(
        &self,
        ws_id: &str,
        id: &str,
        entry: &SnapshotEntry,
    ) -> Result<crate::state::index::IndexSync> {
        let pending = {
            let mut g = self.lock();
            g.prepare_append(ws_id)?;
            let before = g.index_or_new(ws_id);
            let op = IndexOp::Checkpoint {
                id: id.to_string(),
                entry: entry.clone(),
            };
            g.indexes.append_deferred(ws_id, &op, &before)?
        };
        // The fdatasync outside the store's lock (the caller holds the workspace's, so nothing
        // else writes this journal meantime): concurrent checkpoints of other workspaces share
        // the disk's flushes instead of queueing one after the other (issue 9).
        Ok(pending)
    }

    /// Make the index journal of `ws_id` durable as it is now (every line appended so far),
    /// outside the store's lock: the lines of checkpoints answered before their `fdatasync`
    /// ([`crate::settle`]).
    pub fn sync_index_journal(&self, ws_id: &str) -> Result<()> {
        let path = self.lock().indexes.journal_path(ws_id)?;
        crate::state::index::sync_journal(&path)?;
        Ok(())
    }

    /// The snapshot of a recorded checkpoint exists: it is listed from now on, and a
    /// `confirm` line is appended without `fdatasync` (a later process must not withdraw an
    /// acknowledged checkpoint whose snapshot was deleted behind our back; when the line is
    /// lost in a power cut, the snapshot itself confirms it, and so does any later line).
    pub fn confirm_checkpoint(&self, ws_id: &str, id: &str, entry: SnapshotEntry) {
        let mut g = self.lock();
        let idx = g.index_or_new(ws_id);
        g.change_index(ws_id, idx, |i| {
            // With its lineage links, as the intent line is applied on the next load.
            i.apply(&IndexOp::Checkpoint {
                id: id.to_string(),
                entry,
            });
        });
        let op = IndexOp::Confirm { id: id.to_string() };
        if let Err(e) = g.indexes.append_unsynced(ws_id, &op) {
            tracing::warn!(ws_id, snapshot = id, error = %e, "cannot append the confirmation of a checkpoint; the next line of the journal confirms it");
        }
    }

    /// The snapshot of a recorded checkpoint was not made: withdraw the record (a `remove`
    /// line; when that cannot be written now, it is written before the next line of this
    /// journal, and a restart settles the intent by the snapshot's absence anyway).
    pub fn withdraw_checkpoint(&self, ws_id: &str, id: &str) {
        let mut g = self.lock();
        let before = g.index_or_new(ws_id);
        let op = lineage::withdraw(&before, id);
        if let Err(e) = g.indexes.append(ws_id, &op, &before) {
            tracing::warn!(ws_id, snapshot = id, error = %e, "cannot write the withdrawal of a failed checkpoint yet");
            g.withdrawn
                .entry(ws_id.to_string())
                .or_default()
                .push(id.to_string());
        }
    }

    /// Settle the checkpoint intents left unsettled by an interrupted process (see
    /// `state::index`): `exists(ws_id, id)` says whether the snapshot exists (`None`: cannot
    /// tell now, e.g. storage unavailable; it stays unsettled). Existing ones are kept with
    /// their message, metadata and pin; the others are withdrawn. No write unless a
    /// withdrawal is owed (and then at the next append). Returns how many were settled.
    pub fn settle_checkpoints(&self, exists: impl Fn(&str, &str) -> Option<bool>) -> usize {
        let mut g = self.lock();
        let pending: Vec<(String, String)> =
            g.p.indexes
                .iter()
                .filter_map(|(ws, i)| i.unsettled.as_ref().map(|(id, _)| (ws.clone(), id.clone())))
                .collect();
        let mut settled = 0;
        for (ws_id, id) in pending {
            let Some(found) = exists(&ws_id, &id) else {
                continue;
            };
            let Some(idx) = g.p.indexes.get_mut(&ws_id) else {
                continue;
            };
            let idx = Arc::make_mut(idx);
            let Some((id, entry)) = idx.unsettled.take() else {
                continue;
            };
            if found {
                tracing::info!(ws_id, snapshot = %id, "an interrupted checkpoint's snapshot exists: kept with its message, metadata and pin");
                idx.apply(&IndexOp::Checkpoint { id, entry });
            } else {
                tracing::info!(ws_id, snapshot = %id, "an interrupted checkpoint has no snapshot: withdrawn");
                g.withdrawn.entry(ws_id.clone()).or_default().push(id);
            }
            g.bump(Some(&ws_id));
            settled += 1;
        }
        settled
    }

    /// Whether some workspace has an unsettled checkpoint intent.
    pub fn has_unsettled(&self) -> bool {
        self.lock()
            .p
            .indexes
            .values()
            .any(|i| i.unsettled.is_some())
    }
}

/// A unique operation ID: time-based plus pid and a counter.
pub fn new_op_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{:x}{:05x}-{}-{}",
        t.as_secs(),
        t.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
