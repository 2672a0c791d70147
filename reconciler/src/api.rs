//! The request/response API: every engine operation as one serde type, used identically by
//! the CLI in-process and over the daemon's socket (SPEC §7.2), plus the dispatcher
//! [`Engine::handle`] that authorizes a caller and runs the operation.
//!
//! Results are returned as JSON values so that the CLI prints the same thing whether the
//! engine ran in-process or in the daemon. This module validates and routes; the operations
//! themselves live in `ops` (snapshots) and `engine` (apply, init, release, status).

use crate::engine::{absolute_user_path, ApplyOptions, Engine};
use crate::error::{Error, ErrorCode, Result};
use crate::plan::PlanOptions;
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
    /// True for root.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// Arguments of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointArgs {
    /// Workspace path or ws_id (a plain directory is initialized first).
    pub workspace: String,
    /// Snapshot ID; generated when absent.
    pub snapshot: Option<String>,
    /// Message.
    pub message: Option<String>,
    /// JSON metadata.
    pub metadata: Option<serde_json::Value>,
    /// Pin it.
    pub pin: bool,
}

/// Receives progress of long copies.
pub type Progress<'a> = &'a mut dyn FnMut(&str, &crate::copy::Progress);

fn to_value<T: Serialize>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v)
        .map_err(|e| Error::new(ErrorCode::Io, format!("cannot encode result: {e}")))
}

impl Engine {
    /// Find a recorded workspace by ws_id or by path (relative paths are made absolute; the
    /// final component is not resolved because a workspace path is a symlink).
    pub fn resolve_workspace(&self, spec: &str) -> Result<WorkspaceEntry> {
        let state = self.store.p.state.as_ref();
        if let Some(w) = state.and_then(|s| s.workspace(spec)) {
            return Ok(w.clone());
        }
        if crate::ids::is_valid_ws_id(spec) && spec.starts_with("ws-") {
            return Err(Error::new(
                ErrorCode::WorkspaceNotFound,
                format!("no workspace with ID {spec}"),
            )
            .hint("`ws-ckpt list` shows the workspaces and their IDs"));
        }
        let path = absolute_user_path(std::path::Path::new(spec))?;
        state
            .and_then(|s| s.workspace_by_path(&path))
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::WorkspaceNotFound,
                    format!("{} is not a workspace", path.display()),
                )
                .hint(format!(
                    "`ws-ckpt init {}` makes it one; `ws-ckpt list` shows the workspaces",
                    path.display()
                ))
            })
    }

    /// Authorize and run one request. Mutating requests are refused while a blocking finding
    /// (backend conflict, newer state version) stands.
    pub fn handle(
        &mut self,
        caller: &Caller,
        req: Request,
        progress: Progress<'_>,
    ) -> Result<serde_json::Value> {
        crate::auth::authorize(self, caller, &req)?;
        let result = self.dispatch(caller, req.clone(), progress);
        crate::audit::record(&self.config.daemon.state_dir, caller, &req, &result);
        result
    }

    fn dispatch(
        &mut self,
        caller: &Caller,
        req: Request,
        progress: Progress<'_>,
    ) -> Result<serde_json::Value> {
        match req {
            Request::Checkpoint {
                workspace,
                snapshot,
                message,
                metadata,
                pin,
            } => {
                let args = CheckpointArgs {
                    workspace,
                    snapshot,
                    message,
                    metadata,
                    pin,
                };
                to_value(&self.checkpoint(caller, args, progress)?)
            }
            Request::Rollback {
                workspace,
                snapshot,
                force,
            } => to_value(&self.rollback(&workspace, &snapshot, force)?),
            Request::List { workspace } => to_value(&self.list(caller, workspace.as_deref())?),
            Request::Delete {
                workspace,
                snapshot,
                force,
            } => to_value(&self.delete(caller, workspace.as_deref(), &snapshot, force)?),
            Request::Cleanup { workspace, keep } => {
                to_value(&self.cleanup(&workspace, keep.as_deref())?)
            }
            Request::Diff {
                workspace,
                from,
                to,
            } => to_value(&self.diff(&workspace, &from, to.as_deref())?),
            Request::Init { path } => to_value(&self.init(&path, progress)?),
            Request::Release { path } => to_value(&self.release(&path, progress)?),
            Request::Status { workspace } => {
                let mut st = self.status();
                crate::auth::filter_status(self, caller, &mut st);
                if let Some(w) = workspace {
                    let entry = self.resolve_workspace(&w)?;
                    st.workspaces.retain(|x| x.ws_id == entry.ws_id);
                }
                to_value(&st)
            }
            Request::Plan { prune } => to_value(&self.plan(PlanOptions { prune })),
            Request::Apply { check, prune } => {
                to_value(&self.apply(ApplyOptions { check, prune }, progress))
            }
            Request::Reload => {
                self.reload_config()?;
                to_value(&self.apply(ApplyOptions::default(), progress))
            }
        }
    }
}
