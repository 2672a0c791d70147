//! Faithful directory-tree copy, verification and removal, used when a plain directory becomes
//! a btrfs subvolume (init, SPEC §5.1) and back (release, SPEC §5.4).
//!
//! [`copy_tree`] recreates every entry under a source directory: file types, modes (incl.
//! setuid/setgid/sticky), owners, nanosecond timestamps, xattrs of all namespaces, hardlink
//! groups, sparse holes and verbatim symlinks; regular files are reflinked (`FICLONE`) when the
//! filesystem allows it. [`verify_tree`] proves a copy equal to its original, [`remove_tree`]
//! deletes a tree even when it contains read-only directories.
//!
//! What this module must not do: follow symlinks, cross into other mounted filesystems (nested
//! btrfs subvolumes are fine), load whole files into memory, recurse on the call stack, or
//! touch anything outside the paths it is given. It makes no decisions about *whether* to copy
//! or delete; the executor decides, this module only does it faithfully.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsString};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, Whence};
use tracing::debug;

/// Counts of what a copy (or a verification) went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopyStats {
    /// Regular files whose data was copied or reflinked (hardlinks to them not included).
    pub files: u64,
    /// Directories below the root (the root itself not included).
    pub dirs: u64,
    /// Symbolic links, recreated verbatim.
    pub symlinks: u64,
    /// Extra names of an already-copied inode, recreated with `link()`.
    pub hardlinks: u64,
    /// FIFOs, character/block devices and sockets, recreated with `mknod()`.
    pub special: u64,
    /// Apparent size of all regular files (each hardlinked inode counted once).
    pub bytes: u64,
    /// Regular files whose data was shared with `FICLONE` instead of copied.
    pub reflinked_files: u64,
    /// Extended attributes the destination filesystem refused with `ENOTSUP` (not copied).
    pub xattrs_skipped: u64,
}

/// Progress of a copy, as handed to the `progress` callback of [`copy_tree`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Bytes of regular-file data (apparent size) handled so far.
    pub bytes_done: u64,
    /// Apparent size of all regular files under the source (hardlinked inodes counted once).
    pub bytes_total: u64,
    /// Entries (files, directories, links, …) below the root handled so far.
    pub entries_done: u64,
    /// Entries below the root of the source.
    pub entries_total: u64,
}

/// Errors of tree copy, verification and removal.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A system call on `path` failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// The path the operation was applied to.
        path: PathBuf,
        /// What was being done, e.g. "read directory".
        op: &'static str,
        /// The underlying OS error.
        source: io::Error,
    },
    /// The tree contains a mount point of another filesystem, which is never crossed.
    #[error(
        "{path} is a mount point inside the tree; unmount it (or move it out of the tree) and retry"
    )]
    MountPoint {
        /// The directory where another filesystem is mounted.
        path: PathBuf,
    },
    /// A copy differs from its original.
    #[error(
        "the copy differs from the original at {path}: {what}; the original was left untouched, \
         remove the copy and retry"
    )]
    Mismatch {
        /// Path relative to the compared roots ("." for the roots themselves).
        path: PathBuf,
        /// Human-readable description of the first difference found.
        what: String,
    },
}

/// Shorthand for mapping an I/O error of an operation on `path`.
fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> CopyError + 'a {
    move |source| CopyError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Shorthand for mapping a `nix` errno of an operation on `path`.
fn nix_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(Errno) -> CopyError + 'a {
    move |errno| CopyError::Io {
        path: path.to_path_buf(),
        op,
        source: io::Error::from_raw_os_error(errno as i32),
    }
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn lstat(path: &Path) -> Result<Metadata, CopyError> {
    fs::symlink_metadata(path).map_err(io_err(path, "stat"))
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Names in directory `dir`, sorted bytewise (so two walks visit entries in the same order).
fn sorted_names(dir: &Path) -> Result<Vec<OsString>, CopyError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir, "read directory"))? {
        names.push(entry.map_err(io_err(dir, "read directory"))?.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

fn is_dir(meta: &Metadata) -> bool {
    meta.file_type().is_dir()
}

/// Whether `path` is the root of a mount (statx `STATX_ATTR_MOUNT_ROOT`; false where the kernel
/// does not report it).
fn is_mount_root(path: &Path) -> io::Result<bool> {
    let c = cstr(path)?;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated string and `stx` points to writable memory of the
    // right size for the duration of the call.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            libc::STATX_TYPE,
            stx.as_mut_ptr(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if errno_of(&e) == libc::ENOSYS {
            return Ok(false);
        }
        return Err(e);
    }
    // SAFETY: statx returned success, so it initialised the struct (which was zeroed anyway).
    let stx = unsafe { stx.assume_init() };
    let bit = libc::STATX_ATTR_MOUNT_ROOT as u64;
    Ok(stx.stx_attributes_mask & bit != 0 && stx.stx_attributes & bit != 0)
}

/// Refuse to descend into directory `path` (metadata `meta`, parent device `parent_dev`) if it
/// belongs to another mounted filesystem. A btrfs subvolume root (inode 256 on btrfs) that is
/// not itself a mount point is part of the same filesystem and is allowed.
fn check_boundary(path: &Path, meta: &Metadata, parent_dev: u64) -> Result<(), CopyError> {
    if is_mount_root(path).map_err(io_err(path, "check for a mount point at"))? {
        return Err(CopyError::MountPoint {
            path: path.to_path_buf(),
        });
    }
    if meta.dev() == parent_dev {
        return Ok(());
    }
    if meta.ino() == 256 {
        let sfs = nix::sys::statfs::statfs(path).map_err(nix_err(path, "statfs"))?;
        if sfs.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC {
            return Ok(());
        }
    }
    Err(CopyError::MountPoint {
        path: path.to_path_buf(),
    })
}

/// Count entries and bytes (apparent size of regular files, each hardlinked inode once) under
/// `src` without following symlinks. Fails with [`CopyError::MountPoint`] if the tree contains
/// another mounted filesystem, so a copy can be refused before it starts.
pub fn scan_tree(src: &Path) -> Result<Progress, CopyError> {
    let root = lstat(src)?;
    if !is_dir(&root) {
        return Err(CopyError::Io {
            path: src.to_path_buf(),
            op: "scan",
            source: io::Error::from_raw_os_error(libc::ENOTDIR),
        });
    }
    let mut progress = Progress::default();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut stack = vec![(src.to_path_buf(), root.dev())];
    while let Some((dir, dev)) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(io_err(&dir, "read directory"))? {
            let entry = entry.map_err(io_err(&dir, "read directory"))?;
            let path = entry.path();
            let meta = lstat(&path)?;
            progress.entries_total += 1;
            if is_dir(&meta) {
                check_boundary(&path, &meta, dev)?;
                stack.push((path, meta.dev()));
            } else if meta.file_type().is_file()
                && (meta.nlink() <= 1 || seen.insert((meta.dev(), meta.ino())))
            {
                progress.bytes_total += meta.size();
            }
        }
    }
    Ok(progress)
}

/// Rate-limited progress reporting (at most every 100 ms, plus a final call).
struct Reporter<'a> {
    progress: Progress,
    last: Instant,
    callback: &'a mut dyn FnMut(&Progress),
}

impl Reporter<'_> {
    const INTERVAL: Duration = Duration::from_millis(100);

    fn tick(&mut self) {
        if self.last.elapsed() >= Self::INTERVAL {
            (self.callback)(&self.progress);
            self.last = Instant::now();
        }
    }

    fn finish(&mut self) {
        (self.callback)(&self.progress);
    }
}

/// Pending work of the iterative walk in [`copy_tree`].
enum Task {
    /// Copy the children of directory `src` into the already created `dst`.
    Enter {
        src: PathBuf,
        dst: PathBuf,
        dev: u64,
    },
    /// All children are done: give `dst` the metadata of `src`.
    Finish {
        src: PathBuf,
        dst: PathBuf,
        meta: Metadata,
    },
}

/// Chunk size for one `copy_file_range` call / one progress step.
const COPY_CHUNK: u64 = 8 << 20;
/// Buffer size for read/write copying and for streamed comparison.
const BUF_SIZE: usize = 256 << 10;

struct Copier<'a> {
    stats: CopyStats,
    reporter: Reporter<'a>,
    /// Source (dev, ino) of inodes with nlink > 1 → destination path of their first copy.
    links: HashMap<(u64, u64), PathBuf>,
    /// FICLONE may still work (cleared after EXDEV/EOPNOTSUPP/ENOTTY).
    clone_ok: bool,
    /// copy_file_range may still work (cleared after it is refused).
    cfr_ok: bool,
    buf: Vec<u8>,
}

/// Copy the CONTENTS of directory `src` into the existing, empty directory `dst`, then give
/// `dst` itself `src`'s mode, owner, times and xattrs.
///
/// Preserves file types (regular, directory, symlink verbatim, FIFO, character/block device,
/// socket), modes incl. setuid/setgid/sticky, uid/gid, atime/mtime with nanoseconds (directories
/// after their children), xattrs of all namespaces (`ENOTSUP` on the destination is counted in
/// [`CopyStats::xattrs_skipped`], not fatal), hardlink groups and sparse holes. Regular files are
/// reflinked with `FICLONE` when possible, otherwise their data segments are copied. Never follows
/// symlinks and never crosses into another mounted filesystem ([`CopyError::MountPoint`], checked
/// before anything is written); nested btrfs subvolumes are copied as plain directories.
/// `progress` is called at most about 10 times per second plus once at the end. Ends with
/// `syncfs(dst)`.
pub fn copy_tree(
    src: &Path,
    dst: &Path,
    progress: &mut dyn FnMut(&Progress),
) -> Result<CopyStats, CopyError> {
    let src_meta = lstat(src)?;
    if !is_dir(&src_meta) {
        return Err(CopyError::Io {
            path: src.to_path_buf(),
            op: "copy from",
            source: io::Error::from_raw_os_error(libc::ENOTDIR),
        });
    }
    let dst_meta = lstat(dst)?;
    if !is_dir(&dst_meta) {
        return Err(CopyError::Io {
            path: dst.to_path_buf(),
            op: "copy into",
            source: io::Error::from_raw_os_error(libc::ENOTDIR),
        });
    }
    let mut dst_entries = fs::read_dir(dst).map_err(io_err(dst, "read directory"))?;
    if dst_entries.next().is_some() {
        return Err(CopyError::Io {
            path: dst.to_path_buf(),
            op: "copy into non-empty directory",
            source: io::Error::from_raw_os_error(libc::ENOTEMPTY),
        });
    }
    let src_canon = fs::canonicalize(src).map_err(io_err(src, "resolve"))?;
    let dst_canon = fs::canonicalize(dst).map_err(io_err(dst, "resolve"))?;
    if dst_canon.starts_with(&src_canon) {
        return Err(CopyError::Io {
            path: dst.to_path_buf(),
            op: "copy into a destination inside the source",
            source: io::Error::from_raw_os_error(libc::EINVAL),
        });
    }

    let totals = scan_tree(src)?;
    debug!(src = %src.display(), dst = %dst.display(), entries = totals.entries_total,
        bytes = totals.bytes_total, "copying tree");
    let mut copier = Copier {
        stats: CopyStats::default(),
        reporter: Reporter {
            progress: totals,
            last: Instant::now(),
            callback: progress,
        },
        links: HashMap::new(),
        clone_ok: true,
        cfr_ok: true,
        buf: Vec::new(),
    };
    let mut stack = vec![
        Task::Finish {
            src: src.to_path_buf(),
            dst: dst.to_path_buf(),
            meta: src_meta.clone(),
        },
        Task::Enter {
            src: src.to_path_buf(),
            dst: dst.to_path_buf(),
            dev: src_meta.dev(),
        },
    ];
    while let Some(task) = stack.pop() {
        match task {
            Task::Enter { src, dst, dev } => {
                copier.copy_dir_entries(&src, &dst, dev, &mut stack)?
            }
            Task::Finish { src, dst, meta } => copier.apply_meta(&src, &dst, &meta)?,
        }
    }

    let dir = File::open(dst).map_err(io_err(dst, "open for syncfs"))?;
    nix::unistd::syncfs(&dir).map_err(nix_err(dst, "syncfs"))?;
    copier.reporter.finish();
    debug!(src = %src.display(), dst = %dst.display(), stats = ?copier.stats, "copied tree");
    Ok(copier.stats)
}

impl Copier<'_> {
    fn copy_dir_entries(
        &mut self,
        src_dir: &Path,
        dst_dir: &Path,
        dev: u64,
        stack: &mut Vec<Task>,
    ) -> Result<(), CopyError> {
        for name in sorted_names(src_dir)? {
            let src = src_dir.join(&name);
            let dst = dst_dir.join(&name);
            let meta = lstat(&src)?;
            if is_dir(&meta) {
                check_boundary(&src, &meta, dev)?;
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dst)
                    .map_err(io_err(&dst, "create directory"))?;
                self.stats.dirs += 1;
                self.reporter.progress.entries_done += 1;
                let child_dev = meta.dev();
                stack.push(Task::Finish {
                    src: src.clone(),
                    dst: dst.clone(),
                    meta,
                });
                stack.push(Task::Enter {
                    src,
                    dst,
                    dev: child_dev,
                });
            } else {
                self.copy_non_dir(&src, &dst, &meta)?;
                self.reporter.progress.entries_done += 1;
            }
            self.reporter.tick();
        }
        Ok(())
    }

    fn copy_non_dir(&mut self, src: &Path, dst: &Path, meta: &Metadata) -> Result<(), CopyError> {
        let key = (meta.dev(), meta.ino());
        if meta.nlink() > 1 {
            if let Some(first) = self.links.get(&key) {
                fs::hard_link(first, dst).map_err(io_err(dst, "create hardlink"))?;
                self.stats.hardlinks += 1;
                return Ok(());
            }
        }
        let ft = meta.file_type();
        if ft.is_file() {
            self.copy_file(src, dst, meta)?;
            self.stats.files += 1;
            self.stats.bytes += meta.size();
        } else if ft.is_symlink() {
            let target = fs::read_link(src).map_err(io_err(src, "read symlink"))?;
            std::os::unix::fs::symlink(&target, dst).map_err(io_err(dst, "create symlink"))?;
            self.stats.symlinks += 1;
        } else {
            let kind = SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
            nix::sys::stat::mknod(dst, kind, Mode::from_bits_truncate(0o600), meta.rdev())
                .map_err(nix_err(dst, "create special file"))?;
            self.stats.special += 1;
        }
        self.apply_meta(src, dst, meta)?;
        if meta.nlink() > 1 {
            self.links.insert(key, dst.to_path_buf());
        }
        Ok(())
    }

    /// Give `dst` the owner, xattrs, mode and times of `src` (in that order: chown clears
    /// setuid bits and capabilities, user xattrs need write permission, times come last).
    fn apply_meta(&mut self, src: &Path, dst: &Path, meta: &Metadata) -> Result<(), CopyError> {
        let symlink = meta.file_type().is_symlink();
        nix::unistd::fchownat(
            AT_FDCWD,
            dst,
            Some(Uid::from_raw(meta.uid())),
            Some(Gid::from_raw(meta.gid())),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(nix_err(dst, "change owner of"))?;
        for (name, value) in read_xattrs(src).map_err(io_err(src, "read xattrs of"))? {
            match set_xattr(dst, &name, &value) {
                Ok(()) => {}
                Err(e) if errno_of(&e) == libc::EOPNOTSUPP => {
                    debug!(path = %dst.display(), name = ?name, "xattr not supported, skipped");
                    self.stats.xattrs_skipped += 1;
                }
                Err(e) => return Err(io_err(dst, "set xattr on")(e)),
            }
        }
        if !symlink {
            nix::sys::stat::fchmodat(
                AT_FDCWD,
                dst,
                Mode::from_bits_truncate(meta.mode() & 0o7777),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(nix_err(dst, "change mode of"))?;
        }
        nix::sys::stat::utimensat(
            AT_FDCWD,
            dst,
            &TimeSpec::new(meta.atime(), meta.atime_nsec()),
            &TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(nix_err(dst, "set times of"))?;
        Ok(())
    }

    fn copy_file(&mut self, src: &Path, dst: &Path, meta: &Metadata) -> Result<(), CopyError> {
        let sf = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(src)
            .map_err(io_err(src, "open"))?;
        let df = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dst)
            .map_err(io_err(dst, "create"))?;
        let base = self.reporter.progress.bytes_done;
        if self.clone_ok {
            // SAFETY: both descriptors are open for the duration of the call; FICLONE takes the
            // source descriptor as its integer argument.
            let rc = unsafe { libc::ioctl(df.as_raw_fd(), libc::FICLONE, sf.as_raw_fd()) };
            if rc == 0 {
                self.stats.reflinked_files += 1;
                self.reporter.progress.bytes_done = base + meta.size();
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match errno_of(&e) {
                libc::EXDEV | libc::EOPNOTSUPP | libc::ENOTTY => {
                    debug!(src = %src.display(), error = %e, "reflink impossible, copying data");
                    self.clone_ok = false;
                }
                libc::EINVAL => {}
                _ => return Err(io_err(dst, "reflink (FICLONE) into")(e)),
            }
        }
        let size = sf.metadata().map_err(io_err(src, "stat"))?.size();
        let mut offset = 0u64;
        while offset < size {
            let data = match nix::unistd::lseek(&sf, offset as i64, Whence::SeekData) {
                Ok(pos) => pos as u64,
                Err(Errno::ENXIO) => break,
                Err(Errno::EINVAL) => offset,
                Err(e) => return Err(nix_err(src, "seek to data in")(e)),
            };
            if data >= size {
                break;
            }
            let hole = match nix::unistd::lseek(&sf, data as i64, Whence::SeekHole) {
                Ok(pos) => (pos as u64).min(size),
                Err(Errno::EINVAL | Errno::ENXIO) => size,
                Err(e) => return Err(nix_err(src, "seek to hole in")(e)),
            };
            if hole <= data {
                break;
            }
            self.copy_range(&sf, &df, src, dst, data, hole, base)?;
            offset = hole;
        }
        nix::unistd::ftruncate(&df, size as i64).map_err(nix_err(dst, "set size of"))?;
        self.reporter.progress.bytes_done = base + size;
        Ok(())
    }

    /// Copy bytes `[start, end)` at the same offsets, with copy_file_range or read/write.
    #[allow(clippy::too_many_arguments)]
    fn copy_range(
        &mut self,
        sf: &File,
        df: &File,
        src: &Path,
        dst: &Path,
        start: u64,
        end: u64,
        base: u64,
    ) -> Result<(), CopyError> {
        let mut pos = start;
        while pos < end {
            let chunk = (end - pos).min(COPY_CHUNK) as usize;
            let copied = if self.cfr_ok {
                let mut off_in = pos as i64;
                let mut off_out = pos as i64;
                // SAFETY: both descriptors are open; the offsets point to live locals.
                let rc = unsafe {
                    libc::copy_file_range(
                        sf.as_raw_fd(),
                        &mut off_in,
                        df.as_raw_fd(),
                        &mut off_out,
                        chunk,
                        0,
                    )
                };
                match Errno::result(rc).map(|n| n as usize) {
                    Ok(n) => Some(n),
                    Err(
                        e @ (Errno::EXDEV
                        | Errno::EINVAL
                        | Errno::ENOSYS
                        | Errno::EOPNOTSUPP
                        | Errno::EPERM),
                    ) => {
                        debug!(src = %src.display(), error = %e,
                            "copy_file_range refused, using read/write");
                        self.cfr_ok = false;
                        None
                    }
                    Err(e) => return Err(nix_err(dst, "copy data into")(e)),
                }
            } else {
                None
            };
            let n = match copied {
                Some(n) => n,
                None => {
                    if self.buf.is_empty() {
                        self.buf = vec![0; BUF_SIZE];
                    }
                    let want = chunk.min(self.buf.len());
                    let n = read_at_retry(sf, &mut self.buf[..want], pos)
                        .map_err(io_err(src, "read"))?;
                    df.write_all_at(&self.buf[..n], pos)
                        .map_err(io_err(dst, "write"))?;
                    n
                }
            };
            if n == 0 {
                // The source shrank while being copied; verification will report it.
                break;
            }
            pos += n as u64;
            self.reporter.progress.bytes_done = base + pos;
            self.reporter.tick();
        }
        Ok(())
    }
}

fn read_at_retry(f: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    loop {
        match f.read_at(buf, pos) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Names of all extended attributes of `path` (not following symlinks), sorted; empty if the
/// filesystem does not support xattrs.
fn xattr_names(path: &Path) -> io::Result<Vec<CString>> {
    let c = cstr(path)?;
    loop {
        // SAFETY: `c` is NUL-terminated; a null buffer with size 0 asks for the needed size.
        let need = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
        if need < 0 {
            let e = io::Error::last_os_error();
            if errno_of(&e) == libc::EOPNOTSUPP {
                return Ok(Vec::new());
            }
            return Err(e);
        }
        if need == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; need as usize];
        // SAFETY: `buf` is writable for `buf.len()` bytes.
        let got = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if errno_of(&e) == libc::ERANGE {
                continue; // the list grew in between; ask again
            }
            return Err(e);
        }
        buf.truncate(got as usize);
        let mut names: Vec<CString> = buf
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .filter_map(|s| CString::new(s).ok())
            .collect();
        names.sort();
        return Ok(names);
    }
}

/// Value of xattr `name` of `path` (not following symlinks); `None` if it vanished.
fn get_xattr(path: &Path, name: &CString) -> io::Result<Option<Vec<u8>>> {
    let c = cstr(path)?;
    loop {
        // SAFETY: valid NUL-terminated strings; null buffer with size 0 asks for the size.
        let need = unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        if need < 0 {
            let e = io::Error::last_os_error();
            if errno_of(&e) == libc::ENODATA {
                return Ok(None);
            }
            return Err(e);
        }
        let mut buf = vec![0u8; need as usize];
        // SAFETY: `buf` is writable for `buf.len()` bytes.
        let got = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            match errno_of(&e) {
                libc::ERANGE => continue,
                libc::ENODATA => return Ok(None),
                _ => return Err(e),
            }
        }
        buf.truncate(got as usize);
        return Ok(Some(buf));
    }
}

/// All extended attributes of `path` (not following symlinks), sorted by name.
fn read_xattrs(path: &Path) -> io::Result<Vec<(CString, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in xattr_names(path)? {
        if let Some(value) = get_xattr(path, &name)? {
            out.push((name, value));
        }
    }
    Ok(out)
}

fn set_xattr(path: &Path, name: &CString, value: &[u8]) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: valid NUL-terminated strings; `value` is readable for `value.len()` bytes.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn mismatch(rel: &Path, what: String) -> CopyError {
    let path = if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel.to_path_buf()
    };
    CopyError::Mismatch { path, what }
}

fn type_name(meta: &Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_dir() {
        "directory"
    } else if ft.is_file() {
        "regular file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_socket() {
        "socket"
    } else {
        "unknown file type"
    }
}

/// Hardlink bookkeeping of one side of [`verify_tree`]: the first relative path seen per inode.
#[derive(Default)]
struct LinkLeaders(HashMap<(u64, u64), PathBuf>);

impl LinkLeaders {
    /// The first path seen for this inode (`rel` itself if it has a single name or is new).
    fn leader(&mut self, meta: &Metadata, rel: &Path) -> PathBuf {
        if meta.nlink() <= 1 || is_dir(meta) {
            return rel.to_path_buf();
        }
        self.0
            .entry((meta.dev(), meta.ino()))
            .or_insert_with(|| rel.to_path_buf())
            .clone()
    }
}

/// Prove `b` is a faithful copy of `a`: same names, types, modes, uid/gid, sizes, symlink
/// targets, device numbers, mtimes (every entry except the two roots), xattrs, hardlink grouping
/// and file content (streamed, never buffered whole). The first difference is returned as
/// [`CopyError::Mismatch`] with the path relative to the roots. Never follows symlinks or crosses
/// mount points. Returns what `a` contains (with `reflinked_files` = 0).
pub fn verify_tree(a: &Path, b: &Path) -> Result<CopyStats, CopyError> {
    verify(a, b, true)
}

/// [`verify_tree`] without reading file contents: names, types, sizes, modes, owners,
/// mtimes, symlink targets, xattrs and hardlink grouping only. Cheap; used to notice that a
/// tree changed after it was fully verified (any write updates size or mtime).
pub fn verify_tree_metadata(a: &Path, b: &Path) -> Result<CopyStats, CopyError> {
    verify(a, b, false)
}

fn verify(a: &Path, b: &Path, content: bool) -> Result<CopyStats, CopyError> {
    let ma = lstat(a)?;
    let mb = lstat(b)?;
    let root = Path::new("");
    if !is_dir(&ma) {
        return Err(CopyError::Io {
            path: a.to_path_buf(),
            op: "verify",
            source: io::Error::from_raw_os_error(libc::ENOTDIR),
        });
    }
    let mut v = Verifier {
        content,
        stats: CopyStats::default(),
        leaders_a: LinkLeaders::default(),
        leaders_b: LinkLeaders::default(),
        buf_a: vec![0; BUF_SIZE],
        buf_b: vec![0; BUF_SIZE],
    };
    v.compare_entry(a, b, root, &ma, &mb, false)?;
    let mut stack = vec![(root.to_path_buf(), ma, mb)];
    while let Some((rel, dir_ma, dir_mb)) = stack.pop() {
        let dir_a = a.join(&rel);
        let dir_b = b.join(&rel);
        let names_a = sorted_names(&dir_a)?;
        let names_b = sorted_names(&dir_b)?;
        // Names first, so an extra or missing entry is reported by its own path rather than
        // as a changed mtime of its directory.
        let (mut i, mut j) = (0, 0);
        while i < names_a.len() || j < names_b.len() {
            let order = match (names_a.get(i), names_b.get(j)) {
                (Some(x), Some(y)) => x.as_bytes().cmp(y.as_bytes()),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    return Err(mismatch(
                        &rel.join(&names_a[i]),
                        "missing from the copy".into(),
                    ))
                }
                std::cmp::Ordering::Greater => {
                    return Err(mismatch(
                        &rel.join(&names_b[j]),
                        "extra entry in the copy, not in the original".into(),
                    ))
                }
                std::cmp::Ordering::Equal => {
                    i += 1;
                    j += 1;
                }
            }
        }
        if !rel.as_os_str().is_empty() {
            compare_mtime(&rel, &dir_ma, &dir_mb)?;
        }
        for name in &names_a {
            let child_rel = rel.join(name);
            let pa = a.join(&child_rel);
            let pb = b.join(&child_rel);
            let ca = lstat(&pa)?;
            let cb = lstat(&pb)?;
            v.compare_entry(&pa, &pb, &child_rel, &ca, &cb, true)?;
            if is_dir(&ca) {
                check_boundary(&pa, &ca, dir_ma.dev())?;
                check_boundary(&pb, &cb, dir_mb.dev())?;
                stack.push((child_rel, ca, cb));
            }
        }
    }
    Ok(v.stats)
}

struct Verifier {
    /// Compare file contents too (else metadata only).
    content: bool,
    stats: CopyStats,
    leaders_a: LinkLeaders,
    leaders_b: LinkLeaders,
    buf_a: Vec<u8>,
    buf_b: Vec<u8>,
}

impl Verifier {
    /// Compare one entry (not its children); `child` is false for the two roots (no mtime
    /// comparison, not counted in the stats).
    fn compare_entry(
        &mut self,
        pa: &Path,
        pb: &Path,
        rel: &Path,
        ma: &Metadata,
        mb: &Metadata,
        child: bool,
    ) -> Result<(), CopyError> {
        let (ta, tb) = (type_name(ma), type_name(mb));
        if ta != tb {
            return Err(mismatch(
                rel,
                format!("type differs: {ta} vs {tb} in the copy"),
            ));
        }
        let symlink = ma.file_type().is_symlink();
        if !symlink && ma.mode() & 0o7777 != mb.mode() & 0o7777 {
            return Err(mismatch(
                rel,
                format!(
                    "mode differs: {:o} vs {:o} in the copy",
                    ma.mode() & 0o7777,
                    mb.mode() & 0o7777
                ),
            ));
        }
        if (ma.uid(), ma.gid()) != (mb.uid(), mb.gid()) {
            return Err(mismatch(
                rel,
                format!(
                    "owner differs: {}:{} vs {}:{} in the copy",
                    ma.uid(),
                    ma.gid(),
                    mb.uid(),
                    mb.gid()
                ),
            ));
        }
        let ft = ma.file_type();
        if (ft.is_char_device() || ft.is_block_device()) && ma.rdev() != mb.rdev() {
            return Err(mismatch(
                rel,
                format!(
                    "device number differs: {:#x} vs {:#x} in the copy",
                    ma.rdev(),
                    mb.rdev()
                ),
            ));
        }
        if symlink {
            let la = fs::read_link(pa).map_err(io_err(pa, "read symlink"))?;
            let lb = fs::read_link(pb).map_err(io_err(pb, "read symlink"))?;
            if la != lb {
                return Err(mismatch(
                    rel,
                    format!(
                        "symlink target differs: {} vs {} in the copy",
                        la.display(),
                        lb.display()
                    ),
                ));
            }
        }
        let leader_a = self.leaders_a.leader(ma, rel);
        let leader_b = self.leaders_b.leader(mb, rel);
        if leader_a != leader_b {
            return Err(mismatch(
                rel,
                format!(
                    "hardlink grouping differs: linked to {} in the original, to {} in the copy",
                    leader_a.display(),
                    leader_b.display()
                ),
            ));
        }
        let extra_link = leader_a.as_path() != rel;
        if ft.is_file() && !extra_link {
            if ma.size() != mb.size() {
                return Err(mismatch(
                    rel,
                    format!("size differs: {} vs {} in the copy", ma.size(), mb.size()),
                ));
            }
            if self.content {
                self.compare_content(pa, pb, rel)?;
            }
        }
        let xa = read_xattrs(pa).map_err(io_err(pa, "read xattrs of"))?;
        let xb = read_xattrs(pb).map_err(io_err(pb, "read xattrs of"))?;
        if xa != xb {
            return Err(mismatch(rel, describe_xattr_diff(&xa, &xb)));
        }
        if child && !ft.is_dir() {
            // Directory mtimes are compared after their entries (see `verify_tree`).
            compare_mtime(rel, ma, mb)?;
        }
        if child {
            if extra_link {
                self.stats.hardlinks += 1;
            } else if ft.is_dir() {
                self.stats.dirs += 1;
            } else if ft.is_file() {
                self.stats.files += 1;
                self.stats.bytes += ma.size();
            } else if symlink {
                self.stats.symlinks += 1;
            } else {
                self.stats.special += 1;
            }
        }
        Ok(())
    }

    fn compare_content(&mut self, pa: &Path, pb: &Path, rel: &Path) -> Result<(), CopyError> {
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(p)
                .map_err(io_err(p, "open"))
        };
        let mut fa = open(pa)?;
        let mut fb = open(pb)?;
        let mut offset = 0u64;
        loop {
            let na = read_full(&mut fa, &mut self.buf_a).map_err(io_err(pa, "read"))?;
            let nb = read_full(&mut fb, &mut self.buf_b).map_err(io_err(pb, "read"))?;
            if self.buf_a[..na] != self.buf_b[..nb] {
                let first = self.buf_a[..na]
                    .iter()
                    .zip(&self.buf_b[..nb])
                    .position(|(x, y)| x != y)
                    .unwrap_or(na.min(nb));
                return Err(mismatch(
                    rel,
                    format!("content differs at byte {}", offset + first as u64),
                ));
            }
            if na == 0 {
                return Ok(());
            }
            offset += na as u64;
        }
    }
}

fn compare_mtime(rel: &Path, ma: &Metadata, mb: &Metadata) -> Result<(), CopyError> {
    if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
        return Err(mismatch(
            rel,
            format!(
                "mtime differs: {}.{:09} vs {}.{:09} in the copy",
                ma.mtime(),
                ma.mtime_nsec(),
                mb.mtime(),
                mb.mtime_nsec()
            ),
        ));
    }
    Ok(())
}

/// Read until `buf` is full or EOF; returns the number of bytes read.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn describe_xattr_diff(xa: &[(CString, Vec<u8>)], xb: &[(CString, Vec<u8>)]) -> String {
    for (name, value) in xa {
        match xb.iter().find(|(n, _)| n == name) {
            None => return format!("xattr {} missing from the copy", name.to_string_lossy()),
            Some((_, v)) if v != value => {
                return format!("xattr {} has a different value", name.to_string_lossy())
            }
            Some(_) => {}
        }
    }
    for (name, _) in xb {
        if !xa.iter().any(|(n, _)| n == name) {
            return format!(
                "xattr {} in the copy is not in the original",
                name.to_string_lossy()
            );
        }
    }
    "xattrs differ".into()
}

/// Remove a directory tree that may contain read-only directories (adding `u+rwx` where
/// needed). Does not follow symlinks and does not cross mount points: the whole tree is checked
/// first and [`CopyError::MountPoint`] is returned before anything is deleted. `Ok` if `path`
/// does not exist; a non-directory `path` is simply unlinked.
pub fn remove_tree(path: &Path) -> Result<(), CopyError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path, "stat")(e)),
    };
    if !is_dir(&meta) {
        return remove_entry(path, false);
    }
    if is_mount_root(path).map_err(io_err(path, "check for a mount point at"))? {
        return Err(CopyError::MountPoint {
            path: path.to_path_buf(),
        });
    }
    debug!(path = %path.display(), "removing tree");
    let root = nix::unistd::geteuid().is_root();
    // Phase 1: find every directory (pre-order), check mount points, make directories usable.
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut stack = vec![(path.to_path_buf(), meta)];
    while let Some((dir, meta)) = stack.pop() {
        if !root && meta.mode() & 0o700 != 0o700 {
            fs::set_permissions(
                &dir,
                std::os::unix::fs::PermissionsExt::from_mode((meta.mode() | 0o700) & 0o7777),
            )
            .map_err(io_err(&dir, "make writable"))?;
        }
        for name in sorted_names(&dir)? {
            let child = dir.join(name);
            let cm = lstat(&child)?;
            if is_dir(&cm) {
                check_boundary(&child, &cm, meta.dev())?;
                stack.push((child, cm));
            }
        }
        dirs.push(dir);
    }
    // Phase 2: children before parents (reverse pre-order), unlink entries, then rmdir.
    for dir in dirs.iter().rev() {
        for name in sorted_names(dir)? {
            let child = dir.join(name);
            let is_subdir = match fs::symlink_metadata(&child) {
                Ok(m) => is_dir(&m),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&child, "stat")(e)),
            };
            remove_entry(&child, is_subdir)?;
        }
        remove_entry(dir, true)?;
    }
    Ok(())
}

fn remove_entry(path: &Path, dir: bool) -> Result<(), CopyError> {
    let result = if dir {
        fs::remove_dir(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(
            path,
            if dir { "remove directory" } else { "remove" },
        )(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    const SPARSE_SIZE: u64 = 10 << 20;
    const NSEC_MTIME: (i64, i64) = (1_600_000_000, 123_456_789);

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn set_mtime(path: &Path, sec: i64, nsec: i64) {
        nix::sys::stat::utimensat(
            AT_FDCWD,
            path,
            &TimeSpec::new(sec, nsec),
            &TimeSpec::new(sec, nsec),
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    fn setx(path: &Path, name: &str, value: &[u8]) {
        set_xattr(path, &CString::new(name).unwrap(), value).unwrap();
    }

    fn getx(path: &Path, name: &str) -> Option<Vec<u8>> {
        get_xattr(path, &CString::new(name).unwrap()).unwrap()
    }

    fn mismatch_of(err: CopyError) -> (PathBuf, String) {
        match err {
            CopyError::Mismatch { path, what } => (path, what),
            other => panic!("expected Mismatch, got {other:?}"),
        }
    }

    fn no_progress() -> impl FnMut(&Progress) {
        |_: &Progress| {}
    }

    /// Build the reference tree under `root`. Root-only parts (chown, device node) are added
    /// when running as root.
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

        nix::unistd::mkfifo(&root.join("fifo"), Mode::from_bits_truncate(0o640)).unwrap();
        let sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
        drop(sock);

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

        if is_root() {
            fs::write(root.join("owned"), b"owned by 1234").unwrap();
            nix::unistd::chown(
                &root.join("owned"),
                Some(Uid::from_raw(1234)),
                Some(Gid::from_raw(1234)),
            )
            .unwrap();
            nix::unistd::fchownat(
                AT_FDCWD,
                &root.join("rel-link"),
                Some(Uid::from_raw(1234)),
                Some(Gid::from_raw(4321)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .unwrap();
            nix::sys::stat::mknod(
                &root.join("null"),
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(1, 3),
            )
            .unwrap();
        } else {
            eprintln!("SKIPPED (needs root): chown to uid 1234 and char device in the test tree");
        }

        // Times last: children first, then their directories.
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

    #[test]
    fn copy_preserves_everything_and_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        fs::create_dir(&src).unwrap();
        fs::create_dir(&dst).unwrap();
        build_tree(&src);

        let stats = copy_tree(&src, &dst, &mut no_progress()).unwrap();
        let specials = if is_root() { 3 } else { 2 };
        assert_eq!(stats.special, specials, "{stats:?}");
        assert_eq!(stats.symlinks, 3);
        assert_eq!(stats.hardlinks, 1);
        assert_eq!(stats.dirs, 6); // a, a/b, a/b/c, empty, sticky, ro
        assert_eq!(stats.xattrs_skipped, 0);

        let verified = verify_tree(&src, &dst).unwrap();
        assert_eq!(
            CopyStats {
                reflinked_files: 0,
                xattrs_skipped: 0,
                ..stats
            },
            verified
        );

        // Hardlinks stay one inode.
        let h1 = lstat(&dst.join("h1")).unwrap();
        let h2 = lstat(&dst.join("a/h2")).unwrap();
        assert_eq!(h1.ino(), h2.ino());
        assert_eq!(h1.nlink(), 2);
        // Holes stay holes.
        let sparse = lstat(&dst.join("sparse")).unwrap();
        assert_eq!(sparse.size(), SPARSE_SIZE);
        assert!(
            sparse.blocks() * 512 < (1 << 20),
            "copy is not sparse: {} blocks",
            sparse.blocks()
        );
        let mut f = File::open(dst.join("sparse")).unwrap();
        let mut head = [0u8; 5];
        f.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"start");
        // Special bits.
        assert_eq!(lstat(&dst.join("suid")).unwrap().mode() & 0o7777, 0o4755);
        assert_eq!(lstat(&dst.join("sticky")).unwrap().mode() & 0o7777, 0o1777);
        assert_eq!(lstat(&dst.join("ro")).unwrap().mode() & 0o7777, 0o555);
        assert!(lstat(&dst.join("fifo")).unwrap().file_type().is_fifo());
        assert!(lstat(&dst.join("sock")).unwrap().file_type().is_socket());
        // Symlinks verbatim.
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
        // Xattrs.
        assert_eq!(
            getx(&dst.join("xattr"), "user.ws-ckpt.test").unwrap(),
            b"value\0with nul"
        );
        assert_eq!(getx(&dst.join("a"), "user.dir").unwrap(), b"on a directory");
        // Nanosecond times, also on directories and symlinks and the root.
        let deep = lstat(&dst.join("a/b/c/deep.txt")).unwrap();
        assert_eq!((deep.mtime(), deep.mtime_nsec()), NSEC_MTIME);
        let c = lstat(&dst.join("a/b/c")).unwrap();
        assert_eq!((c.mtime(), c.mtime_nsec()), (1_400_000_000, 999_999_999));
        let link = lstat(&dst.join("rel-link")).unwrap();
        assert_eq!((link.mtime(), link.mtime_nsec()), (1_500_000_000, 42));
        let root = lstat(&dst).unwrap();
        assert_eq!((root.mtime(), root.mtime_nsec()), (1_200_000_000, 5));
        assert_eq!(root.mode() & 0o7777, 0o750);
        if is_root() {
            let owned = lstat(&dst.join("owned")).unwrap();
            assert_eq!((owned.uid(), owned.gid()), (1234, 1234));
            assert_eq!((link.uid(), link.gid()), (1234, 4321));
            let null = lstat(&dst.join("null")).unwrap();
            assert!(null.file_type().is_char_device());
            assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
        }
        make_writable(&src);
        make_writable(&dst);
    }

    /// Copy the reference tree and return (tempdir, src, dst).
    fn copied_tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        fs::create_dir(&src).unwrap();
        fs::create_dir(&dst).unwrap();
        build_tree(&src);
        copy_tree(&src, &dst, &mut no_progress()).unwrap();
        verify_tree(&src, &dst).unwrap();
        (tmp, src, dst)
    }

    #[test]
    fn metadata_verify_skips_content_but_sees_writes() {
        let (_tmp, src, dst) = copied_tree();
        verify_tree_metadata(&src, &dst).unwrap();
        let p = dst.join("a/b/c/deep.txt");
        // Same size and mtime, other bytes: only a full verify sees it.
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(b"D", 0).unwrap();
        drop(f);
        set_mtime(&p, NSEC_MTIME.0, NSEC_MTIME.1);
        verify_tree_metadata(&src, &dst).unwrap();
        assert!(verify_tree(&src, &dst).is_err());
        // An ordinary write (mtime moves) is seen, and so is a new file.
        fs::write(src.join("a/b/c/deep.txt"), b"written later\n").unwrap();
        let (path, _) = mismatch_of(verify_tree_metadata(&src, &dst).unwrap_err());
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
        let (path, what) = mismatch_of(verify_tree(&src, &dst).unwrap_err());
        assert_eq!(path, Path::new("a/b/c/deep.txt"));
        assert!(what.contains("content differs at byte 0"), "{what}");
        make_writable(&src);
        make_writable(&dst);
    }

    #[test]
    fn verify_detects_byte_change_at_end_of_sparse_file() {
        let (_tmp, src, dst) = copied_tree();
        let p = dst.join("sparse");
        let before = lstat(&p).unwrap();
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(b"E", SPARSE_SIZE - 3).unwrap();
        drop(f);
        set_mtime(&p, before.mtime(), before.mtime_nsec());
        let (path, what) = mismatch_of(verify_tree(&src, &dst).unwrap_err());
        assert_eq!(path, Path::new("sparse"));
        assert!(
            what.contains(&format!("byte {}", SPARSE_SIZE - 3)),
            "{what}"
        );
        make_writable(&src);
        make_writable(&dst);
    }

    #[test]
    fn verify_detects_changed_mode() {
        let (_tmp, src, dst) = copied_tree();
        chmod(&dst.join("empty.txt"), 0o600);
        let (path, what) = mismatch_of(verify_tree(&src, &dst).unwrap_err());
        assert_eq!(path, Path::new("empty.txt"));
        assert!(what.contains("mode differs"), "{what}");
        make_writable(&src);
        make_writable(&dst);
    }

    #[test]
    fn verify_detects_extra_and_missing_entries() {
        let (_tmp, src, dst) = copied_tree();
        let a = lstat(&dst.join("a/b")).unwrap();
        fs::write(dst.join("a/b/extra"), b"new").unwrap();
        set_mtime(&dst.join("a/b"), a.mtime(), a.mtime_nsec());
        let (path, what) = mismatch_of(verify_tree(&src, &dst).unwrap_err());
        assert_eq!(path, Path::new("a/b/extra"));
        assert!(what.contains("extra"), "{what}");
        fs::remove_file(dst.join("a/b/extra")).unwrap();
        set_mtime(&dst.join("a/b"), a.mtime(), a.mtime_nsec());

        // An extra file without restoring the directory mtime is still reported by its path.
        fs::write(dst.join("zz-extra"), b"new").unwrap();
        let (path, _) = mismatch_of(verify_tree(&src, &dst).unwrap_err());
        assert_eq!(path, Path::new("zz-extra"));
        fs::remove_file(dst.join("zz-extra")).unwrap();
        verify_tree(&src, &dst).unwrap();

        fs::remove_file(dst.join("empty.txt")).unwrap();
        let (path, what) = mismatch_of(verify_tree(&src, &dst).unwrap_err());
        assert_eq!(path, Path::new("empty.txt"));
        assert!(what.contains("missing"), "{what}");
        make_writable(&src);
        make_writable(&dst);
    }

    #[test]
    fn verify_detects_broken_hardlink_symlink_xattr_and_mtime() {
        let (_tmp, src, dst) = copied_tree();
        // Hardlink split into two files with identical content and times.
        let h2 = dst.join("a/h2");
        let m = lstat(&h2).unwrap();
        let a_dir = lstat(&dst.join("a")).unwrap();
        fs::remove_file(&h2).unwrap();
        fs::write(&h2, b"linked").unwrap();
        set_mtime(&h2, m.mtime(), m.mtime_nsec());
        set_mtime(&dst.join("a"), a_dir.mtime(), a_dir.mtime_nsec());
        let (path, what) = mismatch_of(verify_tree(&src, &dst).unwrap_err());
        assert_eq!(path, Path::new("a/h2"));
        assert!(what.contains("hardlink"), "{what}");

        let (_tmp2, src, dst) = copied_tree();
        setx(&dst.join("xattr"), "user.ws-ckpt.test", b"other");
        let (path, what) = mismatch_of(verify_tree(&src, &dst).unwrap_err());
        assert_eq!(path, Path::new("xattr"));
        assert!(what.contains("user.ws-ckpt.test"), "{what}");

        let (_tmp3, src, dst) = copied_tree();
        set_mtime(&dst.join("a/b/c"), 1, 0);
        let (path, what) = mismatch_of(verify_tree(&src, &dst).unwrap_err());
        assert_eq!(path, Path::new("a/b/c"));
        assert!(what.contains("mtime"), "{what}");

        let (_tmp4, src, dst) = copied_tree();
        fs::remove_file(dst.join("dangling")).unwrap();
        std::os::unix::fs::symlink("elsewhere", dst.join("dangling")).unwrap();
        let (path, what) = mismatch_of(verify_tree(&src, &dst).unwrap_err());
        assert_eq!(path, Path::new("dangling"));
        assert!(what.contains("symlink target"), "{what}");
        for d in [&_tmp, &_tmp2, &_tmp3, &_tmp4] {
            make_writable(&d.path().join("src"));
            make_writable(&d.path().join("dst"));
        }
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
        let p = scan_tree(root).unwrap();
        assert_eq!(p.entries_total, 5);
        assert_eq!(p.bytes_total, 1024);
        assert_eq!((p.entries_done, p.bytes_done), (0, 0));
        assert!(matches!(
            scan_tree(&root.join("h")),
            Err(CopyError::Io { .. })
        ));
    }

    #[test]
    fn progress_is_rate_limited_and_ends_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        fs::create_dir(&src).unwrap();
        fs::create_dir(&dst).unwrap();
        for i in 0..300 {
            fs::write(src.join(format!("f{i}")), vec![i as u8; 5000]).unwrap();
        }
        let mut calls: Vec<Progress> = Vec::new();
        let start = Instant::now();
        let stats = copy_tree(&src, &dst, &mut |p: &Progress| calls.push(*p)).unwrap();
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
        verify_tree(&src, &dst).unwrap();
    }

    #[test]
    fn copy_refuses_bad_destinations() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        fs::create_dir(&src).unwrap();
        fs::create_dir(&dst).unwrap();
        fs::write(src.join("f"), b"x").unwrap();
        fs::write(dst.join("already"), b"x").unwrap();
        let err = copy_tree(&src, &dst, &mut no_progress()).unwrap_err();
        assert!(err.to_string().contains("non-empty"), "{err}");
        fs::create_dir(src.join("inner")).unwrap();
        let err = copy_tree(&src, &src.join("inner"), &mut no_progress()).unwrap_err();
        assert!(err.to_string().contains("inside the source"), "{err}");
        let err = copy_tree(&src.join("f"), &tmp.path().join("dst"), &mut no_progress());
        assert!(matches!(err, Err(CopyError::Io { .. })));
    }

    #[test]
    fn remove_tree_handles_read_only_dirs_and_never_follows_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"must survive").unwrap();
        let victim = tmp.path().join("victim");
        build_tree(&victim);
        std::os::unix::fs::symlink(&outside, victim.join("to-outside")).unwrap();
        fs::create_dir_all(victim.join("locked/deeper")).unwrap();
        fs::write(victim.join("locked/deeper/f"), b"x").unwrap();
        chmod(&victim.join("locked/deeper"), 0o500);
        chmod(&victim.join("locked"), 0o000);
        chmod(&victim, 0o555);

        remove_tree(&victim).unwrap();
        assert!(!victim.exists());
        assert_eq!(fs::read(outside.join("keep")).unwrap(), b"must survive");
        // Missing path is fine; a plain file or symlink is just unlinked.
        remove_tree(&victim).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        remove_tree(&link).unwrap();
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn deep_tree_does_not_overflow_the_stack() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        fs::create_dir(&dst).unwrap();
        let mut deep = src.clone();
        for _ in 0..400 {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("leaf"), b"bottom").unwrap();
        let stats = copy_tree(&src, &dst, &mut no_progress()).unwrap();
        assert_eq!((stats.dirs, stats.files), (400, 1));
        verify_tree(&src, &dst).unwrap();
        remove_tree(&dst).unwrap();
        assert!(!dst.exists());
    }

    /// Unmounts `target` when dropped (also on panic). Loop devices set up by `mount -o loop`
    /// are auto-cleared on unmount.
    struct MountGuard {
        target: PathBuf,
    }

    impl Drop for MountGuard {
        fn drop(&mut self) {
            let ok = Command::new("umount")
                .arg(&self.target)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.target).status();
            }
        }
    }

    fn run(cmd: &mut Command) {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn mount_points_are_never_crossed() {
        if !is_root() {
            eprintln!("SKIPPED (needs root): mount_points_are_never_crossed");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        fs::create_dir_all(src.join("sub/mnt")).unwrap();
        fs::create_dir(&dst).unwrap();
        fs::write(src.join("file"), b"keep me").unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(src.join("sub/mnt")));
        let _guard = MountGuard {
            target: src.join("sub/mnt"),
        };
        fs::write(src.join("sub/mnt/on-tmpfs"), b"other fs").unwrap();

        let err = copy_tree(&src, &dst, &mut no_progress()).unwrap_err();
        assert!(
            matches!(&err, CopyError::MountPoint { path } if path == &src.join("sub/mnt")),
            "{err:?}"
        );
        assert_eq!(
            fs::read_dir(&dst).unwrap().count(),
            0,
            "nothing copied before the check"
        );
        let err = remove_tree(&src).unwrap_err();
        assert!(matches!(err, CopyError::MountPoint { .. }), "{err:?}");
        assert!(
            src.join("file").exists(),
            "nothing deleted before the check"
        );
        assert!(src.join("sub/mnt/on-tmpfs").exists());
        let err = remove_tree(&src.join("sub/mnt")).unwrap_err();
        assert!(matches!(err, CopyError::MountPoint { .. }), "{err:?}");
    }

    #[test]
    fn btrfs_reflinks_nested_subvolumes_and_cross_fs_copy() {
        if !is_root() {
            eprintln!("SKIPPED (needs root): btrfs_reflinks_nested_subvolumes_and_cross_fs_copy");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("btrfs.img");
        File::create(&img).unwrap().set_len(256 << 20).unwrap();
        run(Command::new("mkfs.btrfs").arg("-q").arg(&img));
        let mnt = tmp.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        run(Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(&img)
            .arg(&mnt));
        let _guard = MountGuard {
            target: mnt.clone(),
        };

        let src = mnt.join("src");
        fs::create_dir(&src).unwrap();
        build_tree(&src);
        chmod(&src, 0o755);
        run(Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(src.join("nested")));
        fs::write(src.join("nested/in-subvol"), vec![3u8; 200_000]).unwrap();
        assert_eq!(lstat(&src.join("nested")).unwrap().ino(), 256);

        // Same filesystem: data is reflinked, the nested subvolume becomes a plain directory.
        let dst = mnt.join("dst");
        fs::create_dir(&dst).unwrap();
        let stats = copy_tree(&src, &dst, &mut no_progress()).unwrap();
        assert!(stats.reflinked_files > 0, "{stats:?}");
        assert_eq!(stats.reflinked_files, stats.files);
        verify_tree(&src, &dst).unwrap();
        let nested = lstat(&dst.join("nested")).unwrap();
        assert_ne!(
            nested.ino(),
            256,
            "nested subvolume must be copied as a plain directory"
        );
        assert_eq!(nested.dev(), lstat(&dst).unwrap().dev());
        let sparse = lstat(&dst.join("sparse")).unwrap();
        assert!(
            sparse.blocks() * 512 < (1 << 20),
            "{} blocks",
            sparse.blocks()
        );

        // Other filesystem: plain data copy, still faithful.
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let stats = copy_tree(&src, &outside, &mut no_progress()).unwrap();
        assert_eq!(stats.reflinked_files, 0, "{stats:?}");
        verify_tree(&src, &outside).unwrap();
        let sparse = lstat(&outside.join("sparse")).unwrap();
        assert!(
            sparse.blocks() * 512 < (1 << 20),
            "{} blocks",
            sparse.blocks()
        );

        // remove_tree deletes a tree containing a nested subvolume.
        remove_tree(&src).unwrap();
        assert!(!src.exists());
        remove_tree(&dst).unwrap();
        remove_tree(&outside).unwrap();
    }
}
