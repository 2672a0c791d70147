//! `<state_dir>/state.journal.jsonl`: the phases of multi-step operations (SPEC §5.6) as
//! appended lines beside `state.json` (see `state::journal`), so that recording a phase is one
//! line and one `fdatasync` rather than a rewrite of `state.json`. A rollback's three phases
//! (begun, ready, done) cost three short appends.
//!
//! The journal holds only changes to `state.json` → `pending` ([`PendingChange`]); anything
//! else written to the state rewrites `state.json` whole, which folds the journal into it. A
//! journal larger than [`COMPACT_MIN_STATE_JOURNAL_BYTES`] is folded before the next append.
//! ws-ckpt 0.3 reading a state directory while an operation is recorded only here would not
//! see that operation; a clean stop of the daemon folds the journal.
//!
//! Data and persistence only; what the phases mean is the executor's and the planner's.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::journal::{read_optional, JournalFiles, Replay};
use super::pending::{PendingEntry, PendingKind, PendingOp};
use super::statefile::{save_state_via, StateFile, STATE_FILE_MODE};
use super::StateError;

/// File name of the state journal.
pub const STATE_JOURNAL_FILE: &str = "state.journal.jsonl";
/// The journal is folded into `state.json` before an append once it is larger than this.
pub const COMPACT_MIN_STATE_JOURNAL_BYTES: u64 = 64 * 1024;

/// One change to the pending operations, as stored in the journal (`{"op":"begin",…}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum PendingChange {
    /// A new pending operation.
    Begin {
        /// The operation.
        pending: PendingOp,
    },
    /// A phase change: the operation's kind is replaced.
    Update {
        /// Operation ID.
        op_id: String,
        /// The new kind (with its phase).
        kind: PendingKind,
    },
    /// The operation finished (or was undone): it is forgotten.
    End {
        /// Operation ID.
        op_id: String,
    },
}

impl PendingChange {
    /// Apply in memory.
    pub fn apply(&self, state: &mut StateFile) {
        match self {
            PendingChange::Begin { pending } => {
                if !state.pending_ops().any(|o| o.op_id == pending.op_id) {
                    state.pending.push(PendingEntry::Op(pending.clone()));
                }
            }
            PendingChange::Update { op_id, kind } => {
                for entry in state.pending.iter_mut() {
                    if let PendingEntry::Op(op) = entry {
                        if op.op_id == *op_id {
                            op.kind = kind.clone();
                        }
                    }
                }
            }
            PendingChange::End { op_id } => state
                .pending
                .retain(|e| e.op().is_none_or(|op| op.op_id != *op_id)),
        }
    }
}

/// `state.json` and its journal.
#[derive(Debug, Clone)]
pub struct StateJournal {
    files: JournalFiles,
}

impl StateJournal {
    /// The journal beside `state_path` (`<state_dir>/state.json`).
    pub fn new(state_path: &Path) -> StateJournal {
        let dir = state_path.parent().unwrap_or(Path::new("."));
        let base = state_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "state.json".to_string());
        StateJournal {
            files: JournalFiles::new(dir, &base, STATE_JOURNAL_FILE, STATE_FILE_MODE),
        }
    }

    /// Replay the journal onto `state` as loaded from `state.json`. A stale journal (already
    /// folded) is removed; a torn last line is ignored; an unreadable journal is moved aside
    /// (never deleted) and reported as an error string, `state` then being what `state.json`
    /// says.
    pub fn replay_into(
        &self,
        state: &mut StateFile,
        now: std::time::SystemTime,
    ) -> Result<Option<String>, StateError> {
        let Some(journal) = read_optional(&self.files.journal)? else {
            return Ok(None);
        };
        let base = read_optional(&self.files.base)?.unwrap_or_default();
        let problem = match self.files.replay(&base, &journal) {
            Ok(Replay::Nothing) => return Ok(None),
            Ok(Replay::Stale) => {
                tracing::warn!(journal = %self.files.journal.display(), "dropping a state journal already folded into state.json");
                self.files.drop_journal()?;
                return Ok(None);
            }
            Ok(Replay::Lines { lines, torn }) => {
                if torn {
                    tracing::warn!(journal = %self.files.journal.display(), "ignoring a torn last line of the state journal (interrupted append)");
                }
                let mut changes = Vec::with_capacity(lines.len());
                let mut bad = None;
                for (line_no, line) in lines {
                    match serde_json::from_slice::<PendingChange>(line) {
                        Ok(c) => changes.push(c),
                        Err(e) => {
                            bad = Some(format!("{STATE_JOURNAL_FILE} line {line_no}: {e}"));
                            break;
                        }
                    }
                }
                match bad {
                    None => {
                        for c in &changes {
                            c.apply(state);
                        }
                        return Ok(None);
                    }
                    Some(b) => b,
                }
            }
            Err(e) => e,
        };
        let moved = super::atomic::move_aside(&self.files.journal, "corrupt", now)
            .map_err(|e| StateError::io(&self.files.journal, e))?;
        let why = format!(
            "{problem}; moved aside to {} (pending operations recorded only there are not recovered)",
            moved.display()
        );
        tracing::error!(error = %why, "the state journal is unreadable");
        Ok(Some(why))
    }

    /// Append one change (one line, one `fdatasync`). `before` is the state as recorded now
    /// (written whole first when there is no `state.json` yet or the journal is large).
    pub fn append(&self, change: &PendingChange, before: &StateFile) -> Result<(), StateError> {
        let base_missing = !self.files.base.exists();
        if base_missing || self.files.journal_len() > COMPACT_MIN_STATE_JOURNAL_BYTES {
            if let Err(e) = self.save(before) {
                if base_missing {
                    return Err(e);
                }
                tracing::warn!(error = %e, "folding the state journal failed; will retry");
            }
        }
        let line = serde_json::to_vec(change).map_err(|e| StateError::Encode {
            path: self.files.journal.clone(),
            source: e,
        })?;
        self.files.append_line(&line)
    }

    /// Write `state` to `state.json` whole and fold the journal into it (crash-safe: either
    /// the old `state.json` + journal or the new file).
    pub fn save(&self, state: &StateFile) -> Result<(), StateError> {
        save_state_via(&self.files.base, state, |bytes| self.files.install(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{load_state, RollbackPhase, StateLoad};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_000_000)
    }

    fn state() -> StateFile {
        serde_json::from_value(serde_json::json!({
            "version": 1,
            "backend": {"backend_type": "BtrfsLoop", "selection_method": "auto-detect",
                        "selected_at": "2026-11-24T15:07:42Z"},
            "paths": {"backend": "BtrfsLoop", "mount_path": "/mnt/x", "data_root": "/mnt/x",
                      "snapshots_root": "/mnt/x/snapshots"},
            "workspaces": [], "pending": []
        }))
        .unwrap()
    }

    fn rollback(op_id: &str, phase: RollbackPhase) -> PendingOp {
        PendingOp {
            op_id: op_id.into(),
            started_at: "2026-11-24T15:07:42Z".into(),
            kind: PendingKind::Rollback {
                ws_id: "ws-1".into(),
                snapshot: "c1".into(),
                subvol: "/mnt/x/ws-1".into(),
                tmp: "/mnt/x/.ws-1.rollback-o".into(),
                phase,
                live_tree: None,
            },
        }
    }

    fn load(path: &Path, j: &StateJournal) -> StateFile {
        let StateLoad::Loaded(mut s) = load_state(path, now()).unwrap() else {
            panic!("no state")
        };
        assert_eq!(j.replay_into(&mut s, now()).unwrap(), None);
        s
    }

    #[test]
    fn phases_are_appended_lines_and_replay_onto_state_json() {
        let td = tempfile::tempdir().unwrap();
        let path = td.path().join("state.json");
        let j = StateJournal::new(&path);
        let mut mem = state();
        j.save(&mem).unwrap();
        let before = std::fs::read(&path).unwrap();
        let begin = PendingChange::Begin {
            pending: rollback("o1", RollbackPhase::Snapshotting),
        };
        j.append(&begin, &mem).unwrap();
        begin.apply(&mut mem);
        assert_eq!(load(&path, &j), mem);
        let ready = PendingChange::Update {
            op_id: "o1".into(),
            kind: rollback("o1", RollbackPhase::Ready).kind,
        };
        j.append(&ready, &mem).unwrap();
        ready.apply(&mut mem);
        assert_eq!(load(&path, &j), mem);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "state.json is not rewritten for a phase"
        );
        let end = PendingChange::End { op_id: "o1".into() };
        j.append(&end, &mem).unwrap();
        end.apply(&mut mem);
        assert_eq!(load(&path, &j), state());
        // A whole save folds the journal.
        j.save(&mem).unwrap();
        assert!(!td.path().join(STATE_JOURNAL_FILE).exists());
        assert_eq!(load(&path, &j), mem);
    }

    #[test]
    fn a_torn_line_is_ignored_and_a_stale_journal_dropped() {
        let td = tempfile::tempdir().unwrap();
        let path = td.path().join("state.json");
        let j = StateJournal::new(&path);
        let mem = state();
        j.save(&mem).unwrap();
        let begin = PendingChange::Begin {
            pending: rollback("o1", RollbackPhase::Snapshotting),
        };
        j.append(&begin, &mem).unwrap();
        let jp = td.path().join(STATE_JOURNAL_FILE);
        let whole = std::fs::read(&jp).unwrap();
        std::fs::write(&jp, &whole[..whole.len() - 5]).unwrap();
        assert_eq!(load(&path, &j), mem, "torn Begin: not recorded");
        // state.json replaced (a fold whose journal removal did not happen): journal dropped.
        std::fs::write(&jp, &whole).unwrap();
        let mut other = mem.clone();
        other.last_clean_stop = Some("2026-11-24T16:00:00Z".into());
        crate::state::save_state(&path, &other).unwrap();
        assert_eq!(load(&path, &j), other);
        assert!(!jp.exists());
    }

    #[test]
    fn an_unreadable_journal_is_moved_aside_and_reported() {
        let td = tempfile::tempdir().unwrap();
        let path = td.path().join("state.json");
        let j = StateJournal::new(&path);
        j.save(&state()).unwrap();
        std::fs::write(td.path().join(STATE_JOURNAL_FILE), b"garbage\n").unwrap();
        let StateLoad::Loaded(mut s) = load_state(&path, now()).unwrap() else {
            panic!()
        };
        let why = j.replay_into(&mut s, now()).unwrap().expect("reported");
        assert!(why.contains("moved aside"), "{why}");
        assert!(!td.path().join(STATE_JOURNAL_FILE).exists());
        assert_eq!(s, state());
    }
}
