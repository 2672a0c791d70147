//! Observation: reads the live system (mounts, loop devices, image files, subvolumes, workspace
//! paths) into an [`Observed`] value for the planner.
//!
//! Read-only: nothing here changes the system. Errors reading one thing are recorded in the
//! observation (the planner turns them into findings) rather than aborting the pass.

use crate::config::Config;
use crate::model::Persisted;
use crate::plan::{resolve_backend, Resolution};
use crate::state::{parse_index, WorkspaceIndex};
use crate::sys::{FsUsage, LoopDevice, MountEntry, Sys};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Identity and size of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    /// Apparent size in bytes.
    pub size: u64,
    /// st_dev.
    pub dev: u64,
    /// st_ino.
    pub ino: u64,
}

/// What is at a path (never following a final symlink).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathState {
    /// Nothing.
    Missing,
    /// A symlink.
    Symlink {
        /// Its target, verbatim.
        target: PathBuf,
        /// Whether the target resolves.
        target_exists: bool,
    },
    /// A real directory.
    Dir {
        /// Owner.
        uid: u32,
        /// True when it has no entries.
        empty: bool,
    },
    /// A regular file or anything else.
    Other,
}

/// The mounted storage of the effective backend.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StorageView {
    /// Mount source (device).
    pub device: String,
    /// Usage of the filesystem.
    pub usage: FsUsage,
    /// data_root exists.
    pub data_root_exists: bool,
    /// snapshots_root exists.
    pub snapshots_root_exists: bool,
    /// Names of the subvolumes directly under data_root.
    pub workspace_subvols: BTreeSet<String>,
    /// ws_id → names of the snapshot subvolumes under `<snapshots_root>/<ws_id>`.
    pub snapshots: BTreeMap<String, BTreeSet<String>>,
    /// Legacy (v0) indexes found at `<snapshots_root>/<ws_id>/index.json`.
    pub v0_indexes: BTreeMap<String, WorkspaceIndex>,
    /// ws_id → subvolumes nested inside that workspace (relative paths), recorded ones only.
    pub nested: BTreeMap<String, Vec<PathBuf>>,
}

/// Everything the planner knows about the live system.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// `/proc/self/mountinfo`.
    pub mounts: Vec<MountEntry>,
    /// Attached loop devices.
    pub loops: Vec<LoopDevice>,
    /// The configured loop image, if present.
    pub image: Option<FileInfo>,
    /// The pre-FHS loop image, if present.
    pub legacy_image: Option<FileInfo>,
    /// Usage of the filesystem holding the image's directory.
    pub image_host_usage: Option<FsUsage>,
    /// A detected btrfs-base filesystem (SPEC §6.2).
    pub base_candidate: Option<PathBuf>,
    /// Storage of the effective backend when it is mounted.
    pub storage: Option<StorageView>,
    /// Why storage could not be observed, when it could not.
    pub storage_error: Option<String>,
    /// lstat of every path of interest (workspace paths, temporary names of pending operations).
    pub paths: BTreeMap<PathBuf, PathState>,
    /// Which temporary/pending subvolume paths exist as subvolumes.
    pub subvols: BTreeMap<PathBuf, bool>,
}

impl Observed {
    /// State of a path that was observed (Missing when it was not asked for).
    pub fn path(&self, p: &Path) -> &PathState {
        self.paths.get(p).unwrap_or(&PathState::Missing)
    }

    /// Whether a path observed with [`Observed::subvols`] is a subvolume.
    pub fn is_subvol(&self, p: &Path) -> bool {
        self.subvols.get(p).copied().unwrap_or(false)
    }

    /// The mount entry at exactly `mount_point` (topmost), if any.
    pub fn mount_at(&self, mount_point: &Path) -> Option<&MountEntry> {
        self.mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == mount_point)
    }
}

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

/// Is `mount` currently a btrfs mount of the loop image `image`?
pub fn loop_mount_matches(obs: &Observed, image: &FileInfo, mount: &Path) -> Option<PathBuf> {
    let m = obs.mount_at(mount)?;
    if m.fs_type != "btrfs" {
        return None;
    }
    obs.loops
        .iter()
        .find(|l| {
            l.device == Path::new(&m.source)
                && l.backing_inode == image.ino
                && l.backing_dev == image.dev
        })
        .map(|l| l.device.clone())
}

/// Observe everything relevant to `config` + `persisted`.
pub fn observe(sys: &dyn Sys, config: &Config, persisted: &Persisted) -> Observed {
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

    let res = resolve_backend(config, persisted, &obs);
    observe_paths(&mut obs, config, persisted);
    fill_subvols(sys, &mut obs);
    if res.conflict.is_none() && storage_mounted(&obs, &res) {
        let mut view = observe_storage(sys, &obs, &res);
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
    obs
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

/// True when the resolved backend's filesystem is mounted where it should be.
pub fn storage_mounted(obs: &Observed, res: &Resolution) -> bool {
    match &res.image {
        Some(_) => obs
            .image
            .as_ref()
            .and_then(|img| loop_mount_matches(obs, img, &res.mount))
            .is_some(),
        None => obs
            .mount_at(&res.mount)
            .is_some_and(|m| m.fs_type == "btrfs"),
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
        use crate::model::PendingKind as K;
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

fn observe_storage(sys: &dyn Sys, obs: &Observed, res: &Resolution) -> StorageView {
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
