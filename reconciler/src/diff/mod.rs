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
    Ok(normalize(entries))
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
    Ok(normalize(replay::analyze(bytes)?))
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

/// The last reporting rule, applied to raw entries: merge `-`/`+` pairs on one path into `M`
/// (when both are directories or both are not), remove duplicates, sort by path. Pure; public
/// so that an independent oracle can be compared entry for entry.
pub fn normalize(entries: Vec<DiffEntry>) -> Vec<DiffEntry> {
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
    fn the_checkpoint_record_on_the_root_is_not_a_change() {
        let name = crate::sys::CHECKPOINT_RECORD_XATTR;
        let s = StreamBuilder::new(1)
            .snapshot()
            .c(cmd::SET_XATTR, &[(attr::PATH, ""), (13, name), (14, "{}")])
            .c(cmd::REMOVE_XATTR, &[(attr::PATH, "sub"), (13, name)])
            .c(
                cmd::SET_XATTR,
                &[
                    (attr::PATH, "other"),
                    (13, "trusted.ws-ckpt.other"),
                    (14, "1"),
                ],
            )
            .end();
        assert_eq!(diff_lines(&s), ["M other"]);
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
