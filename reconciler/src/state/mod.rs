//! Persisted state (SPEC §3): `<state_dir>/state.json` and the per-workspace snapshot indexes
//! under `<state_dir>/indexes`, plus the one atomic-write helper every persisted file uses.
//!
//! These are the on-disk serde types, separate from the in-memory model; they stay
//! field-for-field compatible with ws-ckpt 0.3 and keep unknown fields. This module must not
//! observe the system or decide anything from what it reads: it loads, saves, and moves
//! unreadable files aside (never deletes them).

use std::io;
use std::path::{Path, PathBuf};

pub mod atomic;
mod entry;
pub mod files;
pub mod index;
pub(crate) mod journal;
pub mod lineage;
pub mod pending;
pub mod pending_journal;
pub mod record;
pub mod statefile;

pub use atomic::{fsync_dir, move_aside, write_atomic, write_atomic_mode, DEFAULT_FILE_MODE};
pub use files::{tidy_state_dir, StateDirs, Tidied};
pub use index::{
    parse_index, IndexLoad, IndexOp, IndexStore, SnapshotEntry, WorkspaceIndex,
    COMPACT_MIN_JOURNAL_BYTES, INDEX_FILE, JOURNAL_FILE,
};
pub use pending::{InitPhase, PendingEntry, PendingKind, PendingOp, ReleasePhase, RollbackPhase};
pub use pending_journal::{PendingChange, StateJournal, STATE_JOURNAL_FILE};
pub use record::CheckpointNote;
pub use statefile::{
    load_state, save_state, ActionFailure, BackendIdentity, BackendPaths, BackendType, LoopImage,
    ParentRecord, SelectionMethod, StateFile, StateLoad, WorkspaceEntry, STATE_FILE_MODE,
    STATE_VERSION,
};

/// Error reading or writing persisted state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file or directory could not be read, written, renamed or removed.
    #[error("cannot access {path}: {source}; check that it exists and is writable by root")]
    Io {
        /// The path acted on.
        path: PathBuf,
        /// Underlying OS error.
        #[source]
        source: io::Error,
    },
    /// The state file on disk comes from a newer ws-ckpt; it is never overwritten.
    #[error(
        "{path} was written by a newer ws-ckpt (state version {version}, this version supports \
         {STATE_VERSION}); upgrade ws-ckpt, or move the file away to let this version rebuild \
         the state from the disk"
    )]
    NewerVersion {
        /// The state file.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
    /// Data could not be encoded as JSON (not expected to happen).
    #[error("cannot encode {path} as JSON: {source}")]
    Encode {
        /// The file being written.
        path: PathBuf,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// A workspace ID that is not safe to use as a path component.
    #[error(
        "invalid workspace id {ws_id:?}: it must match {} and not be \"snapshots\" or \"gates\" (e.g. \
         ws-4612d8)",
        crate::ids::WS_ID_RULE
    )]
    InvalidWsId {
        /// The rejected ID.
        ws_id: String,
    },
    /// An index journal whose header cannot be read; appending to it would lose the change.
    #[error(
        "index journal {path} is unreadable ({error}); run `ws-ckpt apply` to move it aside \
         and rebuild the index from the snapshots"
    )]
    CorruptJournal {
        /// The journal.
        path: PathBuf,
        /// What is wrong with it.
        error: String,
    },
}

impl StateError {
    /// An [`StateError::Io`] on `path`.
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        StateError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<StateError> for crate::error::Error {
    fn from(e: StateError) -> Self {
        crate::error::Error::new(crate::error::ErrorCode::Io, e.to_string())
    }
}
