//! Workspace steps (SPEC §5.1, §5.4): a directory becomes a workspace and back, each phase
//! recorded before its first irreversible step, nothing deleted unless it still matches.

use super::{exchange, fsync_dir, io_err, sibling, Executor, CLEANER_WAIT};
use crate::copy;
use crate::error::{Error, ErrorCode, Result};
use crate::fault;
use crate::model::PathState;
use crate::observe::path_state;
use crate::state::{InitPhase, PendingKind, ReleasePhase};
use std::path::Path;

impl Executor<'_> {
    /// Directory → workspace (SPEC §5.1).
    pub(super) fn init_workspace(&mut self, ws_id: &str, path: &Path) -> Result<()> {
        let subvol = self.res.ws_subvol(ws_id);
        if self.sys.is_subvolume(&subvol)? {
            return Err(Error::new(
                ErrorCode::OperationFailed,
                format!("{} already exists; not overwriting it", subvol.display()),
            ));
        }
        match path_state(path) {
            PathState::Missing => {
                // Nothing to move: an empty workspace. A crash in between leaves an unrecorded
                // subvolume that the next pass adopts.
                self.sys.create_subvolume(&subvol)?;
                std::os::unix::fs::symlink(&subvol, path)
                    .map_err(io_err("create symlink", path))?;
                return self.record_workspace(ws_id, path, &subvol);
            }
            PathState::Dir { .. } => {}
            other => {
                return Err(Error::new(
                    ErrorCode::InvalidPath,
                    format!("{} is {other:?}, not a directory", path.display()),
                ))
            }
        }
        let op_id = crate::store::new_op_id();
        let tmp = sibling(path, "init", &op_id);
        let mut kind = PendingKind::Init {
            ws_id: ws_id.to_string(),
            path: path.to_path_buf(),
            subvol: subvol.clone(),
            tmp: tmp.clone(),
            phase: InitPhase::Copying,
        };
        let op = self.store.begin(kind.clone())?;
        fault::point("init:after-begin");
        self.sys.create_subvolume(&subvol)?;
        fault::point("init:after-subvol");
        let label = format!("copying {}", path.display());
        let progress = &mut *self.progress;
        let copied = copy::copy_tree(path, &subvol, &mut |p| progress(&label, p)).and_then(|_| {
            fault::point("init:after-copy");
            copy::verify_tree(path, &subvol)
        });
        if let Err(e) = copied {
            // Nothing irreversible happened: the original is untouched. Undo and report.
            let _ = self.sys.delete_subvolume(&subvol);
            self.store.end(&op)?;
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
        self.store.update(&op, kind)?;
        fault::point("init:after-verify");
        std::os::unix::fs::symlink(&subvol, &tmp).map_err(io_err("create symlink", &tmp))?;
        fault::point("init:after-link");
        exchange(&tmp, path)?;
        fsync_dir(path.parent().unwrap_or(Path::new("/")));
        fault::point("init:after-exchange");
        self.finish_init(&op, ws_id, path, &subvol, &tmp)
    }

    pub(super) fn finish_init(
        &mut self,
        op: &str,
        ws_id: &str,
        path: &Path,
        subvol: &Path,
        tmp: &Path,
    ) -> Result<()> {
        if let PathState::Dir { .. } = path_state(tmp) {
            // The original is deleted only if it still matches the verified copy: a write
            // that landed between the verification and the swap must not be lost.
            if let Err(e) = copy::verify_tree_metadata(tmp, subvol) {
                self.record_workspace(ws_id, path, subvol)?;
                self.store.end(op)?;
                return Err(Error::new(
                    ErrorCode::OperationFailed,
                    format!(
                        "{} is now workspace {ws_id}, but the directory changed while it was being copied ({e}); the original is kept at {}",
                        path.display(),
                        tmp.display()
                    ),
                )
                .hint(format!(
                    "compare {} with the workspace, copy over what is missing, then delete it; stop programs writing into a directory before turning it into a workspace",
                    tmp.display()
                )));
            }
            copy::remove_tree(tmp)?;
        } else if let PathState::Symlink { .. } = path_state(tmp) {
            std::fs::remove_file(tmp).map_err(io_err("remove", tmp))?;
        }
        fault::point("init:after-remove-original");
        self.record_workspace(ws_id, path, subvol)?;
        self.store.end(op)
    }

    /// Workspace → plain directory (SPEC §5.4).
    pub(super) fn release_workspace(&mut self, ws_id: &str, path: &Path) -> Result<()> {
        let subvol = self.res.ws_subvol(ws_id);
        match path_state(path) {
            PathState::Symlink { target, .. } if target == subvol => {}
            PathState::Missing => {
                std::os::unix::fs::symlink(&subvol, path).map_err(io_err("create symlink", path))?
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
        }
        let op_id = crate::store::new_op_id();
        let tmp = sibling(path, "release", &op_id);
        let mut kind = PendingKind::Release {
            ws_id: ws_id.to_string(),
            path: path.to_path_buf(),
            subvol: subvol.clone(),
            tmp: tmp.clone(),
            phase: ReleasePhase::Copying,
        };
        let op = self.store.begin(kind.clone())?;
        fault::point("release:after-begin");
        let label = format!("copying {} back", path.display());
        let progress = &mut *self.progress;
        let copied = std::fs::create_dir(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))
            .and_then(|_| {
                copy::copy_tree(&subvol, &tmp, &mut |p| progress(&label, p)).map_err(Error::from)
            })
            .and_then(|_| {
                fault::point("release:after-copy");
                copy::verify_tree(&subvol, &tmp).map_err(Error::from)
            });
        if let Err(e) = copied {
            let _ = copy::remove_tree(&tmp);
            self.store.end(&op)?;
            return Err(Error::new(
                ErrorCode::OperationFailed,
                format!(
                    "release of {} stopped before anything was deleted: {}",
                    path.display(),
                    e.message
                ),
            )
            .hint(
                "the workspace is unchanged and usable; fix the cause (e.g. free space) and retry",
            ));
        }
        if let PendingKind::Release { phase, .. } = &mut kind {
            *phase = ReleasePhase::Verified;
        }
        self.store.update(&op, kind)?;
        fault::point("release:after-verify");
        exchange(&tmp, path)?;
        fsync_dir(path.parent().unwrap_or(Path::new("/")));
        fault::point("release:after-exchange");
        self.finish_release(&op, ws_id, path, &tmp)
    }

    pub(super) fn finish_release(
        &mut self,
        op: &str,
        ws_id: &str,
        path: &Path,
        tmp: &Path,
    ) -> Result<()> {
        let subvol = self.res.ws_subvol(ws_id);
        if let PathState::Symlink { .. } = path_state(tmp) {
            // While the old symlink still exists the swap can be undone. Nothing is deleted
            // unless the plain directory still matches the workspace: a write into the
            // workspace after the verification must not be lost.
            if let Err(e) = copy::verify_tree_metadata(&subvol, path) {
                exchange(tmp, path)?;
                fsync_dir(path.parent().unwrap_or(Path::new("/")));
                copy::remove_tree(tmp)?;
                self.store.end(op)?;
                return Err(Error::new(
                    ErrorCode::OperationFailed,
                    format!(
                        "release of {} undone: the workspace changed while it was being copied ({e}); it is unchanged and still workspace {ws_id}",
                        path.display()
                    ),
                )
                .hint("stop programs writing into the workspace, then retry (`ws-ckpt apply` retries by itself)"));
            }
            std::fs::remove_file(tmp).map_err(io_err("remove", tmp))?;
        }
        let snap_dir = self.res.snap_dir(ws_id);
        for name in self.sys.list_subvolumes(&snap_dir)? {
            self.sys.delete_subvolume(&snap_dir.join(name))?;
            fault::point("release:after-delete-snapshot");
        }
        if snap_dir.exists() {
            copy::remove_tree(&snap_dir)?;
        }
        self.sys.delete_subvolume_if_present(&subvol)?;
        self.store.remove_workspace(ws_id)?;
        self.store.end(op)?;
        let _ = self
            .sys
            .sync_and_wait_cleaner(&self.res.mount, CLEANER_WAIT);
        Ok(())
    }
}
