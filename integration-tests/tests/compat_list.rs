//! Upstream drop-in (issue 11, `docs/compat.md` § list): `list --format json` is upstream's
//! array of `{"id","workspace","meta":{"message","metadata","pinned","created_at","missing"}}`
//! (OpenClaw parses exactly that and shows "No checkpoints found" for anything else), paging
//! with `--limit/--cursor` and `next_cursor` as in 0.5.0, and the table e2e.sh greps.

use std::collections::BTreeSet;

use serde_json::Value;
use ws_ckpt_integration_tests::compat_support::{
    expect, expect_value, openclaw_parse_list, Compat,
};

#[test]
fn list_json_is_the_upstream_array_and_openclaw_sees_every_checkpoint() {
    let Some(c) = Compat::native("compat-list-json") else {
        return;
    };
    let w = c.workspace("json");
    let mk = |id: &str, msg: &str, meta: &str| {
        let r = c.cli(&[
            "checkpoint",
            "--workspace",
            &w,
            "--snapshot",
            id,
            "--message",
            msg,
            "--metadata",
            meta,
        ]);
        expect(r.code() == Some(0), "checkpoint (setup)", "exit 0", &r);
    };
    mk("c1", "first", r#"{"auto":true,"type":"initial"}"#);
    mk("c2", "second", r#"{"turn":1}"#);
    mk("c3", "third", r#"{"turn":2}"#);
    mk("c4", "fourth", r#"{"turn":3}"#);

    let r = c.cli(&["list", "--workspace", &w, "--format", "json"]);
    expect(
        r.code() == Some(0),
        "list --workspace WS --format json",
        "exit 0",
        &r,
    );
    let parsed = openclaw_parse_list(&r.stdout);
    expect(
        parsed.as_ref().is_ok_and(|v| v.len() == 4),
        "OpenClaw's list tool on `list --workspace WS --format json` (issue: \"No checkpoints found\" while 4 exist)",
        "stdout is exactly one JSON array with the 4 snapshots",
        &r,
    );
    let v: Value = serde_json::from_str(&r.stdout).expect("checked above");
    let items = v.as_array().expect("checked above");
    let ids: Vec<&str> = items.iter().filter_map(|i| i["id"].as_str()).collect();
    expect(
        ids == ["c1", "c2", "c3", "c4"],
        "list JSON order",
        "oldest first (upstream sorts by created_at ascending): c1 c2 c3 c4",
        &r,
    );
    for item in items {
        let meta = &item["meta"];
        let shape_ok = item["workspace"] == Value::String(w.clone())
            && meta["message"].is_string()
            && meta["metadata"].is_object()
            && meta["pinned"].is_boolean()
            && meta["created_at"].is_string()
            && meta["missing"].is_boolean();
        expect(
            shape_ok,
            "list JSON item shape",
            &format!(
                "{{\"id\", \"workspace\": {w:?}, \"meta\": {{\"message\": string, \"metadata\": object, \
                 \"pinned\": bool, \"created_at\": string, \"missing\": bool}}}} (extra fields allowed \
                 inside each item); this item: {item}"
            ),
            &r,
        );
    }
    let first = &parsed.expect("checked")[0];
    expect_value(
        first.message.as_deref() == Some("first")
            && first.metadata == Some(serde_json::json!({"auto": true, "type": "initial"})),
        "message and metadata as OpenClaw reads them (meta.message, meta.metadata)",
        "c1: message \"first\", metadata {\"auto\":true,\"type\":\"initial\"}",
        &format!("{first:?}"),
    );
}

#[test]
fn list_json_without_workspace_covers_every_workspace() {
    let Some(c) = Compat::native("compat-list-all") else {
        return;
    };
    let a = c.workspace("a");
    let b = c.workspace("b");
    c.checkpoint(&a, "a1");
    c.checkpoint(&b, "b1");
    let r = c.cli(&["list", "--format", "json"]);
    let v: Option<Value> = serde_json::from_str(&r.stdout).ok();
    let got: BTreeSet<(String, String)> = v
        .as_ref()
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    (
                        i["workspace"].as_str().unwrap_or("").to_string(),
                        i["id"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let want: BTreeSet<(String, String)> =
        [(a.clone(), "a1".to_string()), (b.clone(), "b1".to_string())].into();
    expect(
        r.code() == Some(0) && got == want,
        "list --format json without -w (the skill's global list)",
        &format!("one array holding both workspaces' snapshots: {want:?}"),
        &r,
    );
}

#[test]
fn list_pages_with_limit_and_cursor() {
    let Some(c) = Compat::native("compat-list-page") else {
        return;
    };
    let w = c.workspace("page");
    let all = ["p1", "p2", "p3", "p4", "p5"];
    for id in all {
        c.checkpoint(&w, id);
    }
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..10 {
        let mut argv = vec!["list", "-w", &w, "--format", "json", "--limit", "2"];
        let cur;
        if let Some(cv) = &cursor {
            cur = cv.clone();
            argv.push("--cursor");
            argv.push(&cur);
        }
        let r = c.cli(&argv);
        let v: Option<Value> = serde_json::from_str(&r.stdout).ok();
        let shape = v.as_ref().is_some_and(|v| {
            v["snapshots"].is_array()
                && (v["next_cursor"].is_string() || v["next_cursor"].is_null())
        });
        expect(
            r.code() == Some(0) && shape,
            &format!("list --limit 2 page {page} (0.5.0 paging)"),
            "exit 0 and one JSON object {\"snapshots\": [...], \"next_cursor\": string|null}",
            &r,
        );
        let v = v.expect("checked");
        let items = v["snapshots"].as_array().expect("checked");
        expect(
            items.len() <= 2 && (items.len() == 2 || v["next_cursor"].is_null()),
            &format!("list --limit 2 page {page}"),
            "at most 2 items; fewer only on the last page (next_cursor null)",
            &r,
        );
        seen.extend(
            items
                .iter()
                .map(|i| i["id"].as_str().unwrap_or("").to_string()),
        );
        match v["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    expect_value(
        seen == all,
        "following next_cursor until it is null",
        &format!("every snapshot exactly once, oldest first: {all:?}"),
        &format!("{seen:?}"),
    );
    let bad = c.cli(&[
        "list",
        "-w",
        &w,
        "--format",
        "json",
        "--limit",
        "2",
        "--cursor",
        "not-a-cursor",
    ]);
    expect(
        bad.code().is_some_and(|c| c != 0),
        "list --cursor with a token it never issued",
        "a non-zero exit (upstream: \"list cursor is not valid\")",
        &bad,
    );
}

#[test]
fn list_table_names_the_snapshots() {
    let Some(c) = Compat::native("compat-list-table") else {
        return;
    };
    let w = c.workspace("table");
    let r = c.cli(&[
        "checkpoint",
        "-w",
        &w,
        "-i",
        "snap1",
        "-m",
        "first snapshot",
    ]);
    expect(r.code() == Some(0), "checkpoint -i (e2e)", "exit 0", &r);
    let l = c.cli(&["list", "-w", &w, "--format", "table"]);
    expect(
        l.code() == Some(0) && l.stdout.to_lowercase().contains("snap1"),
        "list -w WS (e2e `list shows snap1`; Hermes' list tool passes --format table)",
        "exit 0 and the snapshot ID in the table",
        &l,
    );
}
