//! Progress reporting (rate-limited) and cancellation of a running job.
//!
//! What it must not do: call the progress callback more than about ten times a second (plus
//! once at the end), or let a job run past a cancellation for longer than one chunk of work.

use std::time::{Duration, Instant};

use super::error::TreeError;
use super::Progress;

/// Interval between two progress reports.
const INTERVAL: Duration = Duration::from_millis(100);

/// Progress and cancellation of one job.
pub(crate) struct Ctl<'a> {
    /// Current progress (engines update the counters directly).
    pub(crate) progress: Progress,
    last: Instant,
    sink: &'a mut dyn FnMut(&Progress),
    cancel: &'a dyn Fn() -> bool,
}

impl<'a> Ctl<'a> {
    pub(crate) fn new(sink: &'a mut dyn FnMut(&Progress), cancel: &'a dyn Fn() -> bool) -> Self {
        Ctl {
            progress: Progress::default(),
            last: Instant::now(),
            sink,
            cancel,
        }
    }

    /// Between two steps: stop if cancelled, report if the interval has passed.
    pub(crate) fn tick(&mut self) -> Result<(), TreeError> {
        if (self.cancel)() {
            return Err(TreeError::Cancelled);
        }
        if self.last.elapsed() >= INTERVAL {
            (self.sink)(&self.progress);
            self.last = Instant::now();
        }
        Ok(())
    }

    /// The final report.
    pub(crate) fn finish(&mut self) {
        (self.sink)(&self.progress);
    }
}
