//! Test-only fault injection: `WS_CKPT_FAULT=<point>` makes the process kill itself with
//! SIGKILL when execution reaches that named step boundary, to prove crash safety (SPEC §11).
//!
//! The variable is read once. With it unset (always, in production) a check is one atomic load.

use std::sync::OnceLock;

/// Name of the environment variable holding the fault point.
pub const FAULT_ENV: &str = "WS_CKPT_FAULT";

fn configured() -> &'static Option<String> {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    POINT.get_or_init(|| std::env::var(FAULT_ENV).ok().filter(|s| !s.is_empty()))
}

/// Step boundary `name` (e.g. `init:after-copy`). Kills the process with SIGKILL if it is the
/// configured fault point; otherwise does nothing.
pub fn point(name: &str) {
    if configured().as_deref() == Some(name) {
        tracing::warn!(point = name, "fault injection: killing the process");
        // SIGKILL cannot be caught: this is exactly a `kill -9` at this instant.
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
        std::process::abort();
    }
}
