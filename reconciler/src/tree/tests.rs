//! Unit tests of the tree engine that need neither root nor a special filesystem: they run
//! in-process with the test's own credentials on a temporary directory. Root-only behaviour
//! (other owners, device nodes, mounts, btrfs, the worker, races by another user) is tested in
//! `integration-tests/tests/tree_*.rs`.

use super::*;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

const SPARSE_SIZE: u64 = 10 << 20;
const NSEC_MTIME: (i64, i64) = (1_600_000_000, 123_456_789);

fn lstat(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap()
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let t = nix::sys::time::TimeSpec::new(sec, nsec);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

fn setx(path: &Path, name: &str, value: &[u8]) {
    let f = File::open(path).unwrap();
    let n = CString::new(name).unwrap();
    xattr::set(xattr::Target::Fd(std::os::fd::AsFd::as_fd(&f)), &n, value).unwrap();
}

fn getx(path: &Path, name: &str) -> Option<Vec<u8>> {
    let f = File::open(path).unwrap();
    let n = CString::new(name).unwrap();
    xattr::get(xattr::Target::Fd(std::os::fd::AsFd::as_fd(&f)), &n).unwrap()
}

fn copy(src: &Path, dst: &Path) -> Result<TreeStats, TreeError> {
    Job::in_process().copy(&Dir::open(src)?, &Dir::open(dst)?)
}

fn verify(a: &Path, b: &Path) -> Result<TreeStats, TreeError> {
    Job::in_process().verify(&Dir::open(a)?, &Dir::open(b)?, Compare::Full)
}

fn verify_meta(a: &Path, b: &Path) -> Result<TreeStats, TreeError> {
    Job::in_process().verify(&Dir::open(a)?, &Dir::open(b)?, Compare::Metadata)
}

fn subset(a: &Path, b: &Path) -> Result<TreeStats, TreeError> {
    Job::in_process().prove_subset(&Dir::open(a)?, &Dir::open(b)?)
}

fn remove(path: &Path) -> Result<Removed, TreeError> {
    let parent = Dir::open(path.parent().unwrap())?;
    let name = path.file_name().unwrap();
    let id = parent.child_stat(name)?.map(|s| s.identity());
    let id = id.unwrap_or(Identity { dev: 0, ino: 0 });
    Job::in_process().remove(&parent, name, id)
}

fn mismatch_of(err: TreeError) -> (PathBuf, String) {
    match err {
        TreeError::Mismatch { path, what } | TreeError::NotSubset { path, what } => (path, what),
        other => panic!("expected Mismatch, got {other:?}"),
    }
}

/// The reference tree under `root` (nothing that needs root).
fn build_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::write(root.join("a/b/c/deep.txt"), b"deep content\n").unwrap();
    fs::create_dir(root.join("empty")).unwrap();
    fs::write(root.join("empty.txt"), b"").unwrap();
    chmod(&root.join("empty.txt"), 0o644);

    let sparse = File::create(root.join("sparse")).unwrap();
    sparse.set_len(SPARSE_SIZE).unwrap();
    sparse.write_all_at(b"start", 0).unwrap();
    sparse.write_all_at(b"end", SPARSE_SIZE - 3).unwrap();
    drop(sparse);

    std::os::unix::fs::symlink("a/b/c/deep.txt", root.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("dangling")).unwrap();

    fs::write(root.join("h1"), b"linked").unwrap();
    fs::hard_link(root.join("h1"), root.join("a/h2")).unwrap();

    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    drop(std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap());

    fs::write(root.join("suid"), b"#!/bin/sh\n").unwrap();
    chmod(&root.join("suid"), 0o4755);
    fs::create_dir(root.join("sticky")).unwrap();
    chmod(&root.join("sticky"), 0o1777);
    fs::write(root.join("sticky/inside"), b"x").unwrap();

    fs::write(root.join("xattr"), b"has xattrs").unwrap();
    setx(&root.join("xattr"), "user.ws-ckpt.test", b"value\0with nul");
    setx(&root.join("a"), "user.dir", b"on a directory");

    fs::create_dir(root.join("ro")).unwrap();
    fs::write(root.join("ro/file"), b"in a read-only dir").unwrap();
    chmod(&root.join("ro/file"), 0o444);

    set_mtime(&root.join("a/b/c/deep.txt"), NSEC_MTIME.0, NSEC_MTIME.1);
    set_mtime(&root.join("rel-link"), 1_500_000_000, 42);
    set_mtime(&root.join("a/b/c"), 1_400_000_000, 999_999_999);
    set_mtime(&root.join("a"), 1_300_000_000, 1);
    chmod(&root.join("ro"), 0o555);
    chmod(root, 0o750);
    set_mtime(root, 1_200_000_000, 5);
}

/// Undo the read-only directory so `TempDir` can clean up when running as a normal user.
fn make_writable(root: &Path) {
    let ro = root.join("ro");
    if ro.exists() {
        chmod(&ro, 0o755);
    }
}

fn pair() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    fs::create_dir(&src).unwrap();
    fs::create_dir(&dst).unwrap();
    (tmp, src, dst)
}

/// Copy the reference tree and return (tempdir, src, dst).
fn copied_tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (tmp, src, dst) = pair();
    build_tree(&src);
    copy(&src, &dst).unwrap();
    verify(&src, &dst).unwrap();
    (tmp, src, dst)
}

#[test]
fn copy_preserves_everything_and_verifies() {
    let (_tmp, src, dst) = pair();
    build_tree(&src);

    let stats = copy(&src, &dst).unwrap();
    assert_eq!(stats.special, 2, "{stats:?}");
    assert_eq!(stats.symlinks, 3);
    assert_eq!(stats.hardlinks, 1);
    assert_eq!(stats.dirs, 6); // a, a/b, a/b/c, empty, sticky, ro
    assert_eq!(stats.xattrs_skipped, 0);

    let verified = verify(&src, &dst).unwrap();
    assert_eq!(
        TreeStats {
            reflinked_files: 0,
            xattrs_skipped: 0,
            bytes_read: verified.bytes_read,
            ..stats
        },
        verified
    );
    // Holes are not read: the sparse file costs its data blocks only.
    assert!(verified.bytes_read < 2 * SPARSE_SIZE / 4, "{verified:?}");

    let h1 = lstat(&dst.join("h1"));
    let h2 = lstat(&dst.join("a/h2"));
    assert_eq!(h1.ino(), h2.ino());
    assert_eq!(h1.nlink(), 2);
    let sparse = lstat(&dst.join("sparse"));
    assert_eq!(sparse.size(), SPARSE_SIZE);
    assert!(
        sparse.blocks() * 512 < (1 << 20),
        "copy is not sparse: {} blocks",
        sparse.blocks()
    );
    let mut head = [0u8; 5];
    File::open(dst.join("sparse"))
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(&head, b"start");
    assert_eq!(lstat(&dst.join("suid")).mode() & 0o7777, 0o4755);
    assert_eq!(lstat(&dst.join("sticky")).mode() & 0o7777, 0o1777);
    assert_eq!(lstat(&dst.join("ro")).mode() & 0o7777, 0o555);
    assert!(lstat(&dst.join("fifo")).file_type().is_fifo());
    assert!(lstat(&dst.join("sock")).file_type().is_socket());
    assert_eq!(
        fs::read_link(dst.join("rel-link")).unwrap(),
        Path::new("a/b/c/deep.txt")
    );
    assert_eq!(
        fs::read_link(dst.join("abs-link")).unwrap(),
        Path::new("/etc/hostname")
    );
    assert_eq!(
        fs::read_link(dst.join("dangling")).unwrap(),
        Path::new("does/not/exist")
    );
    assert_eq!(
        getx(&dst.join("xattr"), "user.ws-ckpt.test").unwrap(),
        b"value\0with nul"
    );
    assert_eq!(getx(&dst.join("a"), "user.dir").unwrap(), b"on a directory");
    let deep = lstat(&dst.join("a/b/c/deep.txt"));
    assert_eq!((deep.mtime(), deep.mtime_nsec()), NSEC_MTIME);
    let c = lstat(&dst.join("a/b/c"));
    assert_eq!((c.mtime(), c.mtime_nsec()), (1_400_000_000, 999_999_999));
    let link = lstat(&dst.join("rel-link"));
    assert_eq!((link.mtime(), link.mtime_nsec()), (1_500_000_000, 42));
    // The symlink's target kept its own time: metadata went to the link itself.
    assert_eq!(
        (deep.mtime(), deep.mtime_nsec()),
        NSEC_MTIME,
        "setting the link's time must not touch its target"
    );
    let root = lstat(&dst);
    assert_eq!((root.mtime(), root.mtime_nsec()), (1_200_000_000, 5));
    assert_eq!(root.mode() & 0o7777, 0o750);
    make_writable(&src);
    make_writable(&dst);
}

#[test]
fn metadata_verify_skips_content_but_sees_writes() {
    let (_tmp, src, dst) = copied_tree();
    verify_meta(&src, &dst).unwrap();
    let p = dst.join("a/b/c/deep.txt");
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"D", 0).unwrap();
    drop(f);
    set_mtime(&p, NSEC_MTIME.0, NSEC_MTIME.1);
    let meta = verify_meta(&src, &dst).unwrap();
    assert_eq!(meta.bytes_read, 0);
    assert!(verify(&src, &dst).is_err());
    fs::write(src.join("a/b/c/deep.txt"), b"written later\n").unwrap();
    let (path, _) = mismatch_of(verify_meta(&src, &dst).unwrap_err());
    assert_eq!(path, Path::new("a/b/c/deep.txt"));
    make_writable(&src);
    make_writable(&dst);
}

#[test]
fn verify_detects_changed_byte_even_with_same_mtime() {
    let (_tmp, src, dst) = copied_tree();
    let p = dst.join("a/b/c/deep.txt");
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"D", 0).unwrap();
    drop(f);
    set_mtime(&p, NSEC_MTIME.0, NSEC_MTIME.1);
    let (path, what) = mismatch_of(verify(&src, &dst).unwrap_err());
    assert_eq!(path, Path::new("a/b/c/deep.txt"));
    assert!(what.contains("content differs at byte 0"), "{what}");
    make_writable(&src);
    make_writable(&dst);
}

#[test]
fn verify_detects_byte_change_at_end_of_sparse_file() {
    let (_tmp, src, dst) = copied_tree();
    let p = dst.join("sparse");
    let before = lstat(&p);
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"E", SPARSE_SIZE - 3).unwrap();
    drop(f);
    set_mtime(&p, before.mtime(), before.mtime_nsec());
    let (path, what) = mismatch_of(verify(&src, &dst).unwrap_err());
    assert_eq!(path, Path::new("sparse"));
    assert!(
        what.contains(&format!("byte {}", SPARSE_SIZE - 3)),
        "{what}"
    );
    make_writable(&src);
    make_writable(&dst);
}

#[test]
fn verify_detects_data_written_into_a_hole() {
    let (_tmp, src, dst) = copied_tree();
    let p = dst.join("sparse");
    let before = lstat(&p);
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"\x01", SPARSE_SIZE / 2).unwrap();
    drop(f);
    set_mtime(&p, before.mtime(), before.mtime_nsec());
    let (_, what) = mismatch_of(verify(&src, &dst).unwrap_err());
    assert!(
        what.contains(&format!("byte {}", SPARSE_SIZE / 2)),
        "{what}"
    );
    make_writable(&src);
    make_writable(&dst);
}

#[test]
fn verify_detects_changed_mode() {
    let (_tmp, src, dst) = copied_tree();
    chmod(&dst.join("empty.txt"), 0o600);
    let (path, what) = mismatch_of(verify(&src, &dst).unwrap_err());
    assert_eq!(path, Path::new("empty.txt"));
    assert!(what.contains("mode differs"), "{what}");
    make_writable(&src);
    make_writable(&dst);
}

#[test]
fn verify_detects_changed_type() {
    let (_tmp, src, dst) = copied_tree();
    fs::remove_file(dst.join("fifo")).unwrap();
    fs::write(dst.join("fifo"), b"").unwrap();
    let (path, what) = mismatch_of(verify(&src, &dst).unwrap_err());
    assert_eq!(path, Path::new("fifo"));
    assert!(
        what.contains("type differs: fifo vs regular file"),
        "{what}"
    );
    make_writable(&src);
    make_writable(&dst);
}

#[test]
fn verify_detects_extra_and_missing_entries() {
    let (_tmp, src, dst) = copied_tree();
    let a = lstat(&dst.join("a/b"));
    fs::write(dst.join("a/b/extra"), b"new").unwrap();
    set_mtime(&dst.join("a/b"), a.mtime(), a.mtime_nsec());
    let (path, what) = mismatch_of(verify(&src, &dst).unwrap_err());
    assert_eq!(path, Path::new("a/b/extra"));
    assert!(what.contains("extra"), "{what}");
    fs::remove_file(dst.join("a/b/extra")).unwrap();
    set_mtime(&dst.join("a/b"), a.mtime(), a.mtime_nsec());

    fs::write(dst.join("zz-extra"), b"new").unwrap();
    let (path, _) = mismatch_of(verify(&src, &dst).unwrap_err());
    assert_eq!(path, Path::new("zz-extra"));
    fs::remove_file(dst.join("zz-extra")).unwrap();
    verify(&src, &dst).unwrap();

    fs::remove_file(dst.join("empty.txt")).unwrap();
    let (path, what) = mismatch_of(verify(&src, &dst).unwrap_err());
    assert_eq!(path, Path::new("empty.txt"));
    assert!(what.contains("missing"), "{what}");
    make_writable(&src);
    make_writable(&dst);
}

#[test]
fn verify_detects_broken_hardlink_symlink_xattr_and_mtime() {
    let (_tmp, src, dst) = copied_tree();
    let h2 = dst.join("a/h2");
    let m = lstat(&h2);
    let a_dir = lstat(&dst.join("a"));
    fs::remove_file(&h2).unwrap();
    fs::write(&h2, b"linked").unwrap();
    set_mtime(&h2, m.mtime(), m.mtime_nsec());
    set_mtime(&dst.join("a"), a_dir.mtime(), a_dir.mtime_nsec());
    let (path, what) = mismatch_of(verify(&src, &dst).unwrap_err());
    assert_eq!(path, Path::new("a/h2"));
    assert!(what.contains("hardlink"), "{what}");

    let (_tmp2, src2, dst2) = copied_tree();
    setx(&dst2.join("xattr"), "user.ws-ckpt.test", b"other");
    let (path, what) = mismatch_of(verify(&src2, &dst2).unwrap_err());
    assert_eq!(path, Path::new("xattr"));
    assert!(what.contains("user.ws-ckpt.test"), "{what}");

    let (_tmp3, src3, dst3) = copied_tree();
    set_mtime(&dst3.join("a/b/c"), 1, 0);
    let (path, what) = mismatch_of(verify(&src3, &dst3).unwrap_err());
    assert_eq!(path, Path::new("a/b/c"));
    assert!(what.contains("mtime"), "{what}");

    let (_tmp4, src4, dst4) = copied_tree();
    fs::remove_file(dst4.join("dangling")).unwrap();
    std::os::unix::fs::symlink("elsewhere", dst4.join("dangling")).unwrap();
    let (path, what) = mismatch_of(verify(&src4, &dst4).unwrap_err());
    assert_eq!(path, Path::new("dangling"));
    assert!(what.contains("symlink target"), "{what}");

    // Two separate files in the original that are one inode in the copy.
    let (_tmp5, src5, dst5) = copied_tree();
    fs::write(src5.join("twin1"), b"same").unwrap();
    fs::write(src5.join("twin2"), b"same").unwrap();
    // One inode in the copy carries one mtime: give the twins the same one, or a clock tick
    // between the two writes makes the mismatch show at twin1's mtime instead.
    let t1 = lstat(&src5.join("twin1"));
    set_mtime(&src5.join("twin2"), t1.mtime(), t1.mtime_nsec());
    fs::write(dst5.join("twin1"), b"same").unwrap();
    fs::hard_link(dst5.join("twin1"), dst5.join("twin2")).unwrap();
    for n in ["twin1", "twin2"] {
        let t = lstat(&src5.join(n));
        set_mtime(&dst5.join(n), t.mtime(), t.mtime_nsec());
        chmod(&dst5.join(n), t.mode() & 0o7777);
    }
    let r = lstat(&src5);
    set_mtime(&dst5, r.mtime(), r.mtime_nsec());
    let (path, what) = mismatch_of(verify(&src5, &dst5).unwrap_err());
    assert_eq!(path, Path::new("twin2"));
    assert!(what.contains("linked to twin1 in the copy"), "{what}");
    for (s, d) in [
        (&src, &dst),
        (&src2, &dst2),
        (&src3, &dst3),
        (&src4, &dst4),
        (&src5, &dst5),
    ] {
        make_writable(s);
        make_writable(d);
    }
}

#[test]
fn subset_accepts_a_half_removed_original_and_nothing_else() {
    let (_tmp, src, dst) = copied_tree();
    // A removal in progress: some files gone, directory mtimes changed, a read-only directory
    // made writable by the removal.
    fs::remove_file(src.join("a/b/c/deep.txt")).unwrap();
    fs::remove_file(src.join("h1")).unwrap(); // its hardlink a/h2 stays
    chmod(&src.join("ro"), 0o755);
    fs::remove_file(src.join("ro/file")).unwrap();
    fs::remove_dir(src.join("empty")).unwrap();
    verify(&src, &dst).unwrap_err();
    let stats = subset(&src, &dst).unwrap();
    assert!(stats.files > 0);
    // The workspace may have more, never less or different.
    fs::write(dst.join("new-in-workspace"), b"x").unwrap();
    subset(&src, &dst).unwrap();
    let p = dst.join("a/h2");
    let t = lstat(&p);
    fs::write(&p, b"LINKED").unwrap();
    set_mtime(&p, t.mtime(), t.mtime_nsec());
    let err = subset(&src, &dst).unwrap_err();
    assert!(matches!(err, TreeError::NotSubset { .. }), "{err:?}");
    assert!(err.to_string().contains("keep both"), "{err}");
    let (path, what) = mismatch_of(err);
    assert_eq!(path, Path::new("a/h2"));
    assert!(what.contains("content differs"), "{what}");
    fs::write(&p, b"linked").unwrap();
    set_mtime(&p, t.mtime(), t.mtime_nsec());
    subset(&src, &dst).unwrap();
    // An entry of the original that the copy lacks.
    fs::write(src.join("written-after"), b"x").unwrap();
    let (path, what) = mismatch_of(subset(&src, &dst).unwrap_err());
    assert_eq!(path, Path::new("written-after"));
    assert!(what.contains("missing"), "{what}");
    make_writable(&dst);
}

#[test]
fn copy_refuses_bad_destinations() {
    let (_tmp, src, dst) = pair();
    fs::write(src.join("f"), b"x").unwrap();
    fs::write(dst.join("already"), b"x").unwrap();
    let err = copy(&src, &dst).unwrap_err();
    assert!(err.to_string().contains("non-empty"), "{err}");
    fs::create_dir(src.join("inner")).unwrap();
    let err = copy(&src, &src.join("inner")).unwrap_err();
    assert!(err.to_string().contains("inside the source"), "{err}");
    assert!(copy(&src, &src)
        .unwrap_err()
        .to_string()
        .contains("inside the source"));
    assert!(matches!(
        copy(&src.join("f"), &dst),
        Err(TreeError::Io { .. })
    ));
    assert_eq!(fs::read_dir(src.join("inner")).unwrap().count(), 0);
}

#[test]
fn symlinks_inside_a_tree_are_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"SECRET-OUTSIDE").unwrap();
    chmod(&outside.join("secret"), 0o600);
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir_all(src.join("d")).unwrap();
    fs::create_dir(&dst).unwrap();
    std::os::unix::fs::symlink(&outside, src.join("to-outside")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), src.join("d/secret-link")).unwrap();
    copy(&src, &dst).unwrap();
    verify(&src, &dst).unwrap();
    assert!(lstat(&dst.join("to-outside")).file_type().is_symlink());
    assert!(lstat(&dst.join("d/secret-link")).file_type().is_symlink());
    // The destination holds links, never the secret itself.
    let mut stack = vec![dst.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = lstat(&p);
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                assert!(!fs::read(&p).unwrap().windows(6).any(|w| w == b"SECRET"));
            }
        }
    }
    // A directory given by a symlink is refused (the last component is never followed).
    let via = tmp.path().join("via");
    std::os::unix::fs::symlink(&src, &via).unwrap();
    assert!(Dir::open(&via).is_err());
    // Removal unlinks the links and leaves what they point to.
    remove(&dst).unwrap();
    remove(&src).unwrap();
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"SECRET-OUTSIDE");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
}

#[test]
fn remove_handles_read_only_dirs_and_checks_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("keep"), b"must survive").unwrap();
    let victim = tmp.path().join("victim");
    fs::create_dir(&victim).unwrap();
    build_tree(&victim);
    std::os::unix::fs::symlink(&outside, victim.join("to-outside")).unwrap();
    fs::create_dir_all(victim.join("locked/deeper")).unwrap();
    fs::write(victim.join("locked/deeper/f"), b"x").unwrap();
    chmod(&victim.join("locked/deeper"), 0o500);
    chmod(&victim.join("locked"), 0o000);
    chmod(&victim, 0o555);

    let parent = Dir::open(tmp.path()).unwrap();
    let name = std::ffi::OsStr::new("victim");
    let real = parent.child_stat(name).unwrap().unwrap().identity();
    let wrong = Identity {
        dev: real.dev,
        ino: real.ino ^ 1,
    };
    let err = Job::in_process().remove(&parent, name, wrong).unwrap_err();
    assert!(matches!(err, TreeError::IdentityMismatch { .. }), "{err:?}");
    assert!(victim.join("a/b/c/deep.txt").exists(), "nothing removed");

    let mut seen = Vec::new();
    let mut report = |p: &Progress| seen.push(*p);
    let removed = Job::in_process()
        .with_progress(&mut report)
        .remove(&parent, name, real)
        .unwrap();
    assert!(!victim.exists());
    assert_eq!(fs::read(outside.join("keep")).unwrap(), b"must survive");
    let Removed::Removed { entries } = removed else {
        panic!("{removed:?}")
    };
    let last = seen.last().unwrap();
    assert_eq!(last.entries_done, entries);
    assert_eq!(last.entries_total, entries);
    assert_eq!(
        Job::in_process().remove(&parent, name, real).unwrap(),
        Removed::Absent
    );
    // A plain file with its recorded identity is unlinked.
    fs::write(tmp.path().join("plain"), b"x").unwrap();
    let id = parent
        .child_stat(std::ffi::OsStr::new("plain"))
        .unwrap()
        .unwrap()
        .identity();
    Job::in_process()
        .remove(&parent, std::ffi::OsStr::new("plain"), id)
        .unwrap();
    assert!(!tmp.path().join("plain").exists());
    for bad in ["", ".", "..", "a/b"] {
        assert!(Job::in_process()
            .remove(&parent, std::ffi::OsStr::new(bad), id)
            .is_err());
    }
}

#[test]
fn progress_is_rate_limited_and_ends_complete() {
    let (_tmp, src, dst) = pair();
    for i in 0..300 {
        fs::write(src.join(format!("f{i}")), vec![i as u8; 5000]).unwrap();
    }
    let mut calls: Vec<Progress> = Vec::new();
    let start = Instant::now();
    let mut report = |p: &Progress| calls.push(*p);
    let stats = Job::in_process()
        .with_progress(&mut report)
        .copy(&Dir::open(&src).unwrap(), &Dir::open(&dst).unwrap())
        .unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(stats.files, 300);
    assert_eq!(stats.bytes, 1_500_000);
    let last = calls.last().expect("progress called at least once");
    assert_eq!(last.bytes_done, last.bytes_total);
    assert_eq!(last.bytes_total, 1_500_000);
    assert_eq!(last.entries_done, 300);
    assert_eq!(last.entries_total, 300);
    assert!(
        (calls.len() as f64) <= elapsed * 10.0 + 2.0,
        "{} calls in {elapsed}s",
        calls.len()
    );
    verify(&src, &dst).unwrap();
}

#[test]
fn scan_counts_entries_and_bytes_once_per_inode() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir(root.join("d")).unwrap();
    fs::write(root.join("d/f"), vec![7u8; 1000]).unwrap();
    fs::hard_link(root.join("d/f"), root.join("g")).unwrap();
    fs::write(root.join("h"), vec![1u8; 24]).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target/that/is/long", root.join("l")).unwrap();
    let p = Job::in_process().scan(&Dir::open(root).unwrap()).unwrap();
    assert_eq!(p.entries_total, 5);
    assert_eq!(p.bytes_total, 1024);
    assert_eq!((p.entries_done, p.bytes_done), (0, 0));
    assert!(Dir::open(&root.join("h")).is_err());
}

#[test]
fn cancellation_stops_a_copy_between_entries() {
    let (_tmp, src, dst) = pair();
    for i in 0..50 {
        fs::write(src.join(format!("f{i:02}")), vec![1u8; 100]).unwrap();
    }
    let calls = std::cell::Cell::new(0u32);
    let cancel = || {
        calls.set(calls.get() + 1);
        calls.get() > 10
    };
    let err = Job::in_process()
        .with_cancel(&cancel)
        .copy(&Dir::open(&src).unwrap(), &Dir::open(&dst).unwrap())
        .unwrap_err();
    assert!(matches!(err, TreeError::Cancelled), "{err:?}");
    let copied = fs::read_dir(&dst).unwrap().count();
    assert!(
        copied < 50,
        "{copied} entries copied after the cancellation"
    );
}

#[test]
fn deep_tree_does_not_overflow_the_stack() {
    let (_tmp, src, dst) = pair();
    let mut deep = src.clone();
    for _ in 0..400 {
        deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("leaf"), b"bottom").unwrap();
    let stats = copy(&src, &dst).unwrap();
    assert_eq!((stats.dirs, stats.files), (400, 1));
    verify(&src, &dst).unwrap();
    subset(&src, &dst).unwrap();
    assert!(matches!(
        remove(&dst).unwrap(),
        Removed::Removed { entries: 402 }
    ));
    assert!(!dst.exists());
}

#[test]
fn long_names_copy_and_get_a_temporary_sibling() {
    let (tmp, src, dst) = pair();
    let long = "L".repeat(250);
    fs::create_dir(src.join(&long)).unwrap();
    fs::write(src.join(&long).join(&long), b"long").unwrap();
    copy(&src, &dst).unwrap();
    verify(&src, &dst).unwrap();
    let tmp_name = names::temp_sibling_name(std::ffi::OsStr::new(&long), "init", "1-2-3");
    fs::create_dir(tmp.path().join(&tmp_name)).unwrap();
    assert!(names::is_temp_name_for(
        std::ffi::OsStr::new(&long),
        &tmp_name
    ));
}

#[test]
fn inherited_default_acls_are_not_added_to_the_copy() {
    let (_tmp, src, dst) = pair();
    fs::write(src.join("f"), b"x").unwrap();
    fs::create_dir(src.join("d")).unwrap();
    // A default ACL on the destination root would be inherited by every new entry.
    let acl = b"\x02\x00\x00\x00\x01\x00\x07\x00\xff\xff\xff\xff\x04\x00\x05\x00\xff\xff\xff\xff\x20\x00\x05\x00\xff\xff\xff\xff";
    let f = File::open(&dst).unwrap();
    let target = xattr::Target::Fd(std::os::fd::AsFd::as_fd(&f));
    if let Err(e) = xattr::set(target, c"system.posix_acl_default", acl) {
        eprintln!("no POSIX ACLs here ({e}); nothing to test");
        return;
    }
    drop(f);
    copy(&src, &dst).unwrap();
    verify(&src, &dst).unwrap();
    assert_eq!(getx(&dst.join("f"), "system.posix_acl_access"), None);
    assert_eq!(getx(&dst.join("d"), "system.posix_acl_default"), None);
}

#[test]
fn paths_in_errors_are_the_callers_labels() {
    let (_tmp, src, dst) = pair();
    fs::write(src.join("f"), b"x").unwrap();
    copy(&src, &dst).unwrap();
    fs::remove_file(dst.join("f")).unwrap();
    fs::create_dir(dst.join("f")).unwrap();
    let err = verify(&src, &dst).unwrap_err();
    assert!(err.to_string().contains("at f: type differs"), "{err}");
    let err = Dir::open(&src.join("missing")).unwrap_err();
    assert!(
        err.to_string()
            .contains(&src.join("missing").display().to_string()),
        "{err}"
    );
}
