//! Processes the tests run: a finished invocation ([`Run`]) and a running child ([`Spawned`])
//! whose output goes to files and which is killed and reaped when dropped.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::{lock, wait_until};

/// The result of one finished `ws-ckpt` (or other) invocation.
#[derive(Debug, Clone)]
pub struct Run {
    /// The command line, for messages.
    pub cmd: String,
    /// Exit code; `None` when the process was killed by a signal.
    pub status: Option<i32>,
    /// Everything written to stdout (lossy UTF-8).
    pub stdout: String,
    /// Everything written to stderr (lossy UTF-8).
    pub stderr: String,
}

impl Run {
    /// The exit code (`None` when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status
    }

    /// Assert exit code 0; on failure panics showing the command, stdout and stderr.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        if self.status != Some(0) {
            panic!(
                "expected success, got exit {:?}\n{}",
                self.status,
                self.describe()
            );
        }
        self
    }

    /// Assert a specific exit code; on mismatch panics showing the output.
    #[track_caller]
    pub fn assert_code(&self, expected: i32) -> &Self {
        if self.status != Some(expected) {
            panic!(
                "expected exit {expected}, got {:?}\n{}",
                self.status,
                self.describe()
            );
        }
        self
    }

    /// Parse stdout as JSON; panics showing the output when it is not JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not JSON ({e})\n{}", self.describe());
        })
    }

    /// Command, exit code, stdout and stderr as one block of text.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nexit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.cmd, self.status, self.stdout, self.stderr
        )
    }
}

/// A child process started by [`TestEnv::spawn`] whose output goes to files under
/// `<root>/logs`. Killed with SIGKILL and reaped on drop (and by the owning [`TestEnv`]'s
/// drop) if still running.
pub struct Spawned {
    pub(crate) child: Arc<Mutex<Child>>,
    pub(crate) pid: u32,
    pub(crate) cmd: String,
    pub(crate) stdout_path: PathBuf,
    pub(crate) stderr_path: PathBuf,
}

impl Spawned {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command line, for messages.
    pub fn cmd(&self) -> &str {
        &self.cmd
    }

    /// File receiving the child's stdout.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    /// File receiving the child's stderr.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// The exit status if the child has exited (reaping it), else `None`.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        let mut child = lock(&self.child);
        child
            .try_wait()
            .unwrap_or_else(|e| panic!("waiting for {} failed: {e}", self.cmd))
    }

    /// Send `sig` if the child has not been reaped yet (so a recycled pid is never hit).
    /// Returns whether the signal was sent.
    pub fn signal(&self, sig: Signal) -> bool {
        let mut child = lock(&self.child);
        match child.try_wait() {
            Ok(None) => nix::sys::signal::kill(Pid::from_raw(self.pid as i32), sig).is_ok(),
            _ => false,
        }
    }

    /// Send SIGTERM (without waiting).
    pub fn term(&self) -> bool {
        self.signal(Signal::SIGTERM)
    }

    /// SIGKILL the child (if still running) and reap it; returns its exit status.
    pub fn kill9(&self) -> ExitStatus {
        let mut child = lock(&self.child);
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if let Err(e) = child.kill() {
            panic!("SIGKILL to {} (pid {}) failed: {e}", self.cmd, self.pid);
        }
        child
            .wait()
            .unwrap_or_else(|e| panic!("reaping {} failed: {e}", self.cmd))
    }

    /// Wait up to `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.try_wait();
            status.is_some()
        });
        status
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        kill_and_reap(&self.child);
    }
}

/// SIGKILL and reap a child unless it was already reaped. Never panics.
pub(crate) fn kill_and_reap(child: &Mutex<Child>) {
    let mut child = lock(child);
    if let Ok(None) = child.try_wait() {
        if let Err(e) = child.kill() {
            eprintln!("ws-ckpt-it: SIGKILL to pid {} failed: {e}", child.id());
        }
        if let Err(e) = child.wait() {
            eprintln!("ws-ckpt-it: reaping pid {} failed: {e}", child.id());
        }
    }
}

pub(crate) fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Last `max` bytes of a file, lossy.
pub(crate) fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > max && f.seek(SeekFrom::Start(len - max)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf).into_owned()
}
