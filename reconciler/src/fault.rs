//! Test-only fault injection at named step boundaries (SPEC §11):
//! - `WS_CKPT_FAULT=<point>` makes the process kill itself with SIGKILL when execution reaches
//!   that point, to prove crash safety;
//! - `WS_CKPT_FAULT_HOLD=<dir>` holds a step open: when execution reaches a point for which the
//!   file `<dir>/<point>` exists, it writes `<dir>/<point>.reached` (the pid) and waits until
//!   `<dir>/<point>` is removed (at most [`HOLD_MAX`]), then goes on. Tests use it to prove
//!   that one workspace's long step does not stall another's.
//!
//! The variables are read once. With them unset (always, in production) a check is two atomic
//! loads.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Name of the environment variable holding the kill point.
pub const FAULT_ENV: &str = "WS_CKPT_FAULT";
/// Name of the environment variable holding the hold directory.
pub const HOLD_ENV: &str = "WS_CKPT_FAULT_HOLD";
/// Longest a held point waits for its release.
pub const HOLD_MAX: Duration = Duration::from_secs(300);

fn configured() -> &'static Option<String> {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    POINT.get_or_init(|| std::env::var(FAULT_ENV).ok().filter(|s| !s.is_empty()))
}

fn hold_dir() -> &'static Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        std::env::var_os(HOLD_ENV)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    })
}

/// Step boundary `name` (e.g. `init:after-copy`). Kills the process with SIGKILL if it is the
/// configured fault point; holds it while its hold file exists; otherwise does nothing.
pub fn point(name: &str) {
    if configured().as_deref() == Some(name) {
        tracing::warn!(point = name, "fault injection: killing the process");
        // SIGKILL cannot be caught: this is exactly a `kill -9` at this instant.
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
        std::process::abort();
    }
    if let Some(dir) = hold_dir() {
        hold(&dir.join(name), name);
    }
}

fn hold(file: &std::path::Path, name: &str) {
    if !file.exists() {
        return;
    }
    tracing::warn!(point = name, file = %file.display(), "fault injection: holding this step");
    let mut reached = file.as_os_str().to_owned();
    reached.push(".reached");
    let _ = std::fs::write(PathBuf::from(reached), std::process::id().to_string());
    let until = Instant::now() + HOLD_MAX;
    while file.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!(point = name, "fault injection: step released");
}
