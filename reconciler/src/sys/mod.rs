//! The narrow system boundary: every btrfs, loop-device and mount side effect and every btrfs
//! ioctl goes through [`Sys`] (the send stream of `diff` included). The Linux implementation
//! ([`linux::LinuxSys`]) is thin and makes no decisions; the in-memory fake
//! ([`fake::FakeSys`]) backs the executor and operation unit tests.
//!
//! This module must not decide anything (which backend, what to create): that is the planner's.
//! Plain file operations on workspace trees (rename, symlink, copy) are not here; they are done
//! with `std::fs` by the executor, which works identically over the fake because the fake keeps
//! "subvolumes" as real directories under a temporary root.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod cleaner;
pub mod fake;
mod ioctl;
pub mod linux;
mod loopdev;
pub mod mountinfo;
mod send;

/// `poll(2)` on `fds` for up to `timeout_ms` (`-1`: no limit): how many have events in their
/// `revents`. An interrupted wait is an error of kind `Interrupted`.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> std::io::Result<usize> {
    // SAFETY: `fds` is a valid array of `fds.len()` pollfds, borrowed exclusively for the
    // duration of the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

/// Error from a system call or an external program, always naming what it acted on.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// A system call failed on a path.
    #[error("{op} {path}: {source}")]
    Io {
        /// Operation (e.g. "create subvolume").
        op: &'static str,
        /// The path it acted on.
        path: PathBuf,
        /// Underlying OS error.
        #[source]
        source: std::io::Error,
    },
    /// An external program failed.
    #[error("`{command}` exited with {status}: {stderr}")]
    Command {
        /// Full command line.
        command: String,
        /// Exit status as text.
        status: String,
        /// Captured standard error (trimmed).
        stderr: String,
    },
    /// A required external program is not installed.
    #[error("{program} not found (looked in {searched}); install btrfs-progs")]
    ProgramMissing {
        /// Program name.
        program: &'static str,
        /// Directories searched, comma separated.
        searched: String,
    },
    /// Anything else, with a full message.
    #[error("{0}")]
    Other(String),
}

impl SysError {
    /// Build an [`SysError::Io`] from an errno-style error.
    pub fn io(op: &'static str, path: &Path, source: impl Into<std::io::Error>) -> Self {
        SysError::Io {
            op,
            path: path.to_path_buf(),
            source: source.into(),
        }
    }

    /// The raw OS error number, when this is an I/O error.
    pub fn errno(&self) -> Option<i32> {
        match self {
            SysError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Result alias for this module.
pub type SysResult<T> = Result<T, SysError>;

/// One line of `/proc/self/mountinfo`, decoded (octal escapes resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount ID (field 1).
    pub mount_id: u32,
    /// `major:minor` of the filesystem (field 3).
    pub dev: String,
    /// Root of the mount within the filesystem (field 4), e.g. `/` or `/@home`.
    pub root: PathBuf,
    /// Mount point (field 5).
    pub mount_point: PathBuf,
    /// Per-mount options (field 6), e.g. `rw,relatime`.
    pub mount_options: String,
    /// Filesystem type, e.g. `btrfs`.
    pub fs_type: String,
    /// Mount source, e.g. `/dev/loop3`.
    pub source: String,
    /// Super options, e.g. `rw,space_cache=v2,subvolid=5,subvol=/`.
    pub super_options: String,
}

impl MountEntry {
    /// True when mounted read-write.
    pub fn is_writable(&self) -> bool {
        self.mount_options.split(',').any(|o| o == "rw")
    }
}

/// An attached loop device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub device: PathBuf,
    /// Backing file path as the kernel reports it (may end in ` (deleted)`).
    pub backing_file: PathBuf,
    /// Backing file's device number (st_dev).
    pub backing_dev: u64,
    /// Backing file's inode number.
    pub backing_inode: u64,
    /// Whether direct I/O is on.
    pub direct_io: bool,
    /// Whether autoclear is set.
    pub autoclear: bool,
}

/// Result of mounting an image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedImage {
    /// Loop device used.
    pub device: PathBuf,
    /// True when direct I/O could be enabled.
    pub direct_io: bool,
    /// True when an already attached loop device of this image was reused.
    pub reused_loop: bool,
}

/// Filesystem usage from `statvfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsUsage {
    /// Total size in bytes.
    pub total: u64,
    /// Free bytes (including reserved).
    pub free: u64,
    /// Bytes available to unprivileged users.
    pub avail: u64,
}

impl FsUsage {
    /// Used fraction in percent (0-100).
    pub fn used_percent(&self) -> u32 {
        if self.total == 0 {
            return 0;
        }
        (((self.total - self.free.min(self.total)) as u128 * 100) / self.total as u128) as u32
    }
}

/// A subvolume root opened for the send ioctls, with what they need to know about it.
#[derive(Debug)]
pub struct OpenSubvolume {
    /// The path it was opened from (for messages).
    pub path: PathBuf,
    /// Directory handle on the subvolume root (the send stream is read from it).
    pub file: File,
    /// Subvolume (tree) id.
    pub tree_id: u64,
    /// UUID of the filesystem holding it.
    pub fsid: [u8; 16],
    /// The subvolume is read-only (only those can be sent).
    pub readonly: bool,
}

/// What [`Sys::open_subvolume`] found at a path.
#[derive(Debug)]
pub enum SubvolumeCheck {
    /// The path is not on btrfs.
    NotBtrfs,
    /// A directory inside a subvolume, not a subvolume root.
    NotSubvolumeRoot,
    /// A subvolume root, opened.
    Subvolume(OpenSubvolume),
}

/// The xattr a checkpoint's record is kept in until its index line is durable
/// ([`Sys::set_checkpoint_record`]): a snapshot whose index line was lost in a power cut is
/// adopted with its message, metadata and pin. On the workspace's snapshot directory the
/// name is followed by `.` and a digest of the snapshot ID ([`checkpoint_record_name`]);
/// earlier builds put it, without a suffix, on the workspace root, whose snapshots carry
/// it (copies and verifications of trees leave that one out, and so does `diff`).
pub const CHECKPOINT_RECORD_XATTR: &str = crate::tree::CHECKPOINT_RECORD_XATTR;

/// The xattr name of the record of snapshot `id` on its snapshot directory:
/// [`CHECKPOINT_RECORD_XATTR`], `.`, and the first 16 bytes of SHA-256 of the ID in hex (an ID
/// may be 255 bytes, longer than an xattr name may be; the record itself names its ID).
pub fn checkpoint_record_name(id: &str) -> String {
    format!(
        "{CHECKPOINT_RECORD_XATTR}.{}",
        crate::ids::sha256_hex(id.as_bytes(), 16)
    )
}

/// Every side effect on btrfs, loop devices and mounts.
///
/// Paths are absolute. Implementations do exactly what the method says and nothing else.
pub trait Sys: Send + Sync {
    /// Create an empty subvolume at `path` (parent must exist, `path` must not).
    fn create_subvolume(&self, path: &Path) -> SysResult<()>;
    /// Snapshot subvolume `source` to `dest` (must not exist), read-only if asked.
    fn snapshot(&self, source: &Path, dest: &Path, readonly: bool) -> SysResult<()>;
    /// Put `record`, the record of the snapshot `id` about to be created in directory `dir`,
    /// on `dir` (xattr [`checkpoint_record_name`]: a `trusted.*` name, invisible to and
    /// unchangeable by unprivileged users). Set before the snapshot ioctl, it is committed in
    /// the same btrfs transaction as the snapshot or an earlier one, never after: a snapshot
    /// that survives a power cut finds its record. The snapshot's source is not touched, so
    /// its transaction writes nothing more than a plain snapshot's (issue 9).
    fn set_checkpoint_record(&self, dir: &Path, id: &str, record: &[u8]) -> SysResult<()>;
    /// Remove the record of snapshot `id` from directory `dir` (once its index line is
    /// durable). An absent record is not an error.
    fn remove_checkpoint_record(&self, dir: &Path, id: &str) -> SysResult<()>;
    /// The record of the snapshot at `snapshot`: the one its directory holds for its name,
    /// else the one its root carries (put there by earlier builds; it may be inherited
    /// from an earlier checkpoint, and names that one's ID), if any.
    fn checkpoint_record(&self, snapshot: &Path) -> SysResult<Option<Vec<u8>>>;
    /// Every checkpoint record on directory `dir` (the values of its
    /// [`checkpoint_record_name`] xattrs), whatever snapshot they are for. A missing `dir`
    /// holds none.
    fn checkpoint_records(&self, dir: &Path) -> SysResult<Vec<Vec<u8>>>;
    /// Delete the subvolume at `path` (it may be read-only; no recursion into nested ones).
    fn delete_subvolume(&self, path: &Path) -> SysResult<()>;
    /// True when `path` exists and is the root of a subvolume.
    fn is_subvolume(&self, path: &Path) -> SysResult<bool>;
    /// Names of the direct entries of `dir` that are subvolume roots (sorted). A missing `dir`
    /// is an empty list.
    fn list_subvolumes(&self, dir: &Path) -> SysResult<Vec<String>>;
    /// Names of the direct entries of `dir` that are directories, from the directory listing
    /// alone (no lookup per entry: a `list` of 10 000 snapshots asks the kernel once). A
    /// subvolume root is one; for a directory only ws-ckpt writes (a snapshot directory)
    /// that is what [`Sys::list_subvolumes`] would say. A missing `dir` is an empty list.
    fn list_dirs(&self, dir: &Path) -> SysResult<Vec<String>> {
        self.list_subvolumes(dir)
    }

    /// [`Sys::list_subvolumes`] of each of `dirs`, in the same order. An implementation may
    /// answer them all from one pass over the filesystem's subvolume references (a daemon
    /// start lists every workspace's snapshot directory: 100 000 entries at 100 × 1 000).
    fn list_subvolumes_many(&self, dirs: &[PathBuf]) -> Vec<SysResult<Vec<String>>> {
        dirs.iter().map(|d| self.list_subvolumes(d)).collect()
    }
    /// Subvolumes directly nested inside the subvolume `subvol` (anywhere in its tree), as
    /// paths relative to `subvol`. Snapshots of `subvol` do not include their contents.
    fn nested_subvolumes(&self, subvol: &Path) -> SysResult<Vec<PathBuf>>;
    /// Subvolume (tree) id of the subvolume root at `path`; `None` when it is not one.
    fn subvolume_id(&self, path: &Path) -> SysResult<Option<u64>> {
        Ok(match self.open_subvolume(path)? {
            SubvolumeCheck::Subvolume(o) => Some(o.tree_id),
            _ => None,
        })
    }
    /// Commit the filesystem containing `path` (`BTRFS_IOC_SYNC`): what was done to it, the
    /// deletion of subvolumes included, is durable when this returns.
    fn commit(&self, path: &Path) -> SysResult<()>;
    /// Commit the filesystem containing `path` and wait (at most `timeout`) until deleted
    /// subvolumes have been cleaned so their space is free again.
    fn sync_and_wait_cleaner(&self, path: &Path, timeout: Duration) -> SysResult<()>;
    /// statvfs of the filesystem containing `path`.
    fn fs_usage(&self, path: &Path) -> SysResult<FsUsage>;
    /// All attached loop devices.
    fn list_loops(&self) -> SysResult<Vec<LoopDevice>>;
    /// Mount the btrfs image file `image` at `target`: reuse an attached loop device whose
    /// backing inode is the image's, else attach a new one with autoclear and direct I/O
    /// (buffered when direct I/O is refused), then mount it.
    fn mount_image(&self, image: &Path, target: &Path) -> SysResult<MountedImage>;
    /// Grow the image file `image` to `to_bytes` (never shrinking it), make the loop device
    /// mounted at `mount` see the new size, and grow the (single-device) btrfs filesystem
    /// mounted there to fill it.
    fn grow_image(&self, image: &Path, mount: &Path, to_bytes: u64) -> SysResult<()>;
    /// Parsed `/proc/self/mountinfo`.
    fn mounts(&self) -> SysResult<Vec<MountEntry>>;
    /// Create a sparse file of `size` bytes at `image` and format it with `mkfs.btrfs`.
    fn create_image(&self, image: &Path, size: u64) -> SysResult<()>;
    /// Open `path` for the send ioctls and say what it is: not on btrfs, not a subvolume
    /// root, or a subvolume root (with its tree id, filesystem id and read-only flag).
    fn open_subvolume(&self, path: &Path) -> SysResult<SubvolumeCheck>;
    /// The incremental send stream of `to` against `parent` (both read-only, of one
    /// filesystem), without file data, protocol version 1.
    fn send_no_data(&self, parent: &OpenSubvolume, to: &OpenSubvolume) -> SysResult<Vec<u8>>;

    /// Delete the subvolume at `path` when there is one; `Ok(false)` when there was none.
    fn delete_subvolume_if_present(&self, path: &Path) -> SysResult<bool> {
        if self.is_subvolume(path)? {
            self.delete_subvolume(path)?;
            Ok(true)
        } else {
            Ok(false)
        }
    }
}

impl From<SysError> for crate::error::Error {
    fn from(e: SysError) -> Self {
        let hint = matches!(e, SysError::ProgramMissing { .. }).then(|| {
            "install btrfs-progs (apt-get install btrfs-progs / dnf install btrfs-progs)"
                .to_string()
        });
        crate::error::Error {
            code: crate::error::ErrorCode::Io,
            message: e.to_string(),
            hint,
        }
    }
}
