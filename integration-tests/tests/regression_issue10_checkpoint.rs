//! Regression tests for the checkpoint items 5 and 7 of issue 10: a failed checkpoint leaves
//! no snapshot (state_dir full), and a checkpoint killed between the snapshot and its index
//! record keeps its message, metadata and pin — also when a power cut loses the index line
//! whose fdatasync ran alongside the snapshot ioctl (issue 9), and a record left behind is
//! removed when the daemon starts. Root only; each test has its
//! own environment.

mod regression_common;

use regression_common::*;
use ws_ckpt_integration_tests::wait_until;

// ---------------------------------------------------------------------------------------------
// 5. state_dir full
// ---------------------------------------------------------------------------------------------
/// state_dir (16 MiB) full: a checkpoint whose index record cannot be written (its metadata
/// is larger than a page) must fail with no snapshot left, never adopted later without its
/// message; `list` and the disk agree while full, once space is back and after a restart.
#[test]
fn regression_5_state_dir_full_failed_checkpoint_leaves_no_snapshot() {
    let Some(mut rig) = rig("regression_5", Storage::SmallStateDir(16), Via::Daemon) else {
        return;
    };
    let (a, _) = make_tree(&rig, "a", 6, SMALL);
    let ws_id = init(&rig, &a);
    checkpoint(&rig, &a, "s1", &["-m", "first"]).ok();
    let fillers = fill_to_enospc(&small_state_dir(&rig));
    let meta = json!({"padding": "x".repeat(9000), "tool": "edit"}).to_string();
    let r = checkpoint(
        &rig,
        &a,
        "c9",
        &["-m", "made while full", "--metadata", &meta, "--pin"],
    );
    let ok = r.code() == Some(0);
    eprintln!("checkpoint with state_dir full: exit {:?}", r.code());
    let check = |rig: &Rig, when: &str| -> Vec<String> {
        let listed = listed_for(rig, &ws_id);
        let c9 = listed.iter().find(|l| l.id == "c9");
        let on_disk = snapshot_on_disk(rig, &ws_id, "c9");
        match (ok, c9, on_disk) {
            (false, None, false) => vec![],
            (false, Some(l), _) => vec![format!(
                "{when}: the FAILED checkpoint c9 is listed (message {:?}, pinned {})",
                l.message, l.pinned
            )],
            (false, None, true) => vec![format!(
                "{when}: the FAILED checkpoint left its snapshot {}/snapshots/{ws_id}/c9 on disk, unlisted",
                rig.layout.mount.display()
            )],
            (true, Some(l), true)
                if l.message.as_deref() == Some("made while full") && l.pinned => vec![],
            (true, l, d) => vec![format!("{when}: the checkpoint succeeded but is listed as {l:?}, on disk: {d}")],
        }
    };
    let mut problems = check(&rig, "while state_dir is full");
    for f in &fillers {
        fs::remove_file(f).unwrap();
    }
    let ar = rig.json(&["apply"]).0;
    if ar.code() != Some(0) {
        problems.push(format!(
            "once space was back, `apply` failed:\n{}",
            indent(&ar.describe())
        ));
    }
    problems.extend(check(&rig, "once space was back and a pass ran"));
    rig.kill_daemon();
    rig.start_daemon().unwrap();
    problems.extend(check(&rig, "after a restart"));
    let stray = unrecorded_subvolumes(&rig);
    if !stray.is_empty() {
        problems.push(format!("after a restart, unrecorded subvolumes: {stray:?}"));
    }
    assert!(
        problems.is_empty(),
        "checkpoint output:\n{}\n{}",
        r.describe(),
        problems.join("\n")
    );
    assert_converged(&rig);
}

// ---------------------------------------------------------------------------------------------
// 7. checkpoint killed between the snapshot and its index record
// ---------------------------------------------------------------------------------------------

/// kill -9 (of the in-process CLI, then of the daemon) the instant the snapshot appears
/// (inotify on the workspace's snapshot directory), before the index record is written: the
/// recovered snapshot must carry its message, metadata and pin (or not exist at all), and a
/// cleanup must then keep it because it is pinned.
#[test]
fn regression_7_checkpoint_killed_after_snapshot_keeps_message_metadata_and_pin() {
    let mut problems = Vec::new();
    for via in [Via::InProcess, Via::Daemon] {
        let Some(mut rig) = rig(&format!("regression_7_{via:?}"), Storage::Host, via) else {
            return;
        };
        let (a, _) = make_tree(&rig, "a", 8, SMALL);
        let ws_id = init(&rig, &a);
        checkpoint(&rig, &a, "s0", &["-m", "base"]).ok();
        let snap_dir = rig.layout.snapshots_root().join(&ws_id);
        let mut landed = None;
        for attempt in 0..5 {
            let id = format!("k{attempt}");
            let meta = json!({"tool": "edit", "attempt": attempt});
            let mut ino = Inotify::new();
            ino.watch(&snap_dir, libc::IN_CREATE | libc::IN_MOVED_TO);
            let ap = a.display().to_string();
            let m = meta.to_string();
            let child = spawn(
                &rig,
                &[
                    "checkpoint",
                    "-w",
                    &ap,
                    "-s",
                    &id,
                    "-m",
                    "agent step",
                    "--metadata",
                    &m,
                    "--pin",
                ],
            );
            let got = ino.next(Duration::from_secs(60));
            match via {
                Via::Daemon => rig.kill_daemon(),
                Via::InProcess => {
                    child.kill9();
                }
            }
            let acked = wait_exit(&child, "checkpoint").success();
            let present = snap_dir.join(&id).exists();
            let _ = recover(&mut rig, via);
            // Landed: killed once the snapshot existed, before the client was told anything.
            if got.is_some() && present && !acked {
                landed = Some((id, meta));
                break;
            }
            eprintln!("{via:?} attempt {attempt}: not landed (event {got:?}, present {present}, acknowledged {acked})");
        }
        let (id, meta) = landed.unwrap_or_else(|| {
            panic!(
                "{via:?}: in 5 attempts the kill never landed between the snapshot and its record"
            )
        });
        let l = listed_for(&rig, &ws_id);
        let k = l.iter().find(|x| x.id == id);
        match k {
            Some(k)
                if k.message.as_deref() == Some("agent step")
                    && k.metadata.as_ref() == Some(&meta)
                    && k.pinned => {}
            Some(k) => problems.push(format!(
                "{via:?}: snapshot {id}, killed after its snapshot was taken, was recovered as message {:?}, metadata {:?}, pinned {} (expected \"agent step\", {meta}, pinned)",
                k.message,
                k.metadata,
                k.pinned
            )),
            None if snap_dir.join(&id).exists() => {
                problems.push(format!("{via:?}: {id} is on disk but not listed"))
            }
            None => {}
        }
        // Retention must keep what the agent pinned.
        checkpoint(&rig, &a, "z-newest", &[]).ok();
        // keep 1: every unpinned snapshot but the newest goes.
        let c = rig
            .json(&["cleanup", "-w", &a.display().to_string(), "--keep", "1"])
            .0;
        if c.code() != Some(0) {
            problems.push(format!(
                "{via:?}: `cleanup --keep 1` failed:\n{}",
                indent(&c.describe())
            ));
        } else if k.is_some() && !listed_for(&rig, &ws_id).iter().any(|x| x.id == id) {
            problems.push(format!(
                "{via:?}: `cleanup --keep 1` deleted {id}, which the agent had pinned"
            ));
        }
        problems.extend(rig.converged().into_iter().map(|c| format!("{via:?}: {c}")));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Issue 9 lets the index line's fdatasync run while the snapshot ioctl does; the same
/// record is on the snapshot's directory (an xattr, committed with the snapshot or before
/// it) until the line is durable. What a power cut keeps then may be the snapshot without
/// the line: here the checkpoint is killed right after its snapshot and the line's sync,
/// before the record is removed, and the line is cut off the journal by hand (what the
/// power cut would have lost). The next `apply` must adopt the snapshot with its message,
/// metadata and pin (a cleanup then keeps it), while a snapshot made by hand gets none of
/// it. The workspace root is never touched, so a checkpoint of an unchanged tree is no
/// change `diff` reports.
#[test]
fn regression_7b_index_line_lost_snapshot_adopted_with_its_record() {
    let Some(rig) = rig("regression_7b", Storage::Host, Via::InProcess) else {
        return;
    };
    let (a, _) = make_tree(&rig, "a", 9, SMALL);
    let ws_id = init(&rig, &a);
    checkpoint(&rig, &a, "s0", &["-m", "base"]).ok();
    let meta = json!({"tool": "edit", "step": 7});
    let snap_dir = rig.layout.snapshots_root().join(&ws_id);
    let live = rig.layout.mount.join("gates").join(&ws_id).join("live");
    assert!(
        ws_ckpt_xattrs(&snap_dir).is_empty(),
        "a completed checkpoint leaves no record on {}",
        snap_dir.display()
    );
    assert!(
        ws_ckpt_xattrs(&live).is_empty(),
        "the workspace root is not touched"
    );
    let ap = a.display().to_string();
    let m = meta.to_string();
    killed_after_snapshot(
        &rig,
        &[
            "-w",
            &ap,
            "-s",
            "lost",
            "-m",
            "agent step",
            "--metadata",
            &m,
            "--pin",
        ],
    );
    assert!(snap_dir.join("lost").exists(), "the snapshot was taken");
    let records = ws_ckpt_xattrs(&snap_dir);
    assert_eq!(
        records.len(),
        1,
        "one record on {}: {records:?}",
        snap_dir.display()
    );
    // The journal as a power cut right after the snapshot's commit could leave it: without
    // the line of `lost`.
    cut_journal_lines(&rig, &ws_id, "lost");
    // A snapshot made by hand afterwards has no record of its own.
    let by_hand = snap_dir.join("by-hand");
    let out = std::process::Command::new("btrfs")
        .args(["subvolume", "snapshot", "-r"])
        .arg(&live)
        .arg(&by_hand)
        .output()
        .unwrap();
    assert!(out.status.success(), "btrfs subvolume snapshot: {out:?}");

    let ar = rig.json(&["apply"]).0;
    assert_eq!(ar.code(), Some(0), "apply:\n{}", ar.describe());
    let l = listed_for(&rig, &ws_id);
    let lost = l.iter().find(|x| x.id == "lost").expect("`lost` is listed");
    assert_eq!(lost.message.as_deref(), Some("agent step"));
    assert_eq!(lost.metadata.as_ref(), Some(&meta));
    assert!(lost.pinned, "the pin survives the lost line");
    let hand = l
        .iter()
        .find(|x| x.id == "by-hand")
        .expect("`by-hand` is listed");
    assert_eq!(
        hand.message, None,
        "another snapshot's record is not its own"
    );
    assert!(!hand.pinned);
    assert!(
        ws_ckpt_xattrs(&snap_dir).is_empty(),
        "the adopted record is removed from {}",
        snap_dir.display()
    );
    // Nothing changed in the tree between s0 and `lost`.
    let d = rig
        .json(&[
            "diff",
            "-w",
            &a.display().to_string(),
            "-f",
            "s0",
            "-t",
            "lost",
        ])
        .0;
    assert_eq!(d.code(), Some(0), "diff:\n{}", d.describe());
    assert!(
        !d.stdout.contains("\"path\""),
        "diff s0 -> lost reports changes:\n{}",
        d.stdout
    );
    checkpoint(&rig, &a, "z-newest", &[]).ok();
    let c = rig
        .json(&["cleanup", "-w", &a.display().to_string(), "--keep", "1"])
        .0;
    assert_eq!(c.code(), Some(0), "cleanup:\n{}", c.describe());
    let after: Vec<String> = listed_for(&rig, &ws_id).into_iter().map(|x| x.id).collect();
    assert!(
        after.contains(&"lost".to_string()),
        "cleanup took the pinned `lost`: {after:?}"
    );
    assert_converged(&rig);
}

/// A checkpoint killed after its journal line was durable but before its record was removed
/// leaves that record on the snapshot directory; the daemon's start removes it, and the
/// checkpoint stays listed with its message and pin (the line is the record now).
#[test]
fn regression_7c_a_leftover_record_is_swept_when_the_daemon_starts() {
    let Some(mut rig) = rig("regression_7c", Storage::Host, Via::InProcess) else {
        return;
    };
    let (a, _) = make_tree(&rig, "a", 5, SMALL);
    let ws_id = init(&rig, &a);
    let snap_dir = rig.layout.snapshots_root().join(&ws_id);
    let ap = a.display().to_string();
    killed_after_snapshot(
        &rig,
        &["-w", &ap, "-s", "kept", "-m", "agent step", "--pin"],
    );
    assert_eq!(
        ws_ckpt_xattrs(&snap_dir).len(),
        1,
        "the interrupted checkpoint left its record on {}",
        snap_dir.display()
    );
    rig.start_daemon().unwrap();
    assert!(
        ws_ckpt_xattrs(&snap_dir).is_empty(),
        "the daemon's start removed the leftover record from {}: {:?}",
        snap_dir.display(),
        ws_ckpt_xattrs(&snap_dir)
    );
    let l = listed_for(&rig, &ws_id);
    let kept = l.iter().find(|x| x.id == "kept").expect("`kept` is listed");
    assert_eq!(kept.message.as_deref(), Some("agent step"));
    assert!(kept.pinned);
    // A checkpoint through the daemon leaves none either, once its settle thread ran.
    checkpoint(&rig, &a, "next", &[]).ok();
    assert!(
        wait_until(Duration::from_secs(20), || ws_ckpt_xattrs(&snap_dir)
            .is_empty()),
        "the daemon settled `next`: {:?}",
        ws_ckpt_xattrs(&snap_dir)
    );
    rig.stop_daemon().unwrap();
    assert_converged(&rig);
}

/// The daemon answers a checkpoint once the snapshot ioctl has committed the snapshot and
/// its record; the journal line is made durable, and the record removed, by its settle
/// thread afterwards. Here that thread is held before it starts, and the daemon is then
/// killed, with the line of one checkpoint cut off the journal (what a power cut before the
/// settle could lose) and the other's kept. The next start must list both with their
/// message, metadata and pin, and leave no record behind; a clean stop settles what waits.
#[test]
fn regression_7d_a_daemon_checkpoint_answered_before_its_line_is_durable() {
    let Some(mut rig) = rig("regression_7d", Storage::Host, Via::InProcess) else {
        return;
    };
    let (a, _) = make_tree(&rig, "a", 5, SMALL);
    let ws_id = init(&rig, &a);
    let snap_dir = rig.layout.snapshots_root().join(&ws_id);
    let hold = rig.env.root.join("hold");
    fs::create_dir_all(&hold).unwrap();
    fs::write(hold.join("settle:before-sync"), b"").unwrap();
    rig.start_daemon_env(&[("WS_CKPT_FAULT_HOLD", hold.to_str().unwrap())])
        .unwrap();
    let meta = json!({"tool": "shell", "step": 3});
    let m = meta.to_string();
    let ap = a.display().to_string();
    for id in ["kept", "lost"] {
        let r = rig.json(&[
            "checkpoint",
            "-w",
            &ap,
            "-s",
            id,
            "-m",
            "agent step",
            "--metadata",
            &m,
            "--pin",
        ]);
        assert_eq!(
            r.0.code(),
            Some(0),
            "checkpoint {id}:
{}",
            r.0.describe()
        );
    }
    assert!(
        wait_until(Duration::from_secs(20), || hold
            .join("settle:before-sync.reached")
            .exists()),
        "the settle thread reached its held point; daemon log:\n{}",
        rig.daemon().map(|d| d.stderr()).unwrap_or_default()
    );
    assert_eq!(
        ws_ckpt_xattrs(&snap_dir).len(),
        2,
        "both answered checkpoints keep their record on {} until they are settled",
        snap_dir.display()
    );
    rig.kill_daemon();
    cut_journal_lines(&rig, &ws_id, "lost");

    rig.start_daemon().unwrap();
    let l = listed_for(&rig, &ws_id);
    for id in ["kept", "lost"] {
        let x = l
            .iter()
            .find(|x| x.id == id)
            .unwrap_or_else(|| panic!("`{id}` is listed: {l:?}"));
        assert_eq!(x.message.as_deref(), Some("agent step"), "{id}");
        assert_eq!(x.metadata.as_ref(), Some(&meta), "{id}");
        assert!(x.pinned, "{id} stays pinned");
    }
    assert!(
        wait_until(Duration::from_secs(20), || ws_ckpt_xattrs(&snap_dir)
            .is_empty()),
        "no record is left on {}: {:?}",
        snap_dir.display(),
        ws_ckpt_xattrs(&snap_dir)
    );
    // A clean stop right after a checkpoint settles it before the daemon exits.
    checkpoint(&rig, &a, "last", &[]).ok();
    rig.stop_daemon().unwrap();
    assert!(
        ws_ckpt_xattrs(&snap_dir).is_empty(),
        "the stop settled `last`: {:?}",
        ws_ckpt_xattrs(&snap_dir)
    );
    assert_converged(&rig);
}

/// Remove the lines naming snapshot `id` from the index journal of `ws_id`: what a power cut
/// before the line's `fdatasync` could leave.
fn cut_journal_lines(rig: &Rig, ws_id: &str, id: &str) {
    let journal = rig
        .layout
        .state_dir
        .join("indexes")
        .join(ws_id)
        .join("journal.jsonl");
    let text = fs::read_to_string(&journal).unwrap();
    let needle = format!("\"{id}\"");
    let kept: String = text
        .lines()
        .filter(|l| !l.contains(&needle))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(
        kept, text,
        "the journal of {ws_id} has no line for `{id}`:\n{text}"
    );
    fs::write(&journal, kept).unwrap();
}

/// `ws-ckpt checkpoint <args…>`, killed at `checkpoint:after-snapshot` (the snapshot taken and
/// its journal line durable, its record not yet removed from the snapshot directory).
fn killed_after_snapshot(rig: &Rig, args: &[&str]) {
    let argv: Vec<&str> = std::iter::once("checkpoint")
        .chain(args.iter().copied())
        .collect();
    let r = rig
        .env
        .run_env(&argv, &[("WS_CKPT_FAULT", "checkpoint:after-snapshot")]);
    assert_ne!(
        r.code(),
        Some(0),
        "killed at the fault point:\n{}",
        r.describe()
    );
}

/// The names of ws-ckpt's own xattrs on `path` (`trusted.ws-ckpt.*`; the tests run as root,
/// so `trusted.*` names are listed).
fn ws_ckpt_xattrs(path: &Path) -> Vec<String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: `c` is NUL-terminated; `buf` is writable for its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(
        n >= 0,
        "llistxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| s.starts_with(b"trusted.ws-ckpt"))
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}
