//! The benchmark's private directory under `/var/tmp` (the integration-test harness's one
//! loop fixture, [`Scratch`], with the bench's prefix), plus the Ctrl-C flag.
//!
//! The caller stops its daemons before the scratch directory is dropped; the teardown never
//! unmounts, detaches or deletes anything outside that directory (checked by name and
//! location) and never panics.

use anyhow::{bail, Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};
pub(crate) use ws_ckpt_integration_tests::Scratch;

/// Name prefix of the scratch directory.
pub(crate) const PREFIX: &str = "ws-ckpt-bench-";

/// Where the scratch directory is created (a real disk, like the default image location).
const BASE: &str = "/var/tmp";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catch the first SIGINT/SIGTERM: set a flag that the measurement loops poll, so that the
/// run stops between steps and tears down. The handler resets itself, so a second Ctrl-C
/// kills the benchmark at once (leaving its directory behind).
pub(crate) fn install_signal_handlers() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }
            .with_context(|| format!("cannot install a {sig} handler"))?;
    }
    Ok(())
}

/// True once SIGINT or SIGTERM arrived.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fail with "interrupted" once SIGINT or SIGTERM arrived; called between measurement steps.
pub(crate) fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted (SIGINT/SIGTERM); stopping and tearing down");
    }
    Ok(())
}

/// `/var/tmp/ws-ckpt-bench-XXXXXX` (mode 0755), the harness's one loop fixture: on drop (normal
/// end, error, panic or after Ctrl-C) every mount under it is unmounted, every loop device
/// backed by a file under it detached, and it is removed, unless `keep` is set.
pub(crate) fn create() -> Result<Scratch> {
    Scratch::create(PREFIX, &[BASE], "ws-ckpt-bench")
        .with_context(|| format!("cannot create a scratch directory in {BASE}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use ws_ckpt_integration_tests::scratch::{check_owned, is_under, mount_points_under};

    #[test]
    fn only_own_directories_are_cleaned() {
        let own = |p: &str| check_owned(Path::new(p), PREFIX, &[Path::new(BASE)]);
        assert!(own("/var/tmp/ws-ckpt-bench-abc123").is_ok());
        assert!(own("/var/tmp/ws-ckpt-bench-").is_err());
        assert!(own("/var/tmp/other").is_err());
        assert!(own("/var/tmp").is_err());
        assert!(own("/var/tmp/x/ws-ckpt-bench-abc").is_err());
    }

    #[test]
    fn under_compares_components() {
        let root = Path::new("/var/tmp/ws-ckpt-bench-a");
        assert!(is_under(Path::new("/var/tmp/ws-ckpt-bench-a/mnt"), root));
        assert!(!is_under(Path::new("/var/tmp/ws-ckpt-bench-ab"), root));
        assert!(!is_under(Path::new("/var/tmp/ws-ckpt-bench-a/../x"), root));
        let parsed = ws_ckpt::sys::mountinfo::parse_mountinfo(
            "1 2 0:1 / /var/tmp/ws-ckpt-bench-a/a\\040b rw - btrfs /dev/loop0 rw\n",
        );
        assert_eq!(
            mount_points_under(&parsed, root),
            [PathBuf::from("/var/tmp/ws-ckpt-bench-a/a b")]
        );
    }
}
