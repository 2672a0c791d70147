//! Real-filesystem tests of the tree engine that need root (other owners, device nodes,
//! `trusted.*` xattrs, file capabilities, mounts, btrfs): faithful copy across filesystems and
//! within one (reflinks, nested subvolumes), verification catching root-only differences, mount
//! points never crossed, and a 16 GiB sparse file verified by its data map. They fail under `CI`
//! when not root.

use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ws_ckpt::tree::{Compare, Dir, Job, Owner, Removed, TreeError, TreeStats, WorkerSettings};
use ws_ckpt_integration_tests::tree_support::TreeUser;
use ws_ckpt_integration_tests::{btrfs, run_tool, TestEnv};

const PROBE: &str = env!("CARGO_BIN_EXE_tree-probe");

fn worker() -> WorkerSettings {
    WorkerSettings {
        exe: PROBE.into(),
        ..WorkerSettings::default()
    }
}

fn lstat(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn lsetx(p: &Path, name: &str, value: &[u8]) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: NUL-terminated strings; `value` readable for its length.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "lsetxattr {name} on {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn lgetx(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: as above; `buf` writable for its length.
    let k = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (k >= 0).then(|| buf[..k as usize].to_vec())
}

fn lchown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let t = nix::sys::time::TimeSpec::new(sec, nsec);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// `cap_net_bind_service=ep` as a v2 `security.capability` value.
fn file_caps() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x0200_0001u32.to_le_bytes()); // revision 2, effective
    v.extend_from_slice(&(1u32 << 10).to_le_bytes()); // permitted (low)
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable (low)
    v.extend_from_slice(&0u32.to_le_bytes()); // permitted (high)
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable (high)
    v
}

/// A tree with everything only root can make: other owners, a device node, `trusted.*` xattrs
/// on a file and on a symlink, file capabilities, a setgid directory of another group.
fn build_root_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b")).unwrap();
    fs::write(root.join("a/b/f"), b"deep").unwrap();
    fs::write(root.join("owned"), b"owned by 1234").unwrap();
    lchown(&root.join("owned"), 1234, 1234);
    std::os::unix::fs::symlink("a/b/f", root.join("link")).unwrap();
    lchown(&root.join("link"), 1234, 4321);
    lsetx(&root.join("link"), "trusted.ws-ckpt", b"on a symlink");
    nix::sys::stat::mknod(
        &root.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    fs::write(root.join("trusted"), b"t").unwrap();
    lsetx(&root.join("trusted"), "trusted.ws-ckpt", b"value");
    fs::write(root.join("capable"), b"#!/bin/sh\n").unwrap();
    chmod(&root.join("capable"), 0o755);
    lsetx(&root.join("capable"), "security.capability", &file_caps());
    fs::write(root.join("suid-other"), b"x").unwrap();
    lchown(&root.join("suid-other"), 1234, 1234);
    chmod(&root.join("suid-other"), 0o6755);
    fs::create_dir(root.join("sgid-dir")).unwrap();
    lchown(&root.join("sgid-dir"), 0, 4321);
    chmod(&root.join("sgid-dir"), 0o2775);
    fs::write(root.join("sgid-dir/inside"), b"i").unwrap();
    fs::write(root.join("h1"), b"hard").unwrap();
    fs::hard_link(root.join("h1"), root.join("a/h2")).unwrap();
    let sparse = File::create(root.join("sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    sparse.write_all_at(b"middle", 32 << 20).unwrap();
    set_mtime(&root.join("link"), 1_500_000_000, 7);
    set_mtime(&root.join("a"), 1_300_000_000, 1);
}

fn check_root_tree(dst: &Path) {
    let owned = lstat(&dst.join("owned"));
    assert_eq!((owned.uid(), owned.gid()), (1234, 1234));
    let link = lstat(&dst.join("link"));
    assert!(link.file_type().is_symlink());
    assert_eq!((link.uid(), link.gid()), (1234, 4321));
    assert_eq!((link.mtime(), link.mtime_nsec()), (1_500_000_000, 7));
    assert_eq!(
        lgetx(&dst.join("link"), "trusted.ws-ckpt").unwrap(),
        b"on a symlink"
    );
    let null = lstat(&dst.join("null"));
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    assert_eq!(
        lgetx(&dst.join("trusted"), "trusted.ws-ckpt").unwrap(),
        b"value"
    );
    assert_eq!(
        lgetx(&dst.join("capable"), "security.capability").unwrap(),
        file_caps()
    );
    let suid = lstat(&dst.join("suid-other"));
    assert_eq!((suid.uid(), suid.mode() & 0o7777), (1234, 0o6755));
    let sgid = lstat(&dst.join("sgid-dir"));
    assert_eq!((sgid.gid(), sgid.mode() & 0o7777), (4321, 0o2775));
    assert_eq!(lstat(&dst.join("h1")).ino(), lstat(&dst.join("a/h2")).ino());
}

fn copy_in_process(src: &Path, dst: &Path) -> Result<TreeStats, TreeError> {
    Job::in_process().copy(&Dir::open(src)?, &Dir::open(dst)?)
}

fn verify_in_process(a: &Path, b: &Path) -> Result<TreeStats, TreeError> {
    Job::in_process().verify(&Dir::open(a)?, &Dir::open(b)?, Compare::Full)
}

fn remove_in_process(path: &Path) -> Removed {
    let parent = Dir::open(path.parent().unwrap()).unwrap();
    let name = path.file_name().unwrap();
    let id = parent.child_stat(name).unwrap().unwrap().identity();
    Job::in_process().remove(&parent, name, id).unwrap()
}

#[test]
fn tree_root_copy_is_faithful_across_filesystems_and_reflinks_within_btrfs() {
    let Some(env) = TestEnv::new("tree-faithful") else {
        return;
    };
    let mnt = env.extra_btrfs("faithful", 512);
    let src = env.root.join("src");
    fs::create_dir(&src).unwrap();
    build_root_tree(&src);

    // Another filesystem into btrfs: data copied, everything kept.
    let dst = mnt.join("dst");
    fs::create_dir(&dst).unwrap();
    let stats = copy_in_process(&src, &dst).unwrap();
    assert_eq!(stats.reflinked_files, 0, "{stats:?}");
    assert_eq!(stats.special, 1);
    verify_in_process(&src, &dst).unwrap();
    check_root_tree(&dst);
    assert!(lstat(&dst.join("sparse")).blocks() * 512 < 4 << 20);

    // Within btrfs, with a nested subvolume: reflinks, and the subvolume becomes a directory.
    btrfs(&[
        "subvolume",
        "create",
        &dst.join("nested").display().to_string(),
    ]);
    fs::write(dst.join("nested/in-subvol"), vec![3u8; 200_000]).unwrap();
    assert_eq!(lstat(&dst.join("nested")).ino(), 256);
    let again = mnt.join("again");
    fs::create_dir(&again).unwrap();
    let stats = copy_in_process(&dst, &again).unwrap();
    assert!(
        stats.reflinked_files > 0 && stats.reflinked_files == stats.files,
        "{stats:?}"
    );
    verify_in_process(&dst, &again).unwrap();
    check_root_tree(&again);
    let nested = lstat(&again.join("nested"));
    assert_ne!(
        nested.ino(),
        256,
        "a nested subvolume is copied as a plain directory"
    );
    assert_eq!(nested.dev(), lstat(&again).dev());

    // Back to the other filesystem (a release).
    let back = env.root.join("back");
    fs::create_dir(&back).unwrap();
    copy_in_process(&again, &back).unwrap();
    verify_in_process(&again, &back).unwrap();
    check_root_tree(&back);

    // Removal takes the nested subvolume with it.
    assert!(matches!(remove_in_process(&dst), Removed::Removed { .. }));
    assert!(!dst.exists());
    remove_in_process(&again);
    remove_in_process(&back);
}

#[test]
fn tree_verify_sees_root_only_differences() {
    let Some(env) = TestEnv::new("tree-verify-root") else {
        return;
    };
    let src = env.root.join("src");
    let dst = env.root.join("dst");
    fs::create_dir(&src).unwrap();
    fs::create_dir(&dst).unwrap();
    build_root_tree(&src);
    copy_in_process(&src, &dst).unwrap();
    verify_in_process(&src, &dst).unwrap();
    let what = |e: TreeError| match e {
        TreeError::Mismatch { path, what } => (path, what),
        other => panic!("{other:?}"),
    };

    lchown(&dst.join("owned"), 1234, 1235);
    let (path, w) = what(verify_in_process(&src, &dst).unwrap_err());
    assert_eq!(
        (path.as_path(), w.contains("owner differs")),
        (Path::new("owned"), true),
        "{w}"
    );
    lchown(&dst.join("owned"), 1234, 1234);
    set_mtime(
        &dst.join("owned"),
        lstat(&src.join("owned")).mtime(),
        lstat(&src.join("owned")).mtime_nsec(),
    );

    lsetx(&dst.join("link"), "trusted.ws-ckpt", b"changed");
    let (path, w) = what(verify_in_process(&src, &dst).unwrap_err());
    assert_eq!(path, Path::new("link"));
    assert!(w.contains("trusted.ws-ckpt"), "{w}");
    lsetx(&dst.join("link"), "trusted.ws-ckpt", b"on a symlink");

    let m = lstat(&src.join("null"));
    fs::remove_file(dst.join("null")).unwrap();
    nix::sys::stat::mknod(
        &dst.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 5),
    )
    .unwrap();
    set_mtime(&dst.join("null"), m.mtime(), m.mtime_nsec());
    let (path, w) = what(verify_in_process(&src, &dst).unwrap_err());
    assert_eq!(path, Path::new("null"));
    assert!(w.contains("device number differs"), "{w}");
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn tree_mount_points_are_never_crossed() {
    let Some(env) = TestEnv::new("tree-mounts") else {
        return;
    };
    let src = env.root.join("src");
    let dst = env.root.join("dst");
    fs::create_dir_all(src.join("sub/mnt")).unwrap();
    fs::create_dir(&dst).unwrap();
    fs::write(src.join("file"), b"keep me").unwrap();
    run_tool(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(src.join("sub/mnt")),
    );
    let _guard = Unmount(src.join("sub/mnt"));
    fs::write(src.join("sub/mnt/on-tmpfs"), b"other fs").unwrap();

    let err = copy_in_process(&src, &dst).unwrap_err();
    assert!(
        matches!(&err, TreeError::MountPoint { path } if path == &src.join("sub/mnt")),
        "{err:?}"
    );
    assert_eq!(
        fs::read_dir(&dst).unwrap().count(),
        0,
        "nothing copied before the check"
    );

    let parent = Dir::open(&env.root).unwrap();
    let id = parent
        .child_stat(OsStr::new("src"))
        .unwrap()
        .unwrap()
        .identity();
    let err = Job::in_process()
        .remove(&parent, OsStr::new("src"), id)
        .unwrap_err();
    assert!(matches!(err, TreeError::MountPoint { .. }), "{err:?}");
    assert!(
        src.join("file").exists(),
        "nothing deleted before the check"
    );
    assert!(src.join("sub/mnt/on-tmpfs").exists());

    let sub = Dir::open(&src.join("sub")).unwrap();
    let id = sub
        .child_stat(OsStr::new("mnt"))
        .unwrap()
        .unwrap()
        .identity();
    let err = Job::in_process()
        .remove(&sub, OsStr::new("mnt"), id)
        .unwrap_err();
    assert!(matches!(err, TreeError::MountPoint { .. }), "{err:?}");
    assert!(src.join("sub/mnt/on-tmpfs").exists());
    // The same refusals as the owner, in a worker.
    let user = TreeUser::new();
    user.own(&src.join("file"));
    user.own(&src.join("sub"));
    lchown(&src, user.uid, user.gid);
    let fresh = env.root.join("fresh");
    fs::create_dir(&fresh).unwrap();
    let err = Job::as_owner(Owner::lookup(user.uid).unwrap())
        .with_worker(worker())
        .copy(&Dir::open(&src).unwrap(), &Dir::open(&fresh).unwrap())
        .unwrap_err();
    assert!(matches!(err, TreeError::MountPoint { .. }), "{err:?}");
}

/// A 16 GiB file with 4 KiB of data at 8 GiB.
fn make_huge_sparse(path: &Path) {
    let f = File::create(path).unwrap();
    f.set_len(16 << 30).unwrap();
    f.write_all_at(&[0xabu8; 4096], 8 << 30).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn tree_sparse_16gib_file_verifies_by_its_data_map() {
    let Some(env) = TestEnv::new("tree-sparse") else {
        return;
    };
    let mnt = env.extra_btrfs("sparse", 256);
    let src = env.root.join("src");
    fs::create_dir(&src).unwrap();
    make_huge_sparse(&src.join("huge"));
    let dst = mnt.join("dst");
    fs::create_dir(&dst).unwrap();

    let t = Instant::now();
    let copied = copy_in_process(&src, &dst).unwrap();
    let copy_time = t.elapsed();
    assert_eq!(copied.bytes, 16 << 30);
    assert!(
        lstat(&dst.join("huge")).blocks() * 512 < 1 << 20,
        "the copy is not sparse"
    );
    let t = Instant::now();
    let v = verify_in_process(&src, &dst).unwrap();
    eprintln!(
        "16 GiB sparse file: copy {copy_time:?}, verify {:?}, {} bytes read",
        t.elapsed(),
        v.bytes_read
    );
    assert!(
        v.bytes_read <= 64 << 10,
        "verify read {} bytes",
        v.bytes_read
    );

    // One side data (explicit zeros), the other a hole: only the data side is read.
    let f = OpenOptions::new()
        .write(true)
        .open(dst.join("huge"))
        .unwrap();
    f.write_all_at(&vec![0u8; 1 << 20], 1 << 30).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let m = lstat(&src.join("huge"));
    set_mtime(&dst.join("huge"), m.mtime(), m.mtime_nsec());
    let v = verify_in_process(&src, &dst).unwrap();
    assert!(
        v.bytes_read >= 1 << 20 && v.bytes_read <= (1 << 20) + (64 << 10),
        "{} bytes read",
        v.bytes_read
    );
    // A non-zero byte in what is a hole in the original is found.
    let f = OpenOptions::new()
        .write(true)
        .open(dst.join("huge"))
        .unwrap();
    f.write_all_at(b"\x01", (1 << 30) + 4097).unwrap();
    drop(f);
    set_mtime(&dst.join("huge"), m.mtime(), m.mtime_nsec());
    let err = verify_in_process(&src, &dst).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("byte {}", (1u64 << 30) + 4097)),
        "{err}"
    );

    // The same as the file's owner, in a worker.
    let user = TreeUser::new();
    let theirs = env.root.join("theirs");
    fs::create_dir(&theirs).unwrap();
    make_huge_sparse(&theirs.join("huge"));
    user.own(&theirs);
    let copy2 = mnt.join("copy2");
    fs::create_dir(&copy2).unwrap();
    let mut job = Job::as_owner(Owner::lookup(user.uid).unwrap()).with_worker(worker());
    let (a, b) = (Dir::open(&theirs).unwrap(), Dir::open(&copy2).unwrap());
    job.copy(&a, &b).unwrap();
    let t = Instant::now();
    let v = job.verify(&a, &b, Compare::Full).unwrap();
    eprintln!(
        "as the owner: verify {:?}, {} bytes read",
        t.elapsed(),
        v.bytes_read
    );
    assert!(
        v.bytes_read <= 64 << 10,
        "verify read {} bytes",
        v.bytes_read
    );
    assert_eq!(lstat(&copy2.join("huge")).uid(), user.uid);
}

/// Issue 7 item 10: a directory whose name is 250 characters long can be initialized and
/// released (temporary siblings are derived from the name, not appended to it).
#[test]
fn tree_regression_issue7_item10_long_names_init_and_release() {
    let Some(env) = TestEnv::new("tree-long-name") else {
        return;
    };
    env.write_config("");
    let p = env.home.join("n".repeat(250));
    TestEnv::make_sample_tree(&p);
    let before = TestEnv::tree_digest(&p);
    let r = env
        .run(&["--format", "json", "init", p.to_str().unwrap()])
        .ok()
        .json();
    assert_eq!(r["changed"], true, "{r}");
    assert!(fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
    assert_eq!(TestEnv::tree_digest(&p), before);
    env.run(&["--format", "json", "release", p.to_str().unwrap()])
        .ok();
    let m = fs::symlink_metadata(&p).unwrap();
    assert!(m.is_dir() && !m.file_type().is_symlink());
    assert_eq!(TestEnv::tree_digest(&p), before);
    let leftovers: Vec<_> = fs::read_dir(&env.home)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.as_bytes().starts_with(b".ws-ckpt-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
