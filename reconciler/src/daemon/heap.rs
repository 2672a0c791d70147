//! Giving the heap's free pages back to the kernel after the daemon's large transient work.
//!
//! A pass (and a request like `apply`, `status` or `list`) reads the subvolume listing of every
//! workspace and builds a plan over every index: many megabytes at 100 workspaces × 1 000
//! snapshots, all freed when it ends. glibc keeps freed memory in the arena of the thread that
//! used it (one per connection thread, up to eight per CPU) for reuse, so without this the
//! daemon's RSS would grow towards one pass's worth per arena. This module must not free or
//! move anything the daemon holds.

/// Operations after which [`release_free_memory`] is worth its cost (a walk of the free
/// lists): the ones that observe every workspace or read every index.
const HEAVY_OPS: &[&str] = &[
    "apply",
    "plan",
    "status",
    "list",
    "cleanup",
    "recover-preview",
];

/// Whether a request named `op` (`Request::op`) is one of [`HEAVY_OPS`].
pub(super) fn is_heavy(op: &str) -> bool {
    HEAVY_OPS.contains(&op)
}

/// Return the free pages of every malloc arena to the kernel (`malloc_trim(0)`); a no-op
/// where the allocator is not glibc's.
pub(super) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and only walks glibc's own free lists, under their
    // locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
