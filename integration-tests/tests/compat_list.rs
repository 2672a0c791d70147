//! Upstream drop-in (issue 11, `docs/compat.md` § list): `list --format json` is upstream's
//! array of `{"id","workspace","meta":{"message","metadata","pinned","created_at","missing"}}`
//! (OpenClaw parses exactly that and shows "No checkpoints found" for anything else), paging
//! with `--limit/--cursor` and `next_cursor` as in 0.5.0, and the table e2e.sh greps.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;
use ws_ckpt_integration_tests::compat_support::{
    expect, expect_value, openclaw_parse_list, ws_id_for, Compat,
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

/// The daemon writes `list --format json` itself (the CLI copies it): the text must be what
/// printing the list's result gives, and what the command prints in-process, for every form
/// (all workspaces, one, one page) and for everything an item can hold (escaped text,
/// nested and empty metadata, pins, a MISSING snapshot, children).
#[test]
fn list_json_from_the_daemon_is_the_printed_result_and_the_in_process_output() {
    let Some(c) = Compat::native("compat-list-same") else {
        return;
    };
    let a = c.workspace("a");
    let b = c.workspace("b");
    let mk = |ws: &str, id: &str, extra: &[&str]| {
        let mut argv = vec!["checkpoint", "-w", ws, "-s", id];
        argv.extend_from_slice(extra);
        let r = c.cli(&argv);
        expect(r.code() == Some(0), "checkpoint (setup)", "exit 0", &r);
    };
    mk(&a, "a1", &["-m", "tab\there \"quoted\" é \u{1}", "--pin"]);
    mk(
        &b,
        "b1",
        &[
            "--metadata",
            r#"{"n":[1,2.5,{"deep":{}}],"s":"x\ny","e":{}}"#,
        ],
    );
    mk(&a, "a2", &["--metadata", "[]"]);
    mk(&a, "a3", &[]);
    // a2 becomes MISSING.
    let a2 = c.env.mount.join("snapshots").join(ws_id_for(&a)).join("a2");
    ws_ckpt_integration_tests::btrfs(&["subvolume", "delete", &a2.display().to_string()]);
    // a3 gets a child: roll back to it and take another.
    let r = c.cli(&["rollback", "-w", &a, "-s", "a1"]);
    expect(r.code() == Some(0), "rollback (setup)", "exit 0", &r);
    mk(&a, "a4", &[]);

    let forms: Vec<(Vec<&str>, Option<&str>, Option<u32>)> = vec![
        (vec!["list", "--format", "json"], None, None),
        (vec!["list", "-w", &a, "--format", "json"], Some(&a), None),
        (
            vec!["list", "-w", &a, "--format", "json", "--limit", "2"],
            Some(&a),
            Some(2),
        ),
    ];
    let mut from_daemon = Vec::new();
    for (argv, ws, limit) in &forms {
        let r = c.cli(argv);
        expect(r.code() == Some(0), &argv.join(" "), "exit 0", &r);
        // The result itself, asked for on the socket, printed as the CLI prints a result.
        let req = ws_ckpt::api::Request::List {
            workspace: ws.map(str::to_string),
            limit: *limit,
            cursor: None,
            output: None,
        };
        let v = ws_ckpt::ipc::call(&c.env.socket_path(), &req, Duration::from_secs(60))
            .expect("list on the socket");
        let listed: ws_ckpt::ops::ListResult = serde_json::from_value(v).expect("a list result");
        let printed = match limit {
            Some(_) => serde_json::to_string_pretty(&listed.page_items()),
            None => serde_json::to_string_pretty(&listed.items()),
        }
        .expect("printable")
            + "\n";
        expect(
            r.stdout == printed,
            &format!("{} from the daemon", argv.join(" ")),
            &format!("exactly the printed result:\n{printed}"),
            &r,
        );
        from_daemon.push(r.stdout);
    }
    // The daemon answers a request for the printed form with it (header, then the text).
    let mut sock = std::os::unix::net::UnixStream::connect(c.env.socket_path()).expect("connect");
    let req = ws_ckpt::api::Request::List {
        workspace: None,
        limit: None,
        cursor: None,
        output: Some(ws_ckpt::api::ListOutput::Json),
    };
    sock.write_all(format!("{}\n", ws_ckpt::ipc::encode_request(&req)).as_bytes())
        .expect("send");
    sock.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut answer = Vec::new();
    sock.read_to_end(&mut answer).expect("read");
    let header = format!("{{\"ok\":true,\"printed\":{}}}\n", from_daemon[0].len());
    expect_value(
        answer == [header.as_bytes(), from_daemon[0].as_bytes()].concat(),
        "a list request with \"output\":\"json\" on the socket",
        &format!("{header} then the printed text"),
        &String::from_utf8_lossy(&answer),
    );
    let all = &from_daemon[0];
    for needle in [
        r#""missing": true"#,
        r#""pinned": true"#,
        r#"\"quoted\""#,
        r#""deep": {}"#,
        // a1's children: a2, and a4 (taken after the rollback to a1).
        r#""child_ids": [
        "a2",
        "a4"
      ]"#,
    ] {
        expect_value(
            all.contains(needle),
            "the fixture's cases reach the output",
            needle,
            all,
        );
    }
    c.stop_daemon();
    for ((argv, _, _), daemon_out) in forms.iter().zip(&from_daemon) {
        let r = c.cli(argv);
        expect(
            r.code() == Some(0) && &r.stdout == daemon_out,
            &format!("{} in-process", argv.join(" ")),
            "the same text as from the daemon",
            &r,
        );
    }
}

/// A daemon of an earlier version refuses the `output` field of a list request: the CLI
/// asks again for the result and prints it itself, the same text.
#[test]
fn list_json_from_a_daemon_without_printed_output_is_printed_by_the_cli() {
    let Some(c) = Compat::no_daemon("compat-list-old-daemon") else {
        return;
    };
    let socket = c.socket.clone().expect("no_daemon names a socket");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let result = r#"{"workspaces":[{"ws_id":"ws-0a0b0c","path":"/w/a","snapshots":[{"id":"s1","created_at":"2026-01-01T00:00:00Z","message":"m \"1\"","metadata":{"k":[1]},"pinned":true,"missing":false,"snapshot_path":"/m/snapshots/ws-0a0b0c/s1","parent_id":null,"child_ids":["__live__"],"head":true}]}]}"#;
    let server = std::thread::spawn(move || {
        let mut requests = Vec::new();
        for _ in 0..2 {
            let (stream, _) = listener.accept().expect("accept");
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(&stream), &mut line)
                .expect("request");
            let answer = if line.contains("\"output\"") {
                r#"{"ok":false,"error":{"code":"InvalidArgument","message":"invalid request: unknown field `output`, expected one of `workspace`, `limit`, `cursor`"}}"#.to_string()
            } else {
                format!(r#"{{"ok":true,"result":{result}}}"#)
            };
            (&stream)
                .write_all(format!("{answer}\n").as_bytes())
                .expect("answer");
            requests.push(line);
            if !requests[0].contains("\"output\"") {
                break;
            }
        }
        requests
    });
    let r = c.cli(&["list", "--format", "json"]);
    let requests = server.join().expect("server");
    let listed: ws_ckpt::ops::ListResult = serde_json::from_str(result).expect("a list result");
    let printed = serde_json::to_string_pretty(&listed.items()).expect("printable") + "\n";
    expect(
        r.code() == Some(0) && r.stdout == printed && requests.len() == 2,
        "list --format json against a daemon that refuses `output`",
        &format!("asks for the printed form, then for the result, and prints:\n{printed}"),
        &r,
    );
}
