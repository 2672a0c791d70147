//! Observation: reads the live system (mounts, loop devices, image files, subvolumes, workspace
//! paths) into an [`Observed`] value for the planner.
//!
//! Two phases with the backend resolution between them: [`observe_host`] reads what decides
//! which backend is effective (mount table, loop devices, image files, a btrfs-base candidate);
//! [`crate::resolve::resolve_backend`] turns that into a [`Resolution`]; [`observe_storage`]
//! then reads what lies under that backend (subvolumes, snapshot directories, legacy indexes)
//! and the paths of interest. [`observe`] runs the three in order.
//!
//! Read-only: nothing here changes the system. Errors reading one thing are recorded in the
//! observation (the planner turns them into findings) rather than aborting the pass.

use crate::config::Config;
use crate::model::{FileInfo, Observed, PathState, Persisted, StorageView};
use crate::resolve::{resolve_backend, storage_mounted, Resolution};
use crate::state::parse_index;
use crate::sys::{MountEntry, Sys};
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// lstat a path into a [`PathState`].
pub fn path_state(p: &Path) -> PathState {
    match std::fs::symlink_metadata(p) {
        Err(_) => PathState::Missing,
        Ok(m) if m.file_type().is_symlink() => {
            let target = std::fs::read_link(p).unwrap_or_default();
            PathState::Symlink {
                target_exists: p.exists(),
                target,
            }
        }
        Ok(m) if m.is_dir() => PathState::Dir {
            uid: m.uid(),
            empty: std::fs::read_dir(p)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false),
        },
        Ok(_) => PathState::Other,
    }
}

/// Size and identity of the regular file at `p` (following symlinks), if there is one.
pub fn file_info(p: &Path) -> Option<FileInfo> {
    let m = std::fs::metadata(p).ok()?;
    m.is_file().then_some(FileInfo {
        size: m.len(),
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// First writable btrfs mount not backed by a loop device and not a subvolume-only mount.
pub fn detect_base(mounts: &[MountEntry]) -> Option<PathBuf> {
    mounts
        .iter()
        .find(|m| {
            m.fs_type == "btrfs"
                && m.is_writable()
                && !m.source.starts_with("/dev/loop")
                && m.root == Path::new("/")
        })
        .map(|m| m.mount_point.clone())
}

/// Both phases of an observation, with the backend resolved once between them.
pub fn observe(sys: &dyn Sys, config: &Config, persisted: &Persisted) -> (Observed, Resolution) {
    let mut obs = observe_host(sys, config);
    let res = resolve_backend(config, persisted, &obs);
    observe_storage(sys, config, persisted, &res, &mut obs);
    (obs, res)
}

/// Phase 1: the mount table, the loop devices, the configured and the pre-FHS image, the usage
/// of the filesystem holding the image, and a btrfs-base candidate. A mount table that cannot
/// be read is recorded in [`Observed::storage_error`].
pub fn observe_host(sys: &dyn Sys, config: &Config) -> Observed {
    let mut obs = Observed::default();
    match sys.mounts() {
        Ok(m) => obs.mounts = m,
        Err(e) => obs.storage_error = Some(format!("cannot read the mount table: {e}")),
    }
    obs.loops = sys.list_loops().unwrap_or_default();
    let lcfg = &config.backend.btrfs_loop;
    obs.image = file_info(&lcfg.image);
    obs.legacy_image = file_info(&lcfg.legacy_image);
    if let Some(dir) = lcfg.image.parent() {
        obs.image_host_usage = sys.fs_usage(&nearest_existing(dir)).ok();
    }
    obs.base_candidate = detect_base(&obs.mounts);
    obs
}

/// Phase 2: the paths of interest (declared and recorded workspaces, temporary names of
/// pending operations) and, when the resolved backend is usable and mounted, its storage.
pub fn observe_storage(
    sys: &dyn Sys,
    config: &Config,
    persisted: &Persisted,
    res: &Resolution,
    obs: &mut Observed,
) {
    observe_paths(obs, config, persisted);
    fill_subvols(sys, obs);
    if res.conflict.is_none() && storage_mounted(obs, res) {
        let mut view = storage_view(sys, obs, res);
        for w in persisted.state.iter().flat_map(|s| s.workspaces.iter()) {
            if view.workspace_subvols.contains(&w.ws_id) {
                match sys.nested_subvolumes(&res.ws_subvol(&w.ws_id)) {
                    Ok(n) if !n.is_empty() => {
                        view.nested.insert(w.ws_id.clone(), n);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(ws_id = %w.ws_id, error = %e, "cannot list nested subvolumes")
                    }
                }
            }
        }
        obs.storage = Some(view);
    }
}

fn nearest_existing(p: &Path) -> PathBuf {
    let mut cur = p;
    loop {
        if cur.exists() {
            return cur.to_path_buf();
        }
        match cur.parent() {
            Some(parent) => cur = parent,
            None => return PathBuf::from("/"),
        }
    }
}

fn observe_paths(obs: &mut Observed, config: &Config, persisted: &Persisted) {
    let mut paths: BTreeSet<PathBuf> = config.workspaces.iter().map(|w| w.path.clone()).collect();
    let mut subvols: BTreeSet<PathBuf> = BTreeSet::new();
    if let Some(state) = &persisted.state {
        paths.extend(state.workspaces.iter().map(|w| w.workspace_path.clone()));
    }
    paths.extend(persisted.indexes.values().map(|i| i.workspace_path.clone()));
    for op in persisted.pending() {
        use crate::state::PendingKind as K;
        match &op.kind {
            K::Init {
                path, tmp, subvol, ..
            }
            | K::Release {
                path, tmp, subvol, ..
            } => {
                paths.insert(path.clone());
                paths.insert(tmp.clone());
                subvols.insert(subvol.clone());
            }
            K::MigrateImage { from, to, tmp } => {
                paths.extend([from.clone(), to.clone(), tmp.clone()]);
            }
            K::Rollback { subvol, tmp, .. } => {
                subvols.insert(subvol.clone());
                subvols.insert(tmp.clone());
            }
            K::GrowImage { .. } | K::DeleteSnapshots { .. } => {}
        }
    }
    for p in paths {
        let st = path_state(&p);
        obs.paths.insert(p, st);
    }
    obs.subvols = subvols.into_iter().map(|p| (p, false)).collect();
}

fn storage_view(sys: &dyn Sys, obs: &Observed, res: &Resolution) -> StorageView {
    let mut view = StorageView {
        device: obs
            .mount_at(&res.mount)
            .map(|m| m.source.clone())
            .unwrap_or_default(),
        usage: sys.fs_usage(&res.mount).unwrap_or_default(),
        data_root_exists: res.data_root.is_dir(),
        snapshots_root_exists: res.snapshots_root.is_dir(),
        ..Default::default()
    };
    view.workspace_subvols = sys
        .list_subvolumes(&res.data_root)
        .unwrap_or_default()
        .into_iter()
        .collect();
    if let Ok(rd) = std::fs::read_dir(&res.snapshots_root) {
        for entry in rd.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let dir = entry.path();
            if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let snaps: BTreeSet<String> = sys
                .list_subvolumes(&dir)
                .unwrap_or_default()
                .into_iter()
                .collect();
            view.snapshots.insert(name.clone(), snaps);
            let legacy = dir.join("index.json");
            if let Ok(bytes) = std::fs::read(&legacy) {
                if let Ok(idx) = parse_index(&bytes) {
                    view.v0_indexes.insert(name, idx);
                }
            }
        }
    }
    view
}

/// Re-check one subvolume path (used for the subvolume paths named by pending operations).
pub fn fill_subvols(sys: &dyn Sys, obs: &mut Observed) {
    let keys: Vec<PathBuf> = obs.subvols.keys().cloned().collect();
    for k in keys {
        let is = sys.is_subvolume(&k).unwrap_or(false);
        obs.subvols.insert(k, is);
    }
}
