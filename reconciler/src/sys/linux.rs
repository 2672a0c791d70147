//! The real [`Sys`]: btrfs ioctls, loop devices, mount(2) and `statvfs`, one thin call per
//! trait method. The only subprocess is `mkfs.btrfs` (located once by [`LinuxSys::new`]).
//!
//! This module must not decide anything (what to create, reuse or delete, retries beyond the
//! kernel races it papers over) and must never run the `btrfs` program.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::statfs::{statfs, BTRFS_SUPER_MAGIC};
use nix::sys::statvfs::statvfs;

use super::cleaner::{btrfs_sync, wait_free_space_stable, wait_orphans_gone};
use super::ioctl::{
    self, BtrfsInoLookupArgs, BtrfsSearchArgs, BtrfsSearchHeader, BtrfsSearchKey, BtrfsVolArgs,
    BtrfsVolArgsV2, BTRFS_FIRST_FREE_OBJECTID, BTRFS_INO_LOOKUP_PATH_MAX, BTRFS_ROOT_REF_KEY,
    BTRFS_ROOT_TREE_OBJECTID, BTRFS_SEARCH_ARGS_BUFSIZE, BTRFS_SUBVOL_RDONLY,
};
use super::loopdev;
use super::mountinfo;
use super::send;
use super::{
    FsUsage, LoopDevice, MountEntry, MountedImage, OpenSubvolume, SubvolumeCheck, Sys, SysError,
    SysResult,
};

/// Name of the formatting program.
const MKFS: &str = "mkfs.btrfs";
/// Directories searched for programs after `$PATH`.
const FALLBACK_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The Linux implementation of [`Sys`].
#[derive(Debug, Clone)]
pub struct LinuxSys {
    mkfs: PathBuf,
}

impl LinuxSys {
    /// Locate `mkfs.btrfs` (in `$PATH`, then `/usr/sbin`, `/sbin`, `/usr/bin`, `/bin`).
    pub fn new() -> SysResult<LinuxSys> {
        let mkfs = find_program(MKFS, std::env::var_os("PATH"))?;
        tracing::debug!(mkfs = %mkfs.display(), "located mkfs.btrfs");
        Ok(LinuxSys { mkfs })
    }

    /// Use the given formatting program instead of searching for `mkfs.btrfs`.
    pub fn with_mkfs(mkfs: PathBuf) -> LinuxSys {
        LinuxSys { mkfs }
    }

    /// The formatting program in use.
    pub fn mkfs_path(&self) -> &Path {
        &self.mkfs
    }
}

/// Find an executable `name` in the directories of `path_var` (a `$PATH` value), then in the
/// usual system directories.
pub fn find_program(name: &'static str, path_var: Option<OsString>) -> SysResult<PathBuf> {
    let mut dirs: Vec<PathBuf> = path_var
        .as_deref()
        .map(|p| {
            std::env::split_paths(p)
                .filter(|d| d.is_absolute())
                .collect()
        })
        .unwrap_or_default();
    for d in FALLBACK_DIRS {
        let d = PathBuf::from(d);
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    for dir in &dirs {
        let candidate = dir.join(name);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(SysError::ProgramMissing {
        program: name,
        searched: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

impl Sys for LinuxSys {
    fn create_subvolume(&self, path: &Path) -> SysResult<()> {
        const OP: &str = "create subvolume";
        tracing::debug!(path = %path.display(), "create subvolume");
        let (parent, name) = split(OP, path)?;
        let dir = open_dir(OP, parent)?;
        let mut args = Box::new(BtrfsVolArgs::zeroed());
        copy_name(OP, path, name, &mut args.name)?;
        // SAFETY: `args` is a fully initialised, NUL-terminated `btrfs_ioctl_vol_args`; the fd
        // is an open directory.
        unsafe { ioctl::btrfs_subvol_create(dir.as_raw_fd(), &*args) }
            .map(drop)
            .map_err(|e| SysError::io(OP, path, e))
    }

    fn snapshot(&self, source: &Path, dest: &Path, readonly: bool) -> SysResult<()> {
        const OP: &str = "snapshot subvolume to";
        tracing::debug!(
            source = %source.display(),
            dest = %dest.display(),
            readonly,
            "snapshot subvolume"
        );
        let src = open_dir("open snapshot source", source)?;
        let (parent, name) = split(OP, dest)?;
        let dir = open_dir(OP, parent)?;
        let mut args = Box::new(BtrfsVolArgsV2::zeroed());
        args.fd = i64::from(src.as_raw_fd());
        args.flags = if readonly { BTRFS_SUBVOL_RDONLY } else { 0 };
        copy_name(OP, dest, name, &mut args.name)?;
        // SAFETY: `args` is a fully initialised `btrfs_ioctl_vol_args_v2` whose fd field is an
        // open directory; the ioctl fd is an open directory.
        unsafe { ioctl::btrfs_snap_create_v2(dir.as_raw_fd(), &*args) }
            .map(drop)
            .map_err(|e| SysError::io(OP, dest, e))
    }

    fn set_checkpoint_record(&self, dir: &Path, id: &str, record: &[u8]) -> SysResult<()> {
        const OP: &str = "put the checkpoint record on";
        let d = open_dir(OP, dir)?;
        let target = crate::tree::xattr::Target::Fd(d.as_fd());
        crate::tree::xattr::set(target, &record_xattr_name(id), record)
            .map_err(|e| SysError::io(OP, dir, e))
    }

    fn remove_checkpoint_record(&self, dir: &Path, id: &str) -> SysResult<()> {
        const OP: &str = "remove the checkpoint record from";
        let d = open_dir(OP, dir)?;
        let target = crate::tree::xattr::Target::Fd(d.as_fd());
        match crate::tree::xattr::remove(target, &record_xattr_name(id)) {
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
            r => r.map_err(|e| SysError::io(OP, dir, e)),
        }
    }

    fn checkpoint_record(&self, snapshot: &Path) -> SysResult<Option<Vec<u8>>> {
        const OP: &str = "read the checkpoint record of";
        let (dir, name) = split(OP, snapshot)?;
        let get = |path: &Path, xattr: &std::ffi::CStr| -> SysResult<Option<Vec<u8>>> {
            let d = open_dir(OP, path)?;
            match crate::tree::xattr::get(crate::tree::xattr::Target::Fd(d.as_fd()), xattr) {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(None),
                r => r.map_err(|e| SysError::io(OP, snapshot, e)),
            }
        };
        let id = name
            .to_str()
            .ok_or_else(|| SysError::io(OP, snapshot, Errno::EINVAL))?;
        match get(dir, &record_xattr_name(id))? {
            Some(record) => Ok(Some(record)),
            None => get(snapshot, &legacy_record_xattr_name()),
        }
    }

    fn checkpoint_records(&self, dir: &Path) -> SysResult<Vec<Vec<u8>>> {
        const OP: &str = "list the checkpoint records of";
        let d = match open_dir(OP, dir) {
            Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(Vec::new()),
            r => r?,
        };
        let target = crate::tree::xattr::Target::Fd(d.as_fd());
        let prefix = format!("{}.", super::CHECKPOINT_RECORD_XATTR);
        let mut records = Vec::new();
        for name in crate::tree::xattr::names(target).map_err(|e| SysError::io(OP, dir, e))? {
            if !name.to_bytes().starts_with(prefix.as_bytes()) {
                continue;
            }
            if let Some(value) =
                crate::tree::xattr::get(target, &name).map_err(|e| SysError::io(OP, dir, e))?
            {
                records.push(value);
            }
        }
        Ok(records)
    }

    fn delete_subvolume(&self, path: &Path) -> SysResult<()> {
        const OP: &str = "delete subvolume";
        tracing::debug!(path = %path.display(), "delete subvolume");
        let (parent, name) = split(OP, path)?;
        let dir = open_dir(OP, parent)?;
        let mut args = Box::new(BtrfsVolArgsV2::zeroed());
        copy_name(OP, path, name, &mut args.name)?;
        // SAFETY: `args` is a fully initialised `btrfs_ioctl_vol_args_v2` (flags 0: by name);
        // the fd is an open directory.
        match unsafe { ioctl::btrfs_snap_destroy_v2(dir.as_raw_fd(), &*args) } {
            Ok(_) => Ok(()),
            // Kernels before 5.7 do not know the v2 call.
            Err(Errno::ENOTTY) | Err(Errno::EOPNOTSUPP) => {
                let mut v1 = Box::new(BtrfsVolArgs::zeroed());
                copy_name(OP, path, name, &mut v1.name)?;
                // SAFETY: as above, with the v1 argument struct.
                unsafe { ioctl::btrfs_snap_destroy(dir.as_raw_fd(), &*v1) }
                    .map(drop)
                    .map_err(|e| SysError::io(OP, path, e))
            }
            Err(e) => Err(SysError::io(OP, path, e)),
        }
    }

    fn is_subvolume(&self, path: &Path) -> SysResult<bool> {
        let answer = is_subvolume_root(path)?;
        tracing::debug!(path = %path.display(), answer, "is subvolume");
        Ok(answer)
    }

    fn list_subvolumes(&self, dir: &Path) -> SysResult<Vec<String>> {
        const OP: &str = "list subvolumes in";
        // One descriptor for the directory; each entry is looked up relative to it, and the
        // filesystem type is asked once: an entry on the directory's own mount is on its
        // filesystem (two syscalls per entry were most of the cost of a large `list`).
        let d = match open_dir(OP, dir) {
            Ok(d) => d,
            Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let dir_btrfs = nix::sys::statfs::fstatfs(&d)
            .map_err(|e| SysError::io(OP, dir, e))?
            .filesystem_type()
            == BTRFS_SUPER_MAGIC;
        let dir_mnt = statx_at(&d, c"", libc::AT_EMPTY_PATH)
            .map_err(|e| SysError::io(OP, dir, e))?
            .mnt_id;
        let entries = std::fs::read_dir(dir).map_err(|e| SysError::io(OP, dir, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| SysError::io(OP, dir, e))?;
            // d_type from getdents: only directories can be subvolume roots.
            if entry.file_type().is_ok_and(|t| !t.is_dir()) {
                continue;
            }
            let name = entry.file_name();
            let Ok(cname) = std::ffi::CString::new(name.as_bytes()) else {
                continue;
            };
            let st = match statx_at(&d, &cname, libc::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(SysError::io(OP, &entry.path(), e)),
            };
            if !st.is_dir || st.ino != BTRFS_FIRST_FREE_OBJECTID {
                continue;
            }
            let btrfs = match st.mnt_id {
                Some(m) if Some(m) == dir_mnt => dir_btrfs,
                // Another mount over the entry (or no mount ID): ask its filesystem.
                _ => is_subvolume_root(&entry.path())?,
            };
            if !btrfs {
                continue;
            }
            match name.into_string() {
                Ok(name) => names.push(name),
                Err(raw) => tracing::warn!(
                    dir = %dir.display(),
                    name = %raw.to_string_lossy(),
                    "ignoring subvolume whose name is not UTF-8"
                ),
            }
        }
        names.sort();
        tracing::debug!(dir = %dir.display(), count = names.len(), "listed subvolumes");
        Ok(names)
    }

    fn list_dirs(&self, dir: &Path) -> SysResult<Vec<String>> {
        const OP: &str = "list directories in";
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SysError::io(OP, dir, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| SysError::io(OP, dir, e))?;
            // d_type from getdents (std looks the entry up only when the filesystem does not
            // say; btrfs does).
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if let Ok(name) = entry.file_name().into_string() {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    fn list_subvolumes_many(&self, dirs: &[PathBuf]) -> Vec<SysResult<Vec<String>>> {
        match list_by_root_refs(dirs) {
            Ok(lists) => lists,
            Err(e) => {
                // Not permitted (not root), not btrfs, an old kernel: one directory at a time.
                tracing::debug!(error = %e, "subvolume tree search refused; listing each directory");
                dirs.iter().map(|d| self.list_subvolumes(d)).collect()
            }
        }
    }

    fn nested_subvolumes(&self, subvol: &Path) -> SysResult<Vec<PathBuf>> {
        const OP: &str = "find nested subvolumes in";
        let dir = open_dir(OP, subvol)?;
        let root_id = ino_lookup(&dir, 0, BTRFS_FIRST_FREE_OBJECTID)
            .map_err(|e| SysError::io(OP, subvol, e))?
            .0;
        let mut found = Vec::new();
        for (dirid, name) in root_refs(&dir, root_id).map_err(|e| SysError::io(OP, subvol, e))? {
            let mut rel = if dirid == BTRFS_FIRST_FREE_OBJECTID {
                PathBuf::new()
            } else {
                ino_lookup(&dir, root_id, dirid)
                    .map(|(_, p)| p)
                    .map_err(|e| SysError::io(OP, subvol, e))?
            };
            rel.push(OsStr::from_bytes(&name));
            found.push(rel);
        }
        found.sort();
        tracing::debug!(subvol = %subvol.display(), count = found.len(), "nested subvolumes");
        Ok(found)
    }

    fn commit(&self, path: &Path) -> SysResult<()> {
        tracing::debug!(path = %path.display(), "commit");
        let file = File::open(path).map_err(|e| SysError::io("sync filesystem", path, e))?;
        btrfs_sync(&file, path)
    }

    fn sync_and_wait_cleaner(&self, path: &Path, timeout: Duration) -> SysResult<()> {
        tracing::debug!(path = %path.display(), ?timeout, "sync and wait for cleaner");
        let deadline = Instant::now() + timeout;
        let file = File::open(path).map_err(|e| SysError::io("sync filesystem", path, e))?;
        btrfs_sync(&file, path)?;
        let cleaned = match wait_orphans_gone(&file, path, deadline) {
            Ok(done) => done,
            Err(Errno::EPERM)
            | Err(Errno::EACCES)
            | Err(Errno::ENOTTY)
            | Err(Errno::EOPNOTSUPP) => {
                tracing::debug!(path = %path.display(), "tree search refused, polling free space");
                wait_free_space_stable(&file, path, deadline)?
            }
            Err(e) => return Err(SysError::io("search for deleted subvolumes", path, e)),
        };
        btrfs_sync(&file, path)?;
        if !cleaned {
            tracing::warn!(
                path = %path.display(),
                ?timeout,
                "btrfs cleaner still busy after timeout; space of deleted subvolumes may not be free yet"
            );
        }
        Ok(())
    }

    // statvfs field types are u32 on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    fn fs_usage(&self, path: &Path) -> SysResult<FsUsage> {
        let st = statvfs(path).map_err(|e| SysError::io("statvfs", path, e))?;
        let frsize = u64::from(st.fragment_size());
        let usage = FsUsage {
            total: u64::from(st.blocks()).saturating_mul(frsize),
            free: u64::from(st.blocks_free()).saturating_mul(frsize),
            avail: u64::from(st.blocks_available()).saturating_mul(frsize),
        };
        tracing::debug!(
            path = %path.display(),
            total = usage.total,
            free = usage.free,
            avail = usage.avail,
            "filesystem usage"
        );
        Ok(usage)
    }

    fn list_loops(&self) -> SysResult<Vec<LoopDevice>> {
        loopdev::list_loops()
    }

    fn mount_image(&self, image: &Path, target: &Path) -> SysResult<MountedImage> {
        tracing::debug!(image = %image.display(), target = %target.display(), "mount image");
        let meta = std::fs::metadata(image).map_err(|e| SysError::io("stat image", image, e))?;
        let (dev, ino) = (meta.dev(), meta.ino());

        for existing in loopdev::list_loops()? {
            if existing.backing_dev != dev || existing.backing_inode != ino {
                continue;
            }
            // Hold it so a concurrent umount cannot autoclear it before our mount.
            let Some(holder) = loopdev::hold_if_backed_by(&existing.device, dev, ino)? else {
                continue;
            };
            tracing::debug!(device = %existing.device.display(), "reusing attached loop device");
            mount_btrfs_device(&existing.device, target)?;
            drop(holder);
            return Ok(MountedImage {
                device: existing.device,
                direct_io: existing.direct_io,
                reused_loop: true,
            });
        }

        let backing = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(image)
            .map_err(|e| SysError::io("open image", image, e))?;
        let attached = loopdev::attach(&backing, image)?;
        drop(backing);
        match mount_btrfs_device(&attached.device, target) {
            Ok(()) => {
                drop(attached.holder);
                Ok(MountedImage {
                    device: attached.device,
                    direct_io: attached.direct_io,
                    reused_loop: false,
                })
            }
            Err(mount_err) => {
                // Autoclear would detach on close anyway; clear explicitly so that the device
                // is released even if something else opened it meanwhile.
                if let Err(e) = loopdev::clear_fd(&attached.holder, &attached.device) {
                    tracing::warn!(
                        device = %attached.device.display(),
                        error = %e,
                        "could not detach loop device after failed mount"
                    );
                }
                drop(attached.holder);
                Err(mount_err)
            }
        }
    }

    fn grow_image(&self, image: &Path, mount: &Path, to_bytes: u64) -> SysResult<()> {
        tracing::debug!(image = %image.display(), mount = %mount.display(), to_bytes, "grow image");
        let f = OpenOptions::new()
            .write(true)
            .open(image)
            .map_err(|e| SysError::io("open image", image, e))?;
        let cur = f
            .metadata()
            .map_err(|e| SysError::io("stat image", image, e))?
            .len();
        if cur < to_bytes {
            f.set_len(to_bytes)
                .map_err(|e| SysError::io("grow image", image, e))?;
            f.sync_all()
                .map_err(|e| SysError::io("fsync image", image, e))?;
        }
        let device = mountinfo::read_mountinfo()?
            .into_iter()
            .rev()
            .find(|m| m.mount_point == mount)
            .map(|m| PathBuf::from(m.source))
            .ok_or_else(|| SysError::io("grow the filesystem at", mount, Errno::ENOENT))?;
        loopdev::refresh_capacity(&device)?;
        resize_max(mount)
    }

    fn mounts(&self) -> SysResult<Vec<MountEntry>> {
        mountinfo::read_mountinfo()
    }

    fn create_image(&self, image: &Path, size: u64) -> SysResult<()> {
        tracing::debug!(image = %image.display(), size, mkfs = %self.mkfs.display(), "create image");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(image)
            .map_err(|e| SysError::io("create image file", image, e))?;
        if let Err(e) = file.set_len(size).and_then(|()| file.sync_all()) {
            drop(file);
            remove_quietly(image);
            return Err(SysError::io("size image file", image, e));
        }
        drop(file);

        let output = Command::new(&self.mkfs)
            .arg("-q")
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        let output = match output {
            Ok(o) => o,
            Err(e) => {
                remove_quietly(image);
                return Err(SysError::io("run", &self.mkfs, e));
            }
        };
        if !output.status.success() {
            remove_quietly(image);
            return Err(SysError::Command {
                command: format!("{} -q {}", self.mkfs.display(), image.display()),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }

    fn open_subvolume(&self, path: &Path) -> SysResult<SubvolumeCheck> {
        send::open_subvolume(path)
    }

    fn send_no_data(&self, parent: &OpenSubvolume, to: &OpenSubvolume) -> SysResult<Vec<u8>> {
        send::send_no_data(parent, to)
    }
}

impl LinuxSys {
    /// Unmount `target` (not used by the product, which never unmounts its storage; for
    /// tooling and the root-tier tests).
    pub fn umount(&self, target: &Path) -> SysResult<()> {
        tracing::debug!(target = %target.display(), "unmount");
        nix::mount::umount2(target, MntFlags::empty())
            .map_err(|e| SysError::io("unmount", target, e))
    }

    /// Detach a loop device (deferred by the kernel while it is mounted; for tooling and the
    /// root-tier tests).
    pub fn detach_loop(&self, device: &Path) -> SysResult<()> {
        loopdev::detach(device)
    }
}

/// Grow the (single-device) btrfs filesystem mounted at `mount` to its device's size.
fn resize_max(mount: &Path) -> SysResult<()> {
    const OP: &str = "resize filesystem to max";
    tracing::debug!(mount = %mount.display(), "resize filesystem to max");
    let dir = open_dir(OP, mount)?;
    let mut args = Box::new(BtrfsVolArgs::zeroed());
    args.name[..3].copy_from_slice(b"max");
    // SAFETY: `args` is a fully initialised, NUL-terminated `btrfs_ioctl_vol_args`; the fd
    // is an open directory.
    unsafe { ioctl::btrfs_resize(dir.as_raw_fd(), &*args) }
        .map(drop)
        .map_err(|e| SysError::io(OP, mount, e))
}

fn mount_btrfs_device(device: &Path, target: &Path) -> SysResult<()> {
    tracing::debug!(device = %device.display(), target = %target.display(), "mount btrfs");
    nix::mount::mount(
        Some(device),
        target,
        Some("btrfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| SysError::io("mount btrfs", target, e))
}

/// lstat semantics: a symlink is never a subvolume; a missing path is not one either.
fn is_subvolume_root(path: &Path) -> SysResult<bool> {
    const OP: &str = "check subvolume";
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
            return Ok(false)
        }
        Err(e) => return Err(SysError::io(OP, path, e)),
    };
    if !meta.is_dir() || meta.ino() != BTRFS_FIRST_FREE_OBJECTID {
        return Ok(false);
    }
    match statfs(path) {
        Ok(st) => Ok(st.filesystem_type() == BTRFS_SUPER_MAGIC),
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => Ok(false),
        Err(e) => Err(SysError::io(OP, path, e)),
    }
}

/// What [`list_subvolumes`](Sys::list_subvolumes) needs to know of one entry.
struct EntryStat {
    is_dir: bool,
    ino: u64,
    /// The mount it is on, when the kernel reports it.
    mnt_id: Option<u64>,
}

/// `statx(dir, name, flags)` for type, inode and mount ID (no automount).
fn statx_at(dir: &File, name: &std::ffi::CStr, flags: libc::c_int) -> Result<EntryStat, Errno> {
    // SAFETY: all-zero is a valid `statx` (plain integers).
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is an open descriptor, `name` a NUL-terminated string and `st` a writable
    // `statx` that outlives the call.
    let r = unsafe {
        libc::statx(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::AT_NO_AUTOMOUNT,
            libc::STATX_TYPE | libc::STATX_INO | libc::STATX_MNT_ID,
            &mut st,
        )
    };
    if r != 0 {
        return Err(Errno::last());
    }
    Ok(EntryStat {
        is_dir: u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFDIR,
        ino: st.stx_ino,
        mnt_id: (st.stx_mask & libc::STATX_MNT_ID != 0).then_some(st.stx_mnt_id),
    })
}

/// Every subvolume reference held by subvolume `root_id` (the filesystem of `fd`): the
/// subvolumes whose directory entry is in one of its directories, as (inode of that
/// directory, entry name), in subvolume-ID order. See [`each_root_ref`].
fn root_refs(fd: &File, root_id: u64) -> Result<Vec<(u64, Vec<u8>)>, Errno> {
    let mut found = Vec::new();
    each_root_ref(fd, root_id, &mut |dirid, name| {
        found.push((dirid, name.to_vec()))
    })?;
    Ok(found)
}

/// `f(inode of the directory, entry name)` for every subvolume reference held by subvolume
/// `root_id`, in subvolume-ID order, without collecting them (100 000 of them are megabytes
/// the caller mostly filters out). One `BTRFS_IOC_TREE_SEARCH` pass over the root tree's
/// `ROOT_REF` items of `root_id`.
fn each_root_ref(fd: &File, root_id: u64, f: &mut dyn FnMut(u64, &[u8])) -> Result<(), Errno> {
    let mut min_offset = 0u64;
    loop {
        let mut args = Box::new(BtrfsSearchArgs {
            key: BtrfsSearchKey {
                tree_id: BTRFS_ROOT_TREE_OBJECTID,
                min_objectid: root_id,
                max_objectid: root_id,
                min_type: BTRFS_ROOT_REF_KEY,
                max_type: BTRFS_ROOT_REF_KEY,
                min_offset,
                max_offset: u64::MAX,
                min_transid: 0,
                max_transid: u64::MAX,
                nr_items: 4096,
                ..BtrfsSearchKey::default()
            },
            buf: [0; BTRFS_SEARCH_ARGS_BUFSIZE],
        });
        // SAFETY: `args` is a fully initialised `btrfs_ioctl_search_args` the kernel may
        // write to; the fd is open on the filesystem.
        unsafe { ioctl::btrfs_tree_search(fd.as_raw_fd(), &mut *args) }?;
        let n = args.key.nr_items;
        if n == 0 {
            break;
        }
        let mut pos = 0usize;
        let hdr_len = std::mem::size_of::<BtrfsSearchHeader>();
        let mut last = None;
        for _ in 0..n {
            if pos + hdr_len > args.buf.len() {
                break;
            }
            // SAFETY: the kernel wrote `nr_items` (header, data) pairs into `buf`; the
            // bounds are checked above and below; read_unaligned copes with alignment.
            let hdr: BtrfsSearchHeader =
                unsafe { std::ptr::read_unaligned(args.buf[pos..].as_ptr().cast()) };
            pos += hdr_len;
            let end = pos + hdr.len as usize;
            if end > args.buf.len() {
                break;
            }
            let item = &args.buf[pos..end];
            pos = end;
            last = Some(hdr.offset);
            // struct btrfs_root_ref { __le64 dirid; __le64 sequence; __le16 name_len; } + name
            if hdr.item_type != BTRFS_ROOT_REF_KEY || item.len() < 18 {
                continue;
            }
            let dirid = u64::from_le_bytes(item[0..8].try_into().unwrap_or([0; 8]));
            let name_len = u16::from_le_bytes([item[16], item[17]]) as usize;
            if let Some(name) = item.get(18..18 + name_len) {
                f(dirid, name);
            }
        }
        match last {
            Some(off) if off < u64::MAX => min_offset = off + 1,
            _ => break,
        }
    }
    Ok(())
}

/// [`Sys::list_subvolumes_many`] from the subvolume references: each directory is opened
/// (a missing one lists nothing), identified (its inode, the subvolume holding it), and the
/// references of each subvolume involved are read once. `Err` when the filesystem refuses the
/// search (the caller falls back to listing each directory); a directory that is not on
/// btrfs or cannot be opened gets that error in its own slot.
fn list_by_root_refs(dirs: &[PathBuf]) -> Result<Vec<SysResult<Vec<String>>>, Errno> {
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    const OP: &str = "list subvolumes in";
    /// (st_dev of the holding subvolume, its ID).
    type Root = (u64, u64);
    /// A directory: its holding subvolume and its inode; `None` when it lists nothing.
    type Slot = Result<Option<(Root, u64)>, SysError>;
    // Holding subvolume → (one open directory on it, the inodes of the directories wanted).
    let mut roots: BTreeMap<Root, (File, BTreeSet<u64>)> = BTreeMap::new();
    let mut slots: Vec<Slot> = Vec::new();
    for dir in dirs {
        let file = match File::open(dir) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                slots.push(Ok(None));
                continue;
            }
            Err(e) => {
                slots.push(Err(SysError::io(OP, dir, e)));
                continue;
            }
        };
        let meta = match file.metadata() {
            Ok(m) if m.is_dir() => m,
            Ok(_) => {
                slots.push(Err(SysError::io(OP, dir, Errno::ENOTDIR)));
                continue;
            }
            Err(e) => {
                slots.push(Err(SysError::io(OP, dir, e)));
                continue;
            }
        };
        match nix::sys::statfs::fstatfs(&file) {
            Ok(st) if st.filesystem_type() == BTRFS_SUPER_MAGIC => {}
            // Not btrfs: nothing in it is a subvolume.
            Ok(_) => {
                slots.push(Ok(None));
                continue;
            }
            Err(e) => {
                slots.push(Err(SysError::io(OP, dir, e)));
                continue;
            }
        }
        let root_id = ino_lookup(&file, 0, BTRFS_FIRST_FREE_OBJECTID)?.0;
        let key = (meta.dev(), root_id);
        slots.push(Ok(Some((key, meta.ino()))));
        roots
            .entry(key)
            .or_insert_with(|| (file, BTreeSet::new()))
            .1
            .insert(meta.ino());
    }
    let mut names: HashMap<(Root, u64), Vec<String>> = HashMap::new();
    for (key, (file, wanted)) in &roots {
        each_root_ref(file, key.1, &mut |dirid, name| {
            if !wanted.contains(&dirid) {
                return;
            }
            match std::str::from_utf8(name) {
                Ok(n) => names.entry((*key, dirid)).or_default().push(n.to_string()),
                Err(_) => tracing::warn!(
                    dir_inode = dirid,
                    name = %String::from_utf8_lossy(name),
                    "ignoring subvolume whose name is not UTF-8"
                ),
            }
        })?;
    }
    // Each list is moved out for the last directory that wants it (the same directory named
    // twice gets a copy): 100 000 names are not held twice.
    let mut wanted_by: HashMap<(Root, u64), usize> = HashMap::new();
    for k in slots.iter().flatten().flatten() {
        *wanted_by.entry(*k).or_default() += 1;
    }
    Ok(slots
        .into_iter()
        .map(|slot| {
            slot.map(|found| {
                let Some(k) = found else {
                    return Vec::new();
                };
                let left = wanted_by.entry(k).or_default();
                *left = left.saturating_sub(1);
                let mut v = if *left == 0 {
                    names.remove(&k).unwrap_or_default()
                } else {
                    names.get(&k).cloned().unwrap_or_default()
                };
                v.sort();
                v
            })
        })
        .collect())
}

/// `BTRFS_IOC_INO_LOOKUP`: (tree id, path of `objectid` in `treeid` relative to its root).
fn ino_lookup(dir: &File, treeid: u64, objectid: u64) -> Result<(u64, PathBuf), Errno> {
    let mut args = Box::new(BtrfsInoLookupArgs {
        treeid,
        objectid,
        name: [0; BTRFS_INO_LOOKUP_PATH_MAX],
    });
    // SAFETY: `args` is a fully initialised `btrfs_ioctl_ino_lookup_args`; the fd is open.
    unsafe { ioctl::btrfs_ino_lookup(dir.as_raw_fd(), &mut *args) }?;
    let len = args
        .name
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(args.name.len());
    let path = PathBuf::from(OsStr::from_bytes(&args.name[..len]));
    Ok((args.treeid, path))
}

/// Split `path` into its parent directory and final name.
fn split<'a>(op: &'static str, path: &'a Path) -> SysResult<(&'a Path, &'a OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => Ok((parent, name)),
        _ => Err(SysError::io(op, path, Errno::EINVAL)),
    }
}

/// Copy `name` into a kernel name buffer, leaving room for the terminating NUL.
fn copy_name(op: &'static str, path: &Path, name: &OsStr, buf: &mut [u8]) -> SysResult<()> {
    let bytes = name.as_bytes();
    if bytes.len() >= buf.len() || bytes.len() > 255 {
        return Err(SysError::io(op, path, Errno::ENAMETOOLONG));
    }
    if bytes.contains(&0) {
        return Err(SysError::io(op, path, Errno::EINVAL));
    }
    buf[..bytes.len()].copy_from_slice(bytes);
    buf[bytes.len()..].fill(0);
    Ok(())
}

/// The xattr of snapshot `id`'s record on its directory.
fn record_xattr_name(id: &str) -> std::ffi::CString {
    std::ffi::CString::new(super::checkpoint_record_name(id)).expect("a constant and hex digits")
}

/// The xattr earlier builds put the record in, on the workspace root.
fn legacy_record_xattr_name() -> std::ffi::CString {
    std::ffi::CString::new(super::CHECKPOINT_RECORD_XATTR).expect("no NUL in a constant")
}

fn open_dir(op: &'static str, path: &Path) -> SysResult<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| SysError::io(op, path, e))
}

fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "could not remove partial image file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn find_program_searches_path_then_fallbacks() {
        let dir = TempDir::new().expect("tempdir");
        let prog = dir.path().join("mkfs.btrfs");
        std::fs::write(&prog, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let found =
            find_program("mkfs.btrfs", Some(dir.path().as_os_str().to_owned())).expect("found");
        assert_eq!(found, prog);

        // Not executable: skipped.
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = find_program(
            "no-such-program-ws-ckpt",
            Some(dir.path().as_os_str().to_owned()),
        )
        .expect_err("missing");
        match err {
            SysError::ProgramMissing { program, searched } => {
                assert_eq!(program, "no-such-program-ws-ckpt");
                assert!(
                    searched.starts_with(&dir.path().display().to_string()),
                    "{searched}"
                );
                for d in FALLBACK_DIRS {
                    assert!(searched.contains(d), "{searched}");
                }
            }
            other => panic!("unexpected {other:?}"),
        }
        // Relative PATH entries are ignored.
        let err = find_program("mkfs.btrfs-nope", Some(OsString::from("relative:bin")))
            .expect_err("missing");
        assert!(!err.to_string().contains("relative"), "{err}");
    }

    #[test]
    fn names_are_validated_before_any_ioctl() {
        let mut buf = [0u8; 16];
        assert!(copy_name("t", Path::new("/x/abc"), OsStr::new("abc"), &mut buf).is_ok());
        assert_eq!(&buf[..4], b"abc\0");
        let long = "a".repeat(16);
        let err = copy_name("t", Path::new("/x"), OsStr::new(&long), &mut buf).expect_err("long");
        assert_eq!(err.errno(), Some(libc::ENAMETOOLONG));
        let mut big = [0u8; 4040];
        let err = copy_name("t", Path::new("/x"), OsStr::new(&"b".repeat(256)), &mut big)
            .expect_err("over NAME_MAX");
        assert_eq!(err.errno(), Some(libc::ENAMETOOLONG));
        assert_eq!(
            split("t", Path::new("/")).expect_err("root").errno(),
            Some(libc::EINVAL)
        );
        assert_eq!(
            split("t", Path::new("rel")).expect_err("bare").errno(),
            Some(libc::EINVAL)
        );
        let (p, n) = split("t", Path::new("/a/b")).expect("split");
        assert_eq!((p, n), (Path::new("/a"), OsStr::new("b")));
    }

    #[test]
    fn failing_mkfs_reports_command_and_removes_the_file() {
        let dir = TempDir::new().expect("tempdir");
        let mkfs = dir.path().join("fake-mkfs");
        std::fs::write(&mkfs, "#!/bin/sh\necho \"bad things on $2\" >&2\nexit 3\n").expect("write");
        std::fs::set_permissions(&mkfs, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let sys = LinuxSys::with_mkfs(mkfs.clone());
        let image = dir.path().join("img");
        let err = sys.create_image(&image, 8 * MIB).expect_err("mkfs fails");
        match &err {
            SysError::Command {
                command,
                status,
                stderr,
            } => {
                assert_eq!(
                    command,
                    &format!("{} -q {}", mkfs.display(), image.display())
                );
                assert!(status.contains('3'), "{status}");
                assert_eq!(stderr, &format!("bad things on {}", image.display()));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!image.exists(), "partial image left behind");

        // An existing file is never overwritten.
        std::fs::write(&image, b"keep").expect("write");
        let err = sys.create_image(&image, MIB).expect_err("exists");
        assert_eq!(err.errno(), Some(libc::EEXIST));
        assert_eq!(std::fs::read(&image).expect("read"), b"keep");
    }

    #[test]
    fn non_btrfs_paths_are_not_subvolumes() {
        let dir = TempDir::new().expect("tempdir");
        let sys = LinuxSys::with_mkfs(PathBuf::from("/nonexistent"));
        assert!(!sys
            .is_subvolume(&dir.path().join("missing"))
            .expect("missing"));
        assert!(!sys
            .is_subvolume(&dir.path().join("missing/deeper"))
            .expect("missing parent"));
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        assert!(!sys
            .is_subvolume(&file.join("under-a-file"))
            .expect("enotdir"));
        assert_eq!(
            sys.list_subvolumes(&dir.path().join("nope")).expect("list"),
            Vec::<String>::new()
        );
        let usage = sys.fs_usage(dir.path()).expect("usage");
        assert!(usage.total > 0 && usage.free <= usage.total && usage.avail <= usage.free);
    }
}
