//! Races a hostile local user drives against the tree engine (issue 7, items 1, 3, 4 and 6): a
//! process running as a real unprivileged user (`wsh_tree_*`) exchanges a directory (or file)
//! the engine is working on with a symlink to a root-owned victim directory (0700, with a secret
//! file and a root "binary"), and back, in a tight loop, while the engine copies or removes —
//! many rounds, as root in-process (a root tree with a user-writable subdirectory, where only the
//! descriptor discipline protects the victim) and as the owner in a worker (where the kernel
//! does too).
//!
//! Afterwards, every time: the victim is byte-, mode-, owner-, mtime- and xattr-identical and
//! inotify saw nobody even open it; no setuid file appeared; the secret is nowhere in the
//! destination; nothing outside the tree was removed; the engine returned (an error is fine,
//! a panic is not).

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ws_ckpt::tree::{Compare, Dir, Job, Owner, Removed, TreeError, WorkerSettings};
use ws_ckpt_integration_tests::tree_support::{
    files_containing, full_digest, setuid_files, TreeUser, Victim,
};
use ws_ckpt_integration_tests::{Spawned, TestEnv};

const PROBE: &str = env!("CARGO_BIN_EXE_tree-probe");
/// How long each race runs (the attackers stop one second later).
const BUDGET: Duration = Duration::from_secs(4);
/// Most rounds per race.
const MAX_ROUNDS: usize = 200;

fn worker() -> WorkerSettings {
    WorkerSettings {
        exe: PROBE.into(),
        ..WorkerSettings::default()
    }
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Start an attacker loop as `user`: exchange `a` and `b` (re-creating `b` as a symlink to
/// `link` when given) until the budget is spent.
fn attacker(env: &TestEnv, user: &TreeUser, a: &Path, b: &Path, link: Option<&Path>) -> Spawned {
    let mut cmd = user.command(Path::new(PROBE));
    cmd.arg("swap")
        .arg(a.parent().unwrap())
        .arg(a.file_name().unwrap())
        .arg(b.parent().unwrap())
        .arg(b.file_name().unwrap())
        .arg("100000000")
        .arg((BUDGET.as_secs() + 1).to_string());
    if let Some(l) = link {
        cmd.arg(l);
    }
    env.spawn_command(cmd)
}

/// Wait for the attackers and return how many exchanges they made in total.
fn swaps(attackers: Vec<Spawned>) -> u64 {
    attackers
        .iter()
        .map(|a| {
            a.wait_timeout(Duration::from_secs(10))
                .unwrap_or_else(|| panic!("attacker {} did not stop", a.cmd()));
            a.stdout().trim().parse::<u64>().unwrap_or(0)
        })
        .sum()
}

/// Fill `dir` with a small tree: files, a subdirectory, a nested file.
fn fill(dir: &Path) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..20 {
        fs::write(dir.join(format!("f{i:02}")), format!("payload {i}\n")).unwrap();
    }
    fs::write(dir.join("sub/g"), b"nested\n").unwrap();
}

/// Outcome counters of one race.
#[derive(Default, Debug)]
struct Tally {
    ok: u32,
    failed: u32,
    /// The first few distinct failures, for the report.
    errors: Vec<String>,
}

impl Tally {
    fn record<T>(&mut self, r: &Result<T, TreeError>) {
        match r {
            Ok(_) => self.ok += 1,
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.contains("panicked"), "{msg}");
                self.failed += 1;
                if self.errors.len() < 4 && !self.errors.contains(&msg) {
                    self.errors.push(msg);
                }
            }
        }
    }
}

/// Everything a destination must never contain.
fn assert_clean(dst: &Path, victim: &Victim) {
    assert_eq!(
        setuid_files(dst),
        Vec::<(PathBuf, u32)>::new(),
        "setuid file in {}",
        dst.display()
    );
    assert_eq!(
        files_containing(dst, &victim.secret),
        Vec::<PathBuf>::new(),
        "the secret leaked into {}",
        dst.display()
    );
}

/// Remove `parent/name` as root, retrying while an attacker keeps adding entries (bounded).
fn remove_as_root(parent: &Path, name: &str) {
    let p = Dir::open(parent).unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while Instant::now() < until {
        let Some(st) = p.child_stat(OsStr::new(name)).unwrap() else {
            return;
        };
        match Job::in_process().remove(&p, OsStr::new(name), st.identity()) {
            Ok(Removed::Removed { .. } | Removed::Absent) => return,
            Err(e) => last = Some(e),
        }
    }
    panic!("cannot remove {}/{name}: {last:?}", parent.display());
}

#[test]
fn tree_race_copy_as_owner_never_reaches_the_victim() {
    let Some(env) = TestEnv::new("tree-race-copy-user") else {
        return;
    };
    let mnt = env.extra_btrfs("race", 256);
    let user = TreeUser::new();
    let victim = Victim::new(&env.root.join("victim"));
    let home = env.home.join("u");
    let src = home.join("src");
    fs::create_dir_all(&src).unwrap();
    fill(&src.join("d"));
    fs::write(src.join("file"), b"plain\n").unwrap();
    std::os::unix::fs::symlink(&victim.dir, home.join("evil")).unwrap();
    std::os::unix::fs::symlink(victim.dir.join("secret"), home.join("evilfile")).unwrap();
    user.own(&home);
    let attackers = vec![
        attacker(&env, &user, &src.join("d"), &home.join("evil"), None),
        attacker(&env, &user, &src.join("file"), &home.join("evilfile"), None),
    ];
    let owner = Owner::lookup(user.uid).unwrap();
    let (mut copies, mut verifies) = (Tally::default(), Tally::default());
    let started = Instant::now();
    for round in 0..MAX_ROUNDS {
        if started.elapsed() > BUDGET {
            break;
        }
        let name = format!("dst{round}");
        let dst = mnt.join(&name);
        fs::create_dir(&dst).unwrap();
        let (a, b) = (Dir::open(&src).unwrap(), Dir::open(&dst).unwrap());
        let mut job = Job::as_owner(owner.clone()).with_worker(worker());
        let r = job.copy(&a, &b);
        copies.record(&r);
        if r.is_ok() {
            verifies.record(&job.verify(&a, &b, Compare::Full));
        }
        assert_clean(&dst, &victim);
        remove_as_root(&mnt, &name);
    }
    let swapped = swaps(attackers);
    eprintln!("copies {copies:?}, verifies {verifies:?}, {swapped} exchanges");
    assert!(swapped > 0, "the attack never ran");
    assert!(copies.ok + copies.failed > 3);
    victim.assert_untouched();
}

#[test]
fn tree_race_copy_as_root_with_a_hostile_subdirectory() {
    let Some(env) = TestEnv::new("tree-race-copy-root") else {
        return;
    };
    let mnt = env.extra_btrfs("race", 256);
    let user = TreeUser::new();
    let victim = Victim::new(&env.root.join("victim"));
    // A root tree with a directory the user may write (like /srv/app/uploads).
    let src = env.root.join("rtree");
    let public = src.join("pub");
    fs::create_dir_all(&public).unwrap();
    fs::write(src.join("root-file"), b"root's\n").unwrap();
    fill(&public.join("d"));
    std::os::unix::fs::symlink(&victim.dir, public.join("evil")).unwrap();
    std::os::unix::fs::symlink(victim.dir.join("bin"), public.join("evilbin")).unwrap();
    fs::write(public.join("f"), b"hers\n").unwrap();
    user.own(&public);
    let attackers = vec![
        attacker(&env, &user, &public.join("d"), &public.join("evil"), None),
        attacker(
            &env,
            &user,
            &public.join("f"),
            &public.join("evilbin"),
            None,
        ),
    ];
    let mut copies = Tally::default();
    let started = Instant::now();
    for round in 0..MAX_ROUNDS {
        if started.elapsed() > BUDGET {
            break;
        }
        let name = format!("dst{round}");
        let dst = mnt.join(&name);
        fs::create_dir(&dst).unwrap();
        let (a, b) = (Dir::open(&src).unwrap(), Dir::open(&dst).unwrap());
        let r = Job::in_process().copy(&a, &b);
        copies.record(&r);
        if r.is_ok() {
            let _ = Job::in_process().verify(&a, &b, Compare::Full);
        }
        assert_clean(&dst, &victim);
        remove_as_root(&mnt, &name);
    }
    let swapped = swaps(attackers);
    eprintln!("copies {copies:?}, {swapped} exchanges");
    assert!(swapped > 0, "the attack never ran");
    victim.assert_untouched();
}

#[test]
fn tree_race_removal_never_empties_the_victim() {
    let Some(env) = TestEnv::new("tree-race-remove") else {
        return;
    };
    let user = TreeUser::new();
    let victim = Victim::new(&env.root.join("victim"));
    let sibling = env.root.join("sibling");
    fill(&sibling);
    let sibling_before = full_digest(&sibling);
    // Root removes a root tree with a user-writable directory inside; the user swaps a
    // subdirectory of it for a symlink to the victim and back (recreating the link when the
    // removal took it).
    let tree = env.root.join("rm");
    let public = tree.join("pub");
    // Rebuilt out of the attackers' reach (root-only staging directory), then moved into
    // place: building by path where they swap entries would make the TEST write into the
    // victim through their symlinks.
    let stage = env.root.join("stage");
    let rebuild = || {
        if tree.symlink_metadata().is_ok() {
            return;
        }
        let staged = stage.join("rm");
        fs::create_dir_all(staged.join("pub")).unwrap();
        fill(&staged.join("pub/d"));
        fill(&staged.join("rootdir"));
        user.own(&staged.join("pub"));
        fs::rename(&staged, &tree).unwrap();
    };
    fs::create_dir(&stage).unwrap();
    fs::set_permissions(&stage, fs::Permissions::from_mode(0o700)).unwrap();
    rebuild();
    // Only a directory the user may write: the attacker's own scratch directory next to it.
    let scratch = env.home.join("scratch");
    fs::create_dir(&scratch).unwrap();
    user.own(&scratch);
    let attackers = vec![
        attacker(
            &env,
            &user,
            &public.join("d"),
            &public.join("evil"),
            Some(&victim.dir),
        ),
        attacker(
            &env,
            &user,
            &public.join("d/sub"),
            &scratch.join("evil"),
            Some(&victim.dir),
        ),
    ];
    let mut removals = Tally::default();
    let started = Instant::now();
    let root_dir = Dir::open(&env.root).unwrap();
    for _ in 0..MAX_ROUNDS {
        if started.elapsed() > BUDGET {
            break;
        }
        rebuild();
        let id = root_dir
            .child_stat(OsStr::new("rm"))
            .unwrap()
            .unwrap()
            .identity();
        let r = Job::in_process().remove(&root_dir, OsStr::new("rm"), id);
        removals.record(&r);
        remove_as_root(&env.root, "rm");
        assert!(!tree.exists());
    }
    let swapped = swaps(attackers);
    eprintln!("removals {removals:?}, {swapped} exchanges");
    assert!(swapped > 0, "the attack never ran");
    assert!(removals.ok > 0, "no removal ever succeeded: {removals:?}");
    victim.assert_untouched();
    assert_eq!(
        full_digest(&sibling),
        sibling_before,
        "removal left its tree"
    );
}

#[test]
fn tree_race_removal_as_owner_never_empties_the_victim() {
    let Some(env) = TestEnv::new("tree-race-remove-user") else {
        return;
    };
    let user = TreeUser::new();
    let victim = Victim::new(&env.root.join("victim"));
    let home = env.home.join("u");
    fs::create_dir(&home).unwrap();
    fill(&home.join("keep"));
    user.own(&home);
    let keep_before = full_digest(&home.join("keep"));
    let tree = home.join("orig");
    // Rebuilt in a root-only staging directory and moved into place (see above).
    let stage = env.root.join("stage");
    let rebuild = || {
        if tree.symlink_metadata().is_ok() {
            return;
        }
        let staged = stage.join("orig");
        fill(&staged.join("d"));
        user.own(&staged);
        fs::rename(&staged, &tree).unwrap();
    };
    fs::create_dir(&stage).unwrap();
    fs::set_permissions(&stage, fs::Permissions::from_mode(0o700)).unwrap();
    rebuild();
    let attackers = vec![attacker(
        &env,
        &user,
        &tree.join("d"),
        &home.join("evil"),
        Some(&victim.dir),
    )];
    let owner = Owner::lookup(user.uid).unwrap();
    let parent = Dir::open(&home).unwrap();
    let mut removals = Tally::default();
    let started = Instant::now();
    for _ in 0..MAX_ROUNDS {
        if started.elapsed() > BUDGET {
            break;
        }
        rebuild();
        let id = parent
            .child_stat(OsStr::new("orig"))
            .unwrap()
            .unwrap()
            .identity();
        let r = Job::as_owner(owner.clone()).with_worker(worker()).remove(
            &parent,
            OsStr::new("orig"),
            id,
        );
        removals.record(&r);
        remove_as_root(&home, "orig");
    }
    let swapped = swaps(attackers);
    eprintln!("removals {removals:?}, {swapped} exchanges");
    assert!(swapped > 0, "the attack never ran");
    victim.assert_untouched();
    assert_eq!(full_digest(&home.join("keep")), keep_before);
}

/// A release: the copy goes from the workspace into a directory in the user's home, which she
/// controls while it is written. She swaps what the engine creates for symlinks to the victim,
/// hoping the engine writes, chmods or chowns through them.
fn release_race(as_root: bool) {
    let name = if as_root {
        "tree-race-release-root"
    } else {
        "tree-race-release-user"
    };
    let Some(env) = TestEnv::new(name) else {
        return;
    };
    let mnt = env.extra_btrfs("ws", 256);
    let user = TreeUser::new();
    let victim = Victim::new(&env.root.join("victim"));
    let ws = mnt.join("ws");
    fill(&ws.join("d"));
    fs::write(ws.join("d/run"), b"#!/bin/sh\n").unwrap();
    user.own(&ws);
    chmod(&ws.join("d/run"), 0o4755); // her own setuid file: legitimate, copied as hers
    chmod(&ws.join("d"), 0o777);
    let home = env.home.join("u");
    fs::create_dir(&home).unwrap();
    user.own(&home);
    let dst = home.join("rel");
    let attackers = vec![
        attacker(
            &env,
            &user,
            &dst.join("d"),
            &dst.join(".evil"),
            Some(&victim.dir),
        ),
        attacker(
            &env,
            &user,
            &dst.join("d/run"),
            &dst.join(".evilbin"),
            Some(&victim.dir.join("bin")),
        ),
        attacker(
            &env,
            &user,
            &dst.join("d/sub"),
            &home.join("evilsub"),
            Some(&victim.dir),
        ),
    ];
    let owner = Owner::lookup(user.uid).unwrap();
    let mut copies = Tally::default();
    let started = Instant::now();
    for _ in 0..MAX_ROUNDS {
        if started.elapsed() > BUDGET {
            break;
        }
        fs::create_dir(&dst).unwrap();
        if as_root {
            user.own(&dst); // root copying into a directory she owns
        }
        let (a, b) = (Dir::open(&ws).unwrap(), Dir::open(&dst).unwrap());
        let mut job = if as_root {
            Job::in_process()
        } else {
            Job::as_owner(owner.clone()).with_worker(worker())
        };
        let r = job.copy(&a, &b);
        copies.record(&r);
        if r.is_ok() {
            let _ = job.verify(&a, &b, Compare::Full);
        }
        // Her own setuid file may be there; nothing else may be setuid.
        for (p, uid) in setuid_files(&home) {
            assert_eq!(uid, user.uid, "{}", p.display());
        }
        assert!(
            files_containing(&home, &victim.secret).is_empty(),
            "the secret leaked"
        );
        remove_as_root(&home, "rel");
    }
    let swapped = swaps(attackers);
    eprintln!("copies {copies:?}, {swapped} exchanges");
    assert!(swapped > 0, "the attack never ran");
    victim.assert_untouched();
}

#[test]
fn tree_race_release_as_owner_never_writes_through_her_links() {
    release_race(false);
}

#[test]
fn tree_race_release_as_root_never_writes_through_her_links() {
    release_race(true);
}
