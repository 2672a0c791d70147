//! Real-btrfs end-to-end tests of the core engine (issue 2): bootstrap, init (same and other
//! filesystem), idempotent apply, plan exit codes, v0 and pre-FHS migrations, re-attach after
//! unmount, symlink repair, missing snapshots, backend conflict, storage loss, release and
//! crash safety of init/release. Each test has its own image, loop device and mount.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use ws_ckpt_integration_tests::{btrfs, find_tool, loops_under, mounts_under, run_tool, TestEnv};

fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect("run");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ws_table(path: &Path) -> String {
    format!("[[workspace]]\npath = {:?}\n", path.display().to_string())
}

fn status(env: &TestEnv) -> Value {
    env.run(&["--format", "json", "status"]).json()
}

fn workspace<'a>(st: &'a Value, path: &Path) -> &'a Value {
    st["workspaces"]
        .as_array()
        .and_then(|a| a.iter().find(|w| w["path"] == path.display().to_string()))
        .unwrap_or_else(|| panic!("{} not in status: {st:#}", path.display()))
}

fn ws_id(env: &TestEnv, path: &Path) -> String {
    workspace(&status(env), path)["ws_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn action_names(report: &Value) -> Vec<String> {
    report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap().to_string())
        .collect()
}

fn finding_kinds(report: &Value) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .collect()
}

/// Names directly under data_root (workspace subvolumes and `snapshots`).
fn data_root_entries(env: &TestEnv) -> Vec<String> {
    let names = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    // The `gates` directory is the layout; a gate holding only `live` is a workspace (named by
    // its ws_id); anything else in a gate, or an empty gate, is named by its path.
    let mut v: Vec<String> = names(&env.mount)
        .into_iter()
        .filter(|n| n != "gates")
        .collect();
    for ws in names(&env.mount.join("gates")) {
        let inside = names(&env.mount.join("gates").join(&ws));
        if inside.is_empty() {
            v.push(format!("gates/{ws}"));
        }
        for n in inside {
            v.push(if n == "live" {
                ws.clone()
            } else {
                format!("gates/{ws}/{n}")
            });
        }
    }
    v.sort();
    v
}

/// Entries of `dir`'s parent whose names mark ws-ckpt temporaries.
fn leftovers_beside(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".ws-ckpt-"))
        .collect()
}

fn is_symlink_to_subvol(path: &Path, env: &TestEnv) -> bool {
    std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
        && std::fs::read_link(path).unwrap().starts_with(&env.mount)
}

#[test]
fn fresh_apply_bootstraps_inits_and_is_idempotent() {
    let Some(env) = TestEnv::new("fresh_apply") else {
        return;
    };
    // One workspace on another filesystem (the host fs under /var/tmp)…
    let other = env.home.join("other-fs");
    TestEnv::make_sample_tree(&other);
    let before_other = TestEnv::tree_digest(&other);
    // …and one on the same btrfs as a base backend would be: covered by
    // base_backend_init_on_same_btrfs_uses_reflinks below. Here a second plain workspace.
    let second = env.home.join("second");
    std::fs::create_dir_all(second.join("deep/er")).unwrap();
    std::fs::write(second.join("deep/er/f"), b"x").unwrap();
    let before_second = TestEnv::tree_digest(&second);
    env.write_config(&(ws_table(&other) + &ws_table(&second)));

    env.run(&["plan", "--detailed-exitcode"]).assert_code(2);
    let r = env.run(&["--format", "json", "apply"]).ok().json();
    assert_eq!(r["changed"], true);
    let names = action_names(&r);
    assert_eq!(
        names.iter().filter(|n| *n == "init-workspace").count(),
        2,
        "{names:?}"
    );
    assert!(names.contains(&"bootstrap-backend".to_string()));

    for (p, before) in [(&other, &before_other), (&second, &before_second)] {
        assert!(
            is_symlink_to_subvol(p, &env),
            "{} must be a symlink into the mount",
            p.display()
        );
        assert_eq!(
            &TestEnv::tree_digest(p),
            before,
            "content of {} changed",
            p.display()
        );
        assert!(leftovers_beside(p).is_empty());
    }
    assert!(env.image.exists());
    assert_eq!(mounts_under(&env.root), vec![env.mount.clone()]);

    let again = env.run(&["--format", "json", "apply"]).ok().json();
    assert_eq!(
        again["changed"], false,
        "second apply must change nothing: {again:#}"
    );
    assert!(again["actions"].as_array().unwrap().is_empty());
    env.run(&["plan", "--detailed-exitcode"]).assert_code(0);

    let st = status(&env);
    assert_eq!(st["health"], "healthy", "{st:#}");
    assert_eq!(st["backend"]["backend_type"], "BtrfsLoop");
    let state: Value =
        serde_json::from_slice(&std::fs::read(env.state_dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["version"], 1);
    assert_eq!(state["workspaces"].as_array().unwrap().len(), 2);
}

#[test]
fn base_backend_init_on_same_btrfs() {
    let Some(env) = TestEnv::new("base_same_fs") else {
        return;
    };
    let fs = env.extra_btrfs("base", 512);
    let proj = fs.join("projects/p1");
    TestEnv::make_sample_tree(&proj);
    let before = TestEnv::tree_digest(&proj);
    let cfg = env
        .base_config()
        .replace("type = \"btrfs-loop\"", "type = \"btrfs-base\"")
        + &format!(
            "\n[backend.btrfs-base]\nbtrfs_mount = {:?}\n\n",
            fs.display().to_string()
        )
        + &ws_table(&proj);
    std::fs::write(&env.config, cfg).unwrap();
    let r = env.run(&["--format", "json", "apply"]).ok().json();
    assert!(
        action_names(&r).contains(&"init-workspace".to_string()),
        "{r:#}"
    );
    assert_eq!(TestEnv::tree_digest(&proj), before);
    let target = std::fs::read_link(&proj).unwrap();
    assert!(
        target.starts_with(fs.join("ws-ckpt-data")),
        "{}",
        target.display()
    );
    let st = status(&env);
    assert_eq!(st["backend"]["backend_type"], "BtrfsBase");
    assert_eq!(st["backend"]["mount"], fs.display().to_string());
    assert_eq!(
        env.run(&["--format", "json", "apply"]).ok().json()["changed"],
        false
    );
    assert!(
        !env.image.exists(),
        "a base backend never creates a loop image"
    );
}

#[test]
fn unmount_and_detach_then_apply_reattaches() {
    let Some(env) = TestEnv::new("reattach") else {
        return;
    };
    let p = env.home.join("p");
    TestEnv::make_sample_tree(&p);
    env.write_config(&ws_table(&p));
    env.run(&["apply"]).ok();
    let before = TestEnv::tree_digest(&p);
    sh("umount", &[env.mount.to_str().unwrap()]);
    assert!(
        loops_under(&env.root).is_empty(),
        "autoclear must detach the loop device"
    );
    let st = env.run(&["--format", "json", "status", "--detailed-exitcode"]);
    assert_eq!(
        st.code(),
        Some(3),
        "degraded while unmounted: {}",
        st.describe()
    );
    assert_eq!(
        workspace(&st.json(), &p)["condition"],
        "storage-unavailable"
    );
    let r = env.run(&["--format", "json", "apply"]).ok().json();
    assert_eq!(action_names(&r), ["bootstrap-backend"]);
    assert_eq!(TestEnv::tree_digest(&p), before);
    assert_eq!(loops_under(&env.root).len(), 1);
    assert_eq!(
        env.run(&["--format", "json", "apply"]).ok().json()["changed"],
        false
    );
}

#[test]
fn broken_symlink_is_repaired() {
    let Some(env) = TestEnv::new("repair") else {
        return;
    };
    let p = env.home.join("p");
    TestEnv::make_sample_tree(&p);
    env.write_config(&ws_table(&p));
    env.run(&["apply"]).ok();
    let before = TestEnv::tree_digest(&p);
    let target = std::fs::read_link(&p).unwrap();
    // Deleted symlink.
    std::fs::remove_file(&p).unwrap();
    env.run(&["plan", "--detailed-exitcode"]).assert_code(2);
    let r = env.run(&["--format", "json", "apply"]).ok().json();
    assert_eq!(action_names(&r), ["repair-symlink"]);
    assert_eq!(std::fs::read_link(&p).unwrap(), target);
    // Dangling symlink to where this workspace's subvolume was (an old mount point, the
    // layout of an earlier version): re-pointed.
    let id = ws_id(&env, &p);
    std::fs::remove_file(&p).unwrap();
    std::os::unix::fs::symlink(env.root.join("old-mount").join(&id), &p).unwrap();
    env.run(&["apply"]).ok();
    assert_eq!(std::fs::read_link(&p).unwrap(), target);
    assert_eq!(TestEnv::tree_digest(&p), before);
    // A dangling symlink that names something else is the user's: reported, left alone.
    std::fs::remove_file(&p).unwrap();
    std::os::unix::fs::symlink(env.root.join("nowhere/ws"), &p).unwrap();
    let r = env.run(&["--format", "json", "apply"]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(finding_kinds(&r.json()).contains(&"path-occupied".to_string()));
    assert_eq!(std::fs::read_link(&p).unwrap(), env.root.join("nowhere/ws"));
    std::fs::remove_file(&p).unwrap();
    env.run(&["apply"]).ok();
    assert_eq!(std::fs::read_link(&p).unwrap(), target);
    // A real directory at the path is never overwritten: detached, reported.
    std::fs::remove_file(&p).unwrap();
    std::fs::create_dir(&p).unwrap();
    std::fs::write(p.join("mine"), b"user data").unwrap();
    let r = env.run(&["--format", "json", "apply"]);
    assert_eq!(r.code(), Some(1));
    assert!(finding_kinds(&r.json()).contains(&"path-occupied".to_string()));
    assert_eq!(std::fs::read(p.join("mine")).unwrap(), b"user data");
    assert_eq!(workspace(&status(&env), &p)["condition"], "detached");
}

#[test]
fn hand_deleted_snapshot_is_marked_missing_and_cleared_when_restored() {
    let Some(env) = TestEnv::new("missing_snap") else {
        return;
    };
    let p = env.home.join("p");
    TestEnv::make_sample_tree(&p);
    env.write_config(&ws_table(&p));
    env.run(&["apply"]).ok();
    let id = ws_id(&env, &p);
    let sub = env.ws_subvol(&id);
    let sdir = env.mount.join("snapshots").join(&id);
    std::fs::create_dir_all(&sdir).unwrap();
    for s in ["s1", "s2"] {
        btrfs(&[
            "subvolume",
            "snapshot",
            "-r",
            sub.to_str().unwrap(),
            sdir.join(s).to_str().unwrap(),
        ]);
    }
    // Snapshot subvolumes without index entries are adopted.
    let r = env.run(&["--format", "json", "apply"]).ok().json();
    assert_eq!(action_names(&r), ["adopt-snapshot"]);
    assert_eq!(workspace(&status(&env), &p)["snapshots"], 2);
    btrfs(&["subvolume", "delete", sdir.join("s1").to_str().unwrap()]);
    let r = env.run(&["--format", "json", "apply"]).ok().json();
    assert_eq!(action_names(&r), ["mark-missing"]);
    let st = env.run(&["--format", "json", "status", "--detailed-exitcode"]);
    assert_eq!(st.code(), Some(3));
    let w = workspace(&st.json(), &p).clone();
    assert_eq!(
        (w["missing"].clone(), w["condition"].clone()),
        (Value::from(1), Value::from("missing-snapshots"))
    );
    btrfs(&[
        "subvolume",
        "snapshot",
        "-r",
        sub.to_str().unwrap(),
        sdir.join("s1").to_str().unwrap(),
    ]);
    let r = env.run(&["--format", "json", "apply"]).ok().json();
    assert_eq!(action_names(&r), ["clear-missing"]);
    assert_eq!(workspace(&status(&env), &p)["missing"], 0);
}

#[test]
fn tampered_backend_is_a_conflict_and_creates_nothing() {
    let Some(env) = TestEnv::new("tampered") else {
        return;
    };
    let p = env.home.join("p");
    TestEnv::make_sample_tree(&p);
    env.write_config(&ws_table(&p));
    env.run(&["apply"]).ok();
    let state_path = env.state_dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).unwrap();
    std::fs::write(
        &state_path,
        text.replacen(
            "\"backend_type\": \"BtrfsLoop\"",
            "\"backend_type\": \"BtrfsBase\"",
            1,
        ),
    )
    .unwrap();
    let tampered = std::fs::read(&state_path).unwrap();
    // A new declaration must not be acted on while blocked.
    let q = env.home.join("q");
    std::fs::create_dir(&q).unwrap();
    std::fs::write(q.join("f"), b"q").unwrap();
    env.write_config(&(ws_table(&p) + &ws_table(&q)));
    let r = env.run(&["--format", "json", "apply"]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    let report = r.json();
    assert!(action_names(&report).is_empty());
    let f = &report["findings"][0];
    assert_eq!(f["kind"], "backend-conflict");
    let hint = f["hint"].as_str().unwrap();
    assert!(
        hint.contains(env.config.to_str().unwrap()) && hint.contains(state_path.to_str().unwrap()),
        "{hint}"
    );
    assert!(
        std::fs::symlink_metadata(&q).unwrap().is_dir(),
        "q must stay a plain directory"
    );
    assert_eq!(
        std::fs::read(&state_path).unwrap(),
        tampered,
        "state.json untouched"
    );
    env.run(&["plan", "--detailed-exitcode"]).assert_code(1);
    assert_eq!(env.run(&["status", "--detailed-exitcode"]).code(), Some(1));
}

#[test]
fn deleted_image_gives_per_workspace_storage_unavailable() {
    let Some(env) = TestEnv::new("image_gone") else {
        return;
    };
    let a = env.home.join("a");
    let b = env.home.join("b");
    TestEnv::make_sample_tree(&a);
    TestEnv::make_sample_tree(&b);
    env.write_config(&(ws_table(&a) + &ws_table(&b)));
    env.run(&["apply"]).ok();
    let id_a = ws_id(&env, &a);
    sh("umount", &[env.mount.to_str().unwrap()]);
    let moved = env.root.join("image.saved");
    std::fs::rename(&env.image, &moved).unwrap();
    let r = env.run(&["--format", "json", "apply"]);
    assert_eq!(r.code(), Some(1));
    let report = r.json();
    assert!(
        action_names(&report).is_empty(),
        "never a fresh image: {report:#}"
    );
    assert!(!env.image.exists());
    let msgs: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    let m = msgs
        .iter()
        .find(|m| m.contains(&id_a))
        .expect("a finding names ws a");
    assert!(
        m.contains(a.to_str().unwrap())
            && m.contains("0 snapshot(s)")
            && m.contains(env.image.to_str().unwrap()),
        "{m}"
    );
    let st = env.run(&["--format", "json", "status", "--detailed-exitcode"]);
    assert_eq!(st.code(), Some(3));
    assert_eq!(
        workspace(&st.json(), &b)["condition"],
        "storage-unavailable"
    );
    // Storage back → recovers by itself.
    std::fs::rename(&moved, &env.image).unwrap();
    env.run(&["apply"]).ok();
    assert_eq!(status(&env)["health"], "healthy");
}

#[test]
fn v0_layout_is_migrated_with_every_snapshot() {
    let Some(env) = TestEnv::new("v0") else {
        return;
    };
    // Build a ws-ckpt ≤ 0.2 layout by hand: image, workspace subvolume, snapshots, index.json
    // inside the btrfs snapshots directory, the user symlink; no state.json, no declaration.
    std::fs::create_dir_all(env.image.parent().unwrap()).unwrap();
    std::fs::write(&env.image, b"").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&env.image)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    sh("mkfs.btrfs", &["-q", env.image.to_str().unwrap()]);
    std::fs::create_dir_all(&env.mount).unwrap();
    sh(
        "mount",
        &[
            "-o",
            "loop",
            env.image.to_str().unwrap(),
            env.mount.to_str().unwrap(),
        ],
    );
    let user = env.home.join("legacy-proj");
    let id = "ws-0ld0ld";
    let sub = env.mount.join(id);
    btrfs(&["subvolume", "create", sub.to_str().unwrap()]);
    std::fs::write(sub.join("file"), b"v0 data").unwrap();
    let sdir = env.mount.join("snapshots").join(id);
    std::fs::create_dir_all(&sdir).unwrap();
    for s in ["first", "second", "third"] {
        btrfs(&[
            "subvolume",
            "snapshot",
            "-r",
            sub.to_str().unwrap(),
            sdir.join(s).to_str().unwrap(),
        ]);
    }
    let index = serde_json::json!({"workspace_path": user, "snapshots": {
        "first": {"message": "one", "metadata": null, "pinned": false, "created_at": "2025-01-01T00:00:00Z"},
        "second": {"message": null, "metadata": {"k": 1}, "pinned": true, "created_at": "2025-01-02T00:00:00Z"},
        "third": {"message": null, "metadata": null, "pinned": false, "created_at": "2025-01-03T00:00:00Z"}}});
    std::fs::write(
        sdir.join("index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
    std::os::unix::fs::symlink(&sub, &user).unwrap();
    sh("umount", &[env.mount.to_str().unwrap()]);
    assert!(!env.state_dir.join("state.json").exists());

    let r = env.run(&["--format", "json", "apply"]).ok().json();
    let names = action_names(&r);
    assert!(
        names.contains(&"migrate-v0-indexes".to_string()),
        "{names:?}"
    );
    let st = status(&env);
    let w = workspace(&st, &user);
    assert_eq!(w["ws_id"], id);
    assert_eq!(w["snapshots"], 3);
    assert_eq!(w["pinned"], 1);
    assert_eq!(
        w["declared"], true,
        "migrated workspaces are declared in config.d/40-migrated.toml"
    );
    let migrated = std::fs::read_to_string(env.dropin_dir.join("40-migrated.toml")).unwrap();
    assert!(
        migrated.contains(user.to_str().unwrap()) && migrated.contains('#'),
        "{migrated}"
    );
    let idx: Value = serde_json::from_slice(
        &std::fs::read(env.state_dir.join("indexes").join(id).join("index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(idx["snapshots"]["first"]["message"], "one");
    assert_eq!(idx["snapshots"]["second"]["metadata"]["k"], 1);
    assert_eq!(std::fs::read(user.join("file")).unwrap(), b"v0 data");
    assert_eq!(
        env.run(&["--format", "json", "apply"]).ok().json()["changed"],
        false
    );
    assert_eq!(st["health"], "healthy", "{st:#}");
}

#[test]
fn pre_fhs_image_is_moved_on_the_same_and_across_filesystems() {
    for across in [false, true] {
        let Some(env) = TestEnv::new(if across {
            "prefhs_across"
        } else {
            "prefhs_same"
        }) else {
            return;
        };
        let legacy: PathBuf = if across {
            // The legacy image on another filesystem than the new path.
            let other = env.extra_btrfs("legacyfs", 1536);
            let p = other.join("ws-ckpt/btrfs-data.img");
            let cfg = env.base_config().replace(
                &format!(
                    "legacy_image = {:?}",
                    env.legacy_image().display().to_string()
                ),
                &format!("legacy_image = {:?}", p.display().to_string()),
            );
            std::fs::write(&env.config, cfg).unwrap();
            p
        } else {
            env.write_config("");
            env.legacy_image()
        };
        std::fs::create_dir_all(legacy.parent().unwrap()).unwrap();
        std::fs::File::create(&legacy)
            .unwrap()
            .set_len(512 << 20)
            .unwrap();
        sh("mkfs.btrfs", &["-q", legacy.to_str().unwrap()]);
        // Put a file in it so we can tell it is the same filesystem afterwards.
        let tmpm = env.root.join("tmpm");
        std::fs::create_dir_all(&tmpm).unwrap();
        sh(
            "mount",
            &[
                "-o",
                "loop",
                legacy.to_str().unwrap(),
                tmpm.to_str().unwrap(),
            ],
        );
        std::fs::write(tmpm.join("marker"), b"old image").unwrap();
        sh("umount", &[tmpm.to_str().unwrap()]);

        let r = env.run(&["--format", "json", "apply"]).ok().json();
        assert_eq!(action_names(&r)[0], "migrate-image-path", "{r:#}");
        assert!(!legacy.exists(), "old image removed after the move");
        assert!(env.image.exists());
        assert_eq!(
            std::fs::read(env.mount.join("marker")).unwrap(),
            b"old image"
        );
        let siblings: Vec<String> = std::fs::read_dir(env.image.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("ws-ckpt-migrating"))
            .collect();
        assert!(siblings.is_empty(), "{siblings:?}");
        assert_eq!(
            env.run(&["--format", "json", "apply"]).ok().json()["changed"],
            false
        );
    }
}

#[test]
fn release_restores_identical_plain_directory_and_refuses_occupied_path() {
    let Some(env) = TestEnv::new("release") else {
        return;
    };
    let p = env.home.join("p");
    let q = env.home.join("q");
    TestEnv::make_sample_tree(&p);
    TestEnv::make_sample_tree(&q);
    let before = TestEnv::tree_digest(&p);
    env.write_config(&(ws_table(&p) + &ws_table(&q)));
    env.run(&["apply"]).ok();
    let id = ws_id(&env, &p);
    let r = env
        .run(&["--format", "json", "release", p.to_str().unwrap()])
        .ok()
        .json();
    assert_eq!(r["ws_id"], id.as_str());
    let meta = std::fs::symlink_metadata(&p).unwrap();
    assert!(meta.is_dir() && !meta.file_type().is_symlink());
    assert_eq!(TestEnv::tree_digest(&p), before);
    assert!(!env.ws_subvol(&id).exists() && !env.mount.join("snapshots").join(&id).exists());
    assert!(
        !env.mount.join("gates").join(&id).exists(),
        "its storage gate goes too"
    );
    assert!(leftovers_beside(&p).is_empty());
    // The release waited for the btrfs cleaner to drop what it deleted: nothing of it is left
    // as a deleted-but-not-dropped subvolume (a descriptor kept open on the workspace
    // subvolume would pin it until the wait times out).
    let deleted = run_tool(Command::new(find_tool("btrfs")).args([
        "subvolume",
        "list",
        "-d",
        env.mount.to_str().unwrap(),
    ]));
    assert!(
        String::from_utf8_lossy(&deleted.stdout).trim().is_empty(),
        "deleted subvolumes not yet dropped after the release:\n{}",
        String::from_utf8_lossy(&deleted.stdout)
    );
    assert!(std::fs::read_to_string(&env.config)
        .unwrap()
        .contains("state = \"absent\""));
    assert_eq!(
        env.run(&["--format", "json", "apply"]).ok().json()["changed"],
        false
    );
    // A real directory occupying the path: refuse, delete nothing.
    let qid = ws_id(&env, &q);
    std::fs::remove_file(&q).unwrap();
    std::fs::create_dir(&q).unwrap();
    std::fs::write(q.join("precious"), b"keep me").unwrap();
    let r = env.run(&["release", q.to_str().unwrap()]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(r.stderr.contains(q.to_str().unwrap()), "{}", r.stderr);
    assert_eq!(std::fs::read(q.join("precious")).unwrap(), b"keep me");
    assert!(env.ws_subvol(&qid).exists(), "workspace data kept");
}

/// kill -9 at every step of init, then apply: nothing lost, no leftovers.
#[test]
fn kill9_during_init_loses_nothing() {
    let Some(env) = TestEnv::new("kill_init") else {
        return;
    };
    env.write_config("");
    env.run(&["apply"]).ok();
    let points = [
        "init:after-begin",
        "init:after-subvol",
        "init:after-copy",
        "init:after-verify",
        "init:after-link",
        "init:after-exchange",
        "init:after-remove-original",
    ];
    let mut decls = String::new();
    for (i, point) in points.iter().enumerate() {
        let p = env.home.join(format!("w{i}"));
        TestEnv::make_sample_tree(&p);
        let before = TestEnv::tree_digest(&p);
        decls += &ws_table(&p);
        env.write_config(&decls);
        let r = env.run_env(&["apply"], &[("WS_CKPT_FAULT", point)]);
        assert_eq!(
            r.code(),
            None,
            "{point}: the process must have been killed: {}",
            r.describe()
        );
        let r = env.run(&["--format", "json", "apply"]);
        assert_eq!(r.code(), Some(0), "{point}: {}", r.describe());
        assert!(
            is_symlink_to_subvol(&p, &env),
            "{point}: {} not a workspace",
            p.display()
        );
        assert_eq!(TestEnv::tree_digest(&p), before, "{point}: data changed");
        assert!(
            leftovers_beside(&p).is_empty(),
            "{point}: {:?}",
            leftovers_beside(&p)
        );
        let entries = data_root_entries(&env);
        assert!(
            entries
                .iter()
                .all(|e| e == "snapshots" || e.starts_with("ws-")),
            "{point}: {entries:?}"
        );
        assert_eq!(
            entries.len(),
            i + 2,
            "{point}: exactly one subvolume per workspace: {entries:?}"
        );
        let again = env.run(&["--format", "json", "apply"]).ok().json();
        assert_eq!(again["changed"], false, "{point}: {again:#}");
        let st = status(&env);
        assert!(
            st["daemon"]["last_unclean_shutdown"].is_string(),
            "{point}: crash recorded"
        );
    }
}

/// kill -9 at every step of release, then apply: the data is either the workspace or the
/// plain directory, never lost, and the release completes.
#[test]
fn kill9_during_release_loses_nothing() {
    let Some(env) = TestEnv::new("kill_release") else {
        return;
    };
    let points = [
        "release:after-begin",
        "release:after-copy",
        "release:after-verify",
        "release:after-exchange",
    ];
    let paths: Vec<PathBuf> = (0..points.len())
        .map(|i| env.home.join(format!("r{i}")))
        .collect();
    let mut decls = String::new();
    for p in &paths {
        TestEnv::make_sample_tree(p);
        decls += &ws_table(p);
    }
    env.write_config(&decls);
    env.run(&["apply"]).ok();
    for (point, p) in points.iter().zip(&paths) {
        let before = TestEnv::tree_digest(p);
        let r = env.run_env(
            &["release", p.to_str().unwrap()],
            &[("WS_CKPT_FAULT", point)],
        );
        assert_eq!(r.code(), None, "{point}: {}", r.describe());
        assert_eq!(
            TestEnv::tree_digest(p),
            before,
            "{point}: data must be reachable at the path right after the crash"
        );
        env.run(&["apply"]).ok();
        let meta = std::fs::symlink_metadata(p).unwrap();
        assert!(
            meta.is_dir() && !meta.file_type().is_symlink(),
            "{point}: released to a plain dir"
        );
        assert_eq!(TestEnv::tree_digest(p), before, "{point}");
        assert!(
            leftovers_beside(p).is_empty(),
            "{point}: {:?}",
            leftovers_beside(p)
        );
    }
    assert_eq!(data_root_entries(&env), ["snapshots"]);
}

#[test]
fn corrupt_state_is_moved_aside_and_rebuilt_from_disk() {
    let Some(env) = TestEnv::new("corrupt_state") else {
        return;
    };
    let p = env.home.join("p");
    TestEnv::make_sample_tree(&p);
    env.write_config(&ws_table(&p));
    env.run(&["apply"]).ok();
    let id = ws_id(&env, &p);
    let state_path = env.state_dir.join("state.json");
    std::fs::write(&state_path, b"{ this is not json").unwrap();
    let r = env.run(&["--format", "json", "apply"]);
    assert_eq!(r.code(), Some(0), "{}", r.describe());
    let report = r.json();
    assert!(
        action_names(&report).contains(&"adopt-workspace".to_string()),
        "{report:#}"
    );
    let moved: Vec<String> = std::fs::read_dir(&env.state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.json.corrupt-"))
        .collect();
    assert_eq!(moved.len(), 1, "moved aside, never deleted");
    assert_eq!(
        std::fs::read(env.state_dir.join(&moved[0])).unwrap(),
        b"{ this is not json"
    );
    assert_eq!(ws_id(&env, &p), id);
}

#[test]
fn invalid_config_names_file_line_and_key() {
    let Some(env) = TestEnv::new("bad_config") else {
        return;
    };
    env.write_config("[retention]\nkeep = \"forever\"\n");
    let r = env.run(&["apply"]);
    assert_eq!(r.code(), Some(1));
    assert!(
        r.stderr.contains(env.config.to_str().unwrap()) && r.stderr.contains("keep"),
        "{}",
        r.stderr
    );
    assert!(
        !env.image.exists(),
        "a rejected config is never partially applied"
    );
    let r = env.run(&["config", "validate"]);
    assert_eq!(r.code(), Some(1));
}

#[test]
fn init_command_declares_converts_and_is_idempotent() {
    let Some(env) = TestEnv::new("init_cmd") else {
        return;
    };
    env.write_config("");
    let p = env.home.join("proj");
    TestEnv::make_sample_tree(&p);
    let before = TestEnv::tree_digest(&p);
    let r = env
        .run(&["--format", "json", "init", p.to_str().unwrap()])
        .ok()
        .json();
    let id = r["ws_id"].as_str().unwrap().to_string();
    assert_eq!(r["changed"], true);
    let dropin = env.dropin_dir.join(format!("50-{id}.toml"));
    let text = std::fs::read_to_string(&dropin).unwrap();
    assert!(
        text.contains(p.to_str().unwrap()) && text.starts_with('#'),
        "{text}"
    );
    assert_eq!(TestEnv::tree_digest(&p), before);
    let again = env
        .run(&["--format", "json", "init", p.to_str().unwrap()])
        .ok()
        .json();
    assert_eq!(
        (again["changed"].clone(), again["ws_id"].clone()),
        (Value::from(false), Value::from(id.as_str()))
    );
    assert_eq!(
        env.run(&["--format", "json", "apply"]).ok().json()["changed"],
        false
    );
    // Relative paths are resolved against the caller's directory.
    let q = env.home.join("rel");
    std::fs::create_dir(&q).unwrap();
    let out = env.run_command(
        {
            let mut c = env.command(&["init", "rel"]);
            c.current_dir(&env.home);
            c
        },
        std::time::Duration::from_secs(60),
    );
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(is_symlink_to_subvol(&q, &env));
}

#[test]
fn init_refuses_system_paths_nesting_and_withdraws_failed_declarations() {
    let Some(env) = TestEnv::new("init_guards") else {
        return;
    };
    env.write_config("");
    env.run(&["apply"]).ok();
    for bad in ["/etc", "/", "/usr/share"] {
        let r = env.run(&["init", bad]);
        assert_eq!(r.code(), Some(1), "{bad}: {}", r.describe());
        assert!(r.stderr.contains("system directory"), "{bad}: {}", r.stderr);
    }
    let inside = env.mount.join("x");
    let r = env.run(&["init", inside.to_str().unwrap()]);
    assert_eq!(r.code(), Some(1));
    let outer = env.home.join("outer");
    std::fs::create_dir_all(outer.join("inner")).unwrap();
    env.run(&["init", outer.join("inner").to_str().unwrap()])
        .ok();
    let r = env.run(&["init", outer.to_str().unwrap()]);
    assert_eq!(
        r.code(),
        Some(1),
        "a directory containing a workspace: {}",
        r.describe()
    );
    assert!(r.stderr.contains("contains the workspace"), "{}", r.stderr);
    // A copy that cannot succeed (a mount point inside the directory) leaves the directory
    // untouched and no declaration behind.
    let m = env.home.join("with-mount");
    std::fs::create_dir_all(m.join("mnt")).unwrap();
    std::fs::write(m.join("keep"), b"data").unwrap();
    sh(
        "mount",
        &["-t", "tmpfs", "tmpfs", m.join("mnt").to_str().unwrap()],
    );
    let r = env.run(&["init", m.to_str().unwrap()]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(std::fs::symlink_metadata(&m).unwrap().is_dir());
    assert_eq!(std::fs::read(m.join("keep")).unwrap(), b"data");
    let declared: String = std::fs::read_dir(&env.dropin_dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        !declared.contains(m.to_str().unwrap()),
        "declaration withdrawn: {declared}"
    );
    assert_eq!(
        env.run(&["--format", "json", "apply"]).ok().json()["changed"],
        false
    );
    sh("umount", &[m.join("mnt").to_str().unwrap()]);
}

#[test]
fn image_grows_online_when_img_size_rises_and_never_shrinks() {
    let Some(env) = TestEnv::new("grow") else {
        return;
    };
    let p = env.home.join("p");
    TestEnv::make_sample_tree(&p);
    env.write_config(&ws_table(&p));
    env.run(&["apply"]).ok();
    let before = TestEnv::tree_digest(&p);
    let size = |env: &TestEnv| std::fs::metadata(&env.image).unwrap().len();
    let fs_total = |env: &TestEnv| {
        status(env)["backend"]["usage"]["total_bytes"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(size(&env), 1 << 30);
    let total_before = fs_total(&env);
    let bigger = env.base_config().replace("img_size = 1", "img_size = 2") + "\n" + &ws_table(&p);
    std::fs::write(&env.config, &bigger).unwrap();
    env.run(&["plan", "--detailed-exitcode"]).assert_code(2);
    let r = env.run(&["--format", "json", "apply"]).ok().json();
    assert_eq!(action_names(&r), ["grow-image"]);
    assert_eq!(size(&env), 2 << 30);
    assert!(
        fs_total(&env) > total_before + (900 << 20),
        "filesystem grew online"
    );
    assert_eq!(TestEnv::tree_digest(&p), before);
    assert_eq!(
        env.run(&["--format", "json", "apply"]).ok().json()["changed"],
        false
    );
    // Back to 1 GiB: refused with a finding, the image keeps its size.
    std::fs::write(&env.config, env.base_config() + "\n" + &ws_table(&p)).unwrap();
    let r = env.run(&["--format", "json", "apply"]).ok().json();
    assert!(action_names(&r).is_empty());
    assert!(
        finding_kinds(&r).contains(&"image-shrink-refused".to_string()),
        "{r:#}"
    );
    assert_eq!(size(&env), 2 << 30);
}

#[test]
fn nested_subvolume_inside_a_workspace_is_reported() {
    let Some(env) = TestEnv::new("nested") else {
        return;
    };
    let p = env.home.join("p");
    TestEnv::make_sample_tree(&p);
    env.write_config(&ws_table(&p));
    env.run(&["apply"]).ok();
    std::fs::create_dir_all(p.join("deep/er")).unwrap();
    btrfs(&[
        "subvolume",
        "create",
        p.join("deep/er/inner").to_str().unwrap(),
    ]);
    btrfs(&["subvolume", "create", p.join("top").to_str().unwrap()]);
    let r = env.run(&["--format", "json", "apply"]).ok().json();
    let f: Vec<&Value> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "nested-subvolume")
        .collect();
    assert_eq!(f.len(), 1, "{r:#}");
    let msg = f[0]["message"].as_str().unwrap();
    assert!(
        msg.contains("deep/er/inner") && msg.contains("top"),
        "{msg}"
    );
    assert_eq!(
        env.run(&["status", "--detailed-exitcode"]).code(),
        Some(3),
        "degraded while nested subvolumes exist"
    );
    btrfs(&[
        "subvolume",
        "delete",
        p.join("deep/er/inner").to_str().unwrap(),
    ]);
    btrfs(&["subvolume", "delete", p.join("top").to_str().unwrap()]);
    assert!(finding_kinds(&env.run(&["--format", "json", "apply"]).ok().json()).is_empty());
}

/// A write that lands in the original directory between the copy's verification and the
/// swap is never lost: the original is kept and reported instead of deleted.
#[test]
fn late_write_into_the_original_keeps_both_copies() {
    let Some(env) = TestEnv::new("late_write") else {
        return;
    };
    env.write_config("");
    env.run(&["apply"]).ok();
    let p = env.home.join("busy");
    TestEnv::make_sample_tree(&p);
    env.write_config(&ws_table(&p));
    let r = env.run_env(&["apply"], &[("WS_CKPT_FAULT", "init:after-exchange")]);
    assert_eq!(r.code(), None, "{}", r.describe());
    let originals = leftovers_beside(&p);
    assert_eq!(originals.len(), 1, "{originals:?}");
    let original = p.parent().unwrap().join(&originals[0]);
    std::fs::write(
        original.join("late.txt"),
        b"written by a program during init",
    )
    .unwrap();
    let r = env.run(&["--format", "json", "apply"]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    let report = r.json();
    let failed = report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["result"] == "failed")
        .expect("a failed action");
    let msg = failed["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(original.to_str().unwrap()) && msg.contains("changed"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(original.join("late.txt")).unwrap(),
        b"written by a program during init"
    );
    assert!(is_symlink_to_subvol(&p, &env), "the workspace exists");
    assert_eq!(
        env.run(&["--format", "json", "apply"]).ok().json()["changed"],
        false,
        "no retry loop"
    );
}

/// A write into the workspace between release's verification and its swap undoes the
/// release instead of deleting the workspace (and the write with it).
#[test]
fn late_write_into_the_workspace_undoes_the_release() {
    let Some(env) = TestEnv::new("late_write_release") else {
        return;
    };
    let p = env.home.join("rel");
    TestEnv::make_sample_tree(&p);
    env.write_config(&ws_table(&p));
    env.run(&["apply"]).ok();
    let id = ws_id(&env, &p);
    let r = env.run_env(
        &["release", p.to_str().unwrap()],
        &[("WS_CKPT_FAULT", "release:after-exchange")],
    );
    assert_eq!(r.code(), None, "{}", r.describe());
    // The path is already the plain copy; a program writes into the workspace itself.
    let subvol = env.ws_subvol(&id);
    std::fs::write(subvol.join("late.txt"), b"late").unwrap();
    let r = env.run(&["--format", "json", "apply"]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(is_symlink_to_subvol(&p, &env), "the release was undone");
    assert_eq!(std::fs::read(p.join("late.txt")).unwrap(), b"late");
    assert!(
        leftovers_beside(&p).is_empty(),
        "{:?}",
        leftovers_beside(&p)
    );
    // With the writer gone, the declarative retry completes the release.
    let r = env.run(&["--format", "json", "apply"]).ok().json();
    assert!(
        action_names(&r).contains(&"release-workspace".to_string()),
        "{r:#}"
    );
    let meta = std::fs::symlink_metadata(&p).unwrap();
    assert!(meta.is_dir() && !meta.file_type().is_symlink());
    assert_eq!(std::fs::read(p.join("late.txt")).unwrap(), b"late");
}

/// The daemon reuses its host observation between requests (issue 9) only while the mount
/// table is unchanged: a mount or an unmount anywhere makes the next request observe anew.
#[test]
fn the_reused_host_observation_follows_every_mount_change() {
    use std::cell::Cell;
    use std::sync::Arc;
    use ws_ckpt::host_cache::HostCache;
    let Some(env) = TestEnv::new("host-cache-mounts") else {
        return;
    };
    let config = Arc::new(ws_ckpt::config::Config::defaults(&env.config));
    let cache = HostCache::new(std::time::Duration::from_secs(3600));
    cache.set_enabled(true);
    let observed = Cell::new(0);
    let get = || {
        cache.get(&config, || {
            observed.set(observed.get() + 1);
            ws_ckpt::model::Observed::default()
        });
        observed.get()
    };
    assert_eq!(get(), 1);
    assert_eq!(get(), 1, "reused while nothing changed");
    let dir = env.root.join("probe");
    std::fs::create_dir_all(&dir).unwrap();
    sh(
        "mount",
        &["-t", "tmpfs", "none", &dir.display().to_string()],
    );
    let after_mount = get();
    sh("umount", &[&dir.display().to_string()]);
    assert_eq!(after_mount, 2, "a mount is seen by the next request");
    assert_eq!(get(), 3, "an unmount is seen by the next request");
    assert_eq!(get(), 3);
}
