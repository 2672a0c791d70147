//! The audit log: one JSON line per mutating request in `<state_dir>/audit.jsonl` (time,
//! caller uid/pid, operation, workspace, snapshot, result).
//!
//! Best effort: a failure to write is logged, never fails the request.

use crate::api::{Caller, Request};
use crate::error::Result;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Append the audit line for `req` (mutating requests only).
pub fn record(
    state_dir: &Path,
    caller: &Caller,
    req: &Request,
    result: &Result<serde_json::Value>,
) {
    if !req.is_mutating() {
        return;
    }
    let (workspace, snapshot) = match req {
        Request::Checkpoint {
            workspace,
            snapshot,
            ..
        } => (Some(workspace.clone()), snapshot.clone()),
        Request::Rollback {
            workspace,
            snapshot,
            ..
        } => (Some(workspace.clone()), snapshot.clone()),
        Request::Delete {
            workspace,
            snapshot,
            ..
        } => (workspace.clone(), Some(snapshot.clone())),
        Request::Cleanup { workspace, .. } => (Some(workspace.clone()), None),
        Request::Init { path, .. } | Request::Release { path } => {
            (Some(path.display().to_string()), None)
        }
        Request::Config { workspace, .. } => (workspace.clone(), None),
        _ => (None, None),
    };
    // The generated snapshot ID is only known from the result.
    let snapshot = snapshot.or_else(|| {
        result
            .as_ref()
            .ok()
            .and_then(|v| v.get("snapshot"))
            .and_then(|s| s.as_str())
            .map(str::to_string)
    });
    let line = serde_json::json!({
        "time": crate::time::format_rfc3339_nanos(std::time::SystemTime::now()),
        "uid": caller.uid,
        "pid": caller.pid,
        "op": req.op(),
        "workspace": workspace,
        "snapshot": snapshot,
        "result": match result { Ok(_) => "ok".to_string(), Err(e) => format!("{:?}", e.code) },
    });
    let path = state_dir.join("audit.jsonl");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the audit log");
    }
}
