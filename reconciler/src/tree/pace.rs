//! Write-behind for copied file data: the copy starts writeback of what it wrote every
//! [`WINDOW`] bytes of a file (`sync_file_range(SYNC_FILE_RANGE_WRITE)`) and waits for the
//! window before (`WAIT_BEFORE|WRITE|WAIT_AFTER`), and across files keeps at most
//! [`MAX_IN_FLIGHT`] bytes (and [`MAX_FILES`] files) whose writeback it has started but not
//! waited for. So a large init or release copy never leaves more than a few tens of MiB dirty
//! in the page cache, and the filesystem's next transaction commit — a concurrent snapshot's
//! commit on the same btrfs, or the copy's own closing `syncfs` — never has to wait for a
//! whole tree's data to reach the disk (issue 9: checkpoints of other workspaces during an
//! init). The disk does the same writes as before, just earlier and overlapped with the copy.
//!
//! Advisory only: a filesystem that refuses `sync_file_range` disables pacing for the rest of
//! the copy (the closing `syncfs` still makes the data durable and reports write errors).
//! What it must not do: fsync (durability is the caller's `syncfs`), or change any data.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Bytes of one file written between two writeback starts.
pub(crate) const WINDOW: u64 = 8 << 20;
/// Bytes of finished files whose writeback is started but not waited for.
pub(crate) const MAX_IN_FLIGHT: u64 = 32 << 20;
/// Finished files kept open for a later wait.
pub(crate) const MAX_FILES: usize = 64;

/// A byte range `(offset, length)` of one file.
pub(crate) type Range = (u64, u64);

/// What to do after writing a file up to some offset: start writeback of one range, then wait
/// for another.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Step {
    /// Start writeback of this range (not waiting).
    pub start: Option<Range>,
    /// Wait until this range is written (starting writeback of what is still dirty in it).
    pub wait: Option<Range>,
}

/// The write-behind state of one file being written front to back: everything below
/// `waited` is written, `[waited, started)` has writeback started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FileWindow {
    started: u64,
    waited: u64,
}

impl FileWindow {
    /// The file is now written up to `pos`: once a whole `window` lies past the started part,
    /// start it, and wait for the part started before (so at most two windows are in flight).
    pub(crate) fn wrote(&mut self, pos: u64, window: u64) -> Step {
        if pos < self.started.saturating_add(window.max(1)) {
            return Step::default();
        }
        let start = Some((self.started, pos - self.started));
        let wait =
            (self.started > self.waited).then_some((self.waited, self.started - self.waited));
        if wait.is_some() {
            self.waited = self.started;
        }
        self.started = pos;
        Step { start, wait }
    }

    /// The file is complete at `size`: start what is left, and hand back the range still in
    /// flight (for [`InFlight`]).
    pub(crate) fn finish(self, size: u64) -> (Option<Range>, Option<Range>) {
        let start = (size > self.started).then_some((self.started, size - self.started));
        let end = size.max(self.started);
        let in_flight = (end > self.waited).then_some((self.waited, end - self.waited));
        (start, in_flight)
    }
}

/// Finished files whose writeback was started but not waited for, oldest first, bounded by
/// bytes and by count.
#[derive(Debug)]
pub(crate) struct InFlight<K> {
    queue: VecDeque<(K, Range)>,
    bytes: u64,
    max_bytes: u64,
    max_files: usize,
}

impl<K> InFlight<K> {
    pub(crate) fn new(max_bytes: u64, max_files: usize) -> InFlight<K> {
        InFlight {
            queue: VecDeque::new(),
            bytes: 0,
            max_bytes,
            max_files: max_files.max(1),
        }
    }

    /// Add one file's range; returns the oldest entries to wait for now, so that what stays
    /// is within both bounds.
    pub(crate) fn push(&mut self, key: K, range: Range) -> Vec<(K, Range)> {
        self.bytes += range.1;
        self.queue.push_back((key, range));
        let mut due = Vec::new();
        while self.bytes > self.max_bytes || self.queue.len() > self.max_files {
            let Some((k, r)) = self.queue.pop_front() else {
                break;
            };
            self.bytes -= r.1;
            due.push((k, r));
        }
        due
    }

    /// Bytes in flight.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// `sync_file_range` on `fd`.
fn sync_range(fd: BorrowedFd<'_>, (off, len): Range, flags: libc::c_uint) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: plain sync_file_range on a live descriptor; no memory arguments.
    let rc = unsafe {
        libc::sync_file_range(
            fd.as_raw_fd(),
            off as libc::off64_t,
            len as libc::off64_t,
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

const START: libc::c_uint = libc::SYNC_FILE_RANGE_WRITE;
const WAIT: libc::c_uint = libc::SYNC_FILE_RANGE_WAIT_BEFORE
    | libc::SYNC_FILE_RANGE_WRITE
    | libc::SYNC_FILE_RANGE_WAIT_AFTER;

/// The write-behind of one tree copy.
pub(crate) struct Pacer {
    enabled: bool,
    in_flight: InFlight<OwnedFd>,
}

impl Pacer {
    pub(crate) fn new() -> Pacer {
        Pacer {
            enabled: true,
            in_flight: InFlight::new(MAX_IN_FLIGHT, MAX_FILES),
        }
    }

    fn apply(&mut self, fd: BorrowedFd<'_>, range: Option<Range>, flags: libc::c_uint) {
        let Some(range) = range else { return };
        if !self.enabled {
            return;
        }
        if let Err(e) = sync_range(fd, range, flags) {
            tracing::debug!(error = %e, "sync_file_range refused; copying without write-behind");
            self.enabled = false;
        }
    }

    /// `dst` is written up to `pos` (front to back).
    pub(crate) fn wrote(&mut self, dst: BorrowedFd<'_>, window: &mut FileWindow, pos: u64) {
        if !self.enabled {
            return;
        }
        let step = window.wrote(pos, WINDOW);
        self.apply(dst, step.start, START);
        self.apply(dst, step.wait, WAIT);
    }

    /// `dst` is complete at `size`: start the rest, and keep its unwaited part in flight (a
    /// duplicate of the descriptor), waiting for the oldest files beyond the bounds.
    pub(crate) fn finish(&mut self, dst: BorrowedFd<'_>, window: FileWindow, size: u64) {
        if !self.enabled {
            return;
        }
        let (start, in_flight) = window.finish(size);
        self.apply(dst, start, START);
        let Some(range) = in_flight else { return };
        let Ok(fd) = dst.try_clone_to_owned() else {
            // No descriptor to wait on later: wait now.
            self.apply(dst, Some(range), WAIT);
            return;
        };
        for (fd, range) in self.in_flight.push(fd, range) {
            self.apply(fd.as_fd(), Some(range), WAIT);
        }
    }

    /// Bytes of finished files in flight.
    #[cfg(test)]
    pub(crate) fn in_flight_bytes(&self) -> u64 {
        self.in_flight.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_file_starts_every_window_and_waits_for_the_one_before() {
        let mut w = FileWindow::default();
        assert_eq!(w.wrote(3 * MIB, 8 * MIB), Step::default());
        assert_eq!(
            w.wrote(8 * MIB, 8 * MIB),
            Step {
                start: Some((0, 8 * MIB)),
                wait: None
            }
        );
        assert_eq!(w.wrote(12 * MIB, 8 * MIB), Step::default());
        assert_eq!(
            w.wrote(17 * MIB, 8 * MIB),
            Step {
                start: Some((8 * MIB, 9 * MIB)),
                wait: Some((0, 8 * MIB))
            }
        );
        assert_eq!(
            w.wrote(25 * MIB, 8 * MIB),
            Step {
                start: Some((17 * MIB, 8 * MIB)),
                wait: Some((8 * MIB, 9 * MIB))
            }
        );
        // At most two windows in flight: what is not waited for is [waited, pos).
        assert_eq!(
            w.finish(30 * MIB),
            (Some((25 * MIB, 5 * MIB)), Some((17 * MIB, 13 * MIB)))
        );
    }

    #[test]
    fn a_small_file_is_started_whole_at_its_end() {
        let mut w = FileWindow::default();
        assert_eq!(w.wrote(4096, 8 * MIB), Step::default());
        assert_eq!(w.finish(4096), (Some((0, 4096)), Some((0, 4096))));
        assert_eq!(FileWindow::default().finish(0), (None, None));
    }

    #[test]
    fn a_file_ending_on_a_window_has_nothing_left_to_start() {
        let mut w = FileWindow::default();
        w.wrote(8 * MIB, 8 * MIB);
        assert_eq!(w.finish(8 * MIB), (None, Some((0, 8 * MIB))));
    }

    #[test]
    fn finished_files_are_waited_for_oldest_first_beyond_the_byte_bound() {
        let mut f = InFlight::new(10, 100);
        assert!(f.push("a", (0, 4)).is_empty());
        assert!(f.push("b", (0, 4)).is_empty());
        assert_eq!(f.bytes(), 8);
        assert_eq!(f.push("c", (2, 4)), vec![("a", (0, 4))]);
        assert_eq!(f.bytes(), 8);
        // One range larger than the bound waits for everything, itself included.
        assert_eq!(
            f.push("d", (0, 20)),
            vec![("b", (0, 4)), ("c", (2, 4)), ("d", (0, 20))]
        );
        assert_eq!(f.bytes(), 0);
    }

    #[test]
    fn finished_files_are_waited_for_beyond_the_count_bound() {
        let mut f = InFlight::new(u64::MAX, 2);
        assert!(f.push(1, (0, 1)).is_empty());
        assert!(f.push(2, (0, 1)).is_empty());
        assert_eq!(f.push(3, (0, 1)), vec![(1, (0, 1))]);
    }

    #[test]
    fn pacing_a_real_file_keeps_its_content_and_bounds_what_is_in_flight() {
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let mut pacer = Pacer::new();
        let chunk = vec![7u8; (MIB / 2) as usize];
        for n in 0..3 {
            let path = dir.path().join(format!("f{n}"));
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .unwrap();
            let mut w = FileWindow::default();
            let mut pos = 0;
            for _ in 0..40 {
                f.write_all(&chunk).unwrap();
                pos += chunk.len() as u64;
                pacer.wrote(f.as_fd(), &mut w, pos);
            }
            pacer.finish(f.as_fd(), w, pos);
            assert!(pacer.in_flight_bytes() <= MAX_IN_FLIGHT);
            let mut back = vec![0u8; chunk.len()];
            f.read_exact_at(&mut back, 19 * MIB).unwrap();
            assert_eq!(back, chunk);
        }
        assert!(pacer.in_flight_bytes() > 0 || !pacer.enabled);
    }
}
