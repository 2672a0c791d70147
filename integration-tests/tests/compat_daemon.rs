//! Upstream drop-in (issue 11, `docs/compat.md` § daemon): `ws-ckpt daemon --mount-path M
//! --socket S [--log-level L]` as upstream's e2e.sh starts it (M a btrfs the test mounted
//! first, used as it is), `WS_CKPT_SOCKET` honoured by every client command, and — when it is
//! set and nothing answers — a failure naming "daemon is not running", never in-process work.

use std::fs;
use std::path::Path;

use ws_ckpt_integration_tests::compat_support::{
    expect, hermes_error_class, openclaw_error_class, ws_id_for, Compat, CompatUser,
};
use ws_ckpt_integration_tests::mounts_under;

#[test]
fn upstream_daemon_form_serves_and_uses_the_mounted_btrfs_as_it_is() {
    let Some(c) = Compat::upstream("compat-d-form") else {
        return;
    };
    let m = c.upstream_mount.clone().expect("upstream form");
    let r = c.cli(&["status"]);
    expect(
        r.code() == Some(0),
        "WS_CKPT_SOCKET=S ws-ckpt status (e2e `status`)",
        "exit 0",
        &r,
    );
    let p = c.plain_dir("workspace");
    let r = c.cli(&["init", "-w", &p]);
    let target = fs::canonicalize(&p).unwrap_or_default();
    expect(
        r.code() == Some(0) && target.starts_with(&m),
        "init -w PATH on the daemon started with --mount-path M",
        &format!(
            "exit 0 and PATH resolving into M = {}; it resolves to {}",
            m.display(),
            target.display()
        ),
        &r,
    );
    let r = c.cli(&[
        "checkpoint",
        "-w",
        &p,
        "-i",
        "snap1",
        "-m",
        "first snapshot",
    ]);
    let ws_id = ws_id_for(&p);
    let snap = m.join("snapshots").join(&ws_id).join("snap1");
    expect(
        r.code() == Some(0) && m.join(&ws_id).is_dir() && snap.is_dir(),
        "checkpoint on the --mount-path daemon",
        &format!(
            "exit 0 with upstream's loop layout on M: {}/<ws_id> and {}",
            m.display(),
            snap.display()
        ),
        &r,
    );
    expect(
        !c.env.image.exists() && mounts_under(&c.env.mount).is_empty(),
        "the --mount-path daemon and the configured loop image",
        &format!(
            "the btrfs already mounted at M used as it is: no image created at {} and nothing mounted at {}",
            c.env.image.display(),
            c.env.mount.display()
        ),
        &r,
    );
    expect(
        c.env.state_dir.join("state.json").is_file(),
        "the --mount-path daemon's state directory",
        &format!(
            "state.json written to the configured state_dir {} (WS_CKPT_CONFIG), not /var/lib/ws-ckpt",
            c.env.state_dir.display()
        ),
        &r,
    );
}

#[test]
fn upstream_daemon_leaves_a_mount_it_did_not_make() {
    let Some(c) = Compat::upstream("compat-d-leave") else {
        return;
    };
    let m = c.upstream_mount.clone().expect("upstream form");
    let p = c.workspace("kept");
    c.checkpoint(&p, "k1");
    let st = c.stop_daemon();
    let still = mounts_under(&m).iter().any(|x| x == &m);
    expect(
        st.success() && still && fs::read_to_string(format!("{p}/README.txt")).is_ok(),
        "SIGTERM to the --mount-path daemon",
        &format!(
            "a clean exit; M ({}) still mounted (the test mounted it) and the workspace readable",
            m.display()
        ),
        &ws_ckpt_integration_tests::Run {
            cmd: "daemon --mount-path M --socket S".into(),
            status: st.code(),
            stdout: String::new(),
            stderr: c.daemon.as_ref().map(|d| d.stderr()).unwrap_or_default(),
        },
    );
}

#[test]
fn ws_ckpt_socket_reaches_the_daemon_for_every_command() {
    let Some(c) = Compat::upstream("compat-d-socket") else {
        return;
    };
    let m = c.upstream_mount.clone().expect("upstream form");
    let p = c.plain_dir("every");
    let steps: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["init", "-w", &p],
        vec![
            "checkpoint",
            "-w",
            &p,
            "-i",
            "snap1",
            "-m",
            "first snapshot",
        ],
        vec!["list", "-w", &p],
        vec![
            "checkpoint",
            "-w",
            &p,
            "-i",
            "snap2",
            "-m",
            "after modification",
        ],
        vec!["diff", "-w", &p, "--from", "snap1", "--to", "snap2"],
        vec!["rollback", "-w", &p, "-s", "snap1"],
        vec!["delete", "-s", "snap2", "-w", &p, "--force"],
        vec!["config", "-w", &p],
        vec!["cleanup", "-w", &p],
        vec!["status", "-w", &p],
        vec!["recover", "-w", &p, "--force"],
    ];
    for argv in &steps {
        let r = c.cli(argv);
        expect(
            r.code() == Some(0),
            &format!("WS_CKPT_SOCKET=S ws-ckpt {}", argv.join(" ")),
            "exit 0, served by the daemon on S",
            &r,
        );
    }
    expect(
        !c.env.image.exists() && mounts_under(&c.env.mount).is_empty(),
        "clients with WS_CKPT_SOCKET=S",
        &format!(
            "every command went to the daemon on S (whose storage is M = {}): nothing ran in-process on the configured loop image",
            m.display()
        ),
        &c.cli(&["status"]),
    );
}

#[test]
fn ws_ckpt_socket_without_a_daemon_fails_and_does_nothing() {
    let Some(c) = Compat::no_daemon("compat-d-nodaemon") else {
        return;
    };
    let p = c.plain_dir("untouched");
    for argv in [
        vec!["status"],
        vec!["init", "-w", p.as_str()],
        vec!["checkpoint", "-w", p.as_str(), "-s", "x"],
        vec!["list"],
    ] {
        let r = c.cli(&argv);
        expect(
            r.code().is_some_and(|c| c != 0)
                && openclaw_error_class(&r.stderr) == "daemon-down"
                && hermes_error_class(&r.stderr) == "daemon-down",
            &format!("WS_CKPT_SOCKET=<nothing listening> ws-ckpt {}", argv.join(" ")),
            "a non-zero exit with stderr containing \"daemon is not running\" (lower case: OpenClaw's test is case-sensitive)",
            &r,
        );
    }
    let untouched = Path::new(&p);
    expect(
        untouched.is_dir()
            && !untouched.is_symlink()
            && !c.env.image.exists()
            && mounts_under(&c.env.mount).is_empty(),
        "WS_CKPT_SOCKET set, no daemon",
        "nothing done in-process: the directory still plain, no image, no mount",
        &c.cli(&["status"]),
    );
}

#[test]
fn unprivileged_client_without_a_daemon_says_daemon_is_not_running() {
    let Some(env) = ws_ckpt_integration_tests::TestEnv::new("compat-d-user") else {
        return;
    };
    let user = CompatUser::new(2);
    let mut cmd = std::process::Command::new(ws_ckpt_integration_tests::bin_path());
    {
        use std::os::unix::process::CommandExt;
        cmd.env_remove("WS_CKPT_SOCKET")
            .env_remove("NOTIFY_SOCKET")
            .env("WS_CKPT_CONFIG", &env.config)
            .arg("status")
            .stdin(std::process::Stdio::null())
            .uid(user.uid)
            .gid(user.gid);
    }
    let r = env.run_command(cmd, ws_ckpt_integration_tests::RUN_TIMEOUT);
    expect(
        r.code().is_some_and(|c| c != 0)
            && openclaw_error_class(&r.stderr) == "daemon-down"
            && hermes_error_class(&r.stderr) == "daemon-down",
        "`ws-ckpt status` by an unprivileged user with no daemon (an agent's first call)",
        "a non-zero exit with stderr containing \"daemon is not running\"",
        &r,
    );
}
