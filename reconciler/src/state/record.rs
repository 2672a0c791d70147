//! A checkpoint's record: its own index entry, put as an xattr on the snapshot's directory
//! just before the snapshot ioctl, so that the record is committed by the snapshot's btrfs
//! transaction or an earlier one, and removed once the index line is durable (see
//! `ops::checkpoint`).

use serde::{Deserialize, Serialize};

/// A checkpoint's record (xattr `trusted.ws-ckpt.checkpoint.<digest of the ID>` of its
/// snapshot's directory; earlier builds put it in `trusted.ws-ckpt.checkpoint` of the
/// workspace root, which the snapshot copies): read back when the snapshot is found without
/// an index entry.
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
    /// The entry `bytes` (read for the snapshot `id` of workspace `ws_id`) records, when it
    /// is the record of that very snapshot: a record on a snapshot's root may be inherited
    /// from an earlier checkpoint (a workspace root written by earlier builds carries the
    /// last one, and a rollback copies it back), and then names another ID.
    pub fn entry_for(bytes: &[u8], ws_id: &str, id: &str) -> Option<super::SnapshotEntry> {
        let note: CheckpointNote = serde_json::from_slice(bytes).ok()?;
        (note.ws_id == ws_id && note.id == id).then_some(note.entry)
    }
}
