//! Findings: what the planner (and the backend resolution) tells the operator, with a kind, a
//! severity, what is wrong and how to fix it (SPEC §4).
//!
//! Data only: nothing here observes or decides; the rules that produce findings live in
//! `resolve` and `plan`.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Severity of a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational.
    Info,
    /// Degraded but working.
    Warning,
    /// Something cannot work until fixed.
    Error,
}

/// Kinds of findings (SPEC §4), as shown by the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// The effective backend cannot be realized while workspaces are recorded on it.
    BackendConflict,
    /// A workspace's storage is gone.
    StorageUnavailable,
    /// Recorded but declared nowhere.
    UndeclaredWorkspace,
    /// The declared path is occupied by something ws-ckpt must not overwrite.
    PathOccupied,
    /// state.json is from a newer ws-ckpt.
    NewerStateVersion,
    /// A subvolume inside a workspace.
    NestedSubvolume,
    /// Very many snapshots in one workspace.
    AdvisorySnapshotCount,
    /// The filesystem is nearly full.
    AdvisoryFsUsage,
    /// state.json or an index was corrupt, moved aside and rebuilt.
    StateRebuilt,
    /// A declared path may not become a workspace.
    InvalidPath,
    /// The config asks for a smaller image than exists.
    ImageShrinkRefused,
    /// Two copies exist and ws-ckpt will not choose between them.
    Ambiguous,
    /// state.json records an interrupted operation this version cannot read.
    UnreadableOperation,
    /// The directory holding a workspace path is no longer the one recorded (or cannot be
    /// reached without following a symlink): nothing is done there until it is back.
    ParentReplaced,
    /// An action keeps failing; it is retried with exponential backoff.
    ActionFailing,
    /// A subvolume, directory or temporary ws-ckpt made that no record explains.
    Orphan,
    /// The filesystem does not support POSIX ACLs: a storage gate lets in only its owner.
    AclUnsupported,
}

/// Something the operator should know; no automatic action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// What kind of problem this is (stable, kebab-case in JSON).
    pub kind: FindingKind,
    /// How bad it is; `Error` findings make `apply` fail and `status` degrade.
    pub severity: Severity,
    /// The workspace it is about, when it is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws_id: Option<String>,
    /// The path it is about (the workspace path for workspace findings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// What is wrong, naming the path or ID.
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

impl Finding {
    /// A finding about nothing in particular (the backend, the host).
    pub(crate) fn new(
        kind: FindingKind,
        severity: Severity,
        message: String,
        hint: String,
    ) -> Self {
        Finding {
            kind,
            severity,
            ws_id: None,
            path: None,
            message,
            hint,
        }
    }

    /// The same finding, about workspace `ws_id` at `path`.
    pub(crate) fn ws(mut self, ws_id: &str, path: &Path) -> Self {
        self.ws_id = Some(ws_id.to_string());
        self.path = Some(path.to_path_buf());
        self
    }

    /// True for findings that block every mutating operation.
    pub fn is_blocking(&self) -> bool {
        matches!(
            self.kind,
            FindingKind::BackendConflict | FindingKind::NewerStateVersion
        )
    }
}
