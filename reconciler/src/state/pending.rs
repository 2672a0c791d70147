//! The multi-step operations in flight (SPEC §5.6), as `state.json` → `pending` records them:
//! each phase is written durably before the first irreversible step of the next.
//!
//! Decoded once, when the state is loaded. An entry this version cannot decode (written by a
//! newer ws-ckpt, or damaged) is kept verbatim, written back unchanged and reported by the
//! planner; it is never silently dropped.

use super::statefile::ParentRecord;
use crate::tree::Identity;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::path::PathBuf;

/// A multi-step operation whose phase is recorded durably before its first irreversible step
/// (SPEC §5.6). Stored as JSON in `state.json` → `pending`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOp {
    /// Unique operation ID (also part of every temporary name it uses).
    pub op_id: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// What it is and how far it got.
    #[serde(flatten)]
    pub kind: PendingKind,
}

/// The operations that can be interrupted, each with the exact names it uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "kebab-case")]
pub enum PendingKind {
    /// Directory → workspace.
    Init {
        /// Workspace ID.
        ws_id: String,
        /// User path.
        path: PathBuf,
        /// The new workspace subvolume.
        subvol: PathBuf,
        /// Sibling name used for the swap: a symlink before it, the original directory after.
        tmp: PathBuf,
        /// How far it got.
        phase: InitPhase,
        /// The directory holding `path`, as opened (without following a symlink) before
        /// anything was done; every later step works in that directory only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<ParentRecord>,
        /// Identity of the original directory: what is exchanged, then removed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        original: Option<Identity>,
        /// Owner of the original directory; the copy, the verification and the removal run
        /// with that user's credentials.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<u32>,
    },
    /// Workspace → plain directory.
    Release {
        /// Workspace ID.
        ws_id: String,
        /// User path.
        path: PathBuf,
        /// The workspace subvolume.
        subvol: PathBuf,
        /// Sibling name: the copy before the swap, the old symlink after.
        tmp: PathBuf,
        /// How far it got.
        phase: ReleasePhase,
        /// The directory holding `path` (see `Init`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<ParentRecord>,
        /// Identity of the copy (the directory created at `tmp`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        copy: Option<Identity>,
        /// Identity of the workspace symlink at `path` when the release began.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        link: Option<Identity>,
        /// Owner of the workspace; the copy runs with that user's credentials.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<u32>,
    },
    /// Move of a pre-FHS image to its new path.
    MigrateImage {
        /// Old image path.
        from: PathBuf,
        /// New image path.
        to: PathBuf,
        /// Temporary file next to `to` used when copying across filesystems.
        tmp: PathBuf,
    },
    /// Online growth of the loop image.
    GrowImage {
        /// Image file.
        image: PathBuf,
        /// Target size.
        to_bytes: u64,
    },
    /// Rollback of a workspace to a snapshot.
    Rollback {
        /// Workspace ID.
        ws_id: String,
        /// Target snapshot ID.
        snapshot: String,
        /// The workspace subvolume (`<data_root>/<ws_id>`).
        subvol: PathBuf,
        /// Writable snapshot of the target, created beside the workspace subvolume.
        tmp: PathBuf,
        /// How far it got.
        phase: RollbackPhase,
        /// Subvolume (tree) id of the live workspace subvolume when the rollback began. With
        /// it, recovery tells whether the exchange happened and finishes the rollback either
        /// way (the reply does not wait for the exchange's commit); without it (records of
        /// earlier versions), recovery keeps whichever subvolume holds the workspace's name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        live_tree: Option<u64>,
    },
    /// Deletion of snapshots (delete, cleanup, retention).
    DeleteSnapshots {
        /// Workspace ID.
        ws_id: String,
        /// Snapshot IDs being deleted.
        snapshots: Vec<String>,
    },
}

/// Phases of an init.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitPhase {
    /// Subvolume being created and filled; the original is untouched.
    Copying,
    /// Copy verified; the swap may have happened.
    Verified,
}

/// Phases of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleasePhase {
    /// Copy being made; the workspace is untouched.
    Copying,
    /// Copy verified; the swap may have happened.
    Verified,
    /// The swap happened and the plain directory was verified again: the workspace
    /// subvolume, its snapshots and its storage gate are being deleted. The workspace is
    /// forgotten only after those deletions are committed.
    Deleting,
}

/// Phases of a rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RollbackPhase {
    /// Writable snapshot of the target being made. Once it exists it is complete (a snapshot
    /// is made atomically) and the exchange may have happened: it is not recorded apart (one
    /// fdatasync less before the reply; recovery treats both phases alike).
    Snapshotting,
    /// The writable snapshot is complete; the exchange may have happened (written by
    /// versions before 0.4.1; read as [`RollbackPhase::Snapshotting`] is).
    Ready,
}

impl PendingKind {
    /// Workspace this operation belongs to.
    pub fn ws_id(&self) -> Option<&str> {
        match self {
            PendingKind::Init { ws_id, .. }
            | PendingKind::Release { ws_id, .. }
            | PendingKind::Rollback { ws_id, .. }
            | PendingKind::DeleteSnapshots { ws_id, .. } => Some(ws_id),
            PendingKind::MigrateImage { .. } | PendingKind::GrowImage { .. } => None,
        }
    }

    /// Operation name as shown to users.
    pub fn name(&self) -> &'static str {
        match self {
            PendingKind::Init { .. } => "init",
            PendingKind::Release { .. } => "release",
            PendingKind::MigrateImage { .. } => "migrate-image-path",
            PendingKind::GrowImage { .. } => "grow-image",
            PendingKind::Rollback { .. } => "rollback",
            PendingKind::DeleteSnapshots { .. } => "delete",
        }
    }
}

/// One entry of `state.json` → `pending`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingEntry {
    /// An operation this version knows.
    Op(PendingOp),
    /// An entry it cannot decode, kept as it was.
    Undecodable {
        /// The entry verbatim.
        value: Value,
        /// Why it does not decode.
        error: String,
    },
}

impl PendingEntry {
    /// The operation, when this version can read it.
    pub fn op(&self) -> Option<&PendingOp> {
        match self {
            PendingEntry::Op(op) => Some(op),
            PendingEntry::Undecodable { .. } => None,
        }
    }
}

impl Serialize for PendingEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PendingEntry::Op(op) => op.serialize(s),
            PendingEntry::Undecodable { value, .. } => value.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for PendingEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Ok(match PendingOp::deserialize(&value) {
            Ok(op) => PendingEntry::Op(op),
            Err(e) => PendingEntry::Undecodable {
                error: e.to_string(),
                value,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn known_operations_decode_and_unknown_ones_survive_verbatim() {
        let known = json!({"op_id": "o1", "started_at": "2026-11-24T15:07:42Z",
            "operation": "delete-snapshots", "ws_id": "ws-1", "snapshots": ["c1"]});
        let unknown = json!({"op_id": "o2", "operation": "teleport", "ws_id": "ws-2"});
        let entries: Vec<PendingEntry> =
            serde_json::from_value(json!([known.clone(), unknown.clone()])).unwrap();
        assert!(matches!(
            &entries[0],
            PendingEntry::Op(PendingOp {
                kind: PendingKind::DeleteSnapshots { .. },
                ..
            })
        ));
        match &entries[1] {
            PendingEntry::Undecodable { value, error } => {
                assert_eq!(*value, unknown);
                assert!(error.contains("started_at"), "{error}");
            }
            other => panic!("decoded {other:?}"),
        }
        assert_eq!(
            serde_json::to_value(&entries).unwrap(),
            json!([known, unknown])
        );
    }
}
