//! Raw kernel ABI for the btrfs and loop-device ioctls used by [`super::linux`] (and its send
//! half, `super::send`): `#[repr(C)]`
//! mirrors of the structs in `linux/btrfs.h` and `linux/loop.h`, their constants, and the
//! `nix`-generated ioctl wrappers.
//!
//! This module must not contain logic: no path handling, no retries, no error mapping. Callers
//! own every `unsafe` call site and its justification.

/// `BTRFS_IOCTL_MAGIC`.
pub(super) const BTRFS_IOCTL_MAGIC: u8 = 0x94;
/// `BTRFS_PATH_NAME_MAX`: longest name in [`BtrfsVolArgs`] (one byte is left for the NUL).
pub(super) const BTRFS_PATH_NAME_MAX: usize = 4087;
/// `BTRFS_SUBVOL_NAME_MAX`: longest name in [`BtrfsVolArgsV2`] (one byte is left for the NUL).
pub(super) const BTRFS_SUBVOL_NAME_MAX: usize = 4039;
/// `BTRFS_SUBVOL_RDONLY`: subvolume flag, read-only.
pub(super) const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;
/// `BTRFS_ROOT_TREE_OBJECTID`: the tree of tree roots.
pub(super) const BTRFS_ROOT_TREE_OBJECTID: u64 = 1;
/// `BTRFS_ORPHAN_OBJECTID` (-5 as u64): key objectid of orphan items of deleted subvolumes.
pub(super) const BTRFS_ORPHAN_OBJECTID: u64 = -5i64 as u64;
/// `BTRFS_ORPHAN_ITEM_KEY`.
pub(super) const BTRFS_ORPHAN_ITEM_KEY: u32 = 48;
/// `BTRFS_FIRST_FREE_OBJECTID`: inode number of every subvolume's root directory.
pub(super) const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;

/// `LO_NAME_SIZE`.
pub(super) const LO_NAME_SIZE: usize = 64;
/// `LO_KEY_SIZE`.
pub(super) const LO_KEY_SIZE: usize = 32;
/// `LO_FLAGS_AUTOCLEAR`: detach when the last opener closes.
pub(super) const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// `LO_FLAGS_DIRECT_IO`: the backing file is accessed with `O_DIRECT`.
pub(super) const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
pub(super) struct BtrfsVolArgs {
    /// File descriptor argument (unused by the calls made here).
    pub fd: i64,
    /// NUL-terminated name.
    pub name: [u8; BTRFS_PATH_NAME_MAX + 1],
}

impl BtrfsVolArgs {
    /// All-zero arguments.
    pub(super) fn zeroed() -> Self {
        BtrfsVolArgs {
            fd: 0,
            name: [0; BTRFS_PATH_NAME_MAX + 1],
        }
    }
}

/// `struct btrfs_ioctl_vol_args_v2` (the `qgroup_inherit` union is kept as its `unused[4]` arm,
/// the name union as its `name` arm).
#[repr(C)]
pub(super) struct BtrfsVolArgsV2 {
    /// Source subvolume descriptor for snapshots.
    pub fd: i64,
    /// Transaction id (output of async snapshot creation, unused).
    pub transid: u64,
    /// `BTRFS_SUBVOL_*` flags.
    pub flags: u64,
    /// `size`/`qgroup_inherit` union; always zero here.
    pub unused: [u64; 4],
    /// NUL-terminated name.
    pub name: [u8; BTRFS_SUBVOL_NAME_MAX + 1],
}

impl BtrfsVolArgsV2 {
    /// All-zero arguments.
    pub(super) fn zeroed() -> Self {
        BtrfsVolArgsV2 {
            fd: 0,
            transid: 0,
            flags: 0,
            unused: [0; 4],
            name: [0; BTRFS_SUBVOL_NAME_MAX + 1],
        }
    }
}

/// `struct btrfs_ioctl_search_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct BtrfsSearchKey {
    /// Tree to search (1 = root tree).
    pub tree_id: u64,
    /// Lowest objectid.
    pub min_objectid: u64,
    /// Highest objectid.
    pub max_objectid: u64,
    /// Lowest offset.
    pub min_offset: u64,
    /// Highest offset.
    pub max_offset: u64,
    /// Lowest transid.
    pub min_transid: u64,
    /// Highest transid.
    pub max_transid: u64,
    /// Lowest item type.
    pub min_type: u32,
    /// Highest item type.
    pub max_type: u32,
    /// In: maximum items wanted; out: items returned.
    pub nr_items: u32,
    /// Padding.
    pub unused: u32,
    /// Reserved.
    pub unused1: u64,
    /// Reserved.
    pub unused2: u64,
    /// Reserved.
    pub unused3: u64,
    /// Reserved.
    pub unused4: u64,
}

/// `BTRFS_SEARCH_ARGS_BUFSIZE`.
pub(super) const BTRFS_SEARCH_ARGS_BUFSIZE: usize = 4096 - std::mem::size_of::<BtrfsSearchKey>();

/// `struct btrfs_ioctl_search_args` (version 1, fixed 4 KiB buffer).
#[repr(C)]
pub(super) struct BtrfsSearchArgs {
    /// Search key (in/out).
    pub key: BtrfsSearchKey,
    /// Result items, each preceded by a `btrfs_ioctl_search_header`.
    pub buf: [u8; BTRFS_SEARCH_ARGS_BUFSIZE],
}

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct LoopInfo64 {
    /// Backing file's st_dev (read-only).
    pub lo_device: u64,
    /// Backing file's inode (read-only).
    pub lo_inode: u64,
    /// Backing file's st_rdev (read-only).
    pub lo_rdevice: u64,
    /// Offset into the backing file.
    pub lo_offset: u64,
    /// Size limit in bytes, 0 = whole file.
    pub lo_sizelimit: u64,
    /// Device index (read-only).
    pub lo_number: u32,
    /// Obsolete.
    pub lo_encrypt_type: u32,
    /// Obsolete.
    pub lo_encrypt_key_size: u32,
    /// `LO_FLAGS_*`.
    pub lo_flags: u32,
    /// Backing file name as given at attach time (informational, truncated).
    pub lo_file_name: [u8; LO_NAME_SIZE],
    /// Obsolete.
    pub lo_crypt_name: [u8; LO_NAME_SIZE],
    /// Obsolete.
    pub lo_encrypt_key: [u8; LO_KEY_SIZE],
    /// Obsolete.
    pub lo_init: [u64; 2],
}

impl LoopInfo64 {
    /// All-zero info.
    pub(super) fn zeroed() -> Self {
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; LO_KEY_SIZE],
            lo_init: [0; 2],
        }
    }
}

/// `struct loop_config` (argument of `LOOP_CONFIGURE`).
#[repr(C)]
pub(super) struct LoopConfig {
    /// Backing file descriptor.
    pub fd: u32,
    /// Logical block size, 0 = default.
    pub block_size: u32,
    /// Initial status.
    pub info: LoopInfo64,
    /// Reserved, zero.
    pub reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<BtrfsVolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<BtrfsVolArgsV2>() == 4096);
const _: () = assert!(std::mem::size_of::<BtrfsSearchKey>() == 104);
const _: () = assert!(std::mem::size_of::<BtrfsSearchArgs>() == 4096);
/// `BTRFS_ROOT_REF_KEY`: in the root tree, (parent subvolume id, ROOT_REF, child id).
pub(super) const BTRFS_ROOT_REF_KEY: u32 = 156;
/// Size of the path buffer of `btrfs_ioctl_ino_lookup_args`.
pub(super) const BTRFS_INO_LOOKUP_PATH_MAX: usize = 4080;

/// `struct btrfs_ioctl_ino_lookup_args`: with `treeid` 0 and `objectid` 256 it returns the
/// subvolume id of the fd in `treeid`; otherwise the path of inode `objectid` in tree `treeid`.
#[repr(C)]
pub(super) struct BtrfsInoLookupArgs {
    /// Tree (subvolume) id; 0 = the fd's own.
    pub treeid: u64,
    /// Inode number.
    pub objectid: u64,
    /// Path of the inode relative to the subvolume root, with a trailing '/'.
    pub name: [u8; BTRFS_INO_LOOKUP_PATH_MAX],
}

/// `struct btrfs_ioctl_search_header` preceding each item in a tree-search buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(super) struct BtrfsSearchHeader {
    /// Transaction id.
    pub transid: u64,
    /// Key objectid.
    pub objectid: u64,
    /// Key offset.
    pub offset: u64,
    /// Key type.
    pub item_type: u32,
    /// Length of the item data that follows.
    pub len: u32,
}

/// `BTRFS_SEND_FLAG_NO_FILE_DATA`: `update_extent` commands instead of `write` (no data).
pub(super) const BTRFS_SEND_FLAG_NO_FILE_DATA: u64 = 0x1;

/// `struct btrfs_ioctl_fs_info_args` (1024 bytes).
#[repr(C)]
pub(super) struct BtrfsFsInfoArgs {
    /// Highest device id.
    pub max_id: u64,
    /// Number of devices.
    pub num_devices: u64,
    /// Filesystem UUID.
    pub fsid: [u8; 16],
    /// Node size.
    pub nodesize: u32,
    /// Sector size.
    pub sectorsize: u32,
    /// Clone alignment.
    pub clone_alignment: u32,
    /// Checksum type (output with `BTRFS_FS_INFO_FLAG_CSUM_INFO`).
    pub csum_type: u16,
    /// Checksum size.
    pub csum_size: u16,
    /// Input flags (0: only the always-present fields).
    pub flags: u64,
    /// Generation (with `BTRFS_FS_INFO_FLAG_GENERATION`).
    pub generation: u64,
    /// Metadata UUID (with `BTRFS_FS_INFO_FLAG_METADATA_UUID`).
    pub metadata_uuid: [u8; 16],
    /// Reserved.
    pub reserved: [u8; 944],
}

impl BtrfsFsInfoArgs {
    /// All-zero arguments (flags 0).
    pub(super) fn zeroed() -> Self {
        BtrfsFsInfoArgs {
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
        }
    }
}

/// `struct btrfs_ioctl_send_args`.
#[repr(C)]
pub(super) struct BtrfsSendArgs {
    /// Where the stream is written (a pipe's write end).
    pub send_fd: i64,
    /// Number of ids in `clone_sources`.
    pub clone_sources_count: u64,
    /// Subvolume ids that may serve as clone sources.
    pub clone_sources: *mut u64,
    /// Subvolume id of the parent (0: a full stream).
    pub parent_root: u64,
    /// `BTRFS_SEND_FLAG_*`.
    pub flags: u64,
    /// Protocol version (0: version 1).
    pub version: u32,
    /// Reserved.
    pub reserved: [u8; 28],
}

const _: () = assert!(std::mem::size_of::<BtrfsInoLookupArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<BtrfsFsInfoArgs>() == 1024);
const _: () = assert!(std::mem::size_of::<BtrfsSendArgs>() == 72);
const _: () = assert!(std::mem::size_of::<BtrfsSearchHeader>() == 32);
const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

nix::ioctl_write_ptr!(
    /// `BTRFS_IOC_RESIZE` on a directory of the mounted filesystem.
    btrfs_resize,
    BTRFS_IOCTL_MAGIC,
    3,
    BtrfsVolArgs
);
nix::ioctl_none!(
    /// `BTRFS_IOC_SYNC`: commit the filesystem and wake the cleaner.
    btrfs_sync,
    BTRFS_IOCTL_MAGIC,
    8
);
nix::ioctl_write_ptr!(
    /// `BTRFS_IOC_SUBVOL_CREATE` on the parent directory.
    btrfs_subvol_create,
    BTRFS_IOCTL_MAGIC,
    14,
    BtrfsVolArgs
);
nix::ioctl_write_ptr!(
    /// `BTRFS_IOC_SNAP_DESTROY` on the parent directory (fallback for old kernels).
    btrfs_snap_destroy,
    BTRFS_IOCTL_MAGIC,
    15,
    BtrfsVolArgs
);
nix::ioctl_readwrite!(
    /// `BTRFS_IOC_TREE_SEARCH` (version 1).
    btrfs_tree_search,
    BTRFS_IOCTL_MAGIC,
    17,
    BtrfsSearchArgs
);
nix::ioctl_readwrite!(
    /// `BTRFS_IOC_INO_LOOKUP`.
    btrfs_ino_lookup,
    BTRFS_IOCTL_MAGIC,
    18,
    BtrfsInoLookupArgs
);
nix::ioctl_write_ptr!(
    /// `BTRFS_IOC_SNAP_CREATE_V2` on the destination's parent directory.
    btrfs_snap_create_v2,
    BTRFS_IOCTL_MAGIC,
    23,
    BtrfsVolArgsV2
);
nix::ioctl_read!(
    /// `BTRFS_IOC_SUBVOL_GETFLAGS` on the subvolume root.
    btrfs_subvol_getflags,
    BTRFS_IOCTL_MAGIC,
    25,
    u64
);
nix::ioctl_read!(
    /// `BTRFS_IOC_FS_INFO` on any file of the filesystem.
    btrfs_fs_info,
    BTRFS_IOCTL_MAGIC,
    31,
    BtrfsFsInfoArgs
);
nix::ioctl_write_ptr!(
    /// `BTRFS_IOC_SEND` on the read-only subvolume to send.
    btrfs_send,
    BTRFS_IOCTL_MAGIC,
    38,
    BtrfsSendArgs
);
nix::ioctl_write_ptr!(
    /// `BTRFS_IOC_SNAP_DESTROY_V2` on the parent directory.
    btrfs_snap_destroy_v2,
    BTRFS_IOCTL_MAGIC,
    63,
    BtrfsVolArgsV2
);

nix::ioctl_none_bad!(
    /// `LOOP_CLR_FD`.
    loop_clr_fd,
    0x4C01
);
nix::ioctl_read_bad!(
    /// `LOOP_GET_STATUS64`.
    loop_get_status64,
    0x4C05,
    LoopInfo64
);
nix::ioctl_none_bad!(
    /// `LOOP_SET_CAPACITY`.
    loop_set_capacity,
    0x4C07
);
nix::ioctl_write_ptr_bad!(
    /// `LOOP_CONFIGURE`.
    loop_configure,
    0x4C0A,
    LoopConfig
);
nix::ioctl_none_bad!(
    /// `LOOP_CTL_GET_FREE` on `/dev/loop-control`: returns a free device index.
    loop_ctl_get_free,
    0x4C82
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    // Request numbers as the C headers compute them (checked with a C program against
    // linux/btrfs.h on x86_64); they also pin the struct sizes encoded in them.
    #[test]
    fn btrfs_request_codes_match_the_kernel_headers() {
        let m = BTRFS_IOCTL_MAGIC;
        assert_eq!(
            nix::request_code_write!(m, 3, size_of::<BtrfsVolArgs>()),
            0x5000_9403
        );
        assert_eq!(nix::request_code_none!(m, 8), 0x9408);
        assert_eq!(
            nix::request_code_write!(m, 14, size_of::<BtrfsVolArgs>()),
            0x5000_940e
        );
        assert_eq!(
            nix::request_code_write!(m, 15, size_of::<BtrfsVolArgs>()),
            0x5000_940f
        );
        assert_eq!(
            nix::request_code_readwrite!(m, 17, size_of::<BtrfsSearchArgs>()),
            0xd000_9411
        );
        assert_eq!(
            nix::request_code_write!(m, 23, size_of::<BtrfsVolArgsV2>()),
            0x5000_9417
        );
        assert_eq!(
            nix::request_code_read!(m, 25, size_of::<u64>()),
            0x8008_9419
        );
        assert_eq!(
            nix::request_code_write!(m, 63, size_of::<BtrfsVolArgsV2>()),
            0x5000_943f
        );
        assert_eq!(
            nix::request_code_read!(m, 31, size_of::<BtrfsFsInfoArgs>()),
            0x8400_941f
        );
        assert_eq!(
            nix::request_code_write!(m, 38, size_of::<BtrfsSendArgs>()),
            0x4048_9426
        );
    }

    #[test]
    fn orphan_objectid_is_minus_five() {
        assert_eq!(BTRFS_ORPHAN_OBJECTID, 0xffff_ffff_ffff_fffb);
        assert_eq!(BTRFS_SEARCH_ARGS_BUFSIZE, 3992);
    }
}
