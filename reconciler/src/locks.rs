//! In-process serialization (SPEC §7.1): one lock per workspace, so that operations and pass
//! steps on one workspace run one at a time while different workspaces proceed in parallel,
//! and one host lock for the steps that concern no single workspace (bootstrap, image growth
//! and migration, config edits).
//!
//! Both are reentrant for the thread holding them (a release holds its workspace while the
//! pass it runs takes it again). Order: the host lock, then a workspace lock, then the store's
//! own mutex (taken only inside `Store` methods); never a workspace lock while holding another
//! one, and neither of them while holding the store. The state-directory lock file shared
//! with other processes is `lock`, not this.
//!
//! Data only: which lock to take is the caller's decision.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;

/// A mutex that the thread holding it may take again (counted).
#[derive(Debug, Default)]
pub struct ReentrantLock {
    held: Mutex<Option<(ThreadId, usize)>>,
    freed: Condvar,
}

pub(crate) fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing inside can be left half-updated by a panic (one assignment per change).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ReentrantLock {
    /// Run `f` holding the lock (waiting for another thread to release it).
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        let _held = self.acquire();
        f()
    }

    /// Take the lock; it is released when the guard drops.
    pub fn acquire(&self) -> ReentrantGuard<'_> {
        let me = std::thread::current().id();
        let mut held = relock(&self.held);
        loop {
            match held.as_mut() {
                None => {
                    *held = Some((me, 1));
                    break;
                }
                Some((owner, n)) if *owner == me => {
                    *n += 1;
                    break;
                }
                Some(_) => {
                    held = self.freed.wait(held).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
        ReentrantGuard(self)
    }

    /// True when some thread holds it (for tests and diagnostics).
    pub fn is_held(&self) -> bool {
        relock(&self.held).is_some()
    }

    fn release(&self) {
        let mut held = relock(&self.held);
        if let Some((_, n)) = held.as_mut() {
            *n -= 1;
            if *n == 0 {
                *held = None;
                self.freed.notify_one();
            }
        }
    }
}

/// Holds a [`ReentrantLock`] until dropped.
#[derive(Debug)]
pub struct ReentrantGuard<'a>(&'a ReentrantLock);

impl Drop for ReentrantGuard<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// One [`ReentrantLock`] per workspace ID, created on first use (bounded by the number of
/// recorded workspaces: callers lock only IDs they resolved).
#[derive(Debug, Default)]
pub struct WorkspaceLocks {
    locks: Mutex<HashMap<String, Arc<ReentrantLock>>>,
}

impl WorkspaceLocks {
    /// The lock of workspace `ws_id`.
    pub fn get(&self, ws_id: &str) -> Arc<ReentrantLock> {
        Arc::clone(relock(&self.locks).entry(ws_id.to_string()).or_default())
    }

    /// Run `f` holding workspace `ws_id`.
    pub fn run<R>(&self, ws_id: &str, f: impl FnOnce() -> R) -> R {
        self.get(ws_id).run(f)
    }

    /// True when a thread holds workspace `ws_id` right now.
    pub fn is_held(&self, ws_id: &str) -> bool {
        relock(&self.locks).get(ws_id).is_some_and(|l| l.is_held())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn reentrant_for_its_holder_exclusive_for_others() {
        let l = Arc::new(ReentrantLock::default());
        let inside = Arc::new(AtomicUsize::new(0));
        l.run(|| l.run(|| inside.fetch_add(1, Ordering::SeqCst)));
        assert!(!l.is_held());
        let g = l.acquire();
        let (l2, i2) = (Arc::clone(&l), Arc::clone(&inside));
        let t = std::thread::spawn(move || l2.run(|| i2.fetch_add(1, Ordering::SeqCst)));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(inside.load(Ordering::SeqCst), 1, "another thread waits");
        drop(g);
        t.join().unwrap();
        assert_eq!(inside.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn workspaces_are_independent() {
        let locks = Arc::new(WorkspaceLocks::default());
        let a = locks.get("ws-a");
        let _held = a.acquire();
        assert!(locks.is_held("ws-a"));
        let l2 = Arc::clone(&locks);
        // Another workspace is free while ws-a is held by this thread.
        std::thread::spawn(move || l2.run("ws-b", || ()))
            .join()
            .unwrap();
        assert!(!locks.is_held("ws-b"));
    }
}
