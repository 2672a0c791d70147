//! Upstream drop-in (issue 11, `docs/compat.md` § errors): the phrases the plugins match on
//! stderr (`already exists`, `snapshot not found`, `workspace not found`, …) classified the way
//! each plugin classifies them — in their order, so a workspace error must not mention
//! "snapshot" — on stderr even with `--format json` (whose JSON error stays on stdout), and an
//! empty workspace snapshotted without upstream's "skipped" text.

use serde_json::Value;
use ws_ckpt_integration_tests::compat_support::{
    expect, hermes_error_class, hermes_output, openclaw_error_class, Compat,
};

#[test]
fn errors_reach_stderr_even_with_format_json() {
    let Some(c) = Compat::native("compat-err-json") else {
        return;
    };
    let w = c.workspace("json");
    c.checkpoint(&w, "dup");
    let r = c.cli(&["--format", "json", "checkpoint", "-w", &w, "-s", "dup"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or(Value::Null);
    expect(
        r.code() == Some(1)
            && v["error"]["code"].is_string()
            && r.stderr.contains("already exists"),
        "`--format json checkpoint` with a duplicate ID",
        "exit 1, the JSON error object on stdout, and the phrase \"already exists\" on stderr",
        &r,
    );
    let nowhere = c.plain_dir("plain");
    let r = c.cli(&["list", "--workspace", &nowhere, "--format", "json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or(Value::Null);
    expect(
        r.code() == Some(1)
            && v["error"]["code"].is_string()
            && openclaw_error_class(&r.stderr) == "workspace-not-found",
        "`list --workspace NOT_A_WORKSPACE --format json` (OpenClaw's list call)",
        "exit 1, JSON error on stdout, stderr containing \"not found\" and \"workspace\"",
        &r,
    );
}

#[test]
fn unknown_workspace_errors_classify_as_workspace_not_found() {
    let Some(c) = Compat::native("compat-err-ws") else {
        return;
    };
    let p = c.plain_dir("plain");
    for argv in [
        vec!["list", "-w", p.as_str(), "--format", "table"],
        vec!["rollback", "-w", p.as_str(), "-s", "x"],
        vec!["diff", "-w", p.as_str(), "--from", "x"],
        vec!["delete", "-s", "x", "-w", p.as_str(), "--force"],
        vec!["cleanup", "-w", p.as_str()],
        vec!["list", "-w", "ws-000000"],
    ] {
        let r = c.cli(&argv);
        expect(
            r.code() == Some(1)
                && openclaw_error_class(&r.stderr) == "workspace-not-found"
                && hermes_error_class(&r.stderr) == "workspace-not-found"
                && hermes_output(&r) == r.stderr.trim(),
            &format!("{} (not a workspace)", argv.join(" ")),
            "exit 1, nothing on stdout, stderr containing \"not found\" and \"workspace\" and NOT \"snapshot\" \
             (both plugins test \"snapshot\" first)",
            &r,
        );
    }
}

#[test]
fn unknown_snapshot_errors_classify_as_snapshot_not_found() {
    let Some(c) = Compat::native("compat-err-snap") else {
        return;
    };
    let w = c.workspace("snap");
    c.checkpoint(&w, "real");
    for argv in [
        vec!["rollback", "-w", w.as_str(), "-s", "ghost"],
        vec!["rollback", "-w", w.as_str(), "-s", "ghost", "--preview"],
        vec!["diff", "-w", w.as_str(), "--from", "ghost"],
        vec!["diff", "-w", w.as_str(), "--from", "real", "--to", "ghost"],
        vec!["delete", "-s", "ghost", "-w", w.as_str(), "--force"],
    ] {
        let r = c.cli(&argv);
        expect(
            r.code() == Some(1)
                && openclaw_error_class(&r.stderr) == "snapshot-not-found"
                && hermes_error_class(&r.stderr) == "snapshot-not-found",
            &argv.join(" "),
            "exit 1 and stderr containing \"not found\" and \"snapshot\" (upstream: `snapshot not found: ghost`)",
            &r,
        );
    }
}

#[test]
fn an_empty_workspace_is_snapshotted_without_the_skipped_text() {
    let Some(c) = Compat::native("compat-err-empty") else {
        return;
    };
    let p = c.env.home.join("empty");
    std::fs::create_dir_all(&p).unwrap();
    let p = p.display().to_string();
    let r = c.cli(&["init", &p]);
    expect(
        r.code() == Some(0),
        "init of an empty directory",
        "exit 0",
        &r,
    );
    let r = c.cli(&["checkpoint", "--workspace", &p, "--snapshot", "e1"]);
    let l = c.cli(&["list", "-w", &p]);
    expect(
        r.code() == Some(0)
            && !format!("{}{}", r.stdout, r.stderr).contains("Empty workspace, no snapshot created.")
            && l.stdout.contains("e1"),
        "checkpoint of an empty workspace (SPEC §5.2: still snapshotted; upstream 0.5.0 skips it)",
        "exit 0, a listed snapshot e1, and NOT upstream's \"Empty workspace, no snapshot created.\" \
         (both plugins would then report the checkpoint as skipped)",
        &r,
    );
}
