//! The credential worker, tested as root with a real unprivileged user (`wsh_tree_*`): it runs
//! with exactly the owner's ids and no capability (also when started from the real `ws-ckpt`
//! binary), the kernel applies her permissions (a 0700 root directory in her tree makes her copy
//! fail), entries she could not recreate are refused before anything is written, and she can
//! kill her worker (the job fails cleanly) but not ptrace it, read its memory, or signal the
//! daemon.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ws_ckpt::tree::worker::WORKER_ARG;
use ws_ckpt::tree::{
    current_credentials, Compare, Dir, Job, Owner, Progress, Removed, TreeError, WorkerSettings,
};
use ws_ckpt_integration_tests::tree_support::{files_containing, TreeUser};
use ws_ckpt_integration_tests::{bin_path, TestEnv};

const PROBE: &str = env!("CARGO_BIN_EXE_tree-probe");

fn worker() -> WorkerSettings {
    WorkerSettings {
        exe: PROBE.into(),
        ..WorkerSettings::default()
    }
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn lstat(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap()
}

fn as_user(user: &TreeUser) -> Job<'static> {
    Job::as_owner(Owner::lookup(user.uid).unwrap()).with_worker(worker())
}

/// A tree of the user's own: everything she can make herself.
fn user_tree(root: &Path, user: &TreeUser) {
    fs::create_dir_all(root.join("a/b")).unwrap();
    fs::write(root.join("a/b/f"), b"hers").unwrap();
    fs::write(root.join("suid-mine"), b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::symlink("a/b/f", root.join("link")).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    fs::write(root.join("h1"), b"hard").unwrap();
    fs::hard_link(root.join("h1"), root.join("a/h2")).unwrap();
    let f = fs::File::create(root.join("sparse")).unwrap();
    f.set_len(1 << 30).unwrap();
    f.write_all_at(b"x", 1 << 29).unwrap();
    fs::create_dir(root.join("ro")).unwrap();
    fs::write(root.join("ro/inside"), b"r").unwrap();
    user.own(root);
    chmod(&root.join("suid-mine"), 0o4755);
    chmod(&root.join("ro"), 0o555);
}

#[test]
fn tree_worker_runs_as_the_owner_with_no_capability() {
    let Some(_env) = TestEnv::new("tree-worker-creds") else {
        return;
    };
    let user = TreeUser::new();
    let owner = Owner::lookup(user.uid).unwrap();
    let report = as_user(&user).credentials().unwrap();
    report.check(&owner).unwrap();
    assert_eq!(report.uids, [user.uid; 3]);
    assert_eq!(report.cap_bounding, 0);
    assert!(report.no_new_privs && !report.dumpable);
    // Tree work runs niced, below the daemon's interactive requests (at 10, or at the nice
    // it inherited when that is already lower priority).
    let inherited = current_credentials().nice;
    assert_eq!(
        report.nice,
        inherited.max(10),
        "a worker's job runs at nice 10 (this process runs at {inherited})"
    );
    // The real binary's `main` has the hook too.
    let mut job = Job::as_owner(owner.clone()).with_worker(WorkerSettings {
        exe: bin_path(),
        ..WorkerSettings::default()
    });
    job.credentials().unwrap().check(&owner).unwrap();
    // A root job runs in-process with root's credentials.
    let mut root = Job::as_owner(Owner::root());
    assert!(root.runs_in_process().unwrap());
    let before = current_credentials().nice;
    let in_process = root.credentials().unwrap();
    assert_eq!(in_process.uids, [0; 3]);
    assert_eq!(
        in_process.nice,
        before.max(10),
        "an in-process job runs niced too"
    );
    assert_eq!(
        current_credentials().nice,
        before,
        "the calling thread gets its priority back after the job"
    );
    // Started by hand (not as root), the worker refuses to do anything.
    let out = user
        .command(Path::new(PROBE))
        .arg(WORKER_ARG)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("started by the ws-ckpt daemon"));
}

#[test]
fn tree_worker_copies_verifies_and_removes_as_the_owner() {
    let Some(env) = TestEnv::new("tree-worker-copy") else {
        return;
    };
    let mnt = env.extra_btrfs("wcopy", 256);
    let user = TreeUser::new();
    let src = env.home.join("proj");
    fs::create_dir(&src).unwrap();
    user_tree(&src, &user);
    let dst = mnt.join("ws");
    fs::create_dir(&dst).unwrap(); // root-owned, handed over by the job
    let mut seen = Vec::<Progress>::new();
    let mut report = |p: &Progress| seen.push(*p);
    let mut job = Job::as_owner(Owner::lookup(user.uid).unwrap())
        .with_worker(worker())
        .with_progress(&mut report);
    let (a, b) = (Dir::open(&src).unwrap(), Dir::open(&dst).unwrap());
    assert!(!job.runs_in_process().unwrap());
    let stats = job.copy(&a, &b).unwrap();
    assert_eq!(
        (stats.files, stats.hardlinks, stats.symlinks, stats.special),
        (5, 1, 1, 1)
    );
    job.verify(&a, &b, Compare::Full).unwrap();
    job.verify(&a, &b, Compare::Metadata).unwrap();
    job.prove_subset(&a, &b).unwrap();
    drop(job);
    let last = seen.last().unwrap();
    assert!(last.entries_total > 0);
    let root = lstat(&dst);
    assert_eq!((root.uid(), root.gid()), (user.uid, user.gid));
    assert_eq!(lstat(&dst.join("suid-mine")).mode() & 0o7777, 0o4755);
    assert_eq!(lstat(&dst.join("ro")).mode() & 0o7777, 0o555);
    assert_eq!(lstat(&dst.join("a/b/f")).uid(), user.uid);
    // Back into her home (a release): a fresh root-made directory handed over.
    let mine = env.home.join("u");
    fs::create_dir(&mine).unwrap();
    user.own(&mine);
    let back = mine.join("proj.back");
    fs::create_dir(&back).unwrap();
    let mut job = as_user(&user);
    let c = Dir::open(&back).unwrap();
    job.copy(&b, &c).unwrap();
    job.verify(&b, &c, Compare::Full).unwrap();
    // Removal as her, identity-checked, read-only directory included.
    let parent = Dir::open(&mine).unwrap();
    let id = parent
        .child_stat(OsStr::new("proj.back"))
        .unwrap()
        .unwrap()
        .identity();
    let removed = job.remove(&parent, OsStr::new("proj.back"), id).unwrap();
    assert!(
        matches!(removed, Removed::Removed { entries } if entries > 5),
        "{removed:?}"
    );
    assert!(!back.exists());
    assert_eq!(
        job.remove(&parent, OsStr::new("proj.back"), id).unwrap(),
        Removed::Absent
    );
    // In root's directory she may not remove her tree's root: the kernel says so.
    let home = Dir::open(&env.home).unwrap();
    let id = home
        .child_stat(OsStr::new("u"))
        .unwrap()
        .unwrap()
        .identity();
    let err = job.remove(&home, OsStr::new("u"), id).unwrap_err();
    assert!(
        matches!(&err, TreeError::Io { path, source, .. }
            if path == &mine && source.raw_os_error() == Some(libc::EACCES)),
        "{err:?}"
    );
    // A destination that belongs to somebody else is refused.
    let other = env.home.join("other");
    fs::create_dir(&other).unwrap();
    std::os::unix::fs::lchown(&other, Some(4242), Some(4242)).unwrap();
    let err = job.copy(&a, &Dir::open(&other).unwrap()).unwrap_err();
    assert!(matches!(err, TreeError::BadDestination { .. }), "{err:?}");
}

#[test]
fn tree_worker_is_bound_by_the_owners_permissions() {
    let Some(env) = TestEnv::new("tree-worker-perms") else {
        return;
    };
    let user = TreeUser::new();
    let src = env.home.join("proj");
    fs::create_dir_all(src.join("mine")).unwrap();
    fs::write(src.join("mine/f"), b"hers").unwrap();
    user.own(&src);
    // A root directory she cannot enter, inside her tree.
    let locked = src.join("rootdir");
    fs::create_dir(&locked).unwrap();
    fs::write(locked.join("secret"), b"ROOT-ONLY-SECRET").unwrap();
    chmod(&locked, 0o700);
    let dst = env.root.join("dst");
    fs::create_dir(&dst).unwrap();
    let err = as_user(&user)
        .copy(&Dir::open(&src).unwrap(), &Dir::open(&dst).unwrap())
        .unwrap_err();
    // The owner check refuses root's directory before the kernel even has to.
    assert!(
        matches!(&err, TreeError::NotRecreatable { path, uid, .. } if path == &locked && *uid == user.uid),
        "{err:?}"
    );
    assert_eq!(fs::read_dir(&dst).unwrap().count(), 0, "nothing written");
    // Hers, but unreadable to her: the kernel says no to her worker.
    fs::remove_dir_all(&locked).unwrap();
    let closed = src.join("closed");
    fs::create_dir(&closed).unwrap();
    fs::write(closed.join("x"), b"x").unwrap();
    user.own(&closed);
    chmod(&closed, 0o000);
    let err = as_user(&user)
        .copy(&Dir::open(&src).unwrap(), &Dir::open(&dst).unwrap())
        .unwrap_err();
    assert!(
        matches!(&err, TreeError::Io { path, source, .. }
            if path.starts_with(&closed) && source.raw_os_error() == Some(libc::EACCES)),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("permissions of the tree's owner"),
        "{err}"
    );
    // As root, the same tree copies (root may read everything).
    chmod(&closed, 0o700);
    let dst2 = env.root.join("dst2");
    fs::create_dir(&dst2).unwrap();
    Job::in_process()
        .copy(&Dir::open(&src).unwrap(), &Dir::open(&dst2).unwrap())
        .unwrap();
    assert!(files_containing(&dst, b"ROOT-ONLY-SECRET").is_empty());
}

#[test]
fn tree_worker_refuses_what_the_owner_cannot_recreate() {
    let Some(env) = TestEnv::new("tree-worker-recreate") else {
        return;
    };
    let user = TreeUser::new();
    let src = env.home.join("proj");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("ok"), b"hers").unwrap();
    user.own(&src);
    let cases: Vec<(PathBuf, &str)> = vec![
        (src.join("roots-file"), "belongs to uid 0"),
        (src.join("dev"), "device node"),
        (src.join("foreign-group"), "which uid"),
    ];
    for (i, (path, why)) in cases.iter().enumerate() {
        match i {
            0 => fs::write(path, b"root's").unwrap(),
            1 => {
                nix::sys::stat::mknod(
                    path,
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                    nix::sys::stat::makedev(1, 3),
                )
                .unwrap();
                std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid)).unwrap();
            }
            _ => {
                fs::write(path, b"g").unwrap();
                std::os::unix::fs::lchown(path, Some(user.uid), Some(0)).unwrap();
            }
        }
        let dst = env.root.join(format!("dst{i}"));
        fs::create_dir(&dst).unwrap();
        let err = as_user(&user)
            .copy(&Dir::open(&src).unwrap(), &Dir::open(&dst).unwrap())
            .unwrap_err();
        match &err {
            TreeError::NotRecreatable { path: p, what, .. } => {
                assert_eq!(p, path);
                assert!(what.contains(why), "{what}");
            }
            other => panic!("{other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("only root"),
            "{msg}"
        );
        assert_eq!(fs::read_dir(&dst).unwrap().count(), 0, "nothing written");
        fs::remove_file(path).unwrap();
    }
}

/// The pid of our worker child running `WORKER_ARG` as `uid`, if any.
fn worker_pid(uid: u32) -> Option<u32> {
    let me = std::process::id();
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if is_our_worker(pid, me, uid) {
            return Some(pid);
        }
    }
    None
}

/// Whether `pid` is a tree worker child of `parent` running as `uid` (the tests of this file
/// run in parallel in one process, each with its own user: another test's worker is not it).
fn is_our_worker(pid: u32, parent: u32, uid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let ppid = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u32>().ok());
    let real_uid = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|st| {
            st.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|u| u.parse::<u32>().ok())
        });
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    ppid == Some(parent)
        && real_uid == Some(uid)
        && cmdline
            .windows(WORKER_ARG.len())
            .any(|w| w == WORKER_ARG.as_bytes())
}

#[test]
fn tree_owner_can_kill_her_worker_but_not_trace_it_or_signal_the_daemon() {
    let Some(env) = TestEnv::new("tree-worker-signal") else {
        return;
    };
    let user = TreeUser::new();
    let src = env.home.join("big");
    fs::create_dir(&src).unwrap();
    for i in 0..6000 {
        fs::write(src.join(format!("f{i:05}")), vec![(i % 251) as u8; 8192]).unwrap();
    }
    user.own(&src);
    let dst = env.root.join("dst");
    fs::create_dir(&dst).unwrap();
    let probe = |args: &[&str]| -> String {
        let out = user.command(Path::new(PROBE)).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let done = AtomicBool::new(false);
    let probed = std::sync::atomic::AtomicU32::new(0);
    let mut results = Vec::new();
    let mut report = |p: &Progress| {
        // Only once the worker reported progress has it dropped to the owner.
        if done.load(Ordering::Relaxed) || p.entries_done == 0 {
            return;
        }
        let Some(pid) = worker_pid(user.uid) else {
            return;
        };
        done.store(true, Ordering::Relaxed);
        probed.store(pid, Ordering::Relaxed);
        // Hold the worker while she probes it, so the copy cannot finish first however
        // loaded the machine is (her SIGKILL ends a stopped process too).
        let stopped = i32::try_from(pid).expect("a pid fits in pid_t");
        // SAFETY: kill(2) with a plain signal number has no memory-safety preconditions.
        unsafe { libc::kill(stopped, libc::SIGSTOP) };
        let pid = pid.to_string();
        results.push(("ptrace", probe(&["ptrace", &pid])));
        results.push(("readmem", probe(&["readmem", &pid])));
        results.push((
            "daemon",
            probe(&["signal", &std::process::id().to_string(), "0"]),
        ));
        results.push(("kill", probe(&["signal", &pid, "9"])));
        // Let it go on if her kill failed, so the assertions below report it, not a hang.
        // SAFETY: as above.
        unsafe { libc::kill(stopped, libc::SIGCONT) };
    };
    let err = Job::as_owner(Owner::lookup(user.uid).unwrap())
        .with_worker(worker())
        .with_progress(&mut report)
        .copy(&Dir::open(&src).unwrap(), &Dir::open(&dst).unwrap())
        .unwrap_err();
    assert!(
        done.load(Ordering::Relaxed),
        "the copy ended before the probes ran"
    );
    let get = |k: &str| {
        results
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(
        get("ptrace"),
        libc::EPERM.to_string(),
        "she must not ptrace her worker"
    );
    assert_eq!(
        get("readmem"),
        format!("mem: {0}\nenviron: {0}", libc::EACCES),
        "she must not read her worker's memory"
    );
    assert_eq!(
        get("daemon"),
        libc::EPERM.to_string(),
        "she must not signal the daemon"
    );
    assert_eq!(get("kill"), "ok", "she may kill her own job");
    assert!(matches!(err, TreeError::Worker { .. }), "{err:?}");
    let pid = probed.load(Ordering::Relaxed);
    assert!(
        !is_our_worker(pid, std::process::id(), user.uid),
        "the worker {pid} was reaped"
    );
}
