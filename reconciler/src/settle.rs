//! Checkpoints the daemon answered before their journal line was durable.
//!
//! A checkpoint puts its record (message, metadata, pin) on its snapshot's directory before
//! the snapshot ioctl, which commits it in the same btrfs transaction as the snapshot: once
//! the ioctl returns, the checkpoint is durable with everything it says, whatever happens to
//! its index-journal line. The daemon therefore answers without the line's `fdatasync` and
//! leaves the record in place; [`Unsettled`] remembers it. The daemon's settle thread then
//! makes the journals durable (one `fdatasync` per workspace for every checkpoint since the
//! last one) and only afterwards removes the records, so at every instant a power cut keeps
//! the line or the record (a snapshot found without an index entry is adopted with its
//! record). Before, every checkpoint started a thread for its own `fdatasync` next to the
//! ioctl and removed its record afterwards (issue 9: interleaved CLI checkpoints against twin
//! daemons measured 0.08–0.20 ms of a ~4.7 ms median less since).
//!
//! A command that owns its engine keeps doing both before it answers, and so does the daemon
//! for a workspace with [`MAX_UNSETTLED`] checkpoints waiting (the settling is failing), so
//! that records never pile up on a directory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::locks::relock;

/// Checkpoints of one workspace waiting at most; beyond, a checkpoint settles its own.
pub(crate) const MAX_UNSETTLED: usize = 256;
/// How long the settle thread lets checkpoints gather before it settles them (one
/// `fdatasync` per workspace for all of them).
pub const SETTLE_DELAY: Duration = Duration::from_millis(200);
/// Waiting checkpoints of one workspace that make the settle thread start at once.
pub(crate) const SETTLE_AT_ONCE: usize = 64;

/// A checkpoint whose record waits on its snapshot directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Waiting {
    /// The snapshot directory holding the record.
    pub(crate) dir: PathBuf,
    /// The snapshot ID (names the record).
    pub(crate) id: String,
}

/// The waiting checkpoints, by workspace ID.
#[derive(Debug, Default)]
pub(crate) struct Unsettled {
    waiting: Mutex<BTreeMap<String, Vec<Waiting>>>,
    changed: Condvar,
}

impl Unsettled {
    /// How many checkpoints of `ws_id` wait.
    pub(crate) fn count(&self, ws_id: &str) -> usize {
        relock(&self.waiting).get(ws_id).map_or(0, Vec::len)
    }

    /// True when nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        relock(&self.waiting).is_empty()
    }

    /// Add a checkpoint (its journal line is written, not yet durable).
    pub(crate) fn push(&self, ws_id: &str, waiting: Waiting) {
        let mut g = relock(&self.waiting);
        let list = g.entry(ws_id.to_string()).or_default();
        list.push(waiting);
        let first = list.len() == 1;
        let many = list.len() >= SETTLE_AT_ONCE;
        drop(g);
        if first || many {
            self.changed.notify_all();
        }
    }

    /// Everything waiting, leaving nothing.
    pub(crate) fn take(&self) -> BTreeMap<String, Vec<Waiting>> {
        std::mem::take(&mut *relock(&self.waiting))
    }

    /// Put back what could not be settled (ahead of what arrived meanwhile).
    pub(crate) fn put_back(&self, ws_id: &str, mut waiting: Vec<Waiting>) {
        let mut g = relock(&self.waiting);
        let list = g.entry(ws_id.to_string()).or_default();
        waiting.append(list);
        *list = waiting;
    }

    /// Wait up to `timeout` for something to wait; true when something does.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let g = relock(&self.waiting);
        let (g, _) = self
            .changed
            .wait_timeout_while(g, timeout, |w| w.is_empty())
            .unwrap_or_else(|p| p.into_inner());
        !g.is_empty()
    }

    /// Wait up to `delay` more for checkpoints to gather, ending early when a workspace has
    /// [`SETTLE_AT_ONCE`] waiting.
    pub(crate) fn gather(&self, delay: Duration) {
        let g = relock(&self.waiting);
        let _ = self
            .changed
            .wait_timeout_while(g, delay, |w| {
                w.values().all(|list| list.len() < SETTLE_AT_ONCE)
            })
            .unwrap_or_else(|p| p.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    fn w(id: &str) -> Waiting {
        Waiting {
            dir: PathBuf::from("/snapshots/ws-a"),
            id: id.into(),
        }
    }

    #[test]
    fn waiting_checkpoints_are_counted_taken_and_put_back_in_order() {
        let u = Unsettled::default();
        assert!(u.is_empty());
        u.push("ws-a", w("1"));
        u.push("ws-a", w("2"));
        u.push("ws-b", w("x"));
        assert_eq!(
            (u.count("ws-a"), u.count("ws-b"), u.count("ws-c")),
            (2, 1, 0)
        );
        let mut all = u.take();
        assert!(u.is_empty());
        u.push("ws-a", w("3"));
        u.put_back("ws-a", all.remove("ws-a").unwrap());
        let ids: Vec<String> = u.take()["ws-a"].iter().map(|w| w.id.clone()).collect();
        assert_eq!(ids, ["1", "2", "3"], "what was put back comes first");
    }

    #[test]
    fn the_settle_thread_wakes_for_the_first_checkpoint_and_for_many() {
        let u = Arc::new(Unsettled::default());
        assert!(!u.wait(Duration::from_millis(10)), "nothing waits");
        let u2 = Arc::clone(&u);
        let t = std::thread::spawn(move || u2.wait(Duration::from_secs(20)));
        std::thread::sleep(Duration::from_millis(20));
        u.push("ws-a", w("1"));
        assert!(t.join().unwrap(), "woken by the first checkpoint");
        // Gathering ends as soon as one workspace has SETTLE_AT_ONCE waiting.
        let u2 = Arc::clone(&u);
        let started = Instant::now();
        let t = std::thread::spawn(move || u2.gather(Duration::from_secs(20)));
        for i in 0..SETTLE_AT_ONCE {
            u.push("ws-a", w(&format!("m{i}")));
        }
        t.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
