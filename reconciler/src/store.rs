//! The persisted-state store used by the executor: state.json plus the indexes, loaded once,
//! changed in memory and written after every change (atomically, or by journal append).
//!
//! It never decides anything; it only loads, holds and persists.

use crate::error::Result;
use crate::model::{Persisted, StateProblem};
use crate::state::lineage;
use crate::state::{
    load_state, save_state, IndexLoad, IndexOp, IndexStore, SnapshotEntry, StateFile, StateLoad,
    WorkspaceEntry, WorkspaceIndex,
};
use crate::state::{PendingEntry, PendingKind, PendingOp};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// state.json + indexes, in memory and on disk.
#[derive(Debug)]
pub struct Store {
    /// What was loaded (kept current with every change).
    pub p: Persisted,
    indexes: IndexStore,
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
        match load_state(&state_path, now)? {
            StateLoad::Missing => {}
            StateLoad::Loaded(s) => p.state = Some(s),
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
                    p.indexes.insert(ws_id, i);
                }
                IndexLoad::Corrupt { moved_to, error } => {
                    tracing::warn!(ws_id, moved_to = %moved_to.display(), %error, "index is corrupt; moved aside");
                    p.corrupt_indexes.insert(ws_id, moved_to);
                }
                IndexLoad::Missing => {}
            }
        }
        Ok(Store { p, indexes })
    }

    /// Write state.json (no-op when there is no state yet).
    pub fn save(&self) -> Result<()> {
        if let Some(s) = &self.p.state {
            save_state(&self.p.state_path, s)?;
        }
        Ok(())
    }

    /// The state, which must exist (after bootstrap).
    pub fn state_mut(&mut self) -> Result<&mut StateFile> {
        self.p.state.as_mut().ok_or_else(|| {
            crate::error::Error::new(
                crate::error::ErrorCode::OperationFailed,
                "no backend is recorded yet",
            )
            .hint("run `ws-ckpt apply` first")
        })
    }

    /// Record a pending operation durably; returns its ID.
    pub fn begin(&mut self, kind: PendingKind) -> Result<String> {
        let op_id = new_op_id();
        let op = PendingOp {
            op_id: op_id.clone(),
            started_at: crate::time::now_rfc3339(),
            kind,
        };
        self.state_mut()?.pending.push(PendingEntry::Op(op));
        self.save()?;
        Ok(op_id)
    }

    /// Replace a pending operation's recorded kind (phase change) durably.
    pub fn update(&mut self, op_id: &str, kind: PendingKind) -> Result<()> {
        let state = self.state_mut()?;
        for entry in state.pending.iter_mut() {
            if let PendingEntry::Op(op) = entry {
                if op.op_id == op_id {
                    op.kind = kind.clone();
                }
            }
        }
        self.save()
    }

    /// Forget a finished pending operation durably.
    pub fn end(&mut self, op_id: &str) -> Result<()> {
        self.state_mut()?
            .pending
            .retain(|e| e.op().is_none_or(|op| op.op_id != op_id));
        self.save()
    }

    /// The pending operation with this ID.
    pub fn pending(&self, op_id: &str) -> Option<PendingOp> {
        self.p
            .pending()
            .into_iter()
            .find(|o| o.op_id == op_id)
            .cloned()
    }

    /// Record a workspace (replacing one with the same ID) and give it an index.
    pub fn add_workspace(&mut self, entry: WorkspaceEntry) -> Result<()> {
        let ws_id = entry.ws_id.clone();
        let path = entry.workspace_path.clone();
        let state = self.state_mut()?;
        state.workspaces.retain(|w| w.ws_id != ws_id);
        state.workspaces.push(entry);
        self.save()?;
        match self.p.indexes.get_mut(&ws_id) {
            Some(idx) if idx.workspace_path == path => {}
            Some(idx) => {
                idx.workspace_path = path.clone();
                let op = IndexOp::SetWorkspacePath { path };
                let after = idx.clone();
                self.indexes.append(&ws_id, &op, &after)?;
            }
            None => {
                let idx = WorkspaceIndex::new(path);
                self.indexes.write_full(&ws_id, &idx)?;
                self.p.indexes.insert(ws_id, idx);
            }
        }
        Ok(())
    }

    /// Forget a workspace and its index.
    pub fn remove_workspace(&mut self, ws_id: &str) -> Result<()> {
        self.state_mut()?.workspaces.retain(|w| w.ws_id != ws_id);
        self.save()?;
        self.indexes.remove(ws_id)?;
        self.p.indexes.remove(ws_id);
        Ok(())
    }

    /// Replace a whole index (migration).
    pub fn set_index(&mut self, ws_id: &str, index: WorkspaceIndex) -> Result<()> {
        self.indexes.write_full(ws_id, &index)?;
        self.p.indexes.insert(ws_id.to_string(), index);
        Ok(())
    }

    /// Add or replace one snapshot entry (one journal append).
    pub fn put_snapshot(&mut self, ws_id: &str, id: &str, entry: SnapshotEntry) -> Result<()> {
        let op = IndexOp::Put {
            id: id.to_string(),
            entry,
        };
        self.apply_index_op(ws_id, op)
    }

    /// Record a new checkpoint's entry with its lineage links (it becomes the head; see
    /// `state::lineage`): one journal append.
    pub fn record_checkpoint(&mut self, ws_id: &str, id: &str, entry: SnapshotEntry) -> Result<()> {
        let op = match self.p.indexes.get(ws_id) {
            Some(idx) => lineage::checkpoint(idx, id, entry),
            None => lineage::checkpoint(&WorkspaceIndex::new(Default::default()), id, entry),
        };
        self.apply_index_op(ws_id, op)
    }

    /// The live workspace now equals snapshot `id` (after a rollback): it becomes the lineage
    /// head. One journal append.
    pub fn set_head(&mut self, ws_id: &str, id: &str) -> Result<()> {
        let Some(idx) = self.p.indexes.get(ws_id) else {
            return Ok(());
        };
        let op = lineage::rolled_back_to(idx, id);
        self.apply_index_op(ws_id, op)
    }

    /// Remove one snapshot entry, linking its lineage children to its parent (one journal
    /// append).
    pub fn remove_snapshot(&mut self, ws_id: &str, id: &str) -> Result<()> {
        let op = match self.p.indexes.get(ws_id) {
            Some(idx) => lineage::remove(idx, id),
            None => IndexOp::Remove { id: id.to_string() },
        };
        self.apply_index_op(ws_id, op)
    }

    fn apply_index_op(&mut self, ws_id: &str, op: IndexOp) -> Result<()> {
        let path = self
            .p
            .state
            .as_ref()
            .and_then(|s| s.workspace(ws_id))
            .map(|w| w.workspace_path.clone())
            .unwrap_or_default();
        let idx = self
            .p
            .indexes
            .entry(ws_id.to_string())
            .or_insert_with(|| WorkspaceIndex::new(path));
        idx.apply(&op);
        self.indexes.append(ws_id, &op, idx)?;
        Ok(())
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
