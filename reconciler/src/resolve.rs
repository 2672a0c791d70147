//! Backend resolution (SPEC §4 rules 1 and 2): which backend is effective, where its
//! filesystem, data root and snapshots root are, whether it conflicts with what is recorded,
//! and how large a loop image should be.
//!
//! Pure: a function of the config, the persisted state and the host part of an observation
//! (mount table, loop devices, image files). It runs once per pass, between the two phases of
//! observation (host, then storage), and its [`Resolution`] is handed to the planner, the
//! executor and the snapshot operations, so that no one resolves again.

use crate::config::{BackendKind, Config};
use crate::finding::{Finding, FindingKind, Severity};
use crate::model::{FileInfo, Observed, Persisted};
use crate::state::{BackendType, SelectionMethod};
use crate::sys::FsUsage;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The effective backend and its paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// Effective backend type.
    pub backend_type: BackendType,
    /// How it was chosen.
    pub selection_method: SelectionMethod,
    /// Mount point of the btrfs filesystem.
    pub mount: PathBuf,
    /// Directory holding one subvolume per workspace.
    pub data_root: PathBuf,
    /// Directory holding `<ws_id>/<snapshot>` subvolumes.
    pub snapshots_root: PathBuf,
    /// Image file (loop backend only).
    pub image: Option<PathBuf>,
    /// Set when the backend cannot be used (blocks every mutation).
    #[serde(skip)]
    pub conflict: Option<Finding>,
}

impl Resolution {
    /// `<data_root>/<ws_id>`.
    pub fn ws_subvol(&self, ws_id: &str) -> PathBuf {
        self.data_root.join(ws_id)
    }
    /// `<snapshots_root>/<ws_id>`.
    pub fn snap_dir(&self, ws_id: &str) -> PathBuf {
        self.snapshots_root.join(ws_id)
    }
    /// `<snapshots_root>/<ws_id>/<snapshot>`.
    pub fn snapshot_path(&self, ws_id: &str, snapshot: &str) -> PathBuf {
        self.snap_dir(ws_id).join(snapshot)
    }
}

/// Which backend is effective, by SPEC §4 rule 1, and whether it conflicts (rule 2).
pub fn resolve_backend(config: &Config, persisted: &Persisted, obs: &Observed) -> Resolution {
    let state = persisted.state.as_ref();
    let persisted_type = state.map(|s| s.backend.backend_type);
    let recorded = state.map(|s| s.workspaces.len()).unwrap_or(0);
    let state_path = persisted.state_path.display().to_string();
    let config_path = config.config_path.display().to_string();
    let (backend_type, method) = match (config.backend.kind, persisted_type) {
        (BackendKind::BtrfsLoop, p) => (
            BackendType::BtrfsLoop,
            if p.is_some_and(|p| p != BackendType::BtrfsLoop) {
                SelectionMethod::ConfigOverride
            } else {
                SelectionMethod::Config
            },
        ),
        (BackendKind::BtrfsBase, p) => (
            BackendType::BtrfsBase,
            if p.is_some_and(|p| p != BackendType::BtrfsBase) {
                SelectionMethod::ConfigOverride
            } else {
                SelectionMethod::Config
            },
        ),
        (BackendKind::Auto, Some(p)) => (p, SelectionMethod::Persisted),
        (BackendKind::Auto, None) => {
            let t = if obs.image.is_some() || obs.legacy_image.is_some() {
                BackendType::BtrfsLoop
            } else if config.backend.btrfs_base.btrfs_mount.is_some()
                || obs.base_candidate.is_some()
            {
                BackendType::BtrfsBase
            } else {
                BackendType::BtrfsLoop
            };
            (t, SelectionMethod::AutoDetect)
        }
    };
    let lcfg = &config.backend.btrfs_loop;
    let mut res = match backend_type {
        BackendType::BtrfsLoop => Resolution {
            backend_type,
            selection_method: method,
            mount: lcfg.mount.clone(),
            data_root: lcfg.mount.clone(),
            snapshots_root: lcfg.mount.join("snapshots"),
            image: (!uses_foreign_mount(config, obs)).then(|| lcfg.image.clone()),
            conflict: None,
        },
        BackendType::BtrfsBase => {
            let persisted_base = state
                .filter(|s| s.paths.backend == BackendType::BtrfsBase)
                .map(|s| s.paths.mount_path.clone());
            let mount = config
                .backend
                .btrfs_base
                .btrfs_mount
                .clone()
                .or(persisted_base)
                .or_else(|| obs.base_candidate.clone())
                .unwrap_or_default();
            let data_root = mount.join("ws-ckpt-data");
            Resolution {
                backend_type,
                selection_method: method,
                snapshots_root: data_root.join("snapshots"),
                data_root,
                mount,
                image: None,
                conflict: None,
            }
        }
    };
    let fixes = |persisted: BackendType| {
        format!(
            "either set `[backend] type = \"{}\"` in {config_path}, or restore or remove {state_path} if it does not describe this host",
            backend_kind_name(persisted)
        )
    };
    if let Some(s) = state {
        if s.paths.backend != s.backend.backend_type {
            res.conflict = Some(Finding::new(
                FindingKind::BackendConflict,
                Severity::Error,
                format!(
                    "{state_path} is inconsistent: backend_type is {:?} but its paths describe {:?} ({} workspaces recorded); ws-ckpt will not guess which is right",
                    s.backend.backend_type, s.paths.backend, recorded
                ),
                fixes(s.paths.backend),
            ));
            return res;
        }
        if s.backend.backend_type != backend_type && recorded > 0 {
            res.conflict = Some(Finding::new(
                FindingKind::BackendConflict,
                Severity::Error,
                format!(
                    "config selects {:?} but {state_path} records {recorded} workspace(s) on {:?}; switching would strand their data",
                    backend_type, s.backend.backend_type
                ),
                fixes(s.backend.backend_type),
            ));
            return res;
        }
    }
    if backend_type == BackendType::BtrfsBase {
        let mounted = res.mount != Path::new("")
            && obs
                .mount_at(&res.mount)
                .is_some_and(|m| m.fs_type == "btrfs");
        if !mounted {
            let where_ = if res.mount == Path::new("") {
                "no btrfs filesystem was found".to_string()
            } else {
                format!("no btrfs filesystem is mounted at {}", res.mount.display())
            };
            res.conflict = Some(if recorded > 0 {
                Finding::new(
                    FindingKind::BackendConflict,
                    Severity::Error,
                    format!("{state_path} records {recorded} workspace(s) on BtrfsBase but {where_}; nothing will be created or moved"),
                    format!("mount that filesystem again, or {}", fixes(BackendType::BtrfsLoop)),
                )
            } else {
                Finding::new(
                    FindingKind::StorageUnavailable,
                    Severity::Error,
                    format!("backend btrfs-base selected but {where_}"),
                    format!("mount a btrfs filesystem and set `[backend.btrfs-base] btrfs_mount` in {config_path}, or set `[backend] type = \"btrfs-loop\"`"),
                )
            });
        }
    }
    res
}

/// `daemon --mount-path M` (upstream's form) with a writable btrfs filesystem already mounted
/// at M that is not our image: the loop layout is used on it as it is, and no image is
/// created or mounted (upstream's e2e script mounts its own loop btrfs at M first).
fn uses_foreign_mount(config: &Config, obs: &Observed) -> bool {
    if !config.use_mounted_loop() {
        return false;
    }
    let mount = &config.backend.btrfs_loop.mount;
    let Some(m) = obs.mount_at(mount) else {
        return false;
    };
    let ours = obs
        .image
        .as_ref()
        .is_some_and(|img| loop_mount_matches(obs, img, mount).is_some());
    m.fs_type == "btrfs" && m.is_writable() && !ours
}

/// `[backend] type` spelling of a backend.
pub fn backend_kind_name(t: BackendType) -> &'static str {
    match t {
        BackendType::BtrfsLoop => "btrfs-loop",
        BackendType::BtrfsBase => "btrfs-base",
    }
}

/// The image size the config asks for: min(img_size GiB, img_max_percent % of the host fs).
pub fn image_target_bytes(config: &Config, host: Option<&FsUsage>) -> u64 {
    let l = &config.backend.btrfs_loop;
    let cap = l.img_size_gib.saturating_mul(1 << 30);
    let t = match host {
        Some(h) if h.total > 0 => cap.min(percent_of(h.total, l.img_max_percent)),
        _ => cap,
    };
    t & !4095
}

fn percent_of(n: u64, pct: u32) -> u64 {
    (u128::from(n) * u128::from(pct) / 100) as u64
}

/// Size for a newly created image: the target, or free × percent when the target exceeds free space.
pub fn image_creation_bytes(config: &Config, host: Option<&FsUsage>) -> u64 {
    let t = image_target_bytes(config, host);
    match host {
        Some(h) if t > h.avail => {
            percent_of(h.avail, config.backend.btrfs_loop.img_max_percent) & !4095
        }
        _ => t,
    }
}

/// Is `mount` currently a btrfs mount of the loop image `image`? Returns the loop device.
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
