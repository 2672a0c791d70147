//! Authorization of requests by caller identity (SPEC §7.2): root may do anything; another
//! uid may act on workspaces it owns or is allowed on (`allow_users` / `allow_groups`), may
//! `init` (and first-`checkpoint`) directories it owns when `[access] user_init` is on, and
//! may read `status` for its own workspaces. Everything else is refused.
//!
//! Pure decisions over the engine's config and state plus `lstat`/user-database lookups; it
//! changes nothing. IDs are validated here before any path is built from them.

use crate::api::{Caller, Request};
use crate::engine::{absolute_user_path, Engine};
use crate::error::{Error, ErrorCode, Result};
use crate::ids::check_snapshot_id;
use crate::state::WorkspaceEntry;
use crate::status::StatusReport;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn denied(msg: String) -> Error {
    Error::new(ErrorCode::PermissionDenied, msg)
}

/// User name of a uid.
pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// Every group of a uid (primary + supplementary), by name.
pub fn group_names(uid: u32, primary_gid: u32) -> Vec<String> {
    let mut gids = vec![nix::unistd::Gid::from_raw(primary_gid)];
    if let Some(user) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
    {
        if let Ok(name) = std::ffi::CString::new(user.name) {
            if let Ok(all) = nix::unistd::getgrouplist(&name, user.gid) {
                gids.extend(all);
            }
        }
    }
    gids.iter()
        .filter_map(|g| {
            nix::unistd::Group::from_gid(*g)
                .ok()
                .flatten()
                .map(|g| g.name)
        })
        .collect()
}

/// True when `caller` may operate on workspace `w`.
pub fn may_use(engine: &Engine, caller: &Caller, w: &WorkspaceEntry) -> bool {
    if caller.is_root() || w.owner_uid == Some(caller.uid) {
        return true;
    }
    let Some(decl) = engine.config.workspace(&w.workspace_path) else {
        return false;
    };
    if !decl.allow_users.is_empty() {
        if let Some(name) = user_name(caller.uid) {
            if decl
                .allow_users
                .iter()
                .any(|u| *u == name || *u == caller.uid.to_string())
            {
                return true;
            }
        }
    }
    if !decl.allow_groups.is_empty() {
        let groups = group_names(caller.uid, caller.gid);
        if decl.allow_groups.iter().any(|g| groups.contains(g)) {
            return true;
        }
    }
    false
}

fn workspace_access(engine: &Engine, caller: &Caller, spec: &str) -> Result<()> {
    let w = engine.resolve_workspace(spec)?;
    if may_use(engine, caller, &w) {
        Ok(())
    } else {
        Err(denied(format!(
            "uid {} may not use workspace {} ({}): it belongs to uid {}",
            caller.uid,
            w.ws_id,
            w.workspace_path.display(),
            w.owner_uid.map(|u| u.to_string()).unwrap_or_else(|| "root".into())
        ))
        .hint("ask its owner or root to add you to allow_users / allow_groups in its [[workspace]] table"))
    }
}

/// May `caller` turn `path` into a workspace? The directory must be a real directory (not a
/// symlink) owned by the caller, and `[access] user_init` must be on.
fn init_access(engine: &Engine, caller: &Caller, path: &Path) -> Result<()> {
    if caller.is_root() {
        return Ok(());
    }
    if !engine.config.access.user_init {
        return Err(denied(
            "only root may create workspaces on this host ([access] user_init = false)".into(),
        ));
    }
    let abs = absolute_user_path(path)?;
    let meta = std::fs::symlink_metadata(&abs)
        .map_err(|e| Error::new(ErrorCode::InvalidPath, format!("{}: {e}", abs.display())))?;
    if !meta.is_dir() {
        return Err(Error::new(
            ErrorCode::InvalidPath,
            format!("{} is not a directory", abs.display()),
        ));
    }
    if meta.uid() != caller.uid {
        return Err(denied(format!(
            "uid {} may not init {}: it is owned by uid {}",
            caller.uid,
            abs.display(),
            meta.uid()
        )));
    }
    Ok(())
}

/// Refuse `req` for `caller` unless it is allowed. Validates every ID first.
pub fn authorize(engine: &Engine, caller: &Caller, req: &Request) -> Result<()> {
    match req {
        Request::Checkpoint {
            snapshot: Some(s), ..
        }
        | Request::Rollback { snapshot: s, .. }
        | Request::Delete { snapshot: s, .. } => check_snapshot_id(s)?,
        Request::Diff { from, to, .. } => {
            check_snapshot_id(from)?;
            if let Some(t) = to {
                check_snapshot_id(t)?;
            }
        }
        _ => {}
    }
    if caller.is_root() {
        return Ok(());
    }
    match req {
        Request::Apply { .. } | Request::Reload | Request::Plan { .. } => Err(denied(format!(
            "`{}` changes or reveals the whole host configuration and needs root",
            req.op()
        ))
        .hint("run it as root (sudo ws-ckpt ...)")),
        Request::Status { .. } => Ok(()),
        Request::List { workspace } => match workspace {
            Some(w) => workspace_access(engine, caller, w),
            None => Ok(()),
        },
        Request::Init { path } => init_access(engine, caller, path),
        Request::Release { path } => workspace_access(engine, caller, &path.to_string_lossy()),
        Request::Checkpoint { workspace, .. } => match engine.resolve_workspace(workspace) {
            Ok(_) => workspace_access(engine, caller, workspace),
            Err(e) if e.code == ErrorCode::WorkspaceNotFound => {
                init_access(engine, caller, Path::new(workspace))
            }
            Err(e) => Err(e),
        },
        Request::Rollback { workspace, .. }
        | Request::Cleanup { workspace, .. }
        | Request::Diff { workspace, .. } => workspace_access(engine, caller, workspace),
        Request::Delete {
            workspace,
            snapshot,
            ..
        } => match workspace {
            Some(w) => workspace_access(engine, caller, w),
            None => {
                // The operation finds the workspace by the (unique) ID; check every workspace
                // holding that ID.
                let holders: Vec<&String> = engine
                    .store
                    .p
                    .indexes
                    .iter()
                    .filter(|(_, i)| i.snapshots.contains_key(snapshot))
                    .map(|(id, _)| id)
                    .collect();
                for ws in holders {
                    workspace_access(engine, caller, ws)?;
                }
                Ok(())
            }
        },
    }
}

/// Reduce a status report to what `caller` may see: other users' workspaces are removed for
/// non-root callers (findings about them too).
pub fn filter_status(engine: &Engine, caller: &Caller, st: &mut StatusReport) {
    if caller.is_root() {
        return;
    }
    let visible: Vec<String> = engine
        .store
        .p
        .state
        .iter()
        .flat_map(|s| s.workspaces.iter())
        .filter(|w| may_use(engine, caller, w))
        .map(|w| w.ws_id.clone())
        .collect();
    st.workspaces.retain(|w| visible.contains(&w.ws_id));
    st.findings
        .retain(|f| f.ws_id.as_ref().is_none_or(|id| visible.contains(id)));
}
