//! The copy engine: recreate every entry below a source directory descriptor inside an empty
//! destination directory descriptor — file types, modes (incl. setuid/setgid/sticky), owners,
//! nanosecond times, xattrs, hardlink groups, sparse holes (`FICLONE` when possible, else the
//! data segments), verbatim symlinks, FIFOs, sockets and device nodes — then give the
//! destination root the source root's metadata.
//!
//! Every source entry is opened relative to its parent's descriptor (`O_PATH|O_NOFOLLOW`,
//! checked to be the inode that was listed; regular files re-opened for reading through
//! `/proc/self/fd`), every destination entry is created relative to its parent's descriptor
//! (`O_CREAT|O_EXCL|O_NOFOLLOW`, `mkdirat`, `symlinkat`, `mknodat`) and its metadata is applied
//! to the descriptor of the entry just created. A scan first counts the work, refuses mount
//! points and — when copying as a non-root owner — every entry that owner could not recreate
//! as herself, before anything is written.
//!
//! What it must not do: follow a symlink, cross into another mount (nested btrfs subvolumes are
//! the same mount and are copied as plain directories), hold a whole file in memory, recurse on
//! the call stack, or change anything outside the destination.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::creds::Owner;
use super::ctl::Ctl;
use super::error::{Op, TreeError};
use super::fd::{
    fstat, io_err, open_beneath_path, open_child_path, os, proc_path, read_names, reopen, under,
    Dir, Identity, Kind, Stat,
};
use super::sparse::{Copied, DataCopier};
use super::walk::{check_same_mount, enter_child, list, stat_child, walk, MAX_DEPTH};
use super::xattr::{self, Target, Xattrs};
use super::{Progress, TreeStats};

/// Refuse entries `owner` cannot recreate as herself: another owner, a group she is not in, a
/// device node. `None` (root) recreates anything.
fn check_recreatable(owner: Option<&Owner>, st: &Stat, path: &Path) -> Result<(), TreeError> {
    let Some(owner) = owner else { return Ok(()) };
    let what = if matches!(st.kind, Kind::CharDevice | Kind::BlockDevice) {
        Some("it is a device node".to_string())
    } else if st.uid != owner.uid {
        Some(format!("it belongs to uid {}", st.uid))
    } else if !owner.has_group(st.gid) {
        Some(format!(
            "its group is gid {}, which uid {} is not a member of",
            st.gid, owner.uid
        ))
    } else {
        None
    };
    match what {
        Some(what) => Err(TreeError::NotRecreatable {
            path: path.to_path_buf(),
            uid: owner.uid,
            what,
        }),
        None => Ok(()),
    }
}

/// Count entries and bytes below `src` (apparent size of regular files, each hardlinked inode
/// once), refusing mount points, a directory with identity `exclude` (the destination) and —
/// with `owner` — entries that owner could not recreate.
pub(crate) fn scan(
    src: &Dir,
    exclude: Option<Identity>,
    owner: Option<&Owner>,
    ctl: &mut Ctl<'_>,
) -> Result<Progress, TreeError> {
    let root = src.stat()?;
    if root.kind != Kind::Dir {
        return Err(io_err(Op::OpenDir, src.label())(
            io::Error::from_raw_os_error(libc::ENOTDIR),
        ));
    }
    check_recreatable(owner, &root, src.label())?;
    let label = src.label().to_path_buf();
    let mut totals = Progress::default();
    let mut seen: HashSet<Identity> = HashSet::new();
    walk(src, ctl, |rel, st| {
        let path = label.join(rel);
        totals.entries_total += 1;
        check_recreatable(owner, st, &path)?;
        if st.kind == Kind::Dir && Some(st.identity()) == exclude {
            return Err(TreeError::BadDestination {
                path,
                what: "it is inside the source".into(),
            });
        }
        if st.kind == Kind::File && (st.nlink <= 1 || seen.insert(st.identity())) {
            totals.bytes_total += st.size;
        }
        Ok(())
    })?;
    Ok(totals)
}

/// One directory level of the copy.
struct Frame {
    src: OwnedFd,
    dst: OwnedFd,
    rel: PathBuf,
    /// The source directory as listed by its parent (metadata applied when it is done).
    st: Stat,
    /// Subdirectories still to enter (already created in `dst`), popped from the end.
    pending: Vec<(CString, Stat)>,
}

/// How to apply metadata to a new destination entry.
#[derive(Clone, Copy)]
enum Dest<'a> {
    /// A real descriptor (regular file, directory).
    Fd(BorrowedFd<'a>),
    /// An `O_PATH` descriptor (symlink, special file).
    Path(BorrowedFd<'a>),
}

struct Copier<'c, 'a> {
    ctl: &'c mut Ctl<'a>,
    stats: TreeStats,
    data: DataCopier,
    /// Source inode (nlink > 1) → (destination path below the root, destination inode).
    links: HashMap<Identity, (PathBuf, Identity)>,
    src_label: PathBuf,
    dst_label: PathBuf,
    src_mnt: u64,
    dst_root: OwnedFd,
}

fn dup(fd: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, TreeError> {
    fd.try_clone_to_owned().map_err(io_err(Op::OpenDir, path))
}

fn cvt(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn timespec((sec, nsec): (i64, u32)) -> libc::timespec {
    libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as libc::c_long,
    }
}

/// Copy the contents of `src` into the empty directory `dst`, then give `dst` the mode, owner,
/// times and xattrs of `src`. With `owner`, entries that owner could not recreate are refused
/// before anything is written. Ends with `syncfs(dst)`.
pub(crate) fn copy(
    src: &Dir,
    dst: &Dir,
    owner: Option<&Owner>,
    ctl: &mut Ctl<'_>,
) -> Result<TreeStats, TreeError> {
    let src_st = src.stat()?;
    let dst_st = dst.stat()?;
    if src_st.identity() == dst_st.identity() {
        return Err(TreeError::BadDestination {
            path: dst.label().to_path_buf(),
            what: "it is the source itself, so it is inside the source".into(),
        });
    }
    if !read_names(dst.as_fd())
        .map_err(io_err(Op::ReadDir, dst.label()))?
        .is_empty()
    {
        return Err(TreeError::BadDestination {
            path: dst.label().to_path_buf(),
            what: "it is a non-empty directory".into(),
        });
    }
    let totals = scan(src, Some(dst_st.identity()), owner, ctl)?;
    ctl.progress = totals;
    tracing::debug!(src = %src.label().display(), dst = %dst.label().display(),
        entries = totals.entries_total, bytes = totals.bytes_total, "copying tree");
    let mut c = Copier {
        ctl,
        stats: TreeStats::default(),
        data: DataCopier::new(),
        links: HashMap::new(),
        src_label: src.label().to_path_buf(),
        dst_label: dst.label().to_path_buf(),
        src_mnt: src_st.mnt_id,
        dst_root: dup(dst.as_fd(), dst.label())?,
    };
    let first = c.enter(
        dup(src.as_fd(), src.label())?,
        dup(dst.as_fd(), dst.label())?,
        PathBuf::new(),
        src_st,
    )?;
    let mut stack = vec![first];
    loop {
        let depth = stack.len();
        let Some(top) = stack.last_mut() else { break };
        if let Some((name, st)) = top.pending.pop() {
            let rel = top.rel.join(os(&name));
            let src_path = under(&c.src_label, &rel);
            let dst_path = under(&c.dst_label, &rel);
            if depth >= MAX_DEPTH {
                return Err(TreeError::TooDeep {
                    path: src_path,
                    limit: MAX_DEPTH,
                });
            }
            let sfd = enter_child(&top.src, &name, &st, &src_path)?;
            let dfd = super::fd::open_child_dir(top.dst.as_fd(), &name)
                .map_err(io_err(Op::OpenDir, &dst_path))?;
            let frame = c.enter(sfd, dfd, rel, st)?;
            stack.push(frame);
        } else if let Some(done) = stack.pop() {
            let xattrs = xattr::read_all(Target::Fd(done.src.as_fd()))
                .map_err(io_err(Op::ListXattrs, &under(&c.src_label, &done.rel)))?;
            c.apply_meta(
                Dest::Fd(done.dst.as_fd()),
                &done.st,
                &xattrs,
                &under(&c.dst_label, &done.rel),
            )?;
        }
    }
    // SAFETY: plain syncfs on a live descriptor.
    cvt(unsafe { libc::syncfs(dst.as_fd().as_raw_fd()) }).map_err(io_err(Op::Sync, dst.label()))?;
    c.ctl.finish();
    tracing::debug!(src = %src.label().display(), dst = %dst.label().display(),
        stats = ?c.stats, "copied tree");
    Ok(c.stats)
}

impl Copier<'_, '_> {
    /// List source directory `src`, copy its non-directories and create its subdirectories in
    /// `dst`; the subdirectories are entered later (see [`copy`]).
    fn enter(
        &mut self,
        src: OwnedFd,
        dst: OwnedFd,
        rel: PathBuf,
        st: Stat,
    ) -> Result<Frame, TreeError> {
        let mut pending = Vec::new();
        for name in list(&src, &under(&self.src_label, &rel))? {
            let child = rel.join(os(&name));
            let src_path = self.src_label.join(&child);
            let cst = stat_child(&src, &name, &src_path)?;
            check_same_mount(&cst, self.src_mnt, &src_path)?;
            if cst.kind == Kind::Dir {
                // SAFETY: `name` is NUL-terminated and the descriptor is live.
                cvt(unsafe { libc::mkdirat(dst.as_raw_fd(), name.as_ptr(), 0o700) })
                    .map_err(io_err(Op::CreateDir, &self.dst_label.join(&child)))?;
                self.stats.dirs += 1;
                pending.push((name, cst));
            } else {
                self.copy_non_dir(&src, &dst, &name, &cst, &child)?;
            }
            self.ctl.progress.entries_done += 1;
            self.ctl.tick()?;
        }
        pending.reverse();
        Ok(Frame {
            src,
            dst,
            rel,
            st,
            pending,
        })
    }

    fn copy_non_dir(
        &mut self,
        src_dir: &OwnedFd,
        dst_dir: &OwnedFd,
        name: &CStr,
        listed: &Stat,
        rel: &Path,
    ) -> Result<(), TreeError> {
        let src_path = self.src_label.join(rel);
        let dst_path = self.dst_label.join(rel);
        if listed.nlink > 1 {
            if let Some((first, first_id)) = self.links.get(&listed.identity()).cloned() {
                self.link(&first, first_id, dst_dir, name, &dst_path)?;
                self.stats.hardlinks += 1;
                return Ok(());
            }
        }
        let sfd = open_child_path(src_dir.as_fd(), name).map_err(io_err(Op::Open, &src_path))?;
        let st = fstat(sfd.as_fd()).map_err(io_err(Op::Stat, &src_path))?;
        if st.identity() != listed.identity() || st.kind != listed.kind {
            return Err(TreeError::Changed {
                path: src_path,
                what: "the entry was replaced by another one".into(),
            });
        }
        let created = match st.kind {
            Kind::File => {
                let rfd =
                    reopen(sfd.as_fd(), libc::O_RDONLY).map_err(io_err(Op::Open, &src_path))?;
                // SAFETY: `name` is NUL-terminated and the descriptor is live.
                let raw = unsafe {
                    libc::openat(
                        dst_dir.as_raw_fd(),
                        name.as_ptr(),
                        libc::O_WRONLY
                            | libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        0o600 as libc::c_uint,
                    )
                };
                if raw < 0 {
                    return Err(io_err(Op::Create, &dst_path)(io::Error::last_os_error()));
                }
                // SAFETY: openat just returned this descriptor; nothing else owns it.
                let dfd = unsafe { OwnedFd::from_raw_fd(raw) };
                let how = self.data.copy(
                    rfd.as_fd(),
                    dfd.as_fd(),
                    st.size,
                    (&src_path, &dst_path),
                    self.ctl,
                )?;
                self.stats.files += 1;
                self.stats.bytes += st.size;
                if how == Copied::Reflinked {
                    self.stats.reflinked_files += 1;
                }
                let xattrs = xattr::read_all(Target::Fd(rfd.as_fd()))
                    .map_err(io_err(Op::ListXattrs, &src_path))?;
                self.apply_meta(Dest::Fd(dfd.as_fd()), &st, &xattrs, &dst_path)?;
                dfd
            }
            Kind::Symlink => {
                let target = readlink(sfd.as_fd()).map_err(io_err(Op::ReadLink, &src_path))?;
                // SAFETY: both strings are NUL-terminated and the descriptor is live.
                cvt(unsafe {
                    libc::symlinkat(target.as_ptr(), dst_dir.as_raw_fd(), name.as_ptr())
                })
                .map_err(io_err(Op::CreateSymlink, &dst_path))?;
                self.stats.symlinks += 1;
                self.created_path(
                    dst_dir,
                    name,
                    Kind::Symlink,
                    &st,
                    sfd.as_fd(),
                    (&src_path, &dst_path),
                )?
            }
            kind => {
                let mode = kind.mode_bits() | 0o600;
                // SAFETY: `name` is NUL-terminated and the descriptor is live.
                cvt(unsafe {
                    libc::mknodat(
                        dst_dir.as_raw_fd(),
                        name.as_ptr(),
                        mode as libc::mode_t,
                        st.rdev as libc::dev_t,
                    )
                })
                .map_err(io_err(Op::CreateSpecial, &dst_path))?;
                self.stats.special += 1;
                self.created_path(
                    dst_dir,
                    name,
                    kind,
                    &st,
                    sfd.as_fd(),
                    (&src_path, &dst_path),
                )?
            }
        };
        if st.nlink > 1 {
            let id = fstat(created.as_fd())
                .map_err(io_err(Op::Stat, &dst_path))?
                .identity();
            self.links.insert(st.identity(), (rel.to_path_buf(), id));
        }
        Ok(())
    }

    /// Open the symlink or special file just created as `name` in `dst_dir` (`O_PATH`), check
    /// its type, and give it the metadata of the source `src_fd`.
    fn created_path(
        &mut self,
        dst_dir: &OwnedFd,
        name: &CStr,
        kind: Kind,
        st: &Stat,
        src_fd: BorrowedFd<'_>,
        (src_path, dst_path): (&Path, &Path),
    ) -> Result<OwnedFd, TreeError> {
        let dfd = open_child_path(dst_dir.as_fd(), name).map_err(io_err(Op::Open, dst_path))?;
        let dst = fstat(dfd.as_fd()).map_err(io_err(Op::Stat, dst_path))?;
        if dst.kind != kind {
            return Err(TreeError::Changed {
                path: dst_path.to_path_buf(),
                what: format!(
                    "a {} appeared where a {} was created",
                    dst.kind.name(),
                    kind.name()
                ),
            });
        }
        let xattrs =
            xattr::read_all(Target::Path(src_fd)).map_err(io_err(Op::ListXattrs, src_path))?;
        self.apply_meta(Dest::Path(dfd.as_fd()), st, &xattrs, dst_path)?;
        Ok(dfd)
    }

    /// Create hard link `name` in `dst_dir` to the entry copied earlier at `first` (below the
    /// destination root), checked to still be inode `first_id`.
    fn link(
        &mut self,
        first: &Path,
        first_id: Identity,
        dst_dir: &OwnedFd,
        name: &CStr,
        dst_path: &Path,
    ) -> Result<(), TreeError> {
        let fd = open_beneath_path(self.dst_root.as_fd(), first)
            .map_err(io_err(Op::Link, &self.dst_label.join(first)))?;
        let st = fstat(fd.as_fd()).map_err(io_err(Op::Stat, dst_path))?;
        if st.identity() != first_id {
            return Err(TreeError::Changed {
                path: self.dst_label.join(first),
                what: "the first name of a hardlink group was replaced".into(),
            });
        }
        // SAFETY: empty path with AT_EMPTY_PATH names the descriptor itself.
        let rc = unsafe {
            libc::linkat(
                fd.as_raw_fd(),
                c"".as_ptr(),
                dst_dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        // Without CAP_DAC_READ_SEARCH, AT_EMPTY_PATH is refused: link through the magic link.
        let p = proc_path(fd.as_fd());
        // SAFETY: both strings are NUL-terminated; AT_SYMLINK_FOLLOW follows only the magic link.
        cvt(unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                p.as_ptr(),
                dst_dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        })
        .map_err(io_err(Op::Link, dst_path))
    }

    /// Give a new entry the owner, xattrs, mode and times of `st` (in that order: chown clears
    /// setuid bits and capabilities, user xattrs need write permission, times come last).
    /// Inherited ACLs the source does not have are removed.
    fn apply_meta(
        &mut self,
        dest: Dest<'_>,
        st: &Stat,
        xattrs: &Xattrs,
        path: &Path,
    ) -> Result<(), TreeError> {
        let (target, raw) = match dest {
            Dest::Fd(fd) => (Target::Fd(fd), fd.as_raw_fd()),
            Dest::Path(fd) => (Target::Path(fd), fd.as_raw_fd()),
        };
        let rc = match dest {
            // SAFETY: plain fchown on a live descriptor.
            Dest::Fd(_) => unsafe { libc::fchown(raw, st.uid, st.gid) },
            // SAFETY: empty path with AT_EMPTY_PATH names the (O_PATH) descriptor itself.
            Dest::Path(_) => unsafe {
                libc::fchownat(
                    raw,
                    c"".as_ptr(),
                    st.uid,
                    st.gid,
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            },
        };
        cvt(rc).map_err(io_err(Op::Chown, path))?;
        for (name, value) in xattrs {
            match xattr::set(target, name, value) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    tracing::debug!(path = %path.display(), name = ?name, "xattr not supported, skipped");
                    self.stats.xattrs_skipped += 1;
                }
                Err(e) => return Err(io_err(Op::SetXattr, path)(e)),
            }
        }
        for name in xattr::names(target).map_err(io_err(Op::ListXattrs, path))? {
            if xattr::is_inheritable_acl(&name) && !xattrs.iter().any(|(n, _)| *n == name) {
                xattr::remove(target, &name).map_err(io_err(Op::RemoveXattr, path))?;
            }
        }
        if st.kind != Kind::Symlink {
            let rc = match dest {
                // SAFETY: plain fchmod on a live descriptor.
                Dest::Fd(_) => unsafe { libc::fchmod(raw, st.perm as libc::mode_t) },
                Dest::Path(fd) => {
                    let p = proc_path(fd);
                    // SAFETY: `p` is NUL-terminated; it names exactly the inode of `fd`.
                    unsafe { libc::chmod(p.as_ptr(), st.perm as libc::mode_t) }
                }
            };
            cvt(rc).map_err(io_err(Op::Chmod, path))?;
        }
        let times = [timespec(st.atime), timespec(st.mtime)];
        let rc = match dest {
            // SAFETY: `times` holds two timespecs, as futimens requires.
            Dest::Fd(_) => unsafe { libc::futimens(raw, times.as_ptr()) },
            Dest::Path(fd) => {
                // SAFETY: empty path with AT_EMPTY_PATH names the descriptor itself.
                let rc = unsafe {
                    libc::utimensat(
                        raw,
                        c"".as_ptr(),
                        times.as_ptr(),
                        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                    )
                };
                if rc == 0 {
                    0
                } else {
                    // Kernels before 5.8 have no AT_EMPTY_PATH here: use the magic link.
                    let p = proc_path(fd);
                    // SAFETY: `p` is NUL-terminated; `times` holds two timespecs.
                    unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) }
                }
            }
        };
        cvt(rc).map_err(io_err(Op::SetTimes, path))
    }
}

/// Target of the symlink held by `O_PATH` descriptor `fd`.
pub(crate) fn readlink(fd: BorrowedFd<'_>) -> io::Result<CString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `buf` is writable for its length; the empty path names the descriptor itself.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    if n >= buf.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buf.truncate(n);
    CString::new(buf).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}
