//! Upstream drop-in (issue 11, `docs/compat.md` § rollback): `rollback -s ID` (also a unique
//! prefix), `-n/--num-ancestors N` along the lineage (`-n 1` = the snapshot the live
//! workspace descends from, `-n 2` its parent, …), `--preview` (what would change, nothing
//! done, allowed while a process is inside), the cwd refusal phrase and `snapshot not found`.

use std::fs;
use std::path::Path;

use ws_ckpt_integration_tests::compat_support::{
    expect, hermes_error_class, openclaw_error_class, strip_ansi, Compat,
};
use ws_ckpt_integration_tests::TestEnv;

fn write(ws: &str, content: &str) {
    fs::write(format!("{ws}/file1.txt"), content).expect("write file1.txt");
}

fn read(ws: &str) -> String {
    fs::read_to_string(format!("{ws}/file1.txt")).unwrap_or_else(|e| format!("<unreadable: {e}>"))
}

#[test]
fn rollback_to_a_snapshot_restores_its_content() {
    let Some(c) = Compat::native("compat-rb-basic") else {
        return;
    };
    let w = c.workspace("basic");
    write(&w, "hello world\n");
    let r = c.cli(&[
        "checkpoint",
        "-w",
        &w,
        "-i",
        "snap1",
        "-m",
        "first snapshot",
    ]);
    expect(
        r.code() == Some(0),
        "checkpoint -i snap1 (e2e)",
        "exit 0",
        &r,
    );
    fs::write(format!("{w}/file1.txt"), "hello world\nmodified\n").unwrap();
    let r = c.cli(&[
        "checkpoint",
        "-w",
        &w,
        "-i",
        "snap2",
        "-m",
        "after modification",
    ]);
    expect(
        r.code() == Some(0),
        "checkpoint -i snap2 (e2e)",
        "exit 0",
        &r,
    );
    let r = c.cli(&["rollback", "-w", &w, "-s", "snap1"]);
    expect(
        r.code() == Some(0) && read(&w) == "hello world\n",
        "rollback -w WS -s snap1 (e2e `rollback restored file content`)",
        "exit 0 and file1.txt back to \"hello world\"",
        &r,
    );
}

#[test]
fn rollback_num_ancestors_counts_back_along_the_lineage() {
    let Some(c) = Compat::native("compat-rb-ancestors") else {
        return;
    };
    let w = c.workspace("anc");
    write(&w, "v1\n");
    c.checkpoint(&w, "c1");
    write(&w, "v2\n");
    c.checkpoint(&w, "c2");
    write(&w, "v3 (live, never checkpointed)\n");
    let r = c.cli(&["rollback", "-w", &w, "-n", "1"]);
    expect(
        r.code() == Some(0) && read(&w) == "v2\n",
        "rollback -n 1 (Hermes/OpenClaw: \"undo the last turn\")",
        "exit 0 and the content of c2, the snapshot the live workspace descends from",
        &r,
    );
    let r = c.cli(&["rollback", "--workspace", &w, "--num-ancestors", "2"]);
    expect(
        r.code() == Some(0) && read(&w) == "v1\n",
        "rollback --num-ancestors 2 (OpenClaw argv) after rolling back to c2",
        "exit 0 and the content of c1 (c2's parent)",
        &r,
    );
    write(&w, "scribble\n");
    let r = c.cli(&["rollback", "-w", &w, "-n", "1"]);
    expect(
        r.code() == Some(0) && read(&w) == "v1\n",
        "rollback -n 1 after a rollback to c1",
        "the rollback target became the head: content of c1",
        &r,
    );
}

#[test]
fn rollback_num_ancestors_follows_parents_not_creation_order() {
    let Some(c) = Compat::native("compat-rb-lineage") else {
        return;
    };
    let w = c.workspace("lineage");
    write(&w, "v1\n");
    c.checkpoint(&w, "c1");
    write(&w, "v2\n");
    c.checkpoint(&w, "c2");
    let r = c.cli(&["rollback", "-w", &w, "-s", "c1"]);
    expect(r.code() == Some(0), "rollback -s c1 (setup)", "exit 0", &r);
    write(&w, "v3\n");
    c.checkpoint(&w, "c3");
    let r = c.cli(&["rollback", "-w", &w, "-n", "2"]);
    expect(
        r.code() == Some(0) && read(&w) == "v1\n",
        "rollback -n 2 where c3 was taken after rolling back to c1",
        "content of c1: c3's parent is c1 (the head when c3 was taken), not the newer c2",
        &r,
    );
}

#[test]
fn rollback_num_ancestors_beyond_the_lineage_fails_and_changes_nothing() {
    let Some(c) = Compat::native("compat-rb-beyond") else {
        return;
    };
    let w = c.workspace("beyond");
    c.checkpoint(&w, "only");
    write(&w, "live\n");
    let one = c.cli(&["rollback", "-w", &w, "-n", "1", "--preview"]);
    expect(
        one.code() == Some(0),
        "rollback -n 1 --preview with a single snapshot (precondition: -n exists)",
        "exit 0",
        &one,
    );
    let before = TestEnv::tree_digest(Path::new(&w));
    let r = c.cli(&["rollback", "-w", &w, "-n", "2"]);
    expect(
        r.code().is_some_and(|c| c != 0) && TestEnv::tree_digest(Path::new(&w)) == before,
        "rollback -n 2 with a single snapshot",
        "a non-zero exit and the workspace untouched",
        &r,
    );
    let zero = c.cli(&["rollback", "-w", &w, "-n", "0"]);
    expect(
        zero.code().is_some_and(|c| c != 0),
        "rollback -n 0",
        "refused (N must be >= 1)",
        &zero,
    );
    let both = c.cli(&["rollback", "-w", &w, "-n", "1", "-s", "only"]);
    expect(
        both.code().is_some_and(|c| c != 0),
        "rollback -n 1 -s ID",
        "refused (-s and -n are mutually exclusive)",
        &both,
    );
}

#[test]
fn rollback_preview_shows_the_changes_and_changes_nothing() {
    let Some(c) = Compat::native("compat-rb-preview") else {
        return;
    };
    let w = c.workspace("preview");
    c.checkpoint(&w, "base");
    fs::write(format!("{w}/README.txt"), "changed after base\n").unwrap();
    fs::write(format!("{w}/new-file.txt"), "new\n").unwrap();
    let before = TestEnv::tree_digest(Path::new(&w));
    let list_before = c.cli(&["list", "-w", &w]).stdout;
    let occupant = c.occupant(&w);
    for argv in [
        vec!["rollback", "-w", w.as_str(), "-s", "base", "--preview"],
        vec![
            "rollback",
            "--workspace",
            w.as_str(),
            "--num-ancestors",
            "1",
            "--preview",
        ],
    ] {
        let r = c.cli(&argv);
        let out = strip_ansi(&r.stdout);
        expect(
            r.code() == Some(0) && out.contains("README.txt") && out.contains("new-file.txt"),
            &format!("{} (Hermes/OpenClaw preview=true; no cwd guard, as upstream)", argv.join(" ")),
            "exit 0 with a process inside, and stdout naming the changed paths README.txt and new-file.txt",
            &r,
        );
        expect(
            TestEnv::tree_digest(Path::new(&w)) == before
                && c.cli(&["list", "-w", &w]).stdout == list_before,
            "rollback --preview",
            "the workspace and its snapshot list unchanged",
            &r,
        );
    }
    drop(occupant);
}

#[test]
fn rollback_refuses_while_a_process_has_its_cwd_inside() {
    let Some(c) = Compat::native("compat-rb-cwd") else {
        return;
    };
    let w = c.workspace("cwd");
    c.checkpoint(&w, "c1");
    write(&w, "changed\n");
    let occupant = c.occupant(&w);
    let r = c.cli(&["rollback", "--workspace", &w, "--snapshot", "c1"]);
    expect(
        r.code().is_some_and(|c| c != 0)
            && openclaw_error_class(&r.stderr) == "cwd-occupied"
            && hermes_error_class(&r.stderr) == "cwd-occupied"
            && read(&w) == "changed\n",
        "rollback while a process has its cwd inside",
        "a non-zero exit, stderr containing \"have cwd inside workspace\", content unchanged",
        &r,
    );
    drop(occupant);
}

#[test]
fn rollback_to_an_unknown_snapshot_is_snapshot_not_found() {
    let Some(c) = Compat::native("compat-rb-unknown") else {
        return;
    };
    let w = c.workspace("unknown");
    c.checkpoint(&w, "c1");
    let r = c.cli(&["rollback", "--workspace", &w, "--snapshot", "nope"]);
    expect(
        r.code() == Some(1)
            && openclaw_error_class(&r.stderr) == "snapshot-not-found"
            && hermes_error_class(&r.stderr) == "snapshot-not-found",
        "rollback to an ID that does not exist",
        "exit 1; stderr containing \"not found\" and \"snapshot\" (upstream: `snapshot not found: nope`)",
        &r,
    );
}

#[test]
fn rollback_accepts_a_unique_snapshot_prefix() {
    let Some(c) = Compat::native("compat-rb-prefix") else {
        return;
    };
    let w = c.workspace("prefix");
    write(&w, "one\n");
    c.checkpoint(&w, "before-refactor");
    write(&w, "two\n");
    c.checkpoint(&w, "after-refactor");
    let r = c.cli(&["rollback", "-w", &w, "-s", "before"]);
    expect(
        r.code() == Some(0) && read(&w) == "one\n",
        "rollback -s PREFIX (upstream resolves an exact ID first, then a unique prefix)",
        "exit 0 and the content of before-refactor",
        &r,
    );
    c.checkpoint(&w, "before-2");
    let amb = c.cli(&["rollback", "-w", &w, "-s", "before"]);
    expect(
        amb.code().is_some_and(|c| c != 0),
        "rollback -s PREFIX matching two snapshots",
        "refused as ambiguous",
        &amb,
    );
}
