//! Root tier: the send-stream differ against real btrfs snapshots on a loop device. Each
//! scenario makes two read-only snapshots with btrfs-progs, diffs them through the product's
//! `Sys` (`BTRFS_IOC_SEND`), and cross-checks the same stream produced by `btrfs send`; a
//! randomized test compares with an inode-level oracle. Needs root (fails under `CI` when not
//! root, prints SKIPPED otherwise).
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use ws_ckpt::diff::{
    diff_from_stream, diff_subvolumes, normalize, Change, DiffEntry, DiffError, EntryKind,
};
use ws_ckpt::sys::linux::LinuxSys;
use ws_ckpt_integration_tests::LoopBtrfs;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Create subvolume `ws`, run `setup` in it, snapshot read-only as `s1`, run `change`,
/// snapshot as `s2`, and diff. Also returns `btrfs receive --dump` of the same stream
/// (cross-check for failure messages only).
fn scenario(
    test: &str,
    setup: impl FnOnce(&Path),
    change: impl FnOnce(&Path),
) -> Option<(Vec<DiffEntry>, String)> {
    let fs = LoopBtrfs::new(test, 256)?;
    let m = fs.mnt().to_path_buf();
    let ws = m.join("ws");
    run(Command::new("btrfs").args(["subvolume", "create"]).arg(&ws));
    setup(&ws);
    run(Command::new("btrfs")
        .args(["subvolume", "snapshot", "-r"])
        .arg(&ws)
        .arg(m.join("s1")));
    change(&ws);
    run(Command::new("btrfs")
        .args(["subvolume", "snapshot", "-r"])
        .arg(&ws)
        .arg(m.join("s2")));
    let dump = run(Command::new("sh").arg("-c").arg(format!(
        "btrfs send -q --no-data -p '{0}/s1' '{0}/s2' | btrfs receive --dump",
        m.display()
    )));
    let sys = LinuxSys::new().expect("mkfs.btrfs");
    let entries = diff_subvolumes(&sys, &m.join("s1"), &m.join("s2")).expect("diff");
    // The stream btrfs-progs writes gives the same lines (kinds aside).
    let progs = Command::new("btrfs")
        .args(["send", "-q", "--no-data", "-p"])
        .arg(m.join("s1"))
        .arg(m.join("s2"))
        .output()
        .expect("btrfs send");
    assert!(progs.status.success());
    let from_progs = diff_from_stream(&progs.stdout).expect("btrfs-progs stream parses");
    assert_eq!(lines(&from_progs), lines(&entries), "stream dump:\n{dump}");
    Some((entries, dump))
}

fn lines(entries: &[DiffEntry]) -> Vec<String> {
    entries.iter().map(|e| e.to_string()).collect()
}

fn write(p: &Path, s: &str) {
    fs::write(p, s).expect("write");
}

/// Assert the lines and kinds of a scenario.
fn check(result: Option<(Vec<DiffEntry>, String)>, expected: &[(&str, EntryKind)]) {
    let Some((entries, dump)) = result else {
        return;
    };
    let got: Vec<(String, EntryKind)> = entries.iter().map(|e| (e.to_string(), e.kind)).collect();
    let want: Vec<(String, EntryKind)> =
        expected.iter().map(|(l, k)| (l.to_string(), *k)).collect();
    assert_eq!(got, want, "stream dump:\n{dump}");
}

use EntryKind::{Dir, File, Symlink};

#[test]
fn btrfs_add_file() {
    let r = scenario("btrfs_add_file", |_| {}, |ws| write(&ws.join("new"), "x"));
    check(r, &[("+ new", File)]);
}

#[test]
fn btrfs_delete_file() {
    let r = scenario(
        "btrfs_delete_file",
        |ws| write(&ws.join("old"), "x"),
        |ws| fs::remove_file(ws.join("old")).unwrap(),
    );
    check(r, &[("- old", File)]);
}

#[test]
fn btrfs_modify_content() {
    let r = scenario(
        "btrfs_modify_content",
        |ws| {
            fs::create_dir(ws.join("d")).unwrap();
            write(&ws.join("d/f"), "one");
            write(&ws.join("same"), "same");
        },
        |ws| write(&ws.join("d/f"), "two, longer"),
    );
    check(r, &[("M d/f", File)]);
}

#[test]
fn btrfs_chmod_file_and_dir() {
    let r = scenario(
        "btrfs_chmod_file_and_dir",
        |ws| {
            write(&ws.join("f"), "x");
            fs::create_dir(ws.join("d")).unwrap();
        },
        |ws| {
            fs::set_permissions(ws.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
            fs::set_permissions(ws.join("d"), fs::Permissions::from_mode(0o700)).unwrap();
        },
    );
    check(r, &[("M d", Dir), ("M f", File)]);
}

#[test]
fn btrfs_rename_file() {
    let r = scenario(
        "btrfs_rename_file",
        |ws| write(&ws.join("a"), "x"),
        |ws| fs::rename(ws.join("a"), ws.join("b")).unwrap(),
    );
    check(r, &[("R a → b", File)]);
}

#[test]
fn btrfs_rename_dir_with_children_is_one_rename() {
    let r = scenario(
        "btrfs_rename_dir_with_children_is_one_rename",
        |ws| {
            fs::create_dir_all(ws.join("dir/sub")).unwrap();
            write(&ws.join("dir/x"), "x");
            write(&ws.join("dir/sub/y"), "y");
        },
        |ws| fs::rename(ws.join("dir"), ws.join("dir2")).unwrap(),
    );
    check(r, &[("R dir → dir2", Dir)]);
}

#[test]
fn btrfs_add_dir_with_children() {
    let r = scenario(
        "btrfs_add_dir_with_children",
        |ws| fs::create_dir(ws.join("existing")).unwrap(),
        |ws| {
            fs::create_dir_all(ws.join("existing/nd/sub")).unwrap();
            write(&ws.join("existing/nd/f1"), "1");
            write(&ws.join("existing/nd/sub/f2"), "2");
        },
    );
    check(
        r,
        &[
            ("+ existing/nd", Dir),
            ("+ existing/nd/f1", File),
            ("+ existing/nd/sub", Dir),
            ("+ existing/nd/sub/f2", File),
        ],
    );
}

#[test]
fn btrfs_delete_dir_with_children() {
    let r = scenario(
        "btrfs_delete_dir_with_children",
        |ws| {
            fs::create_dir_all(ws.join("gone/sub")).unwrap();
            write(&ws.join("gone/z"), "z");
            write(&ws.join("gone/sub/w"), "w");
            write(&ws.join("stays"), "s");
        },
        |ws| fs::remove_dir_all(ws.join("gone")).unwrap(),
    );
    check(
        r,
        &[
            ("- gone", Dir),
            ("- gone/sub", Dir),
            ("- gone/sub/w", File),
            ("- gone/z", File),
        ],
    );
}

#[test]
fn btrfs_symlink_add_retarget_delete() {
    let r = scenario(
        "btrfs_symlink_add_retarget_delete",
        |ws| {
            symlink("t1", ws.join("retarget")).unwrap();
            symlink("t1", ws.join("del")).unwrap();
            symlink("same", ws.join("keep")).unwrap();
        },
        |ws| {
            symlink("new-target", ws.join("added")).unwrap();
            fs::remove_file(ws.join("del")).unwrap();
            fs::remove_file(ws.join("retarget")).unwrap();
            symlink("t2", ws.join("retarget")).unwrap();
        },
    );
    check(
        r,
        &[
            ("+ added", Symlink),
            ("- del", Symlink),
            ("M retarget", Symlink),
        ],
    );
}

#[test]
fn btrfs_hardlink_add_and_remove() {
    let r = scenario(
        "btrfs_hardlink_add_and_remove",
        |ws| {
            write(&ws.join("hl"), "h");
            write(&ws.join("two"), "2");
            fs::hard_link(ws.join("two"), ws.join("two-b")).unwrap();
        },
        |ws| {
            fs::hard_link(ws.join("hl"), ws.join("hl-new")).unwrap();
            fs::remove_file(ws.join("two-b")).unwrap();
        },
    );
    check(r, &[("+ hl-new", File), ("- two-b", File)]);
}

#[test]
fn btrfs_file_renamed_and_modified() {
    let r = scenario(
        "btrfs_file_renamed_and_modified",
        |ws| write(&ws.join("both"), "q"),
        |ws| {
            fs::rename(ws.join("both"), ws.join("both2")).unwrap();
            write(&ws.join("both2"), "q and more");
        },
    );
    check(r, &[("R both → both2", File), ("M both2", File)]);
}

#[test]
fn btrfs_file_moved_into_other_dir_and_dir_touched() {
    let r = scenario(
        "btrfs_file_moved_into_other_dir_and_dir_touched",
        |ws| {
            fs::create_dir(ws.join("a")).unwrap();
            fs::create_dir(ws.join("b")).unwrap();
            write(&ws.join("a/f"), "f");
            write(&ws.join("b/g"), "g");
        },
        |ws| {
            fs::rename(ws.join("a/f"), ws.join("b/f")).unwrap();
            // Only times change on b/g and on both directories.
            fs::File::options()
                .write(true)
                .open(ws.join("b/g"))
                .unwrap()
                .set_modified(std::time::SystemTime::now())
                .unwrap();
        },
    );
    check(r, &[("R a/f → b/f", File)]);
}

#[test]
fn btrfs_swap_names() {
    let r = scenario(
        "btrfs_swap_names",
        |ws| {
            write(&ws.join("a"), "a");
            fs::create_dir(ws.join("b")).unwrap();
        },
        |ws| {
            fs::rename(ws.join("a"), ws.join("tmp")).unwrap();
            fs::rename(ws.join("b"), ws.join("a")).unwrap();
            fs::rename(ws.join("tmp"), ws.join("b")).unwrap();
        },
    );
    check(r, &[("R b → a", Dir), ("R a → b", File)]);
}

#[test]
fn btrfs_no_change_is_empty() {
    let r = scenario(
        "btrfs_no_change_is_empty",
        |ws| {
            fs::create_dir(ws.join("d")).unwrap();
            write(&ws.join("d/f"), "x");
        },
        |_| {},
    );
    check(r, &[]);
}

#[test]
fn btrfs_same_snapshot_twice_is_empty() {
    let Some(fs) = LoopBtrfs::new("btrfs_same_snapshot_twice_is_empty", 256) else {
        return;
    };
    let m = fs.mnt().to_path_buf();
    run(Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(m.join("ws")));
    run(Command::new("btrfs")
        .args(["subvolume", "snapshot", "-r"])
        .arg(m.join("ws"))
        .arg(m.join("s1")));
    assert!(diff_subvolumes(
        &LinuxSys::new().expect("mkfs.btrfs"),
        &m.join("s1"),
        &m.join("s1")
    )
    .unwrap()
    .is_empty());
}

#[test]
fn btrfs_rejects_writable_plain_and_foreign_paths() {
    let Some(fs) = LoopBtrfs::new("btrfs_rejects_writable_plain_and_foreign_paths", 256) else {
        return;
    };
    let m = fs.mnt().to_path_buf();
    run(Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(m.join("ws")));
    run(Command::new("btrfs")
        .args(["subvolume", "snapshot", "-r"])
        .arg(m.join("ws"))
        .arg(m.join("s1")));
    fs::create_dir(m.join("plain")).unwrap();
    let err = diff_subvolumes(
        &LinuxSys::new().expect("mkfs.btrfs"),
        &m.join("s1"),
        &m.join("ws"),
    )
    .unwrap_err();
    assert!(
        matches!(err, DiffError::NotReadOnly { ref path } if path == &m.join("ws")),
        "{err}"
    );
    assert!(err.to_string().contains("read-only snapshot"));
    let err = diff_subvolumes(
        &LinuxSys::new().expect("mkfs.btrfs"),
        &m.join("plain"),
        &m.join("s1"),
    )
    .unwrap_err();
    assert!(matches!(err, DiffError::NotSubvolume { .. }), "{err}");
    let err = diff_subvolumes(
        &LinuxSys::new().expect("mkfs.btrfs"),
        &m.join("missing"),
        &m.join("s1"),
    )
    .unwrap_err();
    assert!(matches!(err, DiffError::Open { .. }), "{err}");

    // A read-only snapshot on another btrfs filesystem.
    let Some(other) = LoopBtrfs::new("btrfs_rejects_writable_plain_and_foreign_paths", 256) else {
        return;
    };
    let o = other.mnt().to_path_buf();
    run(Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(o.join("ws")));
    run(Command::new("btrfs")
        .args(["subvolume", "snapshot", "-r"])
        .arg(o.join("ws"))
        .arg(o.join("s1")));
    let err = diff_subvolumes(
        &LinuxSys::new().expect("mkfs.btrfs"),
        &m.join("s1"),
        &o.join("s1"),
    )
    .unwrap_err();
    assert!(
        matches!(err, DiffError::DifferentFilesystems { .. }),
        "{err}"
    );

    // /proc is never btrfs.
    let err = diff_subvolumes(
        &LinuxSys::new().expect("mkfs.btrfs"),
        Path::new("/proc"),
        &m.join("s1"),
    )
    .unwrap_err();
    assert!(matches!(err, DiffError::NotBtrfs { .. }), "{err}");
}

/// Deterministic xorshift generator for the randomized test.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Every entry under `root` (relative path, lstat), depth first, root excluded.
fn walk(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(root.join(&rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            let p = rel.join(&name);
            let md = fs::symlink_metadata(root.join(&p)).unwrap();
            if md.is_dir() {
                stack.push(p.clone());
            }
            out.push((p, md));
        }
    }
    out
}

fn kind_of(md: &fs::Metadata) -> EntryKind {
    let ft = md.file_type();
    if ft.is_dir() {
        Dir
    } else if ft.is_symlink() {
        Symlink
    } else if ft.is_file() {
        File
    } else {
        EntryKind::Other
    }
}

/// What the diff must say, computed by comparing inode numbers (snapshots keep them) of
/// the two trees. Assumes no hardlinks.
fn oracle(old_root: &Path, new_root: &Path) -> Vec<DiffEntry> {
    use std::os::unix::fs::MetadataExt;
    struct Info {
        link: (u64, OsString),
        path: PathBuf,
        kind: EntryKind,
        mode: u32,
        content: Option<Vec<u8>>,
    }
    let index = |root: &Path| -> HashMap<u64, Info> {
        walk(root)
            .into_iter()
            .map(|(p, md)| {
                let parent_ino = fs::symlink_metadata(root.join(p.parent().unwrap()))
                    .unwrap()
                    .ino();
                let content = md.is_file().then(|| fs::read(root.join(&p)).unwrap());
                let info = Info {
                    link: (parent_ino, p.file_name().unwrap().to_os_string()),
                    kind: kind_of(&md),
                    mode: md.mode(),
                    content,
                    path: p,
                };
                (md.ino(), info)
            })
            .collect()
    };
    let old = index(old_root);
    let new = index(new_root);
    let mut out = Vec::new();
    let entry = |change, i: &Info| DiffEntry {
        change,
        path: i.path.clone(),
        kind: i.kind,
    };
    for (ino, o) in &old {
        match new.get(ino) {
            Some(n) if n.kind == o.kind => {
                if n.link != o.link {
                    out.push(entry(
                        Change::Renamed {
                            from: o.path.clone(),
                        },
                        n,
                    ));
                }
                if n.mode != o.mode || n.content != o.content {
                    out.push(entry(Change::Modified, n));
                }
            }
            Some(n) => {
                out.push(entry(Change::Deleted, o));
                out.push(entry(Change::Added, n));
            }
            None => out.push(entry(Change::Deleted, o)),
        }
    }
    for (ino, n) in &new {
        if !old.contains_key(ino) {
            out.push(entry(Change::Added, n));
        }
    }
    normalize(out)
}

/// One random mutation of the workspace. Names come from a small pool so that paths are
/// reused (delete then recreate, rename onto a freed name, rename over a file).
fn mutate(ws: &Path, rng: &mut Rng, counter: &mut u64) {
    const NAMES: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let entries = walk(ws);
    let dirs: Vec<PathBuf> = std::iter::once(PathBuf::new())
        .chain(
            entries
                .iter()
                .filter(|(_, m)| m.is_dir())
                .map(|(p, _)| p.clone()),
        )
        .collect();
    let pick_dir = |rng: &mut Rng| dirs[rng.below(dirs.len())].clone();
    let pick = |rng: &mut Rng, want: fn(&fs::Metadata) -> bool| {
        let c: Vec<&PathBuf> = entries
            .iter()
            .filter(|(_, m)| want(m))
            .map(|(p, _)| p)
            .collect();
        (!c.is_empty()).then(|| c[rng.below(c.len())].clone())
    };
    let free_name = |rng: &mut Rng, dir: &Path| {
        let p = dir.join(NAMES[rng.below(NAMES.len())]);
        (fs::symlink_metadata(ws.join(&p)).is_err()).then_some(p)
    };
    *counter += 1;
    let unique = format!("content {counter}");
    match rng.below(10) {
        0 | 1 => {
            let d = pick_dir(rng);
            if let Some(p) = free_name(rng, &d) {
                write(&ws.join(p), &unique);
            }
        }
        2 => {
            let d = pick_dir(rng);
            if let Some(p) = free_name(rng, &d) {
                fs::create_dir(ws.join(p)).unwrap();
            }
        }
        3 => {
            if let Some(p) = pick(rng, |m| !m.is_dir()) {
                fs::remove_file(ws.join(p)).unwrap();
            }
        }
        4 => {
            if let Some(p) = pick(rng, |m| m.is_dir()) {
                fs::remove_dir_all(ws.join(p)).unwrap();
            }
        }
        5 => {
            let Some(src) = pick(rng, |_| true) else {
                return;
            };
            let d = pick_dir(rng);
            if d.starts_with(&src) {
                return;
            }
            let target = d.join(NAMES[rng.below(NAMES.len())]);
            let src_is_dir = ws.join(&src).is_dir() && !ws.join(&src).is_symlink();
            match fs::symlink_metadata(ws.join(&target)) {
                Err(_) => fs::rename(ws.join(&src), ws.join(&target)).unwrap(),
                // Rename over an existing non-directory.
                Ok(m) if !m.is_dir() && !src_is_dir && target != src => {
                    fs::rename(ws.join(&src), ws.join(&target)).unwrap()
                }
                Ok(_) => {}
            }
        }
        6 => {
            if let Some(p) = pick(rng, |m| m.is_file()) {
                write(&ws.join(p), &unique);
            }
        }
        7 => {
            if let Some(p) = pick(rng, |m| !m.file_type().is_symlink()) {
                let mode = fs::metadata(ws.join(&p)).unwrap().permissions().mode();
                let new = if mode & 0o077 == 0 { 0o755 } else { 0o700 };
                fs::set_permissions(ws.join(p), fs::Permissions::from_mode(new)).unwrap();
            }
        }
        8 => {
            let d = pick_dir(rng);
            if let Some(p) = free_name(rng, &d) {
                symlink(&unique, ws.join(p)).unwrap();
            }
        }
        _ => {
            if let Some(p) = pick(rng, |m| m.file_type().is_symlink()) {
                fs::remove_file(ws.join(&p)).unwrap();
                symlink(&unique, ws.join(p)).unwrap();
            }
        }
    }
}

#[test]
fn btrfs_random_changes_match_inode_oracle() {
    let Some(fs) = LoopBtrfs::new("btrfs_random_changes_match_inode_oracle", 256) else {
        return;
    };
    let m = fs.mnt().to_path_buf();
    for seed in 1..=24u64 {
        let ws = m.join(format!("ws{seed}"));
        run(Command::new("btrfs").args(["subvolume", "create"]).arg(&ws));
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut counter = 0;
        let mut prev: Option<PathBuf> = None;
        for round in 0..5 {
            for _ in 0..if round == 0 { 80 } else { 40 } {
                mutate(&ws, &mut rng, &mut counter);
            }
            let snap = m.join(format!("s{seed}-{round}"));
            run(Command::new("btrfs")
                .args(["subvolume", "snapshot", "-r"])
                .arg(&ws)
                .arg(&snap));
            if let Some(prev) = &prev {
                let got = diff_subvolumes(&LinuxSys::new().expect("mkfs.btrfs"), prev, &snap)
                    .expect("diff");
                let want = oracle(prev, &snap);
                if got != want {
                    let dump = run(Command::new("sh").arg("-c").arg(format!(
                        "btrfs send -q --no-data -p '{}' '{}' | btrfs receive --dump",
                        prev.display(),
                        snap.display()
                    )));
                    panic!(
                        "seed {seed} round {round}:\n got: {:#?}\nwant: {:#?}\nstream:\n{dump}",
                        lines(&got),
                        lines(&want)
                    );
                }
            }
            prev = Some(snap);
        }
    }
}

#[test]
fn btrfs_tangled_directory_moves() {
    let r = scenario(
        "btrfs_tangled_directory_moves",
        |ws| {
            fs::create_dir_all(ws.join("a/b/c")).unwrap();
            write(&ws.join("a/b/c/f"), "f");
            write(&ws.join("a/g"), "g");
            fs::create_dir_all(ws.join("x/in")).unwrap();
            fs::create_dir_all(ws.join("y/in")).unwrap();
            fs::create_dir(ws.join("d")).unwrap();
            write(&ws.join("d/f"), "old");
        },
        |ws| {
            // The parent becomes a child of its former child.
            fs::rename(ws.join("a/b"), ws.join("top")).unwrap();
            fs::rename(ws.join("a"), ws.join("top/c/a")).unwrap();
            // Swap two directories.
            fs::rename(ws.join("x"), ws.join("tmp")).unwrap();
            fs::rename(ws.join("y"), ws.join("x")).unwrap();
            fs::rename(ws.join("tmp"), ws.join("y")).unwrap();
            // Move a directory away and recreate its name with a same-named child.
            fs::rename(ws.join("d"), ws.join("d_old")).unwrap();
            fs::create_dir(ws.join("d")).unwrap();
            write(&ws.join("d/f"), "new");
        },
    );
    check(
        r,
        &[
            ("+ d", Dir),
            ("+ d/f", File),
            ("R d → d_old", Dir),
            ("R a/b → top", Dir),
            ("R a → top/c/a", Dir),
            ("R y → x", Dir),
            ("R x → y", Dir),
        ],
    );
}
