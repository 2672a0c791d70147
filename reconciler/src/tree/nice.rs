//! CPU priority of bulk tree work: a copy, verification or removal runs at nice [`BULK_NICE`]
//! (or the thread's own nice, when that is already lower priority), so on a busy host the
//! short requests of other workspaces — a checkpoint is a few hundred microseconds of CPU —
//! are scheduled ahead of it instead of queueing behind a long memcpy/memcmp (issue 9:
//! checkpoints of other workspaces during an init). The job gets the same CPU when the host is
//! otherwise idle.
//!
//! Linux keeps the nice value per thread, so [`BulkPriority`] lowers the calling thread only
//! and restores its previous value when dropped (raising priority back needs
//! `CAP_SYS_NICE`, which the root daemon has; without it the thread simply stays niced, which
//! is harmless for an in-process command that exits afterwards). Every job runs through
//! `run_in_process`, in the daemon or in a worker process, and that is where it is lowered.
//! Advisory only: a refusal is logged and ignored. A job's [`super::CredReport`] shows the
//! nice value it ran at.

/// The nice value of bulk tree work.
pub(crate) const BULK_NICE: libc::c_int = 10;

/// The calling thread runs at [`BULK_NICE`] until this is dropped.
#[derive(Debug)]
pub(crate) struct BulkPriority {
    tid: libc::id_t,
    before: Option<libc::c_int>,
}

fn gettid() -> libc::id_t {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() as libc::id_t }
}

/// The nice value of thread `tid`, if it can be read.
fn nice_of(tid: libc::id_t) -> Option<libc::c_int> {
    // getpriority returns -1 both for nice -1 and for an error: clear errno to tell them apart.
    // SAFETY: errno is thread-local; getpriority takes integer arguments only.
    unsafe {
        *libc::__errno_location() = 0;
        let v = libc::getpriority(libc::PRIO_PROCESS, tid);
        (v != -1 || *libc::__errno_location() == 0).then_some(v)
    }
}

/// The calling thread's nice value, if it can be read.
pub(crate) fn current() -> Option<libc::c_int> {
    nice_of(gettid())
}

fn set_nice(tid: libc::id_t, value: libc::c_int) -> std::io::Result<()> {
    // SAFETY: setpriority takes integer arguments only.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, value) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl BulkPriority {
    /// Lower the calling thread to [`BULK_NICE`] (never raise it).
    pub(crate) fn enter() -> BulkPriority {
        let tid = gettid();
        let before = nice_of(tid);
        let changed = match before {
            Some(n) if n >= BULK_NICE => None,
            Some(n) => match set_nice(tid, BULK_NICE) {
                Ok(()) => Some(n),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot lower the priority of tree work");
                    None
                }
            },
            None => None,
        };
        BulkPriority {
            tid,
            before: changed,
        }
    }
}

impl Drop for BulkPriority {
    fn drop(&mut self) {
        if let Some(n) = self.before {
            if let Err(e) = set_nice(self.tid, n) {
                tracing::debug!(error = %e, nice = n, "cannot restore the thread's priority");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_work_runs_niced_and_the_thread_gets_its_priority_back() {
        // A fresh thread, so the test's own nice changes touch nothing else.
        std::thread::spawn(|| {
            let tid = gettid();
            let start = nice_of(tid).expect("getpriority of this thread");
            {
                let _g = BulkPriority::enter();
                assert_eq!(nice_of(tid), Some(start.max(BULK_NICE)));
                // Nested bulk work changes nothing and restores nothing.
                {
                    let _inner = BulkPriority::enter();
                    assert_eq!(nice_of(tid), Some(start.max(BULK_NICE)));
                }
                assert_eq!(nice_of(tid), Some(start.max(BULK_NICE)));
            }
            let can_raise = nix::unistd::geteuid().is_root();
            if can_raise || start >= BULK_NICE {
                assert_eq!(nice_of(tid), Some(start), "priority restored");
            }
        })
        .join()
        .expect("test thread");
    }

    #[test]
    fn a_thread_already_below_bulk_priority_is_left_alone() {
        std::thread::spawn(|| {
            let tid = gettid();
            set_nice(tid, BULK_NICE + 5).expect("lowering one's own priority needs no privilege");
            {
                let _g = BulkPriority::enter();
                assert_eq!(nice_of(tid), Some(BULK_NICE + 5));
            }
            assert_eq!(nice_of(tid), Some(BULK_NICE + 5));
        })
        .join()
        .expect("test thread");
    }
}
