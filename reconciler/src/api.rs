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
    /// Roll a workspace back to a snapshot: named (`snapshot`: an ID or a unique prefix of
    /// one) or counted back along the lineage (`ancestors`: 1 = the snapshot the live
    /// workspace descends from). Exactly one of the two.
    Rollback {
        /// Workspace path or ws_id.
        workspace: String,
        /// Target snapshot ID, or a prefix matching exactly one.
        #[serde(default)]
        snapshot: Option<String>,
        /// Target = the N-th snapshot back along the lineage (N >= 1).
        #[serde(default)]
        ancestors: Option<u32>,
        /// Roll back even when processes use the workspace.
        #[serde(default)]
        force: bool,
        /// Only report what would change (the diff from the target to the live workspace).
        #[serde(default)]
        preview: bool,
    },
    /// List snapshots (all workspaces when `workspace` is absent), optionally one page at a
    /// time (`limit` and/or `cursor`: the result then carries `next_cursor`).
    List {
        /// Workspace path or ws_id.
        #[serde(default)]
        workspace: Option<String>,
        /// At most this many snapshots (1..=10000).
        #[serde(default)]
        limit: Option<u32>,
        /// Where the previous page ended (its `next_cursor`).
        #[serde(default)]
        cursor: Option<String>,
        /// `"json"`: answer with what `list --format json` prints ([`Reply::Printed`])
        /// instead of the [`ListResult`](crate::ops::ListResult). Absent on the wire when
        /// not asked for, so a daemon that does not know it is only sent it when asked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<ListOutput>,
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
        /// Only report what would be deleted.
        #[serde(default)]
        dry_run: bool,
    },
    /// Delete old snapshots now.
    Cleanup {
        /// Workspace path or ws_id.
        workspace: String,
        /// `N` (keep the N newest unpinned) or an age like `30d`; default: the workspace's policy.
        #[serde(default)]
        keep: Option<String>,
        /// Only report what would be deleted.
        #[serde(default)]
        dry_run: bool,
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
        /// Convert it even while processes have their working directory inside.
        #[serde(default)]
        force: bool,
    },
    /// Turn a workspace back into a plain directory.
    Release {
        /// Workspace path.
        path: PathBuf,
    },
    /// What `recover` (release) would act on: one workspace (path or ws_id), or every
    /// workspace the caller may release; each with the snapshots that would be deleted.
    RecoverPreview {
        /// Workspace path or ws_id; every workspace when absent.
        #[serde(default)]
        workspace: Option<String>,
    },
    /// Upstream's `config`: the overview (no scope), the global settings (`global`) or one
    /// workspace's retention policy (`workspace`), each optionally changed first: a
    /// comment-preserving edit of the config file that sets the value, then a reload.
    Config {
        /// The workspace (path or ws_id) whose policy is shown or changed.
        #[serde(default)]
        workspace: Option<String>,
        /// The global settings.
        #[serde(default)]
        global: bool,
        /// What to change (nothing: only show).
        #[serde(default)]
        change: ConfigChange,
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
            Request::RecoverPreview { .. } => "recover-preview",
            Request::Config { .. } => "config",
            Request::Status { .. } => "status",
            Request::Plan { .. } => "plan",
            Request::Apply { .. } => "apply",
            Request::Reload => "reload",
        }
    }

    /// True for operations that change something (audited; refused while blocked).
    pub fn is_mutating(&self) -> bool {
        match self {
            Request::List { .. }
            | Request::Status { .. }
            | Request::Plan { .. }
            | Request::Diff { .. }
            | Request::RecoverPreview { .. } => false,
            Request::Rollback { preview, .. } => !preview,
            Request::Delete { dry_run, .. } | Request::Cleanup { dry_run, .. } => !dry_run,
            Request::Config { change, .. } => !change.is_empty(),
            _ => true,
        }
    }

    /// Validate every snapshot ID the request names (before any path is built from one),
    /// and that a rollback names exactly one target.
    pub fn check_ids(&self) -> Result<()> {
        if let Request::Rollback {
            snapshot,
            ancestors,
            ..
        } = self
        {
            if snapshot.is_some() == ancestors.is_some() {
                return Err(crate::error::Error::new(
                    crate::error::ErrorCode::InvalidArgument,
                    "rollback needs exactly one of --snapshot ID and --num-ancestors N",
                ));
            }
        }
        match self {
            Request::Checkpoint {
                snapshot: Some(s), ..
            }
            | Request::Rollback {
                snapshot: Some(s), ..
            }
            | Request::Delete { snapshot: s, .. } => check_snapshot_id(s),
            Request::Diff { from, to, .. } => {
                check_snapshot_id(from)?;
                to.as_deref().map_or(Ok(()), check_snapshot_id)
            }
            _ => Ok(()),
        }
    }
}

/// The printed form a `list` request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListOutput {
    /// `list --format json`: upstream's array of items (or, paged, one page of them).
    Json,
}

/// A change requested by `config` (upstream's flags). Each `Some` sets one setting; `reset`
/// (workspace scope only) removes the workspace's own values so that it inherits the global
/// ones again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigChange {
    /// `--enable-auto-cleanup` (true) / `--disable-auto-cleanup` (false).
    pub auto_cleanup: Option<bool>,
    /// `--auto-cleanup-keep`: a count (`20`; `0` = disable auto-cleanup) or an age (`30d`).
    pub keep: Option<String>,
    /// `--auto-cleanup-interval SECS` (global only).
    pub interval_secs: Option<u64>,
    /// `--health-check-interval SECS` (global only): the periodic reconcile pass.
    pub health_check_secs: Option<u64>,
    /// `--img-size GB` (global only).
    pub img_size_gb: Option<u64>,
    /// `--img-max-percent P` (global only).
    pub img_max_percent: Option<u32>,
    /// `--reset` (workspace only).
    pub reset: bool,
}

impl ConfigChange {
    /// True when nothing is to be changed (a view).
    pub fn is_empty(&self) -> bool {
        *self == ConfigChange::default()
    }

    /// True when a setting that only exists globally is to be changed.
    pub fn has_global_only(&self) -> bool {
        self.interval_secs.is_some()
            || self.health_check_secs.is_some()
            || self.img_size_gb.is_some()
            || self.img_max_percent.is_some()
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

/// The result of a request on its way to the caller: a JSON value, or (for results too large
/// to go through a [`serde_json::Value`] cheaply, such as a `list` of thousands of
/// snapshots) the same JSON already written as text. Both mean the same JSON document.
/// A request that asks for its printed form gets [`Reply::Printed`] instead.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A JSON value.
    Value(serde_json::Value),
    /// Compact JSON text of one value.
    Json(String),
    /// What the command prints, as it prints it (`list` with `output`). As a JSON value it
    /// is that text as one string.
    Printed(Vec<u8>),
}

impl Reply {
    /// The result written once as compact JSON text (no intermediate [`serde_json::Value`]).
    pub fn json_of<T: Serialize>(v: &T) -> Result<Reply> {
        serde_json::to_string(v).map(Reply::Json).map_err(|e| {
            crate::error::Error::new(
                crate::error::ErrorCode::Io,
                format!("cannot encode result: {e}"),
            )
        })
    }

    /// The value, when this reply holds one (text replies are not parsed for this).
    pub fn as_value(&self) -> Option<&serde_json::Value> {
        match self {
            Reply::Value(v) => Some(v),
            Reply::Json(_) | Reply::Printed(_) => None,
        }
    }

    /// The reply as a `T` (decoded once, from the value or from the text).
    pub fn decode<T: serde::de::DeserializeOwned>(self) -> Result<T> {
        let decoded = match self {
            Reply::Value(v) => serde_json::from_value(v),
            Reply::Json(t) => serde_json::from_str(&t),
            Reply::Printed(t) => {
                serde_json::from_value(String::from_utf8_lossy(&t).into_owned().into())
            }
        };
        decoded.map_err(|e| {
            crate::error::Error::new(
                crate::error::ErrorCode::Io,
                format!("unexpected result from ws-ckpt: {e}"),
            )
        })
    }

    /// Append the reply's compact JSON text to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Value(v) => {
                // Writing a Value into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, v);
            }
            Reply::Json(t) => out.extend_from_slice(t.as_bytes()),
            Reply::Printed(t) => {
                let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(t));
            }
        }
    }
}

impl From<serde_json::Value> for Reply {
    fn from(v: serde_json::Value) -> Reply {
        Reply::Value(v)
    }
}
