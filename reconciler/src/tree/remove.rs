//! Removal of a tree by descriptors. The root is named by its parent's descriptor and its name,
//! and must be the inode the caller recorded ([`TreeError::IdentityMismatch`] otherwise, before
//! anything is touched). A first pass checks the whole tree for mount points (nothing is deleted
//! when one is found); the second deletes children before parents with `unlinkat` relative to
//! the descriptor of the directory holding them, so a directory swapped for a symlink mid-walk
//! is never followed (`unlinkat` of a name never follows it; entering uses `openat2` without
//! symlinks). Read-only directories of the owner are made usable with `chmod` on their own
//! `O_PATH` descriptor (root needs no such change).
//!
//! What it must not do: follow a symlink, enter another mount, delete anything outside the tree
//! it was given, or recurse on the call stack.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::ctl::Ctl;
use super::error::{Op, TreeError};
use super::fd::{
    cstring, fstat, io_err, open_child_path, os, proc_path, reopen, statx_at, under, Dir, Identity,
    Kind, Stat,
};
use super::walk::{check_same_mount, list, stat_child, MAX_DEPTH};

/// What [`remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Removed {
    /// There was nothing at that name.
    Absent,
    /// The tree was removed.
    Removed {
        /// Entries removed, the root included.
        entries: u64,
    },
}

/// How often a directory that gained entries during its removal is emptied again.
const MAX_ROUNDS: u32 = 3;

/// Open directory `name` of `dir` for removal: `O_PATH`, checked to be inode `listed`, given
/// `u+rwx` when it lacks it and we are not root, then opened for reading.
fn enter_for_removal(
    dir: &OwnedFd,
    name: &CStr,
    listed: &Stat,
    path: &Path,
    root: bool,
) -> Result<OwnedFd, TreeError> {
    let pfd = open_child_path(dir.as_fd(), name).map_err(io_err(Op::OpenDir, path))?;
    let st = fstat(pfd.as_fd()).map_err(io_err(Op::Stat, path))?;
    if st.identity() != listed.identity() || st.kind != Kind::Dir {
        return Err(TreeError::Changed {
            path: path.to_path_buf(),
            what: "the directory was replaced by another entry".into(),
        });
    }
    if !root && st.perm & 0o700 != 0o700 {
        let p = proc_path(pfd.as_fd());
        // SAFETY: `p` is NUL-terminated and names exactly the inode of `pfd`.
        if unsafe { libc::chmod(p.as_ptr(), (st.perm | 0o700) as libc::mode_t) } != 0 {
            return Err(io_err(Op::Chmod, path)(io::Error::last_os_error()));
        }
    }
    reopen(pfd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY).map_err(io_err(Op::OpenDir, path))
}

/// One level of the checking pass: descriptor, relative path, subdirectories still to enter.
type CheckFrame = (OwnedFd, PathBuf, Vec<(CString, Stat)>);

struct Frame {
    fd: OwnedFd,
    rel: PathBuf,
    name: CString,
    identity: Identity,
    pending: Vec<(CString, Stat)>,
    rounds: u32,
}

struct Remover<'c, 'a> {
    ctl: &'c mut Ctl<'a>,
    label: PathBuf,
    mnt: u64,
    root: bool,
}

impl Remover<'_, '_> {
    /// Pass 1: every directory below `fd` is checked for mount points (and made usable).
    fn check(&mut self, fd: OwnedFd) -> Result<(), TreeError> {
        let mut stack: Vec<CheckFrame> = Vec::new();
        let mut next = Some((fd, PathBuf::new()));
        loop {
            if let Some((fd, rel)) = next.take() {
                if stack.len() >= MAX_DEPTH {
                    return Err(TreeError::TooDeep {
                        path: under(&self.label, &rel),
                        limit: MAX_DEPTH,
                    });
                }
                let mut pending = Vec::new();
                for name in list(&fd, &under(&self.label, &rel))? {
                    let path = self.label.join(rel.join(os(&name)));
                    let st = stat_child(&fd, &name, &path)?;
                    check_same_mount(&st, self.mnt, &path)?;
                    self.ctl.progress.entries_total += 1;
                    if st.kind == Kind::Dir {
                        pending.push((name, st));
                    }
                    self.ctl.tick()?;
                }
                stack.push((fd, rel, pending));
            }
            let Some((fd, rel, pending)) = stack.last_mut() else {
                return Ok(());
            };
            match pending.pop() {
                Some((name, st)) => {
                    let rel = rel.join(os(&name));
                    let child =
                        enter_for_removal(fd, &name, &st, &under(&self.label, &rel), self.root)?;
                    next = Some((child, rel));
                }
                None => {
                    stack.pop();
                }
            }
        }
    }

    /// Unlink the non-directories of `frame.fd` and queue its subdirectories.
    fn empty(&mut self, frame: &mut Frame) -> Result<(), TreeError> {
        for name in list(&frame.fd, &under(&self.label, &frame.rel))? {
            let path = self.label.join(frame.rel.join(os(&name)));
            let st = match statx_at(frame.fd.as_fd(), &name) {
                Ok(st) => st,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(io_err(Op::Stat, &path)(e)),
            };
            check_same_mount(&st, self.mnt, &path)?;
            if st.kind == Kind::Dir {
                frame.pending.push((name, st));
                continue;
            }
            // SAFETY: `name` is NUL-terminated and the descriptor is live.
            let rc = unsafe { libc::unlinkat(frame.fd.as_raw_fd(), name.as_ptr(), 0) };
            if rc == 0 {
                self.ctl.progress.entries_done += 1;
            } else {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::ENOENT) => {}
                    // It became a directory since it was listed: remove it as one.
                    Some(libc::EISDIR) => {
                        if let Ok(st) = statx_at(frame.fd.as_fd(), &name) {
                            if st.kind == Kind::Dir {
                                frame.pending.push((name, st));
                                continue;
                            }
                        }
                        return Err(io_err(Op::Remove, &path)(e));
                    }
                    _ => return Err(io_err(Op::Remove, &path)(e)),
                }
            }
            self.ctl.tick()?;
        }
        frame.pending.reverse();
        Ok(())
    }

    /// Remove directory `frame.name` from `parent`; `Ok(false)` when it gained entries and
    /// must be emptied again.
    fn rmdir(&mut self, parent: &OwnedFd, frame: &Frame) -> Result<bool, TreeError> {
        let path = under(&self.label, &frame.rel);
        // SAFETY: the name is NUL-terminated and the descriptor is live.
        let rc =
            unsafe { libc::unlinkat(parent.as_raw_fd(), frame.name.as_ptr(), libc::AT_REMOVEDIR) };
        if rc == 0 {
            self.ctl.progress.entries_done += 1;
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(true),
            Some(libc::ENOTEMPTY | libc::EEXIST) => {
                let now = statx_at(parent.as_fd(), &frame.name).map_err(io_err(Op::Stat, &path))?;
                if now.identity() != frame.identity {
                    return Err(TreeError::Changed {
                        path,
                        what: "the directory was replaced by another one".into(),
                    });
                }
                if frame.rounds >= MAX_ROUNDS {
                    return Err(TreeError::Changed {
                        path,
                        what: "entries keep appearing in it".into(),
                    });
                }
                Ok(false)
            }
            _ => Err(io_err(Op::RemoveDir, &path)(e)),
        }
    }
}

/// Remove the tree at `name` in `parent`, which must be inode `expected`. `Absent` when there is
/// nothing at that name; a non-directory with the expected identity is simply unlinked.
pub(crate) fn remove(
    parent: &Dir,
    name: &OsStr,
    expected: Identity,
    ctl: &mut Ctl<'_>,
) -> Result<Removed, TreeError> {
    let path = parent.child_label(name);
    if name.is_empty() || name == "." || name == ".." || name.as_encoded_bytes().contains(&b'/') {
        return Err(io_err(Op::Remove, &path)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a single file name",
        )));
    }
    let cname = cstring(name).map_err(io_err(Op::Remove, &path))?;
    let Some(st) = parent.child_stat(name)? else {
        return Ok(Removed::Absent);
    };
    if st.identity() != expected {
        return Err(TreeError::IdentityMismatch {
            path,
            expected,
            found: st.identity(),
        });
    }
    let pst = parent.stat()?;
    let pfd = parent
        .as_fd()
        .try_clone_to_owned()
        .map_err(io_err(Op::OpenDir, parent.label()))?;
    if st.kind != Kind::Dir {
        // SAFETY: the name is NUL-terminated and the descriptor is live.
        if unsafe { libc::unlinkat(pfd.as_raw_fd(), cname.as_ptr(), 0) } != 0 {
            return Err(io_err(Op::Remove, &path)(io::Error::last_os_error()));
        }
        return Ok(Removed::Removed { entries: 1 });
    }
    check_same_mount(&st, pst.mnt_id, &path)?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut r = Remover {
        ctl,
        label: path.clone(),
        mnt: st.mnt_id,
        root,
    };
    tracing::debug!(path = %path.display(), "removing tree");
    r.ctl.progress.entries_total = 1;
    r.check(enter_for_removal(&pfd, &cname, &st, &path, root)?)?;

    let mut stack: Vec<Frame> = Vec::new();
    let mut next = Some(Frame {
        fd: enter_for_removal(&pfd, &cname, &st, &path, root)?,
        rel: PathBuf::new(),
        name: cname,
        identity: expected,
        pending: Vec::new(),
        rounds: 0,
    });
    loop {
        if let Some(mut frame) = next.take() {
            if stack.len() >= MAX_DEPTH {
                return Err(TreeError::TooDeep {
                    path: under(&r.label, &frame.rel),
                    limit: MAX_DEPTH,
                });
            }
            r.empty(&mut frame)?;
            stack.push(frame);
        }
        let Some(top) = stack.last_mut() else { break };
        if let Some((name, st)) = top.pending.pop() {
            let rel = top.rel.join(os(&name));
            let fd = enter_for_removal(&top.fd, &name, &st, &under(&r.label, &rel), root)?;
            next = Some(Frame {
                fd,
                rel,
                name,
                identity: st.identity(),
                pending: Vec::new(),
                rounds: 0,
            });
            continue;
        }
        let Some(mut done) = stack.pop() else { break };
        let parent_fd = stack.last().map(|f| &f.fd).unwrap_or(&pfd);
        if !r.rmdir(parent_fd, &done)? {
            done.rounds += 1;
            next = Some(done);
        }
    }
    let entries = r.ctl.progress.entries_done;
    r.ctl.finish();
    Ok(Removed::Removed { entries })
}
