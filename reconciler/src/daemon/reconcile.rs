//! The reconcile loop: block until a trigger (then swallow the burst that follows), run one
//! full level-triggered pass (workspaces one at a time, each under its own lock, while
//! requests on the others go on), log what changed and tell systemd a one-line health
//! summary.

use super::notify;
use super::shared::{lock, Shared};
use super::watch::Event;
use super::{DEBOUNCE, MAX_DEBOUNCE, STATUS_MAX};
use crate::engine::{ApplyOptions, ApplyReport};
use crate::execute::Outcome;
use crate::plan::Severity;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub(super) fn next_deadline(interval: Duration) -> Option<Instant> {
    (!interval.is_zero()).then(|| Instant::now() + interval)
}

/// Block until something asks for a pass (then swallow the burst that follows), or until a
/// stop is requested (`None`). With no interval the loop sleeps until an event.
pub(super) fn wait_for_trigger(
    rx: &Receiver<Event>,
    deadline: Option<Instant>,
) -> Option<&'static str> {
    let first = match deadline {
        Some(t) => match rx.recv_timeout(t.saturating_duration_since(Instant::now())) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => Event::Tick("interval"),
            Err(RecvTimeoutError::Disconnected) => return None,
        },
        None => rx.recv().ok()?,
    };
    let mut why = match first {
        Event::Shutdown => return None,
        Event::Reload => {
            tracing::info!("SIGHUP: reloading the config");
            "SIGHUP"
        }
        Event::Tick(w) => w,
    };
    let until = Instant::now() + MAX_DEBOUNCE;
    loop {
        let left = until
            .saturating_duration_since(Instant::now())
            .min(DEBOUNCE);
        if left.is_zero() {
            return Some(why);
        }
        match rx.recv_timeout(left) {
            Ok(Event::Shutdown) => return None,
            Ok(Event::Reload) => {
                tracing::info!("SIGHUP: reloading the config");
                why = "SIGHUP";
            }
            Ok(Event::Tick(_)) => {}
            Err(RecvTimeoutError::Timeout) => return Some(why),
            Err(RecvTimeoutError::Disconnected) => return Some(why),
        }
    }
}

impl Shared {
    /// One full pass. Returns the reconcile interval now in force.
    pub(super) fn pass(&self, why: &str) -> Duration {
        let start = Instant::now();
        let Some(engine) = self.engine() else {
            return Duration::ZERO;
        };
        self.refresh_config(&engine);
        let report = engine.apply(ApplyOptions::default(), &mut |_, _| {});
        let workspaces = engine
            .store
            .read()
            .state
            .as_ref()
            .map_or(0, |s| s.workspaces.len());
        self.refresh_watches(&engine);
        let interval = engine.config().daemon.reconcile_interval;
        drop(engine);
        *lock(&self.last_pass) = Some(crate::time::now_rfc3339());
        self.log_report(why, &report, start.elapsed());
        let summary = summarize(&report, workspaces, lock(&self.config_error).as_deref());
        if let Err(e) = notify::sd_notify(&format!(
            "STATUS={}",
            notify::one_line(&summary, STATUS_MAX)
        )) {
            tracing::warn!(error = %e, "cannot send status to systemd");
        }
        drop(report);
        super::heap::release_free_memory();
        interval
    }

    fn log_report(&self, why: &str, report: &ApplyReport, took: Duration) {
        let done = report
            .actions
            .iter()
            .filter(|a| a.result == Outcome::Done)
            .count();
        let failed = report
            .actions
            .iter()
            .filter(|a| a.result == Outcome::Failed)
            .count();
        if report.changed || failed > 0 {
            tracing::info!(
                trigger = why,
                done,
                failed,
                took_ms = took.as_millis() as u64,
                "reconcile pass changed the system"
            );
        } else {
            tracing::debug!(
                trigger = why,
                took_ms = took.as_millis() as u64,
                "reconcile pass: in sync"
            );
        }
        // Findings are logged when they change, not on every pass.
        let now: Vec<String> = report
            .findings
            .iter()
            .map(|f| format!("{:?} {}", f.kind, f.message))
            .collect();
        let mut last = lock(&self.last_findings);
        if *last != now {
            for f in &report.findings {
                match f.severity {
                    Severity::Error => {
                        tracing::error!(kind = ?f.kind, ws_id = f.ws_id.as_deref().unwrap_or(""), hint = %f.hint, "{}", f.message)
                    }
                    Severity::Warning => {
                        tracing::warn!(kind = ?f.kind, ws_id = f.ws_id.as_deref().unwrap_or(""), hint = %f.hint, "{}", f.message)
                    }
                    Severity::Info => {
                        tracing::info!(kind = ?f.kind, ws_id = f.ws_id.as_deref().unwrap_or(""), "{}", f.message)
                    }
                }
            }
            *last = now;
        }
    }
}
/// One line of health for `STATUS=`.
pub fn summarize(report: &ApplyReport, workspaces: usize, config_error: Option<&str>) -> String {
    let failed = report
        .actions
        .iter()
        .filter(|a| a.result == Outcome::Failed)
        .count();
    let count = |s: Severity| report.findings.iter().filter(|f| f.severity == s).count();
    let (errors, warnings) = (count(Severity::Error), count(Severity::Warning));
    let mut s = if let Some(f) = report.findings.iter().find(|f| f.is_blocking()) {
        format!("BLOCKED: {}", f.message)
    } else if errors > 0 || failed > 0 {
        let first = report
            .findings
            .iter()
            .find(|f| f.severity == Severity::Error)
            .map(|f| f.message.clone())
            .or_else(|| {
                report
                    .actions
                    .iter()
                    .find_map(|a| a.error.as_ref().map(|e| e.message.clone()))
            })
            .unwrap_or_default();
        format!("degraded: {workspaces} workspace(s), {errors} error(s), {failed} failed action(s): {first}")
    } else if warnings > 0 {
        let first = report
            .findings
            .iter()
            .find(|f| f.severity == Severity::Warning)
            .map(|f| f.message.as_str())
            .unwrap_or("");
        format!("ok: {workspaces} workspace(s), {warnings} warning(s): {first}")
    } else {
        format!("ok: {workspaces} workspace(s)")
    };
    if let Some(e) = config_error {
        s.push_str(&format!("; config error: {e}"));
    }
    s
}
