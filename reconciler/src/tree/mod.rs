//! The tree engine: copy, verify, prove a subset and remove directory trees **by descriptors**,
//! as the tree's owner. Used when a plain directory becomes a btrfs subvolume (init, SPEC §5.1),
//! when it goes back (release, §5.4) and when recovery finishes an interrupted one (§5.6); the
//! privilege boundary it enforces is SPEC §7.3.
//!
//! # What it does
//! - [`Job::copy`] recreates a tree faithfully: file types, modes incl. setuid/setgid/sticky,
//!   owners, nanosecond times, xattrs of every namespace the credentials allow, hardlink groups,
//!   sparse files (`SEEK_DATA`/`SEEK_HOLE`), verbatim symlinks, FIFOs, sockets, device nodes;
//!   `FICLONE` when source and destination share a filesystem.
//! - [`Job::verify`] proves two trees equal ([`Compare::Full`], or [`Compare::Metadata`] without
//!   reading content); sparse files are compared by their data/hole maps, holes never read.
//! - [`Job::prove_subset`] proves every entry of A is in B, equal ([`Compare::Subset`]).
//! - [`Job::remove`] removes a tree named by its parent's descriptor, its name and its recorded
//!   identity.
//! - [`names`] derives every temporary name ws-ckpt puts next to a user's path.
//!
//! Every entry is reached from its parent's descriptor ([`fd`]): `openat2` with
//! `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS|RESOLVE_NO_XDEV`, `O_NOFOLLOW`,
//! checked to be the inode that was listed; metadata is set on the descriptor of the entry just
//! created (`fchown`, `fsetxattr`, `fchmod`, `futimens`; for symlinks and special files the
//! `AT_EMPTY_PATH` calls on an `O_PATH` descriptor, or its `/proc/self/fd/N` magic link). Walks
//! are iterative, one descriptor per level of the current path; data goes through one 256 KiB
//! buffer; mount points (`STATX_MNT_ID`, `STATX_ATTR_MOUNT_ROOT`) are refused, nested btrfs
//! subvolumes are the same mount and are copied as plain directories. Progress is reported at
//! most ten times a second and a cancellation check runs between entries and between chunks.
//!
//! # Credentials
//! A [`Job`] runs as an [`Owner`] (uid, primary gid, supplementary groups from the user
//! database). When that owner is the calling process's own user (root for root's trees) the job
//! runs in-process. Otherwise it runs in a worker process ([`worker`]) that has become the owner
//! — so the **kernel** enforces her permissions on every entry, not an emulation of them.
//! Entries she could not create as herself (another owner, a group she is not in, a device node)
//! make the copy fail before anything is written, with [`TreeError::NotRecreatable`] naming the
//! path: ownership is never changed silently.
//!
//! Why a worker process and not per-thread `setfsuid`/`setfsgid` + raw `setgroups`:
//! - **Capabilities.** A per-thread fsuid only drops the filesystem capabilities (`CAP_CHOWN`,
//!   `CAP_DAC_*`, `CAP_FOWNER`, `CAP_FSETID`, `CAP_LINUX_IMMUTABLE`, `CAP_MKNOD`,
//!   `CAP_MAC_OVERRIDE`). The thread would keep `CAP_SYS_ADMIN` (`trusted.*` xattrs, many
//!   ioctls), `CAP_SETFCAP` (it could give a copied file capabilities the user could never set),
//!   `CAP_SYS_RESOURCE` (the copy could fill the filesystem's root-reserved blocks and ignore
//!   quotas on the user's behalf), `CAP_SYS_PTRACE`, `CAP_KILL`, … The worker drops everything:
//!   bounding and ambient sets emptied, `setresuid` to the owner (permitted and effective sets
//!   cleared by the kernel), `PR_SET_NO_NEW_PRIVS`, and the result is checked
//!   ([`CredReport::check`]) before any descriptor is touched.
//! - **Signals and ptrace.** A per-thread `setresuid` would let the user `tgkill` that thread —
//!   SIGKILL/SIGSTOP act on the whole daemon — so only fsuid could be used, with the gaps above.
//!   The worker's real and saved uid are the owner's: she *can* signal it (kill or stop her own
//!   job: the daemon sees the socket close or the idle timeout, kills and reaps the worker and
//!   reports the failure), but never the daemon. The worker is not dumpable, so she cannot
//!   ptrace it, read its memory or its `/proc/PID/fd`.
//! - **Fork safety.** The worker is started with `std::process::Command` (fork+exec or
//!   posix_spawn, nothing but async-signal-safe calls between them) of the daemon's own binary,
//!   never a bare `fork` of the multithreaded daemon that would run Rust code in the child.
//! - **Descriptors** reach the worker by `SCM_RIGHTS` over a `SOCK_SEQPACKET` socketpair; the
//!   worker closes everything else it inherited and re-opens each root as itself
//!   (`openat(fd, ".")`), so the daemon's open grants nothing.
//! - **Results** come back as bounded frames (64 KiB), parsed as attacker-controlled input;
//!   progress is clamped; the worker is killed after an idle timeout (default 300 s without a
//!   message) or an optional deadline, and when the caller cancels.
//! - The worker **does nothing by path**: it only uses the descriptors it was given; it has an
//!   empty environment, `/` as working directory, no core dumps, and dies with the daemon
//!   (`PR_SET_PDEATHSIG`).
//!
//! Costs of that choice: a process start per job (about a millisecond), and an owner's job can
//! only do what she can: a file of hers that she cannot read (mode 0000) makes her copy fail
//! with a message saying so; `trusted.*` xattrs root put on her files are invisible to her and
//! not copied.
//!
//! # Wiring guide (init, release, recovery)
//! - Open the user's parent directory once, bound to the identity recorded at init
//!   ([`Dir::open_no_symlinks`] or a walk from a trusted root, then [`Dir::identity`]); every
//!   later step uses that [`Dir`] and single names, never the path.
//! - **init**: `src = parent.open_dir(name)`, record `src.identity()` (and the parent's) in the
//!   pending operation *before* copying. Create the subvolume, open it as `dst` (root-owned and
//!   empty: the job hands it to the owner with `fchown` before the worker starts).
//!   `Job::as_owner(Owner::lookup(uid)?)`, with `uid` the owner of `src` (the caller), then
//!   `copy(&src, &dst)` and `verify(&src, &dst, Compare::Full)`. Put the symlink under
//!   [`names::temp_sibling_name`] in `parent`, check `parent.child_stat(name)` still has the
//!   recorded identity, [`Dir::exchange`] the two names, then remove the original (now at the
//!   temporary name) with `remove(&parent, tmp_name, recorded_identity)` after
//!   `verify(&orig, &dst, Compare::Metadata)`.
//! - **release**: `tmp = parent.create_dir(temp_sibling_name(..), 0o700)`, record its identity;
//!   as the workspace owner `copy(&subvol, &tmp)`, `verify(&subvol, &tmp, Compare::Full)`;
//!   check the identity of the workspace symlink, exchange, re-verify metadata, remove the
//!   symlink (now at the temporary name) only if it is the one that was exchanged.
//! - **recovery** of an init interrupted while removing the original: open the original at its
//!   temporary name with [`Dir::open_dir_expecting`] (recorded identity), then
//!   `prove_subset(&orig, &workspace)`; only when that succeeds, `remove(..)` it. Any mismatch
//!   ([`TreeError::NotSubset`]) means the user wrote into one side: keep both and report.
//! - The owner's identity to record: uid and gid of the directory at init (the workspace owner);
//!   look groups up again at each job ([`Owner::lookup`]), never persist them.
//!
//! # What it must not do
//! Follow a symlink or a magic link inside a tree, cross into another mount, act on a path
//! inside a tree (only on descriptors and single names), recurse on the call stack, load whole
//! files into memory, change ownership silently, run a non-root owner's job with any
//! capability, or decide *whether* to copy or delete (the executor decides).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

mod copy;
/// The xattr of a checkpoint's index record (`trusted.*`: invisible to and unchangeable by
/// unprivileged users). Earlier builds put it on the workspace root, and snapshots carry it;
/// not part of the user's tree: copies and verifications leave it out (see
/// `sys::Sys::set_checkpoint_record`).
pub const CHECKPOINT_RECORD_XATTR: &str = "trusted.ws-ckpt.checkpoint";
mod creds;
mod ctl;
mod error;
pub mod fd;
pub mod names;
mod nice;
mod pace;
mod proto;
mod remove;
mod sparse;
mod verify;
mod walk;
pub mod worker;
pub(crate) mod xattr;

pub use creds::{report as current_credentials, CredReport, Owner};
pub use error::{Op, TreeError};
pub use fd::{Dir, Identity, Kind, Stat};
pub use remove::Removed;
pub use verify::Compare;
pub use worker::WorkerSettings;

use ctl::Ctl;
use proto::{JobSpec, Outcome};

/// Counts of what a copy (or a verification) went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeStats {
    /// Regular files whose data was copied, reflinked or compared (extra hardlinks excluded).
    pub files: u64,
    /// Directories below the root (the root itself not included).
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Extra names of an inode already handled (`link()`).
    pub hardlinks: u64,
    /// FIFOs, sockets, character and block devices.
    pub special: u64,
    /// Apparent size of all regular files (each hardlinked inode counted once).
    pub bytes: u64,
    /// Regular files whose data was shared with `FICLONE` instead of copied.
    pub reflinked_files: u64,
    /// Extended attributes the destination refused with `ENOTSUP` (not copied).
    pub xattrs_skipped: u64,
    /// Bytes of file data read by a verification (both sides; holes are never read).
    pub bytes_read: u64,
}

/// Progress of a job, as handed to the progress callback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// Bytes of regular-file data (apparent size) handled so far.
    pub bytes_done: u64,
    /// Apparent size of all regular files of the source (hardlinked inodes counted once; 0
    /// when not known in advance, as in a verification).
    pub bytes_total: u64,
    /// Entries below the root handled so far.
    pub entries_done: u64,
    /// Entries below the root (0 when not known in advance).
    pub entries_total: u64,
}

/// Run a job in this process, with this process's credentials, on this thread lowered to
/// bulk priority until it ends ([`nice`]). `owner` is the identity whose recreation limits
/// apply (`None` for root).
pub(crate) fn run_in_process(
    job: &JobSpec,
    owner: Option<&Owner>,
    dirs: &[&Dir],
    ctl: &mut Ctl<'_>,
) -> Result<Outcome, TreeError> {
    let _bulk = nice::BulkPriority::enter();
    let owner = owner.filter(|o| !o.is_root());
    match (job, dirs) {
        (JobSpec::Copy, [src, dst]) => copy::copy(src, dst, owner, ctl).map(Outcome::Stats),
        (JobSpec::Verify { compare }, [a, b]) => {
            verify::verify(a, b, *compare, ctl).map(Outcome::Stats)
        }
        (JobSpec::Remove { name, expected }, [parent]) => {
            remove::remove(parent, OsStr::from_bytes(name), *expected, ctl).map(Outcome::Removed)
        }
        (JobSpec::Scan, [src]) => {
            let totals = copy::scan(src, None, owner, ctl)?;
            Ok(Outcome::Scanned(totals))
        }
        (JobSpec::Credentials, []) => Ok(Outcome::Credentials(creds::report())),
        _ => Err(TreeError::Worker {
            what: "a job with the wrong number of directories".into(),
        }),
    }
}

/// One tree job: who it runs as, where progress goes, how it is cancelled.
///
/// ```no_run
/// # use ws_ckpt::tree::{Compare, Dir, Job, Owner};
/// # fn demo() -> Result<(), ws_ckpt::tree::TreeError> {
/// let src = Dir::open("/home/alice/proj".as_ref())?;
/// let dst = Dir::open("/mnt/btrfs-workspace/ws1".as_ref())?;
/// let mut report = |p: &ws_ckpt::tree::Progress| eprintln!("{}/{}", p.bytes_done, p.bytes_total);
/// let mut job = Job::as_owner(Owner::lookup(1000)?).with_progress(&mut report);
/// job.copy(&src, &dst)?;
/// job.verify(&src, &dst, Compare::Full)?;
/// # Ok(()) }
/// ```
pub struct Job<'a> {
    owner: Owner,
    worker: WorkerSettings,
    progress: Option<&'a mut dyn FnMut(&Progress)>,
    cancel: Option<&'a dyn Fn() -> bool>,
}

impl<'a> Job<'a> {
    /// A job that runs as `owner`: in-process when that is the calling process's own user,
    /// else in a worker process (which needs the caller to be root).
    pub fn as_owner(owner: Owner) -> Job<'a> {
        Job {
            owner,
            worker: WorkerSettings::default(),
            progress: None,
            cancel: None,
        }
    }

    /// A job that runs in-process with the calling process's credentials.
    pub fn in_process() -> Job<'a> {
        Job::as_owner(Owner::current())
    }

    /// Report progress to `f` (at most about ten times a second, plus once at the end).
    pub fn with_progress(mut self, f: &'a mut dyn FnMut(&Progress)) -> Self {
        self.progress = Some(f);
        self
    }

    /// Stop with [`TreeError::Cancelled`] as soon as `f` returns true (checked between entries
    /// and between chunks of data; a worker is killed).
    pub fn with_cancel(mut self, f: &'a dyn Fn() -> bool) -> Self {
        self.cancel = Some(f);
        self
    }

    /// Use these worker settings (binary, timeouts).
    pub fn with_worker(mut self, settings: WorkerSettings) -> Self {
        self.worker = settings;
        self
    }

    /// Who the job runs as.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// Whether the job runs in this process (its owner is the calling process's user) rather
    /// than in a worker; an error when neither is possible (not root, another owner).
    pub fn runs_in_process(&self) -> Result<bool, TreeError> {
        let euid = nix::unistd::geteuid().as_raw();
        if self.owner.uid == euid {
            Ok(true)
        } else if euid == 0 {
            Ok(false)
        } else {
            Err(TreeError::Credentials {
                who: self.owner.describe(),
                what: format!(
                    "only root can run a job as another user (this process is uid {euid})"
                ),
            })
        }
    }

    fn dispatch(&mut self, job: JobSpec, dirs: &[&Dir]) -> Result<Outcome, TreeError> {
        let in_process = self.runs_in_process()?;
        let mut noop = |_: &Progress| {};
        let never = || false;
        let sink: &mut dyn FnMut(&Progress) = match self.progress.as_mut() {
            Some(f) => &mut **f,
            None => &mut noop,
        };
        let cancel: &dyn Fn() -> bool = self.cancel.unwrap_or(&never);
        let mut ctl = Ctl::new(sink, cancel);
        if in_process {
            run_in_process(&job, Some(&self.owner), dirs, &mut ctl)
        } else {
            worker::run(&self.worker, &self.owner, job, dirs, &mut ctl)
        }
    }

    /// Copy the contents of `src` into the empty directory `dst`, then give `dst` the mode,
    /// owner, times and xattrs of `src`; ends with `syncfs(dst)`. For a worker job, an empty
    /// root-owned `dst` is first handed to the owner (`fchown`, mode 0700).
    pub fn copy(&mut self, src: &Dir, dst: &Dir) -> Result<TreeStats, TreeError> {
        if !self.runs_in_process()? {
            self.hand_over(dst)?;
        }
        match self.dispatch(JobSpec::Copy, &[src, dst])? {
            Outcome::Stats(s) => Ok(s),
            _ => Err(wrong_outcome()),
        }
    }

    /// Give an empty root-owned destination to the job's owner.
    fn hand_over(&self, dst: &Dir) -> Result<(), TreeError> {
        let st = dst.stat()?;
        if st.uid == self.owner.uid {
            return Ok(());
        }
        if st.uid != 0 || !dst.names()?.is_empty() {
            return Err(TreeError::BadDestination {
                path: dst.label().to_path_buf(),
                what: format!(
                    "it must be an empty directory owned by root or by uid {} (it is uid {}'s)",
                    self.owner.uid, st.uid
                ),
            });
        }
        dst.set_mode(0o700)?;
        dst.set_owner(self.owner.uid, self.owner.gid)
    }

    /// Compare `b` with `a` (see [`Compare`]); returns what `a` contains.
    pub fn verify(&mut self, a: &Dir, b: &Dir, compare: Compare) -> Result<TreeStats, TreeError> {
        match self.dispatch(JobSpec::Verify { compare }, &[a, b])? {
            Outcome::Stats(s) => Ok(s),
            _ => Err(wrong_outcome()),
        }
    }

    /// Prove that every entry of `a` is in `b` with equal metadata and content
    /// ([`Compare::Subset`]); [`TreeError::NotSubset`] names the first entry that is not.
    pub fn prove_subset(&mut self, a: &Dir, b: &Dir) -> Result<TreeStats, TreeError> {
        self.verify(a, b, Compare::Subset)
    }

    /// Remove the tree at `name` in `parent`, which must be the inode `expected`
    /// ([`TreeError::IdentityMismatch`] otherwise, nothing removed). Mount points inside make
    /// it fail before anything is deleted.
    pub fn remove(
        &mut self,
        parent: &Dir,
        name: &OsStr,
        expected: Identity,
    ) -> Result<Removed, TreeError> {
        let job = JobSpec::Remove {
            name: name.as_bytes().to_vec(),
            expected,
        };
        match self.dispatch(job, &[parent])? {
            Outcome::Removed(r) => Ok(r),
            _ => Err(wrong_outcome()),
        }
    }

    /// Count the entries and bytes below `src` (checking mount points and, for a non-root
    /// owner, that every entry can be recreated as her).
    pub fn scan(&mut self, src: &Dir) -> Result<Progress, TreeError> {
        match self.dispatch(JobSpec::Scan, &[src])? {
            Outcome::Scanned(p) => Ok(p),
            _ => Err(wrong_outcome()),
        }
    }

    /// The credentials a job of this owner really runs with (a worker reports its own); a
    /// self-test for the daemon and for tests.
    pub fn credentials(&mut self) -> Result<CredReport, TreeError> {
        match self.dispatch(JobSpec::Credentials, &[])? {
            Outcome::Credentials(c) => Ok(c),
            _ => Err(wrong_outcome()),
        }
    }
}

fn wrong_outcome() -> TreeError {
    TreeError::Worker {
        what: "a result of the wrong kind".into(),
    }
}

/// Copy the regular file `src` (a final symlink is not followed) to the new file `dst`
/// (created with mode 0600; never an existing one): reflinked when the filesystem allows, else
/// only its data segments, so holes stay holes; fsync at the end. The one sparse copy of a
/// single file (a loop image moved across filesystems); trees go through [`Job::copy`].
pub fn copy_file(src: &std::path::Path, dst: &std::path::Path) -> Result<(), TreeError> {
    use std::fs::{File, OpenOptions};
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    let from = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(src)
        .map_err(fd::io_err(Op::Open, src))?;
    let size = from.metadata().map_err(fd::io_err(Op::Stat, src))?.len();
    let to: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dst)
        .map_err(fd::io_err(Op::Create, dst))?;
    let mut sink = |_: &Progress| {};
    let mut ctl = ctl::Ctl::new(&mut sink, &|| false);
    sparse::DataCopier::new().copy(from.as_fd(), to.as_fd(), size, (src, dst), &mut ctl)?;
    to.sync_all().map_err(fd::io_err(Op::Sync, dst))
}

#[cfg(test)]
mod tests;
