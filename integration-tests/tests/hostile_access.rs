//! Hostile-user suite, who may see and do what (issue 7, attacks 7, 11, 12 and 15; SPEC §7.2,
//! §7.3): storage as private as the original, `allow_users` without release or cleanup, state
//! files 0600 in a 0700 state directory, and a caller learning nothing about workspaces it may
//! not use. Deterministic: each asserts exactly, through the real daemon, as real users.

use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use ws_ckpt_integration_tests::hostile_support::{
    all_strings, build_tree, files_containing, snapshot_ids, token, Hostile, Setup, TestUser,
    TreeSpec,
};
use ws_ckpt_integration_tests::Run;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Paths of the files holding the marker that `user` could read (one probe pass of the
/// attacker binary: every listed path, plus everything found by walking `scan`).
fn readable_by(
    h: &Hostile,
    user: &TestUser,
    paths: &[PathBuf],
    scan: &[&Path],
    marker: &str,
) -> BTreeSet<String> {
    let list: String = paths.iter().map(|p| format!("{}\n", p.display())).collect();
    let file = h.ctl_file(&format!("paths-{}", user.name), &list);
    let mut args = vec![
        "--paths-file".to_string(),
        s(&file),
        "--secret".to_string(),
        marker.to_string(),
    ];
    for d in scan {
        args.push("--scan".into());
        args.push(s(d));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let st = h.attacker_once(user, "probe", &argv);
    st["secret_hits"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Attack 7: alice's `~/proj` is private only because her home is 0700. After init and two
/// checkpoints, bob walks the whole mount and tries every path he could learn (root's and his
/// own `status`/`list` JSON, the old layouts `<mount>/<ws_id>/…` and
/// `<mount>/snapshots/<ws_id>/<id>/…`, and every copy root finds): he must read none. Alice and
/// carol (`allow_users`) must still read every copy.
#[test]
fn attack07_other_users_cannot_read_workspace_data_or_snapshots() {
    let Some(h) = Hostile::new("hostile-a07", Setup::default()) else {
        return;
    };
    let private = token("WSH-PRIVATE");
    let proj = h.alice.path("proj");
    build_tree(
        &proj,
        &h.alice,
        &TreeSpec {
            top_files: 3,
            subdirs: 2,
            files_per_dir: 3,
            tag: private.clone(),
            ..TreeSpec::default()
        },
    );
    let before = readable_by(&h, &h.bob, &[proj.join("f00000")], &[&h.env.home], &private);
    assert!(
        before.is_empty(),
        "precondition: bob can already read {before:?}"
    );

    h.as_user(&h.alice, &["init", &s(&proj)]).ok();
    // Issue 12: the symlink init leaves at her path is hers (she may remove or rename it in
    // her own directory as before), not root's.
    let link = fs::symlink_metadata(&proj).unwrap();
    assert!(
        link.file_type().is_symlink(),
        "{} is not the workspace symlink",
        proj.display()
    );
    assert_eq!(
        (link.uid(), link.gid()),
        (h.alice.uid, h.alice.gid),
        "the symlink at {} must belong to the workspace's owner",
        proj.display()
    );
    h.as_user(
        &h.alice,
        &["checkpoint", "-w", &s(&proj), "-s", "s1", "-m", "one"],
    )
    .ok();
    h.as_user(&h.alice, &["checkpoint", "-w", &s(&proj), "-s", "s2"])
        .ok();
    h.add_to_declaration(&proj, &format!("allow_users = [\"{}\"]", h.carol.name));
    let ws = h.ws_id(&proj);

    // Every copy of alice's data, found by root wherever the daemon keeps it.
    let copies = files_containing(&[&h.env.mount], &private);
    let of_first: Vec<&PathBuf> = copies.iter().filter(|p| p.ends_with("f00000")).collect();
    assert!(
        of_first.len() >= 3,
        "expected the workspace and its 2 snapshots to hold f00000 under {}, found {of_first:?}",
        h.env.mount.display()
    );

    // Every path bob could try.
    let mut candidates: Vec<PathBuf> = copies.clone();
    let mut learned: Vec<Value> = vec![
        h.root_status(),
        h.root(&["--format", "json", "list"]).json(),
    ];
    for args in [
        vec!["--format", "json", "status"],
        vec!["--format", "json", "list"],
    ] {
        let r = h.as_user(&h.bob, &args);
        if let Ok(v) = serde_json::from_str(&r.stdout) {
            learned.push(v);
        }
    }
    let rels = ["f00000", "d000/f0000", "d001/f0002"];
    for v in &learned {
        for st in all_strings(v) {
            if st.starts_with('/') {
                for r in rels {
                    candidates.push(Path::new(&st).join(r));
                }
            }
        }
        for id in snapshot_ids(v) {
            for r in rels {
                candidates.push(h.env.mount.join("snapshots").join(&ws).join(&id).join(r));
            }
        }
    }
    for r in rels {
        candidates.push(h.env.mount.join(&ws).join(r));
        candidates.push(proj.join(r));
    }

    let bob_read = readable_by(&h, &h.bob, &candidates, &[&h.env.mount], &private);
    assert!(
        bob_read.is_empty(),
        "bob (not the owner, not in allow_users) READ alice's private data at:\n  {}\n(alice's home is 0700: moving her directory into a workspace must not remove that protection)",
        bob_read.iter().cloned().collect::<Vec<_>>().join("\n  ")
    );

    let all: BTreeSet<String> = copies.iter().map(|p| s(p)).collect();
    for (who, user) in [
        ("alice (the owner)", &h.alice),
        ("carol (allow_users)", &h.carol),
    ] {
        let got = readable_by(&h, user, &copies, &[], &private);
        let missing: Vec<&String> = all.difference(&got).collect();
        assert!(
            missing.is_empty(),
            "{who} can no longer read her workspace data / snapshots at:\n  {}",
            missing
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
    let own = readable_by(&h, &h.alice, &[proj.join("f00000")], &[], &private);
    assert_eq!(
        own.len(),
        1,
        "alice cannot read {}/f00000 through her own path",
        proj.display()
    );
    h.assert_no_damage("the privacy checks");
}

/// Attack 11: carol is in `allow_users` of alice's workspace. She may checkpoint, list, diff,
/// roll back and delete single snapshots; she may not release it (that deletes every snapshot)
/// nor clean it up in bulk. Bob, not allowed, may do nothing.
#[test]
fn attack11_allow_users_cannot_release_or_bulk_delete() {
    let Some(h) = Hostile::new("hostile-a11", Setup::default()) else {
        return;
    };
    let shared = h.alice.path("shared");
    build_tree(&shared, &h.alice, &TreeSpec::default());
    h.as_user(&h.alice, &["init", &s(&shared)]).ok();
    for id in ["s1", "s2", "s3"] {
        h.as_user(&h.alice, &["checkpoint", "-w", &s(&shared), "-s", id])
            .ok();
    }
    h.add_to_declaration(&shared, &format!("allow_users = [\"{}\"]", h.carol.name));
    let ws = h.ws_id(&shared);
    let carol = |args: &[&str]| h.as_user(&h.carol, args);

    carol(&["checkpoint", "-w", &ws, "-s", "c1"]).ok();
    let l = carol(&["--format", "json", "list", "-w", &ws]);
    l.ok();
    assert!(
        snapshot_ids(&l.json()).contains(&"c1".to_string()),
        "{}",
        l.describe()
    );
    carol(&["diff", "-w", &ws, "-f", "s1"]).ok();
    carol(&["delete", "-w", &ws, "-s", "c1"]).ok();
    carol(&["rollback", "-w", &ws, "-s", "s3", "--force"]).ok();

    let snaps = || snapshot_ids(&h.root(&["--format", "json", "list", "-w", &ws]).json());
    let expect: Vec<String> = ["s1", "s2", "s3"].map(String::from).to_vec();
    let intact = |what: &str, r: &Run| {
        let now = snaps();
        assert_eq!(
            now,
            expect,
            "after {what}: alice's snapshots changed\n{}",
            r.describe()
        );
        assert!(
            fs::symlink_metadata(&shared).is_ok_and(|m| m.file_type().is_symlink()),
            "after {what}: {} is no longer a workspace\n{}",
            shared.display(),
            r.describe()
        );
    };
    let refused = |what: &str, r: Run| {
        assert_ne!(
            r.code(),
            Some(0),
            "carol (allow_users) must not be able to {what} alice's workspace (SPEC §7.2: needs the owner or root)\n{}",
            r.describe()
        );
        intact(&format!("carol's {what}"), &r);
    };
    refused("release", carol(&["release", &s(&shared)]));
    refused("clean up", carol(&["cleanup", "-w", &ws, "--keep", "1"]));
    // Nothing she asked for may happen later either (e.g. a declaration edited before refusing).
    intact("the next pass", &h.root(&["apply"]));

    let bob = h.as_user(&h.bob, &["checkpoint", "-w", &ws, "-s", "b1"]);
    assert_ne!(
        bob.code(),
        Some(0),
        "bob is not allowed\n{}",
        bob.describe()
    );
    assert_eq!(snaps(), expect);
    h.assert_no_damage("the allow_users checks");
}

/// Attack 12: the state directory must be 0700 and state.json, the indexes and journals and
/// the audit log 0600, all owned by root; bob must be able to open no file in it (image and
/// lock included).
#[test]
fn attack12_state_files_are_private() {
    let Some(h) = Hostile::new("hostile-a12", Setup::default()) else {
        return;
    };
    let secret_msg = token("WSH-MESSAGE");
    let st = h.alice.path("st");
    build_tree(&st, &h.alice, &TreeSpec::default());
    h.as_user(&h.alice, &["init", &s(&st)]).ok();
    for i in 0..3 {
        h.as_user(
            &h.alice,
            &[
                "checkpoint",
                "-w",
                &s(&st),
                "-s",
                &format!("p{i}"),
                "-m",
                &secret_msg,
                "--metadata",
                &format!("{{\"note\":\"{secret_msg}\"}}"),
            ],
        )
        .ok();
    }
    h.as_user(&h.alice, &["delete", "-w", &s(&st), "-s", "p0"])
        .ok();
    h.root(&["reload"]).ok();

    let sd = &h.env.state_dir;
    let mut problems = Vec::new();
    let mode = fs::metadata(sd).unwrap().permissions().mode() & 0o7777;
    if mode != 0o700 {
        problems.push(format!("{} is {mode:04o}, expected 0700", sd.display()));
    }
    let mut files = Vec::new();
    let mut stack = vec![sd.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let mode = m.mode() & 0o7777;
            let rel = p.strip_prefix(sd).unwrap().to_path_buf();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                // The exact requirement; anything else in the directory (lock, image)
                // is covered by the 0700 directory and by bob's attempt to read it below.
                let exact = rel == Path::new("state.json")
                    || rel == Path::new("audit.jsonl")
                    || rel.starts_with("indexes");
                if exact && mode != 0o600 {
                    problems.push(format!("{} is {mode:04o}, expected 0600", p.display()));
                }
                if m.uid() != 0 {
                    problems.push(format!("{} is owned by uid {}", p.display(), m.uid()));
                }
                files.push(p);
            }
        }
    }
    for must in ["state.json", "audit.jsonl"] {
        assert!(
            files.iter().any(|f| f.ends_with(must)),
            "precondition: no {must} in {} (files: {files:?})",
            sd.display()
        );
    }
    assert!(
        files
            .iter()
            .any(|f| f.strip_prefix(sd).is_ok_and(|r| r.starts_with("indexes"))),
        "precondition: no index under {}/indexes (files: {files:?})",
        sd.display()
    );
    let leaked = files_containing(&[sd], &secret_msg);
    assert!(
        !leaked.is_empty(),
        "precondition: the message is recorded nowhere in {}",
        sd.display()
    );
    let bob_read = readable_by(&h, &h.bob, &files, &[sd], &secret_msg);
    if !bob_read.is_empty() {
        problems.push(format!(
            "bob READ alice's message/metadata in: {}",
            bob_read.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    assert!(
        problems.is_empty(),
        "state files are not private (expected: state dir 0700, state files 0600, nothing readable by other users):\n  {}",
        problems.join("\n  ")
    );
    h.assert_no_damage("the state-file checks");
}

/// Strip what legitimately differs between two runs of the same refusal: the IDs themselves
/// and timing lines.
fn normalized(r: &Run, ids: &[&str]) -> (Option<i32>, String, String) {
    let norm = |t: &str| {
        let mut t = t.to_string();
        for id in ids {
            t = t.replace(id, "<ID>");
        }
        t.lines()
            .filter(|l| !l.contains("Completed in"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    (r.code(), norm(&r.stdout), norm(&r.stderr))
}

/// Bob's side of attack 15: a workspace with snapshots `o-snap-1` and `shared-id`, then a
/// host-wide finding about it (his workspace path is now occupied by a plain directory).
/// Returns his ws_id and the strings that must never reach alice.
fn bob_with_a_finding(h: &Hostile) -> (String, Vec<String>) {
    let marker = token("o-private");
    let bp = h.bob.path(&marker);
    build_tree(&bp, &h.bob, &TreeSpec::default());
    h.as_user(&h.bob, &["init", &s(&bp)]).ok();
    h.as_user(&h.bob, &["checkpoint", "-w", &s(&bp), "-s", "o-snap-1"])
        .ok();
    h.as_user(&h.bob, &["checkpoint", "-w", &s(&bp), "-s", "shared-id"])
        .ok();
    let bob_ws = h.ws_id(&bp);
    // The daemon may re-create the removed symlink (repair-symlink) between the rm and the
    // mkdir: try again until the directory is there.
    h.sh_as(
        &h.bob,
        &format!(
            "for i in 1 2 3 4 5 6 7 8 9 10; do rm -f '{0}'; mkdir '{0}' 2>/dev/null && exit 0; sleep 0.2; done; exit 1",
            bp.display()
        ),
    );
    let st = h.root_status();
    assert!(
        all_strings(&st["findings"])
            .iter()
            .any(|x| x.contains(&marker))
            || all_strings(&st["workspaces"])
                .iter()
                .any(|x| x.contains(&marker)),
        "precondition: root's status says nothing about bob's occupied path {}: {st:#}",
        bp.display()
    );
    let strings = vec![
        s(&bp),
        s(&h.bob.home),
        bob_ws.clone(),
        marker,
        h.bob.name.clone(),
    ];
    (bob_ws, strings)
}

/// Panic when `r`'s output holds any of `secret_strings`.
#[track_caller]
fn assert_no_leak(what: &str, r: &Run, secret_strings: &[String]) {
    let all = format!("{}{}", r.stdout, r.stderr);
    let found: Vec<&String> = secret_strings
        .iter()
        .filter(|b| all.contains(b.as_str()))
        .collect();
    assert!(
        found.is_empty(),
        "alice's {what} reveals bob's {found:?} (expected: replies and findings filtered to her own workspaces)\n{}",
        r.describe()
    );
}

/// Attack 15, replies: alice's init, status, list and release replies (table and JSON) must
/// carry only her own findings: nothing of bob's path, home, name or ws_id.
#[test]
fn attack15a_replies_carry_only_the_callers_findings() {
    let Some(h) = Hostile::new("hostile-a15a", Setup::default()) else {
        return;
    };
    let (_, bob) = bob_with_a_finding(&h);
    let mine = h.alice.path("mine");
    build_tree(&mine, &h.alice, &TreeSpec::default());
    let r = h.as_user(&h.alice, &["--format", "json", "init", &s(&mine)]);
    r.ok();
    assert_no_leak("init (json)", &r, &bob);
    let mine2 = h.alice.path("mine2");
    build_tree(&mine2, &h.alice, &TreeSpec::default());
    let r = h.as_user(&h.alice, &["init", &s(&mine2)]);
    r.ok();
    assert_no_leak("init", &r, &bob);
    for args in [
        vec!["--format", "json", "status"],
        vec!["status"],
        vec!["--format", "json", "list"],
        vec!["list"],
    ] {
        let r = h.as_user(&h.alice, &args);
        assert_no_leak(&args.join(" "), &r, &bob);
    }
    let r = h.as_user(&h.alice, &["--format", "json", "release", &s(&mine)]);
    r.ok();
    assert_no_leak("release (json)", &r, &bob);
    let r = h.as_user(&h.alice, &["release", &s(&mine2)]);
    r.ok();
    assert_no_leak("release", &r, &bob);
    h.assert_no_damage("the reply-filtering checks");
}

/// Attack 15, errors: every refusal alice gets for bob's ws_id (checkpoint, list, rollback,
/// diff, delete, cleanup, status; table and JSON) must be byte-identical to the one for a
/// ws_id that exists nowhere.
#[test]
fn attack15b_errors_for_other_users_workspaces_match_unknown_ones() {
    let Some(h) = Hostile::new("hostile-a15b", Setup::default()) else {
        return;
    };
    let (bob_ws, bob) = bob_with_a_finding(&h);
    let known: BTreeSet<String> = all_strings(&h.root_status())
        .into_iter()
        .filter(|x| x.starts_with("ws-"))
        .collect();
    let unknown = (1..0xff_ffffu32)
        .map(|i| format!("ws-{:06x}", i.wrapping_mul(2_654_435_761) & 0xff_ffff))
        .find(|c| !known.contains(c) && *c != bob_ws)
        .unwrap();
    let ops: Vec<Vec<&str>> = vec![
        vec!["checkpoint", "-w", "WS", "-s", "z1"],
        vec!["list", "-w", "WS"],
        vec!["rollback", "-w", "WS", "-s", "o-snap-1", "--force"],
        vec!["diff", "-w", "WS", "-f", "o-snap-1"],
        vec!["delete", "-w", "WS", "-s", "o-snap-1"],
        vec!["cleanup", "-w", "WS", "--keep", "1"],
        vec!["status", "-w", "WS"],
    ];
    let mut differ = Vec::new();
    for op in &ops {
        for json in [false, true] {
            let run = |id: &str| {
                let mut a: Vec<&str> = if json {
                    vec!["--format", "json"]
                } else {
                    vec![]
                };
                a.extend(op.iter().map(|x| if *x == "WS" { id } else { x }));
                h.as_user(&h.alice, &a)
            };
            let (a, b) = (run(&bob_ws), run(&unknown));
            // The ws_id is alice's own input: echoing it back reveals nothing.
            let others: Vec<String> = bob.iter().filter(|x| **x != bob_ws).cloned().collect();
            assert_no_leak(&format!("{op:?} on bob's ws_id"), &a, &others);
            assert_ne!(
                a.code(),
                Some(0),
                "alice's {op:?} on bob's workspace succeeded\n{}",
                a.describe()
            );
            if normalized(&a, &[&bob_ws, &unknown]) != normalized(&b, &[&bob_ws, &unknown]) {
                differ.push(format!(
                    "{} {op:?}:\n--- bob's {bob_ws} ---\n{}\n--- unknown {unknown} ---\n{}",
                    if json { "json" } else { "table" },
                    a.describe(),
                    b.describe()
                ));
            }
        }
    }
    assert!(
        differ.is_empty(),
        "alice can tell bob's workspace from one that does not exist (expected identical replies):\n{}",
        differ.join("\n")
    );
    let bob_snaps = snapshot_ids(&h.root(&["--format", "json", "list", "-w", &bob_ws]).json());
    assert!(
        bob_snaps.contains(&"o-snap-1".to_string()),
        "bob's snapshots were touched by alice: {bob_snaps:?}"
    );
    h.assert_no_damage("the error-oracle checks");
}

/// Attack 15, `delete -s ID` without `-w`: the reply must not tell alice whether bob has a
/// snapshot ID; when both have it, only alice's own is deleted (from her side it is unique).
#[test]
fn attack15c_delete_without_workspace_reveals_nothing() {
    let Some(h) = Hostile::new("hostile-a15c", Setup::default()) else {
        return;
    };
    let (bob_ws, bob) = bob_with_a_finding(&h);
    let mine = h.alice.path("mine");
    build_tree(&mine, &h.alice, &TreeSpec::default());
    h.as_user(&h.alice, &["init", &s(&mine)]).ok();
    for json in [false, true] {
        let fmt: &[&str] = if json { &["--format", "json"] } else { &[] };
        let del = |id: &str| {
            let mut a = fmt.to_vec();
            a.extend(["delete", "-s", id]);
            h.as_user(&h.alice, &a)
        };
        let (a, b) = (del("o-snap-1"), del("zz-never-existed"));
        assert_no_leak("delete -s o-snap-1", &a, &bob);
        assert_eq!(
            normalized(&a, &["o-snap-1", "zz-never-existed"]),
            normalized(&b, &["o-snap-1", "zz-never-existed"]),
            "`delete -s ID` tells alice whether bob has snapshot ID (expected the same reply as for an ID nobody has):\n{}\n{}",
            a.describe(),
            b.describe()
        );
    }
    h.as_user(
        &h.alice,
        &["checkpoint", "-w", &s(&mine), "-s", "shared-id"],
    )
    .ok();
    let d = h.as_user(&h.alice, &["delete", "-s", "shared-id"]);
    assert_no_leak("delete -s shared-id", &d, &bob);
    assert_eq!(
        d.code(),
        Some(0),
        "alice's `delete -s shared-id` must delete her own snapshot: from her side the ID is unique\n{}",
        d.describe()
    );
    let bob_snaps = snapshot_ids(&h.root(&["--format", "json", "list", "-w", &bob_ws]).json());
    assert!(
        bob_snaps.contains(&"o-snap-1".to_string()) && bob_snaps.contains(&"shared-id".to_string()),
        "bob's snapshots were touched by alice: {bob_snaps:?}"
    );
    let mine_snaps = snapshot_ids(
        &h.root(&["--format", "json", "list", "-w", &s(&mine)])
            .json(),
    );
    assert!(
        !mine_snaps.contains(&"shared-id".to_string()),
        "alice's shared-id is still there: {mine_snaps:?}"
    );
    h.assert_no_damage("the delete-oracle checks");
}
