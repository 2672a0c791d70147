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

use crate::access::{AclObs, DirObs, ACL_XATTR};
use crate::config::Config;
use crate::model::{Accounts, FileInfo, Observed, ParentObs, PathState, Persisted, StorageView};
use crate::resolve::{resolve_backend, storage_mounted, Resolution, GATES_DIR, LIVE_NAME};
use crate::state::{parse_index, ParentRecord};
use crate::sys::{MountEntry, Sys};
use crate::tree::{Dir, Kind, TreeError};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What is at `p`, seen from the directory holding it: that directory is opened without
/// following any symlink ([`open_parent`]), then the entry is examined by name from its
/// descriptor (a symlink is read, never followed). When the directory cannot be opened that
/// way the path is [`PathState::Unreachable`] (a missing directory makes the path missing).
pub fn path_state(p: &Path) -> PathState {
    match open_parent(p) {
        Ok((dir, name)) => state_in(&dir, name),
        Err(e) if e.errno() == Some(libc::ENOENT) => PathState::Missing,
        Err(e) => PathState::Unreachable { why: e.to_string() },
    }
}

/// The directory holding `p`, opened without following a symlink in any component
/// (`openat2(RESOLVE_NO_SYMLINKS)`), and `p`'s last component.
pub fn open_parent(p: &Path) -> Result<(Dir, &OsStr), TreeError> {
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) if p.is_absolute() => Ok((Dir::open_no_symlinks(parent)?, name)),
        _ => Err(TreeError::BadDestination {
            path: p.to_path_buf(),
            what: "it is not an absolute path with a last component".into(),
        }),
    }
}

/// What entry `name` of `dir` is (see [`path_state`]).
pub fn state_in(dir: &Dir, name: &OsStr) -> PathState {
    let unreachable = |e: TreeError| PathState::Unreachable { why: e.to_string() };
    match dir.child_stat(name) {
        Ok(None) => PathState::Missing,
        Err(e) => unreachable(e),
        Ok(Some(st)) => match st.kind {
            Kind::Symlink => match dir.read_symlink(name) {
                Ok(Some((_, target))) => PathState::Symlink {
                    // Whether the link resolves: a stat of its target, as root, only read.
                    target_exists: target.is_absolute() && target.exists(),
                    target,
                },
                Ok(None) => PathState::Missing,
                Err(e) => unreachable(e),
            },
            Kind::Dir => PathState::Dir {
                uid: st.uid,
                empty: dir
                    .open_dir(name)
                    .and_then(|d| d.names())
                    .map(|n| n.is_empty())
                    .unwrap_or(false),
            },
            _ => PathState::Other,
        },
    }
}

/// The directory `parent` as [`ParentObs`]: opened without following a symlink, its identity
/// and owner, whether it and every directory above it are searchable by others, and the
/// temporary names ws-ckpt makes next to user paths that it holds.
pub fn observe_parent(parent: &Path) -> ParentObs {
    let opened = Dir::open_no_symlinks(parent);
    let found = opened
        .as_ref()
        .map_err(|e| e.to_string())
        .and_then(|d| parent_record(d).map_err(|e| e.to_string()));
    let temp_names = opened
        .as_ref()
        .ok()
        .and_then(|d| d.names().ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| crate::tree::names::parse_temp_name(n).is_some())
        .collect();
    ParentObs {
        found,
        others_search: others_may_search(parent),
        temp_names,
    }
}

/// The record of directory `d`: identity, owner and filesystem ID.
pub fn parent_record(d: &Dir) -> Result<ParentRecord, TreeError> {
    let st = d.stat()?;
    Ok(ParentRecord {
        dev: st.dev,
        ino: st.ino,
        uid: st.uid,
        fsid: fs_id(d),
    })
}

/// `f_fsid` of the filesystem holding `d` (`fstatfs`), as one number; `None` when unknown.
fn fs_id(d: &Dir) -> Option<u64> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `st` is a writable statfs buffer and the descriptor is live for the call.
    let rc = unsafe { libc::fstatfs(d.as_fd().as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: fstatfs returned 0, so it filled the whole buffer.
    let st = unsafe { st.assume_init() };
    // SAFETY: `fsid_t` is two `c_int`s (its field is private in libc); reading it as such
    // reinterprets the same 8 bytes.
    let v: [i32; 2] = unsafe { std::mem::transmute(st.f_fsid) };
    let id = (u64::from(v[0] as u32) << 32) | u64::from(v[1] as u32);
    (id != 0).then_some(id)
}

/// True when `dir` and every directory above it can be searched by other users (`o+x`),
/// each opened without following a symlink (a symlink anywhere makes it false).
pub fn others_may_search(dir: &Path) -> bool {
    let mut prefix = PathBuf::new();
    for c in dir.components() {
        prefix.push(c);
        let ok = Dir::open_no_symlinks(&prefix)
            .and_then(|d| d.stat())
            .is_ok_and(|st| st.perm & 0o001 != 0);
        if !ok {
            return false;
        }
    }
    dir.is_absolute()
}

/// Whether directory `dir` is part of ws-ckpt's own storage, however it was reached (a bind
/// mount of data_root, a second mount of the same filesystem): its mount (`STATX_MNT_ID`) is
/// looked up in `mounts`, and its path inside the filesystem (the mount's root plus the path
/// below the mount point) compared with those of data_root and snapshots_root. Returns why.
pub fn storage_alias(dir: &Dir, res: &Resolution, mounts: &[MountEntry]) -> Option<String> {
    let (dev, inside) = fs_location(dir, mounts)?;
    for (what, root) in [
        ("data root", &res.data_root),
        ("snapshots root", &res.snapshots_root),
    ] {
        let Ok(r) = Dir::open_no_symlinks(root) else {
            continue;
        };
        let Some((rdev, rinside)) = fs_location(&r, mounts) else {
            continue;
        };
        if rdev == dev && inside.starts_with(&rinside) {
            return Some(format!(
                "it is inside ws-ckpt's {what} {} (the same directory of the same filesystem, reached through the mount at {})",
                root.display(),
                mount_of(dir, mounts)
                    .map(|m| m.mount_point.display().to_string())
                    .unwrap_or_default()
            ));
        }
    }
    None
}

fn mount_of<'m>(dir: &Dir, mounts: &'m [MountEntry]) -> Option<&'m MountEntry> {
    let st = dir.stat().ok()?;
    let id = u32::try_from(st.mnt_id).ok()?;
    mounts.iter().find(|m| m.mount_id == id)
}

/// (`major:minor` of the filesystem, path of `dir` inside it).
fn fs_location(dir: &Dir, mounts: &[MountEntry]) -> Option<(String, PathBuf)> {
    let m = mount_of(dir, mounts)?;
    let fd = format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd());
    let here = std::fs::read_link(fd).ok()?;
    let below = here.strip_prefix(&m.mount_point).ok()?;
    let mut inside = m.root.clone();
    if !below.as_os_str().is_empty() {
        inside.push(below);
    }
    Some((m.dev.clone(), inside))
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
    let mut obs = Observed {
        own_ids: own_ids(),
        ..Observed::default()
    };
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
/// pending operations) with the directories holding them, the accounts the storage gates
/// name and, when the resolved backend is usable and mounted, its storage.
pub fn observe_storage(
    sys: &dyn Sys,
    config: &Config,
    persisted: &Persisted,
    res: &Resolution,
    obs: &mut Observed,
) {
    observe_paths(obs, config, persisted);
    fill_subvols(sys, obs);
    obs.accounts = accounts(config, persisted);
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
        // A declared directory that is ws-ckpt's own storage reached another way.
        let recorded: BTreeSet<&Path> = persisted
            .state
            .iter()
            .flat_map(|s| s.workspaces.iter().map(|w| w.workspace_path.as_path()))
            .collect();
        for d in &config.workspaces {
            if recorded.contains(d.path.as_path())
                || !matches!(obs.path(&d.path), PathState::Dir { .. })
            {
                continue;
            }
            if let Some(why) = open_parent(&d.path)
                .and_then(|(p, n)| p.open_dir(n))
                .ok()
                .and_then(|dir| storage_alias(&dir, res, &obs.mounts))
            {
                obs.storage_aliases.insert(d.path.clone(), why);
            }
        }
    }
}

/// The uids and gids the gates need: each `allow_users` / `allow_groups` entry (a name, or a
/// number taken as is) and the primary group of each recorded owner.
fn accounts(config: &Config, persisted: &Persisted) -> Accounts {
    let mut a = Accounts::default();
    for d in &config.workspaces {
        for u in &d.allow_users {
            a.users.entry(u.clone()).or_insert_with(|| {
                u.parse().ok().or_else(|| {
                    nix::unistd::User::from_name(u)
                        .ok()
                        .flatten()
                        .map(|x| x.uid.as_raw())
                })
            });
        }
        for g in &d.allow_groups {
            a.groups.entry(g.clone()).or_insert_with(|| {
                g.parse().ok().or_else(|| {
                    nix::unistd::Group::from_name(g)
                        .ok()
                        .flatten()
                        .map(|x| x.gid.as_raw())
                })
            });
        }
    }
    for w in persisted.state.iter().flat_map(|s| s.workspaces.iter()) {
        if let Some(uid) = w.owner_uid {
            a.primary_gid.entry(uid).or_insert_with(|| primary_gid(uid));
        }
    }
    a
}

/// This process's effective uid and gid.
pub fn own_ids() -> (u32, u32) {
    (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    )
}

/// The primary gid of `uid` in the user database.
pub fn primary_gid(uid: u32) -> Option<u32> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.gid.as_raw())
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
    let parents: BTreeSet<PathBuf> = paths
        .iter()
        .filter(|p| p.is_absolute())
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    for d in parents {
        let o = observe_parent(&d);
        obs.parents.insert(d, o);
    }
    for p in paths {
        let st = path_state(&p);
        obs.paths.insert(p, st);
    }
    obs.subvols = subvols.into_iter().map(|p| (p, false)).collect();
}

/// Mode, owner and access ACL of the directory `p` (opened without following a symlink).
pub fn dir_obs(p: &Path) -> Option<DirObs> {
    let d = Dir::open_no_symlinks(p).ok()?;
    let st = d.stat().ok()?;
    let acl = match d.get_xattr(ACL_XATTR) {
        Ok(None) => AclObs::None,
        Ok(Some(v)) => AclObs::Set(v),
        Err(e) if matches!(e.errno(), Some(libc::EOPNOTSUPP)) => AclObs::Unsupported,
        Err(e) => AclObs::Unreadable(e.to_string()),
    };
    Some(DirObs {
        uid: st.uid,
        gid: st.gid,
        mode: st.perm,
        acl,
    })
}

/// Names of the directories directly in `dir` (sorted; nothing when it cannot be read).
fn subdirs(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    v.sort();
    v
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
    view.roots = res
        .root_dirs()
        .into_iter()
        .map(|d| {
            let o = dir_obs(&d);
            (d, o)
        })
        .collect();
    view.legacy_subvols = sys
        .list_subvolumes(&res.data_root)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let snapshots_name = res
        .snapshots_root
        .strip_prefix(&res.data_root)
        .ok()
        .and_then(|r| r.to_str())
        .map(str::to_string);
    if let Ok(rd) = std::fs::read_dir(&res.data_root) {
        for e in rd.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name == GATES_DIR
                || Some(&name) == snapshots_name.as_ref()
                || view.legacy_subvols.contains(&name)
            {
                continue;
            }
            view.data_root_other.insert(name);
        }
    }
    for ws_id in subdirs(&res.gates_dir()) {
        let gate = res.gate(&ws_id);
        let Some(o) = dir_obs(&gate) else { continue };
        view.gates.insert(ws_id.clone(), o);
        let subs: BTreeSet<String> = sys
            .list_subvolumes(&gate)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut extra = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir(&gate) {
            for e in rd.flatten() {
                let Some(name) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if name == LIVE_NAME && subs.contains(&name) {
                    continue;
                }
                let is_sub = subs.contains(&name);
                extra.insert(name, is_sub);
            }
        }
        if subs.contains(LIVE_NAME) {
            view.workspace_subvols.insert(ws_id.clone());
            if let Some(uid) = owner_of(&res.ws_subvol(&ws_id)) {
                view.subvol_owner.insert(ws_id.clone(), uid);
            }
        }
        if !extra.is_empty() {
            view.gate_extra.insert(ws_id, extra);
        }
    }
    for name in &view.legacy_subvols {
        if let Some(uid) = owner_of(&res.legacy_ws_subvol(name)) {
            view.subvol_owner.entry(name.clone()).or_insert(uid);
        }
    }
    // Every workspace's snapshot directory, listed in one pass (100 000 snapshots at 100 ×
    // 1 000: one tree search instead of a stat per snapshot).
    let mut snap_dirs: Vec<(String, PathBuf)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&res.snapshots_root) {
        for entry in rd.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            snap_dirs.push((name, entry.path()));
        }
    }
    let paths: Vec<PathBuf> = snap_dirs.iter().map(|(_, d)| d.clone()).collect();
    let listed = sys.list_subvolumes_many(&paths);
    for ((name, dir), snaps) in snap_dirs.into_iter().zip(listed) {
        if let Some(o) = dir_obs(&dir) {
            view.snapshot_gates.insert(name.clone(), o);
        }
        let snaps: BTreeSet<String> = snaps.unwrap_or_default().into_iter().collect();
        view.snapshots.insert(name.clone(), snaps);
        let legacy = dir.join("index.json");
        if let Ok(bytes) = std::fs::read(&legacy) {
            if let Ok(idx) = parse_index(&bytes) {
                view.v0_indexes.insert(name, idx);
            }
        }
    }
    view
}

/// Owner of directory `p` (ws-ckpt's own storage path; opened without following a symlink).
fn owner_of(p: &Path) -> Option<u32> {
    Dir::open_no_symlinks(p)
        .and_then(|d| d.stat())
        .ok()
        .map(|s| s.uid)
}

/// Re-check one subvolume path (used for the subvolume paths named by pending operations).
pub fn fill_subvols(sys: &dyn Sys, obs: &mut Observed) {
    let keys: Vec<PathBuf> = obs.subvols.keys().cloned().collect();
    for k in keys {
        let is = sys.is_subvolume(&k).unwrap_or(false);
        obs.subvols.insert(k, is);
    }
}
