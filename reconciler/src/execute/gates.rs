//! Storage steps (SPEC §7.3): the private storage directories, the storage gates and the move
//! of a workspace subvolume from an earlier layout into its gate; the record of the directory
//! holding a workspace path.
//!
//! Every path here is in ws-ckpt's own storage (data_root and snapshots_root, root-owned and
//! writable by root only); they are still opened without following symlinks and changed
//! through descriptors. A gate is narrowed before it is widened, so at no moment does it grant
//! more than either its old or its new form.

use super::{Change, Executor};
use crate::access::{GateAccess, GateForm, ACL_XATTR};
use crate::error::{Error, ErrorCode, Result};
use crate::fault;
use crate::model::PathState;
use crate::observe::{others_may_search, primary_gid, state_in};
use crate::resolve::{GATES_DIR, LIVE_NAME, ROOT_DIR_MODE};
use crate::state::{ParentRecord, WorkspaceEntry};
use crate::tree::{Dir, TreeError};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

fn tree_err(e: TreeError) -> Error {
    Error::new(ErrorCode::Io, e.to_string())
}

fn split(p: &Path) -> Result<(&Path, &OsStr)> {
    match (p.parent(), p.file_name()) {
        (Some(d), Some(n)) => Ok((d, n)),
        _ => Err(Error::new(
            ErrorCode::Io,
            format!("{} has no parent directory", p.display()),
        )),
    }
}

/// Open directory `dir` of ws-ckpt's storage, creating it with `mode` (root's) when missing.
/// Returns it and whether it was created.
pub(crate) fn open_or_create(dir: &Path, mode: u32) -> Result<(Dir, bool)> {
    // The directory itself may be a mount point (data_root of the loop backend).
    match Dir::open_no_symlinks(dir) {
        Ok(d) => return Ok((d, false)),
        Err(e) if e.errno() == Some(libc::ENOENT) => {}
        Err(e) => return Err(tree_err(e)),
    }
    let (parent, name) = split(dir)?;
    let pd = Dir::open_no_symlinks(parent).map_err(tree_err)?;
    match pd.open_dir(name) {
        Ok(d) => Ok((d, false)),
        Err(e) if e.errno() == Some(libc::ENOENT) => {
            let d = pd.create_dir(name, mode).map_err(tree_err)?;
            d.set_mode(mode).map_err(tree_err)?;
            pd.sync().map_err(tree_err)?;
            Ok((d, true))
        }
        Err(e) => Err(tree_err(e)),
    }
}

/// A directory of ws-ckpt's storage that must exist and be private (root, 0700) before
/// anything is put in it: a snapshot gate an operation needs before the next pass gives it its
/// ACL. An existing one is left as it is.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    open_or_create(dir, 0o700).map(drop)
}

/// Give the gate `gate` the form `form`, creating it (0700) when missing: narrowed first
/// (`fchmod 0700`: no group, no other, no special bit), then given to its owner and group, then
/// its ACL set (which sets the group and other bits) or removed.
pub(crate) fn write_gate(gate: &Path, form: &GateForm) -> std::result::Result<Change, TreeError> {
    let (parent, name) = (
        gate.parent().unwrap_or(Path::new("/")),
        gate.file_name().unwrap_or_default(),
    );
    let pd = Dir::open_no_symlinks(parent)?;
    let (d, created) = match pd.open_dir(name) {
        Ok(d) => (d, false),
        Err(e) if e.errno() == Some(libc::ENOENT) => {
            let d = pd.create_dir(name, 0o700)?;
            pd.sync()?;
            (d, true)
        }
        Err(e) => return Err(e),
    };
    let st = d.stat()?;
    let current_acl = d.get_xattr(ACL_XATTR).ok().flatten();
    let done = st.uid == form.uid
        && st.gid == form.gid
        && st.perm == form.mode
        && match (&form.acl, &current_acl) {
            (None, None) => true,
            (Some(want), Some(have)) => {
                crate::access::named_in(want) == crate::access::named_in(have)
            }
            _ => false,
        };
    if done {
        return Ok(Change::from_changed(created));
    }
    if st.perm != 0o700 {
        d.set_mode(0o700)?;
    }
    if (st.uid, st.gid) != (form.uid, form.gid) {
        d.set_owner(form.uid, form.gid)?;
    }
    match &form.acl {
        Some(acl) => d.set_xattr(ACL_XATTR, acl)?,
        None => {
            d.remove_xattr(ACL_XATTR)?;
            d.set_mode(form.mode)?;
        }
    }
    let after = d.stat()?;
    if after.perm != form.mode {
        d.set_mode(form.mode)?;
    }
    tracing::debug!(gate = %gate.display(), mode = format!("{:04o}", form.mode), "wrote storage gate");
    Ok(Change::Created)
}

/// The gate form for `access`, falling back to the owner's primary group when the filesystem
/// has no ACLs (see [`crate::access`]); written to every one of `gates`.
pub(crate) fn write_gates(
    gates: &[PathBuf],
    access: &GateAccess,
    owner: Option<u32>,
) -> Result<Change> {
    let mut change = Change::AlreadyPresent;
    let own = crate::observe::own_ids();
    for g in gates {
        let c = match write_gate(g, &access.with_acl(own)) {
            Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => {
                let gid = owner.filter(|u| *u != own.0).and_then(primary_gid);
                tracing::warn!(gate = %g.display(), "no POSIX ACL support: the gate lets in its owner's primary group instead");
                write_gate(g, &access.without_acl(gid, own))
            }
            other => other,
        }
        .map_err(|e| {
            Error::new(
                ErrorCode::Io,
                format!("cannot secure the storage gate {}: {e}", g.display()),
            )
        })?;
        change = change.and(c);
    }
    Ok(change)
}

/// What a workspace's gates grant before the planner adds `allow_users` and `allow_groups`:
/// its owner (none for root) and, when its original was reachable by others, their search.
pub(crate) fn owner_access(owner: Option<u32>, others_search: bool) -> GateAccess {
    GateAccess {
        users: owner.into_iter().collect(),
        groups: Default::default(),
        others_search,
    }
}

/// Open the directory holding `path` without following a symlink and require that it is the
/// recorded one (when one is recorded). Returns it and the last component of `path`.
pub(crate) fn open_bound_parent<'p>(
    path: &'p Path,
    recorded: Option<&ParentRecord>,
) -> Result<(Dir, &'p OsStr)> {
    let (dir, name) = crate::observe::open_parent(path).map_err(|e| {
        Error::new(
            ErrorCode::WorkspaceDetached,
            format!(
                "{}: the directory holding it cannot be opened without following a symlink ({e}); nothing was done there",
                path.display()
            ),
        )
        .hint("put the original directory back, then run `ws-ckpt apply`")
    })?;
    if let Some(rec) = recorded {
        let now = crate::observe::parent_record(&dir).map_err(tree_err)?;
        if !rec.matches(&now) {
            return Err(Error::new(
                ErrorCode::WorkspaceDetached,
                format!(
                    "{}: the directory holding it is not the one recorded when it became a workspace; nothing was done there",
                    path.display()
                ),
            )
            .hint("put the original directory back, then run `ws-ckpt apply`"));
        }
    }
    Ok((dir, name))
}

/// Replace entry `name` of `parent` by a symlink to `target` atomically (a temporary name
/// from `tree::names`, then `renameat` over `name`), owned by `owner` when given.
pub(crate) fn replace_symlink(
    parent: &Dir,
    name: &OsStr,
    target: &Path,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let tmp = crate::tree::names::temp_sibling_name(name, "link", &crate::store::new_op_id());
    let st = parent.symlink(&tmp, target).map_err(tree_err)?;
    let done = (|| {
        if let Some((uid, gid)) = owner {
            parent.chown_symlink(&tmp, st.identity(), uid, gid)?;
        }
        parent.rename_to(&tmp, parent, name, true)?;
        parent.sync()
    })();
    if let Err(e) = done {
        let _ = parent.unlink_expecting(&tmp, st.identity());
        return Err(tree_err(e));
    }
    Ok(())
}

/// `(uid, gid)` to give a workspace symlink: its owner's, or none for root.
pub(crate) fn link_owner(owner: Option<u32>) -> Option<(u32, u32)> {
    let uid = owner.filter(|u| *u != crate::observe::own_ids().0)?;
    Some((uid, primary_gid(uid).unwrap_or(uid)))
}

impl Executor<'_> {
    /// `secure-storage`: root's, mode 0711 (the gates directory created when missing).
    pub(super) fn secure_storage(&mut self, dirs: &[PathBuf]) -> Result<Change> {
        let mut change = Change::AlreadyPresent;
        for d in dirs {
            if !self.res.root_dirs().contains(d) {
                return Err(Error::new(
                    ErrorCode::OperationFailed,
                    format!(
                        "{} is not one of ws-ckpt's storage directories",
                        d.display()
                    ),
                ));
            }
            let own = crate::observe::own_ids();
            let (dir, created) = open_or_create(d, ROOT_DIR_MODE)?;
            let st = dir.stat().map_err(tree_err)?;
            if st.uid != own.0 {
                dir.set_owner(own.0, own.1).map_err(tree_err)?;
            }
            if st.perm != ROOT_DIR_MODE {
                dir.set_mode(ROOT_DIR_MODE).map_err(tree_err)?;
            }
            change = change.and(Change::from_changed(
                created || st.perm != ROOT_DIR_MODE || st.uid != own.0,
            ));
        }
        Ok(change)
    }

    fn recorded(&self, ws_id: &str) -> Result<WorkspaceEntry> {
        self.store
            .read()
            .state
            .as_ref()
            .and_then(|s| s.workspace(ws_id))
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::WorkspaceNotFound,
                    format!("workspace {ws_id} is no longer recorded"),
                )
            })
    }

    /// The owner a workspace's gates let in: the recorded one, else the owner of its
    /// subvolume (a workspace recorded without one).
    fn gate_owner(&self, w: &WorkspaceEntry, subvol: &Path) -> Option<u32> {
        w.owner_uid
            .or_else(|| {
                Dir::open_no_symlinks(subvol)
                    .and_then(|d| d.stat())
                    .ok()
                    .map(|s| s.uid)
            })
            .filter(|u| *u != crate::observe::own_ids().0)
    }

    /// `migrate-storage`: gate first (owner only; the next pass adds the allowed), then the
    /// subvolume renamed into it, then the workspace symlink re-pointed. Each step is
    /// recognised by the planner if a crash stops it midway.
    pub(super) fn migrate_storage(
        &mut self,
        ws_id: &str,
        path: &Path,
        from: &Path,
        to: &Path,
        relink: bool,
    ) -> Result<Change> {
        if to != self.res.ws_subvol(ws_id) || from != self.res.legacy_ws_subvol(ws_id) {
            return Err(Error::new(
                ErrorCode::OperationFailed,
                format!(
                    "migrate-storage of {ws_id}: {} → {} is not this layout's move",
                    from.display(),
                    to.display()
                ),
            ));
        }
        let w = self.recorded(ws_id)?;
        let moved = self.sys.is_subvolume(to)?;
        if !moved {
            if !self.sys.is_subvolume(from)? {
                return Err(Error::new(
                    ErrorCode::StorageUnavailable,
                    format!(
                        "workspace {ws_id}: neither {} nor {} is a subvolume",
                        from.display(),
                        to.display()
                    ),
                ));
            }
            let owner = self.gate_owner(&w, from);
            let others = w
                .others_search
                .unwrap_or_else(|| others_may_search(path.parent().unwrap_or(Path::new("/"))));
            let access = owner_access(owner, others);
            let (gates_dir, _) = open_or_create(&self.res.gates_dir(), ROOT_DIR_MODE)?;
            drop(gates_dir);
            write_gates(
                &[self.res.gate(ws_id), self.res.snap_dir(ws_id)],
                &access,
                owner,
            )?;
            fault::point("migrate-storage:after-gate");
            let root = Dir::open_no_symlinks(&self.res.data_root).map_err(tree_err)?;
            let gates = root.open_dir(OsStr::new(GATES_DIR)).map_err(tree_err)?;
            let gate = gates.open_dir(OsStr::new(ws_id)).map_err(tree_err)?;
            root.rename_to(OsStr::new(ws_id), &gate, OsStr::new(LIVE_NAME), false)
                .map_err(tree_err)?;
            root.sync().map_err(tree_err)?;
            gate.sync().map_err(tree_err)?;
            tracing::info!(ws_id, from = %from.display(), to = %to.display(), "moved the workspace subvolume into its storage gate");
            fault::point("migrate-storage:after-move");
        }
        if relink {
            let (parent, name) = open_bound_parent(path, w.parent.as_ref())?;
            match state_in(&parent, name) {
                PathState::Symlink { target, .. } if target == from => {
                    replace_symlink(&parent, name, to, link_owner(w.owner_uid))?
                }
                PathState::Symlink { target, .. } if target == to => {}
                other => {
                    return Err(Error::new(
                        ErrorCode::WorkspaceDetached,
                        format!(
                        "{} moved into its storage gate, but {} is now {other:?}; not replacing it",
                        to.display(),
                        path.display()
                    ),
                    ))
                }
            }
        }
        Ok(Change::Created)
    }

    /// `set-storage-access`: every named gate written to `form`; the others-search decision
    /// recorded when it was first made.
    pub(super) fn set_storage_access(
        &mut self,
        ws_id: &str,
        gates: &[PathBuf],
        form: &GateForm,
        record: Option<bool>,
    ) -> Result<Change> {
        let mut change = Change::AlreadyPresent;
        for g in gates {
            if *g != self.res.gate(ws_id) && *g != self.res.snap_dir(ws_id) {
                return Err(Error::new(
                    ErrorCode::OperationFailed,
                    format!("{} is not a storage gate of {ws_id}", g.display()),
                ));
            }
            let c = write_gate(g, form).map_err(|e| {
                Error::new(
                    ErrorCode::Io,
                    format!("cannot secure the storage gate {}: {e}", g.display()),
                )
            })?;
            change = change.and(c);
        }
        if let Some(others) = record {
            let mut w = self.recorded(ws_id)?;
            if w.others_search.is_none() {
                w.others_search = Some(others);
                self.store.add_workspace(w)?;
                change = Change::Created;
            }
        }
        Ok(change)
    }

    /// `record-parent`: the directory holding the path, re-opened and still the planned one.
    pub(super) fn record_parent(
        &mut self,
        ws_id: &str,
        path: &Path,
        parent: &ParentRecord,
    ) -> Result<Change> {
        let mut w = self.recorded(ws_id)?;
        if w.parent.is_some() {
            return Ok(Change::AlreadyPresent);
        }
        let (dir, name) = open_bound_parent(path, Some(parent))?;
        let expected = self.res.ws_subvol(ws_id);
        if !matches!(state_in(&dir, name), PathState::Symlink { target, .. } if target == expected)
        {
            return Err(Error::new(
                ErrorCode::WorkspaceDetached,
                format!(
                    "{} is no longer the workspace symlink; its directory is not recorded",
                    path.display()
                ),
            ));
        }
        w.parent = Some(crate::observe::parent_record(&dir).map_err(tree_err)?);
        self.store.add_workspace(w)?;
        Ok(Change::Created)
    }
}
