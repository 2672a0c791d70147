//! The Linux side of the send stream: identify a subvolume root (`BTRFS_IOC_SUBVOL_GETFLAGS`,
//! `BTRFS_IOC_INO_LOOKUP`, `BTRFS_IOC_FS_INFO`) and produce an incremental, data-less stream
//! with `BTRFS_IOC_SEND` into a pipe drained by a thread. Used by [`super::linux::LinuxSys`].
//!
//! It makes no decisions about what the stream means, never changes the filesystem, and must
//! not spawn `btrfs` or any other program.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::statfs::{fstatfs, BTRFS_SUPER_MAGIC};
use nix::unistd::pipe2;

use super::ioctl::{
    self, BtrfsFsInfoArgs, BtrfsInoLookupArgs, BtrfsSendArgs, BTRFS_FIRST_FREE_OBJECTID,
    BTRFS_INO_LOOKUP_PATH_MAX, BTRFS_SEND_FLAG_NO_FILE_DATA, BTRFS_SUBVOL_RDONLY,
};
use super::{OpenSubvolume, SubvolumeCheck, SysError, SysResult};

/// Open `path` and say what it is to the send ioctls.
pub(super) fn open_subvolume(path: &Path) -> SysResult<SubvolumeCheck> {
    const OP: &str = "open subvolume";
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| SysError::io(OP, path, e))?;
    let fs = fstatfs(&file).map_err(|e| SysError::io(OP, path, e))?;
    if fs.filesystem_type() != BTRFS_SUPER_MAGIC {
        return Ok(SubvolumeCheck::NotBtrfs);
    }
    let meta = file.metadata().map_err(|e| SysError::io(OP, path, e))?;
    if meta.ino() != BTRFS_FIRST_FREE_OBJECTID {
        return Ok(SubvolumeCheck::NotSubvolumeRoot);
    }
    let mut flags: u64 = 0;
    // SAFETY: `file` is an open descriptor and `flags` is a valid u64 the kernel writes to.
    unsafe { ioctl::btrfs_subvol_getflags(file.as_raw_fd(), &mut flags) }
        .map_err(|e| SysError::io("read subvolume flags of", path, e))?;
    let mut lookup = Box::new(BtrfsInoLookupArgs {
        treeid: 0,
        objectid: BTRFS_FIRST_FREE_OBJECTID,
        name: [0; BTRFS_INO_LOOKUP_PATH_MAX],
    });
    // SAFETY: `lookup` is a correctly laid out `btrfs_ioctl_ino_lookup_args`. With treeid 0
    // and the root objectid the kernel only fills in `treeid` (no privilege needed).
    unsafe { ioctl::btrfs_ino_lookup(file.as_raw_fd(), &mut *lookup) }
        .map_err(|e| SysError::io("look up the subvolume id of", path, e))?;
    let mut info = Box::new(BtrfsFsInfoArgs::zeroed());
    // SAFETY: `info` is a correctly laid out `btrfs_ioctl_fs_info_args`; flags 0 asks only
    // for the always-present fields.
    unsafe { ioctl::btrfs_fs_info(file.as_raw_fd(), &mut *info) }
        .map_err(|e| SysError::io("read the filesystem id of", path, e))?;
    tracing::debug!(path = %path.display(), subvol_id = lookup.treeid, "opened subvolume");
    Ok(SubvolumeCheck::Subvolume(OpenSubvolume {
        path: path.to_path_buf(),
        file,
        tree_id: lookup.treeid,
        fsid: info.fsid,
        readonly: flags & BTRFS_SUBVOL_RDONLY != 0,
    }))
}

/// Run `BTRFS_IOC_SEND` on `to` with `parent` as parent and only clone source, without file
/// data, protocol v1, and return the whole stream. The ioctl blocks until the stream is
/// written, so a thread drains the pipe meanwhile.
pub(super) fn send_no_data(parent: &OpenSubvolume, to: &OpenSubvolume) -> SysResult<Vec<u8>> {
    const OP: &str = "send (btrfs send --no-data) of";
    let pipe_err = |e: std::io::Error| SysError::io(OP, &to.path, e);
    let (read_end, write_end) = pipe2(OFlag::O_CLOEXEC).map_err(|e| pipe_err(e.into()))?;
    let read_end = File::from(read_end);
    let reader = std::thread::Builder::new()
        .name("ws-ckpt-send-reader".into())
        .spawn(move || {
            let mut read_end = read_end;
            let mut buf = Vec::new();
            read_end.read_to_end(&mut buf).map(|_| buf)
        })
        .map_err(pipe_err)?;
    let mut clone_sources = [parent.tree_id];
    let args = BtrfsSendArgs {
        send_fd: i64::from(write_end.as_raw_fd()),
        clone_sources_count: 1,
        clone_sources: clone_sources.as_mut_ptr(),
        parent_root: parent.tree_id,
        flags: BTRFS_SEND_FLAG_NO_FILE_DATA,
        version: 0,
        reserved: [0; 28],
    };
    tracing::debug!(
        from = %parent.path.display(),
        to = %to.path.display(),
        parent_root = parent.tree_id,
        "BTRFS_IOC_SEND"
    );
    // SAFETY: `args` is a correctly laid out `btrfs_ioctl_send_args`; `clone_sources` outlives
    // the call and holds `clone_sources_count` ids; `send_fd` is the open write end of a pipe
    // whose read end is being drained by `reader`.
    let sent = unsafe { ioctl::btrfs_send(to.file.as_raw_fd(), &args) };
    // Close our write end so the reader sees EOF whether or not the ioctl succeeded.
    drop(write_end);
    let read = reader.join();
    sent.map_err(|e| SysError::io(OP, &to.path, e))?;
    match read {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(pipe_err(e)),
        Err(_) => Err(pipe_err(std::io::Error::other(
            "the thread reading the send stream panicked",
        ))),
    }
}
