//! The request vocabulary: every operation as one serde type, used identically by the CLI
//! in-process and over the daemon's socket (SPEC §7.2); who is asking ([`Caller`]); and what a
//! request was resolved to ([`Target`]) before it is authorized and run.
//!
//! Data and ID validation only. The one path every request takes (resolve, authorize, audit,
//! execute) is `handler`; authorization is `auth`; the operations are `ops` and `engine`.

use crate::error::Result;
use crate::ids::check_snapshot_id;
use crate::state::WorkspaceEntry;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Current protocol version (`"v"` in every request).
pub const PROTOCOL_VERSION: u32 = 1;

/// One request. JSON: `{"v":1,"op":"checkpoint","workspace":"/home/a/p", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Read-only snapshot of a workspace (initializes a plain directory first).
    Checkpoint {
        /// Workspace path or ws_id.
        workspace: String,
        /// Snapshot ID (generated when absent).
        #[serde(default)]
        snapshot: Option<String>,
        /// Message.
        #[serde(default)]
        message: Option<String>,
        /// Free-form JSON metadata.
        #[serde(default)]
        metadata: Option<serde_json::Value>,
        /// Pin (never deleted by retention).
        #[serde(default)]
        pin: bool,
    },
    /// Roll a workspace back to a snapshot.
    Rollback {
        /// Workspace path or ws_id.
        workspace: String,
        /// Target snapshot ID.
        snapshot: String,
        /// Roll back even when processes use the workspace.
        #[serde(default)]
        force: bool,
    },
    /// List snapshots (all workspaces when `workspace` is absent).
    List {
        /// Workspace path or ws_id.
        #[serde(default)]
        workspace: Option<String>,
    },
    /// Delete one snapshot.
    Delete {
        /// Workspace (optional when the ID is unique).
        #[serde(default)]
        workspace: Option<String>,
        /// Snapshot ID.
        snapshot: String,
        /// Also pinned or MISSING entries.
        #[serde(default)]
        force: bool,
    },
    /// Delete old snapshots now.
    Cleanup {
        /// Workspace path or ws_id.
        workspace: String,
        /// `N` (keep the N newest unpinned) or an age like `30d`; default: the workspace's policy.
        #[serde(default)]
        keep: Option<String>,
    },
    /// Differences between two snapshots, or a snapshot and the live workspace.
    Diff {
        /// Workspace path or ws_id.
        workspace: String,
        /// Older snapshot.
        from: String,
        /// Newer snapshot; the live workspace when absent.
        #[serde(default)]
        to: Option<String>,
    },
    /// Declare and convert a directory.
    Init {
        /// Directory.
        path: PathBuf,
    },
    /// Turn a workspace back into a plain directory.
    Release {
        /// Workspace path.
        path: PathBuf,
    },
    /// Health report.
    Status {
        /// Only this workspace.
        #[serde(default)]
        workspace: Option<String>,
    },
    /// What apply would do.
    Plan {
        /// Include releasing undeclared workspaces.
        #[serde(default)]
        prune: bool,
    },
    /// Converge.
    Apply {
        /// Change nothing.
        #[serde(default)]
        check: bool,
        /// Release undeclared workspaces.
        #[serde(default)]
        prune: bool,
    },
    /// Re-read the config and run a pass (daemon).
    Reload,
}

impl Request {
    /// The op name as on the wire.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Checkpoint { .. } => "checkpoint",
            Request::Rollback { .. } => "rollback",
            Request::List { .. } => "list",
            Request::Delete { .. } => "delete",
            Request::Cleanup { .. } => "cleanup",
            Request::Diff { .. } => "diff",
            Request::Init { .. } => "init",
            Request::Release { .. } => "release",
            Request::Status { .. } => "status",
            Request::Plan { .. } => "plan",
            Request::Apply { .. } => "apply",
            Request::Reload => "reload",
        }
    }

    /// True for operations that change something (audited; refused while blocked).
    pub fn is_mutating(&self) -> bool {
        !matches!(
            self,
            Request::List { .. }
                | Request::Status { .. }
                | Request::Plan { .. }
                | Request::Diff { .. }
        )
    }

    /// Validate every snapshot ID the request names (before any path is built from one).
    pub fn check_ids(&self) -> Result<()> {
        match self {
            Request::Checkpoint {
                snapshot: Some(s), ..
            }
            | Request::Rollback { snapshot: s, .. }
            | Request::Delete { snapshot: s, .. } => check_snapshot_id(s),
            Request::Diff { from, to, .. } => {
                check_snapshot_id(from)?;
                to.as_deref().map_or(Ok(()), check_snapshot_id)
            }
            _ => Ok(()),
        }
    }
}

/// Who is asking: from `SO_PEERCRED` on the socket, or the current process in-process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Caller {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Process ID.
    pub pid: i32,
}

impl Caller {
    /// The current process.
    pub fn this_process() -> Caller {
        Caller {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            pid: std::process::id() as i32,
        }
    }
    /// root, as this process (for lookups that see everything).
    pub fn this_process_as_root() -> Caller {
        Caller {
            uid: 0,
            gid: 0,
            pid: std::process::id() as i32,
        }
    }

    /// True for root.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// Arguments of a checkpoint, once its workspace is resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointArgs {
    /// Snapshot ID; generated when absent.
    pub snapshot: Option<String>,
    /// Message.
    pub message: Option<String>,
    /// JSON metadata.
    pub metadata: Option<serde_json::Value>,
    /// Pin it.
    pub pin: bool,
}

/// Receives progress of long copies: (what is being copied, how far it got).
pub type Progress<'a> = &'a mut dyn FnMut(&str, &crate::tree::Progress);

/// A recorded workspace as a request named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressed {
    /// The recorded workspace.
    pub entry: WorkspaceEntry,
    /// True when the request named it by its ws_id rather than by its path (SPEC §4 rule 5:
    /// snapshots of a detached workspace stay manageable by ID).
    pub by_id: bool,
}

impl Addressed {
    /// `entry` as named by `spec` (its ws_id or its path).
    pub fn new(entry: WorkspaceEntry, spec: &str) -> Addressed {
        let by_id = spec == entry.ws_id;
        Addressed { entry, by_id }
    }

    /// The workspace ID.
    pub fn ws_id(&self) -> &str {
        &self.entry.ws_id
    }
}

/// What a request acts on, resolved once (before authorization) from the names it carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// The host, or every workspace the caller may see (apply, plan, status, list, init).
    Host,
    /// One recorded workspace.
    Workspace(Addressed),
    /// A checkpoint of a path that is not a recorded workspace: initialized first when it is a
    /// directory. `not_found` is the error to report when it is neither.
    Unrecorded {
        /// The path, absolute.
        path: PathBuf,
        /// Why it did not resolve to a workspace.
        not_found: crate::error::Error,
    },
    /// A delete naming no workspace: every recorded workspace whose index holds the snapshot.
    Holders(Vec<WorkspaceEntry>),
}

impl Target {
    /// The one workspace the request works on, when there is one (the daemon serializes
    /// requests per workspace on it).
    pub fn ws_id(&self) -> Option<&str> {
        match self {
            Target::Workspace(w) => Some(w.ws_id()),
            Target::Holders(h) if h.len() == 1 => Some(&h[0].ws_id),
            _ => None,
        }
    }
}
