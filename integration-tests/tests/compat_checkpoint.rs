//! Upstream drop-in (issue 11, `docs/compat.md` § checkpoint, § snapshot IDs): the checkpoint
//! argv of every upstream client (0.3 `--id/-i`, 0.4+ `--snapshot/-s`, `--message`,
//! `--metadata`, the cron line), the `Completed in …` line OpenClaw appends to its replies, the
//! `already exists` phrase, auto-init of a plain directory, generated IDs and upstream's
//! snapshot-ID rules.

use std::path::Path;

use ws_ckpt_integration_tests::compat_support::{
    expect, extract_timing, hermes_error_class, hermes_output, openclaw_error_class, snapshot_dirs,
    strip_ansi, ws_id_for, Compat,
};

#[test]
fn checkpoint_accepts_every_upstream_argv_form() {
    let Some(c) = Compat::native("compat-ckpt-argv") else {
        return;
    };
    let w = c.workspace("argv");
    let forms: Vec<(&str, Vec<&str>)> = vec![
        (
            "OpenClaw/Hermes hooks (0.4+)",
            vec![
                "checkpoint",
                "--workspace",
                &w,
                "--snapshot",
                "a1b2c3d4",
                "--message",
                "session start",
                "--metadata",
                r#"{"auto":true,"type":"initial"}"#,
            ],
        ),
        (
            "Hermes tool",
            vec![
                "checkpoint",
                "-w",
                &w,
                "-s",
                "t-2",
                "-m",
                "manual checkpoint",
            ],
        ),
        (
            "0.3 plugins (--id)",
            vec![
                "checkpoint",
                "--workspace",
                &w,
                "--id",
                "legacy-3",
                "--message",
                "m",
            ],
        ),
        (
            "e2e.sh (-i)",
            vec![
                "checkpoint",
                "-w",
                &w,
                "-i",
                "snap1",
                "-m",
                "first snapshot",
            ],
        ),
        (
            "OpenClaw/Hermes cron line",
            vec![
                "checkpoint",
                "-w",
                &w,
                "-s",
                "cron-1751364000",
                "-m",
                "scheduled snapshot",
                "--metadata",
                r#"{"auto":true,"type":"cron"}"#,
            ],
        ),
    ];
    for (who, argv) in &forms {
        let r = c.cli(argv);
        expect(
            r.code() == Some(0),
            &format!("checkpoint argv of {who}"),
            "exit 0",
            &r,
        );
    }
    let table = c.cli(&["list", "-w", &w]);
    for id in ["a1b2c3d4", "t-2", "legacy-3", "snap1", "cron-1751364000"] {
        expect(
            table.stdout.contains(id),
            "list -w WS after the upstream checkpoint forms",
            &format!("the table names snapshot {id}"),
            &table,
        );
    }
}

#[test]
fn checkpoint_rollback_and_delete_print_the_completed_in_line() {
    let Some(c) = Compat::native("compat-ckpt-timing") else {
        return;
    };
    let w = c.workspace("timing");
    for (what, argv) in [
        (
            "checkpoint",
            vec!["checkpoint", "--workspace", &w, "--snapshot", "c1"],
        ),
        (
            "rollback",
            vec!["rollback", "--workspace", &w, "--snapshot", "c1"],
        ),
        (
            "delete",
            vec!["delete", "--workspace", &w, "--snapshot", "c1", "--force"],
        ),
    ] {
        let r = c.cli(&argv);
        expect(
            r.code() == Some(0) && extract_timing(&r.stdout).is_some(),
            &format!("{what}: upstream's timing line (OpenClaw appends it to its tool reply)"),
            "exit 0 and a stdout line `Completed in <secs>s` (matched by /^(Completed in .+|Failed after .+)$/m)",
            &r,
        );
    }
}

#[test]
fn checkpoint_with_a_duplicate_id_says_already_exists() {
    let Some(c) = Compat::native("compat-ckpt-dup") else {
        return;
    };
    let w = c.workspace("dup");
    c.checkpoint(&w, "same");
    let r = c.cli(&["checkpoint", "--workspace", &w, "--snapshot", "same"]);
    expect(
        r.code() == Some(1)
            && openclaw_error_class(&r.stderr) == "already-exists"
            && hermes_error_class(&r.stderr) == "already-exists",
        "checkpoint with an ID that exists",
        "exit 1 and stderr containing \"already exists\"",
        &r,
    );
    expect(
        hermes_output(&r).contains("already exists"),
        "a failed checkpoint as the Hermes tool reports it (stdout if non-empty, else stderr)",
        "stdout empty (or itself naming the error) so the agent sees \"already exists\"",
        &r,
    );
}

#[test]
fn checkpoint_of_a_plain_directory_initializes_it() {
    let Some(c) = Compat::native("compat-ckpt-autoinit") else {
        return;
    };
    let p = c.plain_dir("fresh");
    let r = c.cli(&["checkpoint", "--workspace", &p, "--snapshot", "first"]);
    expect(
        r.code() == Some(0) && Path::new(&p).is_symlink(),
        "checkpoint of a directory that is not a workspace yet (upstream auto-init)",
        "exit 0, the directory became a workspace",
        &r,
    );
    let l = c.cli(&["list", "-w", &p]);
    expect(
        l.stdout.contains("first"),
        "list after the auto-init checkpoint",
        "the snapshot `first` is listed",
        &l,
    );
}

#[test]
fn checkpoint_without_an_id_generates_one_and_prints_it() {
    let Some(c) = Compat::native("compat-ckpt-autoid") else {
        return;
    };
    let w = c.workspace("autoid");
    let r = c.cli(&["checkpoint", "-w", &w, "-m", "no id"]);
    expect(
        r.code() == Some(0),
        "checkpoint -w WS without -s",
        "exit 0",
        &r,
    );
    let id = strip_ansi(&r.stdout)
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with("Completed in"))
        .and_then(|l| l.split_whitespace().last().map(str::to_string))
        .unwrap_or_default();
    let d = c.cli(&["diff", "-w", &w, "-f", &id]);
    expect(
        !id.is_empty() && d.code() == Some(0),
        "the generated snapshot ID on checkpoint's first stdout line (upstream: `✓ Checkpoint created: <id>`)",
        &format!("the last word of the first line ({id:?}) names a snapshot that diff accepts"),
        &d,
    );
}

#[test]
fn snapshot_ids_accept_what_upstream_accepts() {
    let Some(c) = Compat::native("compat-ckpt-ids-ok") else {
        return;
    };
    let w = c.workspace("ids");
    let long = "x".repeat(255);
    let ids: Vec<&str> = vec![
        "before refactor",
        "重构前备份",
        "v1.2.3",
        "snap-1751364000123",
        "ckpt-20260701T100000.123",
        "UPPER_lower-09",
        "a:b@c#d+e=f,g",
        &long,
    ];
    for id in &ids {
        let r = c.cli(&["checkpoint", "-w", &w, "-s", id]);
        expect(
            r.code() == Some(0),
            &format!("checkpoint with snapshot ID {id:?} (upstream: any UTF-8 without / \\ NUL, not ./.., spaces and CJK allowed, up to 255 bytes)"),
            "exit 0",
            &r,
        );
        let d = c.cli(&["diff", "-w", &w, "-f", id]);
        expect(
            d.code() == Some(0),
            &format!("diff -f {id:?} (the ID must stay addressable)"),
            "exit 0",
            &d,
        );
    }
    let r = c.cli(&["delete", "-w", &w, "-s", "before refactor", "--force"]);
    expect(
        r.code() == Some(0),
        "delete of the ID with a space",
        "exit 0",
        &r,
    );
}

#[test]
fn snapshot_ids_refuse_unsafe_names_before_touching_anything() {
    let Some(c) = Compat::native("compat-ckpt-ids-bad") else {
        return;
    };
    let w = c.workspace("bad");
    c.checkpoint(&w, "keep");
    let ws_id = ws_id_for(&w);
    let before = snapshot_dirs(&c.env.mount, &ws_id);
    let too_long = "y".repeat(256);
    for id in [
        "a/b",
        "../../x",
        "a\\b",
        ".",
        "..",
        "",
        "   ",
        "tab\tin",
        "nl\nin",
        "esc\u{1b}[31m",
        ".hidden",
        too_long.as_str(),
    ] {
        let r = c.cli(&["checkpoint", "-w", &w, "-s", id]);
        expect(
            r.code().is_some_and(|c| c != 0),
            &format!("checkpoint with unsafe snapshot ID {id:?}"),
            "a non-zero exit (validated before any path is built)",
            &r,
        );
        let now = snapshot_dirs(&c.env.mount, &ws_id);
        expect(
            now == before,
            &format!("snapshots after refusing {id:?}"),
            &format!("unchanged: {before:?}"),
            &r,
        );
    }
    for stray in [c.env.mount.join("x"), c.env.root.join("x")] {
        assert!(
            !stray.exists(),
            "COMPAT unsafe snapshot IDs\nexpected: nothing created outside the snapshot \
             directory\ngot: {} exists",
            stray.display()
        );
    }
}
