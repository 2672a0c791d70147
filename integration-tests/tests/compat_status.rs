//! Upstream drop-in (issue 11, `docs/compat.md` § status): `status` exits 0 whenever it could
//! report (OpenClaw's environment check treats anything else as "daemon not running" and
//! enters degraded mode), `--detailed-exitcode` keeps 0/3/1, `status -w WS` judges only WS
//! and fails for a path that is not a workspace (OpenClaw then runs `init`), and the table
//! row e2e.sh reads with `status | grep PATH | awk '{print $1}'` starts with the ws_id.

use std::fs;

use ws_ckpt_integration_tests::compat_support::{
    expect, grep_awk_first_field, hermes_error_class, openclaw_error_class, ws_id_for, Compat,
};

/// Replace a workspace symlink by a plain directory (a "detached" registration, as e2e.sh
/// makes one).
fn detach(path: &str) {
    fs::remove_file(path).expect("remove the workspace symlink");
    fs::create_dir(path).expect("recreate the path as a directory");
    fs::write(format!("{path}/f.txt"), "user-data\n").expect("write user data");
}

#[test]
fn status_exits_zero_while_a_workspace_is_degraded() {
    let Some(c) = Compat::native("compat-status-degraded") else {
        return;
    };
    let healthy = c.workspace("healthy");
    let broken = c.workspace("broken");
    c.checkpoint(&healthy, "h1");
    detach(&broken);
    let r = c.cli(&["status"]);
    expect(
        r.code() == Some(0),
        "`status` with one detached workspace (OpenClaw's environment check runs `ws-ckpt status` and needs exit 0)",
        "exit 0: it could report; the degraded workspace is shown, not signalled by the exit code",
        &r,
    );
    let d = c.cli(&["status", "--detailed-exitcode"]);
    expect(
        d.code() == Some(3),
        "`status --detailed-exitcode` with one detached workspace (monitoring)",
        "exit 3 (degraded)",
        &d,
    );
}

#[test]
fn status_table_row_starts_with_the_ws_id() {
    let Some(c) = Compat::native("compat-status-row") else {
        return;
    };
    // As in e2e.sh at that point: another workspace is detached (a finding is printed).
    let other = c.workspace("detached-ws");
    detach(&other);
    let p = c.workspace("byid-ws");
    c.checkpoint(&p, "byid-snap1");
    c.checkpoint(&p, "byid-snap2");
    let r = c.cli(&["status"]);
    let got = grep_awk_first_field(&r.stdout, &p);
    expect(
        got == ws_id_for(&p),
        "`status | grep \"$PATH\" | awk '{print $1}'` (e2e.sh gets the ws_id for `recover -w ID` this way)",
        &format!(
            "exactly one stdout line contains the path, and its first field is the ws_id {} \
             (upstream row: `  <ws_id> <path> <snapshots>`); awk gave {got:?}",
            ws_id_for(&p)
        ),
        &r,
    );
}

#[test]
fn status_of_one_workspace_judges_only_that_workspace() {
    let Some(c) = Compat::native("compat-status-filter") else {
        return;
    };
    let good = c.workspace("good");
    let bad = c.workspace("bad");
    detach(&bad);
    for argv in [
        vec!["status", "--workspace", good.as_str()],
        vec!["status", "-w", good.as_str(), "--detailed-exitcode"],
    ] {
        let r = c.cli(&argv);
        expect(
            r.code() == Some(0),
            "status -w HEALTHY while another workspace is detached",
            "exit 0: only the named workspace is judged",
            &r,
        );
    }
}

#[test]
fn status_of_a_detached_workspace_points_at_recover() {
    let Some(c) = Compat::native("compat-status-detached") else {
        return;
    };
    let bad = c.workspace("gone");
    detach(&bad);
    let r = c.cli(&["status", "--workspace", &bad]);
    expect(
        r.code().is_some_and(|c| c != 0)
            && format!("{}{}", r.stdout, r.stderr).contains("ws-ckpt recover"),
        "status -w DETACHED (upstream 0.5.0 refuses the single-workspace form for a detached registration)",
        "a non-zero exit naming `ws-ckpt recover` as the repair",
        &r,
    );
}

#[test]
fn status_of_a_path_that_is_no_workspace_fails_as_workspace_not_found() {
    let Some(c) = Compat::native("compat-status-unknown") else {
        return;
    };
    let p = c.plain_dir("not-yet");
    let r = c.cli(&["status", "--workspace", &p]);
    expect(
        r.code().is_some_and(|c| c != 0)
            && openclaw_error_class(&r.stderr) == "workspace-not-found"
            && hermes_error_class(&r.stderr) == "workspace-not-found",
        "status --workspace PLAIN_DIR (OpenClaw's ensureWorkspace: exit 0 means \"already initialized\", anything else runs init)",
        "a non-zero exit; stderr contains \"not found\" and \"workspace\" but not \"snapshot\"",
        &r,
    );
}
