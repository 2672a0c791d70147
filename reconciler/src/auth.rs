//! Authorization of requests by caller identity (SPEC §7.2): root may do anything; another
//! uid may act on workspaces it owns or is allowed on (`allow_users` / `allow_groups`), may
//! `init` (and first-`checkpoint`) directories it owns when `[access] user_init` is on, and
//! may read `status` for its own workspaces. Everything else is refused.
//!
//! Decisions over the config, the recorded workspaces and the request as resolved (its
//! [`Target`]) plus `lstat`/user-database lookups; it changes nothing and knows nothing of the
//! engine. IDs are validated before this runs (`Request::check_ids`).

use crate::api::{Addressed, Caller, Request, Target};
use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use crate::paths::absolute_user_path;
use crate::state::{StateFile, WorkspaceEntry};
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

/// True when `caller` may operate on workspace `w` (its owner, root, or allowed by the
/// workspace's declaration in `config`).
pub fn may_use(config: &Config, caller: &Caller, w: &WorkspaceEntry) -> bool {
    if caller.is_root() || w.owner_uid == Some(caller.uid) {
        return true;
    }
    let Some(decl) = config.workspace(&w.workspace_path) else {
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

fn workspace_access(config: &Config, caller: &Caller, w: &WorkspaceEntry) -> Result<()> {
    if may_use(config, caller, w) {
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
fn init_access(config: &Config, caller: &Caller, path: &Path) -> Result<()> {
    if caller.is_root() {
        return Ok(());
    }
    if !config.access.user_init {
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

/// Refuse `req`, resolved to `target`, unless `caller` may do it.
pub fn authorize(config: &Config, caller: &Caller, req: &Request, target: &Target) -> Result<()> {
    if caller.is_root() {
        return Ok(());
    }
    match (req, target) {
        (Request::Apply { .. } | Request::Reload | Request::Plan { .. }, _) => {
            Err(denied(format!(
                "`{}` changes or reveals the whole host configuration and needs root",
                req.op()
            ))
            .hint("run it as root (sudo ws-ckpt ...)"))
        }
        (Request::Status { .. }, _) => Ok(()),
        (Request::Init { path }, _) => init_access(config, caller, path),
        (_, Target::Workspace(Addressed { entry, .. })) => workspace_access(config, caller, entry),
        (_, Target::Unrecorded { path, .. }) => init_access(config, caller, path),
        // The operation picks the workspace by the (unique) ID; check every one holding it.
        (_, Target::Holders(holders)) => holders
            .iter()
            .try_for_each(|w| workspace_access(config, caller, w)),
        (_, Target::Host) => Ok(()),
    }
}

/// Reduce a status report to what `caller` may see: other users' workspaces are removed for
/// non-root callers (findings about them too).
pub fn filter_status(
    config: &Config,
    state: Option<&StateFile>,
    caller: &Caller,
    st: &mut StatusReport,
) {
    if caller.is_root() {
        return;
    }
    let visible: Vec<String> = state
        .iter()
        .flat_map(|s| s.workspaces.iter())
        .filter(|w| may_use(config, caller, w))
        .map(|w| w.ws_id.clone())
        .collect();
    st.workspaces.retain(|w| visible.contains(&w.ws_id));
    st.findings
        .retain(|f| f.ws_id.as_ref().is_none_or(|id| visible.contains(id)));
}
