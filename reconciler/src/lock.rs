//! `<state_dir>/daemon.lock`: the single-writer lock held by the daemon and by every in-process
//! command, and the crash detector (SPEC §7.1).
//!
//! A lock file that exists while nobody holds the lock means the previous holder died without
//! a clean stop. This module only takes, reports and releases the lock; what to do about an
//! unclean stop is the engine's decision.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Lock file name inside the state directory.
pub const LOCK_FILE: &str = "daemon.lock";

/// Errors taking the lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds it.
    #[error("another ws-ckpt process (pid {pid}) holds {path}{role}")]
    Held {
        /// Lock file.
        path: PathBuf,
        /// Pid written in the file, or "unknown".
        pid: String,
        /// ": the daemon is running" etc.
        role: String,
    },
    /// I/O error on the lock file or state directory.
    #[error("cannot use lock file {path}: {source}; check that the state directory exists and is writable by root")]
    Io {
        /// Lock file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A held lock. Dropping it without [`DaemonLock::release`] leaves the file in place, exactly as
/// a crash would (so tests of crash detection can use it).
#[derive(Debug)]
pub struct DaemonLock {
    path: PathBuf,
    lock: Option<Flock<File>>,
    /// True when the file existed, unlocked, before we took it: the previous holder crashed.
    pub previous_unclean: bool,
}

impl DaemonLock {
    /// Take the lock, waiting up to `wait` for another holder to finish (zero = do not wait).
    /// `role` is written after the pid ("daemon" or "cli") so others can tell who holds it.
    pub fn acquire(state_dir: &Path, wait: Duration, role: &str) -> Result<DaemonLock, LockError> {
        let path = state_dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        let deadline = Instant::now() + wait;
        loop {
            let (file, created) = match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
            {
                Ok(f) => (f, true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    match OpenOptions::new().read(true).write(true).open(&path) {
                        Ok(f) => (f, false),
                        // Removed between our two opens by a clean stop: try again.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io(e)),
                    }
                }
                Err(e) => return Err(io(e)),
            };
            let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => l,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    if Instant::now() >= deadline {
                        let content = std::fs::read_to_string(&path).unwrap_or_default();
                        let mut words = content.split_whitespace();
                        let pid = words.next().unwrap_or("unknown").to_string();
                        let role = match words.next() {
                            Some("daemon") => ": the ws-ckpt daemon is running".to_string(),
                            Some(r) => format!(" ({r})"),
                            None => String::new(),
                        };
                        return Err(LockError::Held { path, pid, role });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err((_, e)) => return Err(io(e.into())),
            };
            // The file we locked may have been unlinked by a clean stop after we opened it:
            // only a lock on the inode currently at `path` counts.
            let ours = locked.metadata().map_err(io)?;
            match std::fs::metadata(&path) {
                Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {}
                _ => continue,
            }
            // An existing file with no holder: the previous holder did not stop cleanly. An
            // empty file is one whose creator died before writing its pid: also unclean.
            let previous_unclean = !created;
            locked.set_len(0).map_err(io)?;
            locked.rewind().map_err(io)?;
            writeln!(locked, "{} {role}", std::process::id()).map_err(io)?;
            locked.sync_all().map_err(io)?;
            return Ok(DaemonLock {
                path,
                lock: Some(locked),
                previous_unclean,
            });
        }
    }

    /// Path of the lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Clean stop: remove the file, then drop the lock.
    pub fn release(mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove lock file");
        }
        self.lock.take();
    }
}

/// Who holds (or last held) the lock, as its holder wrote it in the lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its pid (`None`: not written yet, or unreadable).
    pub pid: Option<u32>,
    /// `daemon` or `cli` (`None`: not written yet).
    pub role: Option<String>,
}

impl Holder {
    /// The holder is a daemon.
    pub fn is_daemon(&self) -> bool {
        self.role.as_deref() == Some("daemon")
    }

    /// The pid for messages (`unknown` when not written yet).
    pub fn pid_text(&self) -> String {
        self.pid
            .map_or_else(|| "unknown".to_string(), |p| p.to_string())
    }

    /// Its process exists (a pid that was written and is alive).
    pub fn alive(&self) -> bool {
        let Some(pid) = self.pid.and_then(|p| i32::try_from(p).ok()) else {
            return false;
        };
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
            Ok(()) => true,
            Err(e) => e == nix::errno::Errno::EPERM,
        }
    }
}

/// What the lock file of `state_dir` says about its holder; `None` when there is no lock file
/// (or it cannot be read, e.g. by a user who may not read the state directory). Says nothing
/// about whether the lock is held now.
pub fn holder(state_dir: &Path) -> Option<Holder> {
    let content = std::fs::read_to_string(state_dir.join(LOCK_FILE)).ok()?;
    let mut words = content.split_whitespace();
    Some(Holder {
        pid: words.next().and_then(|p| p.parse().ok()),
        role: words.next().map(str::to_string),
    })
}

impl From<LockError> for crate::error::Error {
    fn from(e: LockError) -> Self {
        use crate::error::{Error, ErrorCode};
        match e {
            LockError::Held { .. } => Error::new(ErrorCode::Locked, e.to_string())
                .hint("wait for it to finish; if the daemon runs, run the command without root so it goes through the daemon, or stop the daemon"),
            _ => Error::new(ErrorCode::Io, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_release_then_no_crash_reported() {
        let dir = tempfile::tempdir().unwrap();
        let l = DaemonLock::acquire(dir.path(), Duration::ZERO, "cli").unwrap();
        assert!(!l.previous_unclean);
        let content = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(content, format!("{} cli\n", std::process::id()));
        l.release();
        assert!(!dir.path().join(LOCK_FILE).exists());
        let l = DaemonLock::acquire(dir.path(), Duration::ZERO, "cli").unwrap();
        assert!(!l.previous_unclean);
        l.release();
    }

    #[test]
    fn leftover_file_means_unclean_and_second_holder_refused() {
        let dir = tempfile::tempdir().unwrap();
        let l = DaemonLock::acquire(dir.path(), Duration::ZERO, "daemon").unwrap();
        let err = DaemonLock::acquire(dir.path(), Duration::from_millis(50), "cli").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        assert!(msg.contains("daemon is running"), "{msg}");
        drop(l); // like a crash: file stays
        assert!(dir.path().join(LOCK_FILE).exists());
        let l = DaemonLock::acquire(dir.path(), Duration::ZERO, "cli").unwrap();
        assert!(l.previous_unclean);
        l.release();
    }

    #[test]
    fn waiter_gets_lock_after_clean_release() {
        let dir = tempfile::tempdir().unwrap();
        let l = DaemonLock::acquire(dir.path(), Duration::ZERO, "cli").unwrap();
        let p = dir.path().to_path_buf();
        let t = std::thread::spawn(move || {
            let l2 = DaemonLock::acquire(&p, Duration::from_secs(10), "cli").unwrap();
            let unclean = l2.previous_unclean;
            l2.release();
            unclean
        });
        std::thread::sleep(Duration::from_millis(100));
        l.release();
        assert!(
            !t.join().unwrap(),
            "a clean release must not look like a crash"
        );
    }
}
