//! The engine's error type: a stable machine-readable code (used on the socket and in JSON
//! output), a one-line message naming the path or ID, and a one-line hint.
//!
//! Module-level errors (config, state, sys, copy, lock) convert into it with their context;
//! each conversion lives next to the module error it converts, so that this module depends on
//! no other (every module may use it without an import cycle).

use serde::{Deserialize, Serialize};

/// Stable error codes (documented; part of the JSON and IPC contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// Bad argument (ID syntax, path, flag combination).
    InvalidArgument,
    /// The config is invalid.
    ConfigInvalid,
    /// No such workspace.
    WorkspaceNotFound,
    /// No such snapshot.
    SnapshotNotFound,
    /// Snapshot ID already used.
    SnapshotAlreadyExists,
    /// The snapshot's subvolume is gone.
    SnapshotMissing,
    /// The snapshot is pinned.
    SnapshotPinned,
    /// The workspace path no longer resolves to its subvolume.
    WorkspaceDetached,
    /// The workspace's storage is unavailable.
    StorageUnavailable,
    /// A blocking finding (backend conflict, newer state) forbids changes.
    Blocked,
    /// Processes use the workspace.
    Busy,
    /// Another process holds the lock.
    Locked,
    /// The caller may not do this.
    PermissionDenied,
    /// The path cannot be a workspace.
    InvalidPath,
    /// Work failed partway; see message.
    OperationFailed,
    /// An I/O or system error.
    Io,
}

/// An error from an engine operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// Stable code.
    pub code: ErrorCode,
    /// What failed, naming the path or ID.
    pub message: String,
    /// How to fix it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Error {
    /// New error without a hint.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            hint: None,
        }
    }
    /// Add a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    /// An I/O error on a path.
    pub fn io(what: &str, path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Error::new(ErrorCode::Io, format!("{what} {}: {e}", path.display()))
    }

    /// `workspace not found: SPEC` (SPEC as the caller gave it, a path made absolute or a
    /// ws_id). The one answer for a name that is no workspace *and* for another user's
    /// workspace (SPEC §7.2: a caller learns nothing of workspaces it may not use), so it
    /// depends on nothing but `spec`. The words are those upstream's agent plugins match
    /// (docs/compat.md §5): "not found" and "workspace", and never "snapshot".
    pub fn workspace_not_found(spec: &str) -> Self {
        Error::new(ErrorCode::WorkspaceNotFound, format!("workspace not found: {spec}")).hint(
            "check the path or ws_id (`ws-ckpt status` lists your workspaces); `ws-ckpt init PATH` turns a directory into one",
        )
    }

    /// `snapshot not found: ID (workspace WS_ID)`, upstream's phrase.
    pub fn snapshot_not_found(ws_id: &str, id: &str) -> Self {
        Error::new(
            ErrorCode::SnapshotNotFound,
            format!("snapshot not found: {id} (workspace {ws_id})"),
        )
        .hint(format!("`ws-ckpt list -w {ws_id}` shows its snapshots"))
    }

    /// `snapshot id 'ID' already exists in workspace WS_ID`, upstream's phrase.
    pub fn snapshot_exists(ws_id: &str, id: &str) -> Self {
        Error::new(
            ErrorCode::SnapshotAlreadyExists,
            format!("snapshot id '{id}' already exists in workspace {ws_id}"),
        )
        .hint("choose another ID, or omit -s to get a generated one")
    }

    /// `ws-ckpt daemon is not running: nothing answers on SOCKET (WHY)`: the lower-case phrase
    /// both upstream plugins match ("daemon is not running").
    pub fn daemon_not_running(socket: &std::path::Path, why: impl std::fmt::Display) -> Self {
        Error::new(
            ErrorCode::Io,
            format!(
                "ws-ckpt daemon is not running: nothing answers on {} ({why})",
                socket.display()
            ),
        )
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

// The copy module is being replaced (tree/); until then its conversion stays here (copy
// depends on nothing in this crate, so this creates no cycle).
impl From<crate::copy::CopyError> for Error {
    fn from(e: crate::copy::CopyError) -> Self {
        Error::new(ErrorCode::OperationFailed, e.to_string())
    }
}
