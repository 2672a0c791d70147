//! Thin wrapper around the btrfs ioctls the differ needs: identify a read-only subvolume
//! (`BTRFS_IOC_INO_LOOKUP`, `BTRFS_IOC_SUBVOL_GETFLAGS`, `BTRFS_IOC_FS_INFO`) and produce an
//! incremental, data-less send stream with `BTRFS_IOC_SEND` into a pipe drained by a thread.
//!
//! It makes no decisions about what the stream means and never changes the filesystem; it must
//! not spawn `btrfs` or any other program.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::statfs::{fstatfs, BTRFS_SUPER_MAGIC};
use nix::unistd::pipe2;

use super::DiffError;

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
/// Inode number of every subvolume's root directory.
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;
/// `BTRFS_SUBVOL_RDONLY` from `linux/btrfs.h`.
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;
/// `BTRFS_SEND_FLAG_NO_FILE_DATA`: `update_extent` instead of `write` commands.
const BTRFS_SEND_FLAG_NO_FILE_DATA: u64 = 0x1;
const BTRFS_INO_LOOKUP_PATH_MAX: usize = 4080;

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; BTRFS_INO_LOOKUP_PATH_MAX],
}

/// `struct btrfs_ioctl_fs_info_args` (1024 bytes).
#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    nodesize: u32,
    sectorsize: u32,
    clone_alignment: u32,
    csum_type: u16,
    csum_size: u16,
    flags: u64,
    generation: u64,
    metadata_uuid: [u8; 16],
    reserved: [u8; 944],
}

/// `struct btrfs_ioctl_send_args`.
#[repr(C)]
struct SendArgs {
    send_fd: i64,
    clone_sources_count: u64,
    clone_sources: *mut u64,
    parent_root: u64,
    flags: u64,
    version: u32,
    reserved: [u8; 28],
}

const _: () = assert!(std::mem::size_of::<InoLookupArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<FsInfoArgs>() == 1024);
const _: () = assert!(std::mem::size_of::<SendArgs>() == 72);

nix::ioctl_readwrite!(btrfs_ioc_ino_lookup, BTRFS_IOCTL_MAGIC, 18, InoLookupArgs);
nix::ioctl_read!(btrfs_ioc_subvol_getflags, BTRFS_IOCTL_MAGIC, 25, u64);
nix::ioctl_read!(btrfs_ioc_fs_info, BTRFS_IOCTL_MAGIC, 31, FsInfoArgs);
nix::ioctl_write_ptr!(btrfs_ioc_send, BTRFS_IOCTL_MAGIC, 38, SendArgs);

/// An open, verified read-only subvolume root.
#[derive(Debug)]
pub(crate) struct Subvolume {
    /// The path it was opened from (for messages).
    pub(crate) path: PathBuf,
    /// Directory handle on the subvolume root.
    pub(crate) file: File,
    /// Subvolume (tree) id.
    pub(crate) id: u64,
    /// Filesystem UUID.
    pub(crate) fsid: [u8; 16],
}

/// Open `path` and check that it is the root of a read-only btrfs subvolume.
pub(crate) fn open_readonly_subvolume(path: &Path) -> Result<Subvolume, DiffError> {
    let io_err = |source| DiffError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err)?;
    let fs = fstatfs(&file).map_err(|e| io_err(e.into()))?;
    if fs.filesystem_type() != BTRFS_SUPER_MAGIC {
        return Err(DiffError::NotBtrfs {
            path: path.to_path_buf(),
        });
    }
    let meta = file.metadata().map_err(io_err)?;
    if meta.ino() != BTRFS_FIRST_FREE_OBJECTID {
        return Err(DiffError::NotSubvolume {
            path: path.to_path_buf(),
        });
    }
    let ioctl_err = |op: &'static str| {
        move |source: Errno| DiffError::Ioctl {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut flags: u64 = 0;
    // SAFETY: `file` is an open descriptor and `flags` is a valid u64 the kernel writes to.
    unsafe { btrfs_ioc_subvol_getflags(file.as_raw_fd(), &mut flags) }
        .map_err(ioctl_err("BTRFS_IOC_SUBVOL_GETFLAGS"))?;
    if flags & BTRFS_SUBVOL_RDONLY == 0 {
        return Err(DiffError::NotReadOnly {
            path: path.to_path_buf(),
        });
    }
    let mut lookup = InoLookupArgs {
        treeid: 0,
        objectid: BTRFS_FIRST_FREE_OBJECTID,
        name: [0; BTRFS_INO_LOOKUP_PATH_MAX],
    };
    // SAFETY: `lookup` is a correctly laid out `btrfs_ioctl_ino_lookup_args`. With treeid 0
    // and the root objectid the kernel only fills in `treeid` (no privilege needed).
    unsafe { btrfs_ioc_ino_lookup(file.as_raw_fd(), &mut lookup) }
        .map_err(ioctl_err("BTRFS_IOC_INO_LOOKUP"))?;
    let mut info = FsInfoArgs {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        nodesize: 0,
        sectorsize: 0,
        clone_alignment: 0,
        csum_type: 0,
        csum_size: 0,
        flags: 0,
        generation: 0,
        metadata_uuid: [0; 16],
        reserved: [0; 944],
    };
    // SAFETY: `info` is a correctly laid out `btrfs_ioctl_fs_info_args`; flags 0 asks only
    // for the always-present fields.
    unsafe { btrfs_ioc_fs_info(file.as_raw_fd(), &mut info) }
        .map_err(ioctl_err("BTRFS_IOC_FS_INFO"))?;
    tracing::debug!(path = %path.display(), subvol_id = lookup.treeid, "opened read-only subvolume");
    Ok(Subvolume {
        path: path.to_path_buf(),
        file,
        id: lookup.treeid,
        fsid: info.fsid,
    })
}

/// Run `BTRFS_IOC_SEND` on `to` with `parent` as parent and only clone source, without file
/// data, protocol v1, and return the whole stream. The ioctl blocks until the stream is
/// written, so a thread drains the pipe meanwhile.
pub(crate) fn send_incremental(parent: &Subvolume, to: &Subvolume) -> Result<Vec<u8>, DiffError> {
    let pipe_err = |source| DiffError::Pipe {
        to: to.path.clone(),
        source,
    };
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
    let mut clone_sources = [parent.id];
    let args = SendArgs {
        send_fd: i64::from(write_end.as_raw_fd()),
        clone_sources_count: 1,
        clone_sources: clone_sources.as_mut_ptr(),
        parent_root: parent.id,
        flags: BTRFS_SEND_FLAG_NO_FILE_DATA,
        version: 0,
        reserved: [0; 28],
    };
    tracing::debug!(
        from = %parent.path.display(),
        to = %to.path.display(),
        parent_root = parent.id,
        "BTRFS_IOC_SEND"
    );
    // SAFETY: `args` is a correctly laid out `btrfs_ioctl_send_args`; `clone_sources` outlives
    // the call and holds `clone_sources_count` ids; `send_fd` is the open write end of a pipe
    // whose read end is being drained by `reader`.
    let sent = unsafe { btrfs_ioc_send(to.file.as_raw_fd(), &args) };
    // Close our write end so the reader sees EOF whether or not the ioctl succeeded.
    drop(write_end);
    let read = reader.join();
    sent.map_err(|source| DiffError::Send {
        from: parent.path.clone(),
        to: to.path.clone(),
        source,
    })?;
    match read {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(source)) => Err(pipe_err(source)),
        Err(_) => Err(pipe_err(std::io::Error::other(
            "the thread reading the send stream panicked",
        ))),
    }
}
