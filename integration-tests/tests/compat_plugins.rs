//! Upstream drop-in (issue 11, `docs/compat.md` § plugin flows): the sequences of calls the
//! OpenClaw and Hermes plugins make (register, session start, turn end, their tools), with
//! each plugin's own decision on every result — the issue's symptoms ("degraded mode for
//! every new workspace", "No checkpoints found while 4 exist") as tests.

use std::fs;

use ws_ckpt_integration_tests::compat_support::{
    expect, expect_value, extract_timing, hermes_output, parse_policy, strip_ansi, Compat,
    PolicyView,
};

/// Make an unrelated workspace detached, so that the host's overall health is degraded. The
/// daemon may repair the symlink between the removal and the mkdir (EEXIST): try again.
fn degrade_host(c: &Compat) {
    let other = c.workspace("someone-elses");
    for _ in 0..50 {
        if fs::symlink_metadata(&other).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&other).unwrap();
        }
        match fs::create_dir(&other) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if fs::symlink_metadata(&other).is_ok_and(|m| m.is_dir()) {
                    return;
                }
            }
            Err(e) => panic!("cannot make {other} a plain directory: {e}"),
        }
    }
    panic!("{other} kept coming back as a symlink (50 tries)");
}

#[test]
fn openclaw_register_for_a_new_workspace_is_not_degraded() {
    let Some(c) = Compat::native("compat-plug-oc-new") else {
        return;
    };
    degrade_host(&c);
    let w = c.plain_dir("openclaw-ws");

    let env_check = c.cli(&["status"]);
    expect(
        env_check.code() == Some(0),
        "OpenClaw EnvironmentChecker: `ws-ckpt status` (non-zero => \"Degraded mode: daemon not running\")",
        "exit 0 although another workspace is degraded",
        &env_check,
    );
    let probe = c.cli(&["status", "--workspace", &w]);
    expect(
        probe.code().is_some_and(|c| c != 0),
        "OpenClaw ensureWorkspace: `status --workspace NEW` (exit 0 => treated as initialized, init skipped)",
        "a non-zero exit for a directory that is not a workspace yet",
        &probe,
    );
    let init = c.cli(&["init", "--workspace", &w]);
    expect(
        init.code() == Some(0)
            || init.stderr.contains("already initialized")
            || init.stderr.contains("AlreadyInitialized"),
        "OpenClaw initialize: `init --workspace NEW` (failure => \"Degraded mode: workspace setup failed\")",
        "exit 0",
        &init,
    );
    let refresh = c.openclaw_listed(&w);
    expect_value(
        refresh.as_ref().is_ok_and(|v| v.is_empty()),
        "OpenClaw refreshSnapshotCache: `list --workspace NEW --format json`",
        "an empty JSON array",
        &format!("{refresh:?}"),
    );
    let start = c.cli(&[
        "checkpoint",
        "--workspace",
        &w,
        "--snapshot",
        "9f86d081",
        "--message",
        "session start",
        "--metadata",
        r#"{"auto":true,"type":"initial"}"#,
    ]);
    expect(
        start.code() == Some(0)
            && !format!("{}{}", start.stdout, start.stderr)
                .contains("Empty workspace, no snapshot created."),
        "OpenClaw session_start checkpoint",
        "exit 0, not reported as skipped",
        &start,
    );
    let turn = c.cli(&[
        "checkpoint",
        "--workspace",
        &w,
        "--snapshot",
        "3c59dc04",
        "--message",
        "refactor the parser",
        "--metadata",
        r#"{"auto":true,"type":"turn_end"}"#,
    ]);
    expect(
        turn.code() == Some(0) && extract_timing(&turn.stdout).is_some(),
        "OpenClaw agent_end checkpoint",
        "exit 0 with the `Completed in …` line",
        &turn,
    );
    let listed = c.openclaw_listed(&w);
    let ok = listed.as_ref().is_ok_and(|v| {
        v.len() == 2
            && v[0].id == "9f86d081"
            && v[1].id == "3c59dc04"
            && v[1].message.as_deref() == Some("refactor the parser")
            && v[1].metadata == Some(serde_json::json!({"auto": true, "type": "turn_end"}))
    });
    expect_value(
        ok,
        "OpenClaw ws-ckpt-list tool (`list --workspace WS --format json`)",
        "both checkpoints, oldest first, with message and metadata",
        &format!("{listed:?}"),
    );
}

#[test]
fn openclaw_register_for_an_existing_workspace_refreshes_its_snapshots() {
    let Some(c) = Compat::native("compat-plug-oc-existing") else {
        return;
    };
    let w = c.workspace("existing");
    c.checkpoint(&w, "e1");
    c.checkpoint(&w, "e2");
    let probe = c.cli(&["status", "--workspace", &w]);
    expect(
        probe.code() == Some(0),
        "OpenClaw ensureWorkspace: `status --workspace EXISTING`",
        "exit 0 (initialized)",
        &probe,
    );
    let listed = c.openclaw_listed(&w);
    expect_value(
        listed
            .as_ref()
            .is_ok_and(|v| v.iter().map(|s| s.id.as_str()).collect::<Vec<_>>() == ["e1", "e2"]),
        "OpenClaw refreshSnapshotCache for an existing workspace",
        "[e1, e2]",
        &format!("{listed:?}"),
    );
}

#[test]
fn openclaw_tools_round_trip() {
    let Some(c) = Compat::native("compat-plug-oc-tools") else {
        return;
    };
    let w = c.workspace("tools");
    c.checkpoint(&w, "a");
    fs::write(format!("{w}/README.txt"), "changed\n").unwrap();
    c.checkpoint(&w, "b");
    let diff = c.cli(&["diff", "--workspace", &w, "--from", "a", "--to", "b"]);
    let text = strip_ansi(&diff.stdout);
    expect(
        diff.code() == Some(0)
            && !text.trim().is_empty()
            && !text.trim().starts_with("No differences"),
        "OpenClaw hasChanges/ws-ckpt-diff: `diff --workspace WS --from A --to B` with a change",
        "exit 0 and a non-empty listing that does not start with \"No differences\"",
        &diff,
    );
    let same = c.cli(&["diff", "--workspace", &w, "--from", "b", "--to", "b"]);
    expect(
        same.code() == Some(0)
            && strip_ansi(&same.stdout)
                .trim()
                .starts_with("No differences"),
        "OpenClaw hasChanges on identical snapshots",
        "stdout starting with \"No differences\" (upstream: `No differences found.`)",
        &same,
    );
    for argv in [
        vec![
            "rollback",
            "--workspace",
            w.as_str(),
            "--num-ancestors",
            "1",
            "--preview",
        ],
        vec!["rollback", "--workspace", w.as_str(), "--snapshot", "a"],
        vec!["cleanup", "--workspace", w.as_str(), "--keep", "20"],
        vec!["config", "-w", w.as_str(), "--format", "json", "--reset"],
        vec![
            "delete",
            "--workspace",
            w.as_str(),
            "--snapshot",
            "b",
            "--force",
        ],
    ] {
        let r = c.cli(&argv);
        expect(
            r.code() == Some(0),
            &format!("OpenClaw tool call: {}", argv.join(" ")),
            "exit 0",
            &r,
        );
    }
    let cfg = c.cli(&["config", "-w", &w, "--format", "json"]);
    expect(
        !matches!(parse_policy(&cfg.stdout), PolicyView::ParseError(_)),
        "OpenClaw ws-ckpt-config view (parseWorkspaceCleanupJson)",
        "a ws-ckpt-policy/v1 document, not \"(unknown — daemon response unparseable)\"",
        &cfg,
    );
}

#[test]
fn hermes_session_and_tools_round_trip() {
    let Some(c) = Compat::native("compat-plug-hermes") else {
        return;
    };
    let w = c.plain_dir("hermes-ws");
    for round in 0..2 {
        let init = c.cli(&["init", "--workspace", &w]);
        expect(
            init.code() == Some(0),
            &format!("Hermes on_session_start: `init --workspace WS` (round {round}; non-zero => no baseline checkpoint)"),
            "exit 0, also when already initialized",
            &init,
        );
    }
    let start = c.cli(&[
        "checkpoint",
        "--workspace",
        &w,
        "--snapshot",
        "5d41402a",
        "--message",
        "session-start",
        "--metadata",
        r#"{"event": "session_start", "turn": 0, "timestamp": "2026-07-01T10:00:00+00:00"}"#,
    ]);
    expect(
        start.code() == Some(0),
        "Hermes baseline checkpoint",
        "exit 0",
        &start,
    );
    fs::write(format!("{w}/README.txt"), "turn 1\n").unwrap();
    let turn = c.cli(&[
        "checkpoint", "--workspace", &w, "--snapshot", "7d793037", "--message", "agent turn",
        "--metadata", r#"{"event": "turn_end", "turn": 1, "timestamp": "2026-07-01T10:01:00+00:00", "success": true}"#,
    ]);
    expect(
        turn.code() == Some(0),
        "Hermes turn-end checkpoint",
        "exit 0",
        &turn,
    );

    let list = c.cli(&["list", "-w", &w, "--format", "table"]);
    expect(
        list.code() == Some(0)
            && hermes_output(&list).contains("5d41402a")
            && hermes_output(&list).contains("7d793037"),
        "Hermes ws-ckpt-list tool (`list -w WS --format table`)",
        "exit 0 and both IDs in what the agent sees",
        &list,
    );
    for argv in [
        vec!["status", "-w", w.as_str(), "--format", "table"],
        vec!["diff", "-w", w.as_str(), "--from", "5d41402a"],
        vec!["rollback", "-w", w.as_str(), "-n", "1", "--preview"],
        vec!["rollback", "-w", w.as_str(), "-n", "2"],
        vec![
            "checkpoint",
            "-w",
            w.as_str(),
            "-s",
            "manual-1",
            "-m",
            "manual checkpoint",
        ],
        vec!["delete", "-s", "manual-1", "-w", w.as_str(), "--force"],
        vec![
            "config",
            "-w",
            w.as_str(),
            "--enable-auto-cleanup",
            "--auto-cleanup-keep",
            "10",
        ],
        vec!["config", "-w", w.as_str(), "--reset"],
    ] {
        let r = c.cli(&argv);
        expect(
            r.code() == Some(0),
            &format!("Hermes tool call: {}", argv.join(" ")),
            "exit 0",
            &r,
        );
    }
    let readme = fs::read_to_string(format!("{w}/README.txt")).unwrap_or_default();
    expect_value(
        readme == "sample workspace\n",
        "Hermes `rollback -w WS -n 2` (undo the last two turns)",
        "README.txt back to the baseline content",
        &format!("{readme:?}"),
    );
    let cfg = c.cli(&["config", "-w", &w, "--format", "json"]);
    expect(
        parse_policy(&cfg.stdout) == PolicyView::Disabled,
        "Hermes ws-ckpt-config view after --reset (_parse_workspace_policy_json)",
        "\"disabled\" (inherits the disabled global default)",
        &cfg,
    );
}
