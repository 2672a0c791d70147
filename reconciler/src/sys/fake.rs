//! An in-memory [`Sys`] for executor unit tests. "Subvolumes" are real directories (so the
//! executor's own `std::fs` calls work on them) recorded in a set; loop devices and mounts are
//! in-memory lists; image files are real sparse files remembered as formatted by identity
//! (device and inode), so an image formatted under a temporary name and renamed into place is
//! still formatted, as with a real filesystem.
//!
//! This module must not touch anything outside the paths it is given, and must not be used
//! outside tests and dry-run tooling: it only imitates the kernel's answers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::{
    FsUsage, LoopDevice, MountEntry, MountedImage, OpenSubvolume, SubvolumeCheck, Sys, SysError,
    SysResult,
};

const GIB: u64 = 1024 * 1024 * 1024;

/// In-memory fake of [`Sys`]; see the module documentation.
pub struct FakeSys {
    state: Mutex<State>,
    hooks: Mutex<HashMap<String, Hook>>,
}

/// Code run (once) when a trait method is entered, outside the fake's own lock.
type Hook = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for FakeSys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSys")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct State {
    subvolumes: BTreeSet<PathBuf>,
    readonly: BTreeSet<PathBuf>,
    /// Checkpoint records by the path of their snapshot ([`Sys::set_checkpoint_record`]: on
    /// the snapshot's directory, under its name).
    records: BTreeMap<PathBuf, Vec<u8>>,
    /// Records on subvolume roots (as earlier builds put them there); snapshots copy
    /// them.
    root_records: BTreeMap<PathBuf, Vec<u8>>,
    /// (st_dev, st_ino) of the image files "formatted" by `create_image`.
    formatted: BTreeSet<(u64, u64)>,
    mounts: Vec<MountEntry>,
    loops: Vec<LoopDevice>,
    usage: FsUsage,
    failures: HashMap<String, i32>,
    calls: Vec<String>,
    next_mount_id: u32,
    next_loop: u32,
}

impl Default for FakeSys {
    fn default() -> Self {
        FakeSys::new()
    }
}

impl FakeSys {
    /// An empty fake: no subvolumes, mounts or loops; usage 10 GiB total, 9 GiB free.
    pub fn new() -> FakeSys {
        FakeSys {
            state: Mutex::new(State {
                subvolumes: BTreeSet::new(),
                readonly: BTreeSet::new(),
                records: BTreeMap::new(),
                root_records: BTreeMap::new(),
                formatted: BTreeSet::new(),
                mounts: Vec::new(),
                loops: Vec::new(),
                usage: FsUsage {
                    total: 10 * GIB,
                    free: 9 * GIB,
                    avail: 9 * GIB,
                },
                failures: HashMap::new(),
                calls: Vec::new(),
                next_mount_id: 1000,
                next_loop: 0,
            }),
            hooks: Mutex::new(HashMap::new()),
        }
    }

    /// Run `hook` (once) when trait method `op` is next entered, before it does anything,
    /// without holding the fake's lock: tests use it to act while a step is in progress.
    pub fn on_next(&self, op: &str, hook: impl FnOnce() + Send + 'static) {
        self.hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(op.to_owned(), Box::new(hook));
    }

    /// Value returned by every later [`Sys::fs_usage`] call.
    pub fn set_usage(&self, usage: FsUsage) {
        self.lock().usage = usage;
    }

    /// Make the next call of trait method `op` (e.g. `"snapshot"`) fail with `errno`.
    pub fn fail_next(&self, op: &str, errno: i32) {
        self.lock().failures.insert(op.to_owned(), errno);
    }

    /// Put `record` on the root of subvolume `subvol`, where earlier builds put a
    /// checkpoint's record before its snapshot (which copies it).
    pub fn set_root_record(&self, subvol: &Path, record: &[u8]) {
        self.lock()
            .root_records
            .insert(subvol.to_path_buf(), record.to_vec());
    }

    /// The checkpoint records held on snapshot directories, by the path of their snapshot.
    pub fn records_now(&self) -> Vec<PathBuf> {
        self.lock().records.keys().cloned().collect()
    }

    /// Every trait call so far, e.g. `"create_subvolume /x/y"`, in order (failed ones too).
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Add a mount entry as if something else had mounted it.
    pub fn add_mount(&self, entry: MountEntry) {
        self.lock().mounts.push(entry);
    }

    /// Add an attached loop device as if something else had attached it.
    pub fn add_loop(&self, device: LoopDevice) {
        self.lock().loops.push(device);
    }

    /// Record an existing directory as a subvolume (test setup; not logged as a call).
    pub fn add_subvolume(&self, path: &Path, readonly: bool) {
        let mut st = self.lock();
        st.subvolumes.insert(path.to_path_buf());
        if readonly {
            st.readonly.insert(path.to_path_buf());
        }
    }

    /// The current mount table.
    pub fn mounts_now(&self) -> Vec<MountEntry> {
        self.lock().mounts.clone()
    }

    /// The currently attached loop devices.
    pub fn loops_now(&self) -> Vec<LoopDevice> {
        self.lock().loops.clone()
    }

    /// Every recorded subvolume (existing on disk or not).
    pub fn subvolumes_now(&self) -> Vec<PathBuf> {
        self.lock().subvolumes.iter().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not poison every later assertion.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Log the call and consume an injected failure for `op`.
    fn enter(
        &self,
        op: &'static str,
        args: &[&dyn std::fmt::Display],
        path: &Path,
    ) -> SysResult<MutexGuard<'_, State>> {
        let hook = self
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(op);
        if let Some(hook) = hook {
            hook();
        }
        let mut st = self.lock();
        let mut line = String::from(op);
        for a in args {
            line.push(' ');
            line.push_str(&a.to_string());
        }
        st.calls.push(line);
        if let Some(errno) = st.failures.remove(op) {
            return Err(err(op, path, errno));
        }
        Ok(st)
    }
}

/// Record a btrfs mount of `device` at `target`, as the kernel would list it.
fn push_btrfs_mount(st: &mut State, device: &Path, target: &Path) {
    let mount_id = st.next_mount_id;
    st.next_mount_id += 1;
    st.mounts.push(MountEntry {
        mount_id,
        dev: format!("0:{}", 100 + mount_id),
        root: PathBuf::from("/"),
        mount_point: target.to_path_buf(),
        mount_options: "rw,relatime".to_owned(),
        fs_type: "btrfs".to_owned(),
        source: device.display().to_string(),
        super_options: "rw,space_cache=v2,subvolid=5,subvol=/".to_owned(),
    });
}

fn err(op: &'static str, path: &Path, errno: i32) -> SysError {
    SysError::io(op, path, std::io::Error::from_raw_os_error(errno))
}

fn exists_no_follow(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

fn parent_is_dir(op: &'static str, path: &Path) -> SysResult<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() && p.is_dir() => Ok(()),
        Some(p) if !p.as_os_str().is_empty() => Err(err(op, path, libc::ENOENT)),
        _ => Err(err(op, path, libc::EINVAL)),
    }
}

/// Copy a tree like a snapshot does: files, directories and symlinks (verbatim); nested
/// subvolumes become empty directories.
fn copy_tree(src: &Path, dst: &Path, nested: &BTreeSet<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    std::fs::create_dir(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let ft = entry.file_type()?;
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if ft.is_dir() {
            if nested.contains(&from) {
                std::fs::create_dir(&to)?;
            } else {
                copy_tree(&from, &to, nested)?;
            }
        } else {
            std::fs::copy(&from, &to)?;
        }
    }
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    Ok(())
}

fn display(p: &Path) -> std::path::Display<'_> {
    p.display()
}

impl Sys for FakeSys {
    fn create_subvolume(&self, path: &Path) -> SysResult<()> {
        const OP: &str = "create_subvolume";
        let mut st = self.enter(OP, &[&display(path)], path)?;
        parent_is_dir(OP, path)?;
        if exists_no_follow(path) {
            return Err(err(OP, path, libc::EEXIST));
        }
        std::fs::create_dir(path).map_err(|e| SysError::io(OP, path, e))?;
        st.subvolumes.insert(path.to_path_buf());
        Ok(())
    }

    fn snapshot(&self, source: &Path, dest: &Path, readonly: bool) -> SysResult<()> {
        const OP: &str = "snapshot";
        let mode = if readonly { "ro" } else { "rw" };
        let mut st = self.enter(OP, &[&display(source), &display(dest), &mode], dest)?;
        if !is_real_dir(source) {
            return Err(err(OP, source, libc::ENOENT));
        }
        if !st.subvolumes.contains(source) {
            return Err(err(OP, source, libc::EINVAL));
        }
        parent_is_dir(OP, dest)?;
        if exists_no_follow(dest) {
            return Err(err(OP, dest, libc::EEXIST));
        }
        let nested: BTreeSet<PathBuf> = st
            .subvolumes
            .iter()
            .filter(|p| p.starts_with(source) && p.as_path() != source)
            .cloned()
            .collect();
        if let Err(e) = copy_tree(source, dest, &nested) {
            let _ = std::fs::remove_dir_all(dest);
            return Err(SysError::io(OP, dest, e));
        }
        st.subvolumes.insert(dest.to_path_buf());
        if readonly {
            st.readonly.insert(dest.to_path_buf());
        }
        if let Some(record) = st.root_records.get(source).cloned() {
            st.root_records.insert(dest.to_path_buf(), record);
        }
        Ok(())
    }

    fn set_checkpoint_record(&self, dir: &Path, id: &str, record: &[u8]) -> SysResult<()> {
        const OP: &str = "set_checkpoint_record";
        let mut st = self.enter(OP, &[&display(dir), &id], dir)?;
        if !is_real_dir(dir) {
            return Err(err(OP, dir, libc::ENOENT));
        }
        st.records.insert(dir.join(id), record.to_vec());
        Ok(())
    }

    fn remove_checkpoint_record(&self, dir: &Path, id: &str) -> SysResult<()> {
        const OP: &str = "remove_checkpoint_record";
        let mut st = self.enter(OP, &[&display(dir), &id], dir)?;
        st.records.remove(&dir.join(id));
        Ok(())
    }

    fn checkpoint_record(&self, snapshot: &Path) -> SysResult<Option<Vec<u8>>> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Ok(st
            .records
            .get(snapshot)
            .or_else(|| st.root_records.get(snapshot))
            .cloned())
    }

    fn checkpoint_records(&self, dir: &Path) -> SysResult<Vec<Vec<u8>>> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Ok(st
            .records
            .iter()
            .filter(|(snapshot, _)| snapshot.parent() == Some(dir))
            .map(|(_, record)| record.clone())
            .collect())
    }

    fn delete_subvolume(&self, path: &Path) -> SysResult<()> {
        const OP: &str = "delete_subvolume";
        let mut st = self.enter(OP, &[&display(path)], path)?;
        if !exists_no_follow(path) {
            return Err(err(OP, path, libc::ENOENT));
        }
        if !st.subvolumes.contains(path) || !is_real_dir(path) {
            return Err(err(OP, path, libc::EINVAL));
        }
        let has_nested = st
            .subvolumes
            .iter()
            .any(|p| p.starts_with(path) && p.as_path() != path && is_real_dir(p));
        if has_nested {
            return Err(err(OP, path, libc::ENOTEMPTY));
        }
        std::fs::remove_dir_all(path).map_err(|e| SysError::io(OP, path, e))?;
        st.subvolumes.remove(path);
        st.readonly.remove(path);
        st.records.remove(path);
        Ok(())
    }

    fn is_subvolume(&self, path: &Path) -> SysResult<bool> {
        const OP: &str = "is_subvolume";
        let st = self.enter(OP, &[&display(path)], path)?;
        Ok(st.subvolumes.contains(path) && is_real_dir(path))
    }

    fn list_subvolumes(&self, dir: &Path) -> SysResult<Vec<String>> {
        const OP: &str = "list_subvolumes";
        let st = self.enter(OP, &[&display(dir)], dir)?;
        let mut names: Vec<String> = st
            .subvolumes
            .iter()
            .filter(|p| p.parent() == Some(dir) && is_real_dir(p))
            .filter_map(|p| p.file_name().map(OsString::from))
            .filter_map(|n| n.into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    fn nested_subvolumes(&self, subvol: &Path) -> SysResult<Vec<PathBuf>> {
        const OP: &str = "nested_subvolumes";
        let st = self.enter(OP, &[&display(subvol)], subvol)?;
        let inside: Vec<&PathBuf> = st
            .subvolumes
            .iter()
            .filter(|p| p.starts_with(subvol) && p.as_path() != subvol && is_real_dir(p))
            .collect();
        // Directly nested: no other nested subvolume between `subvol` and it.
        let mut out: Vec<PathBuf> = inside
            .iter()
            .filter(|p| !inside.iter().any(|q| q != *p && p.starts_with(q)))
            .filter_map(|p| p.strip_prefix(subvol).ok().map(Path::to_path_buf))
            .collect();
        out.sort();
        Ok(out)
    }

    fn commit(&self, path: &Path) -> SysResult<()> {
        self.enter("commit", &[&display(path)], path).map(drop)
    }

    fn sync_and_wait_cleaner(&self, path: &Path, _timeout: Duration) -> SysResult<()> {
        self.enter("sync_and_wait_cleaner", &[&display(path)], path)
            .map(drop)
    }

    fn fs_usage(&self, path: &Path) -> SysResult<FsUsage> {
        let st = self.enter("fs_usage", &[&display(path)], path)?;
        Ok(st.usage)
    }

    fn list_loops(&self) -> SysResult<Vec<LoopDevice>> {
        let st = self.enter("list_loops", &[], Path::new("/dev"))?;
        Ok(st.loops.clone())
    }

    fn mount_image(&self, image: &Path, target: &Path) -> SysResult<MountedImage> {
        const OP: &str = "mount_image";
        let mut st = self.enter(OP, &[&display(image), &display(target)], target)?;
        let meta = std::fs::metadata(image).map_err(|e| SysError::io(OP, image, e))?;
        if !target.is_dir() {
            return Err(err(OP, target, libc::ENOENT));
        }
        let existing = st
            .loops
            .iter()
            .find(|l| l.backing_dev == meta.dev() && l.backing_inode == meta.ino())
            .cloned();
        let (device, direct_io, reused_loop) = match existing {
            Some(l) => (l.device, l.direct_io, true),
            None => {
                if !st.formatted.contains(&(meta.dev(), meta.ino())) {
                    return Err(err(OP, target, libc::EINVAL));
                }
                let device = PathBuf::from(format!("/dev/loop{}", st.next_loop));
                st.next_loop += 1;
                st.loops.push(LoopDevice {
                    device: device.clone(),
                    backing_file: image.to_path_buf(),
                    backing_dev: meta.dev(),
                    backing_inode: meta.ino(),
                    direct_io: true,
                    autoclear: true,
                });
                (device, true, false)
            }
        };
        push_btrfs_mount(&mut st, &device, target);
        Ok(MountedImage {
            device,
            direct_io,
            reused_loop,
        })
    }

    fn mounts(&self) -> SysResult<Vec<MountEntry>> {
        let st = self.enter("mounts", &[], Path::new("/proc/self/mountinfo"))?;
        Ok(st.mounts.clone())
    }

    fn create_image(&self, image: &Path, size: u64) -> SysResult<()> {
        const OP: &str = "create_image";
        let mut st = self.enter(OP, &[&display(image), &size], image)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(image)
            .map_err(|e| SysError::io(OP, image, e))?;
        if let Err(e) = file.set_len(size) {
            let _ = std::fs::remove_file(image);
            return Err(SysError::io(OP, image, e));
        }
        let meta = file.metadata().map_err(|e| SysError::io(OP, image, e))?;
        st.formatted.insert((meta.dev(), meta.ino()));
        Ok(())
    }

    fn grow_image(&self, image: &Path, mount: &Path, to_bytes: u64) -> SysResult<()> {
        const OP: &str = "grow_image";
        let st = self.enter(OP, &[&display(image), &display(mount), &to_bytes], image)?;
        let Some(m) = st
            .mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == mount && m.fs_type == "btrfs")
        else {
            return Err(err(OP, mount, libc::ENOTTY));
        };
        if !st
            .loops
            .iter()
            .any(|l| l.device.as_os_str() == m.source.as_str())
        {
            return Err(err(OP, mount, libc::ENXIO));
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(image)
            .map_err(|e| SysError::io(OP, image, e))?;
        let cur = f.metadata().map_err(|e| SysError::io(OP, image, e))?.len();
        if cur < to_bytes {
            f.set_len(to_bytes)
                .map_err(|e| SysError::io(OP, image, e))?;
        }
        Ok(())
    }

    fn open_subvolume(&self, path: &Path) -> SysResult<SubvolumeCheck> {
        const OP: &str = "open_subvolume";
        let st = self.enter(OP, &[&display(path)], path)?;
        let file = std::fs::File::open(path).map_err(|e| SysError::io(OP, path, e))?;
        if !st.subvolumes.contains(path) {
            return Ok(SubvolumeCheck::NotSubvolumeRoot);
        }
        let meta = file.metadata().map_err(|e| SysError::io(OP, path, e))?;
        Ok(SubvolumeCheck::Subvolume(OpenSubvolume {
            path: path.to_path_buf(),
            file,
            tree_id: meta.ino(),
            fsid: [0xfa; 16],
            readonly: st.readonly.contains(path),
        }))
    }

    fn send_no_data(&self, parent: &OpenSubvolume, to: &OpenSubvolume) -> SysResult<Vec<u8>> {
        let _st = self.enter(
            "send_no_data",
            &[&display(&parent.path), &display(&to.path)],
            &to.path,
        )?;
        Err(SysError::Other(format!(
            "the fake system cannot produce a btrfs send stream of {}",
            to.path.display()
        )))
    }
}

/// Test controls and queries the product does not use (the real system's counterparts are
/// inherent methods of `LinuxSys`, or absent).
impl FakeSys {
    /// True when the fake subvolume at `path` is read-only (EINVAL: not a subvolume).
    pub fn is_readonly(&self, path: &Path) -> SysResult<bool> {
        const OP: &str = "is_readonly";
        let st = self.enter(OP, &[&display(path)], path)?;
        if !path.exists() {
            return Err(err(OP, path, libc::ENOENT));
        }
        if !st.subvolumes.contains(path) {
            return Err(err(OP, path, libc::EINVAL));
        }
        Ok(st.readonly.contains(path))
    }

    /// Detach a loop device (deferred while it is mounted, as by the kernel).
    pub fn detach_loop(&self, device: &Path) -> SysResult<()> {
        const OP: &str = "detach_loop";
        let mut st = self.enter(OP, &[&display(device)], device)?;
        let Some(i) = st.loops.iter().position(|l| l.device == device) else {
            return Err(err(OP, device, libc::ENXIO));
        };
        let source = device.display().to_string();
        if st.mounts.iter().any(|m| m.source == source) {
            // Like the kernel: detached when its last user goes away.
            st.loops[i].autoclear = true;
        } else {
            st.loops.remove(i);
        }
        Ok(())
    }

    /// Unmount `target` (as if someone else did; the loop device autoclears).
    pub fn umount(&self, target: &Path) -> SysResult<()> {
        const OP: &str = "umount";
        let mut st = self.enter(OP, &[&display(target)], target)?;
        let Some(i) = st.mounts.iter().rposition(|m| m.mount_point == target) else {
            return Err(err(OP, target, libc::EINVAL));
        };
        let gone = st.mounts.remove(i);
        let still_used = st.mounts.iter().any(|m| m.source == gone.source);
        if !still_used {
            st.loops
                .retain(|l| !(l.autoclear && l.device.display().to_string() == gone.source));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    fn setup() -> (TempDir, FakeSys) {
        (TempDir::new().expect("tempdir"), FakeSys::new())
    }

    #[test]
    fn subvolumes_are_real_directories() {
        let (dir, sys) = setup();
        let ws = dir.path().join("ws");
        sys.create_subvolume(&ws).expect("create");
        assert!(ws.is_dir());
        assert!(sys.is_subvolume(&ws).expect("is"));
        assert_eq!(
            sys.create_subvolume(&ws).expect_err("exists").errno(),
            Some(libc::EEXIST)
        );
        assert_eq!(
            sys.create_subvolume(&dir.path().join("no/parent"))
                .expect_err("parent")
                .errno(),
            Some(libc::ENOENT)
        );
        std::fs::create_dir(dir.path().join("plain")).expect("mkdir");
        assert!(!sys.is_subvolume(&dir.path().join("plain")).expect("plain"));
        assert_eq!(sys.list_subvolumes(dir.path()).expect("list"), vec!["ws"]);
        assert!(sys
            .list_subvolumes(&dir.path().join("missing"))
            .expect("list")
            .is_empty());

        // Removed by hand: gone for the fake as well.
        std::fs::remove_dir(&ws).expect("rmdir");
        assert!(!sys.is_subvolume(&ws).expect("gone"));
        assert!(sys.list_subvolumes(dir.path()).expect("list").is_empty());
    }

    #[test]
    fn snapshot_copies_tree_and_tracks_readonly() {
        let (dir, sys) = setup();
        let ws = dir.path().join("ws");
        sys.create_subvolume(&ws).expect("create");
        std::fs::create_dir(ws.join("d")).expect("mkdir");
        std::fs::write(ws.join("d/f"), b"data").expect("write");
        std::os::unix::fs::symlink("/abs/target", ws.join("abs")).expect("symlink");
        sys.create_subvolume(&ws.join("nested")).expect("nested");
        std::fs::write(ws.join("nested/inner"), b"x").expect("write");

        let snaps = dir.path().join("snaps");
        std::fs::create_dir(&snaps).expect("mkdir");
        let s1 = snaps.join("s1");
        sys.snapshot(&ws, &s1, true).expect("snapshot");
        assert_eq!(std::fs::read(s1.join("d/f")).expect("read"), b"data");
        assert_eq!(
            std::fs::read_link(s1.join("abs")).expect("link"),
            Path::new("/abs/target")
        );
        assert!(s1.join("nested").is_dir());
        assert!(
            !s1.join("nested/inner").exists(),
            "nested subvolume becomes empty dir"
        );
        assert!(sys.is_readonly(&s1).expect("ro"));
        assert!(!sys.is_readonly(&ws).expect("rw"));
        assert_eq!(
            sys.is_readonly(&ws.join("d"))
                .expect_err("not subvol")
                .errno(),
            Some(libc::EINVAL)
        );
        assert_eq!(
            sys.snapshot(&ws, &s1, false).expect_err("exists").errno(),
            Some(libc::EEXIST)
        );
        assert_eq!(
            sys.snapshot(&ws.join("d"), &snaps.join("s2"), false)
                .expect_err("not subvol")
                .errno(),
            Some(libc::EINVAL)
        );

        assert_eq!(
            sys.delete_subvolume(&ws).expect_err("nested").errno(),
            Some(libc::ENOTEMPTY)
        );
        assert_eq!(
            sys.delete_subvolume(&ws.join("d"))
                .expect_err("plain dir")
                .errno(),
            Some(libc::EINVAL)
        );
        sys.delete_subvolume(&s1).expect("delete ro");
        assert!(!s1.exists());
        assert_eq!(
            sys.delete_subvolume(&s1).expect_err("missing").errno(),
            Some(libc::ENOENT)
        );
    }

    #[test]
    fn images_loops_and_mounts() {
        let (dir, sys) = setup();
        let img = dir.path().join("img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        sys.create_image(&img, 1 << 30).expect("create");
        assert_eq!(std::fs::metadata(&img).expect("stat").len(), 1 << 30);

        let m = sys.mount_image(&img, &mnt).expect("mount");
        assert!(!m.reused_loop && m.direct_io);
        let loops = sys.list_loops().expect("loops");
        assert_eq!(loops.len(), 1);
        assert_eq!(loops[0].device, m.device);
        assert_eq!(
            loops[0].backing_inode,
            std::fs::metadata(&img).expect("stat").ino()
        );
        let mounts = sys.mounts().expect("mounts");
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].mount_point, mnt);
        assert_eq!(mounts[0].source, m.device.display().to_string());
        sys.grow_image(&img, &mnt, 2 << 30).expect("grow");
        assert_eq!(std::fs::metadata(&img).expect("stat").len(), 2 << 30);

        let mnt2 = dir.path().join("mnt2");
        std::fs::create_dir(&mnt2).expect("mkdir");
        assert!(sys.mount_image(&img, &mnt2).expect("second").reused_loop);
        sys.umount(&mnt2).expect("umount 2");
        assert_eq!(sys.loops_now().len(), 1, "still used by mnt");
        sys.umount(&mnt).expect("umount");
        assert!(sys.mounts_now().is_empty());
        assert!(sys.loops_now().is_empty(), "autoclear");
        assert_eq!(
            sys.umount(&mnt).expect_err("not mounted").errno(),
            Some(libc::EINVAL)
        );

        let raw = dir.path().join("raw");
        std::fs::write(&raw, b"").expect("write");
        assert_eq!(
            sys.mount_image(&raw, &mnt)
                .expect_err("unformatted")
                .errno(),
            Some(libc::EINVAL)
        );
        assert_eq!(
            sys.create_image(&img, 1).expect_err("exists").errno(),
            Some(libc::EEXIST)
        );
    }

    #[test]
    fn injected_failures_usage_and_call_log() {
        let (dir, sys) = setup();
        let ws = dir.path().join("ws");
        sys.fail_next("create_subvolume", libc::ENOSPC);
        let e = sys.create_subvolume(&ws).expect_err("injected");
        assert_eq!(e.errno(), Some(libc::ENOSPC));
        assert!(e.to_string().contains(&ws.display().to_string()), "{e}");
        assert!(!ws.exists());
        sys.create_subvolume(&ws).expect("only the next call fails");

        assert_eq!(sys.fs_usage(&ws).expect("usage").total, 10 * GIB);
        let u = FsUsage {
            total: 100,
            free: 5,
            avail: 5,
        };
        sys.set_usage(u);
        assert_eq!(sys.fs_usage(&ws).expect("usage"), u);

        let snap = dir.path().join("s");
        sys.snapshot(&ws, &snap, true).expect("snap");
        let calls = sys.calls();
        assert_eq!(calls[0], format!("create_subvolume {}", ws.display()));
        assert_eq!(calls[1], calls[0]);
        assert_eq!(
            calls.last().expect("last"),
            &format!("snapshot {} {} ro", ws.display(), snap.display())
        );

        let entry = MountEntry {
            mount_id: 1,
            dev: "0:50".into(),
            root: "/".into(),
            mount_point: "/data".into(),
            mount_options: "rw".into(),
            fs_type: "btrfs".into(),
            source: "/dev/sda2".into(),
            super_options: "rw".into(),
        };
        sys.add_mount(entry.clone());
        assert_eq!(sys.mounts().expect("mounts"), vec![entry]);
    }
}
