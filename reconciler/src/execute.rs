//! The executor: carries out planned actions, persisting state after each one (SPEC §4, §5.6).
//!
//! It is the only code that changes the system. It does not decide what to do (the planner
//! does); it re-checks each precondition it relies on and fails the action, never guesses.
//! Multi-step actions record their phase durably before their first irreversible step.

use crate::config::{edit, Config};
use crate::copy::{self, Progress};
use crate::error::{Error, ErrorCode, Result};
use crate::fault;
use crate::model::PathState;
use crate::observe::path_state;
use crate::plan::{Action, MigratedWorkspace};
use crate::resolve::Resolution;
use crate::state::{
    BackendIdentity, BackendPaths, LoopImage, SnapshotEntry, StateFile, WorkspaceEntry,
    STATE_VERSION,
};
use crate::state::{InitPhase, PendingKind, PendingOp, ReleasePhase};
use crate::store::Store;
use crate::sys::Sys;
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long to wait for the btrfs cleaner after deleting subvolumes.
pub const CLEANER_WAIT: Duration = Duration::from_secs(30);

/// What happened to one action.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ActionOutcome {
    /// The action.
    #[serde(flatten)]
    pub action: Action,
    /// `done`, `failed` or `planned` (check mode).
    pub result: String,
    /// Error, when failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
}

/// Receives progress of long copies: (what, progress).
pub type ProgressFn<'a> = &'a mut dyn FnMut(&str, &Progress);

/// Carries out actions against one resolved backend.
pub struct Executor<'a> {
    /// System access.
    pub sys: &'a dyn Sys,
    /// Effective config.
    pub config: &'a Config,
    /// Persisted state.
    pub store: &'a mut Store,
    /// Effective backend.
    pub res: &'a Resolution,
    /// Progress sink for long copies.
    pub progress: ProgressFn<'a>,
}

fn io_err<'p>(what: &str, path: &'p Path) -> impl FnOnce(std::io::Error) -> Error + 'p {
    let what = what.to_string();
    move |e| Error::io(&what, path, e)
}

/// Atomically swap two paths (`renameat2(RENAME_EXCHANGE)`).
pub fn exchange(a: &Path, b: &Path) -> Result<()> {
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        a,
        nix::fcntl::AT_FDCWD,
        b,
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    )
    .map_err(|e| {
        Error::new(
            ErrorCode::Io,
            format!("exchange {} with {}: {e}", a.display(), b.display()),
        )
    })
}

/// A sibling name for `path`, derived (never appended) so it fits NAME_MAX:
/// [`crate::tree::names::temp_sibling`].
pub fn sibling(path: &Path, tag: &str, op_id: &str) -> PathBuf {
    crate::tree::names::temp_sibling(path, tag, op_id)
}

/// Create-or-replace a symlink atomically (`tmp` + rename).
fn replace_symlink(target: &Path, path: &Path) -> Result<()> {
    let tmp = sibling(path, "link", &crate::store::new_op_id());
    std::os::unix::fs::symlink(target, &tmp).map_err(io_err("create symlink", &tmp))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("replace symlink", path, e)
    })
}

impl Executor<'_> {
    /// Run one action. State is persisted by each step.
    pub fn run(&mut self, action: &Action) -> Result<()> {
        tracing::info!(action = action.name(), detail = %action.describe(), "executing");
        match action {
            Action::MigrateImagePath { from, to } => self.migrate_image(from, to),
            Action::MigrateV0Indexes { workspaces } => self.migrate_v0(workspaces),
            Action::DeclareMigrated { workspaces } => self.declare_migrated(workspaces),
            Action::BootstrapBackend {
                create_image_bytes,
                image_target_bytes,
                mount_needed,
                ..
            } => self.bootstrap(*create_image_bytes, *image_target_bytes, *mount_needed),
            Action::GrowImage {
                image, to_bytes, ..
            } => {
                let op = self.store.begin(PendingKind::GrowImage {
                    image: image.clone(),
                    to_bytes: *to_bytes,
                })?;
                fault::point("grow:after-begin");
                self.grow(image, *to_bytes)?;
                self.store.end(&op)
            }
            Action::InitWorkspace { ws_id, path } => self.init_workspace(ws_id, path),
            Action::AdoptWorkspace {
                ws_id,
                path,
                create_symlink,
            } => {
                let subvol = self.res.ws_subvol(ws_id);
                if *create_symlink {
                    std::os::unix::fs::symlink(&subvol, path)
                        .map_err(io_err("create symlink", path))?;
                }
                self.record_workspace(ws_id, path, &subvol)
            }
            Action::AdoptSnapshot { ws_id, snapshots } => {
                for id in snapshots {
                    let p = self.res.snapshot_path(ws_id, id);
                    let created = std::fs::metadata(&p)
                        .and_then(|m| m.created())
                        .unwrap_or_else(|_| SystemTime::now());
                    let entry = new_entry(created, None, None, false);
                    self.store.put_snapshot(ws_id, id, entry)?;
                }
                Ok(())
            }
            Action::RepairSymlink { path, target, .. } => match path_state(path) {
                PathState::Missing => {
                    std::os::unix::fs::symlink(target, path).map_err(io_err("create symlink", path))
                }
                PathState::Symlink {
                    target_exists: false,
                    ..
                } => replace_symlink(target, path),
                other => Err(Error::new(
                    ErrorCode::WorkspaceDetached,
                    format!("{} is now {other:?}; not replacing it", path.display()),
                )),
            },
            Action::MarkMissing { ws_id, snapshots } => self.set_missing(ws_id, snapshots, true),
            Action::ClearMissing { ws_id, snapshots } => self.set_missing(ws_id, snapshots, false),
            Action::ApplyRetention { ws_id, delete } => {
                let ids: Vec<String> = delete.iter().map(|d| d.id.clone()).collect();
                self.delete_snapshots(ws_id, &ids)
            }
            Action::ReleaseWorkspace { ws_id, path } => self.release_workspace(ws_id, path),
            Action::FinishInterrupted { op_id, .. } => self.recover(op_id, true),
            Action::RevertInterrupted { op_id, .. } => self.recover(op_id, false),
        }
    }

    fn set_missing(&mut self, ws_id: &str, snapshots: &[String], missing: bool) -> Result<()> {
        for id in snapshots {
            let Some(mut e) = self
                .store
                .p
                .indexes
                .get(ws_id)
                .and_then(|i| i.snapshots.get(id))
                .cloned()
            else {
                continue;
            };
            e.missing = missing;
            self.store.put_snapshot(ws_id, id, e)?;
        }
        Ok(())
    }

    fn bootstrap(
        &mut self,
        create_image_bytes: Option<u64>,
        image_target: Option<u64>,
        mount_needed: bool,
    ) -> Result<()> {
        let res = self.res;
        if let (Some(image), Some(bytes)) = (&res.image, create_image_bytes) {
            if image.exists() {
                return Err(Error::new(
                    ErrorCode::OperationFailed,
                    format!(
                        "{} appeared while planning; not overwriting it",
                        image.display()
                    ),
                ));
            }
            let dir = image.parent().unwrap_or(Path::new("/"));
            std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
            // Format under a temporary name so a crash never leaves a half-made image under the
            // real name.
            let tmp = sibling(image, "creating", &crate::store::new_op_id());
            self.sys.create_image(&tmp, bytes)?;
            std::fs::rename(&tmp, image).map_err(io_err("rename image", image))?;
            fsync_dir(dir);
        }
        let mut device = None;
        if mount_needed {
            std::fs::create_dir_all(&res.mount)
                .map_err(io_err("create mount point", &res.mount))?;
            match &res.image {
                Some(image) => {
                    let m = self.sys.mount_image(image, &res.mount)?;
                    if !m.direct_io {
                        tracing::warn!(image = %image.display(), "the backing filesystem refused direct I/O; the loop device uses buffered I/O");
                    }
                    device = Some(m.device);
                }
                None => {
                    return Err(Error::new(
                        ErrorCode::StorageUnavailable,
                        format!("no btrfs filesystem is mounted at {}", res.mount.display()),
                    ))
                }
            }
        }
        for d in [&res.data_root, &res.snapshots_root] {
            std::fs::create_dir_all(d).map_err(io_err("create directory", d))?;
        }
        if device.is_none() {
            device = self
                .sys
                .mounts()?
                .into_iter()
                .rev()
                .find(|m| m.mount_point == res.mount)
                .map(|m| PathBuf::from(m.source));
        }
        self.record_backend(device, image_target)
    }

    fn record_backend(&mut self, device: Option<PathBuf>, image_target: Option<u64>) -> Result<()> {
        let res = self.res;
        let now = crate::time::now_rfc3339();
        let loop_img = match &res.image {
            Some(img) => {
                let size = std::fs::metadata(img).map(|m| m.len()).unwrap_or(0);
                let prev = self
                    .store
                    .p
                    .state
                    .as_ref()
                    .and_then(|s| s.paths.loop_img.clone());
                let mut li = prev.unwrap_or(LoopImage {
                    img_path: img.clone(),
                    img_size_bytes: size,
                    last_loop_device: None,
                    img_target_bytes: None,
                    extra: Default::default(),
                });
                li.img_path = img.clone();
                li.img_size_bytes = size;
                if device.is_some() {
                    li.last_loop_device = device.clone();
                }
                if let Some(t) = image_target {
                    li.img_target_bytes = Some(t);
                }
                Some(li)
            }
            None => None,
        };
        let identity = |prev: Option<&BackendIdentity>| {
            let mut b = prev.cloned().unwrap_or(BackendIdentity {
                backend_type: res.backend_type,
                selection_method: res.selection_method,
                selected_at: now.clone(),
                extra: Default::default(),
            });
            if b.backend_type != res.backend_type || b.selection_method != res.selection_method {
                let changed_type = b.backend_type != res.backend_type;
                b.backend_type = res.backend_type;
                // "persisted" only ever confirms an earlier choice; keep the original method.
                if res.selection_method != crate::state::SelectionMethod::Persisted {
                    b.selection_method = res.selection_method;
                }
                if changed_type {
                    b.selected_at = now.clone();
                }
            }
            b
        };
        match self.store.p.state.as_mut() {
            Some(s) => {
                s.backend = identity(Some(&s.backend));
                let extra = std::mem::take(&mut s.paths.extra);
                s.paths = BackendPaths {
                    backend: res.backend_type,
                    mount_path: res.mount.clone(),
                    data_root: res.data_root.clone(),
                    snapshots_root: res.snapshots_root.clone(),
                    loop_img,
                    extra,
                };
            }
            None => {
                self.store.p.state = Some(StateFile {
                    version: STATE_VERSION,
                    backend: identity(None),
                    paths: BackendPaths {
                        backend: res.backend_type,
                        mount_path: res.mount.clone(),
                        data_root: res.data_root.clone(),
                        snapshots_root: res.snapshots_root.clone(),
                        loop_img,
                        extra: Default::default(),
                    },
                    workspaces: Vec::new(),
                    pending: Vec::new(),
                    last_unclean_shutdown: None,
                    last_clean_stop: None,
                    // A fresh host: whatever gets recorded is declared in the config.
                    config_declared: true,
                    extra: Default::default(),
                });
            }
        }
        self.store.save()
    }

    fn grow(&mut self, image: &Path, to_bytes: u64) -> Result<()> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(image)
            .map_err(io_err("open image", image))?;
        let cur = f.metadata().map_err(io_err("stat image", image))?.len();
        if cur < to_bytes {
            f.set_len(to_bytes).map_err(io_err("grow image", image))?;
            f.sync_all().map_err(io_err("fsync image", image))?;
        }
        fault::point("grow:after-truncate");
        let device = self
            .sys
            .mounts()?
            .into_iter()
            .rev()
            .find(|m| m.mount_point == self.res.mount)
            .map(|m| PathBuf::from(m.source))
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::StorageUnavailable,
                    format!(
                        "{} is not mounted; cannot grow it online",
                        self.res.mount.display()
                    ),
                )
            })?;
        self.sys.refresh_loop_capacity(&device)?;
        self.sys.resize_max(&self.res.mount)?;
        let state = self.store.state_mut()?;
        if let Some(li) = state.paths.loop_img.as_mut() {
            li.img_size_bytes = to_bytes.max(cur);
            li.img_target_bytes = Some(to_bytes);
        }
        self.store.save()
    }

    fn migrate_image(&mut self, from: &Path, to: &Path) -> Result<()> {
        let dir = to.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let op_id = crate::store::new_op_id();
        let tmp = sibling(to, "migrating", &op_id);
        // The pending record needs a state file; before the first bootstrap there may be none,
        // in which case the move is protected by its own ordering (tmp, fsync, rename, unlink).
        let op = if self.store.p.state.is_some() {
            Some(self.store.begin(PendingKind::MigrateImage {
                from: from.to_path_buf(),
                to: to.to_path_buf(),
                tmp: tmp.clone(),
            })?)
        } else {
            None
        };
        match std::fs::rename(from, to) {
            Ok(()) => fsync_dir(dir),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                crate::tree::copy_file(from, &tmp)?;
                fault::point("migrate-image:after-copy");
                std::fs::rename(&tmp, to).map_err(io_err("rename image", to))?;
                fsync_dir(dir);
                fault::point("migrate-image:after-rename");
                std::fs::remove_file(from).map_err(io_err("remove old image", from))?;
            }
            Err(e) => return Err(Error::io("move image to", to, e)),
        }
        if let Some(op) = op {
            self.store.end(&op)?;
        }
        Ok(())
    }

    fn migrate_v0(&mut self, workspaces: &[MigratedWorkspace]) -> Result<()> {
        for w in workspaces {
            let legacy = self.res.snap_dir(&w.ws_id).join("index.json");
            let bytes = std::fs::read(&legacy).map_err(io_err("read", &legacy))?;
            let idx = crate::state::parse_index(&bytes)
                .map_err(|e| Error::io("parse legacy index", &legacy, e))?;
            self.store.set_index(&w.ws_id, idx)?;
            let subvol = self.res.ws_subvol(&w.ws_id);
            let owner = std::fs::metadata(&subvol).ok().map(|m| m.uid());
            let entry = WorkspaceEntry {
                ws_id: w.ws_id.clone(),
                workspace_path: w.path.clone(),
                registered_at: crate::time::now_rfc3339(),
                origin_backend: self.res.backend_type,
                owner_uid: owner,
                extra: Default::default(),
            };
            self.store.add_workspace(entry)?;
        }
        self.declare_migrated(workspaces)
    }

    fn declare_migrated(&mut self, workspaces: &[MigratedWorkspace]) -> Result<()> {
        let entries: Vec<(String, PathBuf)> = workspaces
            .iter()
            .filter(|w| self.config.workspace(&w.path).is_none())
            .map(|w| (w.ws_id.clone(), w.path.clone()))
            .collect();
        if !entries.is_empty() {
            edit::write_migrated(&self.config.dropin_dir, &entries)?;
        }
        let state = self.store.state_mut()?;
        state.config_declared = true;
        self.store.save()
    }

    fn record_workspace(&mut self, ws_id: &str, path: &Path, subvol: &Path) -> Result<()> {
        let owner = std::fs::metadata(subvol).ok().map(|m| m.uid());
        let entry = WorkspaceEntry {
            ws_id: ws_id.to_string(),
            workspace_path: path.to_path_buf(),
            registered_at: crate::time::now_rfc3339(),
            origin_backend: self.res.backend_type,
            owner_uid: owner,
            extra: Default::default(),
        };
        self.store.add_workspace(entry)
    }

    /// Directory → workspace (SPEC §5.1).
    fn init_workspace(&mut self, ws_id: &str, path: &Path) -> Result<()> {
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

    fn finish_init(
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
    fn release_workspace(&mut self, ws_id: &str, path: &Path) -> Result<()> {
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

    fn finish_release(&mut self, op: &str, ws_id: &str, path: &Path, tmp: &Path) -> Result<()> {
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

    /// Delete snapshots (retention, cleanup, delete), crash-safe: the list is recorded first,
    /// each subvolume is deleted, then its entry; a restart finishes the list.
    pub fn delete_snapshots(&mut self, ws_id: &str, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let op = self.store.begin(PendingKind::DeleteSnapshots {
            ws_id: ws_id.to_string(),
            snapshots: ids.to_vec(),
        })?;
        fault::point("delete:after-begin");
        self.finish_delete(&op, ws_id, ids)
    }

    fn finish_delete(&mut self, op: &str, ws_id: &str, ids: &[String]) -> Result<()> {
        for id in ids {
            let p = self.res.snapshot_path(ws_id, id);
            self.sys.delete_subvolume_if_present(&p)?;
            fault::point("delete:after-subvolume");
            let known = self
                .store
                .p
                .indexes
                .get(ws_id)
                .is_some_and(|i| i.snapshots.contains_key(id));
            if known {
                self.store.remove_snapshot(ws_id, id)?;
            }
        }
        self.store.end(op)?;
        if let Err(e) = self
            .sys
            .sync_and_wait_cleaner(&self.res.mount, CLEANER_WAIT)
        {
            tracing::warn!(mount = %self.res.mount.display(), error = %e, "could not wait for the btrfs cleaner; space may return later");
        }
        Ok(())
    }

    /// Finish or revert an interrupted operation, re-checking what the planner proved.
    fn recover(&mut self, op_id: &str, finish: bool) -> Result<()> {
        let Some(PendingOp { kind, .. }) = self.store.pending(op_id) else {
            return Ok(());
        };
        match kind {
            PendingKind::Init {
                ws_id,
                path,
                subvol,
                tmp,
                ..
            } => {
                if finish {
                    self.finish_init(op_id, &ws_id, &path, &subvol, &tmp)
                } else {
                    if let PathState::Symlink { .. } = path_state(&tmp) {
                        std::fs::remove_file(&tmp).map_err(io_err("remove", &tmp))?;
                    }
                    if !matches!(path_state(&path), PathState::Dir { .. }) {
                        return Err(Error::new(
                            ErrorCode::OperationFailed,
                            format!(
                                "{} is no longer the original directory; not reverting",
                                path.display()
                            ),
                        ));
                    }
                    self.sys.delete_subvolume_if_present(&subvol)?;
                    self.store.end(op_id)
                }
            }
            PendingKind::Release {
                ws_id,
                path,
                subvol,
                tmp,
                ..
            } => {
                if finish {
                    self.finish_release(op_id, &ws_id, &path, &tmp)
                } else {
                    if !matches!(path_state(&path), PathState::Symlink { target, .. } if target == subvol)
                    {
                        return Err(Error::new(
                            ErrorCode::OperationFailed,
                            format!(
                                "{} is no longer the workspace symlink; not reverting",
                                path.display()
                            ),
                        ));
                    }
                    if let PathState::Dir { .. } = path_state(&tmp) {
                        copy::remove_tree(&tmp)?;
                    }
                    self.store.end(op_id)
                }
            }
            PendingKind::MigrateImage { from, to, tmp } => {
                if finish {
                    if from.exists() && to.exists() {
                        std::fs::remove_file(&from).map_err(io_err("remove old image", &from))?;
                    }
                } else if tmp.exists() {
                    std::fs::remove_file(&tmp).map_err(io_err("remove partial copy", &tmp))?;
                }
                self.store.end(op_id)
            }
            PendingKind::GrowImage { image, to_bytes } => {
                self.grow(&image, to_bytes)?;
                self.store.end(op_id)
            }
            PendingKind::Rollback { tmp, .. } => {
                // The workspace symlink points at `subvol` by name; whichever subvolume holds
                // that name is live (before or after the exchange). The other one is the copy
                // to drop, whether finishing or reverting.
                self.sys.delete_subvolume_if_present(&tmp)?;
                self.store.end(op_id)
            }
            PendingKind::DeleteSnapshots { ws_id, snapshots } => {
                self.finish_delete(op_id, &ws_id, &snapshots)
            }
        }
    }
}

/// A new index entry.
pub fn new_entry(
    created: SystemTime,
    message: Option<String>,
    metadata: Option<serde_json::Value>,
    pinned: bool,
) -> SnapshotEntry {
    SnapshotEntry {
        message,
        metadata,
        pinned,
        created_at: crate::time::Timestamp::nanos(created),
        missing: false,
        extra: Default::default(),
    }
}

/// fsync a directory (best effort; logged on failure).
pub fn fsync_dir(dir: &Path) {
    if let Err(e) = crate::state::fsync_dir(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "fsync of directory failed");
    }
}
