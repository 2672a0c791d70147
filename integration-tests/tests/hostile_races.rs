//! Hostile-user suite, the races (issue 7, attacks 1, 2, 3, 4 and 6; SPEC §7.3): a real
//! unprivileged user (`alice`, `[access] user_init = true`, home on another filesystem than
//! the btrfs so that init and release copy) runs `ws-ckpt-attacker` against her own init or
//! release through the real daemon, swapping entries in a loop for the whole operation, for
//! several rounds. After every round: root's victims are byte-, mode- and owner-identical, no
//! foreign setuid file exists, the secret is nowhere she can reach, the daemon still serves.
//! Each test also proves that its race was really run (the attacker was alive for the whole
//! operation and its swaps or hits are counted).
//!
//! Rounds and time: `WS_CKPT_HOSTILE_ROUNDS` / `WS_CKPT_HOSTILE_SECS` (see
//! `hostile_support`); defaults keep each test to a few seconds.

use serde_json::Value;
use std::time::Instant;
use ws_ckpt_integration_tests::hostile_support::{
    budget, build_tree, chown, rounds, write_big, Hostile, Setup, TreeSpec,
};

/// When the hijacker strikes after the daemon's temporary entry appears: at once, after a
/// short delay (the daemon's checks of the fresh entry are done, the copy not begun), or once
/// the daemon has put something in it. Rounds cycle through them.
const HIJACK_TIMINGS: [(&str, &str); 6] = [
    ("immediate", "500"),
    ("immediate", "1000"),
    ("immediate", "250"),
    ("nonempty", "0"),
    ("immediate", "2000"),
    ("immediate", "0"),
];

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// Attack 1: during `release ~/d`, alice renames the daemon's temporary directory in her
/// home away and puts a directory of her own there, then replaces every file the daemon
/// creates in it by a symlink to a root-owned binary. Her files are setuid (hers): a
/// metadata step that follows the link makes root's binary setuid root.
#[test]
fn attack01_release_never_chmods_through_a_symlink() {
    let Some(h) = Hostile::new("hostile-a01", Setup::default()) else {
        return;
    };
    let spec = TreeSpec {
        top_files: 800,
        file_size: 4096,
        big: 16 << 20,
        file_mode: 0o4755,
        ..TreeSpec::default()
    };
    let (rounds, deadline) = (rounds(4), Instant::now() + budget(30));
    let (mut hits, mut swaps) = (0, 0);
    for r in 0..rounds {
        if r > 0 && Instant::now() > deadline {
            break;
        }
        let d = h.alice.path(&format!("d{r}"));
        build_tree(&d, &h.alice, &spec);
        h.as_user(&h.alice, &["init", &s(&d)]).ok();
        let (when, delay) = HIJACK_TIMINGS[r % HIJACK_TIMINGS.len()];
        let atk = h.attacker(
            &h.alice,
            "hijack",
            &[
                "--dir",
                &s(&h.alice.home),
                "--as",
                "own",
                "--target",
                &s(&h.victims.etc),
                "--file-target",
                &s(&h.victims.suid_target),
                "--when",
                when,
                "--delay-us",
                delay,
            ],
            300,
        );
        let rel = h.as_user(&h.alice, &["release", &s(&d)]);
        atk.assert_running("the release");
        let st = atk.stop();
        eprintln!(
            "round {r} ({when}, +{delay} µs): release exit {:?} {}; attacker {st}",
            rel.code(),
            rel.stderr.trim()
        );
        hits += n(&st, "hits");
        swaps += n(&st, "swaps");
        h.assert_no_damage(&format!(
            "round {r}: release of {} while alice hijacked its temporary directory ({when})",
            d.display()
        ));
    }
    assert!(
        hits > 0,
        "the attacker never found a temporary entry of the release in {} (swaps {swaps}): the race was not run",
        h.alice.home.display()
    );
}

/// Attack 2: during `init ~/cN/conf.d`, alice keeps exchanging `~/cN` with a symlink to a root
/// directory holding its own `conf.d` (the stand-in for `/etc`). Path-based steps after the
/// check (temporary symlink, exchange) would swap root's directory for a symlink into her
/// workspace. Two rounds in three hold the swap from the moment the daemon has read her
/// tree (inotify, then a pause in its reads); every third round flips blindly with a random
/// dwell.
#[test]
fn attack02_init_never_replaces_a_root_directory() {
    let Some(h) = Hostile::new("hostile-a02", Setup::default()) else {
        return;
    };
    let (rounds, deadline) = (rounds(16), Instant::now() + budget(20));
    let mut swaps = 0;
    let mut outcomes = Vec::new();
    for r in 0..rounds {
        if r > 0 && Instant::now() > deadline {
            break;
        }
        let parent = h.alice.path(&format!("c{r}"));
        std::fs::create_dir(&parent).unwrap();
        chown(&parent, h.alice.uid, h.alice.gid);
        let conf = parent.join("conf.d");
        build_tree(
            &conf,
            &h.alice,
            &TreeSpec {
                top_files: 3,
                ..TreeSpec::default()
            },
        );
        let trigger = if r % 3 == 2 { "blind" } else { "read" };
        let atk = h.attacker(
            &h.alice,
            "toggle-parent",
            &[
                "--dir",
                &s(&h.alice.home),
                "--name",
                &format!("c{r}"),
                "--target",
                &s(&h.victims.etc),
                "--trigger",
                trigger,
                "--dwell-us",
                "5000:60000",
            ],
            300,
        );
        let init = h.as_user(&h.alice, &["init", &s(&conf)]);
        atk.assert_running("the init");
        let st = atk.stop();
        swaps += n(&st, "swaps");
        outcomes.push(format!("{r}:{trigger}:exit {:?}", init.code()));
        eprintln!(
            "round {r} ({trigger}): init exit {:?} {}; attacker {st}",
            init.code(),
            init.stderr.trim()
        );
        h.assert_no_damage(&format!(
            "round {r}: init of {} while alice swapped its parent for a symlink to {} ({trigger})",
            conf.display(),
            h.victims.etc.display()
        ));
    }
    eprintln!("rounds: {}", outcomes.join(", "));
    assert!(
        swaps > 0,
        "the attacker never swapped the parent: the race was not run"
    );
}

/// Attack 3: during `release ~/d`, alice swaps the daemon's temporary directory for a symlink
/// to a root directory once the daemon has started filling it (rounds vary the timing). Her
/// workspace root is 0777: a release that follows the link writes her files into root's
/// directory and makes it 0777.
#[test]
fn attack03_release_never_writes_into_a_root_directory() {
    let Some(h) = Hostile::new("hostile-a03", Setup::default()) else {
        return;
    };
    let spec = TreeSpec {
        top_files: 2000,
        file_size: 256,
        big: 16 << 20,
        root_mode: 0o777,
        ..TreeSpec::default()
    };
    let (rounds, deadline) = (rounds(4), Instant::now() + budget(30));
    let mut hits = 0;
    for r in 0..rounds {
        if r > 0 && Instant::now() > deadline {
            break;
        }
        let d = h.alice.path(&format!("d{r}"));
        build_tree(&d, &h.alice, &spec);
        h.as_user(&h.alice, &["init", &s(&d)]).ok();
        let (when, delay) = HIJACK_TIMINGS[r % HIJACK_TIMINGS.len()];
        let atk = h.attacker(
            &h.alice,
            "hijack",
            &[
                "--dir",
                &s(&h.alice.home),
                "--as",
                "symlink",
                "--target",
                &s(&h.victims.etc),
                "--file-target",
                &s(&h.victims.suid_target),
                "--when",
                when,
                "--delay-us",
                delay,
            ],
            300,
        );
        let rel = h.as_user(&h.alice, &["release", &s(&d)]);
        atk.assert_running("the release");
        let st = atk.stop();
        eprintln!(
            "round {r} ({when}, +{delay} µs): release exit {:?} {}; attacker {st}",
            rel.code(),
            rel.stderr.trim()
        );
        hits += n(&st, "hits");
        h.assert_no_damage(&format!(
            "round {r}: release of {} while alice swapped its temporary directory for a symlink to {} ({when})",
            d.display(),
            h.victims.etc.display()
        ));
    }
    assert!(
        hits > 0,
        "the attacker never found a temporary entry of the release in {}: the race was not run",
        h.alice.home.display()
    );
}

/// Attack 4: after init has swapped `~/eN` for the workspace symlink, the original tree is
/// removed. Alice finds it (by inode), waits for the first deletion inside it, then exchanges
/// every remaining subdirectory with a symlink to a root directory: a removal that walks by
/// path empties root's directory.
#[test]
fn attack04_init_never_deletes_outside_the_original() {
    let Some(h) = Hostile::new("hostile-a04", Setup::default()) else {
        return;
    };
    let spec = TreeSpec {
        top_files: 5,
        subdirs: 40,
        files_per_dir: 50,
        file_size: 512,
        ..TreeSpec::default()
    };
    let (rounds, deadline) = (rounds(3), Instant::now() + budget(15));
    let (mut hits, mut moved) = (0, 0);
    for r in 0..rounds {
        if r > 0 && Instant::now() > deadline {
            break;
        }
        let name = format!("e{r}");
        let e = h.alice.path(&name);
        build_tree(&e, &h.alice, &spec);
        let atk = h.attacker(
            &h.alice,
            "removal",
            &[
                "--dir",
                &s(&h.alice.home),
                "--name",
                &name,
                "--target",
                &s(&h.victims.wipe),
            ],
            300,
        );
        let init = h.as_user(&h.alice, &["init", &s(&e)]);
        atk.assert_running("the init");
        let st = atk.stop();
        eprintln!(
            "round {r}: init exit {:?} {}; attacker {st}",
            init.code(),
            init.stderr.trim()
        );
        hits += n(&st, "hits");
        moved += u64::from(st["moved"] == true);
        h.assert_no_damage(&format!(
            "round {r}: init of {} while alice swapped subdirectories of the original for symlinks to {} during its removal",
            e.display(),
            h.victims.wipe.display()
        ));
    }
    // The race is run once the path was exchanged for the workspace: from then on the
    // original is being removed, wherever the daemon put it. (`hits` counts the rounds in which
    // alice could also reach it and saw the deletions start.)
    eprintln!("{moved} rounds reached the removal; alice saw it start in {hits}");
    assert!(
        moved > 0,
        "no init ever reached the exchange, so the removal of an original was never attacked"
    );
}

/// Attack 6: during `init ~/fN`, alice keeps exchanging a few "bait" subdirectories with
/// symlinks to a 0700 root directory holding a secret, while a reader thread (as alice)
/// reads everything she can under the mount (her home is checked as root afterwards). A copy
/// that follows the swapped directory puts root's secret where she can read it, at least
/// until verification fails.
#[test]
fn attack06_init_never_copies_what_the_owner_cannot_read() {
    let Some(h) = Hostile::new("hostile-a06", Setup::default()) else {
        return;
    };
    let spec = TreeSpec {
        top_files: 5,
        subdirs: 30,
        files_per_dir: 40,
        file_size: 8192,
        ..TreeSpec::default()
    };
    let bait = TreeSpec {
        top_files: 0,
        ..TreeSpec::default()
    };
    let (rounds, deadline) = (rounds(5), Instant::now() + budget(20));
    let (mut swaps, mut scans) = (0, 0);
    for r in 0..rounds {
        if r > 0 && Instant::now() > deadline {
            break;
        }
        let f = h.alice.path(&format!("f{r}"));
        build_tree(&f, &h.alice, &spec);
        // The baits sort in the middle of the subdirectories, so that the copy has half of
        // the tree to do between looking at a bait and entering it, and half after.
        for b in 0..8 {
            build_tree(&f.join(format!("d014-bait-{b}")), &h.alice, &bait);
        }
        // Copied after the baits: keeps a leaked secret in place long enough to be read.
        write_big(&f.join("d000/zz-big.bin"), 16 << 20, &h.alice);
        let atk = h.attacker(
            &h.alice,
            "toggle-subdirs",
            &[
                "--dir",
                &s(&f),
                "--prefix",
                "d014-bait",
                "--target",
                &s(&h.victims.secret_dir),
                "--dwell-us",
                "1000:8000",
                "--secret",
                &h.victims.secret,
                "--scan",
                &s(&h.env.mount),
            ],
            300,
        );
        let init = h.as_user(&h.alice, &["init", &s(&f)]);
        atk.assert_running("the init");
        let st = atk.stop();
        eprintln!(
            "round {r}: init exit {:?} {}; attacker {st}",
            init.code(),
            init.stderr.trim()
        );
        swaps += n(&st, "swaps");
        scans += n(&st, "scans");
        let read: Vec<String> = st["secret_hits"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            read.is_empty(),
            "round {r}: alice READ root's secret (from {}, a 0700 root directory) while the init of {} ran, at:\n  {}",
            h.victims.secret_dir.display(),
            f.display(),
            read.join("\n  ")
        );
        h.assert_no_damage(&format!(
            "round {r}: init of {} while alice swapped subdirectories for symlinks to {}",
            f.display(),
            h.victims.secret_dir.display()
        ));
    }
    assert!(
        swaps > 0 && scans > 0,
        "the attacker did not run (swaps {swaps}, reader passes {scans})"
    );
}
