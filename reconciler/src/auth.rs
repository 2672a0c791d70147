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

/// A workspace the caller may not use is answered exactly like one that does not exist
/// (SPEC §7.2): the error names only what the caller itself gave (the ws_id or the path).
fn workspace_access(config: &Config, caller: &Caller, w: &Addressed) -> Result<()> {
    if may_use(config, caller, &w.entry) {
        Ok(())
    } else {
        Err(not_found_as_given(w))
    }
}

/// [`Error::workspace_not_found`] for `w` as the request named it.
fn not_found_as_given(w: &Addressed) -> Error {
    if w.by_id {
        Error::workspace_not_found(&w.entry.ws_id)
    } else {
        Error::workspace_not_found(&w.entry.workspace_path.display().to_string())
    }
}

/// Retention-policy changes (`config -w WS --…`) delete snapshots in bulk: only the owner
/// (or root) may make them; `allow_users` may look.
fn policy_change_access(config: &Config, caller: &Caller, w: &Addressed) -> Result<()> {
    workspace_access(config, caller, w)?;
    if w.entry.owner_uid == Some(caller.uid) {
        Ok(())
    } else {
        Err(denied(format!(
            "only the owner of workspace {} or root may change its retention policy",
            w.entry.ws_id
        ))
        .hint("ask its owner or root"))
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
        (Request::Init { path, .. }, _) => init_access(config, caller, path),
        (Request::Config { change, .. }, Target::Host) if !change.is_empty() => Err(denied(
            "changing the global configuration needs root".to_string(),
        )
        .hint("run it as root (sudo ws-ckpt config -g ...), or change your own workspace's policy with -w")),
        (Request::Config { change, .. }, Target::Workspace(w)) if !change.is_empty() => {
            policy_change_access(config, caller, w)
        }
        // Whoever may release a workspace may see what releasing it would delete.
        (Request::RecoverPreview { .. }, Target::Workspace(w)) => authorize(
            config,
            caller,
            &Request::Release {
                path: w.entry.workspace_path.clone(),
            },
            target,
        ),
        (_, Target::Workspace(w)) => workspace_access(config, caller, w),
        (_, Target::Unrecorded { path, .. }) => init_access(config, caller, path),
        // The operation picks the one holder among those the caller may use
        // (`Engine::unique_holder`); refusing here because of another user's workspace would
        // tell the caller that workspace holds the ID.
        (_, Target::Holders(_)) => Ok(()),
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
    // The verdict and its reasons are those of what is left.
    st.judge();
}
