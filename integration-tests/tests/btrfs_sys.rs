//! Root tier: the Linux `Sys` against real btrfs on loop devices: images, loop devices (reuse,
//! autoclear, capacity), mounts, subvolumes and snapshots, deletion and the cleaner wait,
//! online growth, and a failed mount that must leave no loop device. Needs root (fails under
//! `CI` when not root, prints SKIPPED otherwise).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::statfs::statfs;
use ws_ckpt::sys::cleaner::{orphan_items, wait_free_space_stable, wait_orphans_gone};
use ws_ckpt::sys::linux::LinuxSys;
use ws_ckpt::sys::{LoopDevice, SubvolumeCheck, Sys, SysError, SysResult};
use ws_ckpt_integration_tests::scratch::BTRFS_PREFIX;
use ws_ckpt_integration_tests::{require_root, Scratch};

const MIB: u64 = 1024 * 1024;

/// The read-only flag of the subvolume root at `path` (EINVAL: not a subvolume root).
fn is_readonly(sys: &LinuxSys, path: &Path) -> SysResult<bool> {
    match sys.open_subvolume(path)? {
        SubvolumeCheck::Subvolume(s) => Ok(s.readonly),
        _ => Err(SysError::io("read subvolume flags", path, Errno::EINVAL)),
    }
}

/// A scratch directory whose mounts and loop devices are torn down on drop, even when the
/// test panics (the harness's one loop fixture), or `None` when not root.
fn fixture(test: &str) -> Option<Scratch> {
    if !require_root(test) {
        return None;
    }
    let prefix = format!("{BTRFS_PREFIX}{test}-");
    Some(Scratch::create(&prefix, &["/var/tmp", "/tmp"], "ws-ckpt-it").expect("scratch dir"))
}

fn loop_of(image: &Path) -> Option<LoopDevice> {
    let meta = std::fs::metadata(image).expect("stat image");
    LinuxSys::with_mkfs(PathBuf::from("/nonexistent"))
        .list_loops()
        .expect("list loops")
        .into_iter()
        .find(|l| l.backing_dev == meta.dev() && l.backing_inode == meta.ino())
}

/// Autoclear happens when the last reference goes; give the kernel a moment.
fn wait_detached(image: &Path) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if loop_of(image).is_none() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn write_file(path: &Path, len: u64) {
    let mut f = File::create(path).expect("create");
    let chunk: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8 + 1).collect();
    for _ in 0..len / MIB {
        f.write_all(&chunk).expect("write");
    }
    f.sync_all().expect("fsync");
}

#[test]
fn btrfs_sys_lifecycle() {
    let Some(fx) = fixture("btrfs_sys_lifecycle") else {
        return;
    };
    let sys = LinuxSys::new().expect("mkfs.btrfs installed");
    let image = fx.root().join("btrfs.img");
    let mnt = fx.root().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir mnt");

    // create_image
    sys.create_image(&image, 256 * MIB).expect("create image");
    let meta = std::fs::metadata(&image).expect("stat");
    assert_eq!(meta.len(), 256 * MIB);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(meta.blocks() * 512 < 256 * MIB, "image is not sparse");
    assert_eq!(
        sys.create_image(&image, 256 * MIB)
            .expect_err("exists")
            .errno(),
        Some(libc::EEXIST)
    );

    // mount_image: new loop with autoclear; direct I/O as reported
    let mounted = sys.mount_image(&image, &mnt).expect("mount image");
    assert!(!mounted.reused_loop);
    let lo = loop_of(&image).expect("list_loops finds the image by inode");
    assert_eq!(lo.device, mounted.device);
    assert!(lo.autoclear);
    assert_eq!(lo.direct_io, mounted.direct_io);
    assert_eq!(lo.backing_file, image);
    let host_fs = statfs(fx.root()).expect("statfs").filesystem_type();
    if host_fs == nix::sys::statfs::EXT4_SUPER_MAGIC || host_fs == nix::sys::statfs::XFS_SUPER_MAGIC
    {
        assert!(mounted.direct_io, "ext4/xfs support O_DIRECT");
    }
    eprintln!(
        "loop {} direct_io={}",
        mounted.device.display(),
        mounted.direct_io
    );
    let entry = sys
        .mounts()
        .expect("mounts")
        .into_iter()
        .rfind(|m| m.mount_point == mnt)
        .expect("mounted");
    assert_eq!(entry.fs_type, "btrfs");
    assert_eq!(Path::new(&entry.source), mounted.device);

    // subvolumes
    assert!(sys.is_subvolume(&mnt).expect("top level"));
    let ws = mnt.join("ws1");
    sys.create_subvolume(&ws).expect("create subvolume");
    assert_eq!(
        sys.create_subvolume(&ws).expect_err("exists").errno(),
        Some(libc::EEXIST)
    );
    std::fs::write(ws.join("a.txt"), b"hello").expect("write");
    std::fs::create_dir(ws.join("sub")).expect("mkdir");
    std::fs::write(ws.join("sub/b.txt"), b"world").expect("write");
    std::os::unix::fs::symlink("a.txt", ws.join("link")).expect("symlink");
    std::os::unix::fs::symlink(&ws, mnt.join("ws1-link")).expect("symlink");
    std::fs::write(mnt.join("plain-file"), b"x").expect("write");
    assert!(sys.is_subvolume(&ws).expect("ws"));
    assert!(!sys.is_subvolume(&ws.join("sub")).expect("dir"));
    assert!(!sys.is_subvolume(&ws.join("a.txt")).expect("file"));
    assert!(!sys.is_subvolume(&mnt.join("ws1-link")).expect("symlink"));
    assert!(!sys.is_subvolume(&mnt.join("nope")).expect("missing"));

    let snaps = mnt.join("snapshots");
    std::fs::create_dir(&snaps).expect("mkdir snapshots");
    let ro = snaps.join("s1");
    let rw = mnt.join("ws1-rw");
    sys.snapshot(&ws, &ro, true).expect("ro snapshot");
    sys.snapshot(&ws, &rw, false).expect("rw snapshot");
    assert_eq!(std::fs::read(ro.join("sub/b.txt")).expect("read"), b"world");
    assert_eq!(
        std::fs::read_link(rw.join("link")).expect("link"),
        Path::new("a.txt")
    );
    assert!(is_readonly(&sys, &ro).expect("ro"));
    assert!(!is_readonly(&sys, &rw).expect("rw"));
    assert!(!is_readonly(&sys, &ws).expect("ws"));
    assert!(
        is_readonly(&sys, &ws.join("sub")).is_err(),
        "not a subvolume root"
    );
    let e = std::fs::write(ro.join("new"), b"x").expect_err("read-only snapshot");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    std::fs::write(rw.join("new"), b"x").expect("writable snapshot");
    assert_eq!(
        sys.snapshot(&ws.join("sub"), &mnt.join("bad"), false)
            .expect_err("not a subvolume")
            .errno(),
        Some(libc::EINVAL)
    );

    assert_eq!(
        sys.list_subvolumes(&mnt).expect("list"),
        vec!["ws1", "ws1-rw"]
    );
    assert_eq!(sys.list_subvolumes(&snaps).expect("list"), vec!["s1"]);
    assert!(sys
        .list_subvolumes(&mnt.join("missing"))
        .expect("list")
        .is_empty());
    // The batched listing (one tree search) answers exactly what one listing per directory
    // does: per directory, in order, a missing one empty, a plain one without subvolumes
    // empty, a directory inside a subvolume, and one outside btrfs.
    let inner = ws.join("sub");
    sys.snapshot(&ws, &inner.join("nested"), true)
        .expect("snapshot into a directory of a subvolume");
    let host = std::env::temp_dir();
    let dirs = vec![
        snaps.clone(),
        mnt.join("missing"),
        mnt.clone(),
        ws.clone(),
        inner.clone(),
        host.clone(),
    ];
    let many: Vec<Vec<String>> = sys
        .list_subvolumes_many(&dirs)
        .into_iter()
        .map(|r| r.expect("list many"))
        .collect();
    let one: Vec<Vec<String>> = dirs
        .iter()
        .map(|d| sys.list_subvolumes(d).expect("list one"))
        .collect();
    assert_eq!(many, one);
    assert_eq!(many[0], vec!["s1"]);
    assert_eq!(many[4], vec!["nested"]);
    sys.delete_subvolume(&inner.join("nested"))
        .expect("delete nested");

    // delete (read-only snapshot included); a plain dir or missing path is an error
    sys.delete_subvolume(&ro).expect("delete ro snapshot");
    assert!(!ro.exists());
    assert!(!sys.is_subvolume(&ro).expect("gone"));
    assert!(sys.delete_subvolume(&ws.join("sub")).is_err(), "plain dir");
    assert!(ws.join("sub/b.txt").exists());
    assert_eq!(
        sys.delete_subvolume(&mnt.join("missing"))
            .expect_err("missing")
            .errno(),
        Some(libc::ENOENT)
    );
    sys.delete_subvolume(&rw).expect("delete rw snapshot");

    // space comes back after the cleaner ran
    let big = mnt.join("big");
    sys.create_subvolume(&big).expect("create big");
    write_file(&big.join("data"), 100 * MIB);
    sys.sync_and_wait_cleaner(&mnt, Duration::from_secs(30))
        .expect("sync");
    let full = sys.fs_usage(&mnt).expect("usage");
    sys.delete_subvolume(&big).expect("delete big");
    // The deleted root is visible as an orphan item until the cleaner drops it (no commit
    // has happened yet, so the cleaner has not run): proves the tree search key is right.
    let mnt_dir = File::open(&mnt).expect("open mnt");
    assert!(
        orphan_items(&mnt_dir).expect("tree search") >= 1,
        "no orphan item after delete"
    );
    // Bounded: an already passed deadline reports "not yet" instead of waiting.
    assert!(!wait_orphans_gone(&mnt_dir, &mnt, Instant::now()).expect("search"));
    let started = Instant::now();
    sys.sync_and_wait_cleaner(&mnt, Duration::from_secs(60))
        .expect("wait cleaner");
    eprintln!("cleaner wait took {:?}", started.elapsed());
    assert_eq!(orphan_items(&mnt_dir).expect("tree search"), 0);
    // The fallback used when tree search is refused settles on an idle filesystem.
    let settled = wait_free_space_stable(&mnt_dir, &mnt, Instant::now() + Duration::from_secs(10))
        .expect("free space polling");
    assert!(settled);
    drop(mnt_dir);
    let after = sys.fs_usage(&mnt).expect("usage");
    assert!(
        after.free >= full.free + 80 * MIB,
        "space not reclaimed: before {full:?} after {after:?}"
    );
    // Nothing pending: returns promptly.
    let started = Instant::now();
    sys.sync_and_wait_cleaner(&mnt, Duration::from_secs(30))
        .expect("idle sync");
    assert!(started.elapsed() < Duration::from_secs(10));

    // reuse of an attached loop: second mount of the same image
    let mnt2 = fx.root().join("mnt2");
    std::fs::create_dir(&mnt2).expect("mkdir mnt2");
    let again = sys.mount_image(&image, &mnt2).expect("second mount");
    assert!(again.reused_loop);
    assert_eq!(again.device, mounted.device);
    assert!(mnt2.join("ws1/a.txt").exists());
    sys.umount(&mnt2).expect("umount mnt2");
    assert!(
        loop_of(&image).is_some(),
        "still mounted at mnt: loop stays"
    );

    // umount → autoclear
    sys.umount(&mnt).expect("umount");
    assert!(!sys
        .mounts()
        .expect("mounts")
        .iter()
        .any(|m| m.mount_point == mnt));
    assert!(
        wait_detached(&image),
        "autoclear did not detach {:?}",
        loop_of(&image)
    );
    assert_eq!(
        sys.umount(&mnt).expect_err("not mounted").errno(),
        Some(libc::EINVAL)
    );

    // reattach after "reboot"
    let remounted = sys.mount_image(&image, &mnt).expect("remount");
    assert!(!remounted.reused_loop);
    assert_eq!(
        std::fs::read(mnt.join("ws1/a.txt")).expect("data survived"),
        b"hello"
    );

    // grow online
    let before = sys.fs_usage(&mnt).expect("usage");
    sys.grow_image(&image, &mnt, 512 * MIB).expect("grow");
    assert_eq!(std::fs::metadata(&image).expect("stat").len(), 512 * MIB);
    let grown = sys.fs_usage(&mnt).expect("usage");
    assert!(
        grown.total >= before.total + 200 * MIB,
        "not grown: before {before:?} after {grown:?}"
    );

    // explicit detach while mounted is deferred until the umount
    sys.detach_loop(&remounted.device).expect("detach");
    assert!(mnt.join("ws1/a.txt").exists());
    sys.umount(&mnt).expect("umount");
    assert!(wait_detached(&image), "loop left attached");
}

#[test]
fn btrfs_sys_failed_mount_leaves_no_loop() {
    let Some(fx) = fixture("btrfs_sys_failed_mount_leaves_no_loop") else {
        return;
    };
    let sys = LinuxSys::new().expect("mkfs.btrfs installed");
    let image = fx.root().join("blank.img");
    let mnt = fx.root().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    File::create(&image)
        .and_then(|f| f.set_len(64 * MIB))
        .expect("blank image");
    let err = sys.mount_image(&image, &mnt).expect_err("not a filesystem");
    assert!(
        err.to_string().contains(&mnt.display().to_string()),
        "{err}"
    );
    assert!(wait_detached(&image), "loop of failed mount still attached");
    assert!(sys.mount_image(&fx.root().join("none.img"), &mnt).is_err());
}
