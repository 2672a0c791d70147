//! The record a checkpoint's snapshot carries: its own index entry, put on the workspace root
//! as an xattr just before the snapshot ioctl, so that the snapshot and the record are
//! committed by one btrfs transaction (see `ops::checkpoint`).

use serde::{Deserialize, Serialize};

/// The record a checkpoint's snapshot carries (xattr `trusted.ws-ckpt.checkpoint`
/// of its root): read back when the snapshot is found without an index entry.
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckpointNote {
    /// Workspace ID.
    pub ws_id: String,
    /// Snapshot ID.
    pub id: String,
    /// The index entry (message, metadata, pin, creation time).
    pub entry: super::SnapshotEntry,
}

/// Largest record put on a snapshot: an xattr value fits in one btrfs leaf (about 16 KiB
/// with the default node size; the kernel refuses larger ones, and the record is then
/// written to the journal first).
pub(crate) const MAX_NOTE_BYTES: usize = 15 * 1024;

impl CheckpointNote {
    /// The entry `bytes` (read from the snapshot `id` of workspace `ws_id`) records, when it
    /// is the record of that very snapshot: a record inherited by a later snapshot (the
    /// workspace root carries the last one, and a rollback copies it back) names another ID.
    pub fn entry_for(bytes: &[u8], ws_id: &str, id: &str) -> Option<super::SnapshotEntry> {
        let note: CheckpointNote = serde_json::from_slice(bytes).ok()?;
        (note.ws_id == ws_id && note.id == id).then_some(note.entry)
    }
}
