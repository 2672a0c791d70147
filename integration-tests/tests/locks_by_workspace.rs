//! Locks by workspace (issue 9 item 1, SPEC §7.1): while one workspace's long step is held
//! open with the fault hook (`WS_CKPT_FAULT_HOLD`: the daemon waits at a named point while a
//! file of that name exists), another workspace's checkpoint and list complete. Covered: an
//! init's copy, a cleanup waiting for the btrfs cleaner, a release's copy, and a reconcile
//! pass (`apply`) initializing a declared workspace. Real btrfs, the real daemon; root only.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use ws_ckpt_integration_tests::{wait_until, Spawned, TestEnv};

/// First start creates and formats the image: allow for a slow machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the other workspace's command may take while the step is held: generous (it
/// takes milliseconds when nothing blocks it), far below the hold (which lasts until the
/// test releases it).
const BOUND: Duration = Duration::from_secs(20);

/// A daemon started with a hold directory, and that directory.
struct Held {
    env: TestEnv,
    daemon: Spawned,
    holds: PathBuf,
}

impl Held {
    fn start(test: &str) -> Option<Held> {
        let env = TestEnv::new(test)?;
        let holds = env.root.join("holds");
        fs::create_dir_all(&holds).unwrap();
        let daemon = env.spawn(
            &["daemon"],
            &[
                ("WS_CKPT_LOG", "info"),
                ("WS_CKPT_FAULT_HOLD", holds.to_str().unwrap()),
            ],
        );
        let sock = env.socket_path();
        let up = wait_until(START_TIMEOUT, || {
            if let Some(st) = daemon.try_wait() {
                panic!("daemon exited early with {st}\n{}", daemon.stderr());
            }
            UnixStream::connect(&sock).is_ok()
        });
        assert!(up, "daemon did not open its socket\n{}", daemon.stderr());
        Some(Held { env, daemon, holds })
    }

    /// A plain directory with a sample tree under the test's home.
    fn plain_dir(&self, name: &str) -> PathBuf {
        let d = self.env.home.join(name);
        TestEnv::make_sample_tree(&d);
        d
    }

    fn cli(&self, args: &[&str]) -> ws_ckpt_integration_tests::Run {
        self.env.run_command(self.env.command(args), BOUND)
    }

    /// From now on, the daemon stops at `point` until [`Held::release`].
    fn hold(&self, point: &str) {
        fs::write(self.holds.join(point), b"held by the test\n").unwrap();
    }

    /// Wait until the daemon is held at `point` (it wrote `<point>.reached`).
    fn wait_reached(&self, point: &str, other: &Spawned) {
        let reached = self.holds.join(format!("{point}.reached"));
        let ok = wait_until(Duration::from_secs(120), || {
            reached.exists() || other.try_wait().is_some()
        });
        assert!(
            ok && reached.exists(),
            "the daemon never reached {point} (the held command: {:?})\n{}\n--- daemon ---\n{}",
            other.try_wait(),
            other.stderr(),
            self.daemon.stderr()
        );
    }

    fn release(&self, point: &str) {
        let _ = fs::remove_file(self.holds.join(point));
    }

    /// While `held` is stopped at `point`, checkpoint and list workspace `other` (a path):
    /// both must complete within [`BOUND`] and the held command must still be running.
    fn other_workspace_proceeds(&self, point: &str, held: &Spawned, other: &Path) {
        let o = other.to_str().unwrap();
        let t = Instant::now();
        let ck = self.cli(&[
            "checkpoint",
            "-w",
            o,
            "-s",
            &format!("during-{}", slug(point)),
        ]);
        let took = t.elapsed();
        ck.ok();
        let list = self.cli(&["--format", "json", "list", "-w", o]);
        list.ok();
        assert!(
            list.stdout.contains(&format!("during-{}", slug(point))),
            "{}",
            list.describe()
        );
        assert!(
            held.try_wait().is_none(),
            "the held command ended before the other workspace's checkpoint returned ({took:?}): cannot judge\n{}",
            held.stderr()
        );
        assert!(
            self.holds.join(point).exists(),
            "the hold at {point} was released behind the test's back"
        );
        eprintln!("checkpoint of the other workspace during {point}: {took:?}");
    }

    fn finish(&self, point: &str, held: &Spawned) {
        self.release(point);
        let st = held
            .wait_timeout(Duration::from_secs(120))
            .unwrap_or_else(|| panic!("the held command did not finish after the release"));
        assert!(
            st.success(),
            "the held command failed after the release: {st}\n{}",
            held.stderr()
        );
    }

    fn stop(self) {
        assert!(self.daemon.term(), "daemon already gone");
        let st = self
            .daemon
            .wait_timeout(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("daemon did not stop\n{}", self.daemon.stderr()));
        assert!(st.success(), "daemon stop: {st}\n{}", self.daemon.stderr());
    }
}

fn slug(point: &str) -> String {
    point.replace(':', "-")
}

#[test]
fn a_checkpoint_of_b_completes_while_the_init_copy_of_a_is_held() {
    let Some(h) = Held::start("locks-init") else {
        return;
    };
    let b = h.plain_dir("b");
    h.cli(&["init", b.to_str().unwrap()]).ok();
    let a = h.plain_dir("a");
    let point = "init:after-copy";
    h.hold(point);
    let init = h.env.spawn(&["init", a.to_str().unwrap()], &[]);
    h.wait_reached(point, &init);
    h.other_workspace_proceeds(point, &init, &b);
    h.finish(point, &init);
    assert!(
        a.is_symlink(),
        "{} is not a workspace after init",
        a.display()
    );
    h.stop();
}

#[test]
fn a_checkpoint_of_b_completes_while_a_cleanup_of_a_waits_for_the_cleaner() {
    let Some(h) = Held::start("locks-cleanup") else {
        return;
    };
    let (a, b) = (h.plain_dir("a"), h.plain_dir("b"));
    let a_str = a.to_str().unwrap();
    for id in ["c1", "c2", "c3"] {
        h.cli(&["checkpoint", "-w", a_str, "-s", id]).ok();
    }
    h.cli(&["init", b.to_str().unwrap()]).ok();
    let point = "delete:before-cleaner-wait";
    h.hold(point);
    let cleanup = h.env.spawn(&["cleanup", "-w", a_str, "--keep", "1"], &[]);
    h.wait_reached(point, &cleanup);
    h.other_workspace_proceeds(point, &cleanup, &b);
    h.finish(point, &cleanup);
    let list = h.cli(&["--format", "json", "list", "-w", a_str]);
    list.ok();
    assert!(
        !list.stdout.contains("\"c1\"") && list.stdout.contains("\"c3\""),
        "{}",
        list.describe()
    );
    h.stop();
}

#[test]
fn a_checkpoint_of_b_completes_while_the_release_copy_of_a_is_held() {
    let Some(h) = Held::start("locks-release") else {
        return;
    };
    let (a, b) = (h.plain_dir("a"), h.plain_dir("b"));
    h.cli(&["init", a.to_str().unwrap()]).ok();
    h.cli(&["init", b.to_str().unwrap()]).ok();
    let point = "release:after-copy";
    h.hold(point);
    let release = h.env.spawn(&["release", a.to_str().unwrap()], &[]);
    h.wait_reached(point, &release);
    h.other_workspace_proceeds(point, &release, &b);
    h.finish(point, &release);
    assert!(
        a.is_dir() && !a.is_symlink(),
        "{} is not a plain directory after release",
        a.display()
    );
    h.stop();
}

#[test]
fn a_reconcile_pass_takes_workspaces_one_at_a_time() {
    let Some(h) = Held::start("locks-pass") else {
        return;
    };
    let b = h.plain_dir("b");
    h.cli(&["init", b.to_str().unwrap()]).ok();
    // A declared workspace: the pass started by `reload` (or by the daemon's own watch of
    // config.d, whichever comes first) initializes it and holds there.
    let a = h.plain_dir("declared");
    let point = "init:after-copy";
    h.hold(point);
    fs::write(
        h.env.dropin_dir.join("60-declared.toml"),
        format!("[[workspace]]\npath = \"{}\"\n", a.display()),
    )
    .unwrap();
    let apply = h.env.spawn(&["reload"], &[]);
    h.wait_reached(point, &apply);
    h.other_workspace_proceeds(point, &apply, &b);
    h.finish(point, &apply);
    assert!(
        a.is_symlink(),
        "the pass did not initialize {}",
        a.display()
    );
    h.stop();
}
