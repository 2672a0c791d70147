//! Descriptor primitives of the tree engine: opening entries relative to a parent descriptor
//! without ever following a symlink or crossing a mount, `statx` with the mount id, the
//! `(dev, ino)` identity of an entry, directory listing by `getdents64`, and the
//! `/proc/self/fd/N` path of a descriptor (the only way to set xattrs, modes and hard links on an
//! `O_PATH` descriptor of a symlink or special file on every kernel we support).
//!
//! What it must not do: resolve a multi-component path inside a tree except through `openat2`
//! with `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS|RESOLVE_NO_XDEV`, open a
//! descriptor without `O_CLOEXEC`, or open a non-regular file for reading (device nodes are only
//! ever opened with `O_PATH`).

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::error::{Op, TreeError};

/// `openat2` resolution flags for every lookup inside a tree.
const RESOLVE_TREE: u64 = libc::RESOLVE_BENEATH
    | libc::RESOLVE_NO_SYMLINKS
    | libc::RESOLVE_NO_MAGICLINKS
    | libc::RESOLVE_NO_XDEV;

/// The identity of a filesystem object: device and inode number as `stat` reports them. Two
/// live objects never share an identity; it is what ws-ckpt records and compares before an
/// irreversible step (exchange, removal).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Identity {
    /// `st_dev` (on btrfs: one anonymous device per subvolume).
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "dev {:#x} inode {}", self.dev, self.ino)
    }
}

/// File type of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Unix-domain socket.
    Socket,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
}

impl Kind {
    fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFBLK => Kind::BlockDevice,
            _ => return None,
        })
    }

    /// The `S_IF*` bits of this kind.
    pub(crate) fn mode_bits(self) -> u32 {
        match self {
            Kind::Dir => libc::S_IFDIR,
            Kind::File => libc::S_IFREG,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
            Kind::CharDevice => libc::S_IFCHR,
            Kind::BlockDevice => libc::S_IFBLK,
        }
    }

    /// Human-readable name, as used in mismatch messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File => "regular file",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::CharDevice => "character device",
            Kind::BlockDevice => "block device",
        }
    }
}

/// What `statx` tells about one entry (never following a symlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// File type.
    pub kind: Kind,
    /// Permission bits incl. setuid/setgid/sticky (`mode & 0o7777`).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Number of names.
    pub nlink: u64,
    /// Apparent size in bytes.
    pub size: u64,
    /// Allocated 512-byte blocks.
    pub blocks: u64,
    /// Device number of a device node (0 otherwise).
    pub rdev: u64,
    /// Last access, (seconds, nanoseconds).
    pub atime: (i64, u32),
    /// Last modification, (seconds, nanoseconds).
    pub mtime: (i64, u32),
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// Mount id (`STATX_MNT_ID`); 0 when the kernel does not report it.
    pub mnt_id: u64,
    /// The entry is the root of a mount (`STATX_ATTR_MOUNT_ROOT`).
    pub mount_root: bool,
}

impl Stat {
    /// `(dev, ino)`.
    pub fn identity(&self) -> Identity {
        Identity {
            dev: self.dev,
            ino: self.ino,
        }
    }
}

/// `statx(dirfd, name, AT_SYMLINK_NOFOLLOW)`; with an empty `name`, the descriptor itself.
pub(crate) fn statx_at(dirfd: BorrowedFd<'_>, name: &CStr) -> io::Result<Stat> {
    let mut flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT | libc::AT_STATX_SYNC_AS_STAT;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `name` is NUL-terminated, `dirfd` is a live descriptor and `stx` points to
    // writable memory of the right size for the duration of the call.
    let rc = unsafe {
        libc::statx(
            dirfd.as_raw_fd(),
            name.as_ptr(),
            flags,
            libc::STATX_BASIC_STATS | libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statx succeeded and initialised the (already zeroed) struct.
    let s = unsafe { stx.assume_init() };
    let mode = u32::from(s.stx_mode);
    let kind = Kind::from_mode(mode).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mount_bit = libc::STATX_ATTR_MOUNT_ROOT as u64;
    Ok(Stat {
        kind,
        perm: mode & 0o7777,
        uid: s.stx_uid,
        gid: s.stx_gid,
        nlink: u64::from(s.stx_nlink),
        size: s.stx_size,
        blocks: s.stx_blocks,
        rdev: libc::makedev(s.stx_rdev_major, s.stx_rdev_minor),
        atime: (s.stx_atime.tv_sec, s.stx_atime.tv_nsec),
        mtime: (s.stx_mtime.tv_sec, s.stx_mtime.tv_nsec),
        dev: libc::makedev(s.stx_dev_major, s.stx_dev_minor),
        ino: s.stx_ino,
        mnt_id: if s.stx_mask & libc::STATX_MNT_ID != 0 {
            s.stx_mnt_id
        } else {
            0
        },
        mount_root: s.stx_attributes_mask & mount_bit != 0 && s.stx_attributes & mount_bit != 0,
    })
}

/// `fstat` of a descriptor (through `statx`, for the mount id).
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    statx_at(fd, c"")
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Retry a system call interrupted by a signal.
pub(crate) fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Wrap a descriptor returned by a successful system call.
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `openat2(dirfd, path, flags | O_CLOEXEC, resolve)`.
pub(crate) fn openat2(
    dirfd: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; all-zero is its documented initial value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    retry(|| {
        // SAFETY: `path` is NUL-terminated, `how` is a valid open_how of the size passed, and
        // the descriptor is live for the duration of the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd.as_raw_fd(),
                path.as_ptr(),
                &mut how as *mut libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        owned(fd)
    })
}

/// Open directory `name` (one component) of `dir` for reading, refusing symlinks and mounts.
pub(crate) fn open_child_dir(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    openat2(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        RESOLVE_TREE,
    )
}

/// `O_PATH` descriptor of entry `name` of `dir` itself (a symlink is not followed), refusing
/// mounts. Opening with `O_PATH` has no side effect on devices or FIFOs.
pub(crate) fn open_child_path(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    openat2(dir, name, libc::O_PATH | libc::O_NOFOLLOW, RESOLVE_TREE)
}

/// `O_PATH` descriptor of `rel` (several components) below `root`, refusing `..` escapes,
/// symlinks, magic links and mounts.
pub(crate) fn open_beneath_path(root: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    let c = cstring(rel.as_os_str())?;
    openat2(root, &c, libc::O_PATH | libc::O_NOFOLLOW, RESOLVE_TREE)
}

/// The magic-link path `/proc/self/fd/N` of a descriptor.
pub(crate) fn proc_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// Re-open an `O_PATH` descriptor (that was checked to be a regular file or directory) for
/// reading, through its `/proc/self/fd` magic link: the same inode, with the permission check
/// of an ordinary open made with the current credentials.
pub(crate) fn reopen(fd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<OwnedFd> {
    let path = proc_path(fd);
    retry(|| {
        // SAFETY: `path` is NUL-terminated; the call returns a new descriptor or -1.
        let rc = unsafe {
            libc::open(
                path.as_ptr(),
                flags | libc::O_CLOEXEC | libc::O_NOCTTY,
                0 as libc::c_uint,
            )
        };
        owned(libc::c_long::from(rc))
    })
}

/// Re-open directory `fd` as `.` relative to itself: forces the kernel to check search and read
/// permission on the directory with the current credentials (a descriptor received from a more
/// privileged process carries the permissions of the opener).
pub(crate) fn reopen_dir(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    openat2(
        fd,
        c".",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        RESOLVE_TREE,
    )
}

/// A C string of an `OsStr` (EINVAL when it contains a NUL byte).
pub(crate) fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The `OsStr` of a C string.
pub(crate) fn os(c: &CStr) -> &OsStr {
    OsStr::from_bytes(c.to_bytes())
}

/// Names in directory `fd` (without `.` and `..`), sorted bytewise so that two walks visit
/// entries in the same order. Rewinds the descriptor first.
pub(crate) fn read_names(fd: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    // SAFETY: plain lseek on a live descriptor.
    if unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_SET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 << 10];
    let mut names = Vec::new();
    loop {
        let n = retry(|| {
            // SAFETY: `buf` is writable for `buf.len()` bytes; getdents64 writes at most that.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    fd.as_raw_fd(),
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            };
            if rc < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(rc as usize)
            }
        })?;
        if n == 0 {
            break;
        }
        parse_dirents(&buf[..n.min(buf.len())], &mut names)?;
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Parse `linux_dirent64` records (`d_ino` u64, `d_off` i64, `d_reclen` u16, `d_type` u8,
/// `d_name` NUL-terminated), skipping `.` and `..`.
fn parse_dirents(mut buf: &[u8], names: &mut Vec<CString>) -> io::Result<()> {
    const HEADER: usize = 19;
    let bad = || io::Error::from_raw_os_error(libc::EIO);
    while !buf.is_empty() {
        if buf.len() < HEADER {
            return Err(bad());
        }
        let reclen = usize::from(u16::from_ne_bytes([buf[16], buf[17]]));
        if reclen < HEADER || reclen > buf.len() {
            return Err(bad());
        }
        let raw = &buf[HEADER..reclen];
        let end = raw.iter().position(|b| *b == 0).ok_or_else(bad)?;
        let name = &raw[..end];
        if name != b"." && name != b".." && !name.is_empty() {
            names.push(CString::new(name).map_err(|_| bad())?);
        }
        buf = &buf[reclen..];
    }
    Ok(())
}

/// `label` joined with `rel`, without a trailing slash when `rel` is empty.
pub(crate) fn under(label: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        label.to_path_buf()
    } else {
        label.join(rel)
    }
}

/// Make an error of operation `op` on `path`.
pub(crate) fn io_err(op: Op, path: &Path) -> impl FnOnce(io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A directory held by a descriptor (`O_RDONLY|O_DIRECTORY`, opened without following a
/// symlink), with the path it was reached by, used only in messages — never for a system call.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    label: PathBuf,
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Dir {
    /// Open directory `path` for a tree operation. The last component must be a directory, not
    /// a symlink (`O_NOFOLLOW`); earlier components are resolved normally, so use this only for
    /// paths whose parents the caller trusts (or has checked). See [`Dir::open_no_symlinks`].
    pub fn open(path: &Path) -> Result<Dir, TreeError> {
        let c = cstring(path.as_os_str()).map_err(io_err(Op::OpenDir, path))?;
        let fd = retry(|| {
            // SAFETY: `c` is NUL-terminated; the call returns a new descriptor or -1.
            let rc = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            };
            owned(libc::c_long::from(rc))
        })
        .map_err(io_err(Op::OpenDir, path))?;
        Ok(Dir {
            fd,
            label: path.to_path_buf(),
        })
    }

    /// Open directory `path` without following a symlink in any component
    /// (`openat2(RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS)`): `ELOOP` when one is a symlink.
    pub fn open_no_symlinks(path: &Path) -> Result<Dir, TreeError> {
        let c = cstring(path.as_os_str()).map_err(io_err(Op::OpenDir, path))?;
        // SAFETY: AT_FDCWD is a valid "descriptor" for the *at family for the call's duration.
        let cwd = unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) };
        let fd = openat2(
            cwd,
            &c,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
        )
        .map_err(io_err(Op::OpenDir, path))?;
        Ok(Dir {
            fd,
            label: path.to_path_buf(),
        })
    }

    /// Adopt a descriptor (checked to be a directory); `label` is used in messages only.
    pub fn from_fd(fd: OwnedFd, label: impl Into<PathBuf>) -> Result<Dir, TreeError> {
        let label = label.into();
        let st = fstat(fd.as_fd()).map_err(io_err(Op::Stat, &label))?;
        if st.kind != Kind::Dir {
            return Err(TreeError::Io {
                op: Op::OpenDir,
                path: label,
                source: io::Error::from_raw_os_error(libc::ENOTDIR),
            });
        }
        Ok(Dir { fd, label })
    }

    /// The path this directory was reached by (for messages only).
    pub fn label(&self) -> &Path {
        &self.label
    }

    /// The path of child `name`, for messages.
    pub fn child_label(&self, name: &OsStr) -> PathBuf {
        self.label.join(name)
    }

    /// `statx` of the directory itself.
    pub fn stat(&self) -> Result<Stat, TreeError> {
        fstat(self.fd.as_fd()).map_err(io_err(Op::Stat, &self.label))
    }

    /// `(dev, ino)` of the directory itself.
    pub fn identity(&self) -> Result<Identity, TreeError> {
        Ok(self.stat()?.identity())
    }

    /// `statx` of child `name` (not followed); `None` when there is no such entry.
    pub fn child_stat(&self, name: &OsStr) -> Result<Option<Stat>, TreeError> {
        let path = self.child_label(name);
        let c = cstring(name).map_err(io_err(Op::Stat, &path))?;
        match statx_at(self.fd.as_fd(), &c) {
            Ok(st) => Ok(Some(st)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(io_err(Op::Stat, &path)(e)),
        }
    }

    /// Open child directory `name` (one component): never a symlink, never another mount.
    pub fn open_dir(&self, name: &OsStr) -> Result<Dir, TreeError> {
        let path = self.child_label(name);
        check_component(name, &path)?;
        let c = cstring(name).map_err(io_err(Op::OpenDir, &path))?;
        let fd = open_child_dir(self.fd.as_fd(), &c).map_err(io_err(Op::OpenDir, &path))?;
        Ok(Dir { fd, label: path })
    }

    /// Open child directory `name` and require identity `expected`
    /// ([`TreeError::IdentityMismatch`] otherwise, with nothing done).
    pub fn open_dir_expecting(&self, name: &OsStr, expected: Identity) -> Result<Dir, TreeError> {
        let dir = self.open_dir(name)?;
        let found = dir.identity()?;
        if found != expected {
            return Err(TreeError::IdentityMismatch {
                path: dir.label,
                expected,
                found,
            });
        }
        Ok(dir)
    }

    /// Open directory `rel` (several components) below this one with `openat2`
    /// (`RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS|RESOLVE_NO_XDEV`).
    pub fn open_beneath(&self, rel: &Path) -> Result<Dir, TreeError> {
        let path = self.label.join(rel);
        let c = cstring(rel.as_os_str()).map_err(io_err(Op::OpenDir, &path))?;
        let fd = openat2(
            self.fd.as_fd(),
            &c,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            RESOLVE_TREE,
        )
        .map_err(io_err(Op::OpenDir, &path))?;
        Ok(Dir { fd, label: path })
    }

    /// Create directory `name` (mode `mode`, before the umask) and open it. Fails with `EEXIST`
    /// when the name is taken; the opened directory is checked to be owned by the caller's
    /// effective uid and empty, so an entry swapped in between is refused.
    pub fn create_dir(&self, name: &OsStr, mode: u32) -> Result<Dir, TreeError> {
        let path = self.child_label(name);
        check_component(name, &path)?;
        let c = cstring(name).map_err(io_err(Op::CreateDir, &path))?;
        // SAFETY: `c` is NUL-terminated and the descriptor is live.
        cvt(unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) })
            .map_err(io_err(Op::CreateDir, &path))?;
        let dir = self.open_dir(name)?;
        let st = dir.stat()?;
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let empty = read_names(dir.as_fd())
            .map_err(io_err(Op::ReadDir, &path))?
            .is_empty();
        if st.uid != euid || !empty {
            return Err(TreeError::Changed {
                path,
                what: "the directory just created was replaced by another one".into(),
            });
        }
        Ok(dir)
    }

    /// Exchange entries `a` and `b` of this directory atomically
    /// (`renameat2(RENAME_EXCHANGE)`, both names relative to this descriptor).
    pub fn exchange(&self, a: &OsStr, b: &OsStr) -> Result<(), TreeError> {
        let path = self.child_label(a);
        check_component(a, &path)?;
        check_component(b, &self.child_label(b))?;
        let ca = cstring(a).map_err(io_err(Op::Exchange, &path))?;
        let cb = cstring(b).map_err(io_err(Op::Exchange, &path))?;
        // SAFETY: both names are NUL-terminated and the descriptor is live.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                self.fd.as_raw_fd(),
                ca.as_ptr(),
                self.fd.as_raw_fd(),
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc != 0 {
            return Err(io_err(Op::Exchange, &path)(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// `fchown` of the directory itself.
    pub fn set_owner(&self, uid: u32, gid: u32) -> Result<(), TreeError> {
        // SAFETY: plain fchown on a live descriptor.
        cvt(unsafe { libc::fchown(self.fd.as_raw_fd(), uid, gid) })
            .map(drop)
            .map_err(io_err(Op::Chown, &self.label))
    }

    /// `fchmod` of the directory itself.
    pub fn set_mode(&self, perm: u32) -> Result<(), TreeError> {
        // SAFETY: plain fchmod on a live descriptor.
        cvt(unsafe { libc::fchmod(self.fd.as_raw_fd(), perm as libc::mode_t) })
            .map(drop)
            .map_err(io_err(Op::Chmod, &self.label))
    }

    /// Names of the entries (sorted bytewise).
    pub fn names(&self) -> Result<Vec<OsString>, TreeError> {
        let names = read_names(self.fd.as_fd()).map_err(io_err(Op::ReadDir, &self.label))?;
        Ok(names
            .into_iter()
            .map(|c| OsString::from_vec(c.into_bytes()))
            .collect())
    }

    /// A second descriptor of the same directory.
    pub fn try_clone(&self) -> Result<Dir, TreeError> {
        let fd = self
            .fd
            .try_clone()
            .map_err(io_err(Op::OpenDir, &self.label))?;
        Ok(Dir {
            fd,
            label: self.label.clone(),
        })
    }

    /// Wrap an already-checked descriptor (engine-internal).
    pub(crate) fn from_parts(fd: OwnedFd, label: PathBuf) -> Dir {
        Dir { fd, label }
    }

    /// Create symlink `name` (one component) with content `target`
    /// (`symlinkat(target, fd, name)`); `EEXIST` when the name is taken. Returns what was
    /// created, checked to be a symlink with that content owned by the caller's effective uid
    /// (an entry swapped in between is refused).
    pub fn symlink(&self, name: &OsStr, target: &Path) -> Result<Stat, TreeError> {
        let path = self.child_label(name);
        check_component(name, &path)?;
        let c = cstring(name).map_err(io_err(Op::CreateSymlink, &path))?;
        let t = cstring(target.as_os_str()).map_err(io_err(Op::CreateSymlink, &path))?;
        // SAFETY: both strings are NUL-terminated and the descriptor is live.
        cvt(unsafe { libc::symlinkat(t.as_ptr(), self.fd.as_raw_fd(), c.as_ptr()) })
            .map_err(io_err(Op::CreateSymlink, &path))?;
        let (st, found) = self.read_symlink(name)?.ok_or_else(|| TreeError::Changed {
            path: path.clone(),
            what: "the symlink just created disappeared".into(),
        })?;
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if found != target || st.uid != euid {
            return Err(TreeError::Changed {
                path,
                what: "the symlink just created was replaced by another entry".into(),
            });
        }
        Ok(st)
    }

    /// The symlink `name` (not followed): its `statx` and content, read through one `O_PATH`
    /// descriptor so both describe the same inode. `None` when there is no entry; an error
    /// when it is not a symlink.
    pub fn read_symlink(&self, name: &OsStr) -> Result<Option<(Stat, PathBuf)>, TreeError> {
        let path = self.child_label(name);
        check_component(name, &path)?;
        let c = cstring(name).map_err(io_err(Op::ReadLink, &path))?;
        let fd = match open_child_path(self.fd.as_fd(), &c) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(io_err(Op::ReadLink, &path)(e)),
        };
        let st = fstat(fd.as_fd()).map_err(io_err(Op::Stat, &path))?;
        if st.kind != Kind::Symlink {
            return Err(io_err(Op::ReadLink, &path)(io::Error::from_raw_os_error(
                libc::EINVAL,
            )));
        }
        let target = super::copy::readlink(fd.as_fd()).map_err(io_err(Op::ReadLink, &path))?;
        Ok(Some((
            st,
            PathBuf::from(OsString::from_vec(target.into_bytes())),
        )))
    }

    /// Give the symlink `name` to `uid:gid`, only if it is still the inode `expected`
    /// (`fchownat(AT_EMPTY_PATH)` on an `O_PATH` descriptor: the symlink itself, never what
    /// it points to, and never an entry swapped in after the check).
    pub fn chown_symlink(
        &self,
        name: &OsStr,
        expected: Identity,
        uid: u32,
        gid: u32,
    ) -> Result<(), TreeError> {
        let path = self.child_label(name);
        check_component(name, &path)?;
        let c = cstring(name).map_err(io_err(Op::Chown, &path))?;
        let fd = open_child_path(self.fd.as_fd(), &c).map_err(io_err(Op::Chown, &path))?;
        let st = fstat(fd.as_fd()).map_err(io_err(Op::Stat, &path))?;
        if st.identity() != expected || st.kind != Kind::Symlink {
            return Err(TreeError::IdentityMismatch {
                path,
                expected,
                found: st.identity(),
            });
        }
        // SAFETY: the empty path with AT_EMPTY_PATH names exactly the inode of `fd`.
        cvt(unsafe {
            libc::fchownat(
                fd.as_raw_fd(),
                c"".as_ptr(),
                uid,
                gid,
                libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
        .map_err(io_err(Op::Chown, &path))
    }

    /// Rename entry `from` of this directory to `to` in directory `dest`
    /// (`renameat2`, both names single components). With `replace` false the target name
    /// must be free (`RENAME_NOREPLACE`); with `replace` true an existing non-directory there
    /// is replaced atomically.
    pub fn rename_to(
        &self,
        from: &OsStr,
        dest: &Dir,
        to: &OsStr,
        replace: bool,
    ) -> Result<(), TreeError> {
        let path = self.child_label(from);
        check_component(from, &path)?;
        check_component(to, &dest.child_label(to))?;
        let ca = cstring(from).map_err(io_err(Op::Exchange, &path))?;
        let cb = cstring(to).map_err(io_err(Op::Exchange, &path))?;
        let flags = if replace { 0 } else { libc::RENAME_NOREPLACE };
        // SAFETY: both names are NUL-terminated and both descriptors are live.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                self.fd.as_raw_fd(),
                ca.as_ptr(),
                dest.fd.as_raw_fd(),
                cb.as_ptr(),
                flags,
            )
        };
        if rc != 0 {
            return Err(io_err(Op::Exchange, &path)(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Remove the non-directory entry `name` (`unlinkat`, never followed), only if it is still
    /// the inode `expected` (checked right before; a name in a directory its owner can write
    /// may still change in between, so use this only for names ws-ckpt created and where the
    /// worst outcome of a swap is removing the swapper's own entry).
    pub fn unlink_expecting(&self, name: &OsStr, expected: Identity) -> Result<(), TreeError> {
        let path = self.child_label(name);
        check_component(name, &path)?;
        let st = self
            .child_stat(name)?
            .ok_or_else(|| io_err(Op::Remove, &path)(io::Error::from_raw_os_error(libc::ENOENT)))?;
        if st.identity() != expected {
            return Err(TreeError::IdentityMismatch {
                path,
                expected,
                found: st.identity(),
            });
        }
        let c = cstring(name).map_err(io_err(Op::Remove, &path))?;
        // SAFETY: `c` is NUL-terminated and the descriptor is live.
        cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) })
            .map(drop)
            .map_err(io_err(Op::Remove, &path))
    }

    /// Remove the empty directory `name` (`unlinkat(AT_REMOVEDIR)`); `Ok(false)` when absent.
    pub fn remove_empty_dir(&self, name: &OsStr) -> Result<bool, TreeError> {
        let path = self.child_label(name);
        check_component(name, &path)?;
        let c = cstring(name).map_err(io_err(Op::RemoveDir, &path))?;
        // SAFETY: `c` is NUL-terminated and the descriptor is live.
        match cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) }) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(io_err(Op::RemoveDir, &path)(e)),
        }
    }

    /// The value of extended attribute `name` of the directory itself; `None` when it has
    /// none.
    pub fn get_xattr(&self, name: &CStr) -> Result<Option<Vec<u8>>, TreeError> {
        super::xattr::get(super::xattr::Target::Fd(self.fd.as_fd()), name)
            .map_err(io_err(Op::GetXattr, &self.label))
    }

    /// Set extended attribute `name` of the directory itself (`fsetxattr`).
    pub fn set_xattr(&self, name: &CStr, value: &[u8]) -> Result<(), TreeError> {
        super::xattr::set(super::xattr::Target::Fd(self.fd.as_fd()), name, value)
            .map_err(io_err(Op::SetXattr, &self.label))
    }

    /// Remove extended attribute `name` of the directory itself; `Ok` when it had none.
    pub fn remove_xattr(&self, name: &CStr) -> Result<(), TreeError> {
        match super::xattr::remove(super::xattr::Target::Fd(self.fd.as_fd()), name) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
            Err(e) => Err(io_err(Op::RemoveXattr, &self.label)(e)),
        }
    }

    /// `fsync` of the directory (makes creations, renames and removals in it durable).
    pub fn sync(&self) -> Result<(), TreeError> {
        // SAFETY: plain fsync on a live descriptor.
        cvt(unsafe { libc::fsync(self.fd.as_raw_fd()) })
            .map(drop)
            .map_err(io_err(Op::Sync, &self.label))
    }
}

/// Refuse names that are not a single path component.
fn check_component(name: &OsStr, path: &Path) -> Result<(), TreeError> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(TreeError::Io {
            op: Op::OpenDir,
            path: path.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a single file name (empty, '.', '..' or containing '/')",
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirent(name: &[u8]) -> Vec<u8> {
        let reclen = (19 + name.len() + 1).div_ceil(8) * 8;
        let mut rec = vec![0u8; reclen];
        rec[16..18].copy_from_slice(&(reclen as u16).to_ne_bytes());
        rec[19..19 + name.len()].copy_from_slice(name);
        rec
    }

    #[test]
    fn dirents_are_parsed_and_dots_skipped() {
        let mut buf = Vec::new();
        for n in [&b"."[..], b"..", b"b", b"a name with spaces"] {
            buf.extend(dirent(n));
        }
        let mut names = Vec::new();
        parse_dirents(&buf, &mut names).unwrap();
        assert_eq!(
            names,
            vec![c"b".to_owned(), c"a name with spaces".to_owned()]
        );
    }

    #[test]
    fn corrupt_dirents_are_an_error_not_a_panic() {
        let mut names = Vec::new();
        assert!(parse_dirents(&[1, 2, 3], &mut names).is_err());
        let mut rec = dirent(b"x");
        rec[16..18].copy_from_slice(&1000u16.to_ne_bytes());
        assert!(parse_dirents(&rec, &mut names).is_err());
        let mut rec = dirent(b"x");
        rec[16..18].copy_from_slice(&3u16.to_ne_bytes());
        assert!(parse_dirents(&rec, &mut names).is_err());
        let mut rec = dirent(b"abcde");
        let len = rec.len();
        rec[19..len].fill(b'z'); // no NUL terminator
        assert!(parse_dirents(&rec, &mut names).is_err());
    }

    #[test]
    fn dir_primitives_refuse_symlinks_and_bad_names() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("real")).unwrap();
        std::os::unix::fs::symlink("real", root.join("link")).unwrap();
        let d = Dir::open(root).unwrap();
        let err = d.open_dir(OsStr::new("link")).unwrap_err();
        assert!(
            matches!(&err, TreeError::Io { source, .. }
                if matches!(source.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR))),
            "{err:?}"
        );
        assert!(Dir::open(&root.join("link")).is_err());
        assert!(Dir::open_no_symlinks(&root.join("link/")).is_err());
        for bad in ["", ".", "..", "a/b"] {
            assert!(d.open_dir(OsStr::new(bad)).is_err(), "{bad:?}");
        }
        let real = d.open_dir(OsStr::new("real")).unwrap();
        assert_eq!(real.label(), root.join("real"));
        let id = real.identity().unwrap();
        assert_eq!(
            d.open_dir_expecting(OsStr::new("real"), id)
                .unwrap()
                .identity()
                .unwrap(),
            id
        );
        let wrong = Identity {
            dev: id.dev,
            ino: id.ino + 1,
        };
        assert!(matches!(
            d.open_dir_expecting(OsStr::new("real"), wrong),
            Err(TreeError::IdentityMismatch { .. })
        ));
        assert!(d.open_beneath(Path::new("link/x")).is_err());
        assert!(d.open_beneath(Path::new("../x")).is_err());
        assert_eq!(d.child_stat(OsStr::new("nope")).unwrap(), None);
        assert_eq!(
            d.child_stat(OsStr::new("link")).unwrap().unwrap().kind,
            Kind::Symlink
        );
    }

    #[test]
    fn create_dir_and_exchange_work_by_descriptor() {
        let tmp = tempfile::tempdir().unwrap();
        let d = Dir::open(tmp.path()).unwrap();
        let a = d.create_dir(OsStr::new("a"), 0o700).unwrap();
        let a_id = a.identity().unwrap();
        assert!(d.create_dir(OsStr::new("a"), 0o700).is_err());
        std::fs::write(tmp.path().join("b"), b"file").unwrap();
        d.exchange(OsStr::new("a"), OsStr::new("b")).unwrap();
        assert!(tmp.path().join("a").is_file());
        assert_eq!(
            d.child_stat(OsStr::new("b")).unwrap().unwrap().identity(),
            a_id
        );
        assert_eq!(d.names().unwrap(), vec![OsString::from("a"), "b".into()]);
    }
}
