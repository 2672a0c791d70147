//! The one error type of the tree engine: what was being done ([`Op`]), on which path, why, and
//! how to fix it. Every variant's message names the path and ends with the fix.
//!
//! What it must not do: lose the OS error code (the worker protocol carries it), or name a path
//! the job was not given (paths are the caller's labels joined with names inside the tree).

use std::io;
use std::path::PathBuf;

use super::fd::Identity;

/// The operation that failed, for [`TreeError::Io`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Op {
    /// Open a file.
    Open,
    /// Open a directory.
    OpenDir,
    /// List a directory.
    ReadDir,
    /// `statx`.
    Stat,
    /// Create a regular file.
    Create,
    /// Create a directory.
    CreateDir,
    /// Create a symlink.
    CreateSymlink,
    /// Create a FIFO, socket or device node.
    CreateSpecial,
    /// Create a hard link.
    Link,
    /// Read a symlink.
    ReadLink,
    /// Read file data.
    Read,
    /// Write file data.
    Write,
    /// Share data with `FICLONE`.
    Reflink,
    /// `SEEK_DATA`/`SEEK_HOLE`.
    Seek,
    /// Set the size of a file.
    Truncate,
    /// Change the owner.
    Chown,
    /// Change the mode.
    Chmod,
    /// Set timestamps.
    SetTimes,
    /// List extended attributes.
    ListXattrs,
    /// Read an extended attribute.
    GetXattr,
    /// Set an extended attribute.
    SetXattr,
    /// Remove an extended attribute.
    RemoveXattr,
    /// Remove a file, symlink or special file.
    Remove,
    /// Remove a directory.
    RemoveDir,
    /// Flush the destination filesystem.
    Sync,
    /// Exchange two entries.
    Exchange,
}

impl Op {
    /// The verb phrase used in messages ("cannot {op} {path}").
    pub fn verb(self) -> &'static str {
        match self {
            Op::Open => "open",
            Op::OpenDir => "open directory",
            Op::ReadDir => "read directory",
            Op::Stat => "stat",
            Op::Create => "create",
            Op::CreateDir => "create directory",
            Op::CreateSymlink => "create symlink",
            Op::CreateSpecial => "create special file",
            Op::Link => "create hard link",
            Op::ReadLink => "read symlink",
            Op::Read => "read",
            Op::Write => "write",
            Op::Reflink => "reflink (FICLONE) into",
            Op::Seek => "find data and holes in",
            Op::Truncate => "set the size of",
            Op::Chown => "change the owner of",
            Op::Chmod => "change the mode of",
            Op::SetTimes => "set the times of",
            Op::ListXattrs => "list extended attributes of",
            Op::GetXattr => "read an extended attribute of",
            Op::SetXattr => "set an extended attribute on",
            Op::RemoveXattr => "remove an extended attribute of",
            Op::Remove => "remove",
            Op::RemoveDir => "remove directory",
            Op::Sync => "flush (syncfs)",
            Op::Exchange => "exchange",
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.verb())
    }
}

/// How to fix an I/O error, by errno.
pub(crate) fn fix_for(source: &io::Error) -> &'static str {
    match source.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => {
            "the job runs with the permissions of the tree's owner: make the entry accessible \
             to its owner (or move it out of the tree) and retry"
        }
        Some(libc::ENOSPC | libc::EDQUOT) => "free space on the destination and retry",
        Some(libc::ELOOP | libc::ENOTDIR | libc::EISDIR | libc::ENOENT | libc::ENOTEMPTY) => {
            "the entry was replaced or removed while ws-ckpt worked on it: stop programs \
             changing the tree and retry"
        }
        Some(libc::EXDEV) => {
            "another filesystem is mounted there: unmount it (or move it out of the tree) and \
             retry"
        }
        Some(libc::EMFILE | libc::ENFILE) => {
            "too many open files: raise the open-file limit (LimitNOFILE) and retry"
        }
        Some(libc::ENAMETOOLONG) => "shorten the names in the tree and retry",
        Some(libc::ENOSYS) => "ws-ckpt needs Linux 5.8 or newer (openat2, statx mount ids)",
        _ => "fix the cause and retry",
    }
}

/// Errors of tree copy, verification, subset proof and removal.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A system call on `path` failed.
    #[error("cannot {op} {}: {source}; {}", path.display(), fix_for(source))]
    Io {
        /// What was being done.
        op: Op,
        /// The path it was done to (the caller's label of a root joined with names below it).
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The tree contains a mount point of another filesystem, which is never crossed.
    #[error(
        "{} is a mount point inside the tree; unmount it (or move it out of the tree) and retry",
        path.display()
    )]
    MountPoint {
        /// The directory where another filesystem is mounted.
        path: PathBuf,
    },
    /// A copy differs from its original.
    #[error(
        "the copy differs from the original at {}: {what}; the original was left untouched, \
         remove the copy and retry",
        path.display()
    )]
    Mismatch {
        /// Path relative to the compared roots ("." for the roots themselves).
        path: PathBuf,
        /// The first difference found.
        what: String,
    },
    /// A tree is not a subset of its verified copy.
    #[error(
        "{} is not in the verified copy as it is in the original: {what}; keep both trees and \
         compare them by hand",
        path.display()
    )]
    NotSubset {
        /// Path relative to the compared roots.
        path: PathBuf,
        /// The first difference found.
        what: String,
    },
    /// An entry changed while it was being worked on (replaced, moved, retyped).
    #[error(
        "{} changed while ws-ckpt worked on it ({what}); stop programs changing the tree and \
         retry",
        path.display()
    )]
    Changed {
        /// The entry.
        path: PathBuf,
        /// What changed.
        what: String,
    },
    /// What is at a path is not the object that was recorded; nothing was done to it.
    #[error(
        "refusing to touch {}: it is not the directory ws-ckpt recorded (expected {expected}, \
         found {found}); nothing was changed — find out who replaced it",
        path.display()
    )]
    IdentityMismatch {
        /// The path.
        path: PathBuf,
        /// The recorded identity.
        expected: Identity,
        /// What is there now.
        found: Identity,
    },
    /// An entry that the tree's owner cannot create as herself (another owner, a device node).
    #[error(
        "cannot copy {} as uid {uid}: {what}; only root could recreate it — change it (or move \
         it out of the tree) and retry",
        path.display()
    )]
    NotRecreatable {
        /// The entry.
        path: PathBuf,
        /// The uid the copy runs as.
        uid: u32,
        /// Why it cannot be recreated.
        what: String,
    },
    /// The destination of a copy is not empty, or lies inside the source.
    #[error("cannot copy into {}: {what}; use an empty directory outside the source", path.display())]
    BadDestination {
        /// The destination.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The tree is deeper than the engine's limit.
    #[error(
        "{} is more than {limit} directories deep; ws-ckpt cannot copy or remove trees that deep \
         — flatten it and retry",
        path.display()
    )]
    TooDeep {
        /// The directory at the limit.
        path: PathBuf,
        /// The limit.
        limit: usize,
    },
    /// The caller cancelled the job.
    #[error("cancelled; nothing irreversible was done by the interrupted step, retry when ready")]
    Cancelled,
    /// The credentials a job should run with are unusable (no such user, no privilege).
    #[error("cannot act as {who}: {what}")]
    Credentials {
        /// Who the job should run as.
        who: String,
        /// Why it cannot.
        what: String,
    },
    /// The worker process failed (could not start, died, timed out, broke the protocol).
    #[error("the tree worker failed: {what}; the job did not finish, retry (see the daemon log)")]
    Worker {
        /// What happened.
        what: String,
    },
}

impl TreeError {
    /// The OS error code, for `Io` errors.
    pub fn errno(&self) -> Option<i32> {
        match self {
            TreeError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_path_and_the_fix() {
        let e = TreeError::Io {
            op: Op::Open,
            path: "/home/a/secret".into(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        let m = e.to_string();
        assert!(m.starts_with("cannot open /home/a/secret: "), "{m}");
        assert!(m.contains("permissions of the tree's owner"), "{m}");
        assert_eq!(e.errno(), Some(libc::EACCES));
        let m = TreeError::Io {
            op: Op::Write,
            path: "/x".into(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        }
        .to_string();
        assert!(m.contains("free space"), "{m}");
        let m = TreeError::IdentityMismatch {
            path: "/h/a/.ws-ckpt-init-x".into(),
            expected: Identity { dev: 1, ino: 2 },
            found: Identity { dev: 1, ino: 3 },
        }
        .to_string();
        assert!(
            m.contains("inode 2") && m.contains("inode 3") && m.contains("nothing was changed")
        );
        assert_eq!(TreeError::Cancelled.errno(), None);
    }
}
