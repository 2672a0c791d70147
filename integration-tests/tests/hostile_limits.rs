//! Hostile-user suite, bounded inputs and resources (issue 7, attacks 8, 9, 13 and 14; SPEC
//! §7.2, §7.3): a slow-loris user must not lock out root or other users, a huge sparse init
//! must not stall another user's checkpoint, oversized messages and metadata are refused with
//! a clear error and `max_snapshots` caps a workspace, control characters never reach a
//! terminal raw. Functional bounds only (no benchmarks): "completes while the init still runs".

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};
use ws_ckpt_integration_tests::hostile_support::{
    all_strings, build_tree, chown, objects_where, run_with_deadline, snapshot_ids,
    terminal_controls, write_big, Hostile, InotifyLog, Setup, TestUser, TreeSpec,
};
use ws_ckpt_integration_tests::Run;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `ws-ckpt ARGS…` as `user` (root when `None`) with a deadline that reports a hang instead of
/// panicking inside the harness.
fn cli_within(
    h: &Hostile,
    user: Option<&TestUser>,
    args: &[&str],
    limit: Duration,
) -> Result<Run, String> {
    let mut cmd = h.env.command(args);
    if let Some(u) = user {
        cmd.uid(u.uid).gid(u.gid).env("HOME", &u.home);
    }
    run_with_deadline(&h.env, cmd, limit)
}

/// Attack 8: alice holds 100 connections to the socket, each sending one byte every 2 s (and
/// reopening any the daemon closes). Meanwhile root's `status` and bob's `list` and
/// `checkpoint` must still be served (a whole-request deadline and a per-uid connection cap
/// with slots root can always get).
#[test]
fn attack08_slow_loris_does_not_lock_out_root_or_other_users() {
    let Some(h) = Hostile::new("hostile-a08", Setup::default()) else {
        return;
    };
    let w = h.bob.path("w");
    build_tree(&w, &h.bob, &TreeSpec::default());
    h.as_user(&h.bob, &["init", &s(&w)]).ok();
    let atk = h.attacker(
        &h.alice,
        "loris",
        &[
            "--socket",
            &s(&h.env.socket_path()),
            "--conns",
            "100",
            "--interval-ms",
            "2000",
        ],
        120,
    );
    std::thread::sleep(Duration::from_millis(1500));
    let limit = Duration::from_secs(20);
    let mut failures = Vec::new();
    let mut check =
        |who: &str, user: Option<&TestUser>, args: &[&str]| match cli_within(&h, user, args, limit)
        {
            Ok(r) if r.code() == Some(0) || (args.contains(&"status") && r.code() == Some(3)) => {}
            Ok(r) => failures.push(format!("{who} {args:?} failed:\n{}", r.describe())),
            Err(hang) => failures.push(format!("{who} {args:?} hung: {hang}")),
        };
    check("root", None, &["--format", "json", "status"]);
    check(
        "bob",
        Some(&h.bob),
        &["--format", "json", "list", "-w", &s(&w)],
    );
    check(
        "bob",
        Some(&h.bob),
        &["checkpoint", "-w", &s(&w), "-s", "during-loris"],
    );
    check("root", None, &["--format", "json", "list"]);
    atk.assert_running("root's and bob's commands");
    let st = atk.stop();
    eprintln!("loris: {st}");
    let opened = st["opened"].as_u64().unwrap_or(0);
    assert!(
        opened >= 64,
        "the attacker opened only {opened} connections (wanted 100): the lockout was not attempted\n{st}"
    );
    assert!(
        failures.is_empty(),
        "while alice held {} connections (max {} at once), the daemon locked others out (expected: root and other users still served):\n{}",
        st["held"],
        st["max_held"],
        failures.join("\n")
    );
    h.assert_no_damage("the slow-loris");
}

/// How long bob's checkpoint may take during alice's sparse init: generous (it takes
/// milliseconds when nothing blocks it), far below the minute the hole-reading verify takes.
const CHECKPOINT_BOUND: Duration = Duration::from_secs(30);

/// Attack 9: alice inits a directory with a 16 GiB sparse file (and 192 MiB of real data, so
/// that any init takes a while). As soon as the daemon starts reading her tree, bob checkpoints
/// his own workspace: it must complete while alice's init is still running. Then alice's init
/// must finish with the file still sparse.
#[test]
fn attack09_a_huge_sparse_init_does_not_stall_other_users() {
    let Some(h) = Hostile::new("hostile-a09", Setup::default()) else {
        return;
    };
    let w = h.bob.path("w");
    build_tree(&w, &h.bob, &TreeSpec::default());
    h.as_user(&h.bob, &["init", &s(&w)]).ok();

    let big = h.alice.path("big");
    fs::create_dir(&big).unwrap();
    chown(&big, h.alice.uid, h.alice.gid);
    let sparse = big.join("sparse.img");
    {
        let mut f = fs::File::create_new(&sparse).unwrap();
        f.set_len(16 << 30).unwrap();
        for at in [0u64, 8 << 30, (16 << 30) - (1 << 20)] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&vec![0x5a; 1 << 20]).unwrap();
        }
    }
    chown(&sparse, h.alice.uid, h.alice.gid);
    for i in 0..12 {
        write_big(&big.join(format!("data-{i:02}.bin")), 16 << 20, &h.alice);
    }
    let reads = InotifyLog::watch(&big, libc::IN_OPEN | libc::IN_ACCESS);
    let mut cmd = h.env.command(&["init", &s(&big)]);
    cmd.uid(h.alice.uid)
        .gid(h.alice.gid)
        .env("HOME", &h.alice.home);
    let t0 = Instant::now();
    let init = h.env.spawn_command(cmd);
    let started = ws_ckpt_integration_tests::wait_until(Duration::from_secs(120), || {
        reads.events().iter().any(|e| !e.name.is_empty()) || init.try_wait().is_some()
    });
    assert!(
        started,
        "the daemon never started reading {}",
        big.display()
    );
    assert!(
        init.try_wait().is_none(),
        "alice's init finished before the daemon was seen reading it ({:?}); cannot judge",
        t0.elapsed()
    );
    let t1 = Instant::now();
    let ck = cli_within(
        &h,
        Some(&h.bob),
        &["checkpoint", "-w", &s(&w), "-s", "during-init"],
        CHECKPOINT_BOUND,
    );
    let took = t1.elapsed();
    let init_still_running = init.try_wait().is_none();
    let ck = ck.unwrap_or_else(|hang| {
        panic!(
            "bob's checkpoint of his own workspace did not complete within {CHECKPOINT_BOUND:?} while alice's init of a 16 GiB sparse file ran (expected: it completes while the init still runs): {hang}"
        )
    });
    ck.ok();
    assert!(
        init_still_running,
        "bob's checkpoint took {took:?} and returned only after alice's init of a 16 GiB sparse file had finished (init ran {:?}): the init held the engine for its whole copy/verify (expected: another user's checkpoint completes while the init still runs)",
        t0.elapsed()
    );
    let done = init.wait_timeout(Duration::from_secs(300));
    let done = done.unwrap_or_else(|| {
        panic!("alice's init did not finish within 5 min after bob's checkpoint")
    });
    assert!(
        done.success(),
        "alice's init failed: {}\n{}",
        done,
        init.stderr()
    );
    let m = fs::metadata(big.join("sparse.img")).unwrap();
    assert_eq!(m.len(), 16 << 30);
    assert!(
        m.blocks() * 512 < 1 << 30,
        "the 16 GiB sparse file is no longer sparse in the workspace ({} bytes allocated)",
        m.blocks() * 512
    );
    h.assert_no_damage("the sparse init");
}

/// A checkpoint request line as alice would send it, with metadata of `meta_len` bytes.
fn flood_request(ws: &str, id: &str, meta_len: usize) -> String {
    format!(
        "{{\"v\":1,\"op\":\"checkpoint\",\"workspace\":\"{ws}\",\"snapshot\":\"{id}\",\"metadata\":{{\"k\":\"{}\"}}}}\n",
        "x".repeat(meta_len)
    )
}

/// Attack 13: a message of 4096 bytes is accepted, 4097 refused; metadata of 65536 bytes
/// (compact JSON) accepted, 65537 refused — each refusal names the limit and creates nothing.
/// 20 raw requests with 1 MB of metadata are all refused and root's `list` still works.
/// `max_snapshots = 3` on a workspace refuses the 4th checkpoint with an error naming it.
#[test]
fn attack13_messages_metadata_and_snapshot_count_are_bounded() {
    let Some(h) = Hostile::new("hostile-a13", Setup::default()) else {
        return;
    };
    let lim = h.alice.path("lim");
    build_tree(&lim, &h.alice, &TreeSpec::default());
    h.as_user(&h.alice, &["init", &s(&lim)]).ok();
    let ws = h.ws_id(&lim);
    let ids = || snapshot_ids(&h.root(&["--format", "json", "list", "-w", &ws]).json());
    let mut problems = Vec::new();
    let mut expect = |id: &str, ok: bool, limit_words: &[&str], args: &[&str]| {
        let mut a = vec!["checkpoint", "-w", ws.as_str(), "-s", id];
        a.extend_from_slice(args);
        let r = h.as_user(&h.alice, &a);
        let listed = ids().contains(&id.to_string());
        let text = format!("{}{}", r.stdout, r.stderr);
        if ok && (r.code() != Some(0) || !listed) {
            problems.push(format!(
                "{id} must be accepted (at the limit):\n{}",
                r.describe()
            ));
        }
        if !ok {
            if r.code() == Some(0) || listed {
                problems.push(format!(
                    "{id} must be refused (over the limit):\n{}",
                    r.describe()
                ));
            } else if !limit_words.iter().any(|w| text.contains(w)) {
                problems.push(format!(
                    "{id} was refused, but the error does not name the limit (one of {limit_words:?}):\n{}",
                    r.describe()
                ));
            }
        }
    };
    let m4096 = "m".repeat(4096);
    let m4097 = "m".repeat(4097);
    expect("msg-4096", true, &[], &["-m", &m4096]);
    expect(
        "msg-4097",
        false,
        &["4096", "4 KiB", "4KiB"],
        &["-m", &m4097],
    );
    let meta = |n: usize| format!("{{\"k\":\"{}\"}}", "x".repeat(n - 8));
    let (meta_ok, meta_over) = (meta(65536), meta(65537));
    assert_eq!((meta_ok.len(), meta_over.len()), (65536, 65537));
    expect("meta-65536", true, &[], &["--metadata", &meta_ok]);
    expect(
        "meta-65537",
        false,
        &["65536", "64 KiB", "64KiB"],
        &["--metadata", &meta_over],
    );

    // The raw flood (1 MB of metadata does not fit on a command line).
    let mut accepted = Vec::new();
    for i in 0..20 {
        let req = h.ctl_file(
            &format!("flood-{i}"),
            &flood_request(&ws, &format!("flood-{i}"), 1_000_000),
        );
        let st = h.attacker_once(
            &h.alice,
            "send",
            &[
                "--socket",
                &s(&h.env.socket_path()),
                "--request-file",
                &s(&req),
            ],
        );
        let text = st["reply"]
            .as_str()
            .unwrap_or("(no reply: connection closed)");
        let reply: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        if reply["ok"] == true {
            let head: String = text.chars().take(300).collect();
            accepted.push(format!("flood-{i}: {head}"));
        }
    }
    // Refused means not recorded, whatever the reply (an error line or a closed connection).
    for id in ids().into_iter().filter(|id| id.starts_with("flood-")) {
        if !accepted.iter().any(|a| a.starts_with(&format!("{id}:"))) {
            accepted.push(format!("{id}: recorded"));
        }
    }
    if !accepted.is_empty() {
        problems.push(format!(
            "{} checkpoints with 1 MB of metadata were not refused:\n  {}",
            accepted.len(),
            accepted.join("\n  ")
        ));
    }
    let l = h.root(&["--format", "json", "list"]);
    if l.code() != Some(0) {
        problems.push(format!(
            "root's list fails after the flood:\n{}",
            l.describe()
        ));
    }

    // max_snapshots.
    let cap = h.alice.path("cap");
    build_tree(&cap, &h.alice, &TreeSpec::default());
    h.as_user(&h.alice, &["init", &s(&cap)]).ok();
    let reload = h.add_to_declaration(&cap, "max_snapshots = 3");
    let cws = h.ws_id(&cap);
    for id in ["c1", "c2", "c3"] {
        let r = h.as_user(&h.alice, &["checkpoint", "-w", &cws, "-s", id]);
        if r.code() != Some(0) {
            problems.push(format!(
                "{id} (within max_snapshots = 3) refused:\n{}",
                r.describe()
            ));
        }
    }
    let r = h.as_user(&h.alice, &["checkpoint", "-w", &cws, "-s", "c4"]);
    let cids = snapshot_ids(&h.root(&["--format", "json", "list", "-w", &cws]).json());
    if r.code() == Some(0) || cids.contains(&"c4".to_string()) {
        problems.push(format!(
            "the 4th checkpoint under max_snapshots = 3 was accepted (snapshots now {cids:?}); reload after setting it said:\n{}\n{}",
            reload.describe(),
            r.describe()
        ));
    } else if !format!("{}{}", r.stdout, r.stderr).contains("max_snapshots") {
        problems.push(format!(
            "the 4th checkpoint was refused without naming max_snapshots:\n{}",
            r.describe()
        ));
    } else {
        h.as_user(&h.alice, &["delete", "-w", &cws, "-s", "c1"])
            .ok();
        let r = h.as_user(&h.alice, &["checkpoint", "-w", &cws, "-s", "c4"]);
        if r.code() != Some(0) {
            problems.push(format!(
                "after deleting one, a checkpoint under the cap is still refused:\n{}",
                r.describe()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "input limits (message <= 4096 bytes, metadata <= 65536 bytes, max_snapshots):\n{}",
        problems.join("\n")
    );
    h.assert_no_damage("the input-limit checks");
}

/// Attack 14: alice names a directory and a file with ANSI/OSC 52 sequences, CR, BS and
/// newlines and checkpoints with such a message. Root's `list`, `list -w`, `status` and `diff`
/// tables must print no control character and start no line with the injected text, while
/// still showing the entries (escaped); the JSON must carry every string exactly.
#[test]
fn attack14_control_characters_never_reach_the_terminal_raw() {
    let Some(h) = Hostile::new("hostile-a14", Setup::default()) else {
        return;
    };
    let name = "ctl-\u{1b}[31mRED\u{1b}[0m-\u{1b}]52;c;SGFja2Vk\u{7}-\r-\u{8}-\nINJECTED-PATH-LINE";
    let dir = h.alice.path(name);
    build_tree(&dir, &h.alice, &TreeSpec::default());
    let r = h.as_user(&h.alice, &["init", &s(&dir)]);
    r.ok();
    let msg = "msg-\u{1b}[2J\u{1b}]0;pwned\u{7}\r\nINJECTED-MSG-LINE\u{9b}31m";
    h.as_user(
        &h.alice,
        &["checkpoint", "-w", &s(&dir), "-s", "s1", "-m", msg],
    )
    .ok();
    let fname = "evil-\u{1b}[5mBLINK\u{1b}[0m\nINJECTED-DIFF-LINE";
    let f = dir.join(fname);
    fs::write(&f, b"new\n").unwrap();
    chown(&f, h.alice.uid, h.alice.gid);
    let ws = h.ws_id(&dir);

    let mut problems = Vec::new();
    for (args, must_show) in [
        (vec!["list"], "RED"),
        (vec!["list", "-w", ws.as_str()], "INJECTED-MSG-LINE"),
        (vec!["status"], "RED"),
        (vec!["diff", "-w", ws.as_str(), "-f", "s1"], "BLINK"),
    ] {
        let r = h.root(&args);
        let out = format!("{}{}", r.stdout, r.stderr);
        let ctl = terminal_controls(&out);
        if !ctl.is_empty() {
            problems.push(format!(
                "root's `{}` prints raw control characters {ctl:?}:\n{out:?}",
                args.join(" ")
            ));
        }
        if let Some(l) = out.lines().find(|l| l.starts_with("INJECTED")) {
            problems.push(format!(
                "root's `{}` lets an injected newline start a line: {l:?}",
                args.join(" ")
            ));
        }
        if !out.contains(must_show) {
            problems.push(format!(
                "root's `{}` does not show the entry at all (looked for {must_show:?}): {out:?}",
                args.join(" ")
            ));
        }
    }
    let exact = |args: &[&str], want: &str| {
        let v = h.root(args).json();
        all_strings(&v).iter().any(|x| x == want)
    };
    if !exact(&["--format", "json", "list", "-w", &ws], msg) {
        problems.push(format!(
            "`list --format json` does not carry the message exactly ({msg:?})"
        ));
    }
    if !exact(&["--format", "json", "status"], &s(&dir)) {
        problems.push(format!(
            "`status --format json` does not carry the path exactly ({:?})",
            s(&dir)
        ));
    }
    let diff = h
        .root(&["--format", "json", "diff", "-w", &ws, "-f", "s1"])
        .json();
    let named = objects_where(&diff, &|m| {
        m.values().any(|v| {
            v.as_str()
                .is_some_and(|x| x == fname || x.ends_with(&format!("/{fname}")))
        })
    });
    if named.is_empty() {
        problems.push(format!(
            "`diff --format json` does not carry the file name exactly ({fname:?}): {diff}"
        ));
    }
    assert!(
        problems.is_empty(),
        "control characters (expected: escaped in every table field, exact in JSON):\n{}",
        problems.join("\n")
    );
    h.assert_no_damage("the terminal-output checks");
}
