//! Upstream drop-in (issue 11, `docs/compat.md` § recover): `recover` (upstream's name for
//! release) with `-w PATH|WS_ID`, `--all`, `--force`, the confirmation prompt naming the
//! snapshot count and read from stdin (`echo y |`), "Recover failed for i/n" with a non-zero
//! exit, repair of a registration whose symlink was deleted, and detached-workspace errors
//! that point at `ws-ckpt recover` — the e2e.sh scenarios, one test each.

use std::fs;
use std::path::Path;

use ws_ckpt_integration_tests::compat_support::{expect, snapshot_dirs, ws_id_for, Compat};
use ws_ckpt_integration_tests::TestEnv;

fn seed(c: &Compat, name: &str) -> String {
    let p = c.env.home.join(name);
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join("seed.txt"), "seed\n").unwrap();
    let p = p.display().to_string();
    let r = c.cli(&["init", &p]);
    expect(r.code() == Some(0), "init PATH (setup)", "exit 0", &r);
    p
}

fn is_plain_dir(p: &str) -> bool {
    let p = Path::new(p);
    p.is_dir() && !p.is_symlink()
}

fn seed_content(p: &str) -> String {
    fs::read_to_string(format!("{p}/seed.txt")).unwrap_or_default()
}

/// Replace the workspace symlink by a plain directory holding `f.txt` = "user-data".
fn detach_by_directory(p: &str) {
    fs::remove_file(p).expect("remove the symlink");
    fs::create_dir(p).expect("mkdir");
    fs::write(format!("{p}/f.txt"), "user-data\n").expect("write f.txt");
}

#[test]
fn recover_with_force_turns_the_workspace_back_into_a_directory() {
    let Some(c) = Compat::native("compat-rec-force") else {
        return;
    };
    let p = c.workspace("force");
    c.checkpoint(&p, "r1");
    c.checkpoint(&p, "r2");
    let before = TestEnv::tree_digest(Path::new(&p));
    let r = c.cli(&["recover", "-w", &p, "--force"]);
    expect(
        r.code() == Some(0)
            && is_plain_dir(&p)
            && TestEnv::tree_digest(Path::new(&p)) == before
            && snapshot_dirs(&c.env.mount, &ws_id_for(&p)).is_empty(),
        "recover -w PATH --force (upstream's release)",
        "exit 0; PATH a plain directory with the same content; its snapshots removed",
        &r,
    );
}

#[test]
fn recover_prompt_shows_the_snapshot_count_and_reads_stdin() {
    let Some(c) = Compat::native("compat-rec-prompt") else {
        return;
    };
    let p = seed(&c, "byid-ws");
    c.checkpoint(&p, "byid-snap1");
    c.checkpoint(&p, "byid-snap2");
    let id = ws_id_for(&p);
    let r = c.cli_stdin(&["recover", "-w", &id], "y\n");
    let all = format!("{}{}", r.stdout, r.stderr);
    expect(
        all.contains("2 snapshots"),
        "`echo y | ws-ckpt recover -w WS_ID` (e2e: confirm prompt shows real snapshot count)",
        "the prompt text contains \"2 snapshots\" (upstream: `Workspace: <path> (2 snapshots)`)",
        &r,
    );
    expect(
        r.code() == Some(0) && is_plain_dir(&p) && seed_content(&p) == "seed\n",
        "`echo y | ws-ckpt recover -w WS_ID` (e2e: workspace restored to plain directory)",
        "exit 0; PATH a plain directory holding seed.txt",
        &r,
    );
}

#[test]
fn recover_prompt_declined_keeps_the_workspace() {
    let Some(c) = Compat::native("compat-rec-decline") else {
        return;
    };
    let p = seed(&c, "keep");
    c.checkpoint(&p, "k1");
    let r = c.cli_stdin(&["recover", "-w", &p], "n\n");
    expect(
        r.code() == Some(0)
            && Path::new(&p).is_symlink()
            && snapshot_dirs(&c.env.mount, &ws_id_for(&p)) == ["k1"],
        "`echo n | ws-ckpt recover -w PATH`",
        "exit 0 (\"Operation cancelled.\"), the workspace and its snapshot kept",
        &r,
    );
}

#[test]
fn recover_repairs_a_registration_whose_symlink_was_deleted() {
    let Some(c) = Compat::native("compat-rec-missing") else {
        return;
    };
    let p = seed(&c, "missing-ws");
    fs::remove_file(&p).expect("rm the workspace symlink");
    let r = c.cli(&["recover", "-w", &p, "--force"]);
    expect(
        r.code() == Some(0),
        "recover -w PATH --force after `rm PATH` (e2e: recover -w repairs deleted-symlink registration)",
        "exit 0",
        &r,
    );
    expect(
        is_plain_dir(&p) && seed_content(&p) == "seed\n",
        "recover -w PATH after `rm PATH` (e2e: restored subvolume contents at the path)",
        "PATH a plain directory holding seed.txt",
        &r,
    );
}

#[test]
fn recover_all_reports_the_failed_count_and_exits_nonzero() {
    let Some(c) = Compat::native("compat-rec-all") else {
        return;
    };
    let healthy = seed(&c, "workspace");
    let detached = seed(&c, "detached-ws");
    let r = c.cli(&["checkpoint", "-w", &detached, "-i", "pre-detach"]);
    expect(r.code() == Some(0), "checkpoint (setup)", "exit 0", &r);
    detach_by_directory(&detached);
    let r = c.cli(&["recover", "--all", "--force"]);
    expect(
        format!("{}{}", r.stdout, r.stderr).contains("Recover failed for 1/2"),
        "recover --all --force with one healthy and one detached workspace (e2e)",
        "the report line \"Recover failed for 1/2 …\"",
        &r,
    );
    expect(
        r.code().is_some_and(|c| c != 0),
        "recover --all --force when one workspace fails (e2e, upstream #3069)",
        "a non-zero exit",
        &r,
    );
    expect(
        is_plain_dir(&healthy) && seed_content(&healthy) == "seed\n",
        "recover --all still recovers the healthy workspace (e2e)",
        "the healthy workspace a plain directory with its data",
        &r,
    );
    expect(
        fs::read_to_string(format!("{detached}/f.txt")).unwrap_or_default() == "user-data\n"
            && snapshot_dirs(&c.env.mount, &ws_id_for(&detached)) == ["pre-detach"],
        "recover --all and the detached workspace",
        "the user's replacement directory untouched and the workspace's snapshot kept for a retry",
        &r,
    );
}

#[test]
fn recover_needs_a_target() {
    let Some(c) = Compat::native("compat-rec-target") else {
        return;
    };
    let r = c.cli(&["recover"]);
    expect(
        r.code().is_some_and(|c| c != 0) && !r.stderr.contains("unrecognized subcommand"),
        "recover without -w or --all",
        "a non-zero exit (upstream: either --workspace/-w or --all must be specified)",
        &r,
    );
    let both = c.cli(&["recover", "-w", "/x", "--all"]);
    expect(
        both.code().is_some_and(|c| c != 0) && !both.stderr.contains("unrecognized subcommand"),
        "recover -w X --all",
        "refused (mutually exclusive)",
        &both,
    );
}

#[test]
fn detached_workspace_operations_fail_and_point_at_recover() {
    let Some(c) = Compat::native("compat-rec-detached") else {
        return;
    };
    let d = seed(&c, "detached-ws");
    let r = c.cli(&["checkpoint", "-w", &d, "-i", "pre-detach"]);
    expect(r.code() == Some(0), "checkpoint (setup)", "exit 0", &r);
    detach_by_directory(&d);
    let ck = c.cli(&["checkpoint", "-w", &d, "-i", "post-detach"]);
    expect(
        ck.code().is_some_and(|c| c != 0)
            && format!("{}{}", ck.stdout, ck.stderr).contains("ws-ckpt recover"),
        "checkpoint of a detached workspace (e2e: checkpoint refuses; error points at recover)",
        "a non-zero exit whose output contains \"ws-ckpt recover\"",
        &ck,
    );
    for (what, argv) in [
        (
            "rollback",
            vec!["rollback", "-w", d.as_str(), "-s", "pre-detach"],
        ),
        ("list -w", vec!["list", "-w", d.as_str()]),
        ("diff", vec!["diff", "-w", d.as_str(), "-f", "pre-detach"]),
    ] {
        let r = c.cli(&argv);
        expect(
            r.code().is_some_and(|c| c != 0)
                && format!("{}{}", r.stdout, r.stderr).contains("ws-ckpt recover"),
            &format!("{what} of a detached workspace (e2e: {what} refuses)"),
            "a non-zero exit naming `ws-ckpt recover`",
            &r,
        );
    }
    let content = fs::read_to_string(format!("{d}/f.txt")).unwrap_or_default();
    assert_eq!(
        content, "user-data\n",
        "COMPAT detached: refused ops leave the user's directory untouched"
    );
}
