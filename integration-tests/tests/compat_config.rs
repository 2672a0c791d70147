//! Upstream drop-in (issue 11, `docs/compat.md` § config): the 0.3 and 0.5 `config` surface —
//! overview without scope (the lines 0.3's OpenClaw parses), `-g`, `-w WS [--format json]`
//! with the `ws-ckpt-policy/v1` document, `--enable-auto-cleanup`, `--disable-auto-cleanup`,
//! `--auto-cleanup-keep N|AGE`, `--reset`, the 0.3 global flags — each change being an edit of
//! the desired state (the workspace's drop-in, comments kept), and who may change what.

use std::fs;

use serde_json::Value;
use ws_ckpt_integration_tests::compat_support::{
    expect, openclaw_error_class, parse_policy, ws_id_for, Compat, CompatUser, PolicyView,
};
use ws_ckpt_integration_tests::Run;

/// The value after `label` on the overview line that starts with it (0.3 OpenClaw regexes
/// `/Auto-cleanup:\s+disabled/i` and `/Auto-cleanup keep:\s+(\S+)/`).
fn overview_value(stdout: &str, label: &str) -> Option<String> {
    stdout.lines().find_map(|l| {
        let t = l.trim_start();
        t.strip_prefix(label)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
    })
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or(Value::Null)
}

fn dropin(c: &Compat, ws: &str) -> String {
    let p = c.env.dropin_dir.join(format!("50-{}.toml", ws_id_for(ws)));
    fs::read_to_string(&p).unwrap_or_else(|e| format!("<cannot read {}: {e}>", p.display()))
}

#[test]
fn config_overview_without_scope_is_readable_by_0_3_plugins() {
    let Some(c) = Compat::native("compat-cfg-overview") else {
        return;
    };
    let _w = c.workspace("ov");
    let r = c.cli(&["config"]);
    expect(
        r.code() == Some(0)
            && overview_value(&r.stdout, "Auto-cleanup:").as_deref() == Some("disabled")
            && overview_value(&r.stdout, "Auto-cleanup keep:").as_deref() == Some("20"),
        "`ws-ckpt config` without scope (0.3 Hermes/OpenClaw `config` view; 0.5 overview)",
        "exit 0 and lines `Auto-cleanup:            disabled` and `Auto-cleanup keep:       20` (defaults)",
        &r,
    );
    let j = c.cli(&["config", "--format", "json"]);
    let v = json(&j.stdout);
    expect(
        j.code() == Some(0)
            && v["schema"] == "ws-ckpt-overview/v1"
            && v["global"]["auto_cleanup"] == false
            && v["workspaces"]["total"] == 1
            && v["workspaces"]["with_override"] == 0
            && v["workspaces"]["inherit_global"] == 1,
        "`ws-ckpt config --format json` without scope",
        "{\"schema\":\"ws-ckpt-overview/v1\",\"config_file\",\"global\":{…,\"auto_cleanup\":false,…},\
         \"workspaces\":{\"total\":1,\"with_override\":0,\"inherit_global\":1}}",
        &j,
    );
}

#[test]
fn config_global_view_text_and_json() {
    let Some(c) = Compat::native("compat-cfg-global") else {
        return;
    };
    let r = c.cli(&["config", "-g"]);
    expect(
        r.code() == Some(0) && overview_value(&r.stdout, "Auto-cleanup:").is_some(),
        "`ws-ckpt config -g`",
        "exit 0 and the `Auto-cleanup:` line",
        &r,
    );
    let j = c.cli(&["config", "--global", "--format", "json"]);
    let v = json(&j.stdout);
    expect(
        j.code() == Some(0)
            && v["schema"] == "ws-ckpt-config/v1"
            && v["auto_cleanup"] == false
            && v["auto_cleanup_keep"] == serde_json::json!({"mode": "count", "count": 20})
            && v["auto_cleanup_is_disabled"] == true
            && v["auto_cleanup_interval_secs"].is_u64()
            && v["health_check_interval_secs"].is_u64()
            && v["img_size_gb"].is_u64()
            && v["img_max_percent"].is_number(),
        "`ws-ckpt config --global --format json`",
        "{\"schema\":\"ws-ckpt-config/v1\",\"config_file\",\"mount_path\",\"socket_path\",\"auto_cleanup\":false,\
         \"auto_cleanup_keep\":{\"mode\":\"count\",\"count\":20},\"auto_cleanup_is_disabled\":true,\
         \"auto_cleanup_interval_secs\",\"health_check_interval_secs\",\"img_size_gb\",\"img_max_percent\"}",
        &j,
    );
}

#[test]
fn config_workspace_json_is_a_policy_v1_document() {
    let Some(c) = Compat::native("compat-cfg-policy") else {
        return;
    };
    let w = c.workspace("pol");
    let text = c.cli(&["config", "-w", &w]);
    expect(
        text.code() == Some(0),
        "`config -w WS` (e2e `config view`)",
        "exit 0",
        &text,
    );
    let r = c.cli(&["config", "-w", &w, "--format", "json"]);
    let v = json(&r.stdout);
    let count20 = serde_json::json!({"mode": "count", "count": 20});
    expect(
        r.code() == Some(0)
            && v["schema"] == "ws-ckpt-policy/v1"
            && v["ws_id"] == Value::String(ws_id_for(&w))
            && v["effective"]["auto_cleanup"] == false
            && v["effective"]["auto_cleanup_keep"] == count20
            && v["effective"]["is_disabled"] == true
            && v["local"]["auto_cleanup"].is_null()
            && v["local"]["auto_cleanup_keep"].is_null()
            && v["global"]["auto_cleanup"] == false
            && v["global"]["auto_cleanup_keep"] == count20,
        "`config -w WS --format json` (Hermes `config -w WS --format json`, OpenClaw `config -w WS --format json`)",
        "{\"schema\":\"ws-ckpt-policy/v1\",\"ws_id\":…,\"effective\":{\"auto_cleanup\":false,\
         \"auto_cleanup_keep\":{\"mode\":\"count\",\"count\":20},\"is_disabled\":true},\
         \"local\":{\"auto_cleanup\":null,\"auto_cleanup_keep\":null},\
         \"global\":{\"auto_cleanup\":false,\"auto_cleanup_keep\":{\"mode\":\"count\",\"count\":20}}}",
        &r,
    );
    expect(
        parse_policy(&r.stdout) == PolicyView::Disabled,
        "the plugins' reading of the default policy",
        "\"disabled\" (not a parse error)",
        &r,
    );
}

#[test]
fn config_workspace_changes_become_declarations_in_its_drop_in() {
    let Some(c) = Compat::native("compat-cfg-declare") else {
        return;
    };
    let w = c.workspace("decl");
    let path = c.env.dropin_dir.join(format!("50-{}.toml", ws_id_for(&w)));
    let mut text = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("COMPAT setup: init should write {}: {e}", path.display()));
    text.push_str("# operator note: keep this comment\n");
    fs::write(&path, text).unwrap();

    let r = c.cli(&[
        "config",
        "-w",
        &w,
        "--format",
        "json",
        "--enable-auto-cleanup",
        "--auto-cleanup-keep",
        "5",
    ]);
    let v = json(&r.stdout);
    expect(
        r.code() == Some(0)
            && parse_policy(&r.stdout) == PolicyView::Count(5)
            && v["local"]["auto_cleanup"] == true
            && v["local"]["auto_cleanup_keep"] == serde_json::json!({"mode": "count", "count": 5}),
        "`config -w WS --format json --enable-auto-cleanup --auto-cleanup-keep 5` (OpenClaw/Hermes maxSnapshotsNum)",
        "exit 0 and the updated policy document: effective count 5, local auto_cleanup true, local keep count 5",
        &r,
    );
    let d = dropin(&c, &w);
    expect(
        d.contains("# operator note: keep this comment")
            && d.lines().any(|l| l.replace(' ', "") == "keep=5")
            && d.lines().any(|l| l.replace(' ', "") == "auto_cleanup=true"),
        "the workspace's drop-in after `config -w WS --enable-auto-cleanup --auto-cleanup-keep 5`",
        &format!("{} keeps its comment and declares `keep = 5` and `auto_cleanup = true`; it holds:\n{d}", path.display()),
        &r,
    );
    let age = c.cli(&[
        "config",
        "-w",
        &w,
        "--format",
        "json",
        "--auto-cleanup-keep",
        "7d",
    ]);
    let va = json(&age.stdout);
    expect(
        age.code() == Some(0)
            && parse_policy(&age.stdout) == PolicyView::Age("7d".into())
            && va["effective"]["auto_cleanup_keep"]
                == serde_json::json!({"mode": "age", "raw": "7d", "secs": 604800}),
        "`config -w WS --format json --auto-cleanup-keep 7d` (OpenClaw/Hermes maxSnapshotsDuration)",
        "effective keep {\"mode\":\"age\",\"raw\":\"7d\",\"secs\":604800}",
        &age,
    );
    let valid = c.cli(&["config", "validate"]);
    expect(
        valid.code() == Some(0),
        "config validate after the edits",
        "exit 0",
        &valid,
    );
}

#[test]
fn config_workspace_disable_reads_as_disabled() {
    let Some(c) = Compat::native("compat-cfg-disable") else {
        return;
    };
    let w = c.workspace("dis");
    let r = c.cli(&[
        "config",
        "-w",
        &w,
        "--format",
        "json",
        "--disable-auto-cleanup",
    ]);
    let v = json(&r.stdout);
    expect(
        r.code() == Some(0)
            && parse_policy(&r.stdout) == PolicyView::Disabled
            && v["local"]["auto_cleanup"] == false,
        "`config -w WS --format json --disable-auto-cleanup`",
        "exit 0, effective.is_disabled true, local.auto_cleanup false",
        &r,
    );
}

#[test]
fn config_workspace_reset_restores_inheritance() {
    let Some(c) = Compat::native("compat-cfg-reset") else {
        return;
    };
    let w = c.workspace("reset");
    let set = c.cli(&[
        "config",
        "-w",
        &w,
        "--enable-auto-cleanup",
        "--auto-cleanup-keep",
        "3",
    ]);
    expect(
        set.code() == Some(0),
        "config -w WS --enable-auto-cleanup --auto-cleanup-keep 3 (setup)",
        "exit 0",
        &set,
    );
    let r = c.cli(&["config", "-w", &w, "--format", "json", "--reset"]);
    let v = json(&r.stdout);
    expect(
        r.code() == Some(0)
            && v["local"]["auto_cleanup"].is_null()
            && v["local"]["auto_cleanup_keep"].is_null()
            && v["effective"]["auto_cleanup"] == v["global"]["auto_cleanup"]
            && v["effective"]["auto_cleanup_keep"] == v["global"]["auto_cleanup_keep"],
        "`config -w WS --format json --reset` (the plugins' \"unset\")",
        "exit 0; local values null and effective == global",
        &r,
    );
    let d = dropin(&c, &w);
    expect(
        d.contains(&w) && !d.lines().any(|l| l.replace(' ', "").starts_with("keep=")),
        "the drop-in after --reset",
        &format!("still declares the workspace, without a keep override; it holds:\n{d}"),
        &r,
    );
}

#[test]
fn config_refuses_mixed_scopes_and_global_only_flags_on_a_workspace() {
    let Some(c) = Compat::native("compat-cfg-refuse") else {
        return;
    };
    let w = c.workspace("ref");
    let view = c.cli(&["config", "-w", &w]);
    expect(
        view.code() == Some(0),
        "`config -w WS` (precondition: the scoped form exists, so the refusals below mean something)",
        "exit 0",
        &view,
    );
    for argv in [
        vec!["config", "-w", w.as_str(), "--auto-cleanup-interval", "60"],
        vec!["config", "-w", w.as_str(), "--health-check-interval", "60"],
        vec!["config", "-w", w.as_str(), "--img-size", "2"],
        vec!["config", "-w", w.as_str(), "--img-max-percent", "50"],
        vec!["config", "-g", "--reset"],
        vec!["config", "--reset"],
        vec!["config", "-g", "-w", w.as_str()],
        vec![
            "config",
            "-w",
            w.as_str(),
            "--enable-auto-cleanup",
            "--disable-auto-cleanup",
        ],
        vec!["config", "-w", w.as_str(), "--auto-cleanup-keep", "7x"],
    ] {
        let r = c.cli(&argv);
        expect(
            r.code().is_some_and(|c| c != 0),
            &argv.join(" "),
            "refused with a non-zero exit (as upstream 0.5.0)",
            &r,
        );
    }
}

#[test]
fn config_unscoped_changes_are_global_as_in_0_3() {
    let Some(c) = Compat::native("compat-cfg-unscoped") else {
        return;
    };
    let r = c.cli(&[
        "config",
        "--enable-auto-cleanup",
        "--auto-cleanup-keep",
        "5",
    ]);
    expect(
        r.code() == Some(0),
        "`config --enable-auto-cleanup --auto-cleanup-keep 5` (0.3.2 Hermes/OpenClaw argv; 0.5.0 refuses it)",
        "exit 0: without a scope a change is global, as in 0.3",
        &r,
    );
    let ov = c.cli(&["config"]);
    expect(
        overview_value(&ov.stdout, "Auto-cleanup:").as_deref() == Some("enabled")
            && overview_value(&ov.stdout, "Auto-cleanup keep:").as_deref() == Some("5"),
        "`config` after the unscoped change (0.3 OpenClaw regexes)",
        "`Auto-cleanup:            enabled` and `Auto-cleanup keep:       5`",
        &ov,
    );
    let off = c.cli(&["config", "--disable-auto-cleanup"]);
    let ov = c.cli(&["config"]);
    expect(
        off.code() == Some(0)
            && overview_value(&ov.stdout, "Auto-cleanup:").as_deref() == Some("disabled"),
        "`config --disable-auto-cleanup` (0.3 plugins' \"unset\")",
        "exit 0 and the overview says disabled",
        &ov,
    );
}

#[test]
fn config_global_flags_edit_the_global_config_keeping_comments() {
    let Some(c) = Compat::native("compat-cfg-gflags") else {
        return;
    };
    let r = c.cli(&[
        "config",
        "-g",
        "--enable-auto-cleanup",
        "--auto-cleanup-keep",
        "30d",
        "--auto-cleanup-interval",
        "3600",
        "--health-check-interval",
        "120",
        "--img-size",
        "2",
        "--img-max-percent",
        "50",
    ]);
    expect(
        r.code() == Some(0),
        "`config -g` with every 0.3 global flag",
        "exit 0",
        &r,
    );
    let j = c.cli(&["config", "-g", "--format", "json"]);
    let v = json(&j.stdout);
    expect(
        v["auto_cleanup"] == true
            && v["auto_cleanup_keep"] == serde_json::json!({"mode": "age", "raw": "30d", "secs": 2592000})
            && v["auto_cleanup_interval_secs"] == 3600
            && v["health_check_interval_secs"] == 120
            && v["img_size_gb"] == 2
            && v["img_max_percent"] == 50.0,
        "`config -g --format json` after the global edit",
        "auto_cleanup true, keep age 30d, interval 3600, health 120, img_size_gb 2, img_max_percent 50",
        &j,
    );
    let cfg = fs::read_to_string(&c.env.config).unwrap_or_default();
    expect(
        cfg.contains("# written by the ws-ckpt integration-test harness"),
        "the global config file after `config -g` edits",
        "its comments kept (a comment-preserving edit of the desired state)",
        &r,
    );
    let valid = c.cli(&["config", "validate"]);
    expect(
        valid.code() == Some(0),
        "config validate after the global edit",
        "exit 0",
        &valid,
    );
}

#[test]
fn config_owner_changes_own_policy_only_and_learns_nothing_of_others() {
    let Some(c) = Compat::native("compat-cfg-owner") else {
        return;
    };
    let user = CompatUser::new(1);
    let mine = c.plain_dir("mine");
    user.chown(&mine);
    let theirs = c.workspace("roots");
    let r = c.cli_as(user.uid, user.gid, &["init", &mine]);
    expect(
        r.code() == Some(0),
        "init -w OWN_DIR as its owner (user_init)",
        "exit 0",
        &r,
    );

    let own = c.cli_as(
        user.uid,
        user.gid,
        &[
            "config",
            "-w",
            &mine,
            "--format",
            "json",
            "--enable-auto-cleanup",
            "--auto-cleanup-keep",
            "3",
        ],
    );
    expect(
        own.code() == Some(0) && parse_policy(&own.stdout) == PolicyView::Count(3),
        "the owner changes its own workspace's policy through the daemon",
        "exit 0 and effective count 3",
        &own,
    );
    let global = c.cli_as(
        user.uid,
        user.gid,
        &["config", "-g", "--enable-auto-cleanup"],
    );
    expect(
        global.code().is_some_and(|c| c != 0),
        "`config -g --enable-auto-cleanup` as an unprivileged user",
        "refused: global changes need root",
        &global,
    );
    let other = c.cli_as(
        user.uid,
        user.gid,
        &["config", "-w", &theirs, "--format", "json"],
    );
    let nowhere = c.env.home.join("no-such-ws").display().to_string();
    let none = c.cli_as(
        user.uid,
        user.gid,
        &["config", "-w", &nowhere, "--format", "json"],
    );
    let norm = |r: &Run, p: &str| r.stderr.replace(p, "<path>");
    expect(
        other.code().is_some_and(|c| c != 0)
            && other.code() == none.code()
            && norm(&other, &theirs) == norm(&none, &nowhere)
            && openclaw_error_class(&other.stderr) == "workspace-not-found",
        "`config -w ROOTS_WORKSPACE` as another user (SPEC §7.2: learn nothing of others' workspaces)",
        &format!(
            "the same \"workspace not found\" answer as for a path that is no workspace; for the missing one it was:\n{}",
            none.describe()
        ),
        &other,
    );
    let ov = c.cli_as(user.uid, user.gid, &["config", "--format", "json"]);
    expect(
        json(&ov.stdout)["workspaces"]["total"] == 1,
        "`config --format json` overview as an unprivileged user",
        "counts only the caller's own workspaces (1), not root's",
        &ov,
    );
}
