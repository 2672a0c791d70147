//! Workspace steps (SPEC §5.1, §5.4, §7.3): a directory becomes a workspace and back, each
//! phase recorded before its first irreversible step, nothing deleted unless it still matches.
//!
//! Everything in the user's tree is done from descriptors (the tree engine's wiring guide):
//! the directory holding the user path is opened once without following a symlink and, for
//! a recorded workspace, checked to be the recorded one; every later step uses that
//! descriptor and single names. The identity of what is exchanged or removed is recorded
//! first and checked right before. The copy, its verification and the removal of the original
//! run with the tree owner's credentials (a worker process, `tree::worker`), so the kernel
//! enforces her permissions. Temporary names come from `tree::names`.

use super::gates::{link_owner, open_bound_parent, owner_access, write_gates};
use super::{Executor, CLEANER_WAIT};
use crate::error::{Error, ErrorCode, Result};
use crate::fault;
use crate::model::PathState;
use crate::observe::{others_may_search, state_in, storage_alias};
use crate::state::{InitPhase, ParentRecord, PendingKind, ReleasePhase, WorkspaceEntry};
use crate::tree::{names, Compare, Dir, Identity, Job, Kind, Owner, Stat, TreeError};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

pub(super) fn tree_err(e: TreeError) -> Error {
    Error::new(ErrorCode::OperationFailed, e.to_string())
}

/// The job that works on a tree owned by `uid`: in this process when that is this process's
/// user, else in a worker that has become her.
pub(super) fn job_for<'a>(uid: u32) -> Result<Job<'a>> {
    if uid == nix::unistd::geteuid().as_raw() {
        Ok(Job::in_process())
    } else {
        Ok(Job::as_owner(Owner::lookup(uid).map_err(tree_err)?))
    }
}

/// Remove the tree `name` of `parent` (identity `id`) with `job`'s credentials. When the
/// owner may not unlink it from `parent` (her tree in a directory of root's: the kernel
/// refuses the last `rmdir`), the job has emptied it, and root removes the empty directory,
/// its identity checked first: emptying it is the part that could reach into anything else,
/// and that ran as her.
pub(super) fn remove_tree(
    job: &mut Job<'_>,
    parent: &Dir,
    name: &OsStr,
    id: Identity,
) -> std::result::Result<crate::tree::Removed, TreeError> {
    let label = parent.child_label(name);
    match job.remove(parent, name, id) {
        Err(TreeError::Io { path, source, .. })
            if path == label
                && matches!(source.raw_os_error(), Some(libc::EACCES | libc::EPERM)) =>
        {
            match parent.child_stat(name)? {
                Some(st) if st.kind == Kind::Dir && st.identity() == id => {
                    parent.remove_empty_dir(name)?;
                    parent.sync()?;
                    Ok(crate::tree::Removed::Removed { entries: 1 })
                }
                None => Ok(crate::tree::Removed::Absent),
                Some(st) => Err(TreeError::IdentityMismatch {
                    path: label,
                    expected: id,
                    found: st.identity(),
                }),
            }
        }
        other => other,
    }
}

fn record_of(d: &Dir) -> Result<ParentRecord> {
    crate::observe::parent_record(d).map_err(tree_err)
}

fn tmp_name(tmp: &Path) -> Result<&OsStr> {
    tmp.file_name().ok_or_else(|| {
        Error::new(
            ErrorCode::OperationFailed,
            format!("{} has no last component", tmp.display()),
        )
    })
}

/// What an init needs to finish: the names and identities it recorded.
pub(super) struct InitRecord<'a> {
    pub op: &'a str,
    pub ws_id: &'a str,
    pub path: &'a Path,
    pub subvol: &'a Path,
    pub tmp: &'a Path,
    pub parent: Option<ParentRecord>,
    pub original: Option<Identity>,
    pub owner: Option<u32>,
}

/// What a release needs to finish.
pub(super) struct ReleaseRecord<'a> {
    pub op: &'a str,
    pub ws_id: &'a str,
    pub path: &'a Path,
    pub subvol: &'a Path,
    pub tmp: &'a Path,
    pub parent: Option<ParentRecord>,
    pub copy: Option<Identity>,
    pub link: Option<Identity>,
    pub owner: Option<u32>,
    pub phase: ReleasePhase,
}

impl Executor<'_> {
    /// A workspace's data gate and snapshot gate (the gates directory created if missing).
    fn gates_of(&self, ws_id: &str) -> [PathBuf; 2] {
        [self.res.gate(ws_id), self.res.snap_dir(ws_id)]
    }

    fn ensure_gates_dir(&self) -> Result<()> {
        super::gates::open_or_create(&self.res.gates_dir(), crate::resolve::ROOT_DIR_MODE).map(drop)
    }

    /// Remove the gates of a workspace that is no more: the data gate must be empty; what is
    /// left in the snapshot gate once its snapshot subvolumes are deleted (a legacy
    /// `index.json`) goes with it.
    pub(super) fn remove_gates(&self, ws_id: &str) -> Result<()> {
        let [gate, snaps] = self.gates_of(ws_id);
        let fail = |g: &Path, e: TreeError| {
            Error::new(
                ErrorCode::OperationFailed,
                format!("cannot remove the storage gate {}: {e}", g.display()),
            )
        };
        if let Ok(pd) = Dir::open_no_symlinks(&self.res.gates_dir()) {
            pd.remove_empty_dir(OsStr::new(ws_id))
                .map_err(|e| fail(&gate, e))?;
            pd.sync().map_err(tree_err)?;
        }
        if let Ok(pd) = Dir::open_no_symlinks(&self.res.snapshots_root) {
            if let Some(st) = pd.child_stat(OsStr::new(ws_id)).map_err(tree_err)? {
                Job::in_process()
                    .remove(&pd, OsStr::new(ws_id), st.identity())
                    .map_err(|e| fail(&snaps, e))?;
                pd.sync().map_err(tree_err)?;
            }
        }
        Ok(())
    }

    /// Delete a workspace subvolume that never became a workspace, and its gates.
    fn drop_new_subvolume(&self, ws_id: &str, subvol: &Path) -> Result<()> {
        self.sys.delete_subvolume_if_present(subvol)?;
        self.remove_gates(ws_id)
    }

    /// Directory → workspace (SPEC §5.1).
    pub(super) fn init_workspace(&mut self, ws_id: &str, path: &Path) -> Result<()> {
        let subvol = self.res.ws_subvol(ws_id);
        for s in [&subvol, &self.res.legacy_ws_subvol(ws_id)] {
            if self.sys.is_subvolume(s)? {
                return Err(Error::new(
                    ErrorCode::OperationFailed,
                    format!("{} already exists; not overwriting it", s.display()),
                ));
            }
        }
        let (parent, name) = crate::observe::open_parent(path).map_err(|e| {
            Error::new(
                ErrorCode::InvalidPath,
                format!(
                    "cannot make a workspace of {}: the directory holding it cannot be opened without following a symlink ({e})",
                    path.display()
                ),
            )
            .hint("name the directory by its real path (`realpath` prints it)")
        })?;
        let parent_rec = record_of(&parent)?;
        let others = others_may_search(path.parent().unwrap_or(Path::new("/")));
        let expected_owner = self
            .init_owner
            .filter(|(p, _)| p == path)
            .map(|(_, uid)| *uid);
        let not_hers = |uid: u32| {
            Error::new(
                ErrorCode::InvalidPath,
                format!(
                    "cannot make a workspace of {}: it is not a directory owned by uid {uid} (or it cannot be reached without following a symlink); nothing was changed",
                    path.display()
                ),
            )
            .hint("give the path of a directory of your own, by its real location")
        };
        match state_in(&parent, name) {
            PathState::Missing if expected_owner.is_some() => {
                return Err(not_hers(expected_owner.unwrap_or_default()))
            }
            PathState::Missing => return self.init_empty(ws_id, path, &parent, name, parent_rec),
            PathState::Dir { .. } => {}
            other => {
                return Err(Error::new(
                    ErrorCode::InvalidPath,
                    format!("{} is {other:?}, not a directory", path.display()),
                ))
            }
        }
        let src = parent.open_dir(name).map_err(|e| {
            Error::new(
                ErrorCode::InvalidPath,
                format!("cannot make a workspace of {}: {e}", path.display()),
            )
        })?;
        let src_st = src.stat().map_err(tree_err)?;
        if let Some(uid) = expected_owner.filter(|uid| *uid != src_st.uid) {
            return Err(not_hers(uid));
        }
        if let Some(why) = storage_alias(&src, self.res, &self.sys.mounts()?) {
            return Err(Error::new(
                ErrorCode::InvalidPath,
                format!("cannot make a workspace of {}: {why}", path.display()),
            )
            .hint("choose a project directory of your own"));
        }
        let owner = src_st.uid;
        let mut job = job_for(owner)?;
        let op_id = crate::store::new_op_id();
        let tmp_name = names::temp_sibling_name(name, "init", &op_id);
        let tmp = path.with_file_name(&tmp_name);
        let mut kind = PendingKind::Init {
            ws_id: ws_id.to_string(),
            path: path.to_path_buf(),
            subvol: subvol.clone(),
            tmp: tmp.clone(),
            phase: InitPhase::Copying,
            parent: Some(parent_rec),
            original: Some(src_st.identity()),
            owner: Some(owner),
        };
        let op = self.store.begin(kind.clone())?;
        fault::point("init:after-begin");
        let prepared = self
            .ensure_gates_dir()
            .and_then(|_| {
                write_gates(
                    &self.gates_of(ws_id),
                    &owner_access(Some(owner), others),
                    Some(owner),
                )
            })
            .and_then(|_| self.sys.create_subvolume(&subvol).map_err(Error::from));
        if let Err(e) = prepared {
            let _ = self.drop_new_subvolume(ws_id, &subvol);
            self.withdraw(&op);
            return Err(e);
        }
        fault::point("init:after-subvol");
        let label = format!("copying {}", path.display());
        let progress = &mut *self.progress;
        let mut report = |p: &crate::tree::Progress| progress(&label, p);
        let copied = Dir::open_no_symlinks(&subvol).and_then(|dst| {
            let mut job = std::mem::replace(&mut job, Job::in_process()).with_progress(&mut report);
            job.copy(&src, &dst)?;
            fault::point("init:after-copy");
            job.verify(&src, &dst, Compare::Full)
        });
        if let Err(e) = copied {
            // Nothing irreversible happened: the original is untouched. Undo and report.
            let _ = self.drop_new_subvolume(ws_id, &subvol);
            self.withdraw(&op);
            return Err(Error::new(
                ErrorCode::OperationFailed,
                format!(
                    "could not copy {} into a workspace: {e}; the directory is unchanged",
                    path.display()
                ),
            ));
        }
        if let PendingKind::Init { phase, .. } = &mut kind {
            *phase = InitPhase::Verified;
        }
        if let Err(e) = self.store.update(&op, kind) {
            let _ = self.drop_new_subvolume(ws_id, &subvol);
            self.withdraw(&op);
            return Err(e);
        }
        fault::point("init:after-verify");
        let link = parent.symlink(&tmp_name, &subvol).map_err(tree_err)?;
        if let Some((uid, gid)) = link_owner(Some(owner)) {
            parent
                .chown_symlink(&tmp_name, link.identity(), uid, gid)
                .map_err(tree_err)?;
        }
        fault::point("init:after-link");
        // The original must still be the directory that was copied.
        let still = parent
            .child_stat(name)
            .map_err(tree_err)?
            .is_some_and(|st| st.kind == Kind::Dir && st.identity() == src_st.identity());
        if !still {
            let _ = parent.unlink_expecting(&tmp_name, link.identity());
            let _ = self.drop_new_subvolume(ws_id, &subvol);
            self.withdraw(&op);
            return Err(Error::new(
                ErrorCode::OperationFailed,
                format!(
                    "{} was replaced by another entry while it was being copied; nothing was changed",
                    path.display()
                ),
            )
            .hint("stop whatever renames it, then retry"));
        }
        if let Err(e) = parent.exchange(&tmp_name, name) {
            let _ = parent.unlink_expecting(&tmp_name, link.identity());
            let _ = self.drop_new_subvolume(ws_id, &subvol);
            self.withdraw(&op);
            return Err(Error::new(
                ErrorCode::OperationFailed,
                format!(
                    "could not put the workspace in place of {}: {e}; the directory is unchanged",
                    path.display()
                ),
            ));
        }
        parent.sync().map_err(tree_err)?;
        fault::point("init:after-exchange");
        self.finish_init(
            &InitRecord {
                op: &op,
                ws_id,
                path,
                subvol: &subvol,
                tmp: &tmp,
                parent: Some(parent_rec),
                original: Some(src_st.identity()),
                owner: Some(owner),
            },
            false,
        )
    }

    /// A declared path that does not exist: an empty workspace, no copy.
    fn init_empty(
        &mut self,
        ws_id: &str,
        path: &Path,
        parent: &Dir,
        name: &OsStr,
        parent_rec: ParentRecord,
    ) -> Result<()> {
        // Owned by root: nobody owns a directory that does not exist. A crash in between
        // leaves an unrecorded subvolume that the next pass adopts.
        let subvol = self.res.ws_subvol(ws_id);
        let others = others_may_search(path.parent().unwrap_or(Path::new("/")));
        self.ensure_gates_dir()?;
        write_gates(&self.gates_of(ws_id), &owner_access(None, others), None)?;
        self.sys.create_subvolume(&subvol)?;
        parent.symlink(name, &subvol).map_err(tree_err)?;
        parent.sync().map_err(tree_err)?;
        self.record_workspace(ws_id, path, None, Some(parent_rec), Some(others))
    }

    /// The original now sits at the temporary name: remove it, but only if it is still the
    /// recorded directory and provably nothing is lost — after the exchange itself, equal to
    /// the verified copy (metadata); in recovery, a subset of the workspace (entries may
    /// already be removed). Then record the workspace and forget the operation.
    pub(super) fn finish_init(&mut self, r: &InitRecord<'_>, recovering: bool) -> Result<()> {
        let (parent, _) = open_bound_parent(r.path, r.parent.as_ref())?;
        // A record of an earlier version has no parent: the one just opened (without a
        // symlink, holding the workspace symlink the planner saw) is recorded.
        let parent_rec = match r.parent {
            Some(p) => p,
            None => record_of(&parent)?,
        };
        let tmp_name = tmp_name(r.tmp)?;
        let owner = r.owner.unwrap_or(0);
        let others = others_may_search(r.path.parent().unwrap_or(Path::new("/")));
        let at_tmp = parent.child_stat(tmp_name).map_err(tree_err)?;
        let mut kept: Option<String> = None;
        match (at_tmp, r.original) {
            (None, _) => {}
            (Some(st), Some(orig)) if st.kind == Kind::Dir && st.identity() == orig => {
                let proof = Dir::open_no_symlinks(r.subvol).and_then(|live| {
                    let o = parent.open_dir_expecting(tmp_name, orig)?;
                    let mut job =
                        job_for(owner).map_err(|e| TreeError::Worker { what: e.message })?;
                    if recovering {
                        job.prove_subset(&o, &live)?;
                    } else {
                        job.verify(&o, &live, Compare::Metadata)?;
                    }
                    remove_tree(&mut job, &parent, tmp_name, orig)
                });
                match proof {
                    Ok(_) => {}
                    Err(e @ (TreeError::Mismatch { .. } | TreeError::NotSubset { .. })) => {
                        kept = Some(e.to_string())
                    }
                    Err(e) => return Err(tree_err(e)),
                }
            }
            (Some(st), None) if st.kind == Kind::Symlink => {
                // A record without identities (an earlier version): only our own link goes.
                if let Ok(Some((_, t))) = parent.read_symlink(tmp_name) {
                    if t == r.subvol {
                        parent
                            .unlink_expecting(tmp_name, st.identity())
                            .map_err(tree_err)?;
                    }
                }
            }
            (Some(st), _) => {
                kept = Some(format!(
                    "{} is now a {} that is not the original directory, left alone",
                    r.tmp.display(),
                    st.kind.name()
                ));
            }
        }
        fault::point("init:after-remove-original");
        self.record_workspace(r.ws_id, r.path, r.owner, Some(parent_rec), Some(others))?;
        self.store.end(r.op)?;
        if let Some(why) = kept {
            let when = if recovering {
                "in the interrupted init"
            } else {
                "after it was copied"
            };
            return Err(Error::new(
                ErrorCode::OperationFailed,
                format!(
                    "{} is now workspace {}; the original directory changed {when} (it was written to), so it was not removed: {why}; it is at {}",
                    r.path.display(),
                    r.ws_id,
                    r.tmp.display()
                ),
            )
            .hint(format!(
                "compare {} with the workspace, copy over what is missing, then remove it; stop programs writing into a directory before turning it into a workspace",
                r.tmp.display()
            )));
        }
        Ok(())
    }

    /// Workspace → plain directory (SPEC §5.4).
    pub(super) fn release_workspace(&mut self, ws_id: &str, path: &Path) -> Result<()> {
        let w: WorkspaceEntry = self
            .store
            .read()
            .state
            .as_ref()
            .and_then(|s| s.workspace(ws_id))
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::WorkspaceNotFound,
                    format!("workspace {ws_id} is not recorded"),
                )
            })?;
        let subvol = self.res.ws_subvol(ws_id);
        let (parent, name) = open_bound_parent(path, w.parent.as_ref())?;
        let link = match state_in(&parent, name) {
            PathState::Symlink { target, .. } if target == subvol => parent
                .read_symlink(name)
                .map_err(tree_err)?
                .map(|(st, _)| st.identity()),
            PathState::Missing => {
                let st = parent.symlink(name, &subvol).map_err(tree_err)?;
                Some(st.identity())
            }
            other => {
                return Err(Error::new(
                    ErrorCode::WorkspaceDetached,
                    format!(
                        "{} is {other:?}, not the workspace symlink; refusing to overwrite it",
                        path.display()
                    ),
                )
                .hint(format!(
                    "move {} aside first; the data stays in {}",
                    path.display(),
                    subvol.display()
                )))
            }
        };
        let live = Dir::open_no_symlinks(&subvol).map_err(tree_err)?;
        let owner = w.owner_uid.unwrap_or(live.stat().map_err(tree_err)?.uid);
        let mut job = job_for(owner)?;
        let op_id = crate::store::new_op_id();
        let tmp_name = names::temp_sibling_name(name, "release", &op_id);
        let tmp = path.with_file_name(&tmp_name);
        let mut kind = PendingKind::Release {
            ws_id: ws_id.to_string(),
            path: path.to_path_buf(),
            subvol: subvol.clone(),
            tmp: tmp.clone(),
            phase: ReleasePhase::Copying,
            parent: Some(record_of(&parent)?),
            copy: None,
            link,
            owner: Some(owner),
        };
        let op = self.store.begin(kind.clone())?;
        fault::point("release:after-begin");
        let stopped = |e: String| {
            Error::new(
                ErrorCode::OperationFailed,
                format!(
                    "release of {} stopped before anything was deleted: {e}",
                    path.display()
                ),
            )
            .hint(
                "the workspace is unchanged and usable; fix the cause (e.g. free space) and retry",
            )
        };
        let copy = match parent.create_dir(&tmp_name, 0o700) {
            Ok(d) => d,
            Err(e) => {
                self.withdraw(&op);
                return Err(stopped(e.to_string()));
            }
        };
        let copy_id = copy.identity().map_err(tree_err)?;
        if let PendingKind::Release { copy: c, .. } = &mut kind {
            *c = Some(copy_id);
        }
        if let Err(e) = self.store.update(&op, kind.clone()) {
            let _ = parent.remove_empty_dir(&tmp_name);
            self.withdraw(&op);
            return Err(e);
        }
        let label = format!("copying {} back", path.display());
        let progress = &mut *self.progress;
        let mut report = |p: &crate::tree::Progress| progress(&label, p);
        let copied = {
            let mut j = std::mem::replace(&mut job, Job::in_process()).with_progress(&mut report);
            j.copy(&live, &copy).and_then(|_| {
                fault::point("release:after-copy");
                j.verify(&live, &copy, Compare::Full)
            })
        };
        // No descriptor on the subvolume may outlive the copy: an open one keeps the deleted
        // subvolume from the btrfs cleaner, and the release would wait the whole CLEANER_WAIT.
        drop(copy);
        drop(live);
        let mut job = job_for(owner)?;
        if let Err(e) = copied {
            let _ = remove_tree(&mut job, &parent, &tmp_name, copy_id);
            self.withdraw(&op);
            return Err(stopped(e.to_string()));
        }
        if let PendingKind::Release { phase, .. } = &mut kind {
            *phase = ReleasePhase::Verified;
        }
        if let Err(e) = self.store.update(&op, kind) {
            let _ = remove_tree(&mut job, &parent, &tmp_name, copy_id);
            self.withdraw(&op);
            return Err(e);
        }
        fault::point("release:after-verify");
        // Both names must still be what was recorded: the copy and the workspace symlink.
        let copy_ok = parent
            .child_stat(&tmp_name)
            .map_err(tree_err)?
            .is_some_and(|st| st.kind == Kind::Dir && st.identity() == copy_id);
        let link_ok = parent
            .read_symlink(name)
            .ok()
            .flatten()
            .is_some_and(|(st, t)| Some(st.identity()) == link && t == subvol);
        if !copy_ok || !link_ok {
            if copy_ok {
                let _ = remove_tree(&mut job, &parent, &tmp_name, copy_id);
            }
            self.withdraw(&op);
            return Err(stopped(format!(
                "{} was replaced by another entry while the release ran",
                if copy_ok { path } else { &tmp }.display()
            )));
        }
        if let Err(e) = parent.exchange(&tmp_name, name) {
            let _ = remove_tree(&mut job, &parent, &tmp_name, copy_id);
            self.withdraw(&op);
            return Err(stopped(e.to_string()));
        }
        fault::point("release:after-exchange");
        self.finish_release(
            &ReleaseRecord {
                op: &op,
                ws_id,
                path,
                subvol: &subvol,
                tmp: &tmp,
                parent: Some(record_of(&parent)?),
                copy: Some(copy_id),
                link,
                owner: Some(owner),
                phase: ReleasePhase::Verified,
            },
            false,
        )
    }

    /// After the exchange: the plain directory is compared with the workspace once more
    /// (in-flow, a difference undoes the exchange; in recovery, both are kept and it is
    /// reported), the old symlink removed, then the subvolume, its snapshots and its gates
    /// deleted, committed, and only then the workspace forgotten.
    pub(super) fn finish_release(&mut self, r: &ReleaseRecord<'_>, recovering: bool) -> Result<()> {
        if r.phase != ReleasePhase::Deleting {
            let (parent, name) = open_bound_parent(r.path, r.parent.as_ref())?;
            let tmp_name = tmp_name(r.tmp)?;
            let owner = r.owner.unwrap_or(0);
            let dir = parent.child_stat(name).map_err(tree_err)?;
            let dir_ok = dir.is_some_and(|st| {
                st.kind == Kind::Dir && r.copy.is_none_or(|c| st.identity() == c)
            });
            if !dir_ok {
                return Err(Error::new(
                    ErrorCode::OperationFailed,
                    format!(
                        "release of {}: the path is no longer the copy that was made; nothing was deleted",
                        r.path.display()
                    ),
                ));
            }
            let old_link = parent.read_symlink(tmp_name).ok().flatten();
            if self.sys.is_subvolume(r.subvol)? {
                let same = Dir::open_no_symlinks(r.subvol).and_then(|live| {
                    let d = parent.open_dir(name)?;
                    job_for(owner)
                        .map_err(|e| TreeError::Worker { what: e.message })?
                        .verify(&live, &d, Compare::Metadata)
                });
                match same {
                    Ok(_) => {}
                    Err(e) => {
                        let ours = old_link.as_ref().is_some_and(|(st, t)| {
                            r.link.is_none_or(|l| l == st.identity()) && t == r.subvol
                        });
                        if !ours {
                            // The old symlink is not there to undo the exchange with.
                            return Err(Error::new(
                                ErrorCode::OperationFailed,
                                format!(
                                    "release of {}: the plain directory differs from workspace {} ({e}) and the workspace symlink is gone; both are kept",
                                    r.path.display(),
                                    r.ws_id
                                ),
                            )
                            .hint(format!(
                                "compare {} with {}, keep what you need, then run `ws-ckpt apply` again",
                                r.path.display(),
                                r.subvol.display()
                            )));
                        }
                        // Undo: the workspace symlink goes back; the plain copy goes only if
                        // nothing was written into it (in recovery, proven a subset of the
                        // workspace), else it is kept beside the path.
                        parent.exchange(tmp_name, name).map_err(tree_err)?;
                        parent.sync().map_err(tree_err)?;
                        let mut kept = false;
                        if let Some(c) = r.copy {
                            let removable = !recovering
                                || Dir::open_no_symlinks(r.subvol)
                                    .and_then(|live| {
                                        let copy = parent.open_dir_expecting(tmp_name, c)?;
                                        job_for(owner)
                                            .map_err(|e| TreeError::Worker { what: e.message })?
                                            .prove_subset(&copy, &live)
                                    })
                                    .is_ok();
                            kept = !removable
                                || remove_tree(&mut job_for(owner)?, &parent, tmp_name, c).is_err();
                        }
                        self.withdraw(r.op);
                        let keep_note = if kept {
                            format!("; the copy is kept at {}", r.tmp.display())
                        } else {
                            String::new()
                        };
                        return Err(Error::new(
                            ErrorCode::OperationFailed,
                            format!(
                                "release of {} undone: the workspace changed while it was being copied ({e}); it is unchanged and still workspace {}{keep_note}",
                                r.path.display(),
                                r.ws_id
                            ),
                        )
                        .hint("stop programs writing into the workspace, then retry (`ws-ckpt apply` retries by itself)"));
                    }
                }
            }
            // The plain directory is the workspace's content: record that only the deletions
            // remain, the exchange made durable first. Until that record is written nothing
            // is deleted; when it cannot be written, a release that is not a recovery is
            // undone (the command reports a failure that has no later effect).
            let recorded =
                parent
                    .sync()
                    .map_err(tree_err)
                    .and_then(|()| match self.store.pending(r.op) {
                        Some(mut op) => {
                            if let PendingKind::Release { phase: p, .. } = &mut op.kind {
                                *p = ReleasePhase::Deleting;
                            }
                            self.store.update(r.op, op.kind)
                        }
                        None => Ok(()),
                    });
            if let Err(e) = recorded {
                if recovering {
                    return Err(e);
                }
                return Err(self.undo_release(r, &parent, name, old_link.as_ref(), e));
            }
            fault::point("release:recorded-deleting");
        }
        // The old workspace symlink (now at the temporary name) goes first; in recovery too,
        // where an interruption may have left it.
        if let Ok((parent, _)) = open_bound_parent(r.path, r.parent.as_ref()) {
            let tmp_name = tmp_name(r.tmp)?;
            if let Ok(Some((st, t))) = parent.read_symlink(tmp_name) {
                if t == r.subvol && r.link.is_none_or(|l| l == st.identity()) {
                    parent
                        .unlink_expecting(tmp_name, st.identity())
                        .map_err(tree_err)?;
                    parent.sync().map_err(tree_err)?;
                }
            }
        }
        fault::point("release:deleting");
        // Past this point the release is no longer undone: the plain directory is in place
        // and the record says only the deletions remain, so a failure is reported as such and
        // the next pass finishes them (never a silent completion of a reported failure).
        let deleted = (|| -> Result<()> {
            let snap_dir = self.res.snap_dir(r.ws_id);
            for name in self.sys.list_subvolumes(&snap_dir)? {
                self.sys.delete_subvolume(&snap_dir.join(name))?;
                fault::point("release:after-delete-snapshot");
            }
            self.sys.delete_subvolume_if_present(r.subvol)?;
            self.remove_gates(r.ws_id)?;
            // The deletions are committed before the workspace is forgotten: a power cut
            // leaves either the record (recovery finishes) or nothing.
            self.sys.commit(&self.res.mount)?;
            Ok(())
        })();
        if let Err(e) = deleted {
            return Err(Error::new(
                ErrorCode::OperationFailed,
                format!(
                    "{} is a plain directory again (released), but deleting the storage of workspace {} failed: {}",
                    r.path.display(),
                    r.ws_id,
                    e.message
                ),
            )
            .hint("fix the cause; the next `ws-ckpt apply` (or any pass of the daemon) finishes deleting it"));
        }
        fault::point("release:after-commit");
        // The effect is durable: the release is done even when state.json cannot be written
        // now (the record is then owed; a restart before it is written finishes recording).
        self.store.forget_released(r.ws_id, r.op);
        let _ = self
            .sys
            .sync_and_wait_cleaner(&self.res.mount, CLEANER_WAIT);
        Ok(())
    }

    /// A release that cannot record its last phase (a full state directory) after the
    /// exchange: nothing is deleted yet, so it is undone — the workspace symlink goes back to
    /// the path and the plain copy is removed when it holds nothing the workspace lacks (a
    /// program may have written into it meanwhile: then it is kept beside the path and named).
    /// The operation is withdrawn (in memory when that cannot be written either). When the
    /// undo itself fails, both copies are kept, the record stays, and the error says so.
    fn undo_release(
        &mut self,
        r: &ReleaseRecord<'_>,
        parent: &Dir,
        name: &OsStr,
        old_link: Option<&(Stat, PathBuf)>,
        cause: Error,
    ) -> Error {
        let Ok(tmp_name) = tmp_name(r.tmp) else {
            return cause;
        };
        let ours = old_link
            .is_some_and(|(st, t)| r.link.is_none_or(|l| l == st.identity()) && t == r.subvol);
        let undone = if ours {
            parent
                .exchange(tmp_name, name)
                .and_then(|()| parent.sync())
                .map_err(|e| e.to_string())
        } else {
            Err(format!(
                "the workspace symlink is no longer at {}",
                r.tmp.display()
            ))
        };
        if let Err(why) = undone {
            return Error::new(
                ErrorCode::OperationFailed,
                format!(
                    "release of {} could not record its progress ({}) and could not be undone ({why}): the plain copy is at {} and workspace {} is intact; both are kept",
                    r.path.display(),
                    cause.message,
                    r.path.display(),
                    r.ws_id
                ),
            )
            .hint("free space in the state directory; the next `ws-ckpt apply` finishes the release");
        }
        let owner = r.owner.unwrap_or(0);
        let mut kept = true;
        if let Some(c) = r.copy {
            let subset = Dir::open_no_symlinks(r.subvol).and_then(|live| {
                let copy = parent.open_dir_expecting(tmp_name, c)?;
                job_for(owner)
                    .map_err(|e| TreeError::Worker { what: e.message })?
                    .prove_subset(&copy, &live)
            });
            kept = subset.is_err()
                || job_for(owner)
                    .map_err(|e| TreeError::Worker { what: e.message })
                    .and_then(|mut job| remove_tree(&mut job, parent, tmp_name, c))
                    .is_err();
        }
        self.withdraw(r.op);
        let keep_note = if kept {
            format!(
                "; the plain copy is kept at {} (compare it with the workspace and remove it)",
                r.tmp.display()
            )
        } else {
            String::new()
        };
        Error::new(
            ErrorCode::OperationFailed,
            format!(
                "release of {} stopped before anything was deleted: {}; it was undone, {} is still workspace {}{keep_note}",
                r.path.display(),
                cause.message,
                r.path.display(),
                r.ws_id
            ),
        )
        .hint("the workspace is unchanged and usable; fix the cause (e.g. free space in the state directory) and retry")
    }

    /// Forget an operation that failed before any irreversible step: in memory even when
    /// the record cannot be written (a full state directory), so that it has no later effect.
    pub(super) fn withdraw(&mut self, op: &str) {
        self.store.end_or_forget(op);
    }
}
