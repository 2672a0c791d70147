//! Loop devices through `/dev/loop-control`, `/dev/loopN` ioctls and `/sys/block`: list the
//! attached ones, attach an image (autoclear, direct I/O when the backing filesystem allows
//! it), hold a reference, detach, refresh capacity.
//!
//! This module must not mount anything or decide which device or image to use; it must never
//! detach a device it was not explicitly asked to.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::ioctl::{self, LoopConfig, LoopInfo64, LO_FLAGS_AUTOCLEAR, LO_FLAGS_DIRECT_IO};
use super::{LoopDevice, SysError, SysResult};

/// Loop control device.
const LOOP_CONTROL: &str = "/dev/loop-control";
/// Where block devices are listed.
const SYS_BLOCK: &str = "/sys/block";
/// How often a free device may be lost to a concurrent attach before giving up.
const ATTACH_ATTEMPTS: usize = 8;
/// How long to wait for devtmpfs to create a freshly allocated `/dev/loopN`.
const NODE_WAIT: Duration = Duration::from_secs(2);

/// A loop device this process just attached, still held open.
#[derive(Debug)]
pub(super) struct Attached {
    /// `/dev/loopN`.
    pub device: PathBuf,
    /// Read-only descriptor keeping the device alive (autoclear detaches on last close).
    pub holder: File,
    /// Whether the kernel accepted direct I/O.
    pub direct_io: bool,
}

/// `/dev/loopN` for index `n`.
pub(super) fn device_path(n: u32) -> PathBuf {
    PathBuf::from(format!("/dev/loop{n}"))
}

/// Every attached loop device. Devices that are detached while scanning are skipped.
pub(super) fn list_loops() -> SysResult<Vec<LoopDevice>> {
    let sys_block = Path::new(SYS_BLOCK);
    let entries = std::fs::read_dir(sys_block)
        .map_err(|e| SysError::io("list loop devices", sys_block, e))?;
    let mut found: Vec<(u32, LoopDevice)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SysError::io("list loop devices", sys_block, e))?;
        let Some(index) = loop_index(&entry.file_name()) else {
            continue;
        };
        let backing_path = entry.path().join("loop/backing_file");
        let backing = match std::fs::read(&backing_path) {
            Ok(b) => b,
            // Not bound (no `loop/` attributes) or gone meanwhile.
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(SysError::io("read loop backing file", &backing_path, e)),
        };
        let backing = backing.strip_suffix(b"\n").unwrap_or(&backing);
        let device = device_path(index);
        let info = match status_of_path(&device) {
            Ok(info) => info,
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(SysError::io("read loop status", &device, e)),
        };
        found.push((
            index,
            LoopDevice {
                device,
                backing_file: PathBuf::from(OsStr::from_bytes(backing)),
                backing_dev: info.lo_device,
                backing_inode: info.lo_inode,
                direct_io: info.lo_flags & LO_FLAGS_DIRECT_IO != 0,
                autoclear: info.lo_flags & LO_FLAGS_AUTOCLEAR != 0,
            },
        ));
    }
    found.sort_by_key(|(n, _)| *n);
    tracing::debug!(count = found.len(), "listed loop devices");
    Ok(found.into_iter().map(|(_, d)| d).collect())
}

/// Open `device` read-only and return it if it is still backed by inode `ino` on `dev`
/// (`None` when it was detached or rebound meanwhile). The returned file holds a reference so
/// autoclear cannot detach it until it is closed.
pub(super) fn hold_if_backed_by(device: &Path, dev: u64, ino: u64) -> SysResult<Option<File>> {
    let file = match open_device(device, false) {
        Ok(f) => f,
        Err(e) if vanished(&e) => return Ok(None),
        Err(e) => return Err(SysError::io("open loop device", device, e)),
    };
    match status(&file) {
        Ok(info) if info.lo_device == dev && info.lo_inode == ino => Ok(Some(file)),
        Ok(_) | Err(Errno::ENXIO) | Err(Errno::ENODEV) => Ok(None),
        Err(e) => Err(SysError::io("read loop status", device, e)),
    }
}

/// Attach `image` (opened read-write as `backing`) to a free loop device with autoclear and
/// direct I/O, falling back to buffered I/O when the kernel refuses direct I/O with `EINVAL`.
/// A device lost to a concurrent attach (`EBUSY`) is replaced by another free one, a bounded
/// number of times.
pub(super) fn attach(backing: &File, image: &Path) -> SysResult<Attached> {
    let control_path = Path::new(LOOP_CONTROL);
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(control_path)
        .map_err(|e| SysError::io("open loop control", control_path, e))?;
    let mut last_busy = None;
    for _ in 0..ATTACH_ATTEMPTS {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument; the fd is a live loop-control descriptor.
        let index = unsafe { ioctl::loop_ctl_get_free(control.as_raw_fd()) }
            .map_err(|e| SysError::io("find free loop device", control_path, e))?;
        let index = u32::try_from(index).map_err(|_| {
            SysError::Other(format!(
                "find free loop device {}: kernel returned index {index}",
                control_path.display()
            ))
        })?;
        let device = device_path(index);
        let dev_file = open_new_node(&device)?;
        let mut direct_io = true;
        let configured = loop {
            match configure(&dev_file, backing, image, direct_io) {
                Err(Errno::EINVAL) if direct_io => {
                    tracing::debug!(
                        device = %device.display(),
                        image = %image.display(),
                        "direct I/O refused, attaching buffered"
                    );
                    direct_io = false;
                }
                other => break other,
            }
        };
        match configured {
            Ok(()) => {}
            Err(Errno::EBUSY) => {
                tracing::debug!(device = %device.display(), "loop device taken meanwhile, retrying");
                last_busy = Some(device);
                continue;
            }
            Err(e) => return Err(SysError::io("attach loop device", &device, e)),
        }
        // The kernel may also silently drop direct I/O: report what it actually did.
        let info = status(&dev_file).map_err(|e| SysError::io("read loop status", &device, e))?;
        // Hold the device read-only and let the writable descriptor go, so that a mount does
        // not see a writer on its block device.
        let holder = open_device(&device, false)
            .map_err(|e| SysError::io("open loop device", &device, e))?;
        drop(dev_file);
        let direct_io = info.lo_flags & LO_FLAGS_DIRECT_IO != 0;
        tracing::debug!(
            device = %device.display(),
            image = %image.display(),
            direct_io,
            "attached loop device"
        );
        return Ok(Attached {
            device,
            holder,
            direct_io,
        });
    }
    let device = last_busy.unwrap_or_else(|| PathBuf::from(LOOP_CONTROL));
    Err(SysError::io(
        "attach loop device (every free device was taken concurrently)",
        &device,
        Errno::EBUSY,
    ))
}

/// `LOOP_CLR_FD` through an already open descriptor (detaches once the last opener closes).
pub(super) fn clear_fd(file: &File, device: &Path) -> SysResult<()> {
    // SAFETY: LOOP_CLR_FD takes no argument; the fd is an open loop device.
    unsafe { ioctl::loop_clr_fd(file.as_raw_fd()) }
        .map(drop)
        .map_err(|e| SysError::io("detach loop device", device, e))
}

/// Detach `device` (`LOOP_CLR_FD`). A device still in use (mounted) is detached by the kernel
/// as soon as its last user goes away.
pub(super) fn detach(device: &Path) -> SysResult<()> {
    tracing::debug!(device = %device.display(), "detach loop device");
    let file =
        open_device(device, false).map_err(|e| SysError::io("detach loop device", device, e))?;
    clear_fd(&file, device)
}

/// `LOOP_SET_CAPACITY`: re-read the backing file's size.
pub(super) fn refresh_capacity(device: &Path) -> SysResult<()> {
    tracing::debug!(device = %device.display(), "refresh loop capacity");
    let file =
        open_device(device, false).map_err(|e| SysError::io("refresh loop capacity", device, e))?;
    // SAFETY: LOOP_SET_CAPACITY takes no argument; the fd is an open loop device.
    unsafe { ioctl::loop_set_capacity(file.as_raw_fd()) }
        .map(drop)
        .map_err(|e| SysError::io("refresh loop capacity", device, e))
}

fn configure(dev_file: &File, backing: &File, image: &Path, direct_io: bool) -> Result<(), Errno> {
    let fd = u32::try_from(backing.as_raw_fd()).map_err(|_| Errno::EBADF)?;
    let mut info = LoopInfo64::zeroed();
    info.lo_flags = LO_FLAGS_AUTOCLEAR | if direct_io { LO_FLAGS_DIRECT_IO } else { 0 };
    // Informational only (the kernel reports the real path in sysfs); keep the NUL terminator.
    let name = image.as_os_str().as_bytes();
    let n = name.len().min(info.lo_file_name.len() - 1);
    info.lo_file_name[..n].copy_from_slice(&name[..n]);
    let config = LoopConfig {
        fd,
        block_size: 0,
        info,
        reserved: [0; 8],
    };
    // SAFETY: `config` is a fully initialised `struct loop_config` that outlives the call; the
    // fd is an open loop device.
    unsafe { ioctl::loop_configure(dev_file.as_raw_fd(), &config) }.map(drop)
}

/// Open a device node that LOOP_CTL_GET_FREE may have just created (devtmpfs adds the node
/// asynchronously).
fn open_new_node(device: &Path) -> SysResult<File> {
    let start = Instant::now();
    loop {
        match open_device(device, true) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && start.elapsed() < NODE_WAIT => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(SysError::io("open loop device", device, e)),
        }
    }
}

fn open_device(device: &Path, write: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_CLOEXEC)
        .open(device)
}

fn status(file: &File) -> Result<LoopInfo64, Errno> {
    let mut info = LoopInfo64::zeroed();
    // SAFETY: `info` is a writable `struct loop_info64`; the fd is an open block device.
    unsafe { ioctl::loop_get_status64(file.as_raw_fd(), &mut info) }?;
    Ok(info)
}

fn status_of_path(device: &Path) -> std::io::Result<LoopInfo64> {
    let file = open_device(device, false)?;
    status(&file).map_err(std::io::Error::from)
}

/// "loop12" → 12; anything else (including "loop-control") → None.
fn loop_index(name: &OsStr) -> Option<u32> {
    let digits = name.as_bytes().strip_prefix(b"loop")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Errors meaning "this device is gone or unbound", which a scan skips.
fn vanished(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENXIO) | Some(libc::ENODEV)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_index_accepts_only_numbered_loops() {
        assert_eq!(loop_index(OsStr::new("loop0")), Some(0));
        assert_eq!(loop_index(OsStr::new("loop17")), Some(17));
        assert_eq!(loop_index(OsStr::new("loop")), None);
        assert_eq!(loop_index(OsStr::new("loop-control")), None);
        assert_eq!(loop_index(OsStr::new("loop1p2")), None);
        assert_eq!(loop_index(OsStr::new("nvme0n1")), None);
    }

    #[test]
    fn vanished_covers_detached_devices_only() {
        assert!(vanished(&std::io::Error::from_raw_os_error(libc::ENXIO)));
        assert!(vanished(&std::io::Error::from_raw_os_error(libc::ENOENT)));
        assert!(!vanished(&std::io::Error::from_raw_os_error(libc::EACCES)));
    }
}
