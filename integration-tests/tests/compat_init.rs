//! Upstream drop-in (issue 11, `docs/compat.md` § init): `init` as upstream's plugins and
//! e2e.sh call it — `init --workspace PATH` / `init -w PATH`, idempotent, refusing a missing
//! path, `/tmp`, and a directory some process has its working directory in (`--force` is
//! ours). Real btrfs via [`Compat`]; each test names the behaviour it pins.

use std::path::Path;

use ws_ckpt_integration_tests::compat_support::{
    expect, hermes_error_class, openclaw_error_class, Compat,
};
use ws_ckpt_integration_tests::TestEnv;

#[test]
fn init_accepts_dash_w_and_long_workspace_flag() {
    let Some(c) = Compat::native("compat-init-flags") else {
        return;
    };
    for (flag, name) in [("--workspace", "long"), ("-w", "short")] {
        let p = c.plain_dir(name);
        let r = c.cli(&["init", flag, &p]);
        expect(
            r.code() == Some(0) && Path::new(&p).is_symlink(),
            &format!("init {flag} PATH (Hermes/OpenClaw `init --workspace`, e2e `init -w`)"),
            "exit 0 and PATH turned into a symlink to its workspace subvolume",
            &r,
        );
    }
}

#[test]
fn init_positional_form_still_works() {
    let Some(c) = Compat::native("compat-init-positional") else {
        return;
    };
    let p = c.plain_dir("pos");
    let r = c.cli(&["init", &p]);
    expect(
        r.code() == Some(0) && Path::new(&p).is_symlink(),
        "init PATH (our positional form stays)",
        "exit 0 and PATH is a symlink",
        &r,
    );
}

#[test]
fn init_of_an_existing_workspace_exits_zero() {
    let Some(c) = Compat::native("compat-init-again") else {
        return;
    };
    let p = c.workspace("again");
    let r = c.cli(&["init", "--workspace", &p]);
    expect(
        r.code() == Some(0),
        "init --workspace PATH of a workspace (Hermes runs it at every session start and skips \
         the baseline checkpoint on a non-zero exit)",
        "exit 0 (upstream answers InitOk with the existing ws_id)",
        &r,
    );
}

#[test]
fn init_of_a_missing_path_fails() {
    let Some(c) = Compat::native("compat-init-missing") else {
        return;
    };
    let r = c.cli(&["init", "-w", "/nonexistent/path/should/fail"]);
    expect(
        r.code().is_some_and(|c| c != 0) && r.stderr.contains("/nonexistent/path/should/fail"),
        "init -w /nonexistent/path/should/fail (e2e `init nonexistent`)",
        "a non-zero exit with the reason, naming the path, on stderr",
        &r,
    );
}

#[test]
fn checkpoint_of_tmp_is_refused() {
    let Some(c) = Compat::native("compat-init-tmp") else {
        return;
    };
    let r = c.cli(&["checkpoint", "-w", "/tmp", "-i", "bad"]);
    let tmp = Path::new("/tmp");
    expect(
        r.code().is_some_and(|c| c != 0)
            && r.stderr.contains("/tmp")
            && tmp.is_dir()
            && !tmp.is_symlink(),
        "checkpoint -w /tmp -i bad (e2e `checkpoint without init`)",
        "a non-zero exit naming /tmp on stderr; /tmp stays a plain directory",
        &r,
    );
}

#[test]
fn init_refuses_while_a_process_has_its_cwd_inside() {
    let Some(c) = Compat::native("compat-init-cwd") else {
        return;
    };
    let p = c.plain_dir("busy");
    let before = TestEnv::tree_digest(Path::new(&p));
    let occupant = c.occupant(&p);
    let r = c.cli(&["init", &p]);
    expect(
        r.code().is_some_and(|c| c != 0)
            && openclaw_error_class(&r.stderr) == "cwd-occupied"
            && hermes_error_class(&r.stderr) == "cwd-occupied",
        "init PATH while a process has its cwd inside (upstream 0.3.3+ /proc guard)",
        "a non-zero exit whose stderr contains \"have cwd inside workspace\" (both plugins \
         then tell the agent the refusal is not retryable)",
        &r,
    );
    let p_path = Path::new(&p);
    expect(
        p_path.is_dir() && !p_path.is_symlink() && TestEnv::tree_digest(p_path) == before,
        "init refused because of a cwd occupant",
        "the directory left exactly as it was",
        &r,
    );
    let forced = c.cli(&["init", &p, "--force"]);
    drop(occupant);
    expect(
        forced.code() == Some(0) && p_path.is_symlink(),
        "init PATH --force with an occupant (ours, like rollback --force)",
        "exit 0 and PATH is a workspace",
        &forced,
    );
}
