//! Outside torture of crash and full-disk correctness (issue 10; SPEC §5.6, §11): random
//! kill -9 of the daemon, of an in-process CLI and of the client only, power cuts of an ext4
//! disk holding state_dir and the image, and a full state_dir, over inits and releases of
//! trees from another filesystem, checkpoints (message, metadata, `--pin`), rollbacks, deletes
//! and cleanups. No fault hook is used: the delays are random (fixed seed in CI). The
//! invariants are those of `ws_ckpt_integration_tests::torture_support`; every failure prints
//! the seed, the iteration, the operation and the delay. See integration-tests/README.md for
//! the long run.

use ws_ckpt_integration_tests::torture_support::{Interruption, Settings, Torture};

/// Share of iterations whose interruption must land while the operation was changing things.
const MIN_MID_PERCENT: usize = 25;

/// The same for power cuts, counted over the cuts aimed inside an operation (30% are aimed
/// right after the acknowledgement). Lower: the cut is a syscall on another filesystem after
/// a fingerprint poll, and most operations here take tens of milliseconds, so on a busy
/// machine more of them complete first (measured 6 to 14 of about 21 on 2 busy cores).
const MIN_MID_PERCENT_POWER_CUT: usize = 20;

fn torture(test: &str, mode: Interruption, min_mid_percent: usize) {
    let Some(mut t) = Torture::new(test, mode, Settings::from_env()) else {
        return;
    };
    t.run();
    t.finish(min_mid_percent);
}

/// kill -9 of the daemon while a client's request runs in it, then a restart of the daemon
/// (whose first pass recovers) and `apply` through it.
#[test]
fn torture_kill9_daemon() {
    torture(
        "torture_kill9_daemon",
        Interruption::Kill9Daemon,
        MIN_MID_PERCENT,
    );
}

/// kill -9 of a CLI running the operation in-process (no daemon), then `apply` in-process.
#[test]
fn torture_kill9_in_process_cli() {
    torture(
        "torture_kill9_in_process_cli",
        Interruption::Kill9InProcess,
        MIN_MID_PERCENT,
    );
}

/// kill -9 of the client only: the daemon carries on; the outcome is the operation's before or
/// after, never a mix.
#[test]
fn torture_kill9_client_only() {
    torture(
        "torture_kill9_client_only",
        Interruption::Kill9Client,
        MIN_MID_PERCENT,
    );
}

/// Power cut (`EXT4_IOC_SHUTDOWN` with `EXT4_GOING_FLAGS_NOLOGFLUSH`) of the ext4 filesystem
/// holding config, state_dir, the btrfs image and the user directories, at a random moment
/// during an operation or right after it was acknowledged; then everything is torn down
/// (btrfs unmounted, loops detached, ext4 unmounted and mounted again) and the daemon (or an
/// in-process `apply`) recovers. Also: no acknowledged operation is undone.
///
/// Why ext4 shutdown is a faithful enough cut here (checked by hand before writing this: an
/// fsynced file survives, an unsynced one and an uncommitted btrfs transaction do not): after
/// `EXT4_IOC_SHUTDOWN` with `NOLOGFLUSH` nothing more reaches the ext4 device, dirty pages and
/// the running journal transaction are dropped, and the btrfs loop device on it gets `EIO`, so
/// btrfs comes back at its last committed transaction (plus its fsync log). That is a disk
/// without a volatile write cache losing power at that instant. What it does not model is a
/// cache that reorders writes between flushes (dm-log-writes replay would), so a run that
/// passes here can still hide ordering bugs between two flushes.
#[test]
fn torture_power_cut_ext4_shutdown() {
    torture(
        "torture_power_cut_ext4_shutdown",
        Interruption::PowerCut,
        MIN_MID_PERCENT_POWER_CUT,
    );
}

/// state_dir on a 16 MiB tmpfs filled to ENOSPC: delete, cleanup, release and checkpoint
/// either succeed or fail with no later effect (no ghost operation carried out by a later
/// pass, no snapshot left by a failed checkpoint), and `list` and the disk agree while full,
/// once space is back and after a restart. At least one operation must have failed (the
/// state_dir really was full).
#[test]
fn torture_state_dir_full_enospc() {
    torture(
        "torture_state_dir_full_enospc",
        Interruption::FullStateDir,
        1,
    );
}
