//! The read-only walk shared by the engines: every entry below a root directory, visited from
//! its parent's descriptor, directories entered by `openat2` (no symlinks, no mounts) and
//! checked to be the inode that was listed. Iterative: the stack holds one descriptor per level
//! of the current path (never one per pending sibling), bounded by [`MAX_DEPTH`].
//!
//! What it must not do: follow a symlink, enter another mount, recurse on the call stack, or
//! change anything.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::ctl::Ctl;
use super::error::{Op, TreeError};
use super::fd::{fstat, io_err, open_child_dir, os, read_names, statx_at, under, Dir, Kind, Stat};

/// Deepest directory level the engines walk (each level holds a descriptor or two).
pub(crate) const MAX_DEPTH: usize = 2048;

/// Refuse an entry of another mount than the tree's (`mnt_id`), or a mount root.
pub(crate) fn check_same_mount(st: &Stat, root_mnt: u64, path: &Path) -> Result<(), TreeError> {
    let other = st.mnt_id != 0 && root_mnt != 0 && st.mnt_id != root_mnt;
    if st.mount_root || other {
        return Err(TreeError::MountPoint {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// `statx` of entry `name` of `dir` (path `path` for messages).
pub(crate) fn stat_child(dir: &OwnedFd, name: &CString, path: &Path) -> Result<Stat, TreeError> {
    statx_at(dir.as_fd(), name).map_err(io_err(Op::Stat, path))
}

/// Open child directory `name` of `dir` and require it to be the inode `listed` described.
pub(crate) fn enter_child(
    dir: &OwnedFd,
    name: &CString,
    listed: &Stat,
    path: &Path,
) -> Result<OwnedFd, TreeError> {
    let fd = open_child_dir(dir.as_fd(), name).map_err(io_err(Op::OpenDir, path))?;
    let st = fstat(fd.as_fd()).map_err(io_err(Op::Stat, path))?;
    if st.identity() != listed.identity() {
        return Err(TreeError::Changed {
            path: path.to_path_buf(),
            what: "the directory was replaced by another one".into(),
        });
    }
    Ok(fd)
}

/// Names of directory `fd` (path `path` for messages).
pub(crate) fn list(fd: &OwnedFd, path: &Path) -> Result<Vec<CString>, TreeError> {
    read_names(fd.as_fd()).map_err(io_err(Op::ReadDir, path))
}

struct Frame {
    fd: OwnedFd,
    rel: PathBuf,
    pending: Vec<(CString, Stat)>,
}

/// Visit every entry below `root` with `visit(relative path, stat)`, parents before children;
/// a directory's entries are all visited before any of its subdirectories is entered.
pub(crate) fn walk(
    root: &Dir,
    ctl: &mut Ctl<'_>,
    mut visit: impl FnMut(&Path, &Stat) -> Result<(), TreeError>,
) -> Result<(), TreeError> {
    let root_st = root.stat()?;
    let label = root.label().to_path_buf();
    let fd = root
        .as_fd()
        .try_clone_to_owned()
        .map_err(io_err(Op::OpenDir, &label))?;
    let mut stack: Vec<Frame> = Vec::new();
    let mut next = Some((fd, PathBuf::new()));
    loop {
        if let Some((fd, rel)) = next.take() {
            if stack.len() >= MAX_DEPTH {
                return Err(TreeError::TooDeep {
                    path: under(&label, &rel),
                    limit: MAX_DEPTH,
                });
            }
            let mut pending = Vec::new();
            for name in list(&fd, &under(&label, &rel))? {
                let child = rel.join(os(&name));
                let path = label.join(&child);
                let st = stat_child(&fd, &name, &path)?;
                check_same_mount(&st, root_st.mnt_id, &path)?;
                visit(&child, &st)?;
                if st.kind == Kind::Dir {
                    pending.push((name, st));
                }
                ctl.tick()?;
            }
            pending.reverse();
            stack.push(Frame { fd, rel, pending });
        }
        let Some(top) = stack.last_mut() else { break };
        match top.pending.pop() {
            Some((name, st)) => {
                let rel = top.rel.join(os(&name));
                let fd = enter_child(&top.fd, &name, &st, &under(&label, &rel))?;
                next = Some((fd, rel));
            }
            None => {
                stack.pop();
            }
        }
    }
    Ok(())
}
