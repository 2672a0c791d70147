//! The engine's error type: a stable machine-readable code (used on the socket and in JSON
//! output), a one-line message naming the path or ID, and a one-line hint.
//!
//! Module-level errors (config, state, sys, copy, lock) convert into it with their context.

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
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

impl From<crate::sys::SysError> for Error {
    fn from(e: crate::sys::SysError) -> Self {
        let hint = matches!(e, crate::sys::SysError::ProgramMissing { .. }).then(|| {
            "install btrfs-progs (apt-get install btrfs-progs / dnf install btrfs-progs)"
                .to_string()
        });
        Error {
            code: ErrorCode::Io,
            message: e.to_string(),
            hint,
        }
    }
}

impl From<crate::state::StateError> for Error {
    fn from(e: crate::state::StateError) -> Self {
        Error::new(ErrorCode::Io, e.to_string())
    }
}

impl From<crate::config::ConfigError> for Error {
    fn from(e: crate::config::ConfigError) -> Self {
        let hint = if e.line.is_some() {
            "fix the file at the position shown; `ws-ckpt config validate` checks it"
        } else {
            "check that the file exists and is readable (`ws-ckpt --config PATH` or WS_CKPT_CONFIG picks another one)"
        };
        Error::new(ErrorCode::ConfigInvalid, e.to_string()).hint(hint)
    }
}

impl From<crate::config::edit::EditError> for Error {
    fn from(e: crate::config::edit::EditError) -> Self {
        Error::new(ErrorCode::ConfigInvalid, e.to_string())
    }
}

impl From<crate::copy::CopyError> for Error {
    fn from(e: crate::copy::CopyError) -> Self {
        Error::new(ErrorCode::OperationFailed, e.to_string())
    }
}

impl From<crate::lock::LockError> for Error {
    fn from(e: crate::lock::LockError) -> Self {
        match e {
            crate::lock::LockError::Held { .. } => Error::new(ErrorCode::Locked, e.to_string())
                .hint("wait for it to finish; if the daemon runs, run the command without root so it goes through the daemon, or stop the daemon"),
            _ => Error::new(ErrorCode::Io, e.to_string()),
        }
    }
}
