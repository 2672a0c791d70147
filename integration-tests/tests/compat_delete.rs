//! Upstream drop-in (issue 11, `docs/compat.md` § delete): the delete argv of every client
//! (`-s ID -w WS --force`, `--workspace WS --snapshot ID --force`, `-s ID --force` with a
//! globally unique ID), an unpinned snapshot deleted without `--force` as upstream does, a
//! pinned one asking on a terminal (refused without one), and `snapshot not found`.

use ws_ckpt_integration_tests::compat_support::{
    expect, extract_timing, hermes_error_class, openclaw_error_class, Compat,
};

fn listed(c: &Compat, ws: &str, id: &str) -> bool {
    let r = c.cli(&["list", "-w", ws, "--format", "table"]);
    r.stdout
        .lines()
        .any(|l| l.split_whitespace().any(|w| w == id))
}

#[test]
fn delete_with_force_in_every_client_argv() {
    let Some(c) = Compat::native("compat-del-argv") else {
        return;
    };
    let w = c.workspace("argv");
    for id in ["d1", "d2", "d3"] {
        c.checkpoint(&w, id);
    }
    for (who, id, argv) in [
        (
            "Hermes tool / e2e.sh",
            "d1",
            vec!["delete", "-s", "d1", "-w", w.as_str(), "--force"],
        ),
        (
            "OpenClaw",
            "d2",
            vec![
                "delete",
                "--workspace",
                w.as_str(),
                "--snapshot",
                "d2",
                "--force",
            ],
        ),
        (
            "skill (unique ID, no -w)",
            "d3",
            vec!["delete", "-s", "d3", "--force"],
        ),
    ] {
        let r = c.cli(&argv);
        expect(
            r.code() == Some(0) && !listed(&c, &w, id) && extract_timing(&r.stdout).is_some(),
            &format!("delete argv of {who}"),
            &format!("exit 0, {id} gone from the list, and the `Completed in …` line"),
            &r,
        );
    }
}

#[test]
fn delete_of_an_unpinned_snapshot_needs_no_force() {
    let Some(c) = Compat::native("compat-del-noforce") else {
        return;
    };
    let w = c.workspace("plain");
    c.checkpoint(&w, "u1");
    let r = c.cli(&["delete", "-w", &w, "-s", "u1"]);
    expect(
        r.code() == Some(0) && !listed(&c, &w, "u1"),
        "delete -w WS -s ID of an unpinned snapshot without --force and without a terminal",
        "exit 0 and the snapshot deleted (upstream asks only for pinned snapshots)",
        &r,
    );
}

#[test]
fn delete_of_a_pinned_snapshot_asks_on_a_terminal() {
    let Some(c) = Compat::native("compat-del-prompt") else {
        return;
    };
    let w = c.workspace("pinned");
    let r = c.cli(&["checkpoint", "-w", &w, "-s", "p1", "--pin"]);
    expect(
        r.code() == Some(0),
        "checkpoint --pin (setup)",
        "exit 0",
        &r,
    );

    let no_tty = c.cli(&["delete", "-w", &w, "-s", "p1"]);
    expect(
        no_tty.code().is_some_and(|c| c != 0)
            && listed(&c, &w, "p1")
            && format!("{}{}", no_tty.stdout, no_tty.stderr).contains("--force"),
        "delete of a pinned snapshot without --force, stdin not a terminal",
        "a non-zero exit naming --force; the snapshot kept",
        &no_tty,
    );
    let declined = c.cli_tty(&["delete", "-w", &w, "-s", "p1"], "n\n");
    expect(
        listed(&c, &w, "p1"),
        "delete of a pinned snapshot on a terminal, answering n",
        "the snapshot kept",
        &declined,
    );
    let confirmed = c.cli_tty(&["delete", "-w", &w, "-s", "p1"], "y\n");
    expect(
        confirmed.code() == Some(0) && !listed(&c, &w, "p1"),
        "delete of a pinned snapshot on a terminal, answering y (upstream: ConfirmationRequired, then `[y/N]` and a forced retry)",
        "exit 0 and the snapshot deleted",
        &confirmed,
    );
}

#[test]
fn delete_of_an_unknown_snapshot_is_snapshot_not_found() {
    let Some(c) = Compat::native("compat-del-unknown") else {
        return;
    };
    let w = c.workspace("unknown");
    c.checkpoint(&w, "real");
    for argv in [
        vec!["delete", "-s", "ghost", "-w", w.as_str(), "--force"],
        vec!["delete", "-s", "ghost", "--force"],
    ] {
        let r = c.cli(&argv);
        expect(
            r.code() == Some(1)
                && openclaw_error_class(&r.stderr) == "snapshot-not-found"
                && hermes_error_class(&r.stderr) == "snapshot-not-found",
            &argv.join(" "),
            "exit 1 and stderr containing \"not found\" and \"snapshot\"",
            &r,
        );
    }
}
