//! Self-test of the integration-test harness: environment setup and teardown on real loop
//! devices and btrfs (root only), process handling, config paths and tree digests.
//!
//! It must not depend on the behaviour of the `ws-ckpt` binary: only on whether it exists.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use ws_ckpt_integration_tests::{
    bin_path, find_tool, loops_under, mounts_under, require_root, TestEnv, ROOT_PREFIX,
};

/// The mount at `path` in /proc/self/mountinfo has filesystem type `fstype`.
fn mounted_as(path: &Path, fstype: &str) -> bool {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    text.lines().any(|line| {
        let (left, right) = line.split_once(" - ").unwrap_or((line, ""));
        left.split(' ').nth(4) == Some(path.to_str().expect("utf-8 path"))
            && right.split(' ').next() == Some(fstype)
    })
}

fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn assert_gone(root: &Path) {
    assert!(
        mounts_under(root).is_empty(),
        "mounts left: {:?}",
        mounts_under(root)
    );
    assert!(
        loops_under(root).is_empty(),
        "loops left: {:?}",
        loops_under(root)
    );
    assert!(!root.exists(), "{} was not removed", root.display());
}

#[test]
fn bin_path_resolves_or_explains() {
    match catch_unwind(bin_path) {
        Ok(path) => {
            assert!(path.is_file(), "{}", path.display());
            assert_eq!(path.file_name().and_then(|n| n.to_str()), Some("ws-ckpt"));
        }
        Err(e) => {
            let msg = panic_message(&*e);
            assert!(
                msg.contains("ws-ckpt binary not found at")
                    && msg.contains("cargo build --workspace"),
                "unhelpful message: {msg}"
            );
        }
    }
}

#[test]
fn layout_and_config_stay_under_root() {
    let Some(env) = TestEnv::new("layout_and_config_stay_under_root") else {
        return;
    };
    let root = env.root.clone();
    let name = root
        .file_name()
        .and_then(|n| n.to_str())
        .expect("root name");
    assert!(name.starts_with(ROOT_PREFIX), "{name}");
    assert!(root.is_absolute());
    for dir in [&env.dropin_dir, &env.state_dir, &env.runtime_dir, &env.home] {
        assert!(dir.is_dir(), "{} missing", dir.display());
        assert!(dir.starts_with(&root));
    }
    assert!(
        !env.image.exists(),
        "the harness must not pre-create the image"
    );
    assert!(env.mount.starts_with(&root) && env.image.starts_with(&root));

    let text = fs::read_to_string(&env.config).expect("config written by new()");
    assert_eq!(text, env.base_config());
    for path in [&env.state_dir, &env.runtime_dir, &env.image, &env.mount] {
        assert!(
            text.contains(&format!("\"{}\"", path.display())),
            "{} not in\n{text}",
            path.display()
        );
    }
    // Every quoted absolute path in the config is under root.
    for line in text.lines() {
        if let Some((_, value)) = line.split_once(" = \"/") {
            let p = PathBuf::from(format!("/{}", value.trim_end_matches('"')));
            assert!(p.starts_with(&root), "{line} escapes {}", root.display());
        }
    }
    assert!(text.contains("type = \"btrfs-loop\""));
    assert!(text.contains("img_size = 1\n") && text.contains("img_max_percent = 100\n"));

    env.write_config("[retention]\nkeep = 3");
    let text = fs::read_to_string(&env.config).expect("config");
    assert!(text.starts_with(&env.base_config()));
    assert!(text.ends_with("[retention]\nkeep = 3\n"));

    drop(env);
    assert_gone(&root);
}

#[test]
fn extra_btrfs_and_everything_under_it_is_torn_down() {
    let Some(env) = TestEnv::new("extra_btrfs_torn_down") else {
        return;
    };
    let root = env.root.clone();
    let mnt = env.extra_btrfs("data", 256);
    assert_eq!(mnt, root.join("extra/data"));
    assert!(
        mounted_as(&mnt, "btrfs"),
        "{} not a btrfs mount",
        mnt.display()
    );
    assert!(mounts_under(&root).contains(&mnt));
    let loops = loops_under(&root);
    assert_eq!(loops.len(), 1, "{loops:?}");

    // Content, a read-only snapshot and a nested bind mount, plus a process sitting inside.
    TestEnv::make_sample_tree(&mnt.join("ws"));
    let btrfs = find_tool("btrfs");
    let out = Command::new(&btrfs)
        .args(["subvolume", "create"])
        .arg(mnt.join("sub"))
        .output()
        .expect("btrfs");
    assert!(out.status.success(), "{out:?}");
    let out = Command::new(&btrfs)
        .args(["subvolume", "snapshot", "-r"])
        .arg(mnt.join("sub"))
        .arg(mnt.join("snap-ro"))
        .output()
        .expect("btrfs");
    assert!(out.status.success(), "{out:?}");
    let nested = mnt.join("nested");
    fs::create_dir(&nested).expect("mkdir");
    nix::mount::mount(
        Some(&env.home),
        &nested,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind mount");
    assert_eq!(mounts_under(&root).first(), Some(&nested), "deepest first");
    let mut sleeper = Command::new("sleep");
    sleeper.arg("1000").current_dir(&nested);
    let sleeper = env.spawn_command(sleeper);
    let pid = sleeper.pid();
    std::mem::forget(sleeper); // only the env's Drop may clean it up now
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    drop(env);
    assert_gone(&root);
    assert!(!mounted_as(&mnt, "btrfs"));
    for dev in &loops {
        let name = dev.file_name().and_then(|n| n.to_str()).expect("loop name");
        let backing =
            fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).unwrap_or_default();
        assert!(
            !backing.starts_with(root.to_str().expect("utf-8")),
            "{name} still backed by {backing}"
        );
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        !stat.contains("(sleep)"),
        "spawned child {pid} survived: {stat}"
    );
}

#[test]
fn drop_never_touches_anything_outside_its_own_root() {
    let Some(keeper) = TestEnv::new("outside_keeper") else {
        return;
    };
    let keep_mnt = keeper.extra_btrfs("keep", 200);
    fs::write(keep_mnt.join("file"), b"survives").expect("write");

    let Some(mut intruder) = TestEnv::new("outside_intruder") else {
        return;
    };
    let intruder_root = intruder.root.clone();
    // Public fields are only data: pointing them elsewhere must not redirect cleanup.
    intruder.root = keeper.root.clone();
    intruder.mount = keep_mnt.clone();
    intruder.state_dir = keeper.root.clone();
    drop(intruder);

    assert_gone(&intruder_root);
    assert!(
        mounted_as(&keep_mnt, "btrfs"),
        "another env's mount was touched"
    );
    assert_eq!(loops_under(&keeper.root).len(), 1);
    assert_eq!(fs::read(keep_mnt.join("file")).expect("read"), b"survives");

    let keeper_root = keeper.root.clone();
    drop(keeper);
    assert_gone(&keeper_root);
}

#[test]
fn cleanup_runs_when_the_test_panics() {
    if !require_root("cleanup_runs_when_the_test_panics") {
        return;
    }
    let seen: Mutex<Option<PathBuf>> = Mutex::new(None);
    let result = catch_unwind(AssertUnwindSafe(|| {
        let env = TestEnv::new("panicking").expect("root");
        let mnt = env.extra_btrfs("p", 200);
        *seen.lock().expect("lock") = Some(env.root.clone());
        fs::write(mnt.join("f"), b"x").expect("write");
        panic!("deliberate failure inside a test");
    }));
    assert!(result.is_err());
    let root = seen.lock().expect("lock").clone().expect("env was created");
    assert_gone(&root);
}

#[test]
fn run_command_captures_output_and_enforces_timeout() {
    let Some(env) = TestEnv::new("run_command") else {
        return;
    };
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
    let run = env.run_command(cmd, Duration::from_secs(30));
    assert_eq!(run.code(), Some(3));
    assert_eq!(run.stdout, "out\n");
    assert_eq!(run.stderr, "err\n");
    run.assert_code(3);
    assert!(catch_unwind(AssertUnwindSafe(|| {
        run.ok();
    }))
    .is_err());

    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo '{\"ok\": true}'"]);
    assert_eq!(
        env.run_command(cmd, Duration::from_secs(30)).ok().json()["ok"],
        true
    );

    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo started; exec sleep 30"]);
    let started = std::time::Instant::now();
    let err = catch_unwind(AssertUnwindSafe(|| {
        env.run_command(cmd, Duration::from_millis(500))
    }))
    .expect_err("must time out");
    assert!(started.elapsed() < Duration::from_secs(10));
    let msg = panic_message(&*err);
    assert!(
        msg.contains("timed out") && msg.contains("started"),
        "{msg}"
    );

    // Output files are kept under root/logs.
    let logs: Vec<_> = fs::read_dir(env.logs_dir()).expect("logs").collect();
    assert!(logs.len() >= 6, "{logs:?}");
}

#[test]
fn spawned_processes_can_be_signalled_and_waited() {
    let Some(env) = TestEnv::new("spawned") else {
        return;
    };
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo hello; exec sleep 1000"]);
    let a = env.spawn_command(cmd);
    assert!(a.wait_timeout(Duration::from_millis(100)).is_none());
    assert!(ws_ckpt_integration_tests::wait_until(
        Duration::from_secs(5),
        || a.stdout() == "hello\n"
    ));
    let status = a.kill9();
    assert_eq!(status.signal(), Some(9));
    assert!(!a.term(), "no signal may go to a reaped pid");

    let mut cmd = Command::new("sleep");
    cmd.arg("1000");
    let b = env.spawn_command(cmd);
    assert!(b.term());
    let status = b
        .wait_timeout(Duration::from_secs(5))
        .expect("exits on SIGTERM");
    assert_eq!(status.signal(), Some(15));

    let mut cmd = Command::new("sleep");
    cmd.arg("1000");
    let c = env.spawn_command(cmd);
    let pid = c.pid();
    drop(c);
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        !stat.contains("(sleep)"),
        "dropped handle left {pid} running: {stat}"
    );
}

#[test]
fn tree_digest_on_btrfs_matches_snapshot_and_detects_changes() {
    let Some(env) = TestEnv::new("tree_digest_btrfs") else {
        return;
    };
    let mnt = env.extra_btrfs("td", 200);
    let btrfs = find_tool("btrfs");
    let ws = mnt.join("ws");
    assert!(Command::new(&btrfs)
        .args(["subvolume", "create"])
        .arg(&ws)
        .status()
        .expect("btrfs")
        .success());
    TestEnv::make_sample_tree(&ws);
    let before = TestEnv::tree_digest(&ws);
    assert!(before.len() >= 10, "{before:?}");
    let snap = mnt.join("snap");
    assert!(Command::new(&btrfs)
        .args(["subvolume", "snapshot", "-r"])
        .arg(&ws)
        .arg(&snap)
        .status()
        .expect("btrfs")
        .success());
    assert_eq!(TestEnv::tree_digest(&snap), before);

    fs::write(ws.join("src/deep/nested/dir/leaf.txt"), b"LEAF\n").expect("write");
    let after = TestEnv::tree_digest(&ws);
    assert_ne!(after, before);
    let changed: Vec<_> = before.keys().filter(|k| before[*k] != after[*k]).collect();
    assert_eq!(changed, [Path::new("src/deep/nested/dir/leaf.txt")]);
}
