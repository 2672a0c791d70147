//! Unit tests of the executor over the fake system: a fresh host bootstrapped from nothing, a
//! directory turned into a workspace and back, interrupted inits recovered on either side of
//! the swap, and every step saying whether it changed anything (a second apply changes
//! nothing).

use super::*;
use crate::engine::{ApplyOptions, ApplyReport, Engine};
use crate::plan::{Recovery, RecoveryStep};
use crate::state::{BackendType, InitPhase};
use crate::sys::fake::FakeSys;
use std::sync::Arc;
use tempfile::TempDir;

struct Host {
    _t: TempDir,
    root: PathBuf,
    sys: Arc<FakeSys>,
    engine: Engine,
}

fn write_config(root: &Path, workspaces: &[(&str, &str)]) {
    let r = root.display();
    let mut text = format!(
        "[daemon]\nstate_dir = \"{r}/state\"\nruntime_dir = \"{r}/run\"\n[backend]\ntype = \"btrfs-loop\"\n\
         [backend.btrfs-loop]\nimage = \"{r}/img/btrfs.img\"\nmount = \"{r}/mnt\"\nlegacy_image = \"{r}/legacy.img\"\nimg_size = 1\n"
    );
    for (name, state) in workspaces {
        text.push_str(&format!(
            "[[workspace]]\npath = \"{r}/home/{name}\"\nstate = \"{state}\"\n"
        ));
    }
    std::fs::write(root.join("etc/config.toml"), text).unwrap();
}

/// A host with nothing on it: no image, no mount, no state; `home/<name>` directories with a
/// file each, declared as workspaces.
fn host(workspaces: &[&str]) -> Host {
    let t = TempDir::new().unwrap();
    let root = t.path().canonicalize().unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    for w in workspaces {
        let d = root.join("home").join(w);
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("file.txt"), w.as_bytes()).unwrap();
        std::fs::write(d.join("sub/deep.txt"), b"deep").unwrap();
    }
    std::fs::create_dir_all(root.join("home")).unwrap();
    let decls: Vec<(&str, &str)> = workspaces.iter().map(|w| (*w, "present")).collect();
    write_config(&root, &decls);
    let config = Config::load(&root.join("etc/config.toml")).unwrap();
    let sys = Arc::new(FakeSys::new());
    let engine = Engine::open(config, sys.clone(), "cli", Duration::ZERO).unwrap();
    Host {
        _t: t,
        root,
        sys,
        engine,
    }
}

impl Host {
    fn apply(&mut self) -> ApplyReport {
        let r = self.engine.apply(ApplyOptions::default(), &mut |_, _| {});
        assert!(r.ok(), "{r:#?}");
        r
    }
    fn path(&self, name: &str) -> PathBuf {
        self.root.join("home").join(name)
    }
    fn ws_id(&self, name: &str) -> String {
        self.engine
            .workspace_by_path(&self.path(name))
            .expect("recorded")
            .ws_id
            .clone()
    }
    /// Run one action against the recorded backend.
    fn run(&mut self, action: &Action) -> Result<Change> {
        let res = self.engine.light_resolution().expect("backend");
        let config = self.engine.config();
        self.engine
            .executor(&config, &res, &mut |_, _| {})
            .run(action)
    }
}

fn names(r: &ApplyReport) -> Vec<&'static str> {
    r.actions.iter().map(|a| a.action.name()).collect()
}

#[test]
fn a_fresh_host_is_bootstrapped_from_nothing_and_a_second_apply_changes_nothing() {
    let mut h = host(&[]);
    let image = h.root.join("img/btrfs.img");
    assert!(!image.exists());
    let r = h.apply();
    assert_eq!(names(&r), ["bootstrap-backend"]);
    assert!(r.changed && r.actions[0].changed);
    assert_eq!(r.actions[0].result, Outcome::Done);
    // Formatted under a temporary name, renamed into place, then attached and mounted.
    assert!(image.is_file());
    let calls = h.sys.calls();
    assert!(
        calls.iter().any(|c| c.starts_with("create_image ")),
        "{calls:?}"
    );
    assert!(
        h.sys
            .mounts_now()
            .iter()
            .any(|m| m.mount_point == h.root.join("mnt")),
        "{calls:?}"
    );
    assert!(h.root.join("mnt/snapshots").is_dir());
    let state = h.engine.store.read().state.clone().expect("recorded");
    assert_eq!(state.backend.backend_type, BackendType::BtrfsLoop);
    assert!(state.config_declared);
    assert!(state
        .paths
        .loop_img
        .as_ref()
        .unwrap()
        .img_target_bytes
        .is_some());
    // Apply twice: the second changes nothing, and running the bootstrap again finds
    // everything present.
    let again = h.apply();
    assert!(!again.changed && again.actions.is_empty(), "{again:#?}");
    let res = h.engine.light_resolution().unwrap();
    let bootstrap = Action::BootstrapBackend {
        backend_type: res.backend_type,
        selection_method: res.selection_method,
        mount: res.mount.clone(),
        data_root: res.data_root.clone(),
        snapshots_root: res.snapshots_root.clone(),
        image: res.image.clone(),
        create_image_bytes: None,
        image_target_bytes: None,
        mount_needed: false,
    };
    assert_eq!(h.run(&bootstrap).unwrap(), Change::AlreadyPresent);
}

#[test]
fn a_directory_becomes_a_workspace_and_back_with_the_same_content() {
    let mut h = host(&["a"]);
    let r = h.apply();
    assert_eq!(names(&r), ["bootstrap-backend", "init-workspace"]);
    let path = h.path("a");
    let ws_id = h.ws_id("a");
    let subvol = h.root.join("mnt").join(&ws_id);
    assert_eq!(std::fs::read_link(&path).unwrap(), subvol);
    assert!(h.sys.is_subvolume(&subvol).unwrap());
    assert_eq!(std::fs::read(subvol.join("sub/deep.txt")).unwrap(), b"deep");
    let leftovers: Vec<_> = std::fs::read_dir(h.root.join("home"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(h.engine.store.read().pending().is_empty());
    assert!(!h.apply().changed);

    write_config(&h.root, &[("a", "absent")]);
    h.engine.reload_config().unwrap();
    let r = h.apply();
    assert_eq!(names(&r), ["release-workspace"]);
    assert!(std::fs::symlink_metadata(&path).unwrap().is_dir());
    assert_eq!(std::fs::read(path.join("file.txt")).unwrap(), b"a");
    assert_eq!(std::fs::read(path.join("sub/deep.txt")).unwrap(), b"deep");
    assert!(!h.sys.is_subvolume(&subvol).unwrap());
    assert!(h.engine.workspace_by_path(&path).is_none());
    assert!(!h.apply().changed);
}

#[test]
fn an_interrupted_init_is_reverted_before_the_swap_and_finished_after_it() {
    // Before the swap: the original is untouched; the partial subvolume goes, then the next
    // round initializes the workspace for real.
    let mut h = host(&[]);
    h.apply();
    std::fs::create_dir_all(h.path("a")).unwrap();
    std::fs::write(h.path("a/file.txt"), b"a").unwrap();
    write_config(&h.root, &[("a", "present")]);
    h.engine.reload_config().unwrap();
    let ws_id = crate::ids::derive_ws_id(&h.path("a"));
    let subvol = h.root.join("mnt").join(&ws_id);
    h.sys.create_subvolume(&subvol).unwrap();
    let tmp = sibling(&h.path("a"), "init", "t1");
    h.engine
        .store
        .begin(PendingKind::Init {
            ws_id: ws_id.clone(),
            path: h.path("a"),
            subvol: subvol.clone(),
            tmp: tmp.clone(),
            phase: InitPhase::Copying,
        })
        .unwrap();
    let r = h.apply();
    assert_eq!(names(&r), ["revert-interrupted", "init-workspace"]);
    assert_eq!(std::fs::read_link(h.path("a")).unwrap(), subvol);
    assert_eq!(std::fs::read(subvol.join("file.txt")).unwrap(), b"a");
    assert!(h.engine.store.read().pending().is_empty());

    // After the swap: the path already leads to the verified copy; the original left beside
    // it goes and the workspace is recorded.
    let mut h = host(&[]);
    h.apply();
    let path = h.path("b");
    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(path.join("file.txt"), b"b").unwrap();
    write_config(&h.root, &[("b", "present")]);
    h.engine.reload_config().unwrap();
    let ws_id = crate::ids::derive_ws_id(&path);
    let subvol = h.root.join("mnt").join(&ws_id);
    h.sys.create_subvolume(&subvol).unwrap();
    crate::copy::copy_tree(&path, &subvol, &mut |_| {}).unwrap();
    let tmp = sibling(&path, "init", "t2");
    std::os::unix::fs::symlink(&subvol, &tmp).unwrap();
    exchange(&tmp, &path).unwrap();
    h.engine
        .store
        .begin(PendingKind::Init {
            ws_id: ws_id.clone(),
            path: path.clone(),
            subvol: subvol.clone(),
            tmp: tmp.clone(),
            phase: InitPhase::Verified,
        })
        .unwrap();
    let r = h.apply();
    assert_eq!(names(&r), ["finish-interrupted"]);
    assert!(!tmp.exists(), "the original copy is removed");
    assert_eq!(h.ws_id("b"), ws_id);
    assert_eq!(std::fs::read(path.join("file.txt")).unwrap(), b"b");
    assert!(h.engine.store.read().pending().is_empty());
    assert!(!h.apply().changed);
}

#[test]
fn every_step_says_whether_it_changed_anything() {
    let mut h = host(&["a"]);
    h.apply();
    let ws_id = h.ws_id("a");
    let id = "c1".to_string();
    let entry = new_entry(SystemTime::now(), None, None, false);
    h.engine.store.put_snapshot(&ws_id, &id, entry).unwrap();
    let mark = Action::MarkMissing {
        ws_id: ws_id.clone(),
        snapshots: vec![id.clone()],
    };
    assert_eq!(h.run(&mark).unwrap(), Change::Created);
    assert_eq!(h.run(&mark).unwrap(), Change::AlreadyPresent);
    let repair = Action::RepairSymlink {
        ws_id: ws_id.clone(),
        path: h.path("a"),
        target: h.root.join("mnt").join(&ws_id),
    };
    assert_eq!(h.run(&repair).unwrap(), Change::AlreadyPresent);
    let declare = Action::DeclareMigrated {
        workspaces: Vec::new(),
    };
    assert_eq!(h.run(&declare).unwrap(), Change::AlreadyPresent);
    let gone = Action::FinishInterrupted {
        op_id: "no-such-op".into(),
        operation: "delete".into(),
        ws_id: Some(ws_id.clone()),
        recovery: Recovery(RecoveryStep::FinishDeleting {
            ws_id: ws_id.clone(),
            snapshots: vec![id.clone()],
        }),
    };
    assert_eq!(h.run(&gone).unwrap(), Change::AlreadyPresent);
    let retention = Action::ApplyRetention {
        ws_id,
        delete: Vec::new(),
    };
    assert_eq!(h.run(&retention).unwrap(), Change::AlreadyPresent);
}
