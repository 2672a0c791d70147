//! Unit tests of the planner: one or more per rule of SPEC §4, over hand-built inputs.

use super::*;
use crate::config::{BackendKind, Keep};
use crate::model::{FileInfo, Observed, PathState, Persisted, StorageView};
use crate::resolve::{image_creation_bytes, image_target_bytes, resolve_backend};
use crate::state::{BackendType, SelectionMethod};
use crate::state::{InitPhase, PendingEntry, PendingKind, PendingOp};
use crate::state::{SnapshotEntry, StateFile, WorkspaceIndex};
use crate::sys::FsUsage;
use crate::sys::{LoopDevice, MountEntry};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

const MNT: &str = "/t/mnt";
const IMG: &str = "/t/state/btrfs-data.img";

fn config(extra: &str) -> Config {
    let text = format!(
        "[daemon]\nstate_dir = \"/t/state\"\nruntime_dir = \"/t/run\"\n[backend]\ntype = \"btrfs-loop\"\n[backend.btrfs-loop]\nimage = \"{IMG}\"\nmount = \"{MNT}\"\nimg_size = 2\n{extra}"
    );
    Config::from_sources(
        Path::new("/t/etc/config.toml"),
        &[(PathBuf::from("/t/etc/config.toml"), text)],
    )
    .expect("test config is valid")
}

/// The planner after resolving the backend from the same observation, as every pass does.
fn plan(
    config: &Config,
    persisted: &Persisted,
    obs: &Observed,
    opts: PlanOptions,
    now: SystemTime,
) -> Plan {
    super::plan(
        config,
        persisted,
        obs,
        &resolve_backend(config, persisted, obs),
        opts,
        now,
    )
}

fn ws_decl(path: &str) -> String {
    format!("[[workspace]]\npath = \"{path}\"\n")
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_000_000)
}

fn state_json(backend: &str, workspaces: &[(&str, &str)]) -> StateFile {
    let ws: Vec<serde_json::Value> = workspaces
        .iter()
        .map(|(id, p)| {
            serde_json::json!({"ws_id": id, "workspace_path": p,
                "registered_at": "2026-11-24T15:07:42Z", "origin_backend": backend})
        })
        .collect();
    let loop_img = if backend == "BtrfsLoop" {
        serde_json::json!({"img_path": IMG, "img_size_bytes": 2u64 << 30,
            "last_loop_device": "/dev/loop1", "img_target_bytes": 2u64 << 30})
    } else {
        serde_json::Value::Null
    };
    let mut paths = serde_json::json!({"backend": backend, "mount_path": MNT,
        "data_root": MNT, "snapshots_root": format!("{MNT}/snapshots")});
    if !loop_img.is_null() {
        paths["loop_img"] = loop_img;
    }
    serde_json::from_value(serde_json::json!({
        "version": 1,
        "backend": {"backend_type": backend, "selection_method": "config", "selected_at": "2026-11-24T15:07:42Z"},
        "paths": paths,
        "workspaces": ws,
        "config_declared": true,
    }))
    .expect("valid state")
}

fn persisted(state: Option<StateFile>) -> Persisted {
    Persisted {
        state_path: PathBuf::from("/t/state/state.json"),
        state,
        ..Default::default()
    }
}

fn entry(t: u64) -> SnapshotEntry {
    serde_json::from_value(serde_json::json!({"message": null, "metadata": null, "pinned": false,
        "created_at": crate::time::format_rfc3339(UNIX_EPOCH + Duration::from_secs(t)), "missing": false}))
    .expect("entry")
}

fn index(path: &str, snaps: &[(&str, u64)]) -> WorkspaceIndex {
    let mut i = WorkspaceIndex::new(PathBuf::from(path));
    for (id, t) in snaps {
        i.snapshots.insert(id.to_string(), entry(*t));
    }
    i
}

/// Observation of a mounted, healthy loop backend.
fn mounted() -> Observed {
    let img = FileInfo {
        size: 2 << 30,
        dev: 42,
        ino: 7,
    };
    Observed {
        mounts: vec![MountEntry {
            mount_id: 1,
            dev: "0:99".into(),
            root: "/".into(),
            mount_point: MNT.into(),
            mount_options: "rw".into(),
            fs_type: "btrfs".into(),
            source: "/dev/loop1".into(),
            super_options: "rw".into(),
        }],
        loops: vec![LoopDevice {
            device: "/dev/loop1".into(),
            backing_file: IMG.into(),
            backing_dev: 42,
            backing_inode: 7,
            direct_io: true,
            autoclear: true,
        }],
        image: Some(img),
        image_host_usage: Some(FsUsage {
            total: 100 << 30,
            free: 50 << 30,
            avail: 50 << 30,
        }),
        storage: Some(StorageView {
            device: "/dev/loop1".into(),
            usage: FsUsage {
                total: 2 << 30,
                free: 1 << 30,
                avail: 1 << 30,
            },
            data_root_exists: true,
            snapshots_root_exists: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn link_to(target: &str) -> PathState {
    PathState::Symlink {
        target: PathBuf::from(target),
        target_exists: true,
    }
}

fn names(p: &Plan) -> Vec<&'static str> {
    p.actions.iter().map(Action::name).collect()
}

fn kinds(p: &Plan) -> Vec<FindingKind> {
    p.findings.iter().map(|f| f.kind).collect()
}

/// A world with one recorded, declared, healthy workspace "ws-aaaaaa" at /home/a with
/// snapshots c1, c2.
fn healthy() -> (Config, Persisted, Observed) {
    let cfg = config(&ws_decl("/home/a"));
    let mut per = persisted(Some(state_json("BtrfsLoop", &[("ws-aaaaaa", "/home/a")])));
    per.indexes.insert(
        "ws-aaaaaa".into(),
        index("/home/a", &[("c1", 100), ("c2", 200)]).into(),
    );
    let mut obs = mounted();
    let view = obs.storage.as_mut().unwrap();
    view.workspace_subvols.insert("ws-aaaaaa".into());
    view.snapshots.insert(
        "ws-aaaaaa".into(),
        ["c1", "c2"].iter().map(|s| s.to_string()).collect(),
    );
    obs.paths
        .insert("/home/a".into(), link_to(&format!("{MNT}/ws-aaaaaa")));
    (cfg, per, obs)
}

#[test]
fn in_sync_world_plans_nothing() {
    let (cfg, per, obs) = healthy();
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert!(p.findings.is_empty(), "{:?}", p.findings);
    assert_eq!(p.backend.unwrap().selection_method, SelectionMethod::Config);
}

#[test]
fn fresh_host_bootstraps_with_new_image_and_inits_declared_dirs() {
    let cfg = config(&ws_decl("/home/a"));
    let mut obs = mounted();
    obs.image = None;
    obs.storage = None;
    obs.mounts.clear();
    obs.loops.clear();
    obs.paths.insert(
        "/home/a".into(),
        PathState::Dir {
            uid: 1000,
            empty: false,
        },
    );
    let p = plan(&cfg, &persisted(None), &obs, PlanOptions::default(), now());
    assert_eq!(names(&p), ["bootstrap-backend", "init-workspace"]);
    match &p.actions[0] {
        Action::BootstrapBackend {
            create_image_bytes,
            mount_needed,
            ..
        } => {
            assert_eq!(
                *create_image_bytes,
                Some(2 << 30),
                "min(img_size, 40% of host)"
            );
            assert!(*mount_needed);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn image_size_rule_caps_by_percent_and_free_space() {
    let cfg = config("img_max_percent = 10\n");
    let host = FsUsage {
        total: 10 << 30,
        free: 5 << 30,
        avail: 5 << 30,
    };
    assert_eq!(image_target_bytes(&cfg, Some(&host)), (1u64 << 30) & !4095);
    let tight = FsUsage {
        total: 100 << 30,
        free: 1 << 30,
        avail: 1 << 30,
    };
    // target = min(2 GiB, 10 GiB) = 2 GiB > 1 GiB free → free × 10 %.
    assert_eq!(
        image_creation_bytes(&cfg, Some(&tight)),
        ((1u64 << 30) / 10) & !4095
    );
}

#[test]
fn unmounted_existing_image_is_reattached_before_anything_else() {
    let (cfg, per, mut obs) = healthy();
    obs.storage = None;
    obs.mounts.clear();
    obs.loops.clear();
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert_eq!(names(&p), ["bootstrap-backend"]);
    assert!(matches!(
        p.actions[0],
        Action::BootstrapBackend {
            mount_needed: true,
            create_image_bytes: None,
            ..
        }
    ));
}

#[test]
fn missing_image_with_workspaces_is_storage_unavailable_never_a_fresh_image() {
    let (cfg, mut per, mut obs) = healthy();
    std::sync::Arc::make_mut(per.indexes.get_mut("ws-aaaaaa").unwrap())
        .snapshots
        .insert("c3".into(), entry(300));
    obs.image = None;
    obs.storage = None;
    obs.mounts.clear();
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(kinds(&p), [FindingKind::StorageUnavailable]);
    let m = &p.findings[0].message;
    for needle in ["ws-aaaaaa", "/home/a", "3 snapshot", IMG, "ws-aaaaaa"] {
        assert!(m.contains(needle), "{needle} not in {m}");
    }
}

#[test]
fn auto_keeps_persisted_backend() {
    let (_, per, obs) = healthy();
    let cfg = {
        let mut c = config(&ws_decl("/home/a"));
        c.backend.kind = BackendKind::Auto;
        c
    };
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    let b = p.backend.unwrap();
    assert_eq!(b.backend_type, BackendType::BtrfsLoop);
    assert_eq!(b.selection_method, SelectionMethod::Persisted);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
}

#[test]
fn auto_without_state_detects_once() {
    let mut cfg = config("");
    cfg.backend.kind = BackendKind::Auto;
    let obs = Observed {
        base_candidate: Some("/data".into()),
        mounts: vec![MountEntry {
            mount_id: 1,
            dev: "0:5".into(),
            root: "/".into(),
            mount_point: "/data".into(),
            mount_options: "rw".into(),
            fs_type: "btrfs".into(),
            source: "/dev/sdb".into(),
            super_options: "rw".into(),
        }],
        ..Default::default()
    };
    let p = plan(&cfg, &persisted(None), &obs, PlanOptions::default(), now());
    let b = p.backend.unwrap();
    assert_eq!(
        (b.backend_type, b.selection_method),
        (BackendType::BtrfsBase, SelectionMethod::AutoDetect)
    );
    assert_eq!(b.data_root, Path::new("/data/ws-ckpt-data"));
    assert_eq!(b.snapshots_root, Path::new("/data/ws-ckpt-data/snapshots"));
    // With an image present, auto means loop.
    let mut obs2 = obs.clone();
    obs2.image = Some(FileInfo {
        size: 1,
        dev: 1,
        ino: 1,
    });
    let p2 = plan(&cfg, &persisted(None), &obs2, PlanOptions::default(), now());
    assert_eq!(p2.backend.unwrap().backend_type, BackendType::BtrfsLoop);
}

#[test]
fn detection_ignores_loop_backed_and_subvolume_mounts() {
    let m = |src: &str, root: &str, mp: &str, opts: &str| MountEntry {
        mount_id: 1,
        dev: "0:1".into(),
        root: root.into(),
        mount_point: mp.into(),
        mount_options: opts.into(),
        fs_type: "btrfs".into(),
        source: src.into(),
        super_options: String::new(),
    };
    let mounts = vec![
        m("/dev/loop3", "/", "/mnt/loop", "rw"),
        m("/dev/sda2", "/@home", "/home", "rw"),
        m("/dev/sdc", "/", "/ro", "ro"),
        m("/dev/sdb", "/", "/data", "rw,relatime"),
    ];
    assert_eq!(
        crate::observe::detect_base(&mounts),
        Some(PathBuf::from("/data"))
    );
}

#[test]
fn config_switch_with_workspaces_is_a_backend_conflict_and_plans_nothing() {
    let (_, per, obs) = healthy();
    let mut cfg = config(&ws_decl("/home/a"));
    cfg.backend.kind = BackendKind::BtrfsBase;
    cfg.backend.btrfs_base.btrfs_mount = Some("/data".into());
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert!(p.actions.is_empty());
    assert!(p.blocked());
    let f = &p.findings[0];
    assert_eq!(f.kind, FindingKind::BackendConflict);
    assert!(
        f.hint.contains("btrfs-loop") && f.hint.contains("/t/etc/config.toml"),
        "{}",
        f.hint
    );
    assert!(f.hint.contains("/t/state/state.json"), "{}", f.hint);
}

#[test]
fn tampered_state_is_a_backend_conflict() {
    // Seed scenario 2: backend_type edited to BtrfsBase, paths still describe the loop.
    let (_, mut per, obs) = healthy();
    per.state.as_mut().unwrap().backend.backend_type = BackendType::BtrfsBase;
    for kind in [BackendKind::Auto, BackendKind::BtrfsLoop] {
        let mut cfg = config(&ws_decl("/home/a"));
        cfg.backend.kind = kind;
        let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
        assert!(p.blocked(), "{kind:?}: {:?}", p.findings);
        assert!(p.actions.is_empty());
    }
}

#[test]
fn base_backend_without_filesystem() {
    let mut cfg = config("");
    cfg.backend.kind = BackendKind::BtrfsBase;
    cfg.backend.btrfs_base.btrfs_mount = Some("/data".into());
    let p = plan(
        &cfg,
        &persisted(None),
        &Observed::default(),
        PlanOptions::default(),
        now(),
    );
    assert!(p.actions.is_empty());
    assert_eq!(kinds(&p), [FindingKind::StorageUnavailable]);
    // With workspaces recorded on it, it is a conflict.
    let mut st = state_json("BtrfsBase", &[("ws-aaaaaa", "/home/a")]);
    st.paths.mount_path = "/data".into();
    let p = plan(
        &cfg,
        &persisted(Some(st)),
        &Observed::default(),
        PlanOptions::default(),
        now(),
    );
    assert!(p.blocked());
}

#[test]
fn legacy_image_is_migrated_first() {
    let cfg = config("legacy_image = \"/t/data/btrfs-data.img\"\n");
    let obs = Observed {
        legacy_image: Some(FileInfo {
            size: 1,
            dev: 1,
            ino: 9,
        }),
        ..Default::default()
    };
    let p = plan(&cfg, &persisted(None), &obs, PlanOptions::default(), now());
    assert_eq!(names(&p)[0], "migrate-image-path");
    assert!(
        !matches!(
            p.actions.get(1),
            Some(Action::BootstrapBackend {
                create_image_bytes: Some(_),
                ..
            })
        ),
        "never a fresh image while a legacy one exists: {:?}",
        p.actions
    );
}

#[test]
fn missing_symlink_is_repaired_and_dangling_one_replaced() {
    let (cfg, per, mut obs) = healthy();
    obs.paths.insert("/home/a".into(), PathState::Missing);
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert_eq!(names(&p), ["repair-symlink"]);
    obs.paths.insert(
        "/home/a".into(),
        PathState::Symlink {
            target: "/old/mount/ws-aaaaaa".into(),
            target_exists: false,
        },
    );
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert_eq!(names(&p), ["repair-symlink"]);
}

#[test]
fn real_directory_at_recorded_path_is_detached_never_overwritten() {
    let (cfg, per, mut obs) = healthy();
    obs.paths.insert(
        "/home/a".into(),
        PathState::Dir {
            uid: 0,
            empty: false,
        },
    );
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert!(!names(&p).contains(&"repair-symlink"));
    assert_eq!(kinds(&p), [FindingKind::PathOccupied]);
    assert!(p.findings[0].message.contains("detached"));
}

#[test]
fn missing_snapshot_is_marked_and_cleared_when_back() {
    let (cfg, mut per, mut obs) = healthy();
    obs.storage
        .as_mut()
        .unwrap()
        .snapshots
        .get_mut("ws-aaaaaa")
        .unwrap()
        .remove("c1");
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert_eq!(
        p.actions,
        [Action::MarkMissing {
            ws_id: "ws-aaaaaa".into(),
            snapshots: vec!["c1".into()]
        }]
    );
    // Once marked, nothing more to do while it stays gone.
    std::sync::Arc::make_mut(per.indexes.get_mut("ws-aaaaaa").unwrap()).snapshots["c1"].missing =
        true;
    assert!(plan(&cfg, &per, &obs, PlanOptions::default(), now())
        .actions
        .is_empty());
    // Back on disk → clear.
    obs.storage
        .as_mut()
        .unwrap()
        .snapshots
        .get_mut("ws-aaaaaa")
        .unwrap()
        .insert("c1".into());
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert_eq!(names(&p), ["clear-missing"]);
}

#[test]
fn unindexed_snapshot_subvolume_is_adopted() {
    let (cfg, per, mut obs) = healthy();
    obs.storage
        .as_mut()
        .unwrap()
        .snapshots
        .get_mut("ws-aaaaaa")
        .unwrap()
        .insert("extra".into());
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert_eq!(
        p.actions,
        [Action::AdoptSnapshot {
            ws_id: "ws-aaaaaa".into(),
            snapshots: vec!["extra".into()]
        }]
    );
}

#[test]
fn missing_workspace_subvolume_is_a_per_workspace_error() {
    let (cfg, per, mut obs) = healthy();
    obs.storage.as_mut().unwrap().workspace_subvols.clear();
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert!(p.actions.is_empty());
    assert_eq!(kinds(&p), [FindingKind::StorageUnavailable]);
    assert_eq!(p.findings[0].ws_id.as_deref(), Some("ws-aaaaaa"));
    assert!(!p.blocked(), "other workspaces keep working");
}

#[test]
fn undeclared_is_reported_and_only_pruned_on_request() {
    let (_, per, obs) = healthy();
    let cfg = config("");
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert_eq!(kinds(&p), [FindingKind::UndeclaredWorkspace]);
    assert!(p.actions.is_empty());
    let p = plan(&cfg, &per, &obs, PlanOptions { prune: true }, now());
    assert_eq!(names(&p), ["release-workspace"]);
}

#[test]
fn absent_declaration_releases() {
    let (_, per, obs) = healthy();
    let cfg = config("[[workspace]]\npath = \"/home/a\"\nstate = \"absent\"\n");
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert_eq!(names(&p), ["release-workspace"]);
}

#[test]
fn declared_directory_is_initialized_with_derived_id() {
    let (cfg, per, mut obs) = healthy();
    let cfg = {
        let mut c = cfg;
        c.workspaces.extend(config(&ws_decl("/home/b")).workspaces);
        c
    };
    obs.paths.insert(
        "/home/b".into(),
        PathState::Dir {
            uid: 1000,
            empty: false,
        },
    );
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert_eq!(
        p.actions,
        [Action::InitWorkspace {
            ws_id: crate::ids::derive_ws_id(Path::new("/home/b")),
            path: "/home/b".into()
        }]
    );
}

#[test]
fn unrecorded_subvolume_with_matching_symlink_is_adopted() {
    let (cfg, _, mut obs) = healthy();
    let id = crate::ids::derive_ws_id(Path::new("/home/a"));
    let per = persisted(Some(state_json("BtrfsLoop", &[])));
    obs.storage.as_mut().unwrap().workspace_subvols = [id.clone()].into();
    obs.paths
        .insert("/home/a".into(), link_to(&format!("{MNT}/{id}")));
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert_eq!(names(&p), ["adopt-workspace"]);
    // A real directory next to an unrecorded subvolume: ambiguous, keep both.
    obs.paths.insert(
        "/home/a".into(),
        PathState::Dir {
            uid: 0,
            empty: false,
        },
    );
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert!(p.actions.is_empty());
    assert_eq!(kinds(&p), [FindingKind::PathOccupied]);
}

#[test]
fn init_guards_reject_system_dirs_nesting_and_our_own_trees() {
    let (_, _, obs) = healthy();
    let cfg = config("");
    let res = resolve_backend(&cfg, &persisted(None), &obs);
    let sd = Path::new("/t/state");
    for bad in [
        "/",
        "/etc",
        "/usr/share/x",
        "/home",
        "/proc/1",
        "/t/mnt/x",
        "/t/state/x",
        "/t",
    ] {
        assert!(
            init_guard(Path::new(bad), &res, sd, &[]).is_some(),
            "{bad} must be refused"
        );
    }
    assert!(init_guard(Path::new("/home/a/sub"), &res, sd, &[Path::new("/home/a")]).is_some());
    assert!(init_guard(Path::new("/home"), &res, sd, &[Path::new("/home/a")]).is_some());
    assert!(init_guard(Path::new("/home/a"), &res, sd, &[Path::new("/home/b")]).is_none());
    // Base backend: the filesystem's mount is fine, only data_root is off limits.
    let mut base = res.clone();
    base.mount = "/data".into();
    base.data_root = "/data/ws-ckpt-data".into();
    base.snapshots_root = "/data/ws-ckpt-data/snapshots".into();
    base.image = None;
    assert!(init_guard(Path::new("/data/projects/p"), &base, sd, &[]).is_none());
    assert!(init_guard(Path::new("/data/ws-ckpt-data/x"), &base, sd, &[]).is_some());
    assert!(init_guard(Path::new("/data"), &base, sd, &[]).is_some());
}

#[test]
fn guarded_declaration_becomes_a_finding() {
    let (_, per, mut obs) = healthy();
    let mut cfg = config(&ws_decl("/home/a"));
    cfg.workspaces
        .extend(config(&ws_decl("/home/a/inner")).workspaces);
    obs.paths.insert(
        "/home/a/inner".into(),
        PathState::Dir {
            uid: 0,
            empty: true,
        },
    );
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(kinds(&p), [FindingKind::InvalidPath]);
}

#[test]
fn retention_never_deletes_pinned_or_newest() {
    let mut idx = index(
        "/home/a",
        &[("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)],
    );
    idx.snapshots["a"].pinned = true;
    let del = retention_deletions(&idx, Keep::Count(2), now());
    let ids: Vec<&str> = del.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["b", "c"]);
    assert_eq!(del[0].reason, "beyond keep = 2");
    let del = retention_deletions(&idx, Keep::Count(0), now());
    assert_eq!(
        del.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["b", "c", "d"],
        "newest e kept"
    );
    // Age: everything is ancient, but the newest stays.
    let del = retention_deletions(&idx, Keep::Age(Duration::from_secs(86_400)), now());
    assert_eq!(
        del.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["b", "c", "d"]
    );
}

#[test]
fn retention_is_planned_only_with_auto_cleanup() {
    let (_, mut per, obs) = healthy();
    per.indexes.insert(
        "ws-aaaaaa".into(),
        index("/home/a", &[("c1", 100), ("c2", 200)]).into(),
    );
    let cfg = config("[[workspace]]\npath = \"/home/a\"\nauto_cleanup = true\nkeep = 1\n");
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert_eq!(
        p.actions,
        [Action::ApplyRetention {
            ws_id: "ws-aaaaaa".into(),
            delete: vec![RetentionDelete {
                id: "c1".into(),
                reason: "beyond keep = 1".into()
            }]
        }]
    );
    let cfg = config("[[workspace]]\npath = \"/home/a\"\nkeep = 1\n");
    assert!(plan(&cfg, &per, &obs, PlanOptions::default(), now())
        .actions
        .is_empty());
}

#[test]
fn v0_indexes_are_migrated_before_anything_else() {
    let cfg = config("");
    let per = persisted(Some(state_json("BtrfsLoop", &[])));
    let mut obs = mounted();
    let view = obs.storage.as_mut().unwrap();
    view.workspace_subvols.insert("ws-bbbbbb".into());
    view.v0_indexes.insert(
        "ws-bbbbbb".into(),
        index("/home/b", &[("s1", 1), ("s2", 2)]),
    );
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert_eq!(
        p.actions,
        [Action::MigrateV0Indexes {
            workspaces: vec![MigratedWorkspace {
                ws_id: "ws-bbbbbb".into(),
                path: "/home/b".into(),
                snapshots: 2
            }]
        }]
    );
}

#[test]
fn own_state_fields_are_read_from_old_files_and_written_back_unchanged() {
    let (_, per, _) = healthy();
    let s = per.state.unwrap();
    assert!(s.config_declared);
    assert_eq!(
        s.paths.loop_img.as_ref().unwrap().img_target_bytes,
        Some(2 << 30)
    );
    assert!(s.extra.is_empty(), "{:?}", s.extra);
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["config_declared"], true);
    assert_eq!(v["paths"]["loop_img"]["img_target_bytes"], 2u64 << 30);
    let mut fresh = s.clone();
    fresh.config_declared = false;
    fresh.paths.loop_img.as_mut().unwrap().img_target_bytes = None;
    let v = serde_json::to_value(&fresh).unwrap();
    assert!(
        v.get("config_declared").is_none(),
        "absent as in ws-ckpt 0.3"
    );
    assert!(v["paths"]["loop_img"].get("img_target_bytes").is_none());
}

#[test]
fn undecodable_pending_operation_is_reported_and_its_workspace_left_alone() {
    let (cfg, mut per, mut obs) = healthy();
    let ws = per.state.as_ref().unwrap().workspaces[0].ws_id.clone();
    // Without the entry, the missing symlink would be repaired.
    obs.paths.remove(Path::new("/home/a"));
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert_eq!(names(&p), ["repair-symlink"]);
    let entry: PendingEntry = serde_json::from_value(
        serde_json::json!({"op_id": "x", "operation": "teleport", "ws_id": ws}),
    )
    .unwrap();
    per.state.as_mut().unwrap().pending.push(entry);
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    let f = p
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::UnreadableOperation)
        .expect("reported");
    assert_eq!(f.ws_id.as_deref(), Some(ws.as_str()));
    assert!(f.message.contains("teleport"), "{}", f.message);
    assert!(
        p.actions.iter().all(|a| a.ws_id() != Some(ws.as_str())),
        "{:?}",
        p.actions
    );
}

#[test]
fn state_from_0_3_gets_its_workspaces_declared() {
    let (_, mut per, obs) = healthy();
    // A 0.3 state has no `config_declared` key.
    per.state.as_mut().unwrap().config_declared = false;
    let p = plan(&config(""), &per, &obs, PlanOptions::default(), now());
    assert_eq!(names(&p), ["declare-migrated"]);
}

#[test]
fn growth_only_when_config_rises_and_never_shrinks() {
    let (_, per, obs) = healthy();
    let bigger =
        config(&format!("{}\n", ws_decl("/home/a")).replace("img_size = 2", "img_size = 2"));
    assert!(plan(&bigger, &per, &obs, PlanOptions::default(), now())
        .actions
        .is_empty());
    let mut cfg = config(&ws_decl("/home/a"));
    cfg.backend.btrfs_loop.img_size_gib = 4;
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert_eq!(
        p.actions,
        [Action::GrowImage {
            image: IMG.into(),
            from_bytes: 2 << 30,
            to_bytes: 4 << 30
        }]
    );
    cfg.backend.btrfs_loop.img_size_gib = 1;
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert!(p.actions.is_empty());
    assert_eq!(kinds(&p), [FindingKind::ImageShrinkRefused]);
}

#[test]
fn newer_state_version_plans_nothing() {
    let (cfg, mut per, obs) = healthy();
    per.problem = Some(StateProblem::NewerVersion {
        version: 9,
        path: "/t/state/state.json".into(),
    });
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert!(p.actions.is_empty());
    assert!(p.blocked());
    assert_eq!(kinds(&p), [FindingKind::NewerStateVersion]);
}

fn with_pending(per: &mut Persisted, kind: PendingKind) {
    let op = PendingOp {
        op_id: "op1".into(),
        started_at: "2026-11-24T15:07:42Z".into(),
        kind,
    };
    per.state
        .as_mut()
        .unwrap()
        .pending
        .push(PendingEntry::Op(op));
}

fn init_op(phase: InitPhase) -> PendingKind {
    PendingKind::Init {
        ws_id: "ws-cccccc".into(),
        path: "/home/c".into(),
        subvol: format!("{MNT}/ws-cccccc").into(),
        tmp: "/home/.c.ws-ckpt-init-op1".into(),
        phase,
    }
}

#[test]
fn interrupted_init_before_swap_is_reverted() {
    let (cfg, mut per, mut obs) = healthy();
    with_pending(&mut per, init_op(InitPhase::Copying));
    obs.paths.insert(
        "/home/c".into(),
        PathState::Dir {
            uid: 0,
            empty: false,
        },
    );
    obs.subvols.insert(format!("{MNT}/ws-cccccc").into(), true);
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert_eq!(names(&p), ["revert-interrupted"]);
    // Verified but swap not done (tmp is only our symlink): still revert.
    let (cfg, mut per, mut obs) = healthy();
    with_pending(&mut per, init_op(InitPhase::Verified));
    obs.paths.insert(
        "/home/c".into(),
        PathState::Dir {
            uid: 0,
            empty: false,
        },
    );
    obs.paths.insert(
        "/home/.c.ws-ckpt-init-op1".into(),
        link_to(&format!("{MNT}/ws-cccccc")),
    );
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert_eq!(names(&p), ["revert-interrupted"]);
}

#[test]
fn interrupted_init_after_swap_is_finished() {
    let (cfg, mut per, mut obs) = healthy();
    with_pending(&mut per, init_op(InitPhase::Verified));
    obs.paths
        .insert("/home/c".into(), link_to(&format!("{MNT}/ws-cccccc")));
    obs.paths.insert(
        "/home/.c.ws-ckpt-init-op1".into(),
        PathState::Dir {
            uid: 0,
            empty: false,
        },
    );
    obs.subvols.insert(format!("{MNT}/ws-cccccc").into(), true);
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert_eq!(names(&p), ["finish-interrupted"]);
}

#[test]
fn unprovable_init_state_keeps_both_and_reports() {
    let (cfg, mut per, mut obs) = healthy();
    with_pending(&mut per, init_op(InitPhase::Copying));
    // Path is a symlink but the copy was never verified: do not delete anything.
    obs.paths
        .insert("/home/c".into(), link_to(&format!("{MNT}/ws-cccccc")));
    obs.paths.insert(
        "/home/.c.ws-ckpt-init-op1".into(),
        PathState::Dir {
            uid: 0,
            empty: false,
        },
    );
    obs.subvols.insert(format!("{MNT}/ws-cccccc").into(), true);
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(kinds(&p), [FindingKind::Ambiguous]);
}

#[test]
fn planning_is_deterministic() {
    let (cfg, per, obs) = healthy();
    let a = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    let b = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert_eq!(a, b);
}

#[test]
fn nested_subvolume_is_a_warning() {
    let (cfg, per, mut obs) = healthy();
    obs.storage
        .as_mut()
        .unwrap()
        .nested
        .insert("ws-aaaaaa".into(), vec!["build/cache".into()]);
    let p = plan(&cfg, &per, &obs, PlanOptions::default(), now());
    assert!(p.actions.is_empty());
    assert_eq!(kinds(&p), [FindingKind::NestedSubvolume]);
    assert!(p.findings[0].message.contains("build/cache"));
    assert_eq!(p.findings[0].severity, Severity::Warning);
}
