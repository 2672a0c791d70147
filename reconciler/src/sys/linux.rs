//! The real [`Sys`]: btrfs ioctls, loop devices, mount(2) and `statvfs`, one thin call per
//! trait method. The only subprocess is `mkfs.btrfs` (located once by [`LinuxSys::new`]).
//!
//! This module must not decide anything (what to create, reuse or delete, retries beyond the
//! kernel races it papers over) and must never run the `btrfs` program.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
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
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SysError::io(OP, dir, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| SysError::io(OP, dir, e))?;
            let path = entry.path();
            if !is_subvolume_root(&path)? {
                continue;
            }
            match entry.file_name().into_string() {
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

    fn nested_subvolumes(&self, subvol: &Path) -> SysResult<Vec<PathBuf>> {
        const OP: &str = "find nested subvolumes in";
        let dir = open_dir(OP, subvol)?;
        let root_id = ino_lookup(&dir, 0, BTRFS_FIRST_FREE_OBJECTID)
            .map_err(|e| SysError::io(OP, subvol, e))?
            .0;
        let mut found = Vec::new();
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
                    nr_items: 256,
                    ..BtrfsSearchKey::default()
                },
                buf: [0; BTRFS_SEARCH_ARGS_BUFSIZE],
            });
            // SAFETY: `args` is a fully initialised `btrfs_ioctl_search_args` the kernel may
            // write to; the fd is open on the filesystem.
            unsafe { ioctl::btrfs_tree_search(dir.as_raw_fd(), &mut *args) }
                .map_err(|e| SysError::io(OP, subvol, e))?;
            let n = args.key.nr_items;
            if n == 0 {
                break;
            }
            let mut pos = 0usize;
            let hdr_len = std::mem::size_of::<BtrfsSearchHeader>();
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
                min_offset = hdr.offset.saturating_add(1);
                // struct btrfs_root_ref { __le64 dirid; __le64 sequence; __le16 name_len; } + name
                if hdr.item_type != BTRFS_ROOT_REF_KEY || item.len() < 18 {
                    continue;
                }
                let dirid = u64::from_le_bytes(item[0..8].try_into().unwrap_or([0; 8]));
                let name_len = u16::from_le_bytes([item[16], item[17]]) as usize;
                let Some(name) = item.get(18..18 + name_len) else {
                    continue;
                };
                let mut rel = if dirid == BTRFS_FIRST_FREE_OBJECTID {
                    PathBuf::new()
                } else {
                    ino_lookup(&dir, root_id, dirid)
                        .map(|(_, p)| p)
                        .map_err(|e| SysError::io(OP, subvol, e))?
                };
                rel.push(OsStr::from_bytes(name));
                found.push(rel);
            }
            if min_offset == 0 {
                break;
            }
        }
        found.sort();
        tracing::debug!(subvol = %subvol.display(), count = found.len(), "nested subvolumes");
        Ok(found)
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
    use crate::sys::cleaner::{orphan_items, wait_free_space_stable, wait_orphans_gone};
    use std::io::Write;
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

    // ---- real btrfs on loop devices (root) ----

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// The read-only flag of the subvolume root at `path` (EINVAL: not a subvolume root).
    fn is_readonly(sys: &LinuxSys, path: &Path) -> SysResult<bool> {
        match sys.open_subvolume(path)? {
            SubvolumeCheck::Subvolume(s) => Ok(s.readonly),
            _ => Err(SysError::io("read subvolume flags", path, Errno::EINVAL)),
        }
    }

    /// A temporary directory whose mounts and loop devices are torn down on drop, even when
    /// the test panics.
    struct Fixture {
        dir: TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                dir: TempDir::new().expect("tempdir"),
            }
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let root = self.dir.path().to_path_buf();
            let mut ours: Vec<PathBuf> = mountinfo::read_mountinfo()
                .unwrap_or_default()
                .into_iter()
                .map(|m| m.mount_point)
                .filter(|p| p.starts_with(&root))
                .collect();
            ours.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for p in ours {
                if nix::mount::umount2(&p, MntFlags::empty()).is_err() {
                    let _ = nix::mount::umount2(&p, MntFlags::MNT_DETACH);
                }
            }
            for l in loopdev::list_loops().unwrap_or_default() {
                if l.backing_file.starts_with(&root) {
                    let _ = loopdev::detach(&l.device);
                }
            }
        }
    }

    fn loop_of(image: &Path) -> Option<LoopDevice> {
        let meta = std::fs::metadata(image).expect("stat image");
        loopdev::list_loops()
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
    fn real_btrfs_lifecycle() {
        if !is_root() {
            eprintln!("SKIPPED (needs root): linux::tests::real_btrfs_lifecycle");
            return;
        }
        let fx = Fixture::new();
        let sys = LinuxSys::new().expect("mkfs.btrfs installed");
        let image = fx.path().join("btrfs.img");
        let mnt = fx.path().join("mnt");
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
        let host_fs = statfs(fx.path()).expect("statfs").filesystem_type();
        if host_fs == nix::sys::statfs::EXT4_SUPER_MAGIC
            || host_fs == nix::sys::statfs::XFS_SUPER_MAGIC
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
        let settled =
            wait_free_space_stable(&mnt_dir, &mnt, Instant::now() + Duration::from_secs(10))
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
        let mnt2 = fx.path().join("mnt2");
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
    fn real_failed_mount_leaves_no_loop() {
        if !is_root() {
            eprintln!("SKIPPED (needs root): linux::tests::real_failed_mount_leaves_no_loop");
            return;
        }
        let fx = Fixture::new();
        let sys = LinuxSys::new().expect("mkfs.btrfs installed");
        let image = fx.path().join("blank.img");
        let mnt = fx.path().join("mnt");
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
        assert!(sys.mount_image(&fx.path().join("none.img"), &mnt).is_err());
    }
}
