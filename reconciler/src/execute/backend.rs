//! Backend steps: create, attach and mount the filesystem and record it (bootstrap), grow
//! the loop image, move a pre-FHS image, adopt ws-ckpt 0.2 indexes and declare 0.3 workspaces.

use super::{fsync_dir, io_err, sibling, Change, Executor};
use crate::config::edit;
use crate::error::{Error, ErrorCode, Result};
use crate::fault;
use crate::plan::MigratedWorkspace;
use crate::state::{
    BackendIdentity, BackendPaths, LoopImage, PendingKind, StateFile, WorkspaceEntry, STATE_VERSION,
};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

impl Executor<'_> {
    pub(super) fn bootstrap(
        &mut self,
        create_image_bytes: Option<u64>,
        image_target: Option<u64>,
        mount_needed: bool,
    ) -> Result<Change> {
        let res = self.res;
        let mut change = Change::AlreadyPresent;
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
            change = Change::Created;
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
                    change = Change::Created;
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
            if !d.is_dir() {
                std::fs::create_dir_all(d).map_err(io_err("create directory", d))?;
                change = Change::Created;
            }
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
        Ok(change.and(self.record_backend(device, image_target)?))
    }

    /// Record the resolved backend in state.json (created on a fresh host).
    fn record_backend(
        &mut self,
        device: Option<PathBuf>,
        image_target: Option<u64>,
    ) -> Result<Change> {
        let res = self.res;
        let now = crate::time::now_rfc3339();
        let loop_img = match &res.image {
            Some(img) => {
                let size = std::fs::metadata(img).map(|m| m.len()).unwrap_or(0);
                let prev = self
                    .store
                    .read()
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
        let changed = self.store.update_state(|state| {
            let before = state.clone();
            match state.as_mut() {
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
                    *state = Some(StateFile {
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
            *state != before
        })?;
        Ok(Change::from_changed(changed))
    }

    /// Grow the image to `to_bytes` (never shrinking it) and the filesystem with it.
    pub(super) fn grow(&mut self, image: &Path, to_bytes: u64) -> Result<Change> {
        let cur = std::fs::metadata(image)
            .map_err(io_err("stat image", image))?
            .len();
        if !self
            .sys
            .mounts()?
            .iter()
            .any(|m| m.mount_point == self.res.mount)
        {
            return Err(Error::new(
                ErrorCode::StorageUnavailable,
                format!(
                    "{} is not mounted; cannot grow it online",
                    self.res.mount.display()
                ),
            ));
        }
        self.sys.grow_image(image, &self.res.mount, to_bytes)?;
        self.store.modify_state(|state| {
            if let Some(li) = state.paths.loop_img.as_mut() {
                li.img_size_bytes = to_bytes.max(cur);
                li.img_target_bytes = Some(to_bytes);
            }
        })?;
        Ok(Change::from_changed(cur < to_bytes))
    }

    pub(super) fn migrate_image(&mut self, from: &Path, to: &Path) -> Result<()> {
        let dir = to.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let op_id = crate::store::new_op_id();
        let tmp = sibling(to, "migrating", &op_id);
        // The pending record needs a state file; before the first bootstrap there may be none,
        // in which case the move is protected by its own ordering (tmp, fsync, rename, unlink).
        let op = if self.store.read().state.is_some() {
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

    pub(super) fn migrate_v0(&mut self, workspaces: &[MigratedWorkspace]) -> Result<()> {
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
        self.declare_migrated(workspaces).map(drop)
    }

    /// Declare recorded workspaces in `config.d/40-migrated.toml` and mark the state so.
    pub(super) fn declare_migrated(&mut self, workspaces: &[MigratedWorkspace]) -> Result<Change> {
        let indexes = crate::state::IndexStore::new(&self.config.daemon.state_dir);
        let entries: Vec<edit::MigratedDecl> = workspaces
            .iter()
            .filter(|w| self.config.workspace(&w.path).is_none())
            .map(|w| {
                // ws-ckpt 0.5 kept a per-workspace policy next to the index: it becomes the
                // declaration's keep/auto_cleanup (the file is left where it is).
                let file = indexes.dir(&w.ws_id).join("policy.toml");
                let policy = edit::read_upstream_policy(&file).unwrap_or_else(|e| {
                    tracing::warn!(ws_id = %w.ws_id, error = %e, "ignoring the ws-ckpt 0.5 policy file");
                    None
                });
                edit::MigratedDecl {
                    ws_id: w.ws_id.clone(),
                    path: w.path.clone(),
                    policy,
                }
            })
            .collect();
        let mut change = Change::AlreadyPresent;
        if !entries.is_empty() {
            let (_, written) = edit::write_migrated_decls(&self.config.dropin_dir, &entries)?;
            change = Change::from_changed(written);
        }
        let declared_now = self.store.modify_state(|state| {
            let was = state.config_declared;
            state.config_declared = true;
            !was
        })?;
        if declared_now {
            change = Change::Created;
        }
        Ok(change)
    }
}
