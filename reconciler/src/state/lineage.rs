//! Snapshot lineage, as ws-ckpt 0.4+ records it: each snapshot names the snapshot the live
//! workspace descended from when it was taken (`parent_id`), each snapshot lists the ones
//! taken from it (`child_ids`, where the sentinel [`LIVE_CHILD`] marks the one the live
//! workspace descends from now), and the index names that one as its `head`. A checkpoint
//! becomes the head; a rollback makes its target the head; deleting a snapshot links its
//! children to its parent. `rollback -n N` follows the chain: 1 = the head, 2 = its parent…
//!
//! The fields keep upstream's names and places in `index.json` (inside each entry, and `head`
//! at the top level; in memory they live in the entries, see `state::entry`, and in the index's
//! `extra`), so an index we write stays readable by a 0.5.0 daemon and one it wrote drives `-n` here.
//!
//! Pure: each function reads an index and returns the one [`IndexOp`] that applies a change
//! with its links kept consistent (a `Batch`, appended as one journal line). It never decides
//! what to snapshot, roll back or delete.

use super::entry::{CHILDREN, PARENT};
use super::index::{IndexOp, SnapshotEntry, WorkspaceIndex};
use serde_json::Value;
use std::collections::BTreeMap;

/// The `child_ids` entry of the snapshot the live workspace descends from.
pub const LIVE_CHILD: &str = "__live__";

const HEAD: &str = "head";

impl SnapshotEntry {
    fn set_parent_id(&mut self, parent: Option<&str>) {
        match parent {
            Some(p) => self.put_parent(Some(p)),
            None => {
                // Present-but-null is how 0.5.0 writes a root; absent is how 0.3 wrote every
                // entry. Either reads as "no parent"; keep whichever the entry had.
                if self.has_field(PARENT) {
                    self.put_parent(None);
                }
            }
        }
    }

    fn set_child_ids(&mut self, children: &[String]) {
        if children.is_empty() && !self.has_field(CHILDREN) {
            return;
        }
        self.put_children(children);
    }

    fn owned_children(&self) -> Vec<String> {
        self.child_ids().into_iter().map(str::to_string).collect()
    }
}

impl WorkspaceIndex {
    /// The snapshot the live workspace descends from (set by checkpoint and rollback), when
    /// it is recorded.
    pub fn head(&self) -> Option<&str> {
        self.extra
            .get(HEAD)
            .and_then(Value::as_str)
            .filter(|h| self.snapshots.contains_key(*h))
    }

    pub(super) fn set_head(&mut self, head: Option<&str>) {
        match head {
            Some(h) => {
                self.extra.insert(HEAD.into(), Value::from(h));
            }
            None => {
                if self.extra.contains_key(HEAD) {
                    self.extra.insert(HEAD.into(), Value::Null);
                }
            }
        }
    }
}

/// Entries changed by one lineage update, written out as `Put`s in ID order.
struct Changes<'a> {
    index: &'a WorkspaceIndex,
    changed: BTreeMap<String, SnapshotEntry>,
}

impl<'a> Changes<'a> {
    fn new(index: &'a WorkspaceIndex) -> Self {
        Changes {
            index,
            changed: BTreeMap::new(),
        }
    }

    /// The entry `id` as changed so far (`None` when not recorded).
    fn entry(&mut self, id: &str) -> Option<&mut SnapshotEntry> {
        if !self.changed.contains_key(id) {
            let e = self.index.snapshots.get(id)?.clone();
            self.changed.insert(id.to_string(), e);
        }
        self.changed.get_mut(id)
    }

    fn edit_children(&mut self, id: &str, f: impl FnOnce(&mut Vec<String>)) {
        if let Some(e) = self.entry(id) {
            let mut c = e.owned_children();
            f(&mut c);
            e.set_child_ids(&c);
        }
    }

    fn into_ops(self) -> Vec<IndexOp> {
        self.changed
            .into_iter()
            .map(|(id, entry)| IndexOp::Put { id, entry })
            .collect()
    }
}

fn push_unique(v: &mut Vec<String>, id: &str) {
    if !v.iter().any(|c| c == id) {
        v.push(id.to_string());
    }
}

/// Record the new snapshot `id` (its `entry` as created): its parent is the current head, it
/// becomes the head and the live workspace's parent.
pub fn checkpoint(index: &WorkspaceIndex, id: &str, mut entry: SnapshotEntry) -> IndexOp {
    let parent = index.head().filter(|h| *h != id).map(str::to_string);
    let mut ch = Changes::new(index);
    if let Some(p) = &parent {
        ch.edit_children(p, |c| {
            c.retain(|x| x != LIVE_CHILD);
            push_unique(c, id);
        });
    }
    entry.set_parent_id(parent.as_deref());
    if entry.parent_id().is_none() {
        // A root: written as 0.5.0 writes one.
        entry.put_parent(None);
    }
    entry.set_child_ids(&[LIVE_CHILD.to_string()]);
    let mut ops = ch.into_ops();
    ops.push(IndexOp::Put {
        id: id.to_string(),
        entry,
    });
    ops.push(IndexOp::SetHead {
        head: Some(id.to_string()),
    });
    IndexOp::Batch { ops }
}

/// The live workspace now equals snapshot `target` (a rollback): it becomes the head.
pub fn rolled_back_to(index: &WorkspaceIndex, target: &str) -> IndexOp {
    let mut ch = Changes::new(index);
    if let Some(h) = index.head().filter(|h| *h != target).map(str::to_string) {
        ch.edit_children(&h, |c| c.retain(|x| x != LIVE_CHILD));
    }
    ch.edit_children(target, |c| push_unique(c, LIVE_CHILD));
    let mut ops = ch.into_ops();
    ops.push(IndexOp::SetHead {
        head: Some(target.to_string()),
    });
    IndexOp::Batch { ops }
}

/// Withdraw the checkpoint intent `id` that was recorded against `index` but never listed
/// (its snapshot was not made): `index` does not hold it, but a replay of the journal applies
/// the intent's lineage links before this line, so the line puts the head and its entry back
/// as `index` has them, and removes `id`. Applied to `index` itself it changes nothing.
pub fn withdraw(index: &WorkspaceIndex, id: &str) -> IndexOp {
    let head = index.head().map(str::to_string);
    let mut ops = Vec::new();
    if let Some(h) = &head {
        if let Some(e) = index.snapshots.get(h) {
            ops.push(IndexOp::Put {
                id: h.clone(),
                entry: e.clone(),
            });
        }
    }
    ops.push(IndexOp::Remove { id: id.to_string() });
    ops.push(IndexOp::SetHead { head });
    IndexOp::Batch { ops }
}

/// Remove snapshot `id`, linking its children to its parent (and moving the head to the
/// parent when it was the head).
pub fn remove(index: &WorkspaceIndex, id: &str) -> IndexOp {
    let remove = IndexOp::Remove { id: id.to_string() };
    let Some(gone) = index.snapshots.get(id) else {
        return remove;
    };
    let parent = gone
        .parent_id()
        .filter(|p| *p != id && index.snapshots.contains_key(*p))
        .map(str::to_string);
    // Children by either side of the link (an index edited by hand may have only one).
    let mut children: Vec<String> = gone
        .child_ids()
        .into_iter()
        .filter(|c| *c != LIVE_CHILD && *c != id && index.snapshots.contains_key(*c))
        .map(str::to_string)
        .collect();
    for (cid, e) in &index.snapshots {
        if cid != id && e.parent_id() == Some(id) {
            push_unique(&mut children, cid);
        }
    }
    let was_head = index.head() == Some(id);
    if gone.parent_id().is_none() && children.is_empty() && !was_head {
        return remove;
    }
    let mut ch = Changes::new(index);
    for c in &children {
        if let Some(e) = ch.entry(c) {
            e.set_parent_id(parent.as_deref());
        }
    }
    if let Some(p) = &parent {
        ch.edit_children(p, |pc| {
            pc.retain(|x| x != id);
            for c in &children {
                push_unique(pc, c);
            }
            if was_head {
                push_unique(pc, LIVE_CHILD);
            }
        });
    }
    let mut ops = ch.into_ops();
    if was_head {
        ops.push(IndexOp::SetHead { head: parent });
    }
    ops.push(remove);
    IndexOp::Batch { ops }
}

/// Why `rollback -n N` found no target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AncestorError {
    /// N was 0.
    #[error("--num-ancestors must be at least 1 (1 = the snapshot the workspace descends from)")]
    Zero,
    /// Nothing recorded which snapshot the live workspace descends from.
    #[error("no head set: no lineage is recorded for this workspace yet (it starts with the next checkpoint or rollback); use --snapshot instead")]
    NoHead,
    /// The chain ends before N.
    #[error("lineage chain broken at depth {depth}: snapshot {at} has no recorded parent ({available} snapshot(s) back are available)")]
    Broken {
        /// How many steps back were possible.
        depth: u32,
        /// The last snapshot reached.
        at: String,
        /// The largest N that works.
        available: u32,
    },
}

/// `rollback -n N`: 1 = the head, N = the head's (N-1)-th parent.
pub fn ancestor(index: &WorkspaceIndex, n: u32) -> Result<&str, AncestorError> {
    if n == 0 {
        return Err(AncestorError::Zero);
    }
    let mut at = index.head().ok_or(AncestorError::NoHead)?;
    for depth in 1..n {
        let next = index
            .snapshots
            .get(at)
            .and_then(|e| e.parent_id())
            .filter(|p| index.snapshots.contains_key(*p));
        match next {
            // A cycle (a hand-edited index) ends the walk like a missing parent.
            Some(p) if depth < index.snapshots.len() as u32 => at = p,
            _ => {
                return Err(AncestorError::Broken {
                    depth,
                    at: at.to_string(),
                    available: depth,
                })
            }
        }
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;
    use serde_json::json;

    fn entry() -> SnapshotEntry {
        SnapshotEntry::new(Timestamp::parse("2026-07-01T10:00:00Z"))
    }

    fn take(index: &mut WorkspaceIndex, id: &str) {
        let op = checkpoint(index, id, entry());
        index.apply(&op);
    }

    fn children(index: &WorkspaceIndex, id: &str) -> Vec<String> {
        index.snapshots[id]
            .child_ids()
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_checkpoint_intent_line_links_the_lineage_and_a_withdrawal_undoes_it_on_replay() {
        let mut before = WorkspaceIndex::new("/w".into());
        take(&mut before, "a");
        take(&mut before, "b");
        // As a journal replays them: the intent, then its withdrawal computed from memory
        // (which never listed the intent).
        let mut replayed = before.clone();
        replayed.apply(&IndexOp::Checkpoint {
            id: "c".into(),
            entry: entry(),
        });
        assert_eq!(replayed.head(), Some("c"));
        assert_eq!(children(&replayed, "b"), ["c"]);
        assert_eq!(replayed.snapshots["c"].parent_id(), Some("b"));
        replayed.apply(&withdraw(&before, "c"));
        assert_eq!(replayed.head(), Some("b"));
        assert_eq!(replayed.snapshots, before.snapshots);
        // Applied to memory itself, the withdrawal changes nothing.
        let mut same = before.clone();
        same.apply(&withdraw(&before, "c"));
        assert_eq!(same.snapshots, before.snapshots);
        assert_eq!(same.head(), before.head());
    }

    #[test]
    fn checkpoints_chain_and_move_the_live_marker() {
        let mut idx = WorkspaceIndex::new("/w".into());
        take(&mut idx, "a");
        take(&mut idx, "b");
        take(&mut idx, "c");
        assert_eq!(idx.head(), Some("c"));
        assert_eq!(idx.snapshots["a"].parent_id(), None);
        assert_eq!(idx.snapshots["b"].parent_id(), Some("a"));
        assert_eq!(children(&idx, "a"), ["b"]);
        assert_eq!(children(&idx, "c"), [LIVE_CHILD]);
        assert_eq!(ancestor(&idx, 1), Ok("c"));
        assert_eq!(ancestor(&idx, 3), Ok("a"));
        assert_eq!(
            ancestor(&idx, 4),
            Err(AncestorError::Broken {
                depth: 3,
                at: "a".into(),
                available: 3
            })
        );
        assert_eq!(ancestor(&idx, 0), Err(AncestorError::Zero));
        // The on-disk form is upstream's.
        let v = serde_json::to_value(&idx).unwrap();
        assert_eq!(v["head"], json!("c"));
        assert_eq!(v["snapshots"]["a"]["parent_id"], json!(null));
        assert_eq!(v["snapshots"]["b"]["parent_id"], json!("a"));
        assert_eq!(v["snapshots"]["c"]["child_ids"], json!(["__live__"]));
    }

    #[test]
    fn rollback_moves_the_head_and_new_snapshots_branch_from_it() {
        let mut idx = WorkspaceIndex::new("/w".into());
        take(&mut idx, "c1");
        take(&mut idx, "c2");
        idx.apply(&rolled_back_to(&idx, "c1"));
        assert_eq!(idx.head(), Some("c1"));
        assert_eq!(children(&idx, "c2"), Vec::<String>::new());
        assert_eq!(children(&idx, "c1"), ["c2", LIVE_CHILD]);
        take(&mut idx, "c3");
        assert_eq!(idx.snapshots["c3"].parent_id(), Some("c1"));
        assert_eq!(children(&idx, "c1"), ["c2", "c3"]);
        assert_eq!(ancestor(&idx, 2), Ok("c1"));
    }

    #[test]
    fn removal_relinks_children_and_moves_the_head() {
        let mut idx = WorkspaceIndex::new("/w".into());
        for id in ["a", "b", "c"] {
            take(&mut idx, id);
        }
        idx.apply(&remove(&idx, "b"));
        assert!(!idx.snapshots.contains_key("b"));
        assert_eq!(idx.snapshots["c"].parent_id(), Some("a"));
        assert_eq!(children(&idx, "a"), ["c"]);
        assert_eq!(idx.head(), Some("c"));
        idx.apply(&remove(&idx, "c"));
        assert_eq!(idx.head(), Some("a"));
        assert_eq!(children(&idx, "a"), [LIVE_CHILD]);
        idx.apply(&remove(&idx, "a"));
        assert!(idx.snapshots.is_empty());
        assert_eq!(idx.head(), None);
        assert!(matches!(ancestor(&idx, 1), Err(AncestorError::NoHead)));
    }

    #[test]
    fn entries_without_lineage_stay_byte_identical() {
        // A 0.3 index: no lineage fields; removing an entry writes none.
        let mut idx = WorkspaceIndex::new("/w".into());
        idx.snapshots.insert("x".into(), entry());
        idx.snapshots.insert("y".into(), entry());
        let op = remove(&idx, "x");
        assert_eq!(op, IndexOp::Remove { id: "x".into() });
        idx.apply(&op);
        let v = serde_json::to_value(&idx).unwrap();
        assert!(v.get("head").is_none() && v["snapshots"]["y"].get("parent_id").is_none());
    }

    #[test]
    fn a_hand_made_cycle_ends_the_walk() {
        let mut idx = WorkspaceIndex::new("/w".into());
        take(&mut idx, "a");
        take(&mut idx, "b");
        let mut a = idx.snapshots["a"].clone();
        a.set_parent_id(Some("b"));
        idx.apply(&IndexOp::Put {
            id: "a".into(),
            entry: a,
        });
        assert!(matches!(
            ancestor(&idx, 5),
            Err(AncestorError::Broken { .. })
        ));
    }
}
