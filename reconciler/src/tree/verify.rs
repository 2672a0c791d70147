//! Comparison of two trees by descriptors: a full verification (names, types, modes, owners,
//! sizes, symlink targets, device numbers, mtimes, xattrs, hardlink grouping and content), a
//! metadata-only verification (everything but content: cheap, used to notice that a tree changed
//! after it was fully verified), and the subset proof ("every entry of A is in B, equal"), which
//! recovery uses to finish removing a half-removed original.
//!
//! Content is compared by the data/hole maps of both files ([`super::sparse::compare`]): holes are
//! never read.
//!
//! What it must not do: follow a symlink, cross into another mount, change anything, or hold
//! more than one buffer per side of a file in memory.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::copy::readlink;
use super::ctl::Ctl;
use super::error::{Op, TreeError};
use super::fd::{fstat, io_err, open_child_path, os, reopen, under, Dir, Identity, Kind, Stat};
use super::sparse::{compare, CompareBufs, Difference};
use super::walk::{check_same_mount, enter_child, list, stat_child, MAX_DEPTH};
use super::xattr::{self, Target};
use super::TreeStats;

/// What a comparison proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Compare {
    /// B is a faithful copy of A, content included.
    Full,
    /// B is a faithful copy of A, content not read (sizes and mtimes are compared).
    Metadata,
    /// Every entry of A is in B with equal metadata and content; B may have more entries.
    /// Directory mtimes are not compared (removing entries changes them) and a directory's
    /// mode may have gained `u+rwx` (removal adds it to enter read-only directories).
    Subset,
}

struct Frame {
    a: OwnedFd,
    b: OwnedFd,
    rel: PathBuf,
    pending: Vec<(CString, Stat, Stat)>,
}

struct Verifier<'c, 'a> {
    mode: Compare,
    ctl: &'c mut Ctl<'a>,
    stats: TreeStats,
    /// Inode of A (nlink > 1 on either side) → its inode in B and the first path seen.
    a_to_b: HashMap<Identity, (Identity, PathBuf)>,
    b_to_a: HashMap<Identity, (Identity, PathBuf)>,
    bufs: CompareBufs,
    a_label: PathBuf,
    b_label: PathBuf,
    a_mnt: u64,
    b_mnt: u64,
}

/// Compare the trees below `a` and `b` (see [`Compare`]). The first difference is returned as
/// [`TreeError::Mismatch`] (or [`TreeError::NotSubset`]) with the path relative to the roots.
/// Returns what A contains, with the bytes read in [`TreeStats::bytes_read`].
pub(crate) fn verify(
    a: &Dir,
    b: &Dir,
    mode: Compare,
    ctl: &mut Ctl<'_>,
) -> Result<TreeStats, TreeError> {
    let sa = a.stat()?;
    let sb = b.stat()?;
    if sa.kind != Kind::Dir {
        return Err(io_err(Op::OpenDir, a.label())(
            std::io::Error::from_raw_os_error(libc::ENOTDIR),
        ));
    }
    let mut v = Verifier {
        mode,
        ctl,
        stats: TreeStats::default(),
        a_to_b: HashMap::new(),
        b_to_a: HashMap::new(),
        bufs: CompareBufs::new(),
        a_label: a.label().to_path_buf(),
        b_label: b.label().to_path_buf(),
        a_mnt: sa.mnt_id,
        b_mnt: sb.mnt_id,
    };
    let fa = a
        .as_fd()
        .try_clone_to_owned()
        .map_err(io_err(Op::OpenDir, a.label()))?;
    let fb = b
        .as_fd()
        .try_clone_to_owned()
        .map_err(io_err(Op::OpenDir, b.label()))?;
    v.compare_roots(&fa, &fb, &sa, &sb)?;
    let first = v.enter(fa, fb, PathBuf::new(), sa, sb)?;
    let mut stack = vec![first];
    loop {
        let depth = stack.len();
        let Some(top) = stack.last_mut() else { break };
        match top.pending.pop() {
            Some((name, ca, cb)) => {
                let rel = top.rel.join(os(&name));
                if depth >= MAX_DEPTH {
                    return Err(TreeError::TooDeep {
                        path: under(&v.a_label, &rel),
                        limit: MAX_DEPTH,
                    });
                }
                let da = enter_child(&top.a, &name, &ca, &under(&v.a_label, &rel))?;
                let db = enter_child(&top.b, &name, &cb, &under(&v.b_label, &rel))?;
                let frame = v.enter(da, db, rel, ca, cb)?;
                stack.push(frame);
            }
            None => {
                stack.pop();
            }
        }
    }
    v.ctl.finish();
    Ok(v.stats)
}

impl Verifier<'_, '_> {
    fn differ(&self, rel: &Path, what: String) -> TreeError {
        let path = if rel.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            rel.to_path_buf()
        };
        if self.mode == Compare::Subset {
            TreeError::NotSubset { path, what }
        } else {
            TreeError::Mismatch { path, what }
        }
    }

    fn compare_roots(
        &mut self,
        fa: &OwnedFd,
        fb: &OwnedFd,
        sa: &Stat,
        sb: &Stat,
    ) -> Result<(), TreeError> {
        let root = Path::new("");
        self.compare_meta(root, sa, sb)?;
        let xa = xattr::read_all(Target::Fd(fa.as_fd()))
            .map_err(io_err(Op::ListXattrs, &self.a_label))?;
        let xb = xattr::read_all(Target::Fd(fb.as_fd()))
            .map_err(io_err(Op::ListXattrs, &self.b_label))?;
        if let Some(what) = xattr::describe_diff(&xa, &xb) {
            return Err(self.differ(root, what));
        }
        Ok(())
    }

    /// Compare the names of directory level `rel`, then each entry; returns the frame holding
    /// the subdirectories to enter.
    fn enter(
        &mut self,
        a: OwnedFd,
        b: OwnedFd,
        rel: PathBuf,
        sa: Stat,
        sb: Stat,
    ) -> Result<Frame, TreeError> {
        let names_a = list(&a, &under(&self.a_label, &rel))?;
        let names_b = list(&b, &under(&self.b_label, &rel))?;
        // Names first, so an extra or missing entry is reported by its own path rather than as
        // a changed mtime of its directory.
        let (mut i, mut j) = (0, 0);
        while i < names_a.len() || j < names_b.len() {
            let order = match (names_a.get(i), names_b.get(j)) {
                (Some(x), Some(y)) => x.as_bytes().cmp(y.as_bytes()),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    return Err(
                        self.differ(&rel.join(os(&names_a[i])), "missing from the copy".into())
                    )
                }
                std::cmp::Ordering::Greater if self.mode == Compare::Subset => j += 1,
                std::cmp::Ordering::Greater => {
                    return Err(self.differ(
                        &rel.join(os(&names_b[j])),
                        "extra entry in the copy, not in the original".into(),
                    ))
                }
                std::cmp::Ordering::Equal => {
                    i += 1;
                    j += 1;
                }
            }
        }
        if !rel.as_os_str().is_empty() && self.mode != Compare::Subset {
            self.compare_mtime(&rel, &sa, &sb)?;
        }
        let mut pending = Vec::new();
        for name in names_a {
            let child = rel.join(os(&name));
            let pa = self.a_label.join(&child);
            let pb = self.b_label.join(&child);
            let ca = stat_child(&a, &name, &pa)?;
            let cb = stat_child(&b, &name, &pb)?;
            check_same_mount(&ca, self.a_mnt, &pa)?;
            check_same_mount(&cb, self.b_mnt, &pb)?;
            self.compare_child(&a, &b, &name, &child, &ca, &cb)?;
            if ca.kind == Kind::Dir {
                pending.push((name, ca, cb));
            }
            self.ctl.progress.entries_done += 1;
            self.ctl.tick()?;
        }
        pending.reverse();
        Ok(Frame { a, b, rel, pending })
    }

    /// Type, mode, owner and device number.
    fn compare_meta(&self, rel: &Path, sa: &Stat, sb: &Stat) -> Result<(), TreeError> {
        if sa.kind != sb.kind {
            return Err(self.differ(
                rel,
                format!(
                    "type differs: {} vs {} in the copy",
                    sa.kind.name(),
                    sb.kind.name()
                ),
            ));
        }
        let mode_ok = sa.perm == sb.perm
            || (self.mode == Compare::Subset && sa.kind == Kind::Dir && sa.perm == sb.perm | 0o700);
        if sa.kind != Kind::Symlink && !mode_ok {
            return Err(self.differ(
                rel,
                format!("mode differs: {:o} vs {:o} in the copy", sa.perm, sb.perm),
            ));
        }
        if (sa.uid, sa.gid) != (sb.uid, sb.gid) {
            return Err(self.differ(
                rel,
                format!(
                    "owner differs: {}:{} vs {}:{} in the copy",
                    sa.uid, sa.gid, sb.uid, sb.gid
                ),
            ));
        }
        if matches!(sa.kind, Kind::CharDevice | Kind::BlockDevice) && sa.rdev != sb.rdev {
            return Err(self.differ(
                rel,
                format!(
                    "device number differs: {:#x} vs {:#x} in the copy",
                    sa.rdev, sb.rdev
                ),
            ));
        }
        Ok(())
    }

    fn compare_mtime(&self, rel: &Path, sa: &Stat, sb: &Stat) -> Result<(), TreeError> {
        if sa.mtime != sb.mtime {
            return Err(self.differ(
                rel,
                format!(
                    "mtime differs: {}.{:09} vs {}.{:09} in the copy",
                    sa.mtime.0, sa.mtime.1, sb.mtime.0, sb.mtime.1
                ),
            ));
        }
        Ok(())
    }

    /// Whether this entry is a further name of a hardlink group already compared; an error
    /// when the grouping differs.
    fn hardlink_seen(&mut self, rel: &Path, sa: &Stat, sb: &Stat) -> Result<bool, TreeError> {
        if sa.kind == Kind::Dir || (sa.nlink <= 1 && sb.nlink <= 1) {
            return Ok(false);
        }
        let (ia, ib) = (sa.identity(), sb.identity());
        if let Some((mapped, first)) = self.a_to_b.get(&ia) {
            if *mapped != ib {
                let first = first.display().to_string();
                return Err(self.differ(
                    rel,
                    format!(
                        "hardlink grouping differs: linked to {first} in the original, not in \
                         the copy"
                    ),
                ));
            }
            return Ok(true);
        }
        if let Some((_, first)) = self.b_to_a.get(&ib) {
            let first = first.display().to_string();
            return Err(self.differ(
                rel,
                format!(
                    "hardlink grouping differs: linked to {first} in the copy, not in the \
                     original"
                ),
            ));
        }
        self.a_to_b.insert(ia, (ib, rel.to_path_buf()));
        self.b_to_a.insert(ib, (ia, rel.to_path_buf()));
        Ok(false)
    }

    fn open_checked(
        dir: &OwnedFd,
        name: &CStr,
        listed: &Stat,
        path: &Path,
    ) -> Result<OwnedFd, TreeError> {
        let fd = open_child_path(dir.as_fd(), name).map_err(io_err(Op::Open, path))?;
        let st = fstat(fd.as_fd()).map_err(io_err(Op::Stat, path))?;
        if st.identity() != listed.identity() {
            return Err(TreeError::Changed {
                path: path.to_path_buf(),
                what: "the entry was replaced by another one".into(),
            });
        }
        Ok(fd)
    }

    fn compare_child(
        &mut self,
        a_dir: &OwnedFd,
        b_dir: &OwnedFd,
        name: &CStr,
        rel: &Path,
        sa: &Stat,
        sb: &Stat,
    ) -> Result<(), TreeError> {
        self.compare_meta(rel, sa, sb)?;
        let pa = self.a_label.join(rel);
        let pb = self.b_label.join(rel);
        let extra_link = self.hardlink_seen(rel, sa, sb)?;
        let fa = Self::open_checked(a_dir, name, sa, &pa)?;
        let fb = Self::open_checked(b_dir, name, sb, &pb)?;
        if sa.kind == Kind::Symlink {
            let la = readlink(fa.as_fd()).map_err(io_err(Op::ReadLink, &pa))?;
            let lb = readlink(fb.as_fd()).map_err(io_err(Op::ReadLink, &pb))?;
            if la != lb {
                return Err(self.differ(
                    rel,
                    format!(
                        "symlink target differs: {} vs {} in the copy",
                        la.to_string_lossy(),
                        lb.to_string_lossy()
                    ),
                ));
            }
        }
        let mut opened: Option<(OwnedFd, OwnedFd)> = None;
        if sa.kind == Kind::File && !extra_link {
            if sa.size != sb.size {
                return Err(self.differ(
                    rel,
                    format!("size differs: {} vs {} in the copy", sa.size, sb.size),
                ));
            }
            if self.mode != Compare::Metadata {
                let ra = reopen(fa.as_fd(), libc::O_RDONLY).map_err(io_err(Op::Open, &pa))?;
                let rb = reopen(fb.as_fd(), libc::O_RDONLY).map_err(io_err(Op::Open, &pb))?;
                let diff = compare(
                    (ra.as_fd(), &pa),
                    (rb.as_fd(), &pb),
                    sa.size,
                    &mut self.bufs,
                    &mut self.stats.bytes_read,
                    self.ctl,
                )?;
                match diff {
                    None => {}
                    Some(Difference::At(off)) => {
                        return Err(self.differ(rel, format!("content differs at byte {off}")))
                    }
                    Some(Difference::Short(off)) => {
                        return Err(self.differ(
                            rel,
                            format!("content ends early at byte {off} (the file shrank)"),
                        ))
                    }
                }
                opened = Some((ra, rb));
            }
        }
        // Through the descriptors opened for the content when there are some (cheaper than the
        // magic link of the O_PATH descriptors).
        let (ta, tb) = match &opened {
            Some((ra, rb)) => (Target::Fd(ra.as_fd()), Target::Fd(rb.as_fd())),
            None => (Target::Path(fa.as_fd()), Target::Path(fb.as_fd())),
        };
        let xa = xattr::read_all(ta).map_err(io_err(Op::ListXattrs, &pa))?;
        let xb = xattr::read_all(tb).map_err(io_err(Op::ListXattrs, &pb))?;
        if let Some(what) = xattr::describe_diff(&xa, &xb) {
            return Err(self.differ(rel, what));
        }
        if sa.kind != Kind::Dir {
            // Directory mtimes are compared after their entries (see `enter`).
            self.compare_mtime(rel, sa, sb)?;
        }
        if extra_link {
            self.stats.hardlinks += 1;
        } else {
            match sa.kind {
                Kind::Dir => self.stats.dirs += 1,
                Kind::File => {
                    self.stats.files += 1;
                    self.stats.bytes += sa.size;
                }
                Kind::Symlink => self.stats.symlinks += 1,
                _ => self.stats.special += 1,
            }
        }
        Ok(())
    }
}
