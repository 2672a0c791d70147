//! The planner: a pure function of (desired, persisted, observed, resolved backend, now) that
//! returns ordered actions and findings (SPEC §4).
//!
//! Nothing here touches the system or the clock; every input is passed in, so each rule is
//! unit-tested over hand-built observations. The backend is resolved before planning (see
//! `resolve`) and passed in; the planner never resolves it again.

use crate::config::Config;
pub use crate::finding::{Finding, FindingKind, Severity};
use crate::model::{Observed, Persisted, StateProblem};
use crate::resolve::Resolution;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

mod action;
mod backend;
mod guards;
mod recovery;
mod retention;
mod storage;
mod workspaces;

pub use action::{human_bytes, Action, MigratedWorkspace, Recovery, RecoveryStep};
pub use guards::init_guard;
pub use retention::{retention_deletions, RetentionDelete};

/// More snapshots than this in one workspace gives an advisory.
pub const ADVISORY_SNAPSHOT_COUNT: usize = 1000;
/// Filesystem usage above this percentage gives an advisory.
pub const ADVISORY_FS_PERCENT: u32 = 90;

/// The planner's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Effective backend (absent when it could not be resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Resolution>,
    /// Ordered actions.
    pub actions: Vec<Action>,
    /// Findings.
    pub findings: Vec<Finding>,
    /// Backoff keys of the actions skipped because they failed recently (not in `actions`).
    #[serde(skip)]
    pub backing_off: Vec<String>,
}

impl Plan {
    /// True when a blocking finding forbids every mutation.
    pub fn blocked(&self) -> bool {
        self.findings.iter().any(Finding::is_blocking)
    }
    /// True when any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

/// Options that change what is planned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Release undeclared workspaces (`apply --prune`).
    pub prune: bool,
    /// Plan actions that failed recently too (an explicit `apply`, `init` or `release`),
    /// instead of skipping them until their backoff expires (a pass).
    pub retry_failed: bool,
}

/// Plan against `res`, the backend resolved from the same observation. Pure: same inputs,
/// same plan.
pub fn plan(
    config: &Config,
    persisted: &Persisted,
    obs: &Observed,
    res: &Resolution,
    opts: PlanOptions,
    now: SystemTime,
) -> Plan {
    let mut p = Plan::default();
    if let Some(StateProblem::NewerVersion { version, path }) = &persisted.problem {
        p.findings.push(Finding::new(
            FindingKind::NewerStateVersion,
            Severity::Error,
            format!(
                "{} has version {version}, written by a newer ws-ckpt; it is left untouched",
                path.display()
            ),
            "upgrade ws-ckpt to the version that wrote it".to_string(),
        ));
        return p;
    }
    if let Some(StateProblem::Corrupt { moved_to, error }) = &persisted.problem {
        p.findings.push(Finding::new(
            FindingKind::StateRebuilt,
            Severity::Warning,
            format!("state.json could not be read ({error}); it was moved to {} and the state is rebuilt from the disk", moved_to.display()),
            "compare the moved file with the rebuilt state.json, then delete it".to_string(),
        ));
    }
    for (ws_id, moved) in &persisted.corrupt_indexes {
        p.findings.push(Finding {
            ws_id: Some(ws_id.clone()),
            ..Finding::new(
                FindingKind::StateRebuilt,
                Severity::Warning,
                format!("the index of {ws_id} could not be read; it was moved to {} and is rebuilt from the snapshot subvolumes (messages and pins are lost)", moved.display()),
                "restore messages from the moved file if needed, then delete it".to_string(),
            )
        });
    }
    if let Some(conflict) = &res.conflict {
        p.findings.push(conflict.clone());
        p.backend = Some(res.clone());
        return p;
    }
    let mut planner = Planner {
        config,
        persisted,
        obs,
        res,
        opts,
        now,
        plan: p,
    };
    planner.run();
    let mut p = planner.plan;
    p.backend = Some(res.clone());
    p
}

struct Planner<'a> {
    config: &'a Config,
    persisted: &'a Persisted,
    obs: &'a Observed,
    res: &'a Resolution,
    opts: PlanOptions,
    now: SystemTime,
    plan: Plan,
}

impl Planner<'_> {
    fn act(&mut self, a: Action) {
        self.act_or_back_off(a);
    }
    fn find(&mut self, f: Finding) {
        self.plan.findings.push(f);
    }

    fn run(&mut self) {
        let storage_ready = self.backend();
        let busy = self.pending(storage_ready);
        let Some(view) = self.obs.storage.as_ref().filter(|_| storage_ready) else {
            return;
        };
        if self.migrations(view) {
            return;
        }
        self.storage_roots(view);
        self.recorded_workspaces(view, &busy);
        self.declared_workspaces(view, &busy);
        self.advisories(view);
        self.orphans(view);
    }
}

#[cfg(test)]
mod tests;
