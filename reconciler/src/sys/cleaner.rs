//! Waiting for the btrfs cleaner after subvolumes are deleted, so their space is free again:
//! commit, then poll the root tree for orphan items (or, when tree search is refused, poll
//! free space until it settles). Bounded by a deadline; thin wrappers over the ioctls, public
//! so that the root-tier tests can check them against a real filesystem.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::ioctl::{
    self, BtrfsSearchArgs, BtrfsSearchKey, BTRFS_ORPHAN_ITEM_KEY, BTRFS_ORPHAN_OBJECTID,
    BTRFS_ROOT_TREE_OBJECTID, BTRFS_SEARCH_ARGS_BUFSIZE,
};
use super::{SysError, SysResult};

/// Poll interval while waiting for the btrfs cleaner.
const CLEANER_POLL: Duration = Duration::from_millis(100);
/// Equal free-space readings in a row that count as "settled" when tree search is refused.
const STABLE_POLLS: u32 = 3;

/// `BTRFS_IOC_SYNC`: commit the filesystem holding `file` and wake the cleaner.
pub fn btrfs_sync(file: &File, path: &Path) -> SysResult<()> {
    // SAFETY: BTRFS_IOC_SYNC takes no argument; the fd is open on the filesystem.
    unsafe { ioctl::btrfs_sync(file.as_raw_fd()) }
        .map(drop)
        .map_err(|e| SysError::io("sync filesystem", path, e))
}

/// Poll the root tree for orphan items (deleted subvolumes not yet dropped by the cleaner).
/// Returns whether none are left before `deadline`.
pub fn wait_orphans_gone(file: &File, path: &Path, deadline: Instant) -> Result<bool, Errno> {
    loop {
        let pending = orphan_items(file)?;
        if pending == 0 {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        tracing::debug!(path = %path.display(), pending, "waiting for btrfs cleaner");
        std::thread::sleep(CLEANER_POLL.min(deadline - now));
    }
}

/// Orphan items in the root tree (deleted subvolumes the cleaner has not dropped yet), by
/// `BTRFS_IOC_TREE_SEARCH` (needs `CAP_SYS_ADMIN`).
pub fn orphan_items(file: &File) -> Result<u32, Errno> {
    let mut args = Box::new(BtrfsSearchArgs {
        key: BtrfsSearchKey {
            tree_id: BTRFS_ROOT_TREE_OBJECTID,
            min_objectid: BTRFS_ORPHAN_OBJECTID,
            max_objectid: BTRFS_ORPHAN_OBJECTID,
            min_type: BTRFS_ORPHAN_ITEM_KEY,
            max_type: BTRFS_ORPHAN_ITEM_KEY,
            min_offset: 0,
            max_offset: u64::MAX,
            min_transid: 0,
            max_transid: u64::MAX,
            nr_items: 1,
            ..BtrfsSearchKey::default()
        },
        buf: [0; BTRFS_SEARCH_ARGS_BUFSIZE],
    });
    // SAFETY: `args` is a fully initialised `btrfs_ioctl_search_args` the kernel may write to;
    // the fd is open on the filesystem.
    unsafe { ioctl::btrfs_tree_search(file.as_raw_fd(), &mut *args) }?;
    Ok(args.key.nr_items)
}

/// Fallback when tree search is refused: commit and read free space until it is unchanged for
/// three readings. Returns whether it settled before `deadline`.
pub fn wait_free_space_stable(file: &File, path: &Path, deadline: Instant) -> SysResult<bool> {
    let mut last = None;
    let mut same = 0;
    loop {
        btrfs_sync(file, path)?;
        let free = nix::sys::statvfs::fstatvfs(file)
            .map_err(|e| SysError::io("statvfs", path, e))?
            .blocks_free();
        if last == Some(free) {
            same += 1;
        } else {
            last = Some(free);
            same = 1;
        }
        if same >= STABLE_POLLS {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        std::thread::sleep(CLEANER_POLL.min(deadline - now));
    }
}
