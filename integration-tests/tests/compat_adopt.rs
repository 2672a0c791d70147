//! Upstream drop-in (issue 11, `docs/compat.md` § adopting 0.5.0 data): a machine that ran
//! ws-ckpt 0.5.0 — `state.json` (version 1), `indexes/<ws_id>/index.json` with its lineage
//! fields and `indexes/<ws_id>/policy.toml` — is adopted like 0.3's: every snapshot listed,
//! the per-workspace policy turned into a declaration in the generated drop-in, and the
//! fields we do not model kept when the index is rewritten.

use std::fs;

use serde_json::Value;
use ws_ckpt_integration_tests::compat_support::{
    expect, parse_policy, Compat, PolicyView, Upstream05Data,
};
use ws_ckpt_integration_tests::TestEnv;

/// Build 0.5.0 data in a fresh environment, then start our daemon on it.
fn adopted(test: &str, policy: &str) -> Option<(Compat, Upstream05Data)> {
    // The data must exist before the daemon's first pass, so build it in a bare TestEnv and
    // only then start the daemon on the same root.
    let env = TestEnv::new(test)?;
    let data = Upstream05Data::build(&env, "agent-ws", policy);
    let daemon = env.spawn(&["daemon"], &[("WS_CKPT_LOG", "info")]);
    let sock = env.socket_path();
    let up = ws_ckpt_integration_tests::wait_until(
        ws_ckpt_integration_tests::compat_support::DAEMON_START,
        || daemon.try_wait().is_none() && std::os::unix::net::UnixStream::connect(&sock).is_ok(),
    );
    assert!(
        up,
        "COMPAT adoption of 0.5.0 data\nexpected: the daemon starts on a 0.5.0 state directory\ngot:\n{}",
        daemon.stderr()
    );
    Some((
        Compat {
            env,
            daemon: Some(daemon),
            socket: None,
            upstream_mount: None,
        },
        data,
    ))
}

#[test]
fn upstream_0_5_snapshots_are_listed_after_adoption() {
    let Some((c, data)) = adopted(
        "compat-adopt-list",
        "auto_cleanup = true\nauto_cleanup_keep = 3\n",
    ) else {
        return;
    };
    let listed = c.openclaw_listed(&data.path);
    let ok = listed.as_ref().is_ok_and(|v| {
        v.iter().map(|s| s.id.clone()).collect::<Vec<_>>() == data.snapshots
            && v[0].message.as_deref() == Some("first")
            && v[0].metadata == Some(serde_json::json!({"event": "session_start", "turn": 0}))
    });
    expect(
        ok,
        "`list --workspace WS --format json` on a workspace ws-ckpt 0.5.0 created",
        "s1 and s2 with their messages and metadata (s1: \"first\", {\"event\":\"session_start\",\"turn\":0})",
        &c.cli(&["list", "--workspace", &data.path, "--format", "json"]),
    );
    let r = c.cli(&["rollback", "-w", &data.path, "-s", "s1"]);
    let content = fs::read_to_string(format!("{}/file.txt", data.path)).unwrap_or_default();
    expect(
        r.code() == Some(0) && content == "v1\n",
        "rollback to a snapshot 0.5.0 took",
        "exit 0 and file.txt = \"v1\"",
        &r,
    );
}

#[test]
fn upstream_0_5_policy_becomes_a_declaration() {
    let Some((c, data)) = adopted(
        "compat-adopt-policy",
        "auto_cleanup = true\nauto_cleanup_keep = 3\n",
    ) else {
        return;
    };
    let r = c.cli(&["config", "-w", &data.path, "--format", "json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or(Value::Null);
    expect(
        parse_policy(&r.stdout) == PolicyView::Count(3) && v["local"]["auto_cleanup"] == true,
        "`config -w WS --format json` for a workspace whose 0.5.0 policy.toml says auto_cleanup = true, auto_cleanup_keep = 3",
        "effective count 3 and local auto_cleanup true",
        &r,
    );
    let generated = c.env.dropin_dir.join("40-migrated.toml");
    let text = fs::read_to_string(&generated).unwrap_or_default();
    let block: String = text
        .split("[[workspace]]")
        .find(|b| b.contains(&data.path))
        .unwrap_or("")
        .to_string();
    expect(
        block.lines().any(|l| l.replace(' ', "") == "keep=3")
            && block.lines().any(|l| l.replace(' ', "") == "auto_cleanup=true"),
        "the generated drop-in after adopting 0.5.0 data",
        &format!(
            "{} declares the workspace with `keep = 3` and `auto_cleanup = true`; it holds:\n{text}",
            generated.display()
        ),
        &r,
    );
}

#[test]
fn upstream_0_5_age_policy_becomes_an_age_keep() {
    let Some((c, data)) = adopted("compat-adopt-age", "auto_cleanup_keep = \"7d\"\n") else {
        return;
    };
    let r = c.cli(&["config", "-w", &data.path, "--format", "json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or(Value::Null);
    expect(
        v["local"]["auto_cleanup_keep"]
            == serde_json::json!({"mode": "age", "raw": "7d", "secs": 604800})
            && v["local"]["auto_cleanup"].is_null(),
        "a 0.5.0 policy.toml with only `auto_cleanup_keep = \"7d\"`",
        "local keep age 7d and local auto_cleanup null (inherited)",
        &r,
    );
}

#[test]
fn upstream_0_5_lineage_drives_num_ancestors_and_survives_rewrites() {
    let Some((c, data)) = adopted("compat-adopt-lineage", "") else {
        return;
    };
    let r = c.cli(&["rollback", "-w", &data.path, "-n", "2"]);
    let content = fs::read_to_string(format!("{}/file.txt", data.path)).unwrap_or_default();
    expect(
        r.code() == Some(0) && content == "v1\n",
        "rollback -n 2 on a workspace whose 0.5.0 index has head = s2, s2.parent_id = s1",
        "exit 0 and file.txt = \"v1\" (the lineage recorded by 0.5.0 is followed)",
        &r,
    );
    c.checkpoint(&data.path, "s3");
    let index_path = c
        .env
        .state_dir
        .join("indexes")
        .join(&data.ws_id)
        .join("index.json");
    let index: Value = serde_json::from_str(&fs::read_to_string(&index_path).unwrap_or_default())
        .unwrap_or(Value::Null);
    expect(
        index["governed_evidence"].is_object()
            && index["guarded_rollbacks"].is_object()
            && index["snapshots"]["s2"]["parent_id"] == "s1",
        "index.json after a checkpoint on an adopted 0.5.0 workspace",
        &format!(
            "{} keeps 0.5.0's fields (governed_evidence, guarded_rollbacks, parent_id) so a 0.5.0 daemon could read it back; it holds {index}",
            index_path.display()
        ),
        &r,
    );
}
