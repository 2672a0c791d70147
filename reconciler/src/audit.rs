//! The audit log: one JSON line per mutating request in `<state_dir>/audit.jsonl` (time,
//! caller uid/pid, operation, workspace, snapshot, result). A check (`apply --check`) changes
//! nothing and writes no line.
//!
//! Appended with one `write` and no `fsync` (the log records what happened; the operation's
//! own records are what make it durable). Rotated by size: once `audit.jsonl` would grow past
//! [`MAX_BYTES`] it becomes `audit.jsonl.1` (the older ones shift to `.2` … `.`[`KEEP`], the
//! oldest is dropped), so the log never grows without bound.
//!
//! Best effort: a failure to write is logged, never fails the request.

use crate::api::{Caller, Request};
use crate::error::Result;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// File name of the audit log inside the state directory.
pub const FILE: &str = "audit.jsonl";
/// Size past which the log is rotated.
pub const MAX_BYTES: u64 = 8 << 20;
/// Rotated files kept (`audit.jsonl.1` … `audit.jsonl.KEEP`).
pub const KEEP: u32 = 4;

/// Append the audit line for `req` (mutating requests only).
pub fn record(
    state_dir: &Path,
    caller: &Caller,
    req: &Request,
    result: &Result<crate::api::Reply>,
) {
    if !req.is_mutating() || matches!(req, Request::Apply { check: true, .. }) {
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
            .and_then(crate::api::Reply::as_value)
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
    let path = state_dir.join(FILE);
    if let Err(e) = append(&path, format!("{line}\n").as_bytes(), MAX_BYTES, KEEP) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the audit log");
    }
}

/// Append `line` to `path` in one write, first rotating when the file would grow past `max`
/// (a file that is empty is never rotated, whatever the line's size).
fn append(path: &Path, line: &[u8], max: u64, keep: u32) -> std::io::Result<()> {
    // Rotation and append are one step for this process's threads (other processes do not
    // write this file while the state lock is held by us).
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
    };
    let mut f = open()?;
    let len = f.metadata()?.len();
    if len > 0 && len + line.len() as u64 > max {
        drop(f);
        rotate(path, keep)?;
        f = open()?;
    }
    f.write_all(line)
}

/// `path.N` for rotation number `n`.
fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// `path` → `path.1`, `path.1` → `path.2`, …; `path.keep` is replaced (dropped).
fn rotate(path: &Path, keep: u32) -> std::io::Result<()> {
    let ignore_missing = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    };
    if keep == 0 {
        return ignore_missing(std::fs::remove_file(path));
    }
    for n in (1..keep).rev() {
        ignore_missing(std::fs::rename(rotated(path, n), rotated(path, n + 1)))?;
    }
    ignore_missing(std::fs::rename(path, rotated(path, 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_rotated_by_size_keeping_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let line = |i: u32| format!("{{\"n\":{i:04}}}\n");
        // 11-byte lines, 40 bytes max: 3 lines per file.
        for i in 0..20 {
            append(&path, line(i).as_bytes(), 40, 2).unwrap();
        }
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        let all = |n: std::ops::Range<u32>| n.map(line).collect::<String>();
        assert_eq!(read(path.clone()), all(18..20));
        assert_eq!(read(rotated(&path, 1)), all(15..18));
        assert_eq!(read(rotated(&path, 2)), all(12..15));
        assert!(!rotated(&path, 3).exists(), "only 2 rotated files are kept");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_check_writes_no_line_and_a_real_apply_does() {
        let dir = tempfile::tempdir().unwrap();
        let caller = Caller::this_process();
        let ok = Ok(serde_json::Value::Null.into());
        let check = Request::Apply {
            check: true,
            prune: false,
        };
        record(dir.path(), &caller, &check, &ok);
        assert!(!dir.path().join(FILE).exists());
        let real = Request::Apply {
            check: false,
            prune: false,
        };
        record(dir.path(), &caller, &real, &ok);
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains("\"op\":\"apply\""), "{text}");
    }
}
