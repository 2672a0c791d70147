//! In-memory model shared by observe, resolve, plan and execute: what is persisted
//! (state.json plus the indexes, decoded; the multi-step operations in flight are part of
//! state.json, see `state::pending`) and what was observed of the live system.
//!
//! Data only. No I/O here.

use crate::state::{PendingOp, StateFile, WorkspaceIndex};
use crate::sys::{FsUsage, LoopDevice, MountEntry};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Something wrong with the persisted state file itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateProblem {
    /// state.json was unreadable and has been moved aside; the state is being rebuilt.
    Corrupt {
        /// Where the damaged file now is.
        moved_to: PathBuf,
        /// Parse error.
        error: String,
    },
    /// state.json was written by a newer ws-ckpt; it is left alone and nothing may change.
    NewerVersion {
        /// Version found.
        version: u32,
        /// The file.
        path: PathBuf,
    },
}

/// Persisted state: state.json (if any) and every workspace index.
#[derive(Debug, Clone, Default)]
pub struct Persisted {
    /// Path of state.json.
    pub state_path: PathBuf,
    /// Decoded state.json; `None` when there is none (fresh host, or moved aside).
    pub state: Option<StateFile>,
    /// A problem found while loading it.
    pub problem: Option<StateProblem>,
    /// ws_id → index (from `<state_dir>/indexes`). Shared, so that a copy of the whole
    /// persisted state (for a plan) costs nothing per snapshot; replaced when it changes.
    pub indexes: BTreeMap<String, Arc<WorkspaceIndex>>,
    /// Indexes that were corrupt and moved aside: ws_id → moved-to path.
    pub corrupt_indexes: BTreeMap<String, PathBuf>,
}

impl Persisted {
    /// The pending operations recorded in state.json (decoded when it was loaded; the ones
    /// this version cannot read are in [`crate::state::StateFile::undecodable_pending`]).
    pub fn pending(&self) -> Vec<&PendingOp> {
        self.state.iter().flat_map(|s| s.pending_ops()).collect()
    }
}

/// Identity and size of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    /// Apparent size in bytes.
    pub size: u64,
    /// st_dev.
    pub dev: u64,
    /// st_ino.
    pub ino: u64,
}

/// What is at a path (never following a final symlink).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathState {
    /// Nothing.
    Missing,
    /// A symlink.
    Symlink {
        /// Its target, verbatim.
        target: PathBuf,
        /// Whether the target resolves.
        target_exists: bool,
    },
    /// A real directory.
    Dir {
        /// Owner.
        uid: u32,
        /// True when it has no entries.
        empty: bool,
    },
    /// A regular file or anything else.
    Other,
}

/// The mounted storage of the effective backend.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StorageView {
    /// Mount source (device).
    pub device: String,
    /// Usage of the filesystem.
    pub usage: FsUsage,
    /// data_root exists.
    pub data_root_exists: bool,
    /// snapshots_root exists.
    pub snapshots_root_exists: bool,
    /// Names of the subvolumes directly under data_root.
    pub workspace_subvols: BTreeSet<String>,
    /// ws_id → names of the snapshot subvolumes under `<snapshots_root>/<ws_id>`.
    pub snapshots: BTreeMap<String, BTreeSet<String>>,
    /// Legacy (v0) indexes found at `<snapshots_root>/<ws_id>/index.json`.
    pub v0_indexes: BTreeMap<String, WorkspaceIndex>,
    /// ws_id → subvolumes nested inside that workspace (relative paths), recorded ones only.
    pub nested: BTreeMap<String, Vec<PathBuf>>,
}

/// Everything the planner knows about the live system.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// `/proc/self/mountinfo`.
    pub mounts: Vec<MountEntry>,
    /// Attached loop devices.
    pub loops: Vec<LoopDevice>,
    /// The configured loop image, if present.
    pub image: Option<FileInfo>,
    /// The pre-FHS loop image, if present.
    pub legacy_image: Option<FileInfo>,
    /// Usage of the filesystem holding the image's directory.
    pub image_host_usage: Option<FsUsage>,
    /// A detected btrfs-base filesystem (SPEC §6.2).
    pub base_candidate: Option<PathBuf>,
    /// Storage of the effective backend when it is mounted.
    pub storage: Option<StorageView>,
    /// Why storage could not be observed, when it could not.
    pub storage_error: Option<String>,
    /// lstat of every path of interest (workspace paths, temporary names of pending operations).
    pub paths: BTreeMap<PathBuf, PathState>,
    /// Which temporary/pending subvolume paths exist as subvolumes.
    pub subvols: BTreeMap<PathBuf, bool>,
}

impl Observed {
    /// State of a path that was observed (Missing when it was not asked for).
    pub fn path(&self, p: &Path) -> &PathState {
        self.paths.get(p).unwrap_or(&PathState::Missing)
    }

    /// Whether a path observed with [`Observed::subvols`] is a subvolume.
    pub fn is_subvol(&self, p: &Path) -> bool {
        self.subvols.get(p).copied().unwrap_or(false)
    }

    /// The mount entry at exactly `mount_point` (topmost), if any.
    pub fn mount_at(&self, mount_point: &Path) -> Option<&MountEntry> {
        self.mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == mount_point)
    }
}
