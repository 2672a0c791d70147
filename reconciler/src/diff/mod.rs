//! Differences between two read-only snapshots, computed from an incremental btrfs send
//! stream (`BTRFS_IOC_SEND` with `NO_FILE_DATA`), as `+` added, `-` deleted, `M` modified and
//! `R` renamed entries (SPEC §5.5).
//!
//! The stream is a sequence of namespace operations (`mkfile o257-12-0`, `rename`, `link`,
//! `unlink`, ...) that `btrfs receive` would replay. This module replays them on an in-memory
//! model of the namespace, where every node is either an inode of the old snapshot (discovered
//! lazily, the first time a path reaches it) or one created by the stream, and then compares each
//! node's final links with its original one. It never reads file contents, never changes the
//! filesystem and never spawns `btrfs`; the only system access is the send stream and the
//! subvolume identity, both through [`Sys`], and the `lstat` calls that refine entry kinds in
//! [`diff_subvolumes`].
//!
//! Reporting rules: a new inode gives `+` for each of its final paths (hardlinks included); an
//! old inode that lost its original name gives `R old → new` when it still has a name, `-`
//! otherwise; extra names of an old inode are `+`, and removing one of several names is `-`;
//! an old inode whose data, size, mode, owner, xattrs or file attributes changed gives `M` (in
//! addition to `R` when it was also renamed). Time-only changes (`utimes`) are never reported:
//! they are what every directory gets when its children change. A path that is both `-` and
//! `+` (a symlink retargeted, a file replaced by a new inode) is reported once, as `M`, when both
//! are directories or both are not.

mod replay;
mod stream;

use std::collections::{HashMap, HashSet};

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::sys::{OpenSubvolume, SubvolumeCheck, Sys, SysError};

/// What kind of filesystem object an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device node, FIFO or socket, or a kind the stream alone does not reveal.
    Other,
}

/// How an entry changed between the two snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum Change {
    /// The path exists only in the newer snapshot.
    Added,
    /// The path exists only in the older snapshot.
    Deleted,
    /// The object at the path changed content, mode, owner, xattrs, or was replaced.
    Modified,
    /// The object moved to this path from `from` (same inode).
    Renamed {
        /// Its path in the older snapshot, relative to the subvolume root.
        from: PathBuf,
    },
}

impl Change {
    /// Sort rank among entries with the same path.
    fn rank(&self) -> u8 {
        match self {
            Change::Deleted => 0,
            Change::Renamed { .. } => 1,
            Change::Added => 2,
            Change::Modified => 3,
        }
    }
}

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct DiffEntry {
    /// What happened.
    #[serde(flatten)]
    pub change: Change,
    /// The path relative to the subvolume root (in the newer snapshot, except for
    /// [`Change::Deleted`]). The subvolume root itself is `.`.
    pub path: PathBuf,
    /// What kind of object it is.
    pub kind: EntryKind,
}

impl DiffEntry {
    /// `+` added, `-` deleted, `M` modified, `R` renamed.
    pub fn symbol(&self) -> char {
        match self.change {
            Change::Added => '+',
            Change::Deleted => '-',
            Change::Modified => 'M',
            Change::Renamed { .. } => 'R',
        }
    }
}

impl fmt::Display for DiffEntry {
    /// `+ path`, `- path`, `M path` or `R old → new`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.change {
            Change::Renamed { from } => {
                write!(f, "R {} → {}", from.display(), self.path.display())
            }
            _ => write!(f, "{} {}", self.symbol(), self.path.display()),
        }
    }
}

/// Why a diff could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// A snapshot directory could not be opened or inspected.
    #[error("cannot open snapshot {path}: {source}")]
    Open {
        /// The snapshot path.
        path: PathBuf,
        /// The system error (open, or one of the inspection ioctls).
        source: SysError,
    },
    /// The path is not on btrfs.
    #[error("{path} is not on a btrfs filesystem; diff needs two read-only btrfs snapshots")]
    NotBtrfs {
        /// The offending path.
        path: PathBuf,
    },
    /// The path is a directory inside a subvolume, not a subvolume root.
    #[error("{path} is not the root of a btrfs subvolume; pass the snapshot directory itself")]
    NotSubvolume {
        /// The offending path.
        path: PathBuf,
    },
    /// btrfs send only works on read-only subvolumes.
    #[error(
        "{path} is a writable subvolume; btrfs send needs read-only snapshots: \
         take a read-only snapshot of it and diff that instead"
    )]
    NotReadOnly {
        /// The writable subvolume.
        path: PathBuf,
    },
    /// The two snapshots live on different btrfs filesystems.
    #[error("{from} and {to} are on different btrfs filesystems; both snapshots must be on the same one")]
    DifferentFilesystems {
        /// Older snapshot.
        from: PathBuf,
        /// Newer snapshot.
        to: PathBuf,
    },
    /// `BTRFS_IOC_SEND` failed, or reading its stream did.
    #[error(
        "btrfs send of {to} with parent {from} failed: {source} \
         (it needs root / CAP_SYS_ADMIN and two read-only snapshots of one filesystem)"
    )]
    Send {
        /// Parent (older) snapshot.
        from: PathBuf,
        /// Sent (newer) snapshot.
        to: PathBuf,
        /// The system error.
        source: SysError,
    },
    /// The bytes are not a send stream.
    #[error("not a btrfs send stream (the \"btrfs-stream\" magic is missing)")]
    BadMagic,
    /// A send-stream version this parser does not know.
    #[error(
        "unsupported btrfs send stream version {version} (this ws-ckpt reads versions 1 to 3)"
    )]
    UnsupportedVersion {
        /// Version from the stream header.
        version: u32,
    },
    /// The stream ends in the middle of a header or command.
    #[error("send stream truncated at byte {offset}: needs {needed} bytes, only {available} left")]
    Truncated {
        /// Offset of the incomplete header or command.
        offset: usize,
        /// Bytes it needs.
        needed: usize,
        /// Bytes that remain.
        available: usize,
    },
    /// A command's checksum is wrong.
    #[error(
        "send stream corrupt: {command} command at byte {offset} has crc32c {stored:#010x}, \
         computed {computed:#010x}"
    )]
    CrcMismatch {
        /// Offset of the command.
        offset: usize,
        /// Command name.
        command: &'static str,
        /// Checksum stored in the stream.
        stored: u32,
        /// Checksum of the bytes.
        computed: u32,
    },
    /// A command's attributes are malformed.
    #[error("send stream corrupt: {command} command at byte {offset}: {reason}")]
    BadAttribute {
        /// Offset of the command.
        offset: usize,
        /// Command name.
        command: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A command lacks an attribute it must have.
    #[error(
        "send stream corrupt: {command} command at byte {offset} has no {attribute} attribute"
    )]
    MissingAttribute {
        /// Offset of the command.
        offset: usize,
        /// Command name.
        command: &'static str,
        /// Attribute name.
        attribute: &'static str,
    },
    /// The stream stops without an `end` command.
    #[error("send stream ends at byte {offset} without an end command (was it cut short?)")]
    MissingEnd {
        /// Length of the stream.
        offset: usize,
    },
    /// A command refers to a path that, replaying the stream so far, does not exist.
    #[error("send stream inconsistent: {command} at byte {offset} on {path}: {reason}")]
    Inconsistent {
        /// Offset of the command.
        offset: usize,
        /// Command name.
        command: &'static str,
        /// The path in the command.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Diff two READ-ONLY subvolumes of the same btrfs filesystem: `from` (older, used as send
/// parent) and `to`. Runs `BTRFS_IOC_SEND` on `to` with `from` as parent and clone source,
/// without file data, and returns the entries sorted by path. Needs `CAP_SYS_ADMIN`.
pub fn diff_subvolumes(sys: &dyn Sys, from: &Path, to: &Path) -> Result<Vec<DiffEntry>, DiffError> {
    let parent = open_readonly_subvolume(sys, from)?;
    let target = open_readonly_subvolume(sys, to)?;
    if parent.fsid != target.fsid {
        return Err(DiffError::DifferentFilesystems {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        });
    }
    if parent.tree_id == target.tree_id {
        return Ok(Vec::new());
    }
    let bytes = sys
        .send_no_data(&parent, &target)
        .map_err(|source| DiffError::Send {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            source,
        })?;
    let mut entries = replay::analyze(&bytes)?;
    for entry in &mut entries {
        let side = match entry.change {
            Change::Deleted => from,
            _ => to,
        };
        if let Some(kind) = kind_on_disk(&side.join(&entry.path)) {
            entry.kind = kind;
        }
    }
    Ok(finish(entries))
}

/// `path`, which must be the root of a read-only btrfs subvolume, opened.
fn open_readonly_subvolume(sys: &dyn Sys, path: &Path) -> Result<OpenSubvolume, DiffError> {
    let path_buf = || path.to_path_buf();
    match sys.open_subvolume(path).map_err(|source| DiffError::Open {
        path: path_buf(),
        source,
    })? {
        SubvolumeCheck::NotBtrfs => Err(DiffError::NotBtrfs { path: path_buf() }),
        SubvolumeCheck::NotSubvolumeRoot => Err(DiffError::NotSubvolume { path: path_buf() }),
        SubvolumeCheck::Subvolume(s) if !s.readonly => {
            Err(DiffError::NotReadOnly { path: path_buf() })
        }
        SubvolumeCheck::Subvolume(s) => Ok(s),
    }
}

/// Pure: turn a send stream (as written by `btrfs send --no-data -p FROM TO`) into entries
/// sorted by path. Kinds of entries for old inodes are guessed from the stream (a renamed
/// inode of unknown kind is [`EntryKind::Other`]); [`diff_subvolumes`] reads them from disk.
pub fn diff_from_stream(bytes: &[u8]) -> Result<Vec<DiffEntry>, DiffError> {
    Ok(finish(replay::analyze(bytes)?))
}

/// The kind of the object at `path`, not following symlinks.
fn kind_on_disk(path: &Path) -> Option<EntryKind> {
    let ft = std::fs::symlink_metadata(path).ok()?.file_type();
    Some(if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else {
        EntryKind::Other
    })
}

/// Merge `-`/`+` pairs on one path into `M`, remove duplicates, sort by path.
fn finish(entries: Vec<DiffEntry>) -> Vec<DiffEntry> {
    let is_dir = |k: EntryKind| k == EntryKind::Dir;
    let mut deleted: HashMap<PathBuf, EntryKind> = HashMap::new();
    for e in &entries {
        if e.change == Change::Deleted {
            deleted.insert(e.path.clone(), e.kind);
        }
    }
    let mut replaced: HashSet<PathBuf> = HashSet::new();
    for e in &entries {
        if e.change == Change::Added {
            if let Some(&old) = deleted.get(&e.path) {
                if is_dir(old) == is_dir(e.kind) {
                    replaced.insert(e.path.clone());
                }
            }
        }
    }
    let mut out: Vec<DiffEntry> = entries
        .into_iter()
        .filter_map(|mut e| {
            if replaced.contains(&e.path) {
                match e.change {
                    Change::Deleted => return None,
                    Change::Added => e.change = Change::Modified,
                    _ => {}
                }
            }
            Some(e)
        })
        .collect();
    out.sort_by(|a, b| {
        a.path
            .cmp(&b.path)
            .then(a.change.rank().cmp(&b.change.rank()))
    });
    out.dedup_by(|a, b| a.path == b.path && a.change == b.change);
    out
}

#[cfg(test)]
mod tests {
    use super::stream::{attr, cmd, crc32c_update, MAGIC};
    use super::*;

    /// Builds send streams by hand.
    struct StreamBuilder {
        buf: Vec<u8>,
        version: u32,
    }

    impl StreamBuilder {
        fn new(version: u32) -> Self {
            let mut buf = MAGIC.to_vec();
            buf.extend_from_slice(&version.to_le_bytes());
            StreamBuilder { buf, version }
        }

        /// A command with length-prefixed attributes, plus (v2+) a trailing length-less DATA.
        fn raw(
            &mut self,
            command: u16,
            attrs: &[(u16, &[u8])],
            v2_data: Option<&[u8]>,
        ) -> &mut Self {
            let mut payload = Vec::new();
            for (ty, val) in attrs {
                payload.extend_from_slice(&ty.to_le_bytes());
                payload.extend_from_slice(&(val.len() as u16).to_le_bytes());
                payload.extend_from_slice(val);
            }
            if let Some(data) = v2_data {
                assert!(self.version >= 2);
                payload.extend_from_slice(&attr::DATA.to_le_bytes());
                payload.extend_from_slice(data);
            }
            let mut cmd_bytes = Vec::new();
            cmd_bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            cmd_bytes.extend_from_slice(&command.to_le_bytes());
            cmd_bytes.extend_from_slice(&[0; 4]);
            cmd_bytes.extend_from_slice(&payload);
            let crc = crc32c_update(0, &cmd_bytes);
            cmd_bytes[6..10].copy_from_slice(&crc.to_le_bytes());
            self.buf.extend_from_slice(&cmd_bytes);
            self
        }

        fn c(&mut self, command: u16, attrs: &[(u16, &str)]) -> &mut Self {
            let attrs: Vec<(u16, &[u8])> = attrs.iter().map(|(t, v)| (*t, v.as_bytes())).collect();
            self.raw(command, &attrs, None)
        }

        fn p(&mut self, command: u16, path: &str) -> &mut Self {
            self.c(command, &[(attr::PATH, path)])
        }

        /// Incremental stream header, as the kernel writes it.
        fn snapshot(&mut self) -> &mut Self {
            self.c(
                cmd::SNAPSHOT,
                &[(attr::PATH, "s2"), (1, "0123456789abcdef")],
            )
        }

        fn mk(&mut self, command: u16, path: &str) -> &mut Self {
            self.raw(
                command,
                &[
                    (attr::PATH, path.as_bytes()),
                    (attr::INO, &300u64.to_le_bytes()),
                ],
                None,
            )
        }

        fn rename(&mut self, from: &str, to: &str) -> &mut Self {
            self.c(cmd::RENAME, &[(attr::PATH, from), (attr::PATH_TO, to)])
        }

        fn link(&mut self, new: &str, existing: &str) -> &mut Self {
            self.c(cmd::LINK, &[(attr::PATH, new), (attr::PATH_LINK, existing)])
        }

        fn end(&mut self) -> Vec<u8> {
            self.c(cmd::END, &[]);
            self.buf.clone()
        }
    }

    fn lines(entries: &[DiffEntry]) -> Vec<String> {
        entries.iter().map(|e| e.to_string()).collect()
    }

    fn diff_lines(bytes: &[u8]) -> Vec<String> {
        lines(&diff_from_stream(bytes).expect("stream parses"))
    }

    #[test]
    fn new_file_via_orphan_is_added_once() {
        let s = StreamBuilder::new(1)
            .snapshot()
            .mk(cmd::MKFILE, "o300-8-0")
            .rename("o300-8-0", "added")
            .p(cmd::UPDATE_EXTENT, "added")
            .p(cmd::CHOWN, "added")
            .p(cmd::CHMOD, "added")
            .p(cmd::UTIMES, "added")
            .p(cmd::UTIMES, "")
            .end();
        let entries = diff_from_stream(&s).unwrap();
        assert_eq!(
            entries,
            vec![DiffEntry {
                change: Change::Added,
                path: "added".into(),
                kind: EntryKind::File
            }]
        );
    }

    #[test]
    fn new_directory_tree_lists_every_entry() {
        let s = StreamBuilder::new(1)
            .snapshot()
            .mk(cmd::MKDIR, "o272-8-0")
            .rename("o272-8-0", "nd")
            .mk(cmd::MKFILE, "o273-8-0")
            .rename("o273-8-0", "nd/f1")
            .mk(cmd::MKDIR, "o274-8-0")
            .rename("o274-8-0", "nd/sub")
            .mk(cmd::MKFILE, "o275-8-0")
            .rename("o275-8-0", "nd/sub/f2")
            .p(cmd::UTIMES, "nd/sub")
            .end();
        assert_eq!(
            diff_lines(&s),
            ["+ nd", "+ nd/f1", "+ nd/sub", "+ nd/sub/f2"]
        );
        let kinds: Vec<EntryKind> = diff_from_stream(&s)
            .unwrap()
            .iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                EntryKind::Dir,
                EntryKind::File,
                EntryKind::Dir,
                EntryKind::File
            ]
        );
    }

    #[test]
    fn deleted_directory_through_orphan_name_reports_old_paths() {
        let s = StreamBuilder::new(1)
            .snapshot()
            .p(cmd::UNLINK, "del")
            .rename("gone", "o264-7-0")
            .p(cmd::UNLINK, "o264-7-0/z")
            .p(cmd::RMDIR, "o264-7-0")
            .end();
        assert_eq!(diff_lines(&s), ["- del", "- gone", "- gone/z"]);
        let e = diff_from_stream(&s).unwrap();
        assert_eq!(e[1].kind, EntryKind::Dir);
    }

    #[test]
    fn rename_via_link_and_unlink_is_one_rename() {
        let s = StreamBuilder::new(1)
            .snapshot()
            .link("renamed", "ren")
            .p(cmd::UNLINK, "ren")
            .p(cmd::UTIMES, "renamed")
            .end();
        assert_eq!(diff_lines(&s), ["R ren → renamed"]);
    }

    #[test]
    fn renamed_directory_is_one_entry_and_children_keep_their_identity() {
        let s = StreamBuilder::new(1)
            .snapshot()
            .rename("dir", "dir2")
            .p(cmd::UTIMES, "dir2")
            .p(cmd::UTIMES, "dir2/x")
            .end();
        assert_eq!(diff_lines(&s), ["R dir → dir2"]);

        // A child modified after its directory moved is M at its new path, nothing else.
        let s = StreamBuilder::new(1)
            .snapshot()
            .rename("dir", "dir2")
            .p(cmd::UPDATE_EXTENT, "dir2/x")
            .link("dir2/y2", "dir2/y")
            .p(cmd::UNLINK, "dir2/y")
            .end();
        assert_eq!(
            diff_lines(&s),
            ["R dir → dir2", "M dir2/x", "R dir/y → dir2/y2"]
        );
    }

    #[test]
    fn directory_moved_into_new_directory_keeps_old_child_paths() {
        let s = StreamBuilder::new(1)
            .snapshot()
            .mk(cmd::MKDIR, "o300-9-0")
            .rename("o300-9-0", "new")
            .rename("old", "new/old")
            .p(cmd::TRUNCATE, "new/old/f")
            .end();
        assert_eq!(diff_lines(&s), ["+ new", "R old → new/old", "M new/old/f"]);
    }

    #[test]
    fn swapped_names_are_two_renames() {
        let s = StreamBuilder::new(1)
            .snapshot()
            .rename("a", "o257-7-0")
            .rename("b", "a")
            .rename("o257-7-0", "b")
            .end();
        assert_eq!(diff_lines(&s), ["R b → a", "R a → b"]);
    }

    #[test]
    fn symlink_retarget_is_modified_and_symlink_add_delete_are_plain() {
        let s = StreamBuilder::new(1)
            .snapshot()
            .p(cmd::UNLINK, "link")
            .p(cmd::UNLINK, "linkdel")
            .c(
                cmd::SYMLINK,
                &[(attr::PATH, "o276-8-0"), (attr::PATH_LINK, "t2")],
            )
            .rename("o276-8-0", "link")
            .p(cmd::CHOWN, "link")
            .c(
                cmd::SYMLINK,
                &[(attr::PATH, "o277-8-0"), (attr::PATH_LINK, "tgt")],
            )
            .rename("o277-8-0", "newlink")
            .end();
        let e = diff_from_stream(&s).unwrap();
        assert_eq!(lines(&e), ["M link", "- linkdel", "+ newlink"]);
        assert_eq!(e[0].kind, EntryKind::Symlink);
        assert_eq!(e[2].kind, EntryKind::Symlink);
    }

    #[test]
    fn replacing_a_directory_by_a_file_is_not_merged() {
        let s = StreamBuilder::new(1)
            .snapshot()
            .p(cmd::RMDIR, "x")
            .mk(cmd::MKFILE, "o300-9-0")
            .rename("o300-9-0", "x")
            .end();
        assert_eq!(diff_lines(&s), ["- x", "+ x"]);
    }

    #[test]
    fn hardlinks_added_and_removed() {
        let s = StreamBuilder::new(1)
            .snapshot()
            .link("hlnew", "hl")
            .p(cmd::UTIMES, "hl")
            .p(cmd::UNLINK, "hl2b")
            .p(cmd::UTIMES, "hl2")
            .end();
        assert_eq!(diff_lines(&s), ["- hl2b", "+ hlnew"]);
    }

    #[test]
    fn new_file_with_two_links_is_added_twice() {
        let s = StreamBuilder::new(1)
            .snapshot()
            .mk(cmd::MKFILE, "o300-9-0")
            .rename("o300-9-0", "a")
            .link("b", "a")
            .end();
        assert_eq!(diff_lines(&s), ["+ a", "+ b"]);
    }

    #[test]
    fn metadata_changes_are_modified_but_times_are_not() {
        let s = StreamBuilder::new(1)
            .snapshot()
            .p(cmd::CHMOD, "keep")
            .p(cmd::UTIMES, "touched")
            .p(cmd::UTIMES, "somedir")
            .p(cmd::CHOWN, "owned")
            .c(
                cmd::SET_XATTR,
                &[(attr::PATH, "xdir"), (13, "user.a"), (14, "1")],
            )
            .c(cmd::REMOVE_XATTR, &[(attr::PATH, "xfile"), (13, "user.b")])
            .p(cmd::UTIMES, "")
            .end();
        assert_eq!(diff_lines(&s), ["M keep", "M owned", "M xdir", "M xfile"]);
    }

    #[test]
    fn root_mode_change_is_reported_as_dot() {
        let s = StreamBuilder::new(1).snapshot().p(cmd::CHMOD, "").end();
        assert_eq!(diff_lines(&s), ["M ."]);
    }

    #[test]
    fn renamed_and_modified_file_gives_rename_and_modify() {
        let s = StreamBuilder::new(1)
            .snapshot()
            .link("both2", "both")
            .p(cmd::UNLINK, "both")
            .p(cmd::UPDATE_EXTENT, "both2")
            .end();
        let e = diff_from_stream(&s).unwrap();
        assert_eq!(lines(&e), ["R both → both2", "M both2"]);
        assert_eq!(e[0].kind, EntryKind::File);
    }

    #[test]
    fn empty_incremental_stream_is_empty_diff() {
        let s = StreamBuilder::new(1).snapshot().p(cmd::UTIMES, "").end();
        assert!(diff_from_stream(&s).unwrap().is_empty());
    }

    #[test]
    fn full_stream_lists_everything_as_added() {
        let s = StreamBuilder::new(1)
            .c(cmd::SUBVOL, &[(attr::PATH, "s1")])
            .mk(cmd::MKFILE, "o257-5-0")
            .rename("o257-5-0", "f")
            .c(
                cmd::WRITE,
                &[
                    (attr::PATH, "f"),
                    (18, "\0\0\0\0\0\0\0\0"),
                    (attr::DATA, "hi"),
                ],
            )
            .end();
        assert_eq!(diff_lines(&s), ["+ f"]);
    }

    #[test]
    fn unknown_commands_are_skipped() {
        let s = StreamBuilder::new(1)
            .snapshot()
            .c(200, &[(attr::PATH, "whatever"), (99, "x")])
            .p(cmd::UNLINK, "gone")
            .end();
        assert_eq!(diff_lines(&s), ["- gone"]);
    }

    #[test]
    fn v2_data_attribute_runs_to_end_of_command() {
        // The DATA payload starts with bytes that would look like a huge TLV in v1 parsing.
        let data = [0xff_u8, 0xff, 0xff, 0xff, 1, 2, 3];
        let s = StreamBuilder::new(2)
            .snapshot()
            .raw(
                cmd::WRITE,
                &[(attr::PATH, b"f"), (18, &0u64.to_le_bytes())],
                Some(&data),
            )
            .raw(cmd::ENCODED_WRITE, &[(attr::PATH, b"g")], Some(&data))
            .p(cmd::FALLOCATE, "h")
            .p(cmd::FILEATTR, "i")
            .end();
        assert_eq!(diff_lines(&s), ["M f", "M g", "M h", "M i"]);
        let parsed = stream::parse(&s).unwrap();
        assert_eq!(parsed.version, 2);
        assert_eq!(parsed.commands[1].attr(attr::DATA), Some(&data[..]));
    }

    #[test]
    fn corrupt_crc_is_rejected() {
        let mut s = StreamBuilder::new(1)
            .snapshot()
            .p(cmd::UNLINK, "gone")
            .end();
        // Flip one byte of the unlink path ("gone" → "gune"); header 17 + snapshot cmd.
        let pos = s.windows(4).position(|w| w == b"gone").unwrap() + 1;
        s[pos] = b'u';
        match diff_from_stream(&s) {
            Err(DiffError::CrcMismatch { command, .. }) => assert_eq!(command, "unlink"),
            other => panic!("expected a crc error, got {other:?}"),
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let s = StreamBuilder::new(1)
            .snapshot()
            .mk(cmd::MKFILE, "o300-8-0")
            .rename("o300-8-0", "added")
            .end();
        for len in 0..s.len() {
            let r = diff_from_stream(&s[..len]);
            assert!(r.is_err(), "prefix of {len} bytes parsed: {r:?}");
        }
        assert!(matches!(
            diff_from_stream(&s[..s.len() - 3]),
            Err(DiffError::Truncated { .. })
        ));
        // Cut exactly before the end command.
        let end_len = 10;
        assert!(matches!(
            diff_from_stream(&s[..s.len() - end_len]),
            Err(DiffError::MissingEnd { .. })
        ));
    }

    #[test]
    fn attribute_longer_than_command_is_an_error() {
        let mut b = StreamBuilder::new(1);
        // Payload: PATH claiming 50 bytes but carrying 3; build the command by hand.
        let mut payload = Vec::new();
        payload.extend_from_slice(&attr::PATH.to_le_bytes());
        payload.extend_from_slice(&50u16.to_le_bytes());
        payload.extend_from_slice(b"abc");
        let mut c = Vec::new();
        c.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        c.extend_from_slice(&cmd::UNLINK.to_le_bytes());
        c.extend_from_slice(&[0; 4]);
        c.extend_from_slice(&payload);
        let crc = crc32c_update(0, &c);
        c[6..10].copy_from_slice(&crc.to_le_bytes());
        b.buf.extend_from_slice(&c);
        let s = b.end();
        assert!(matches!(
            diff_from_stream(&s),
            Err(DiffError::BadAttribute {
                command: "unlink",
                ..
            })
        ));
    }

    #[test]
    fn bad_header_and_version_and_missing_attribute() {
        assert!(matches!(
            diff_from_stream(b"not-a-stream-at-all!"),
            Err(DiffError::BadMagic)
        ));
        let s = StreamBuilder::new(9).end();
        assert!(matches!(
            diff_from_stream(&s),
            Err(DiffError::UnsupportedVersion { version: 9 })
        ));
        let s = StreamBuilder::new(1)
            .c(cmd::RENAME, &[(attr::PATH, "a")])
            .end();
        assert!(matches!(
            diff_from_stream(&s),
            Err(DiffError::MissingAttribute {
                attribute: "path_to",
                ..
            })
        ));
    }

    #[test]
    fn inconsistent_streams_are_errors() {
        // A name inside a directory created by the stream must have been created too.
        let s = StreamBuilder::new(1)
            .snapshot()
            .mk(cmd::MKDIR, "o300-8-0")
            .p(cmd::UNLINK, "o300-8-0/nothing")
            .end();
        assert!(matches!(
            diff_from_stream(&s),
            Err(DiffError::Inconsistent {
                command: "unlink",
                ..
            })
        ));
        // A name that was moved away is gone.
        let s = StreamBuilder::new(1)
            .snapshot()
            .rename("a", "b")
            .p(cmd::UNLINK, "a")
            .end();
        assert!(matches!(
            diff_from_stream(&s),
            Err(DiffError::Inconsistent { .. })
        ));
        let s = StreamBuilder::new(1).snapshot().rename("a", "a/b").end();
        assert!(matches!(
            diff_from_stream(&s),
            Err(DiffError::Inconsistent { .. })
        ));
        let s = StreamBuilder::new(1)
            .snapshot()
            .p(cmd::UNLINK, "../x")
            .end();
        assert!(matches!(
            diff_from_stream(&s),
            Err(DiffError::Inconsistent { .. })
        ));
    }

    #[test]
    fn random_garbage_never_panics() {
        // Valid framing and checksums around random command numbers and attribute bytes, so
        // the attribute decoder and the replay see garbage.
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let paths = [
            "a",
            "a/b",
            "o257-1-0",
            "o257-1-0/x",
            "",
            "..",
            "/abs",
            "a//b/",
            "./c",
        ];
        for round in 0..3000 {
            let mut b = StreamBuilder::new(1 + (round % 3) as u32);
            for _ in 0..next(12) {
                let command = next(30) as u16;
                if next(3) == 0 {
                    let junk: Vec<u8> = (0..next(24)).map(|_| next(256) as u8).collect();
                    b.raw(command, &[], None);
                    // Replace the last command's payload with junk, keeping a valid crc.
                    let start = b.buf.len() - 10;
                    b.buf.truncate(start);
                    let mut c = Vec::new();
                    c.extend_from_slice(&(junk.len() as u32).to_le_bytes());
                    c.extend_from_slice(&command.to_le_bytes());
                    c.extend_from_slice(&[0; 4]);
                    c.extend_from_slice(&junk);
                    let crc = crc32c_update(0, &c);
                    c[6..10].copy_from_slice(&crc.to_le_bytes());
                    b.buf.extend_from_slice(&c);
                } else {
                    let p1 = paths[next(paths.len() as u64) as usize];
                    let p2 = paths[next(paths.len() as u64) as usize];
                    b.c(
                        command,
                        &[(attr::PATH, p1), (attr::PATH_TO, p2), (attr::PATH_LINK, p2)],
                    );
                }
            }
            let s = b.end();
            let _ = diff_from_stream(&s);
        }
    }

    #[test]
    fn entries_serialize_flat() {
        let e = DiffEntry {
            change: Change::Renamed { from: "a".into() },
            path: "b".into(),
            kind: EntryKind::Dir,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"change":"renamed","from":"a","path":"b","kind":"dir"}"#
        );
        let e = DiffEntry {
            change: Change::Added,
            path: "c".into(),
            kind: EntryKind::Symlink,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"change":"added","path":"c","kind":"symlink"}"#
        );
        assert_eq!(e.symbol(), '+');
        assert_eq!(e.to_string(), "+ c");
    }
}

/// Real-btrfs tests: each builds its own 256 MiB filesystem on a loop device under a TempDir.
#[cfg(test)]
mod btrfs_tests {
    use super::*;
    use crate::sys::linux::LinuxSys;
    use std::ffi::OsString;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::process::Command;

    /// A mounted scratch btrfs; unmounted (and its autoclear loop device released) on drop.
    struct ScratchBtrfs {
        dir: tempfile::TempDir,
        mounted: bool,
    }

    impl ScratchBtrfs {
        fn mnt(&self) -> PathBuf {
            self.dir.path().join("mnt")
        }

        fn new(test: &str) -> Option<Self> {
            if !nix::unistd::geteuid().is_root() {
                eprintln!("SKIPPED (needs root): diff::btrfs_tests::{test}");
                return None;
            }
            let dir = tempfile::TempDir::new().expect("tempdir");
            let mut fs = ScratchBtrfs {
                dir,
                mounted: false,
            };
            let img = fs.dir.path().join("btrfs.img");
            fs::File::create(&img)
                .and_then(|f| f.set_len(256 << 20))
                .expect("create image");
            fs::create_dir(fs.mnt()).expect("mkdir mnt");
            run(Command::new("mkfs.btrfs").arg("-q").arg(&img));
            run(Command::new("mount")
                .arg("-o")
                .arg("loop")
                .arg(&img)
                .arg(fs.mnt()));
            fs.mounted = true;
            Some(fs)
        }
    }

    impl Drop for ScratchBtrfs {
        fn drop(&mut self) {
            if self.mounted {
                let ok = Command::new("umount")
                    .arg(self.mnt())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if !ok {
                    let _ = Command::new("umount").arg("-l").arg(self.mnt()).status();
                }
            }
        }
    }

    fn run(cmd: &mut Command) -> String {
        let out = cmd.output().expect("spawn");
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Create subvolume `ws`, run `setup` in it, snapshot read-only as `s1`, run `change`,
    /// snapshot as `s2`, and diff. Also returns `btrfs receive --dump` of the same stream
    /// (cross-check for failure messages only).
    fn scenario(
        test: &str,
        setup: impl FnOnce(&Path),
        change: impl FnOnce(&Path),
    ) -> Option<(Vec<DiffEntry>, String)> {
        let fs = ScratchBtrfs::new(test)?;
        let m = fs.mnt();
        let ws = m.join("ws");
        run(Command::new("btrfs").args(["subvolume", "create"]).arg(&ws));
        setup(&ws);
        run(Command::new("btrfs")
            .args(["subvolume", "snapshot", "-r"])
            .arg(&ws)
            .arg(m.join("s1")));
        change(&ws);
        run(Command::new("btrfs")
            .args(["subvolume", "snapshot", "-r"])
            .arg(&ws)
            .arg(m.join("s2")));
        let dump = run(Command::new("sh").arg("-c").arg(format!(
            "btrfs send -q --no-data -p '{0}/s1' '{0}/s2' | btrfs receive --dump",
            m.display()
        )));
        let sys = crate::sys::linux::LinuxSys::new().expect("mkfs.btrfs");
        let entries = diff_subvolumes(&sys, &m.join("s1"), &m.join("s2")).expect("diff");
        // The stream btrfs-progs writes gives the same lines (kinds aside).
        let progs = Command::new("btrfs")
            .args(["send", "-q", "--no-data", "-p"])
            .arg(m.join("s1"))
            .arg(m.join("s2"))
            .output()
            .expect("btrfs send");
        assert!(progs.status.success());
        let from_progs = diff_from_stream(&progs.stdout).expect("btrfs-progs stream parses");
        assert_eq!(lines(&from_progs), lines(&entries), "stream dump:\n{dump}");
        Some((entries, dump))
    }

    fn lines(entries: &[DiffEntry]) -> Vec<String> {
        entries.iter().map(|e| e.to_string()).collect()
    }

    fn write(p: &Path, s: &str) {
        fs::write(p, s).expect("write");
    }

    /// Assert the lines and kinds of a scenario.
    fn check(result: Option<(Vec<DiffEntry>, String)>, expected: &[(&str, EntryKind)]) {
        let Some((entries, dump)) = result else {
            return;
        };
        let got: Vec<(String, EntryKind)> =
            entries.iter().map(|e| (e.to_string(), e.kind)).collect();
        let want: Vec<(String, EntryKind)> =
            expected.iter().map(|(l, k)| (l.to_string(), *k)).collect();
        assert_eq!(got, want, "stream dump:\n{dump}");
    }

    use EntryKind::{Dir, File, Symlink};

    #[test]
    fn btrfs_add_file() {
        let r = scenario("btrfs_add_file", |_| {}, |ws| write(&ws.join("new"), "x"));
        check(r, &[("+ new", File)]);
    }

    #[test]
    fn btrfs_delete_file() {
        let r = scenario(
            "btrfs_delete_file",
            |ws| write(&ws.join("old"), "x"),
            |ws| fs::remove_file(ws.join("old")).unwrap(),
        );
        check(r, &[("- old", File)]);
    }

    #[test]
    fn btrfs_modify_content() {
        let r = scenario(
            "btrfs_modify_content",
            |ws| {
                fs::create_dir(ws.join("d")).unwrap();
                write(&ws.join("d/f"), "one");
                write(&ws.join("same"), "same");
            },
            |ws| write(&ws.join("d/f"), "two, longer"),
        );
        check(r, &[("M d/f", File)]);
    }

    #[test]
    fn btrfs_chmod_file_and_dir() {
        let r = scenario(
            "btrfs_chmod_file_and_dir",
            |ws| {
                write(&ws.join("f"), "x");
                fs::create_dir(ws.join("d")).unwrap();
            },
            |ws| {
                fs::set_permissions(ws.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
                fs::set_permissions(ws.join("d"), fs::Permissions::from_mode(0o700)).unwrap();
            },
        );
        check(r, &[("M d", Dir), ("M f", File)]);
    }

    #[test]
    fn btrfs_rename_file() {
        let r = scenario(
            "btrfs_rename_file",
            |ws| write(&ws.join("a"), "x"),
            |ws| fs::rename(ws.join("a"), ws.join("b")).unwrap(),
        );
        check(r, &[("R a → b", File)]);
    }

    #[test]
    fn btrfs_rename_dir_with_children_is_one_rename() {
        let r = scenario(
            "btrfs_rename_dir_with_children_is_one_rename",
            |ws| {
                fs::create_dir_all(ws.join("dir/sub")).unwrap();
                write(&ws.join("dir/x"), "x");
                write(&ws.join("dir/sub/y"), "y");
            },
            |ws| fs::rename(ws.join("dir"), ws.join("dir2")).unwrap(),
        );
        check(r, &[("R dir → dir2", Dir)]);
    }

    #[test]
    fn btrfs_add_dir_with_children() {
        let r = scenario(
            "btrfs_add_dir_with_children",
            |ws| fs::create_dir(ws.join("existing")).unwrap(),
            |ws| {
                fs::create_dir_all(ws.join("existing/nd/sub")).unwrap();
                write(&ws.join("existing/nd/f1"), "1");
                write(&ws.join("existing/nd/sub/f2"), "2");
            },
        );
        check(
            r,
            &[
                ("+ existing/nd", Dir),
                ("+ existing/nd/f1", File),
                ("+ existing/nd/sub", Dir),
                ("+ existing/nd/sub/f2", File),
            ],
        );
    }

    #[test]
    fn btrfs_delete_dir_with_children() {
        let r = scenario(
            "btrfs_delete_dir_with_children",
            |ws| {
                fs::create_dir_all(ws.join("gone/sub")).unwrap();
                write(&ws.join("gone/z"), "z");
                write(&ws.join("gone/sub/w"), "w");
                write(&ws.join("stays"), "s");
            },
            |ws| fs::remove_dir_all(ws.join("gone")).unwrap(),
        );
        check(
            r,
            &[
                ("- gone", Dir),
                ("- gone/sub", Dir),
                ("- gone/sub/w", File),
                ("- gone/z", File),
            ],
        );
    }

    #[test]
    fn btrfs_symlink_add_retarget_delete() {
        let r = scenario(
            "btrfs_symlink_add_retarget_delete",
            |ws| {
                symlink("t1", ws.join("retarget")).unwrap();
                symlink("t1", ws.join("del")).unwrap();
                symlink("same", ws.join("keep")).unwrap();
            },
            |ws| {
                symlink("new-target", ws.join("added")).unwrap();
                fs::remove_file(ws.join("del")).unwrap();
                fs::remove_file(ws.join("retarget")).unwrap();
                symlink("t2", ws.join("retarget")).unwrap();
            },
        );
        check(
            r,
            &[
                ("+ added", Symlink),
                ("- del", Symlink),
                ("M retarget", Symlink),
            ],
        );
    }

    #[test]
    fn btrfs_hardlink_add_and_remove() {
        let r = scenario(
            "btrfs_hardlink_add_and_remove",
            |ws| {
                write(&ws.join("hl"), "h");
                write(&ws.join("two"), "2");
                fs::hard_link(ws.join("two"), ws.join("two-b")).unwrap();
            },
            |ws| {
                fs::hard_link(ws.join("hl"), ws.join("hl-new")).unwrap();
                fs::remove_file(ws.join("two-b")).unwrap();
            },
        );
        check(r, &[("+ hl-new", File), ("- two-b", File)]);
    }

    #[test]
    fn btrfs_file_renamed_and_modified() {
        let r = scenario(
            "btrfs_file_renamed_and_modified",
            |ws| write(&ws.join("both"), "q"),
            |ws| {
                fs::rename(ws.join("both"), ws.join("both2")).unwrap();
                write(&ws.join("both2"), "q and more");
            },
        );
        check(r, &[("R both → both2", File), ("M both2", File)]);
    }

    #[test]
    fn btrfs_file_moved_into_other_dir_and_dir_touched() {
        let r = scenario(
            "btrfs_file_moved_into_other_dir_and_dir_touched",
            |ws| {
                fs::create_dir(ws.join("a")).unwrap();
                fs::create_dir(ws.join("b")).unwrap();
                write(&ws.join("a/f"), "f");
                write(&ws.join("b/g"), "g");
            },
            |ws| {
                fs::rename(ws.join("a/f"), ws.join("b/f")).unwrap();
                // Only times change on b/g and on both directories.
                fs::File::options()
                    .write(true)
                    .open(ws.join("b/g"))
                    .unwrap()
                    .set_modified(std::time::SystemTime::now())
                    .unwrap();
            },
        );
        check(r, &[("R a/f → b/f", File)]);
    }

    #[test]
    fn btrfs_swap_names() {
        let r = scenario(
            "btrfs_swap_names",
            |ws| {
                write(&ws.join("a"), "a");
                fs::create_dir(ws.join("b")).unwrap();
            },
            |ws| {
                fs::rename(ws.join("a"), ws.join("tmp")).unwrap();
                fs::rename(ws.join("b"), ws.join("a")).unwrap();
                fs::rename(ws.join("tmp"), ws.join("b")).unwrap();
            },
        );
        check(r, &[("R b → a", Dir), ("R a → b", File)]);
    }

    #[test]
    fn btrfs_no_change_is_empty() {
        let r = scenario(
            "btrfs_no_change_is_empty",
            |ws| {
                fs::create_dir(ws.join("d")).unwrap();
                write(&ws.join("d/f"), "x");
            },
            |_| {},
        );
        check(r, &[]);
    }

    #[test]
    fn btrfs_same_snapshot_twice_is_empty() {
        let Some(fs) = ScratchBtrfs::new("btrfs_same_snapshot_twice_is_empty") else {
            return;
        };
        let m = fs.mnt();
        run(Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(m.join("ws")));
        run(Command::new("btrfs")
            .args(["subvolume", "snapshot", "-r"])
            .arg(m.join("ws"))
            .arg(m.join("s1")));
        assert!(diff_subvolumes(
            &LinuxSys::new().expect("mkfs.btrfs"),
            &m.join("s1"),
            &m.join("s1")
        )
        .unwrap()
        .is_empty());
    }

    #[test]
    fn btrfs_rejects_writable_plain_and_foreign_paths() {
        let Some(fs) = ScratchBtrfs::new("btrfs_rejects_writable_plain_and_foreign_paths") else {
            return;
        };
        let m = fs.mnt();
        run(Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(m.join("ws")));
        run(Command::new("btrfs")
            .args(["subvolume", "snapshot", "-r"])
            .arg(m.join("ws"))
            .arg(m.join("s1")));
        fs::create_dir(m.join("plain")).unwrap();
        let err = diff_subvolumes(
            &LinuxSys::new().expect("mkfs.btrfs"),
            &m.join("s1"),
            &m.join("ws"),
        )
        .unwrap_err();
        assert!(
            matches!(err, DiffError::NotReadOnly { ref path } if path == &m.join("ws")),
            "{err}"
        );
        assert!(err.to_string().contains("read-only snapshot"));
        let err = diff_subvolumes(
            &LinuxSys::new().expect("mkfs.btrfs"),
            &m.join("plain"),
            &m.join("s1"),
        )
        .unwrap_err();
        assert!(matches!(err, DiffError::NotSubvolume { .. }), "{err}");
        let err = diff_subvolumes(
            &LinuxSys::new().expect("mkfs.btrfs"),
            &m.join("missing"),
            &m.join("s1"),
        )
        .unwrap_err();
        assert!(matches!(err, DiffError::Open { .. }), "{err}");

        // A read-only snapshot on another btrfs filesystem.
        let Some(other) = ScratchBtrfs::new("btrfs_rejects_writable_plain_and_foreign_paths")
        else {
            return;
        };
        let o = other.mnt();
        run(Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(o.join("ws")));
        run(Command::new("btrfs")
            .args(["subvolume", "snapshot", "-r"])
            .arg(o.join("ws"))
            .arg(o.join("s1")));
        let err = diff_subvolumes(
            &LinuxSys::new().expect("mkfs.btrfs"),
            &m.join("s1"),
            &o.join("s1"),
        )
        .unwrap_err();
        assert!(
            matches!(err, DiffError::DifferentFilesystems { .. }),
            "{err}"
        );

        // /proc is never btrfs.
        let err = diff_subvolumes(
            &LinuxSys::new().expect("mkfs.btrfs"),
            Path::new("/proc"),
            &m.join("s1"),
        )
        .unwrap_err();
        assert!(matches!(err, DiffError::NotBtrfs { .. }), "{err}");
    }

    /// Deterministic xorshift generator for the randomized test.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// Every entry under `root` (relative path, lstat), depth first, root excluded.
    fn walk(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let mut names: Vec<_> = fs::read_dir(root.join(&rel))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for name in names {
                let p = rel.join(&name);
                let md = fs::symlink_metadata(root.join(&p)).unwrap();
                if md.is_dir() {
                    stack.push(p.clone());
                }
                out.push((p, md));
            }
        }
        out
    }

    fn kind_of(md: &fs::Metadata) -> EntryKind {
        let ft = md.file_type();
        if ft.is_dir() {
            Dir
        } else if ft.is_symlink() {
            Symlink
        } else if ft.is_file() {
            File
        } else {
            EntryKind::Other
        }
    }

    /// What the diff must say, computed by comparing inode numbers (snapshots keep them) of
    /// the two trees. Assumes no hardlinks.
    fn oracle(old_root: &Path, new_root: &Path) -> Vec<DiffEntry> {
        use std::os::unix::fs::MetadataExt;
        struct Info {
            link: (u64, OsString),
            path: PathBuf,
            kind: EntryKind,
            mode: u32,
            content: Option<Vec<u8>>,
        }
        let index = |root: &Path| -> HashMap<u64, Info> {
            walk(root)
                .into_iter()
                .map(|(p, md)| {
                    let parent_ino = fs::symlink_metadata(root.join(p.parent().unwrap()))
                        .unwrap()
                        .ino();
                    let content = md.is_file().then(|| fs::read(root.join(&p)).unwrap());
                    let info = Info {
                        link: (parent_ino, p.file_name().unwrap().to_os_string()),
                        kind: kind_of(&md),
                        mode: md.mode(),
                        content,
                        path: p,
                    };
                    (md.ino(), info)
                })
                .collect()
        };
        let old = index(old_root);
        let new = index(new_root);
        let mut out = Vec::new();
        let entry = |change, i: &Info| DiffEntry {
            change,
            path: i.path.clone(),
            kind: i.kind,
        };
        for (ino, o) in &old {
            match new.get(ino) {
                Some(n) if n.kind == o.kind => {
                    if n.link != o.link {
                        out.push(entry(
                            Change::Renamed {
                                from: o.path.clone(),
                            },
                            n,
                        ));
                    }
                    if n.mode != o.mode || n.content != o.content {
                        out.push(entry(Change::Modified, n));
                    }
                }
                Some(n) => {
                    out.push(entry(Change::Deleted, o));
                    out.push(entry(Change::Added, n));
                }
                None => out.push(entry(Change::Deleted, o)),
            }
        }
        for (ino, n) in &new {
            if !old.contains_key(ino) {
                out.push(entry(Change::Added, n));
            }
        }
        finish(out)
    }

    /// One random mutation of the workspace. Names come from a small pool so that paths are
    /// reused (delete then recreate, rename onto a freed name, rename over a file).
    fn mutate(ws: &Path, rng: &mut Rng, counter: &mut u64) {
        const NAMES: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let entries = walk(ws);
        let dirs: Vec<PathBuf> = std::iter::once(PathBuf::new())
            .chain(
                entries
                    .iter()
                    .filter(|(_, m)| m.is_dir())
                    .map(|(p, _)| p.clone()),
            )
            .collect();
        let pick_dir = |rng: &mut Rng| dirs[rng.below(dirs.len())].clone();
        let pick = |rng: &mut Rng, want: fn(&fs::Metadata) -> bool| {
            let c: Vec<&PathBuf> = entries
                .iter()
                .filter(|(_, m)| want(m))
                .map(|(p, _)| p)
                .collect();
            (!c.is_empty()).then(|| c[rng.below(c.len())].clone())
        };
        let free_name = |rng: &mut Rng, dir: &Path| {
            let p = dir.join(NAMES[rng.below(NAMES.len())]);
            (fs::symlink_metadata(ws.join(&p)).is_err()).then_some(p)
        };
        *counter += 1;
        let unique = format!("content {counter}");
        match rng.below(10) {
            0 | 1 => {
                let d = pick_dir(rng);
                if let Some(p) = free_name(rng, &d) {
                    write(&ws.join(p), &unique);
                }
            }
            2 => {
                let d = pick_dir(rng);
                if let Some(p) = free_name(rng, &d) {
                    fs::create_dir(ws.join(p)).unwrap();
                }
            }
            3 => {
                if let Some(p) = pick(rng, |m| !m.is_dir()) {
                    fs::remove_file(ws.join(p)).unwrap();
                }
            }
            4 => {
                if let Some(p) = pick(rng, |m| m.is_dir()) {
                    fs::remove_dir_all(ws.join(p)).unwrap();
                }
            }
            5 => {
                let Some(src) = pick(rng, |_| true) else {
                    return;
                };
                let d = pick_dir(rng);
                if d.starts_with(&src) {
                    return;
                }
                let target = d.join(NAMES[rng.below(NAMES.len())]);
                let src_is_dir = ws.join(&src).is_dir() && !ws.join(&src).is_symlink();
                match fs::symlink_metadata(ws.join(&target)) {
                    Err(_) => fs::rename(ws.join(&src), ws.join(&target)).unwrap(),
                    // Rename over an existing non-directory.
                    Ok(m) if !m.is_dir() && !src_is_dir && target != src => {
                        fs::rename(ws.join(&src), ws.join(&target)).unwrap()
                    }
                    Ok(_) => {}
                }
            }
            6 => {
                if let Some(p) = pick(rng, |m| m.is_file()) {
                    write(&ws.join(p), &unique);
                }
            }
            7 => {
                if let Some(p) = pick(rng, |m| !m.file_type().is_symlink()) {
                    let mode = fs::metadata(ws.join(&p)).unwrap().permissions().mode();
                    let new = if mode & 0o077 == 0 { 0o755 } else { 0o700 };
                    fs::set_permissions(ws.join(p), fs::Permissions::from_mode(new)).unwrap();
                }
            }
            8 => {
                let d = pick_dir(rng);
                if let Some(p) = free_name(rng, &d) {
                    symlink(&unique, ws.join(p)).unwrap();
                }
            }
            _ => {
                if let Some(p) = pick(rng, |m| m.file_type().is_symlink()) {
                    fs::remove_file(ws.join(&p)).unwrap();
                    symlink(&unique, ws.join(p)).unwrap();
                }
            }
        }
    }

    #[test]
    fn btrfs_random_changes_match_inode_oracle() {
        let Some(fs) = ScratchBtrfs::new("btrfs_random_changes_match_inode_oracle") else {
            return;
        };
        let m = fs.mnt();
        for seed in 1..=24u64 {
            let ws = m.join(format!("ws{seed}"));
            run(Command::new("btrfs").args(["subvolume", "create"]).arg(&ws));
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut counter = 0;
            let mut prev: Option<PathBuf> = None;
            for round in 0..5 {
                for _ in 0..if round == 0 { 80 } else { 40 } {
                    mutate(&ws, &mut rng, &mut counter);
                }
                let snap = m.join(format!("s{seed}-{round}"));
                run(Command::new("btrfs")
                    .args(["subvolume", "snapshot", "-r"])
                    .arg(&ws)
                    .arg(&snap));
                if let Some(prev) = &prev {
                    let got = diff_subvolumes(&LinuxSys::new().expect("mkfs.btrfs"), prev, &snap)
                        .expect("diff");
                    let want = oracle(prev, &snap);
                    if got != want {
                        let dump = run(Command::new("sh").arg("-c").arg(format!(
                            "btrfs send -q --no-data -p '{}' '{}' | btrfs receive --dump",
                            prev.display(),
                            snap.display()
                        )));
                        panic!(
                            "seed {seed} round {round}:\n got: {:#?}\nwant: {:#?}\nstream:\n{dump}",
                            lines(&got),
                            lines(&want)
                        );
                    }
                }
                prev = Some(snap);
            }
        }
    }

    #[test]
    fn btrfs_tangled_directory_moves() {
        let r = scenario(
            "btrfs_tangled_directory_moves",
            |ws| {
                fs::create_dir_all(ws.join("a/b/c")).unwrap();
                write(&ws.join("a/b/c/f"), "f");
                write(&ws.join("a/g"), "g");
                fs::create_dir_all(ws.join("x/in")).unwrap();
                fs::create_dir_all(ws.join("y/in")).unwrap();
                fs::create_dir(ws.join("d")).unwrap();
                write(&ws.join("d/f"), "old");
            },
            |ws| {
                // The parent becomes a child of its former child.
                fs::rename(ws.join("a/b"), ws.join("top")).unwrap();
                fs::rename(ws.join("a"), ws.join("top/c/a")).unwrap();
                // Swap two directories.
                fs::rename(ws.join("x"), ws.join("tmp")).unwrap();
                fs::rename(ws.join("y"), ws.join("x")).unwrap();
                fs::rename(ws.join("tmp"), ws.join("y")).unwrap();
                // Move a directory away and recreate its name with a same-named child.
                fs::rename(ws.join("d"), ws.join("d_old")).unwrap();
                fs::create_dir(ws.join("d")).unwrap();
                write(&ws.join("d/f"), "new");
            },
        );
        check(
            r,
            &[
                ("+ d", Dir),
                ("+ d/f", File),
                ("R d → d_old", Dir),
                ("R a/b → top", Dir),
                ("R a → top/c/a", Dir),
                ("R y → x", Dir),
                ("R x → y", Dir),
            ],
        );
    }
}
