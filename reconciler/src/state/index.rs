//! Per-workspace snapshot indexes: `<state_dir>/indexes/<ws_id>/index.json` (the JSON format of
//! ws-ckpt 0.3 and of the v0 in-btrfs index) plus an append-only journal (`journal.jsonl`, see
//! `state::journal`), so that recording one checkpoint costs the same with 10 or 10 000
//! snapshots: one [`IndexOp`] per line, appended with `O_APPEND` + `fdatasync`.
//!
//! A checkpoint is ONE line, written before its snapshot exists ([`IndexOp::Checkpoint`]: the
//! intent, with message, metadata and pin). A later line in the same journal means it
//! completed (the workspace's operations are serialized, and a checkpoint whose snapshot
//! failed is withdrawn by a `remove` line). Once the snapshot exists, a `confirm` line is
//! appended without `fdatasync` (an acknowledged checkpoint whose snapshot is later deleted
//! behind our back stays listed, as MISSING, instead of being withdrawn; a power cut that
//! loses that line leaves the intent last, settled as below). An intent that is the
//! journal's last line is returned unsettled ([`WorkspaceIndex::unsettled`]): whoever can see the snapshot directory
//! keeps it when its snapshot exists and withdraws it otherwise.
//!
//! Callers must serialize changes to one workspace (the store does). This module must not
//! decide what goes into an index (that is the planner's and executor's job) and must never
//! delete an index it cannot read: unreadable files are moved aside.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use super::entry::SnapshotEntry;

use super::atomic::{fsync_dir, move_aside};
use super::journal::{read_optional, JournalFiles, Replay};
use super::StateError;

/// File name of the full index.
pub const INDEX_FILE: &str = "index.json";
/// File name of the journal.
pub const JOURNAL_FILE: &str = "journal.jsonl";
/// A journal is compacted into `index.json` once it is larger than both this and `index.json`
/// (about 500 lines of a typical checkpoint), which keeps appends amortised O(1).
pub const COMPACT_MIN_JOURNAL_BYTES: u64 = 64 * 1024;
/// Mode of index files (they hold every message and metadata: root only, SPEC §7.3).
const INDEX_FILE_MODE: u32 = 0o600;

/// The index of one workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceIndex {
    /// The user path of the workspace.
    pub workspace_path: PathBuf,
    /// Snapshots by ID, in insertion (= creation) order.
    #[serde(default)]
    pub snapshots: IndexMap<String, SnapshotEntry>,
    /// Fields this version does not know; written back unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// A checkpoint intent read as the journal's last line: its snapshot may or may not exist
    /// (the process stopped in between). Not part of `snapshots` until settled; never written
    /// to `index.json`.
    #[serde(skip)]
    pub unsettled: Option<(String, SnapshotEntry)>,
}

/// One change to an index, as stored in the journal (`{"op":"put",…}`).
// One value per journal append, never stored in bulk: boxing `Put` would only add an
// allocation to every checkpoint.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum IndexOp {
    /// Insert or replace a snapshot entry (a replaced entry keeps its position).
    Put {
        /// Snapshot ID.
        id: String,
        /// The entry.
        entry: SnapshotEntry,
    },
    /// Remove a snapshot entry (no-op when absent); the others keep their order.
    Remove {
        /// Snapshot ID.
        id: String,
    },
    /// Change the recorded user path.
    SetWorkspacePath {
        /// The new path.
        path: PathBuf,
    },
    /// Set the lineage head: the snapshot the live workspace descends from (`head` of
    /// ws-ckpt 0.4+; see `state::lineage`). `None` removes it.
    SetHead {
        /// The head snapshot ID.
        head: Option<String>,
    },
    /// Several changes recorded as one journal line, so that they take effect together or
    /// not at all (a snapshot removal and the lineage links it moves).
    Batch {
        /// The changes, applied in order.
        ops: Vec<IndexOp>,
    },
    /// A checkpoint about to take its snapshot (written first, so message, metadata and pin
    /// are durable before the snapshot exists). Applied as a `put` once a later line follows,
    /// together with its lineage links: its parent is the head, and it becomes the head
    /// (`state::lineage::checkpoint`, a function of the index it is applied to, so a replay
    /// gives the same links).
    Checkpoint {
        /// Snapshot ID.
        id: String,
        /// The entry.
        entry: SnapshotEntry,
    },
    /// The snapshot of the checkpoint just before exists (changes nothing by itself: any
    /// later line completes a checkpoint; this one makes sure there is one).
    Confirm {
        /// Snapshot ID.
        id: String,
    },
}

impl WorkspaceIndex {
    /// An empty index for the workspace at `path`.
    pub fn new(path: PathBuf) -> Self {
        WorkspaceIndex {
            workspace_path: path,
            snapshots: IndexMap::new(),
            extra: Map::new(),
            unsettled: None,
        }
    }

    /// Apply one change in memory.
    pub fn apply(&mut self, op: &IndexOp) {
        match op {
            IndexOp::Put { id, entry } => {
                self.snapshots.insert(id.clone(), entry.clone());
            }
            IndexOp::Checkpoint { id, entry } => {
                let linked = super::lineage::checkpoint(self, id, entry.clone());
                self.apply(&linked);
            }
            IndexOp::Remove { id } => {
                self.snapshots.shift_remove(id);
            }
            IndexOp::SetWorkspacePath { path } => self.workspace_path = path.clone(),
            IndexOp::SetHead { head } => self.set_head(head.as_deref()),
            IndexOp::Batch { ops } => ops.iter().for_each(|op| self.apply(op)),
            IndexOp::Confirm { .. } => {}
        }
    }
}

/// Parse an `index.json` (ours, ws-ckpt 0.3's, or a v0 in-btrfs index).
pub fn parse_index(bytes: &[u8]) -> Result<WorkspaceIndex, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// An index line written whose `fdatasync` is still to be made ([`IndexStore::append_deferred`]).
#[derive(Debug)]
#[must_use = "the line is not durable until `sync` returns"]
pub struct IndexSync(super::journal::PendingSync);

impl IndexSync {
    /// Make the line durable; on failure it is cut again (the journal as it was).
    pub fn sync(self) -> Result<(), StateError> {
        self.0.sync()
    }
}

/// Result of [`IndexStore::load`].
// Returned once per workspace at load time and unpacked at once: boxing would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum IndexLoad {
    /// No index for this workspace.
    Missing,
    /// The index with its journal replayed.
    Loaded(WorkspaceIndex),
    /// The index or its journal did not parse; both were moved aside (never deleted) and the index
    /// must be rebuilt from the snapshot subvolumes, with a loud warning.
    Corrupt {
        /// Where the unreadable `index.json` (or, without one, the journal) now is.
        moved_to: PathBuf,
        /// What was wrong.
        error: String,
    },
}

/// Stores indexes under `<state_dir>/indexes`.
#[derive(Debug, Clone)]
pub struct IndexStore {
    root: PathBuf,
}

impl IndexStore {
    /// A store rooted at `<state_dir>/indexes` (nothing is created until the first write).
    pub fn new(state_dir: &Path) -> Self {
        IndexStore {
            root: state_dir.join("indexes"),
        }
    }

    /// `<state_dir>/indexes`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<ws_id>` (not validated; the other methods validate the ID first).
    pub fn dir(&self, ws_id: &str) -> PathBuf {
        self.root.join(ws_id)
    }

    fn checked_dir(&self, ws_id: &str) -> Result<PathBuf, StateError> {
        if crate::ids::is_valid_ws_id(ws_id) {
            Ok(self.dir(ws_id))
        } else {
            Err(StateError::InvalidWsId {
                ws_id: ws_id.to_string(),
            })
        }
    }

    fn files(&self, ws_id: &str) -> Result<JournalFiles, StateError> {
        Ok(JournalFiles::new(
            &self.checked_dir(ws_id)?,
            INDEX_FILE,
            JOURNAL_FILE,
            INDEX_FILE_MODE,
        ))
    }

    /// Read `index.json`, then replay `journal.jsonl`. A torn last line (crash mid-append) is
    /// ignored with a warning; any other bad line, a bad header or an unparsable `index.json`
    /// moves both files aside (`<name>.corrupt-<time>`) and returns `Corrupt`. A journal left
    /// over from an interrupted compaction is removed. A checkpoint intent on the last line is
    /// returned in [`WorkspaceIndex::unsettled`].
    pub fn load(&self, ws_id: &str, now: SystemTime) -> Result<IndexLoad, StateError> {
        let files = self.files(ws_id)?;
        let dir = &files.dir;
        let index_bytes = read_optional(&files.base)?;
        let journal = read_optional(&files.journal)?.filter(|b| !b.is_empty());
        let Some(index_bytes) = index_bytes else {
            if journal.is_none() {
                return Ok(IndexLoad::Missing);
            }
            return corrupt(
                dir,
                now,
                format!("{JOURNAL_FILE} exists without {INDEX_FILE}"),
            );
        };
        let mut index = match parse_index(&index_bytes) {
            Ok(i) => i,
            Err(e) => return corrupt(dir, now, format!("{INDEX_FILE}: {e}")),
        };
        let Some(journal) = journal else {
            return Ok(loaded(index));
        };
        let lines = match files.replay(&index_bytes, &journal) {
            Err(e) => return corrupt(dir, now, e),
            Ok(Replay::Nothing) => return Ok(loaded(index)),
            Ok(Replay::Stale) => {
                // The compaction that produced this index.json was interrupted before it
                // removed the journal: every operation in it is already part of index.json.
                tracing::warn!(
                    journal = %files.journal.display(),
                    "dropping a journal already folded into index.json (interrupted compaction)"
                );
                files.drop_journal()?;
                return Ok(loaded(index));
            }
            Ok(Replay::Lines { lines, torn }) => {
                if torn {
                    tracing::warn!(
                        journal = %files.journal.display(),
                        "ignoring a torn last journal line (interrupted append)"
                    );
                }
                lines
            }
        };
        let count = lines.len();
        for (i, (line_no, line)) in lines.into_iter().enumerate() {
            match serde_json::from_slice::<IndexOp>(line) {
                Ok(IndexOp::Checkpoint { id, entry }) if i + 1 == count => {
                    index.unsettled = Some((id, entry));
                }
                Ok(op) => index.apply(&op),
                Err(e) => return corrupt(dir, now, format!("{JOURNAL_FILE} line {line_no}: {e}")),
            }
        }
        Ok(loaded(index))
    }

    /// Append one op as one line with `O_APPEND` + `fdatasync`; O(1) in the number of snapshots.
    /// `before` is the index as it is before the op (what `index.json` + journal hold now):
    /// once the journal is larger than both [`COMPACT_MIN_JOURNAL_BYTES`] and `index.json`,
    /// `index.json` is first rewritten from `before` and the journal restarted (amortised
    /// O(1)); without an `index.json`, it is written from `before` first. The op itself always
    /// lands in the journal, so it is never folded into `index.json` before the caller has
    /// seen it succeed (a checkpoint intent stays an intent until a later line). Creates
    /// directories as needed. On error nothing the op says is on disk (a partial line is cut
    /// or ignored by the next load).
    pub fn append(
        &self,
        ws_id: &str,
        op: &IndexOp,
        before: &WorkspaceIndex,
    ) -> Result<(), StateError> {
        self.append_deferred(ws_id, op, before)?.sync()
    }

    /// [`IndexStore::append`] with the line's `fdatasync` left to the caller
    /// ([`IndexSync::sync`]), to be made outside the store's lock while the caller still
    /// holds the workspace's (nothing else writes this journal meanwhile).
    pub fn append_deferred(
        &self,
        ws_id: &str,
        op: &IndexOp,
        before: &WorkspaceIndex,
    ) -> Result<IndexSync, StateError> {
        let files = self.files(ws_id)?;
        let index_len = match fs::metadata(&files.base) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.write_full(ws_id, before)?;
                0
            }
            Err(e) => return Err(StateError::io(&files.base, e)),
        };
        let journal_len = files.journal_len();
        if journal_len > COMPACT_MIN_JOURNAL_BYTES.max(index_len) {
            // Fold what is recorded so far; a failure leaves the journal as it was.
            match install(&files, before) {
                Ok(()) => tracing::debug!(ws_id, journal_len, "compacted index journal"),
                Err(e) => tracing::warn!(ws_id, error = %e, "index compaction failed; will retry"),
            }
        }
        let line = serde_json::to_vec(op).map_err(|e| StateError::Encode {
            path: files.journal.clone(),
            source: e,
        })?;
        let pending = files.append_line_deferred(&line)?;
        tracing::debug!(ws_id, journal = %files.journal.display(), "appended index op");
        Ok(IndexSync(pending))
    }

    /// Append `op` without `fdatasync` and without compaction, for a line whose loss in a
    /// power cut is harmless ([`IndexOp::Confirm`]). Needs the journal's base to exist (it
    /// does once the op it confirms was appended).
    pub fn append_unsynced(&self, ws_id: &str, op: &IndexOp) -> Result<(), StateError> {
        let files = self.files(ws_id)?;
        let line = serde_json::to_vec(op).map_err(|e| StateError::Encode {
            path: files.journal.clone(),
            source: e,
        })?;
        files.append_line_synced(&line, false)
    }

    /// The journal of workspace `ws_id` (it may not exist).
    pub fn journal_path(&self, ws_id: &str) -> Result<PathBuf, StateError> {
        Ok(self.files(ws_id)?.journal)
    }

    /// Write `index.json` atomically from `index` and remove the journal (creating directories
    /// as needed). Crash-safe: the result is either the old or the new index.
    pub fn write_full(&self, ws_id: &str, index: &WorkspaceIndex) -> Result<(), StateError> {
        let files = self.files(ws_id)?;
        fs::create_dir_all(&files.dir).map_err(|e| StateError::io(&files.dir, e))?;
        install(&files, index)
    }

    /// Remove the workspace's index directory; `Ok` when absent. Atomic: the directory is first
    /// renamed to a hidden name that [`IndexStore::list`] ignores.
    pub fn remove(&self, ws_id: &str) -> Result<(), StateError> {
        let dir = self.checked_dir(ws_id)?;
        let tomb = self.root.join(format!(".{ws_id}.removing"));
        remove_dir_optional(&tomb)?;
        match fs::rename(&dir, &tomb) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StateError::io(&dir, e)),
        }
        fsync_dir(&self.root).map_err(|e| StateError::io(&self.root, e))?;
        remove_dir_optional(&tomb)?;
        tracing::debug!(ws_id, "removed index");
        Ok(())
    }

    /// The workspace IDs that have an index directory, sorted.
    pub fn list(&self) -> Result<Vec<String>, StateError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StateError::io(&self.root, e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StateError::io(&self.root, e))?;
            let is_dir = entry
                .file_type()
                .map_err(|e| StateError::io(&entry.path(), e))?
                .is_dir();
            if let Some(name) = entry.file_name().to_str() {
                if is_dir && crate::ids::is_valid_ws_id(name) {
                    ids.push(name.to_string());
                }
            }
        }
        ids.sort();
        Ok(ids)
    }
}

/// Make every line appended so far to the journal at `path` durable (`fdatasync`). A missing
/// journal has nothing to make durable: the compaction that removed it wrote its lines into
/// `index.json`, durably, first.
pub fn sync_journal(path: &Path) -> Result<(), StateError> {
    match fs::File::open(path) {
        Ok(f) => f.sync_data().map_err(|e| StateError::io(path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StateError::io(path, e)),
    }
}

/// A loaded index, its snapshot map shrunk to its size: the map grows by doubling while it is
/// read, and the daemon keeps every index for as long as it runs.
fn loaded(mut index: WorkspaceIndex) -> IndexLoad {
    index.snapshots.shrink_to_fit();
    IndexLoad::Loaded(index)
}

fn remove_dir_optional(path: &Path) -> Result<(), StateError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StateError::io(path, e)),
    }
}

/// Write `index.json` from `index` and drop the journal (see [`JournalFiles::install`]).
fn install(files: &JournalFiles, index: &WorkspaceIndex) -> Result<(), StateError> {
    let mut bytes = serde_json::to_vec_pretty(index).map_err(|e| StateError::Encode {
        path: files.base.clone(),
        source: e,
    })?;
    bytes.push(b'\n');
    files.install(&bytes)
}

/// Move `index.json` and the journal aside and report `Corrupt`.
fn corrupt(dir: &Path, now: SystemTime, error: String) -> Result<IndexLoad, StateError> {
    let mut moved = Vec::new();
    for name in [INDEX_FILE, JOURNAL_FILE] {
        let path = dir.join(name);
        if fs::symlink_metadata(&path).is_ok() {
            moved.push(move_aside(&path, "corrupt", now).map_err(|e| StateError::io(&path, e))?);
        }
    }
    let moved_to = moved
        .first()
        .cloned()
        .unwrap_or_else(|| dir.join(INDEX_FILE));
    tracing::warn!(
        dir = %dir.display(),
        moved_to = %moved_to.display(),
        %error,
        "index is corrupt; moved aside, it will be rebuilt from the snapshot subvolumes"
    );
    Ok(IndexLoad::Corrupt { moved_to, error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_000_000)
    }

    fn entry(i: usize) -> SnapshotEntry {
        let mut e = SnapshotEntry::new(Timestamp::parse(format!(
            "2026-11-24T15:{:02}:{:02}Z",
            (i / 60) % 60,
            i % 60
        )));
        if matches!(i % 3, 0) {
            e.set_message(Some(format!("checkpoint {i}")));
        }
        e
    }

    fn put(id: &str, i: usize) -> IndexOp {
        IndexOp::Put {
            id: id.to_string(),
            entry: entry(i),
        }
    }

    fn load_ok(store: &IndexStore, ws: &str) -> WorkspaceIndex {
        match store.load(ws, now()).unwrap() {
            IndexLoad::Loaded(i) => i,
            other => panic!("expected Loaded, got {other:?}"),
        }
    }

    /// Append `op`, then apply it in memory, like the store does.
    fn record(store: &IndexStore, ws: &str, index: &mut WorkspaceIndex, op: IndexOp) {
        store.append(ws, &op, index).unwrap();
        index.apply(&op);
    }

    fn journal_lines(store: &IndexStore, ws: &str) -> usize {
        match fs::read(store.dir(ws).join(JOURNAL_FILE)) {
            Ok(b) => b.iter().filter(|c| **c == b'\n').count(),
            Err(_) => 0,
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn spec_format_parses_and_round_trips() {
        let text = r#"{"workspace_path": "/tmp/perf/wsA", "snapshots": {
            "c1": {"message": null, "metadata": null, "pinned": false, "created_at": "2026-11-24T15:07:42Z", "missing": false},
            "b0": {"message": "m", "metadata": {"k": [1]}, "pinned": true, "created_at": "2026-11-24T15:08:00Z", "missing": true,
                   "future": 1},
            "a9": {"message": null, "metadata": null, "created_at": "2026-11-24T15:09:00Z"}},
            "future_top": "kept"}"#;
        let idx = parse_index(text.as_bytes()).unwrap();
        assert_eq!(idx.workspace_path, Path::new("/tmp/perf/wsA"));
        let ids: Vec<&str> = idx.snapshots.keys().map(String::as_str).collect();
        assert_eq!(ids, ["c1", "b0", "a9"], "file order, not sorted");
        assert!(idx.snapshots["b0"].pinned && idx.snapshots["b0"].missing);
        assert_eq!(idx.snapshots["b0"].metadata(), Some(json!({"k": [1]})));
        assert!(!idx.snapshots["a9"].pinned && !idx.snapshots["a9"].missing);

        let out: Value = serde_json::to_value(&idx).unwrap();
        assert_eq!(out["future_top"], json!("kept"));
        assert_eq!(out["snapshots"]["b0"]["future"], json!(1));
        assert_eq!(
            out["snapshots"]["c1"],
            json!({"message": null, "metadata": null, "pinned": false,
                   "created_at": "2026-11-24T15:07:42Z", "missing": false})
        );
        let keys: Vec<&String> = out["snapshots"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["c1", "b0", "a9"]);
        assert_eq!(
            parse_index(&serde_json::to_vec(&idx).unwrap()).unwrap(),
            idx
        );
        assert!(
            parse_index(br#"{"snapshots": {}}"#).is_err(),
            "workspace_path is required"
        );
    }

    #[test]
    fn ops_have_the_documented_json_form() {
        assert_eq!(
            serde_json::to_value(IndexOp::Remove { id: "c1".into() }).unwrap(),
            json!({"op": "remove", "id": "c1"})
        );
        assert_eq!(
            serde_json::to_value(IndexOp::SetWorkspacePath { path: "/w".into() }).unwrap(),
            json!({"op": "set-workspace-path", "path": "/w"})
        );
        let v = serde_json::to_value(put("c1", 1)).unwrap();
        assert_eq!(v["op"], json!("put"));
        assert_eq!(v["entry"]["pinned"], json!(false));
    }

    #[test]
    fn apply_keeps_creation_order() {
        let mut idx = WorkspaceIndex::new("/w".into());
        for id in ["z", "a", "m", "b"] {
            idx.apply(&put(id, 0));
        }
        idx.apply(&IndexOp::Remove { id: "a".into() });
        idx.apply(&IndexOp::Remove {
            id: "absent".into(),
        });
        let mut pinned = entry(1);
        pinned.pinned = true;
        idx.apply(&IndexOp::Put {
            id: "z".into(),
            entry: pinned,
        });
        idx.apply(&IndexOp::SetWorkspacePath { path: "/v".into() });
        let ids: Vec<&str> = idx.snapshots.keys().map(String::as_str).collect();
        assert_eq!(ids, ["z", "m", "b"]);
        assert!(idx.snapshots["z"].pinned, "replaced in place");
        assert_eq!(idx.workspace_path, Path::new("/v"));
    }

    #[test]
    fn append_load_write_full_remove_list() {
        let td = tempfile::tempdir().unwrap();
        let store = IndexStore::new(td.path());
        assert_eq!(store.dir("ws-1"), td.path().join("indexes/ws-1"));
        assert!(store.list().unwrap().is_empty());
        assert!(matches!(
            store.load("ws-1", now()).unwrap(),
            IndexLoad::Missing
        ));

        let mut idx = WorkspaceIndex::new("/w1".into());
        record(&store, "ws-1", &mut idx, put("c1", 1));
        // The first append writes the (empty) index.json, then journals the op.
        assert_eq!(names(&store.dir("ws-1")), [INDEX_FILE, JOURNAL_FILE]);
        assert_eq!(journal_lines(&store, "ws-1"), 2, "header + 1 op");
        for i in 2..=5 {
            record(&store, "ws-1", &mut idx, put(&format!("c{i}"), i));
        }
        record(
            &store,
            "ws-1",
            &mut idx,
            IndexOp::Remove { id: "c3".into() },
        );
        assert_eq!(journal_lines(&store, "ws-1"), 1 + 6, "header + 6 ops");
        assert_eq!(load_ok(&store, "ws-1"), idx);

        store.write_full("ws-1", &idx).unwrap();
        assert_eq!(names(&store.dir("ws-1")), [INDEX_FILE]);
        assert_eq!(load_ok(&store, "ws-1"), idx);
        record(&store, "ws-1", &mut idx, put("c6", 6));
        assert_eq!(load_ok(&store, "ws-1"), idx);

        store
            .write_full("ws-2", &WorkspaceIndex::new("/w2".into()))
            .unwrap();
        fs::create_dir_all(store.root().join("not an id")).unwrap();
        fs::write(store.root().join("ws-file"), b"").unwrap();
        assert_eq!(store.list().unwrap(), ["ws-1", "ws-2"]);
        store.remove("ws-1").unwrap();
        store.remove("ws-1").unwrap();
        assert!(matches!(
            store.load("ws-1", now()).unwrap(),
            IndexLoad::Missing
        ));
        assert_eq!(store.list().unwrap(), ["ws-2"]);
        assert_eq!(names(store.root()), ["not an id", "ws-2", "ws-file"]);
    }

    #[test]
    fn ids_are_validated_before_paths_are_built() {
        let td = tempfile::tempdir().unwrap();
        let store = IndexStore::new(td.path());
        let idx = WorkspaceIndex::new("/w".into());
        for bad in ["", "..", ".", "../../etc", "a/b", "-x", &"a".repeat(129)] {
            assert!(
                matches!(store.load(bad, now()), Err(StateError::InvalidWsId { .. })),
                "{bad}"
            );
            assert!(store.append(bad, &put("c", 0), &idx).is_err(), "{bad}");
            assert!(store.write_full(bad, &idx).is_err(), "{bad}");
            assert!(store.remove(bad).is_err(), "{bad}");
        }
        assert!(!store.root().exists());
    }

    #[test]
    fn ten_thousand_appends_compact_and_stay_bounded() {
        let td = tempfile::tempdir().unwrap();
        let store = IndexStore::new(td.path());
        let ws = "ws-4612d8";
        let mut idx = WorkspaceIndex::new("/tmp/perf/wsA".into());
        let mut max_journal = 0u64;
        let mut compactions = 0usize;
        let mut last_lines = 0usize;
        for i in 0..10_000 {
            record(&store, ws, &mut idx, put(&format!("c{i:05}"), i));
            let lines = journal_lines_cheap(&store, ws, i);
            if let Some(lines) = lines {
                if lines < last_lines {
                    compactions += 1;
                }
                last_lines = lines;
            }
            let j = fs::metadata(store.dir(ws).join(JOURNAL_FILE)).map_or(0, |m| m.len());
            let x = fs::metadata(store.dir(ws).join(INDEX_FILE)).unwrap().len();
            // The journal never outgrows max(threshold, index.json) by more than one line.
            assert!(
                j <= COMPACT_MIN_JOURNAL_BYTES.max(x) + 512,
                "i={i} journal={j} index={x}"
            );
            max_journal = max_journal.max(j);
        }
        assert!(compactions >= 3, "compactions: {compactions}");
        // The journal holds at most about as many ops as index.json holds entries (or the
        // minimum threshold's worth): replaying it is never worse than reading index.json.
        let ops = journal_lines(&store, ws).saturating_sub(1);
        let compacted = parse_index(&fs::read(store.dir(ws).join(INDEX_FILE)).unwrap()).unwrap();
        let in_index = compacted.snapshots.len();
        assert_eq!(in_index + ops, 10_000);
        assert!(
            ops <= in_index * 3 / 2 + 600,
            "journal ops {ops}, index entries {in_index}"
        );
        assert!(in_index >= 4_000, "index.json holds {in_index}");
        let loaded = load_ok(&store, ws);
        assert_eq!(loaded, idx);
        let ids: Vec<String> = loaded.snapshots.keys().cloned().collect();
        let expected: Vec<String> = (0..10_000).map(|i| format!("c{i:05}")).collect();
        assert_eq!(ids, expected, "creation order preserved");
        // Deletes go through the journal too.
        for i in (0..10_000).step_by(7) {
            record(
                &store,
                ws,
                &mut idx,
                IndexOp::Remove {
                    id: format!("c{i:05}"),
                },
            );
        }
        assert_eq!(load_ok(&store, ws), idx);
        assert!(max_journal > 0);
    }

    /// Count journal lines every 50 appends (counting each time would be quadratic).
    fn journal_lines_cheap(store: &IndexStore, ws: &str, i: usize) -> Option<usize> {
        matches!(i % 50, 0).then(|| journal_lines(store, ws))
    }

    #[test]
    fn every_prefix_of_an_append_loads_as_before_or_after() {
        let td = tempfile::tempdir().unwrap();
        let store = IndexStore::new(td.path());
        let ws = "ws-1";
        let mut idx = WorkspaceIndex::new("/w".into());
        for i in 0..3 {
            record(&store, ws, &mut idx, put(&format!("c{i}"), i));
        }
        let before = idx.clone();
        let journal_path = store.dir(ws).join(JOURNAL_FILE);
        let base = fs::read(&journal_path).unwrap();
        let op = put("c3", 3);
        let mut line = serde_json::to_vec(&op).unwrap();
        line.push(b'\n');
        let mut after = before.clone();
        after.apply(&op);
        for k in 0..=line.len() {
            let mut torn = base.clone();
            torn.extend_from_slice(&line[..k]);
            fs::write(&journal_path, &torn).unwrap();
            let expected = if k == line.len() { &after } else { &before };
            assert_eq!(&load_ok(&store, ws), expected, "prefix {k}");
        }
        // After a torn tail, the next append starts on a clean line.
        let mut torn = base.clone();
        torn.extend_from_slice(&line[..line.len() / 2]);
        fs::write(&journal_path, &torn).unwrap();
        let mut idx = before.clone();
        record(&store, ws, &mut idx, put("c9", 9));
        assert_eq!(load_ok(&store, ws), idx);
        assert!(!idx.snapshots.contains_key("c3"));
    }

    #[test]
    fn interrupted_compaction_loads_the_compacted_state() {
        let td = tempfile::tempdir().unwrap();
        let store = IndexStore::new(td.path());
        let ws = "ws-1";
        let mut idx = WorkspaceIndex::new("/w".into());
        record(&store, ws, &mut idx, put("a", 0));
        // Remove then re-put "a": replaying this over the compacted index would reorder it, so
        // a naive "replay is idempotent" design would load a different order.
        record(&store, ws, &mut idx, IndexOp::Remove { id: "a".into() });
        record(&store, ws, &mut idx, put("a", 1));
        record(&store, ws, &mut idx, put("n", 2));
        let journal_path = store.dir(ws).join(JOURNAL_FILE);
        let old_journal = fs::read(&journal_path).unwrap();
        assert_eq!(load_ok(&store, ws), idx);

        // Crash after index.json was rewritten but before the journal went away.
        store.write_full(ws, &idx).unwrap();
        fs::write(&journal_path, &old_journal).unwrap();
        assert_eq!(load_ok(&store, ws), idx);
        let ids: Vec<&str> = idx.snapshots.keys().map(String::as_str).collect();
        assert_eq!(ids, ["a", "n"]);
        // load dropped the stale journal.
        assert_eq!(names(&store.dir(ws)), [INDEX_FILE]);

        // Same crash, but the next call is an append without a load in between: the stale
        // journal is detected cheaply and restarted, so the new op is not lost.
        store.write_full(ws, &idx).unwrap();
        fs::write(&journal_path, &old_journal).unwrap();
        record(&store, ws, &mut idx, put("z", 3));
        assert_eq!(load_ok(&store, ws), idx);

        // Replaying Put/Remove over an index that already contains them changes nothing.
        let mut twice = idx.clone();
        for op in [
            put("z", 3),
            IndexOp::Remove { id: "gone".into() },
            put("n", 2),
        ] {
            twice.apply(&op);
        }
        assert_eq!(twice, idx);
    }

    #[test]
    fn index_rewritten_by_hand_with_same_bytes_keeps_the_journal() {
        let td = tempfile::tempdir().unwrap();
        let store = IndexStore::new(td.path());
        let ws = "ws-1";
        let mut idx = WorkspaceIndex::new("/w".into());
        record(&store, ws, &mut idx, put("a", 0));
        record(&store, ws, &mut idx, put("b", 1));
        // Same content, new inode (e.g. restored from a copy).
        let index_path = store.dir(ws).join(INDEX_FILE);
        let bytes = fs::read(&index_path).unwrap();
        fs::remove_file(&index_path).unwrap();
        fs::write(store.dir(ws).join("other"), b"take the old inode").unwrap();
        fs::write(&index_path, &bytes).unwrap();
        record(&store, ws, &mut idx, put("c", 2));
        assert_eq!(load_ok(&store, ws), idx);
        assert_eq!(idx.snapshots.len(), 3);
    }

    #[test]
    fn write_full_back_to_the_journal_base_is_atomic() {
        let td = tempfile::tempdir().unwrap();
        let store = IndexStore::new(td.path());
        let ws = "ws-1";
        let mut idx = WorkspaceIndex::new("/w".into());
        record(&store, ws, &mut idx, put("a", 0));
        let base = idx.clone();
        record(&store, ws, &mut idx, put("b", 1));
        // Writing exactly the journal's base must not let the journal re-apply "b".
        store.write_full(ws, &base).unwrap();
        assert_eq!(load_ok(&store, ws), base);
    }

    #[test]
    fn corrupt_index_or_journal_is_moved_aside() {
        let td = tempfile::tempdir().unwrap();
        let store = IndexStore::new(td.path());
        let ws = "ws-1";
        let dir = store.dir(ws);
        let stamp = crate::time::format_rfc3339(now()).replace(['-', ':'], "");

        // Unparsable index.json.
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(INDEX_FILE), b"{\"workspace_path\": ").unwrap();
        match store.load(ws, now()).unwrap() {
            IndexLoad::Corrupt { moved_to, error } => {
                assert_eq!(moved_to, dir.join(format!("index.json.corrupt-{stamp}")));
                assert_eq!(fs::read(&moved_to).unwrap(), b"{\"workspace_path\": ");
                assert!(error.contains(INDEX_FILE), "{error}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(matches!(store.load(ws, now()).unwrap(), IndexLoad::Missing));

        // A bad line in the middle of the journal.
        let mut idx = WorkspaceIndex::new("/w".into());
        for i in 0..4 {
            record(&store, ws, &mut idx, put(&format!("c{i}"), i));
        }
        let journal_path = dir.join(JOURNAL_FILE);
        let good = fs::read(&journal_path).unwrap();
        let text = String::from_utf8(good.clone()).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.insert(2, "{\"op\": \"explode\"}");
        let bad = lines.join("\n") + "\n";
        fs::write(&journal_path, &bad).unwrap();
        let index_bytes = fs::read(dir.join(INDEX_FILE)).unwrap();
        match store.load(ws, now()).unwrap() {
            IndexLoad::Corrupt { moved_to, error } => {
                assert!(error.contains("line 3"), "{error}");
                assert_eq!(fs::read(&moved_to).unwrap(), index_bytes);
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert_eq!(
            fs::read(dir.join(format!("journal.jsonl.corrupt-{stamp}"))).unwrap(),
            bad.as_bytes()
        );
        assert!(matches!(store.load(ws, now()).unwrap(), IndexLoad::Missing));

        // A journal without index.json.
        fs::write(&journal_path, &good).unwrap();
        assert!(matches!(
            store.load(ws, now()).unwrap(),
            IndexLoad::Corrupt { .. }
        ));
        assert!(!journal_path.exists());

        // A garbage header: load moves it aside, append refuses rather than losing the op.
        store.write_full(ws, &idx).unwrap();
        fs::write(&journal_path, b"garbage\n").unwrap();
        let err = store.append(ws, &put("x", 1), &idx).unwrap_err();
        assert!(matches!(err, StateError::CorruptJournal { .. }), "{err}");
        assert!(matches!(
            store.load(ws, now()).unwrap(),
            IndexLoad::Corrupt { .. }
        ));
        // Every moved file is still there.
        let kept = names(&dir)
            .iter()
            .filter(|n| n.contains(".corrupt-"))
            .count();
        assert_eq!(kept, 6);
    }

    #[test]
    fn a_checkpoint_intent_counts_once_a_later_line_follows_it() {
        let td = tempfile::tempdir().unwrap();
        let store = IndexStore::new(td.path());
        let ws = "ws-1";
        let mut idx = WorkspaceIndex::new("/w".into());
        record(&store, ws, &mut idx, put("a", 0));
        let mut pinned = entry(1);
        pinned.pinned = true;
        pinned.set_message(Some("agent step".into()));
        let intent = IndexOp::Checkpoint {
            id: "k".into(),
            entry: pinned.clone(),
        };
        // The last line: unsettled, not listed.
        store.append(ws, &intent, &idx).unwrap();
        let loaded = load_ok(&store, ws);
        assert_eq!(loaded.snapshots.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(loaded.unsettled, Some(("k".to_string(), pinned.clone())));
        // Followed by another line: it completed.
        idx.apply(&intent);
        record(&store, ws, &mut idx, put("b", 2));
        let loaded = load_ok(&store, ws);
        assert_eq!(loaded.unsettled, None);
        // Listed as recorded, with the lineage links the intent line carries.
        let k = &loaded.snapshots["k"];
        assert_eq!(
            (k.message(), k.pinned, &k.created_at),
            (pinned.message(), pinned.pinned, &pinned.created_at)
        );
        assert_eq!(loaded.head(), Some("k"));
        assert_eq!(loaded, idx);
        // Withdrawn by a remove line.
        store
            .append(
                ws,
                &IndexOp::Checkpoint {
                    id: "gone".into(),
                    entry: entry(3),
                },
                &idx,
            )
            .unwrap();
        let withdrawal = super::super::lineage::withdraw(&idx, "gone");
        record(&store, ws, &mut idx, withdrawal);
        let loaded = load_ok(&store, ws);
        assert!(!loaded.snapshots.contains_key("gone"));
        assert_eq!(loaded, idx);
        // Never folded into index.json as a plain entry while unsettled.
        assert_eq!(
            serde_json::to_value(IndexOp::Checkpoint {
                id: "k".into(),
                entry: entry(0)
            })
            .unwrap()["op"],
            "checkpoint"
        );
    }
}
