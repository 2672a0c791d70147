//! Unit tests of the snapshot operations against [`FakeSys`] in a temporary directory: the
//! rules (IDs, duplicates, pinned/MISSING refusals, unique-ID delete, detached and unavailable
//! workspaces, retention) and the crash-recovery of every rollback step.

use super::*;
use crate::api::{Caller, CheckpointArgs, Request, Target};
use crate::config::Config;
use crate::engine::ApplyOptions;
use crate::execute::{exchange, new_entry};
use crate::ids;
use crate::state::CheckpointNote;
use crate::state::{PendingKind, RollbackPhase};
use crate::sys::fake::FakeSys;
use crate::sys::Sys;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::SystemTime;
use tempfile::TempDir;

const ROOT: Caller = Caller {
    uid: 0,
    gid: 0,
    pid: 1,
};

struct Env {
    _t: TempDir,
    root: PathBuf,
    sys: Arc<FakeSys>,
    engine: Engine,
}

fn config_text(root: &Path, workspaces: &[&str], extra: &str) -> String {
    let mut s = format!(
        "[daemon]\nstate_dir = \"{r}/state\"\nruntime_dir = \"{r}/run\"\n\n[backend]\ntype = \"btrfs-loop\"\n\n\
         [backend.btrfs-loop]\nimage = \"{r}/img/btrfs.img\"\nmount = \"{r}/mnt\"\nlegacy_image = \"{r}/legacy.img\"\nimg_size = 1\n{extra}\n",
        r = root.display()
    );
    for w in workspaces {
        s.push_str(&format!(
            "[[workspace]]\npath = \"{}/home/{w}\"\n",
            root.display()
        ));
    }
    s
}

/// A bootstrapped fake backend with the named workspaces (directories under `home/`, each
/// holding `file.txt` = its name) initialized.
fn setup(workspaces: &[&str]) -> Env {
    setup_with(workspaces, "")
}

fn setup_with(workspaces: &[&str], extra: &str) -> Env {
    let t = TempDir::new().expect("tempdir");
    let root = t.path().canonicalize().expect("canonical");
    std::fs::create_dir_all(root.join("etc")).expect("etc");
    for w in workspaces {
        let d = root.join("home").join(w);
        std::fs::create_dir_all(&d).expect("ws dir");
        std::fs::write(d.join("file.txt"), w.as_bytes()).expect("write");
    }
    std::fs::create_dir_all(root.join("home")).expect("home");
    let cfg = root.join("etc/config.toml");
    std::fs::write(&cfg, config_text(&root, workspaces, extra)).expect("config");
    let config = Config::load(&cfg).expect("config loads");
    let sys = Arc::new(FakeSys::new());
    let engine = Engine::open(config, sys.clone(), "cli", Duration::ZERO).expect("open");
    let report = engine.apply(ApplyOptions::default(), &mut |_, _| {});
    assert!(report.ok(), "{report:#?}");
    Env {
        _t: t,
        root,
        sys,
        engine,
    }
}

impl Env {
    fn ws(&self, name: &str) -> PathBuf {
        self.root.join("home").join(name)
    }
    fn ws_str(&self, name: &str) -> String {
        self.ws(name).display().to_string()
    }
    fn ws_id(&self, name: &str) -> String {
        self.engine
            .resolve_workspace(&self.ws_str(name))
            .expect("workspace")
            .ws_id
    }
    fn checkpoint(&mut self, name: &str, id: Option<&str>) -> Result<CheckpointResult> {
        let args = CheckpointArgs {
            snapshot: id.map(str::to_string),
            message: None,
            metadata: None,
            pin: false,
        };
        let spec = self.ws_str(name);
        self.checkpoint_of(&spec, args)
    }
    /// A checkpoint of `spec` (a path or ws_id), resolved as the request path resolves it.
    fn checkpoint_of(&mut self, spec: &str, args: CheckpointArgs) -> Result<CheckpointResult> {
        let req = Request::Checkpoint {
            workspace: spec.to_string(),
            snapshot: args.snapshot.clone(),
            message: args.message.clone(),
            metadata: args.metadata.clone(),
            pin: args.pin,
        };
        match crate::handler::resolve(&self.engine, &req)? {
            Target::Workspace(ws) => self.engine.checkpoint(&ws.entry, args),
            Target::Unrecorded { path, not_found } => {
                self.engine
                    .checkpoint_unrecorded(&path, not_found, args, &ROOT, &mut |_, _| {})
            }
            other => panic!("unexpected target {other:?}"),
        }
    }
    fn pin(&mut self, name: &str, id: &str) {
        let args = CheckpointArgs {
            snapshot: Some(id.to_string()),
            message: Some("keep me".into()),
            metadata: Some(serde_json::json!({"tool": "x", "n": 1})),
            pin: true,
        };
        let spec = self.ws_str(name);
        let r = self.checkpoint_of(&spec, args).expect("pinned checkpoint");
        assert!(r.pinned);
    }
    /// The workspace `spec` names, resolved as the request path resolves it.
    fn addressed(&self, spec: &str) -> Result<Addressed> {
        let req = Request::Cleanup {
            workspace: spec.to_string(),
            keep: None,
            dry_run: false,
        };
        match crate::handler::resolve(&self.engine, &req)? {
            Target::Workspace(ws) => Ok(ws),
            other => panic!("unexpected target {other:?}"),
        }
    }
    fn rollback(&mut self, spec: &str, snapshot: &str, force: bool) -> Result<RollbackResult> {
        let ws = self.addressed(spec)?;
        let target = RollbackTarget::Named(snapshot.to_string());
        self.engine.rollback(&ws.entry, &target, force, &ROOT)
    }
    fn list(&self, caller: &Caller, spec: Option<&str>) -> Result<ListResult> {
        let ws = spec.map(|s| self.addressed(s)).transpose()?;
        self.engine
            .list(caller, ws.as_ref(), &crate::ops::ListPage::default())
    }
    fn delete(
        &mut self,
        caller: &Caller,
        spec: Option<&str>,
        snapshot: &str,
        force: bool,
    ) -> Result<DeleteResult> {
        // As on the request path: IDs are checked before anything is looked up.
        let req = Request::Delete {
            workspace: spec.map(str::to_string),
            snapshot: snapshot.to_string(),
            force,
            dry_run: false,
        };
        req.check_ids()?;
        let ws = match spec {
            Some(s) => self.addressed(s)?,
            None => {
                let holders = self.engine.snapshot_holders(snapshot);
                self.engine.unique_holder(caller, &holders, snapshot)?
            }
        };
        self.engine.delete(&ws, snapshot, force, false)
    }
    fn cleanup(&mut self, spec: &str, keep: Option<&str>) -> Result<CleanupResult> {
        let ws = self.addressed(spec)?;
        self.engine.cleanup(&ws, keep, false)
    }
    fn diff(&mut self, spec: &str, from: &str, to: Option<&str>) -> Result<DiffResult> {
        let ws = self.addressed(spec)?;
        self.engine.diff(&ws, from, to)
    }
    fn res(&self) -> Resolution {
        self.engine.light_resolution().expect("resolution")
    }
    fn ids(&self, name: &str) -> Vec<String> {
        let id = self.ws_id(name);
        self.engine.store.read().indexes[&id]
            .snapshots
            .keys()
            .cloned()
            .collect()
    }
    fn content(&self, name: &str) -> String {
        std::fs::read_to_string(self.ws(name).join("file.txt")).unwrap_or_default()
    }
    fn reopen(self) -> Env {
        let Env {
            _t,
            root,
            sys,
            engine,
        } = self;
        drop(engine);
        let config = Config::load(&root.join("etc/config.toml")).expect("config");
        let engine = Engine::open(config, sys.clone(), "cli", Duration::ZERO).expect("reopen");
        Env {
            _t,
            root,
            sys,
            engine,
        }
    }
}

fn code(r: Result<impl std::fmt::Debug>) -> ErrorCode {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => {
            assert!(!e.message.is_empty());
            e.code
        }
    }
}

#[test]
fn checkpoint_records_snapshot_and_refuses_duplicates() {
    let mut env = setup(&["a"]);
    let r = env.checkpoint("a", Some("c1")).expect("checkpoint");
    assert_eq!(r.snapshot, "c1");
    assert!(!r.empty && !r.initialized && !r.pinned);
    assert_eq!(r.workspace, env.ws("a"));
    let snap = env.res().snapshot_path(&r.ws_id, "c1");
    assert!(env.sys.is_subvolume(&snap).unwrap());
    assert!(env.sys.is_readonly(&snap).unwrap());
    assert_eq!(std::fs::read_to_string(snap.join("file.txt")).unwrap(), "a");
    assert_eq!(env.ids("a"), ["c1"]);

    // Same ID again: refused, nothing new.
    assert_eq!(
        code(env.checkpoint("a", Some("c1"))),
        ErrorCode::SnapshotAlreadyExists
    );
    // A subvolume on disk that the index does not know yet also counts.
    let res = env.res();
    env.sys
        .snapshot(
            &res.ws_subvol(&r.ws_id),
            &res.snapshot_path(&r.ws_id, "stray"),
            true,
        )
        .unwrap();
    assert_eq!(
        code(env.checkpoint("a", Some("stray"))),
        ErrorCode::SnapshotAlreadyExists
    );
    assert_eq!(env.ids("a"), ["c1"]);

    // Survives a restart (journal).
    let env = env.reopen();
    assert_eq!(env.ids("a"), ["c1"]);
}

#[test]
fn invalid_ids_are_refused_before_anything_is_created() {
    let mut env = setup(&["a"]);
    let before = env.sys.subvolumes_now();
    // Upstream's alphabet (SPEC §5.2): "-x" and 129 characters are fine now; these are not.
    for bad in [
        "../../x",
        "a/b",
        "a\\b",
        ".hidden",
        "",
        " ",
        "tab\t",
        &"y".repeat(256),
    ] {
        assert_eq!(
            code(env.checkpoint("a", Some(bad))),
            ErrorCode::InvalidArgument,
            "{bad}"
        );
        assert_eq!(
            code(env.rollback(&env.ws_str("a"), bad, true)),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(env.delete(&ROOT, None, bad, true)),
            ErrorCode::InvalidArgument
        );
    }
    assert_eq!(env.sys.subvolumes_now(), before);
    assert!(!env.root.join("x").exists());
}

#[test]
fn generated_ids_are_valid_unique_and_sorted() {
    let mut env = setup(&["a"]);
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(env.checkpoint("a", None).expect("checkpoint").snapshot);
    }
    for id in &got {
        assert!(ids::is_valid_snapshot_id(id), "{id}");
    }
    let mut sorted = got.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 5, "{got:?}");
    let listed: Vec<String> = env.list(&ROOT, Some(&env.ws_str("a"))).unwrap().workspaces[0]
        .snapshots
        .iter()
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(listed, got, "newest last");
}

#[test]
fn checkpoint_initializes_a_plain_directory_and_reports_empty() {
    let mut env = setup(&[]);
    let dir = env.ws("fresh");
    std::fs::create_dir_all(&dir).unwrap();
    let r = env.checkpoint("fresh", Some("first")).expect("checkpoint");
    assert!(r.initialized && r.empty, "{r:?}");
    assert!(matches!(path_state(&dir), PathState::Symlink { .. }));
    // Declared in a drop-in, so the config remains the source of truth.
    assert!(env.engine.config().workspace(&dir).is_some());
    let again = env.checkpoint("fresh", None).expect("second");
    assert!(!again.initialized);
    // A path that does not exist is an error naming it, and nothing is created.
    assert_eq!(
        code(env.checkpoint("nothing-here", None)),
        ErrorCode::InvalidPath
    );
    assert!(!env.ws("nothing-here").exists());
}

#[test]
fn detached_workspace_fails_loudly() {
    let mut env = setup(&["a"]);
    let path = env.ws("a");
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let e = env.checkpoint("a", None).unwrap_err();
    assert_eq!(e.code, ErrorCode::WorkspaceDetached);
    assert!(
        e.message.contains("real directory") && e.message.contains(&path.display().to_string()),
        "{e:?}"
    );
    assert!(e.hint.as_deref().unwrap_or("").contains("move"), "{e:?}");
    // The detached check comes before the snapshot lookup.
    assert_eq!(
        code(env.rollback(&env.ws_str("a"), "x", true)),
        ErrorCode::WorkspaceDetached
    );

    std::fs::remove_dir(&path).unwrap();
    let e = env.checkpoint("a", None).unwrap_err();
    assert_eq!(e.code, ErrorCode::WorkspaceDetached);
    assert!(e.message.contains("missing") && e.hint.unwrap().contains("apply"));

    std::os::unix::fs::symlink(env.root.join("home"), &path).unwrap();
    let e = env.checkpoint("a", None).unwrap_err();
    assert!(e.message.contains("a symlink to"), "{e:?}");
    // Listing still works and says what is wrong.
    let l = env.list(&ROOT, None).unwrap();
    assert!(l.workspaces[0]
        .problem
        .as_deref()
        .unwrap_or("")
        .contains("detached"));
}

#[test]
fn unavailable_storage_names_the_workspace_and_counts() {
    let mut env = setup(&["a"]);
    env.checkpoint("a", Some("c1")).unwrap();
    env.checkpoint("a", Some("c2")).unwrap();
    let id = env.ws_id("a");
    env.sys.umount(&env.root.join("mnt")).unwrap();
    let e = env.checkpoint("a", None).unwrap_err();
    assert_eq!(e.code, ErrorCode::StorageUnavailable);
    for needle in [id.as_str(), "2 snapshot(s)", "btrfs.img", "not mounted"] {
        assert!(e.message.contains(needle), "{needle} not in {e:?}");
    }
    assert_eq!(
        code(env.delete(&ROOT, None, "c1", true)),
        ErrorCode::StorageUnavailable
    );
    assert_eq!(
        code(env.cleanup(&id, Some("1"))),
        ErrorCode::StorageUnavailable
    );
    // The index is untouched and list still shows it, with the problem.
    assert_eq!(env.ids("a"), ["c1", "c2"]);
    let l = env.list(&ROOT, None).unwrap();
    assert!(l.workspaces[0]
        .problem
        .as_deref()
        .unwrap()
        .contains("unavailable"));
    assert_eq!(l.workspaces[0].snapshots.len(), 2);
    assert_eq!(
        code(env.list(&ROOT, Some(&id))),
        ErrorCode::StorageUnavailable
    );

    std::fs::remove_file(env.root.join("img/btrfs.img")).unwrap();
    let e = env.checkpoint("a", None).unwrap_err();
    assert!(e.message.contains("is missing"), "{e:?}");
}

#[test]
fn backend_conflict_blocks() {
    let mut env = setup(&["a"]);
    let cfg = env.root.join("etc/config.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("type = \"btrfs-loop\"", "type = \"btrfs-base\"");
    std::fs::write(&cfg, text).unwrap();
    env.engine.reload_config().unwrap();
    let e = env.checkpoint("a", None).unwrap_err();
    assert_eq!(e.code, ErrorCode::Blocked, "{e:?}");
    assert!(e.hint.is_some());
}

#[test]
fn rollback_restores_and_leaves_nothing_behind() {
    let mut env = setup(&["a"]);
    env.checkpoint("a", Some("c1")).unwrap();
    std::fs::write(env.ws("a").join("file.txt"), b"changed").unwrap();
    std::fs::write(env.ws("a").join("new.txt"), b"new").unwrap();
    let r = env
        .rollback(&env.ws_str("a"), "c1", true)
        .expect("rollback");
    assert_eq!(r.snapshot, "c1");
    assert_eq!(env.content("a"), "a");
    assert!(!env.ws("a").join("new.txt").exists());
    // The workspace is writable again (a writable snapshot, not the read-only one).
    let res = env.res();
    let id = env.ws_id("a");
    assert!(!env.sys.is_readonly(&res.ws_subvol(&id)).unwrap());
    std::fs::write(env.ws("a").join("after.txt"), b"x").unwrap();
    // No temporary subvolume, no pending operation.
    let names = env.sys.list_subvolumes(&res.gate(&id)).unwrap();
    assert_eq!(names, ["live"], "{names:?}");
    assert!(env.engine.store.read().pending().is_empty());
    // The snapshot itself is unchanged.
    assert_eq!(
        std::fs::read_to_string(res.snapshot_path(&id, "c1").join("file.txt")).unwrap(),
        "a"
    );
    assert_eq!(
        code(env.rollback(&id, "nope", true)),
        ErrorCode::SnapshotNotFound
    );
}

#[test]
fn rollback_refuses_busy_workspace_unless_forced() {
    let mut env = setup(&["a"]);
    env.checkpoint("a", Some("c1")).unwrap();
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .current_dir(env.ws("a"))
        .spawn()
        .expect("spawn sleep");
    let e = env.rollback(&env.ws_str("a"), "c1", false).unwrap_err();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(e.code, ErrorCode::Busy);
    assert!(
        e.message.contains(&child.id().to_string()) && e.message.contains("sleep"),
        "{e:?}"
    );
    assert!(e.hint.unwrap().contains("--force"));
    env.rollback(&env.ws_str("a"), "c1", true).expect("forced");
}

#[test]
fn missing_snapshots_are_refused_with_the_hint() {
    let mut env = setup(&["a"]);
    env.checkpoint("a", Some("c1")).unwrap();
    env.checkpoint("a", Some("c2")).unwrap();
    let id = env.ws_id("a");
    let res = env.res();
    env.sys
        .delete_subvolume(&res.snapshot_path(&id, "c1"))
        .unwrap();

    let l = env.list(&ROOT, Some(&id)).unwrap();
    let missing: Vec<bool> = l.workspaces[0]
        .snapshots
        .iter()
        .map(|s| s.missing)
        .collect();
    assert_eq!(missing, [true, false]);

    let e = env.rollback(&id, "c1", true).unwrap_err();
    assert_eq!(e.code, ErrorCode::SnapshotMissing);
    assert!(e
        .hint
        .unwrap()
        .contains(&format!("ws-ckpt delete -w {id} -s c1 --force")));
    // Marked in the index now.
    assert!(env.engine.store.read().indexes[&id].snapshots["c1"].missing);
    assert_eq!(code(env.diff(&id, "c1", None)), ErrorCode::SnapshotMissing);
    // Other snapshots unaffected.
    env.rollback(&id, "c2", true).expect("rollback to c2");
    // delete needs --force, then removes the entry.
    assert_eq!(
        code(env.delete(&ROOT, Some(&id), "c1", false)),
        ErrorCode::SnapshotMissing
    );
    let d = env.delete(&ROOT, Some(&id), "c1", true).unwrap();
    assert_eq!(d.deleted, ["c1"]);
    assert_eq!(env.ids("a"), ["c2"]);
}

#[test]
fn delete_pinned_needs_force_and_unique_id_finds_workspace() {
    let mut env = setup(&["a", "b"]);
    env.pin("a", "p1");
    env.checkpoint("a", Some("only-a")).unwrap();
    env.checkpoint("a", Some("both")).unwrap();
    env.checkpoint("b", Some("both")).unwrap();
    let a = env.ws_id("a");

    let e = env.delete(&ROOT, None, "p1", false).unwrap_err();
    assert_eq!(e.code, ErrorCode::SnapshotPinned);
    assert!(e.hint.unwrap().contains("--force"));
    env.delete(&ROOT, None, "p1", true).expect("forced");

    let d = env.delete(&ROOT, None, "only-a", false).expect("unique");
    assert_eq!(d.ws_id, a);
    assert!(!env
        .sys
        .is_subvolume(&env.res().snapshot_path(&a, "only-a"))
        .unwrap());

    let e = env.delete(&ROOT, None, "both", false).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(
        e.message.contains(&a) && e.message.contains(&env.ws_id("b")),
        "{e:?}"
    );
    assert_eq!(
        code(env.delete(&ROOT, None, "nowhere", false)),
        ErrorCode::SnapshotNotFound
    );
    env.delete(&ROOT, Some(&env.ws_str("b")), "both", false)
        .expect("with -w");
    assert_eq!(env.ids("a"), ["both"]);
    assert!(env.engine.store.read().pending().is_empty());
}

#[test]
fn cleanup_keeps_pinned_and_newest() {
    let mut env = setup(&["a"]);
    env.pin("a", "p0");
    for i in 1..=5 {
        env.checkpoint("a", Some(&format!("c{i}"))).unwrap();
    }
    let id = env.ws_id("a");
    assert_eq!(
        code(env.cleanup(&id, Some("0"))),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(env.cleanup(&id, Some("soon"))),
        ErrorCode::InvalidArgument
    );
    let r = env.cleanup(&id, Some("2")).expect("cleanup");
    let gone: Vec<&str> = r.deleted.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(gone, ["c1", "c2", "c3"]);
    assert!(r.deleted[0].reason.contains("keep = 2"));
    assert_eq!(r.keep, "2");
    assert_eq!(env.ids("a"), ["p0", "c4", "c5"]);
    let res = env.res();
    for g in gone {
        assert!(!env.sys.is_subvolume(&res.snapshot_path(&id, g)).unwrap());
    }
    // Nothing more to do.
    assert!(env.cleanup(&id, Some("2")).unwrap().deleted.is_empty());
}

#[test]
fn a_cleanup_forgets_its_snapshots_in_one_journal_line() {
    let mut env = setup(&["a"]);
    for i in 1..=6 {
        env.checkpoint("a", Some(&format!("c{i}"))).unwrap();
    }
    let id = env.ws_id("a");
    let journal = env
        .root
        .join("state/indexes")
        .join(&id)
        .join(crate::state::JOURNAL_FILE);
    let lines = || std::fs::read_to_string(&journal).unwrap().lines().count();
    let before = lines();
    let r = env.cleanup(&id, Some("2")).expect("cleanup");
    assert_eq!(r.deleted.len(), 4);
    // One line for the four removals and the lineage links they move, one fdatasync.
    assert_eq!(
        lines(),
        before + 1,
        "{}",
        std::fs::read_to_string(&journal).unwrap()
    );
    assert_eq!(env.ids("a"), ["c5", "c6"]);
    let env = env.reopen();
    assert_eq!(
        env.ids("a"),
        ["c5", "c6"],
        "the one line is what a restart reads"
    );
    let idx = env.engine.store.read().indexes.get(&id).cloned().unwrap();
    assert_eq!(idx.head(), Some("c6"));
    assert_eq!(idx.snapshots["c6"].parent_id(), Some("c5"));
    assert_eq!(
        idx.snapshots["c5"].parent_id(),
        None,
        "its deleted parent is unlinked"
    );
}

#[test]
fn a_long_cleanup_commits_its_deletions_in_small_transactions() {
    let mut env = setup(&["a"]);
    for i in 1..=41 {
        env.checkpoint("a", Some(&format!("c{i:02}"))).unwrap();
    }
    let id = env.ws_id("a");
    let commits = |env: &Env| {
        env.sys
            .calls()
            .iter()
            .filter(|c| c.starts_with("commit "))
            .count()
    };
    let before = commits(&env);
    let r = env.cleanup(&id, Some("1")).expect("cleanup");
    assert_eq!(r.deleted.len(), 40);
    // After the 16th and the 32nd deletion, then the one that makes them all durable.
    assert_eq!(commits(&env) - before, 3, "{:?}", env.sys.calls());
    assert_eq!(env.ids("a"), ["c41"]);
}

#[test]
fn cleanup_defaults_to_the_workspace_policy() {
    let mut env = setup_with(&["a"], "\n[retention]\nkeep = 1\n");
    for i in 1..=3 {
        env.checkpoint("a", Some(&format!("c{i}"))).unwrap();
    }
    let r = env.cleanup(&env.ws_str("a"), None).expect("cleanup");
    assert_eq!(r.keep, "1");
    assert_eq!(env.ids("a"), ["c3"]);
}

#[test]
fn list_shows_only_usable_workspaces_for_other_users() {
    let mut env = setup(&["a", "b"]);
    env.pin("a", "p");
    let user = Caller {
        uid: 4242,
        gid: 4242,
        pid: 1,
    };
    assert!(env.list(&user, None).unwrap().workspaces.is_empty());
    let all = env.list(&ROOT, None).unwrap();
    assert_eq!(all.workspaces.len(), 2);
    let v = serde_json::to_value(&all).unwrap();
    let s = &v["workspaces"][0]["snapshots"][0];
    assert_eq!(s["id"], "p");
    assert_eq!(s["pinned"], true);
    assert_eq!(s["message"], "keep me");
    assert_eq!(s["metadata"]["tool"], "x");
    assert_eq!(s["missing"], false);
    assert!(v["workspaces"][0].get("problem").is_none());
}

#[test]
fn list_sorts_by_creation_time() {
    let env = setup(&["a"]);
    let id = env.ws_id("a");
    // Recorded out of order (e.g. adopted later): list still shows newest last.
    env.engine
        .store
        .put_snapshot(
            &id,
            "late",
            new_entry(
                SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000),
                None,
                None,
                false,
            ),
        )
        .unwrap();
    env.engine
        .store
        .put_snapshot(
            &id,
            "early",
            new_entry(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000),
                None,
                None,
                false,
            ),
        )
        .unwrap();
    let l = env.list(&ROOT, Some(&id)).unwrap();
    let ids: Vec<&str> = l.workspaces[0]
        .snapshots
        .iter()
        .map(|s| s.id.as_str())
        .collect();
    assert_eq!(ids, ["early", "late"]);
}

/// Rebuild the situation a kill -9 leaves at each rollback step and check that the next pass
/// converges: the workspace holds the old or the new content exactly, no temporary subvolume
/// is left, and the pending record is gone.
#[test]
fn interrupted_rollback_recovers_at_every_step() {
    // (phase recorded, copy made, exchanged, old deleted, expected content)
    let cases = [
        (
            "after-begin",
            RollbackPhase::Snapshotting,
            false,
            false,
            false,
            "live",
        ),
        (
            "after-snapshot",
            RollbackPhase::Snapshotting,
            true,
            false,
            false,
            "live",
        ),
        (
            "after-ready",
            RollbackPhase::Ready,
            true,
            false,
            false,
            "live",
        ),
        (
            "after-exchange",
            RollbackPhase::Ready,
            true,
            true,
            false,
            "a",
        ),
        // Since 0.4.1 the phase stays `snapshotting` through the exchange.
        (
            "after-exchange-unrecorded",
            RollbackPhase::Snapshotting,
            true,
            true,
            false,
            "a",
        ),
        (
            "after-delete-old",
            RollbackPhase::Ready,
            true,
            true,
            true,
            "a",
        ),
    ];
    // Records of earlier versions (no subvolume id): whichever subvolume holds the
    // workspace's name stays. Records with the live subvolume's id: the rollback is finished
    // whenever its copy exists (its reply does not wait for the exchange's commit).
    let with_id = [
        ("after-snapshot", true, false, false, "a"),
        ("after-exchange", true, true, false, "a"),
        ("after-delete-old", true, true, true, "a"),
        ("after-begin", false, false, false, "live"),
    ];
    let cases = cases
        .into_iter()
        .map(|(n, p, c, x, d, w)| (n, p, c, x, d, w, false))
        .chain(
            with_id
                .into_iter()
                .map(|(n, c, x, d, w)| (n, RollbackPhase::Snapshotting, c, x, d, w, true)),
        );
    for (name, phase, copied, exchanged, deleted, want, recorded_id) in cases {
        let mut env = setup(&["a"]);
        env.checkpoint("a", Some("c1")).unwrap();
        std::fs::write(env.ws("a").join("file.txt"), b"live").unwrap();
        let id = env.ws_id("a");
        let res = env.res();
        let subvol = res.ws_subvol(&id);
        let tmp = res.rollback_tmp(&id, "test");
        let live_tree = recorded_id.then(|| {
            use std::os::unix::fs::MetadataExt;
            // The fake's subvolume id is the root directory's inode.
            std::fs::metadata(&subvol).unwrap().ino()
        });
        let name = format!("{name}{}", if recorded_id { " (with id)" } else { "" });
        env.engine
            .store
            .begin(PendingKind::Rollback {
                ws_id: id.clone(),
                snapshot: "c1".into(),
                subvol: subvol.clone(),
                tmp: tmp.clone(),
                phase,
                live_tree,
            })
            .unwrap();
        if copied {
            env.sys
                .snapshot(&res.snapshot_path(&id, "c1"), &tmp, false)
                .unwrap();
        }
        if exchanged {
            exchange(&tmp, &subvol).unwrap();
        }
        if deleted {
            env.sys.delete_subvolume(&tmp).unwrap();
        }
        let mut env = env.reopen();
        let report = env.engine.apply(ApplyOptions::default(), &mut |_, _| {});
        assert!(report.ok(), "{name}: {report:#?}");
        assert_eq!(env.content("a"), want, "{name}");
        assert!(env.engine.store.read().pending().is_empty(), "{name}");
        assert_eq!(
            env.sys.list_subvolumes(&res.gate(&id)).unwrap(),
            ["live"],
            "{name}"
        );
        // And the workspace works normally afterwards.
        env.rollback(&id, "c1", true)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(env.content("a"), "a");
    }
}

#[test]
fn failed_rollback_snapshot_changes_nothing() {
    let mut env = setup(&["a"]);
    env.checkpoint("a", Some("c1")).unwrap();
    std::fs::write(env.ws("a").join("file.txt"), b"live").unwrap();
    env.sys.fail_next("snapshot", libc::ENOSPC);
    let e = env.rollback(&env.ws_str("a"), "c1", true).unwrap_err();
    assert_eq!(e.code, ErrorCode::OperationFailed);
    assert!(e.message.contains("before changing anything"), "{e:?}");
    assert_eq!(env.content("a"), "live");
    assert!(env.engine.store.read().pending().is_empty());
}

#[test]
fn interrupted_delete_is_finished_by_the_next_pass() {
    let mut env = setup(&["a"]);
    env.checkpoint("a", Some("c1")).unwrap();
    env.checkpoint("a", Some("c2")).unwrap();
    let id = env.ws_id("a");
    let res = env.res();
    // As if killed after deleting the subvolume, before removing the entry.
    env.engine
        .store
        .begin(PendingKind::DeleteSnapshots {
            ws_id: id.clone(),
            snapshots: vec!["c1".into()],
        })
        .unwrap();
    env.sys
        .delete_subvolume(&res.snapshot_path(&id, "c1"))
        .unwrap();
    let env = env.reopen();
    let report = env.engine.apply(ApplyOptions::default(), &mut |_, _| {});
    assert!(report.ok(), "{report:#?}");
    assert_eq!(env.ids("a"), ["c2"]);
    assert!(env.engine.store.read().pending().is_empty());
}

#[test]
fn light_resolution_matches_the_full_plan_and_skips_snapshot_dirs() {
    let mut env = setup(&["a"]);
    env.checkpoint("a", Some("c1")).unwrap();
    let full = env.engine.resolution().unwrap();
    let before = env.sys.calls().len();
    let light = env.engine.light_resolution().unwrap();
    assert_eq!(light, full);
    let calls = env.sys.calls()[before..].to_vec();
    assert!(
        calls.iter().all(|c| !c.starts_with("list_subvolumes")),
        "{calls:?}"
    );
    // A checkpoint lists no directory either.
    let before = env.sys.calls().len();
    env.checkpoint("a", None).unwrap();
    let calls = env.sys.calls()[before..].to_vec();
    assert!(
        calls.iter().all(|c| !c.starts_with("list_subvolumes")),
        "{calls:?}"
    );
    assert_eq!(
        calls.iter().filter(|c| c.starts_with("snapshot")).count(),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// Locks by workspace (issue 9): a long step on one workspace never stalls another.
// ---------------------------------------------------------------------------------------------

fn args(id: &str) -> CheckpointArgs {
    CheckpointArgs {
        snapshot: Some(id.to_string()),
        message: None,
        metadata: None,
        pin: false,
    }
}

/// Run `main` on the engine; when it enters the fake's `op`, run `other` on another thread and
/// wait for it (bounded). Returns what `main` returned and whether `other` finished while
/// `main` was inside `op` (with `other`'s result).
fn while_inside<M, O>(
    engine: &Arc<Engine>,
    sys: &FakeSys,
    op: &str,
    main: impl FnOnce(&Engine) -> M,
    other: impl FnOnce(&Engine) -> O + Send + 'static,
    wait: Duration,
) -> (M, Option<O>)
where
    O: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let e2 = Arc::clone(engine);
    sys.on_next(op, move || {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let e3 = Arc::clone(&e2);
        std::thread::spawn(move || {
            let _ = done_tx.send(other(&e3));
        });
        let _ = tx.send(done_rx.recv_timeout(wait).ok());
    });
    let m = main(engine);
    let o = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the step was reached");
    (m, o)
}

fn shared(env: Env) -> (TempDir, PathBuf, Arc<FakeSys>, Arc<Engine>) {
    let Env {
        _t,
        root,
        sys,
        engine,
    } = env;
    (_t, root, sys, Arc::new(engine))
}

#[test]
fn a_checkpoint_of_b_completes_while_an_init_of_a_is_in_progress() {
    let env = setup(&["b"]);
    let (_t, root, sys, engine) = shared(env);
    let a = root.join("home/a");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::write(a.join("f"), b"a").unwrap();
    let b = engine
        .resolve_workspace(&root.join("home/b").display().to_string())
        .unwrap();
    let (init, other) = while_inside(
        &engine,
        &sys,
        "create_subvolume",
        |e| e.init(&a, false, &ROOT, &mut |_, _| {}),
        move |e| e.checkpoint(&b, args("during-init")),
        Duration::from_secs(20),
    );
    init.expect("init");
    let other = other.expect("b's checkpoint waited for a's init");
    assert_eq!(other.unwrap().snapshot, "during-init");
}

#[test]
fn a_checkpoint_of_b_completes_while_a_cleanup_of_a_waits_for_the_cleaner() {
    let mut env = setup(&["a", "b"]);
    for i in 0..3 {
        env.checkpoint("a", Some(&format!("c{i}"))).unwrap();
    }
    let a = env.addressed(&env.ws_str("a")).unwrap();
    let b = env.addressed(&env.ws_str("b")).unwrap().entry;
    let (_t, _root, sys, engine) = shared(env);
    let (cleanup, other) = while_inside(
        &engine,
        &sys,
        "sync_and_wait_cleaner",
        |e| e.cleanup(&a, Some("1"), false),
        move |e| e.checkpoint(&b, args("during-cleanup")),
        Duration::from_secs(20),
    );
    assert_eq!(cleanup.expect("cleanup").deleted.len(), 2);
    assert!(other
        .expect("b's checkpoint waited for a's cleanup")
        .is_ok());
}

#[test]
fn a_checkpoint_of_b_completes_while_a_release_of_a_is_in_progress() {
    let mut env = setup(&["a", "b"]);
    // The release deletes this snapshot after its copy and swap, still holding a.
    env.checkpoint("a", Some("c1")).unwrap();
    let a = env.addressed(&env.ws_str("a")).unwrap().entry;
    let b = env.addressed(&env.ws_str("b")).unwrap().entry;
    let (_t, _root, sys, engine) = shared(env);
    let (release, other) = while_inside(
        &engine,
        &sys,
        "delete_subvolume",
        |e| e.release(&a, &mut |_, _| {}),
        move |e| e.checkpoint(&b, args("during-release")),
        Duration::from_secs(20),
    );
    release.expect("release");
    assert!(other
        .expect("b's checkpoint waited for a's release")
        .is_ok());
}

#[test]
fn operations_on_one_workspace_run_one_at_a_time() {
    let env = setup(&["a"]);
    let a = env.addressed(&env.ws_str("a")).unwrap().entry;
    let a2 = a.clone();
    let (_t, _root, sys, engine) = shared(env);
    // A second checkpoint of a, started while the first is inside its ioctl, waits for it.
    let (first, second) = while_inside(
        &engine,
        &sys,
        "snapshot",
        |e| e.checkpoint(&a, args("first")),
        move |e| e.checkpoint(&a2, args("second")),
        Duration::from_millis(300),
    );
    first.expect("first");
    assert!(
        second.is_none(),
        "the second checkpoint ran inside the first"
    );
    // It completes once the first is done.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while engine.store.snapshot_entry(&a.ws_id, "second").is_none() {
        assert!(std::time::Instant::now() < deadline, "second never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// One durable record per checkpoint, written before the snapshot (issue 9 item 4, issue 10
// items 5 and 7); phases of a rollback in the journal.
// ---------------------------------------------------------------------------------------------

fn pinned_args(id: &str) -> CheckpointArgs {
    CheckpointArgs {
        snapshot: Some(id.to_string()),
        message: Some("agent step".into()),
        metadata: Some(serde_json::json!({"tool": "edit"})),
        pin: true,
    }
}

/// Make the workspace's index journal unwritable (a directory where the file goes); returns
/// a closure that puts it back.
fn break_journal(env: &Env, ws_id: &str) -> impl FnOnce() {
    let j = env
        .root
        .join("state/indexes")
        .join(ws_id)
        .join(crate::state::JOURNAL_FILE);
    let kept = std::fs::read(&j).ok();
    let _ = std::fs::remove_file(&j);
    std::fs::create_dir_all(j.join("x")).unwrap();
    move || {
        std::fs::remove_dir_all(&j).unwrap();
        if let Some(bytes) = kept {
            std::fs::write(&j, bytes).unwrap();
        }
    }
}

#[test]
fn a_checkpoint_that_cannot_be_recorded_takes_no_snapshot() {
    let mut env = setup(&["a"]);
    env.checkpoint("a", Some("s1")).unwrap();
    let ws_id = env.ws_id("a");
    let restore = break_journal(&env, &ws_id);
    let e = env
        .checkpoint_of(&env.ws_str("a"), pinned_args("c9"))
        .unwrap_err();
    assert!(e.message.contains("was not taken"), "{}", e.message);
    let snap = env.res().snapshot_path(&ws_id, "c9");
    assert!(!env.sys.is_subvolume(&snap).unwrap(), "no snapshot left");
    assert!(
        !env.sys.calls().iter().any(|c| c.contains("/c9 ")),
        "no ioctl"
    );
    assert_eq!(env.ids("a"), ["s1"]);
    restore();
    let env = env.reopen();
    assert_eq!(env.ids("a"), ["s1"], "list and disk agree after a restart");
}

#[test]
fn a_checkpoint_interrupted_after_its_snapshot_keeps_message_metadata_and_pin() {
    let env = setup(&["a"]);
    let ws_id = env.ws_id("a");
    let res = env.res();
    // The process stopped between the ioctl and anything after it: the record and the
    // snapshot exist, nothing else.
    let entry = new_entry(
        SystemTime::now(),
        Some("agent step".into()),
        Some(serde_json::json!({"tool": "edit"})),
        true,
    );
    env.engine
        .store
        .record_checkpoint(&ws_id, "k1", &entry)
        .unwrap();
    std::fs::create_dir_all(res.snap_dir(&ws_id)).unwrap();
    env.sys
        .snapshot(
            &res.ws_subvol(&ws_id),
            &res.snapshot_path(&ws_id, "k1"),
            true,
        )
        .unwrap();
    // And one whose snapshot never happened.
    let env = env.reopen();
    assert_eq!(env.ids("a"), ["k1"]);
    let got = env.engine.store.snapshot_entry(&ws_id, "k1").unwrap();
    assert_eq!(
        (got.message(), got.metadata(), got.pinned, &got.created_at),
        (
            entry.message(),
            entry.metadata(),
            entry.pinned,
            &entry.created_at
        ),
        "kept with message, metadata and pin"
    );
    assert_eq!(
        got.child_ids(),
        [crate::state::lineage::LIVE_CHILD],
        "and its lineage: the live workspace descends from it"
    );
    env.engine
        .store
        .record_checkpoint(&ws_id, "never", &entry)
        .unwrap();
    let mut env = env.reopen();
    assert_eq!(
        env.ids("a"),
        ["k1"],
        "an intent without snapshot is withdrawn"
    );
    // The withdrawal is written before the next record, so a later line cannot revive it.
    env.checkpoint("a", Some("c2")).unwrap();
    let env = env.reopen();
    assert_eq!(env.ids("a"), ["k1", "c2"]);
    // Retention keeps what was pinned.
    let mut env = env;
    env.cleanup(&env.ws_str("a"), Some("1")).unwrap();
    assert_eq!(env.ids("a"), ["k1", "c2"]);
    let report = env.engine.apply(ApplyOptions::default(), &mut |_, _| {});
    assert!(report.ok() && !report.changed, "{report:#?}");
}

#[test]
fn a_failed_snapshot_ioctl_withdraws_its_record() {
    let mut env = setup(&["a"]);
    env.sys.fail_next("snapshot", libc::ENOSPC);
    assert!(env.checkpoint("a", Some("c1")).is_err());
    assert!(env.ids("a").is_empty());
    let mut env = env.reopen();
    assert!(env.ids("a").is_empty());
    env.checkpoint("a", Some("c2")).unwrap();
    let env = env.reopen();
    assert_eq!(env.ids("a"), ["c2"]);
}

#[test]
fn a_rollback_records_its_begin_and_end_without_rewriting_state_json() {
    let mut env = setup(&["a"]);
    env.checkpoint("a", Some("c1")).unwrap();
    let state = env.root.join("state/state.json");
    let journal = env
        .root
        .join("state")
        .join(crate::state::STATE_JOURNAL_FILE);
    let before = std::fs::read(&state).unwrap();
    let lines_before = std::fs::read_to_string(&journal).map_or(1, |j| j.lines().count());
    env.rollback(&env.ws_str("a"), "c1", true).unwrap();
    assert_eq!(
        std::fs::read(&state).unwrap(),
        before,
        "state.json untouched"
    );
    let journal = std::fs::read_to_string(&journal).unwrap();
    let ops: Vec<String> = journal
        .lines()
        .skip(lines_before)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["op"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // The copy's completion is not recorded apart (recovery treats both phases alike).
    assert_eq!(ops, ["begin", "end"]);
    let env = env.reopen();
    assert!(env.engine.store.read().pending().is_empty());
}

#[test]
fn a_pending_record_that_cannot_be_written_is_not_kept_in_memory() {
    let env = setup(&["a"]);
    let j = env
        .root
        .join("state")
        .join(crate::state::STATE_JOURNAL_FILE);
    let _ = std::fs::remove_file(&j);
    std::fs::create_dir_all(j.join("x")).unwrap();
    let ws_id = env.ws_id("a");
    let r = env.engine.store.begin(PendingKind::DeleteSnapshots {
        ws_id: ws_id.clone(),
        snapshots: vec!["x".into()],
    });
    assert!(r.is_err());
    assert!(env.engine.store.read().pending().is_empty());
}

#[test]
fn message_metadata_and_snapshot_count_are_bounded() {
    let mut env = setup_with(&["a"], "[retention]\nmax_snapshots = 2\n");
    let with =
        |id: &str, message: Option<String>, metadata: Option<serde_json::Value>| CheckpointArgs {
            snapshot: Some(id.to_string()),
            message,
            metadata,
            pin: false,
        };
    let spec = env.ws_str("a");
    // At the limits: accepted.
    env.checkpoint_of(&spec, with("m", Some("m".repeat(4096)), None))
        .expect("a 4096-byte message");
    let meta = |n: usize| serde_json::json!({ "k": "x".repeat(n - 8) });
    assert_eq!(serde_json::to_string(&meta(65536)).unwrap().len(), 65536);
    env.checkpoint_of(&spec, with("d", None, Some(meta(65536))))
        .expect("65536 bytes of metadata");
    // Over them: refused before anything else, naming the limit.
    let e = env
        .checkpoint_of(&spec, with("m2", Some("m".repeat(4097)), None))
        .unwrap_err();
    assert!(e.message.contains("4096"), "{e:?}");
    let e = env
        .checkpoint_of(&spec, with("d2", None, Some(meta(65537))))
        .unwrap_err();
    assert!(e.message.contains("65536"), "{e:?}");
    // The third snapshot is over max_snapshots = 2.
    let e = env.checkpoint("a", Some("c3")).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(e.message.contains("max_snapshots = 2"), "{e:?}");
    assert_eq!(env.ids("a"), ["m", "d"]);
}

#[test]
fn an_acknowledged_checkpoint_whose_snapshot_vanished_stays_listed_as_missing() {
    let mut env = setup(&["a"]);
    let r = env.checkpoint("a", Some("gone")).expect("checkpoint");
    // Deleted behind ws-ckpt's back; the next process must not take it for an interrupted
    // intent (which it would withdraw).
    env.sys
        .delete_subvolume(&env.res().snapshot_path(&r.ws_id, "gone"))
        .unwrap();
    let env = env.reopen();
    assert_eq!(env.ids("a"), ["gone"]);
    let report = env.engine.apply(ApplyOptions::default(), &mut |_, _| {});
    assert!(report.ok(), "{report:#?}");
    let got = env.engine.store.snapshot_entry(&r.ws_id, "gone").unwrap();
    assert!(got.missing, "shown as MISSING: {got:?}");
}

/// A checkpoint's record is on its snapshot directory while the snapshot ioctl runs (so a
/// power cut that keeps the snapshot keeps the record), is never put on the workspace root
/// (a source changed in the snapshot's transaction costs the ioctl a tree write), and is
/// removed once the index line is durable, or when the checkpoint fails.
#[test]
fn a_checkpoint_record_is_on_the_snapshot_directory_only_while_the_line_is_not_durable() {
    let mut env = setup(&["a"]);
    env.checkpoint("a", Some("c0")).unwrap();
    let id = env.ws_id("a");
    let res = env.res();
    let dest = res.snapshot_path(&id, "p1");
    let (sys, seen) = (Arc::clone(&env.sys), Arc::new(Mutex::new(None)));
    let (d, seen2) = (dest.clone(), Arc::clone(&seen));
    env.sys.on_next("snapshot", move || {
        let record = sys.checkpoint_record(&d).unwrap();
        *seen2.lock().unwrap() = Some((sys.records_now(), record));
    });
    env.pin("a", "p1");
    let (held, record) = seen.lock().unwrap().take().expect("the snapshot ioctl ran");
    assert_eq!(
        held,
        std::slice::from_ref(&dest),
        "one record, for p1, while its ioctl runs"
    );
    let entry = CheckpointNote::entry_for(&record.unwrap(), &id, "p1").expect("its own record");
    assert_eq!(entry.message(), Some("keep me"));
    assert!(entry.pinned);
    assert!(
        env.sys.records_now().is_empty(),
        "the record is removed once the line is durable"
    );
    assert_eq!(env.sys.checkpoint_record(&dest).unwrap(), None);
    assert!(
        !env.sys
            .calls()
            .iter()
            .any(|c| c.starts_with("set_checkpoint_record")
                && c.contains(&*res.ws_subvol(&id).to_string_lossy())),
        "nothing is put on the workspace root: {:?}",
        env.sys.calls()
    );

    // A failed snapshot leaves no record.
    env.sys.fail_next("snapshot", libc::ENOSPC);
    assert!(env.checkpoint("a", Some("fails")).is_err());
    assert!(
        env.sys.records_now().is_empty(),
        "{:?}",
        env.sys.records_now()
    );
}

/// A snapshot whose index line a power cut lost is adopted with its record (message,
/// metadata, pin): the one on its snapshot directory, or, for a snapshot taken by an earlier
/// build, the one its root carries. A record inherited from an earlier checkpoint (another
/// ID) is not taken for its own.
#[test]
fn a_snapshot_without_index_entry_is_adopted_with_its_record() {
    let mut env = setup(&["a"]);
    env.checkpoint("a", Some("c0")).unwrap();
    let id = env.ws_id("a");
    let res = env.res();
    let subvol = res.ws_subvol(&id);
    let note = |snapshot: &str, message: &str| {
        let mut lost = new_entry(SystemTime::now(), Some(message.into()), None, true);
        lost.set_metadata(Some(serde_json::json!({"k": snapshot})));
        serde_json::to_vec(&CheckpointNote {
            ws_id: id.clone(),
            id: snapshot.into(),
            entry: lost,
        })
        .unwrap()
    };

    // What a power cut between the snapshot's commit and the journal's leaves: a snapshot
    // with its record on its directory and no index line.
    env.sys
        .set_checkpoint_record(&res.snap_dir(&id), "lost", &note("lost", "lost line"))
        .unwrap();
    env.sys
        .snapshot(&subvol, &res.snapshot_path(&id, "lost"), true)
        .unwrap();
    // The same, left by an earlier build: the record on the workspace root, carried.
    env.sys
        .set_root_record(&subvol, &note("legacy", "earlier build"));
    env.sys
        .snapshot(&subvol, &res.snapshot_path(&id, "legacy"), true)
        .unwrap();
    // A snapshot made by hand afterwards inherits that root record, under another name.
    env.sys
        .snapshot(&subvol, &res.snapshot_path(&id, "by-hand"), true)
        .unwrap();

    let report = env.engine.apply(ApplyOptions::default(), &mut |_, _| {});
    assert!(report.ok(), "{report:#?}");
    let index = env.engine.store.read().indexes[&id].clone();
    for (snapshot, message) in [("lost", "lost line"), ("legacy", "earlier build")] {
        let got = &index.snapshots[snapshot];
        assert_eq!(got.message(), Some(message));
        assert!(got.pinned, "the pin survives: retention must not take it");
        assert_eq!(got.metadata(), Some(serde_json::json!({"k": snapshot})));
    }
    let by_hand = &index.snapshots["by-hand"];
    assert_eq!(by_hand.message(), None);
    assert!(!by_hand.pinned);
    assert!(
        env.sys.records_now().is_empty(),
        "an adopted record is removed: {:?}",
        env.sys.records_now()
    );
}

/// Records an interrupted checkpoint left behind are swept: the one of a listed snapshot and
/// the one of a snapshot that was never made go; the one of a snapshot found without an index
/// entry stays for its adoption, and so does anything that is not this workspace's record.
#[test]
fn the_sweep_removes_the_records_nothing_needs_and_keeps_the_rest() {
    let mut env = setup(&["a", "b"]);
    env.checkpoint("a", Some("c0")).unwrap();
    let id = env.ws_id("a");
    let other = env.ws_id("b");
    let res = env.res();
    let subvol = res.ws_subvol(&id);
    let dir = res.snap_dir(&id);
    let note = |ws_id: &str, snapshot: &str| {
        serde_json::to_vec(&CheckpointNote {
            ws_id: ws_id.into(),
            id: snapshot.into(),
            entry: new_entry(SystemTime::now(), Some("m".into()), None, true),
        })
        .unwrap()
    };
    // Killed after its line was durable, before the record's removal: listed, record kept.
    env.sys
        .set_checkpoint_record(&dir, "c0", &note(&id, "c0"))
        .unwrap();
    // Killed before its ioctl: no snapshot.
    env.sys
        .set_checkpoint_record(&dir, "never", &note(&id, "never"))
        .unwrap();
    // A snapshot whose line was lost: its record is what adoption needs.
    env.sys
        .set_checkpoint_record(&dir, "lost", &note(&id, "lost"))
        .unwrap();
    env.sys
        .snapshot(&subvol, &res.snapshot_path(&id, "lost"), true)
        .unwrap();
    // Not this workspace's record (named for another), and not a record at all.
    env.sys
        .set_checkpoint_record(&dir, "foreign", &note(&other, "foreign"))
        .unwrap();
    env.sys
        .set_checkpoint_record(&dir, "junk", b"not json")
        .unwrap();

    assert_eq!(env.engine.sweep_checkpoint_records(), 2);
    let mut left = env.sys.records_now();
    left.sort();
    let mut want = vec![dir.join("foreign"), dir.join("junk"), dir.join("lost")];
    want.sort();
    assert_eq!(left, want);
    // Idempotent: nothing more to remove.
    assert_eq!(env.engine.sweep_checkpoint_records(), 0);
    // The adoption then takes the kept record, as before.
    let report = env.engine.apply(ApplyOptions::default(), &mut |_, _| {});
    assert!(report.ok(), "{report:#?}");
    let index = env.engine.store.read().indexes[&id].clone();
    assert_eq!(index.snapshots["lost"].message(), Some("m"));
    assert!(!env.sys.records_now().contains(&dir.join("lost")));
}

/// The daemon answers a checkpoint once its snapshot and record are committed: the record
/// stays on the snapshot directory until the settle step made the journal durable, and a
/// daemon killed before that step leaves records the next start sweeps (after making the
/// journal durable). A command that owns its engine removes its record before it answers.
#[test]
fn a_daemon_checkpoint_keeps_its_record_until_it_is_settled() {
    let mut env = setup(&["a"]);
    let id = env.ws_id("a");
    let dir = env.res().snap_dir(&id);
    env.checkpoint("a", Some("own")).unwrap();
    assert!(
        env.sys.records_now().is_empty(),
        "a command settles its own"
    );
    assert!(!env.engine.has_unsettled_records());

    env.engine.set_settle_later(true);
    env.pin("a", "c1");
    env.checkpoint("a", Some("c2")).unwrap();
    assert_eq!(env.sys.records_now(), [dir.join("c1"), dir.join("c2")]);
    assert!(env.engine.has_unsettled_records());
    assert_eq!(env.ids("a"), ["own", "c1", "c2"], "listed at once");
    assert_eq!(env.engine.settle_records(), 2);
    assert!(env.sys.records_now().is_empty());
    assert!(!env.engine.has_unsettled_records());
    assert_eq!(env.engine.settle_records(), 0, "nothing left to settle");

    // Killed before settling: the records stay, the lines were written; the next start
    // lists the checkpoints (with their pin and message) and its sweep removes the records.
    env.checkpoint("a", Some("c3")).unwrap();
    env.pin("a", "c4");
    assert_eq!(env.sys.records_now().len(), 2);
    let env = env.reopen();
    assert_eq!(env.ids("a"), ["own", "c1", "c2", "c3", "c4"]);
    let index = env.engine.store.read().indexes[&id].clone();
    assert!(index.snapshots["c4"].pinned);
    assert_eq!(index.snapshots["c4"].message(), Some("keep me"));
    assert_eq!(env.engine.sweep_checkpoint_records(), 2);
    assert!(env.sys.records_now().is_empty());
}

/// Closing the engine (the daemon's stop) settles what waits; and a workspace with
/// MAX_UNSETTLED checkpoints waiting (its settling failing) makes the next one settle its own.
#[test]
fn waiting_checkpoints_are_settled_at_close_and_never_pile_up() {
    let mut env = setup(&["a", "b"]);
    env.engine.set_settle_later(true);
    env.checkpoint("a", Some("x1")).unwrap();
    env.checkpoint("b", Some("y1")).unwrap();
    assert_eq!(env.sys.records_now().len(), 2);
    env.engine.close();
    assert!(env.sys.records_now().is_empty(), "close settled both");

    let mut env = env.reopen();
    env.engine.set_settle_later(true);
    let id = env.ws_id("a");
    let dir = env.res().snap_dir(&id);
    for i in 0..crate::settle::MAX_UNSETTLED {
        env.engine.unsettled.push(
            &id,
            crate::settle::Waiting {
                dir: dir.clone(),
                id: format!("w{i}"),
            },
        );
    }
    env.checkpoint("a", Some("full")).unwrap();
    assert!(
        env.sys.records_now().is_empty(),
        "settled before it was answered: {:?}",
        env.sys.records_now()
    );
    assert_eq!(
        env.engine.unsettled.count(&id),
        crate::settle::MAX_UNSETTLED
    );
}

/// The daemon answers a rollback before its last commit: the record stays open until that
/// step runs, and it runs before anything else on the workspace, before a plan or a status
/// (which must not report an answered rollback as interrupted), and at shutdown.
#[test]
fn an_answered_rollback_finishes_before_anything_else_sees_it() {
    let mut env = setup(&["a"]);
    env.checkpoint("a", Some("c1")).unwrap();
    std::fs::write(env.ws("a").join("file.txt"), b"changed").unwrap();
    env.engine.set_defer_finishing(true);
    let spec = env.ws_str("a");
    env.rollback(&spec, "c1", true).unwrap();
    assert_eq!(env.content("a"), "a");
    assert!(env.engine.has_owed());
    assert_eq!(env.engine.store.read().pending().len(), 1);
    // Another operation on the workspace runs the owed step first.
    env.checkpoint("a", Some("c2")).unwrap();
    assert!(!env.engine.has_owed());
    assert!(env.engine.store.read().pending().is_empty());
    // A plan does too, and so sees nothing interrupted.
    env.rollback(&spec, "c1", true).unwrap();
    assert!(env.engine.has_owed());
    let p = env.engine.plan(crate::plan::PlanOptions::default());
    assert!(p.actions.is_empty(), "{:#?}", p.actions);
    assert!(env.engine.store.read().pending().is_empty());
    let id = env.ws_id("a");
    assert_eq!(
        env.sys.list_subvolumes(&env.res().gate(&id)).unwrap(),
        ["live"],
        "the previous state is deleted"
    );
    // And `finish_owed_all` (the daemon's thread after the answer, and shutdown).
    env.rollback(&spec, "c2", true).unwrap();
    env.engine.finish_owed_all();
    assert!(!env.engine.has_owed());
    assert!(env.engine.store.read().pending().is_empty());
    assert_eq!(env.content("a"), "a");
}
