//! End-to-end tests of the snapshot operations (SPEC §5.2, §5.3, §5.5, §5.6, §11) against the
//! real `ws-ckpt` binary on a real btrfs loop filesystem: checkpoint/list output, IDs,
//! rollback exactness and atomicity, busy refusal, MISSING snapshots (seed scenario 6),
//! delete/cleanup/retention, diff, kill -9 at every step boundary, space reclaim and
//! concurrent first checkpoints.
//!
//! Every test builds its own [`TestEnv`] (root only; skipped loudly otherwise) and must not
//! touch anything outside it.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use ws_ckpt_integration_tests::{find_tool, Run, TestEnv};

/// `[[workspace]]` tables for `home/<name>` of each name.
fn decls(env: &TestEnv, names: &[&str], extra: &str) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                "[[workspace]]\npath = \"{}\"\n{extra}\n",
                env.home.join(n).display()
            )
        })
        .collect()
}

/// An environment whose config declares `home/<name>` for every name (each a sample tree),
/// applied so they are workspaces.
fn setup(test: &str, names: &[&str], ws_extra: &str) -> Option<TestEnv> {
    let env = TestEnv::new(test)?;
    for n in names {
        TestEnv::make_sample_tree(&env.home.join(n));
    }
    env.write_config(&decls(&env, names, ws_extra));
    env.run(&["apply"]).ok();
    Some(env)
}

fn json_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--format", "json"];
    v.extend_from_slice(args);
    v
}

/// Run with `--format json`, expect success, return the JSON.
#[track_caller]
fn ok(env: &TestEnv, args: &[&str]) -> Value {
    let r = env.run(&json_args(args));
    r.ok();
    r.json()
}

/// Run with `--format json`, expect exit 1, return the `error` object.
#[track_caller]
fn fails(env: &TestEnv, args: &[&str]) -> Value {
    let r = env.run(&json_args(args));
    r.assert_code(1);
    let v = r.json();
    assert!(v["error"]["code"].is_string(), "{}", r.describe());
    v["error"].clone()
}

fn ws(env: &TestEnv, name: &str) -> String {
    env.home.join(name).display().to_string()
}

fn checkpoint(env: &TestEnv, name: &str, id: &str) -> Value {
    ok(env, &["checkpoint", "-w", &ws(env, name), "-s", id])
}

/// Snapshot IDs listed for one workspace, in order, with their MISSING flag.
fn listed(env: &TestEnv, name: &str) -> Vec<(String, bool)> {
    let v = ok(env, &["list", "-w", &ws(env, name)]);
    v.as_array()
        .expect("list --format json is an array of snapshots")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().expect("id").to_string(),
                s["meta"]["missing"].as_bool().expect("missing"),
            )
        })
        .collect()
}

fn ids(env: &TestEnv, name: &str) -> Vec<String> {
    listed(env, name).into_iter().map(|(id, _)| id).collect()
}

/// Every subvolume of the test filesystem, as paths relative to its top.
fn subvolumes(env: &TestEnv) -> BTreeSet<String> {
    let out = Command::new(find_tool("btrfs"))
        .args(["subvolume", "list"])
        .arg(&env.mount)
        .output()
        .expect("btrfs subvolume list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(" path ").nth(1))
        .map(str::to_string)
        .collect()
}

/// The subvolumes a workspace with these snapshots must have, and nothing else.
fn expected_subvolumes(ws_id: &str, snaps: &[&str]) -> BTreeSet<String> {
    let mut s: BTreeSet<String> = snaps
        .iter()
        .map(|id| format!("snapshots/{ws_id}/{id}"))
        .collect();
    s.insert(format!("gates/{ws_id}/live"));
    s
}

fn btrfs(args: &[&str], path: &Path) {
    let out = Command::new(find_tool("btrfs"))
        .args(args)
        .arg(path)
        .output()
        .expect("run btrfs");
    assert!(
        out.status.success(),
        "btrfs {args:?} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn statvfs_free(path: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(path).expect("statvfs");
    s.blocks_free() * s.fragment_size()
}

#[test]
fn checkpoint_and_list_json_shape() {
    let Some(env) = setup("checkpoint_and_list_json_shape", &["a"], "") else {
        return;
    };
    let v = ok(
        &env,
        &[
            "checkpoint",
            "-w",
            &ws(&env, "a"),
            "-s",
            "c1",
            "-m",
            "first",
            "--metadata",
            r#"{"tool":"edit","n":3}"#,
            "--pin",
        ],
    );
    assert_eq!(v["snapshot"], "c1");
    assert_eq!(v["workspace"], ws(&env, "a"));
    assert_eq!(v["pinned"], true);
    assert_eq!(v["empty"], false);
    assert_eq!(v["initialized"], false);
    assert!(v["ws_id"].as_str().unwrap().starts_with("ws-"));
    assert!(v["created_at"].as_str().unwrap().ends_with('Z'));
    let ws_id = v["ws_id"].as_str().unwrap().to_string();

    // Generated IDs: valid, distinct, newest last.
    let g1 = ok(&env, &["checkpoint", "-w", &ws(&env, "a")])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let g2 = ok(&env, &["checkpoint", "-w", &ws_id])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(g1, g2);
    for g in [&g1, &g2] {
        assert!(
            g.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "{g}"
        );
    }
    assert_eq!(ids(&env, "a"), ["c1", g1.as_str(), g2.as_str()]);

    let all = ok(&env, &["list"]);
    let s = &all[0];
    assert_eq!(s["ws_id"], ws_id.as_str());
    assert_eq!(s["workspace"], ws(&env, "a"));
    assert_eq!(s["id"], "c1");
    assert_eq!(s["meta"]["message"], "first");
    assert_eq!(s["meta"]["metadata"]["tool"], "edit");
    assert_eq!(s["meta"]["pinned"], true);
    assert_eq!(s["meta"]["missing"], false);
    assert!(s.get("problem").is_none());
    // Lineage: the newest is the head, and each names its parent.
    assert_eq!(all[2]["head"], true, "{all}");
    assert_eq!(all[1]["meta"]["parent_id"], "c1", "{all}");
    assert_eq!(
        subvolumes(&env),
        expected_subvolumes(&ws_id, &["c1", &g1, &g2])
    );
    // Snapshots are read-only.
    let snap = env.mount.join("snapshots").join(&ws_id).join("c1");
    assert!(fs::write(snap.join("x"), b"x").is_err());
}

#[test]
fn duplicate_and_invalid_ids_are_refused() {
    let Some(env) = setup("duplicate_and_invalid_ids", &["a"], "") else {
        return;
    };
    let ws_id = checkpoint(&env, "a", "c1")["ws_id"]
        .as_str()
        .unwrap()
        .to_string();
    let e = fails(&env, &["checkpoint", "-w", &ws(&env, "a"), "-s", "c1"]);
    assert_eq!(e["code"], "SnapshotAlreadyExists");
    assert!(e["message"].as_str().unwrap().contains("c1"));
    for bad in ["../../x", "../x", "a/b", ".hidden", "-x"] {
        let r = env.run(&json_args(&["checkpoint", "-w", &ws(&env, "a"), "-s", bad]));
        assert_ne!(r.code(), Some(0), "{}", r.describe());
    }
    let e = fails(&env, &["checkpoint", "-w", &ws(&env, "a"), "-s", "../../x"]);
    assert_eq!(e["code"], "InvalidArgument");
    assert_eq!(subvolumes(&env), expected_subvolumes(&ws_id, &["c1"]));
    assert!(!env.mount.join("x").exists() && !env.root.join("x").exists());
    assert_eq!(ids(&env, "a"), ["c1"]);
}

#[test]
fn rollback_restores_content_exactly() {
    let Some(env) = setup("rollback_restores_content_exactly", &["a"], "") else {
        return;
    };
    let path = env.home.join("a");
    let before = TestEnv::tree_digest(&path);
    let ws_id = checkpoint(&env, "a", "c1")["ws_id"]
        .as_str()
        .unwrap()
        .to_string();
    fs::write(path.join("README.txt"), b"changed").unwrap();
    fs::remove_file(path.join("src/main.rs")).unwrap();
    fs::write(path.join("new.txt"), b"new").unwrap();
    fs::set_permissions(path.join("bin/run.sh"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir_all(path.join("newdir/deeper")).unwrap();
    assert_ne!(TestEnv::tree_digest(&path), before);
    let v = ok(&env, &["rollback", "-w", &ws(&env, "a"), "-s", "c1"]);
    assert_eq!(v["snapshot"], "c1");
    assert_eq!(v["ws_id"], ws_id.as_str());
    assert_eq!(TestEnv::tree_digest(&path), before);
    // Writable again, and the snapshot itself is unchanged.
    fs::write(path.join("after.txt"), b"x").unwrap();
    assert_eq!(
        TestEnv::tree_digest(&env.mount.join("snapshots").join(&ws_id).join("c1")),
        before
    );
    assert_eq!(subvolumes(&env), expected_subvolumes(&ws_id, &["c1"]));
    let e = fails(&env, &["rollback", "-w", &ws(&env, "a"), "-s", "nope"]);
    assert_eq!(e["code"], "SnapshotNotFound");
}

#[test]
fn workspace_path_never_disappears_during_rollbacks() {
    let Some(env) = setup("path_never_disappears", &["a"], "") else {
        return;
    };
    let path = env.home.join("a");
    fs::write(path.join("which"), b"one").unwrap();
    checkpoint(&env, "a", "one");
    fs::write(path.join("which"), b"two").unwrap();
    checkpoint(&env, "a", "two");
    let stop = Arc::new(AtomicBool::new(false));
    let misses = Arc::new(AtomicUsize::new(0));
    let probes = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, misses, probes, path) =
            (stop.clone(), misses.clone(), probes.clone(), path.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ok = fs::metadata(&path).is_ok_and(|m| m.is_dir())
                    && fs::metadata(path.join("which")).is_ok();
                if !ok {
                    misses.fetch_add(1, Ordering::Relaxed);
                }
                probes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    for i in 0..200 {
        let target = if i % 2 == 0 { "one" } else { "two" };
        let r = env.run(&["rollback", "-w", &ws(&env, "a"), "-s", target, "--force"]);
        if r.code() != Some(0) {
            stop.store(true, Ordering::Relaxed);
            panic!("rollback {i} failed\n{}", r.describe());
        }
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("reader thread");
    assert!(
        probes.load(Ordering::Relaxed) > 1000,
        "the reader barely ran"
    );
    assert_eq!(
        misses.load(Ordering::Relaxed),
        0,
        "the workspace path did not resolve at some instant"
    );
    assert_eq!(fs::read_to_string(path.join("which")).unwrap(), "two");
}

#[test]
fn rollback_refused_while_a_process_is_inside() {
    let Some(env) = setup("rollback_refused_while_busy", &["a"], "") else {
        return;
    };
    checkpoint(&env, "a", "c1");
    fs::create_dir_all(env.home.join("a/sub")).unwrap();
    let mut cmd = Command::new(find_tool("sleep"));
    cmd.arg("60").current_dir(env.home.join("a/sub"));
    let child = env.spawn_command(cmd);
    std::thread::sleep(Duration::from_millis(200));
    let e = fails(&env, &["rollback", "-w", &ws(&env, "a"), "-s", "c1"]);
    assert_eq!(e["code"], "Busy");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains(&child.pid().to_string()) && msg.contains("sleep"),
        "{e}"
    );
    assert!(e["hint"].as_str().unwrap().contains("--force"));
    assert!(
        env.home.join("a/sub").exists(),
        "a refused rollback changed the workspace"
    );

    // Through a bind-mount alias of the workspace: still detected (same st_dev).
    child.kill9();
    let alias = env.root.join("alias");
    fs::create_dir_all(&alias).unwrap();
    nix::mount::mount(
        Some(&env.home.join("a")),
        &alias,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind mount");
    let mut cmd = Command::new(find_tool("sleep"));
    cmd.arg("60").current_dir(&alias);
    let child2 = env.spawn_command(cmd);
    std::thread::sleep(Duration::from_millis(200));
    let e = fails(&env, &["rollback", "-w", &ws(&env, "a"), "-s", "c1"]);
    assert_eq!(e["code"], "Busy", "{e}");
    assert!(e["message"]
        .as_str()
        .unwrap()
        .contains(&child2.pid().to_string()));
    child2.kill9();
    nix::mount::umount(&alias).expect("umount alias");

    let mut cmd = Command::new(find_tool("sleep"));
    cmd.arg("60").current_dir(env.home.join("a/sub"));
    let _child3 = env.spawn_command(cmd);
    std::thread::sleep(Duration::from_millis(200));
    ok(
        &env,
        &["rollback", "-w", &ws(&env, "a"), "-s", "c1", "--force"],
    );
    assert!(!env.home.join("a/sub").exists());
}

#[test]
fn detached_workspace_fails_loudly() {
    let Some(env) = setup("detached_workspace_fails", &["a"], "") else {
        return;
    };
    let ws_id = checkpoint(&env, "a", "c1")["ws_id"]
        .as_str()
        .unwrap()
        .to_string();
    checkpoint(&env, "a", "c2");
    checkpoint(&env, "a", "c3");
    let path = env.home.join("a");
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    fs::write(path.join("new"), b"x").unwrap();
    for args in [
        vec!["checkpoint", "-w", path.to_str().unwrap()],
        vec!["rollback", "-w", path.to_str().unwrap(), "-s", "c1"],
        vec!["diff", "-w", path.to_str().unwrap(), "-f", "c1"],
        vec!["diff", "-w", path.to_str().unwrap(), "-f", "c1", "-t", "c2"],
        vec!["delete", "-w", path.to_str().unwrap(), "-s", "c1"],
        vec!["cleanup", "-w", path.to_str().unwrap(), "--keep", "1"],
    ] {
        let e = fails(&env, &args);
        assert_eq!(e["code"], "WorkspaceDetached", "{args:?}: {e}");
        assert!(
            e["message"].as_str().unwrap().contains("real directory"),
            "{e}"
        );
        assert!(e["hint"].as_str().unwrap().contains("apply"), "{e}");
    }
    // Nothing was done to the directory, and no snapshot was deleted.
    assert_eq!(fs::read(path.join("new")).unwrap(), b"x");
    assert_eq!(
        ok(&env, &["list", "-w", &ws_id]).as_array().unwrap().len(),
        3
    );
    // By ws_id the snapshots stay manageable while detached.
    ok(&env, &["diff", "-w", &ws_id, "-f", "c1", "-t", "c2"]);
    ok(&env, &["delete", "-w", &ws_id, "-s", "c1"]);
    ok(&env, &["cleanup", "-w", &ws_id, "--keep", "1"]);
}

/// Seed scenario 6: a snapshot subvolume deleted by hand.
#[test]
fn missing_snapshot_scenario() {
    let Some(env) = setup("missing_snapshot_scenario", &["a"], "") else {
        return;
    };
    let path = env.home.join("a");
    let ws_id = checkpoint(&env, "a", "c1")["ws_id"]
        .as_str()
        .unwrap()
        .to_string();
    fs::write(path.join("second"), b"2").unwrap();
    checkpoint(&env, "a", "c2");
    let d2 = TestEnv::tree_digest(&path);
    let c1 = env.mount.join("snapshots").join(&ws_id).join("c1");
    btrfs(&["subvolume", "delete"], &c1);

    assert_eq!(
        listed(&env, "a"),
        [("c1".to_string(), true), ("c2".to_string(), false)]
    );
    let e = fails(&env, &["rollback", "-w", &ws(&env, "a"), "-s", "c1"]);
    assert_eq!(e["code"], "SnapshotMissing");
    assert!(e["hint"].as_str().unwrap().contains("--force"), "{e}");
    assert_eq!(TestEnv::tree_digest(&path), d2);
    fs::write(path.join("third"), b"3").unwrap();
    ok(&env, &["rollback", "-w", &ws(&env, "a"), "-s", "c2"]);
    assert_eq!(TestEnv::tree_digest(&path), d2);
    // apply keeps it MISSING while it is gone.
    env.run(&["apply"]).ok();
    assert_eq!(listed(&env, "a")[0], ("c1".to_string(), true));

    // Restore a read-only subvolume at that path: the mark clears.
    btrfs(
        &[
            "subvolume",
            "snapshot",
            "-r",
            &env.ws_subvol(&ws_id).display().to_string(),
        ],
        &c1,
    );
    env.run(&["apply"]).ok();
    assert_eq!(
        listed(&env, "a"),
        [("c1".to_string(), false), ("c2".to_string(), false)]
    );
    ok(&env, &["rollback", "-w", &ws(&env, "a"), "-s", "c1"]);
    assert_eq!(
        TestEnv::tree_digest(&path),
        d2,
        "c1 now holds what was restored"
    );
}

#[test]
fn delete_pinned_and_unique_ids() {
    let Some(env) = setup("delete_pinned_and_unique_ids", &["a", "b"], "") else {
        return;
    };
    let a = ok(
        &env,
        &["checkpoint", "-w", &ws(&env, "a"), "-s", "p1", "--pin"],
    )["ws_id"]
        .as_str()
        .unwrap()
        .to_string();
    checkpoint(&env, "a", "only-a");
    checkpoint(&env, "a", "both");
    let b = checkpoint(&env, "b", "both")["ws_id"]
        .as_str()
        .unwrap()
        .to_string();

    let e = fails(&env, &["delete", "-w", &ws(&env, "a"), "-s", "p1"]);
    assert_eq!(e["code"], "SnapshotPinned");
    ok(
        &env,
        &["delete", "-w", &ws(&env, "a"), "-s", "p1", "--force"],
    );

    let v = ok(&env, &["delete", "-s", "only-a"]);
    assert_eq!(v["ws_id"], a.as_str());
    assert_eq!(v["deleted"], serde_json::json!(["only-a"]));
    let e = fails(&env, &["delete", "-s", "both"]);
    assert_eq!(e["code"], "InvalidArgument");
    assert!(
        e["message"].as_str().unwrap().contains(&a) && e["message"].as_str().unwrap().contains(&b)
    );
    assert_eq!(
        fails(&env, &["delete", "-s", "never"])["code"],
        "SnapshotNotFound"
    );
    ok(&env, &["delete", "-w", &b, "-s", "both"]);
    assert_eq!(ids(&env, "a"), ["both"]);
    assert!(ids(&env, "b").is_empty());
    let mut want = expected_subvolumes(&a, &["both"]);
    want.insert(format!("gates/{b}/live"));
    assert_eq!(subvolumes(&env), want);
}

#[test]
fn cleanup_and_retention_keep_pinned_and_newest() {
    let Some(env) = setup("cleanup_and_retention", &["a"], "") else {
        return;
    };
    let ws_id = ok(
        &env,
        &["checkpoint", "-w", &ws(&env, "a"), "-s", "p0", "--pin"],
    )["ws_id"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 1..=5 {
        checkpoint(&env, "a", &format!("c{i}"));
    }
    let v = ok(&env, &["cleanup", "-w", &ws(&env, "a"), "--keep", "2"]);
    let gone: Vec<&str> = v["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(gone, ["c1", "c2", "c3"]);
    assert!(v["deleted"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("keep = 2"));
    assert!(v["freed_bytes"].is_u64());
    assert_eq!(ids(&env, "a"), ["p0", "c4", "c5"]);
    assert_eq!(
        subvolumes(&env),
        expected_subvolumes(&ws_id, &["p0", "c4", "c5"])
    );
    assert_eq!(
        fails(&env, &["cleanup", "-w", &ws(&env, "a"), "--keep", "0"])["code"],
        "InvalidArgument"
    );

    // Retention by config: auto_cleanup + keep = 2, applied by `apply`.
    for i in 6..=8 {
        checkpoint(&env, "a", &format!("c{i}"));
    }
    env.write_config(&decls(&env, &["a"], "auto_cleanup = true\nkeep = 2"));
    env.run(&["apply"]).ok();
    assert_eq!(ids(&env, "a"), ["p0", "c7", "c8"]);
    assert_eq!(
        subvolumes(&env),
        expected_subvolumes(&ws_id, &["p0", "c7", "c8"])
    );
    let second = ok(&env, &["apply"]);
    assert_eq!(second["changed"], false, "{second}");
}

fn diff_entries(v: &Value) -> BTreeSet<String> {
    v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| match e["change"].as_str().unwrap() {
            "renamed" => format!(
                "R {} -> {}",
                e["from"].as_str().unwrap(),
                e["path"].as_str().unwrap()
            ),
            "added" => format!("+ {}", e["path"].as_str().unwrap()),
            "deleted" => format!("- {}", e["path"].as_str().unwrap()),
            "modified" => format!("M {}", e["path"].as_str().unwrap()),
            other => panic!("unknown change {other}"),
        })
        .collect()
}

#[test]
fn diff_between_snapshots_and_live() {
    let Some(env) = setup("diff_between_snapshots_and_live", &["a"], "") else {
        return;
    };
    let p = env.home.join("a");
    fs::write(p.join("keep.txt"), b"same").unwrap();
    fs::write(p.join("gone.txt"), b"bye").unwrap();
    fs::write(p.join("mod.txt"), b"v1").unwrap();
    fs::create_dir(p.join("olddir")).unwrap();
    fs::write(p.join("olddir/f"), b"f").unwrap();
    let ws_id = checkpoint(&env, "a", "c1")["ws_id"]
        .as_str()
        .unwrap()
        .to_string();
    fs::remove_file(p.join("gone.txt")).unwrap();
    fs::write(p.join("mod.txt"), b"v2 longer").unwrap();
    fs::rename(p.join("olddir"), p.join("newdir")).unwrap();
    fs::write(p.join("added.txt"), b"+").unwrap();
    std::os::unix::fs::symlink("keep.txt", p.join("link")).unwrap();
    checkpoint(&env, "a", "c2");

    let v = ok(
        &env,
        &["diff", "-w", &ws(&env, "a"), "-f", "c1", "-t", "c2"],
    );
    assert_eq!(v["from"], "c1");
    assert_eq!(v["to"], "c2");
    let got = diff_entries(&v);
    for want in [
        "- gone.txt",
        "M mod.txt",
        "R olddir -> newdir",
        "+ added.txt",
        "+ link",
    ] {
        assert!(got.contains(want), "{want} missing from {got:?}");
    }
    assert!(!got.iter().any(|e| e.contains("keep.txt")), "{got:?}");

    // Live workspace.
    fs::write(p.join("live.txt"), b"now").unwrap();
    let v = ok(&env, &["diff", "-w", &ws(&env, "a"), "-f", "c2"]);
    assert!(v["to"].is_null());
    assert_eq!(diff_entries(&v), BTreeSet::from(["+ live.txt".to_string()]));
    // The temporary snapshot is gone and nothing is pending.
    assert_eq!(subvolumes(&env), expected_subvolumes(&ws_id, &["c1", "c2"]));
    let st = ok(&env, &["status"]);
    assert!(!st.to_string().contains("nterrupted"), "{st}");
    assert_eq!(
        ok(
            &env,
            &["diff", "-w", &ws(&env, "a"), "-f", "c2", "-t", "c2"]
        )["entries"],
        serde_json::json!([])
    );
    assert_eq!(
        fails(&env, &["diff", "-w", &ws(&env, "a"), "-f", "nope"])["code"],
        "SnapshotNotFound"
    );
}

/// kill -9 at every step boundary of rollback, delete, cleanup and live diff, then `apply`:
/// the workspace holds the old or the new content exactly, no subvolume is left over, and
/// `list` agrees with the disk.
#[test]
fn kill9_at_every_step_then_apply_converges() {
    let Some(env) = setup("kill9_at_every_step", &["a"], "") else {
        return;
    };
    let p = env.home.join("a");
    fs::write(p.join("v"), b"old").unwrap();
    let ws_id = checkpoint(&env, "a", "old")["ws_id"]
        .as_str()
        .unwrap()
        .to_string();
    let d_old = TestEnv::tree_digest(&p);
    fs::write(p.join("v"), b"new").unwrap();
    fs::write(p.join("extra"), b"e").unwrap();
    checkpoint(&env, "a", "new");
    let d_new = TestEnv::tree_digest(&p);

    let crash = |args: &[&str], point: &str| -> Run {
        let r = env.run_env(args, &[("WS_CKPT_FAULT", point)]);
        assert_eq!(
            r.code(),
            None,
            "{point} did not kill the process\n{}",
            r.describe()
        );
        let a = env.run(&["apply"]);
        a.ok();
        a
    };
    // Rollback old → new; before the copy exists the workspace keeps "old" content; from then
    // on recovery finishes the rollback (the record names the live subvolume, so it can tell
    // whether the exchange happened).
    for (point, done) in [
        ("rollback:after-begin", false),
        ("rollback:after-snapshot", true),
        ("rollback:after-exchange", true),
        ("rollback:after-delete-old", true),
    ] {
        ok(&env, &["rollback", "-w", &ws_id, "-s", "old", "--force"]);
        assert_eq!(TestEnv::tree_digest(&p), d_old);
        crash(&["rollback", "-w", &ws_id, "-s", "new", "--force"], point);
        let want = if done { &d_new } else { &d_old };
        assert_eq!(&TestEnv::tree_digest(&p), want, "{point}");
        assert_eq!(
            subvolumes(&env),
            expected_subvolumes(&ws_id, &["old", "new"]),
            "{point}"
        );
        assert_eq!(ids(&env, "a"), ["old", "new"], "{point}");
        assert!(
            ok(&env, &["apply"])["changed"] == false,
            "{point}: second apply changed something"
        );
    }

    // Delete: after the crash, apply finishes the deletion.
    for point in ["delete:after-begin", "delete:after-subvolume"] {
        checkpoint(&env, "a", "victim");
        crash(&["delete", "-w", &ws_id, "-s", "victim"], point);
        assert_eq!(ids(&env, "a"), ["old", "new"], "{point}");
        assert_eq!(
            subvolumes(&env),
            expected_subvolumes(&ws_id, &["old", "new"]),
            "{point}"
        );
    }

    // Cleanup killed after planning: nothing deleted, nothing pending, disk and list agree.
    checkpoint(&env, "a", "c3");
    crash(
        &["cleanup", "-w", &ws_id, "--keep", "1"],
        "cleanup:after-plan",
    );
    assert_eq!(ids(&env, "a"), ["old", "new", "c3"]);
    assert_eq!(
        subvolumes(&env),
        expected_subvolumes(&ws_id, &["old", "new", "c3"])
    );
    // Killed in the middle of its deletions: finished by apply.
    crash(
        &["cleanup", "-w", &ws_id, "--keep", "1"],
        "delete:after-subvolume",
    );
    assert_eq!(ids(&env, "a"), ["c3"]);
    assert_eq!(subvolumes(&env), expected_subvolumes(&ws_id, &["c3"]));

    // Live diff killed with its temporary snapshot present: apply removes it.
    crash(&["diff", "-w", &ws_id, "-f", "c3"], "diff:after-snapshot");
    assert_eq!(subvolumes(&env), expected_subvolumes(&ws_id, &["c3"]));
    assert_eq!(ids(&env, "a"), ["c3"]);
    assert_eq!(TestEnv::tree_digest(&p), d_new);
}

#[test]
fn deleting_snapshots_gives_space_back() {
    let Some(env) = setup("deleting_snapshots_gives_space_back", &["a"], "") else {
        return;
    };
    let p = env.home.join("a");
    checkpoint(&env, "a", "base");
    let free0 = statvfs_free(&env.mount);
    // Fill to ~90 % with incompressible data.
    let big = p.join("big.bin");
    {
        use std::io::Write;
        let mut f = fs::File::create(&big).unwrap();
        let mut buf = vec![0u8; 4 << 20];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let total = nix::sys::statvfs::statvfs(&env.mount).unwrap();
        let size = total.blocks() * total.fragment_size();
        loop {
            let s = nix::sys::statvfs::statvfs(&env.mount).unwrap();
            let used = size - s.blocks_free() * s.fragment_size();
            if used * 10 >= size * 9 {
                break;
            }
            buf[0] = buf[0].wrapping_add(1);
            if f.write_all(&buf).is_err() {
                break; // ENOSPC
            }
        }
        let _ = f.sync_all();
    }
    let written = fs::metadata(&big).unwrap().len();
    assert!(written > 256 << 20, "only {written} bytes written");
    ok(&env, &["checkpoint", "-w", &ws(&env, "a"), "-s", "full"]);
    fs::remove_file(&big).unwrap();
    let low = statvfs_free(&env.mount);
    let v = ok(&env, &["cleanup", "-w", &ws(&env, "a"), "--keep", "1"]);
    // "full" is the newest: cleanup deletes "base" only; delete "full" explicitly.
    assert_eq!(v["deleted"][0]["id"], "base");
    ok(&env, &["delete", "-w", &ws(&env, "a"), "-s", "full"]);
    let after = statvfs_free(&env.mount);
    assert!(
        after >= low + written * 7 / 10,
        "space did not come back: free {low} before, {after} after deleting {written} bytes (initially {free0})"
    );
}

#[test]
fn parallel_first_checkpoints_make_one_workspace() {
    let Some(env) = TestEnv::new("parallel_first_checkpoints") else {
        return;
    };
    let dir = env.home.join("par");
    TestEnv::make_sample_tree(&dir);
    let digest = TestEnv::tree_digest(&dir);
    env.write_config(&decls(&env, &["par"], ""));
    let children: Vec<_> = (0..10)
        .map(|i| {
            let id = format!("p{i}");
            env.spawn(
                &[
                    "--format",
                    "json",
                    "checkpoint",
                    "-w",
                    dir.to_str().unwrap(),
                    "-s",
                    &id,
                ],
                &[],
            )
        })
        .collect();
    for c in &children {
        let st = c
            .wait_timeout(Duration::from_secs(300))
            .expect("checkpoint hung");
        assert!(
            st.success(),
            "{} failed: {}\n{}",
            c.cmd(),
            c.stdout(),
            c.stderr()
        );
    }
    let v = ok(&env, &["list"]);
    let items = v.as_array().unwrap();
    let ws_ids: std::collections::BTreeSet<&str> =
        items.iter().filter_map(|i| i["ws_id"].as_str()).collect();
    assert_eq!(ws_ids.len(), 1, "{v}");
    assert_eq!(items.len(), 10, "{v}");
    let ws_id = ws_ids.iter().next().unwrap().to_string();
    let initialized = children
        .iter()
        .filter(|c| c.stdout().contains("\"initialized\": true"))
        .count();
    assert_eq!(initialized, 1, "exactly one call initialized the directory");
    assert_eq!(TestEnv::tree_digest(&dir), digest);
    let snaps: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    let refs: Vec<&str> = snaps.iter().map(String::as_str).collect();
    assert_eq!(subvolumes(&env), expected_subvolumes(&ws_id, &refs));
}

/// Write incompressible data to `path` until `limit` bytes or ENOSPC; returns bytes written.
fn fill(path: &Path, limit: u64) -> u64 {
    use std::io::Write;
    let mut f = fs::File::create(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D ^ limit;
    let mut written = 0u64;
    while written < limit {
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        match f.write(&buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = f.sync_all();
    written
}

/// SPEC §5.5 / issue 3: deleting snapshots on a 100 % full filesystem succeeds and the space
/// really comes back.
#[test]
fn deleting_on_a_full_filesystem_gives_space_back() {
    let Some(env) = setup("deleting_on_a_full_filesystem", &["a"], "") else {
        return;
    };
    let p = env.home.join("a");
    let total = {
        let s = nix::sys::statvfs::statvfs(&env.mount).unwrap();
        s.blocks() * s.fragment_size()
    };
    // Data held only by a snapshot: write, snapshot, remove it from the live workspace.
    let held = fill(&p.join("held.bin"), total * 4 / 10);
    assert!(held > 200 << 20, "only {held} bytes written");
    checkpoint(&env, "a", "holder");
    fs::remove_file(p.join("held.bin")).unwrap();
    // Now fill the filesystem completely from the live side.
    fill(&p.join("filler.bin"), u64::MAX);
    let full = statvfs_free(&env.mount);
    assert!(
        fs::write(p.join("one-more"), vec![1u8; 8 << 20]).is_err()
            || statvfs_free(&env.mount) < 16 << 20,
        "filesystem is not full: {full} bytes free"
    );
    let v = ok(&env, &["delete", "-w", &ws(&env, "a"), "-s", "holder"]);
    assert_eq!(v["deleted"][0], "holder");
    let after = statvfs_free(&env.mount);
    assert!(
        after >= full + held * 7 / 10,
        "space did not come back on a full filesystem: {full} free before, {after} after deleting a snapshot holding {held} bytes"
    );
    // The workspace is still usable.
    fs::remove_file(p.join("filler.bin")).unwrap();
    checkpoint(&env, "a", "after");
}
