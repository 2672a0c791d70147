//! The engine: one object that holds the lock, the config, the persisted state and the system
//! handle, and offers every operation (apply, plan, status, init, release, …) as
//! request-in/result-out functions. The CLI and the daemon both call it.
//!
//! It sequences observe → plan → execute; it contains no planning rules itself.

use crate::config::{edit, Config, DeclState};
use crate::error::{Error, ErrorCode, Result};
use crate::execute::{ActionOutcome, Executor, Outcome};
use crate::finding::{Finding, FindingKind, Severity};
use crate::lock::DaemonLock;
use crate::model::{Observed, PathState};
use crate::observe::observe;
use crate::paths::absolute_user_path;
use crate::plan::{plan, Action, Plan, PlanOptions};
use crate::resolve::Resolution;
use crate::state::WorkspaceEntry;
use crate::status::{DaemonInfo, StatusReport};
use crate::store::Store;
use crate::sys::Sys;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How many observe→plan→execute rounds one apply may take (bootstrap, then migrations, then
/// workspaces, then snapshots).
pub const MAX_ROUNDS: usize = 6;

/// Options of `apply`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Plan only (`--check`).
    pub check: bool,
    /// Release undeclared workspaces.
    pub prune: bool,
}

/// Result of `apply` (JSON: `{"changed", "actions", "findings"}`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ApplyReport {
    /// True when anything was changed.
    pub changed: bool,
    /// Every action attempted (or planned, with --check), in order.
    pub actions: Vec<ActionOutcome>,
    /// Findings of the last pass.
    pub findings: Vec<Finding>,
}

impl ApplyReport {
    /// Converged: no failed action and no error finding.
    pub fn ok(&self) -> bool {
        self.actions.iter().all(|a| a.result != Outcome::Failed)
            && !self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

/// The engine.
pub struct Engine {
    /// Effective config.
    pub config: Config,
    sys: Arc<dyn Sys>,
    /// Persisted state.
    pub store: Store,
    lock: Option<DaemonLock>,
    /// The previous holder of the lock did not stop cleanly.
    pub unclean_detected: bool,
}

impl Engine {
    /// Take the state lock (waiting up to `wait`), load state and indexes. When the previous
    /// holder died, record the unclean shutdown; crash recovery happens in the next pass.
    pub fn open(config: Config, sys: Arc<dyn Sys>, role: &str, wait: Duration) -> Result<Engine> {
        let lock = DaemonLock::acquire(&config.daemon.state_dir, wait, role)?;
        let store = Store::load(&config.daemon.state_dir, SystemTime::now())?;
        let mut engine = Engine {
            config,
            sys,
            store,
            unclean_detected: lock.previous_unclean,
            lock: Some(lock),
        };
        if engine.unclean_detected {
            tracing::warn!(
                lock = %engine.config.daemon.state_dir.join(crate::lock::LOCK_FILE).display(),
                "the previous ws-ckpt process did not stop cleanly; running crash recovery"
            );
            if let Some(s) = engine.store.p.state.as_mut() {
                s.last_unclean_shutdown = Some(crate::time::now_rfc3339());
                if engine.store.p.problem.is_none() {
                    engine.store.save()?;
                }
            }
        }
        Ok(engine)
    }

    /// Clean stop: remove the lock file. (Index journals compact themselves when they grow,
    /// so a stop costs nothing per snapshot.)
    pub fn close(mut self) {
        if let Some(lock) = self.lock.take() {
            lock.release();
        }
    }

    /// An executor over this engine's system handle, config and store.
    pub fn executor<'a>(
        &'a mut self,
        res: &'a Resolution,
        progress: crate::execute::ProgressFn<'a>,
    ) -> Executor<'a> {
        Executor {
            sys: self.sys.as_ref(),
            config: &self.config,
            store: &mut self.store,
            res,
            progress,
        }
    }

    /// A shared handle to the system layer (for work done outside the engine lock).
    pub fn sys_handle(&self) -> Arc<dyn Sys> {
        Arc::clone(&self.sys)
    }

    /// System handle.
    pub fn sys(&self) -> &dyn Sys {
        self.sys.as_ref()
    }

    /// Reload the config from its file (after our own edits, or on SIGHUP).
    pub fn reload_config(&mut self) -> Result<()> {
        self.config = self.config.reload()?;
        Ok(())
    }

    /// Observe the system now (host, then the backend resolved once, then its storage).
    pub fn observe(&self) -> (Observed, Resolution) {
        observe(self.sys.as_ref(), &self.config, &self.store.p)
    }

    /// Plan against a fresh observation.
    pub fn plan(&self, opts: PlanOptions) -> Plan {
        let (obs, res) = self.observe();
        plan(
            &self.config,
            &self.store.p,
            &obs,
            &res,
            opts,
            SystemTime::now(),
        )
    }

    /// Converge: repeat observe → plan → execute until nothing is left to do (bounded).
    pub fn apply(
        &mut self,
        opts: ApplyOptions,
        progress: &mut dyn FnMut(&str, &crate::copy::Progress),
    ) -> ApplyReport {
        let mut report = ApplyReport {
            changed: false,
            actions: Vec::new(),
            findings: Vec::new(),
        };
        let popts = PlanOptions { prune: opts.prune };
        for round in 0..MAX_ROUNDS {
            let p = self.plan(popts);
            report.findings = p.findings.clone();
            if p.actions.is_empty() || p.blocked() {
                break;
            }
            if opts.check {
                report.actions = p
                    .actions
                    .into_iter()
                    .map(|action| ActionOutcome {
                        action,
                        result: Outcome::Planned,
                        changed: false,
                        error: None,
                    })
                    .collect();
                report.changed = !report.actions.is_empty();
                break;
            }
            let Some(res) = p.backend.clone() else { break };
            let mut failed = false;
            let mut config_touched = false;
            for action in p.actions {
                config_touched |= matches!(
                    action,
                    Action::DeclareMigrated { .. } | Action::MigrateV0Indexes { .. }
                );
                let result = Executor {
                    sys: self.sys.as_ref(),
                    config: &self.config,
                    store: &mut self.store,
                    res: &res,
                    progress,
                }
                .run(&action);
                let outcome = match result {
                    Ok(change) => {
                        report.changed |= change.changed();
                        ActionOutcome {
                            action,
                            result: Outcome::Done,
                            changed: change.changed(),
                            error: None,
                        }
                    }
                    Err(e) => {
                        failed = true;
                        tracing::error!(action = action.name(), error = %e, "action failed");
                        ActionOutcome {
                            action,
                            result: Outcome::Failed,
                            changed: false,
                            error: Some(e),
                        }
                    }
                };
                report.actions.push(outcome);
            }
            if config_touched {
                if let Err(e) = self.reload_config() {
                    tracing::error!(error = %e, "config no longer loads after migration");
                }
            }
            if failed {
                // Do not retry a failing action in a loop; the findings of a fresh plan say why.
                report.findings = self.plan(popts).findings;
                break;
            }
            if round + 1 == MAX_ROUNDS {
                report.findings = self.plan(popts).findings;
            }
        }
        report
    }

    /// The resolved backend, or the blocking finding.
    pub fn resolution(&self) -> Result<Resolution> {
        let p = self.plan(PlanOptions::default());
        if let Some(f) = p.findings.iter().find(|f| f.is_blocking()) {
            return Err(Error::new(ErrorCode::Blocked, f.message.clone()).hint(f.hint.clone()));
        }
        p.backend.ok_or_else(|| {
            Error::new(
                ErrorCode::StorageUnavailable,
                "no backend could be resolved",
            )
        })
    }

    /// `ws-ckpt init PATH`: declare in a drop-in, then apply; report the workspace. Unless
    /// `force`, a directory in which a process other than `caller` (and this one) has its
    /// working directory is refused before anything changes (as upstream 0.3.3+).
    pub fn init(
        &mut self,
        path: &Path,
        force: bool,
        caller: &crate::api::Caller,
        progress: &mut dyn FnMut(&str, &crate::copy::Progress),
    ) -> Result<InitReport> {
        let path = absolute_user_path(path)?;
        let cwd_guard = || match force {
            true => Ok(()),
            false => crate::procs::guard_init(&path, caller),
        };
        if let Some(w) = self.workspace_by_path(&path) {
            let w = w.clone();
            if self
                .config
                .workspace(&path)
                .is_none_or(|d| d.state == DeclState::Present)
            {
                let declared_in = self.config.workspace(&path).map(|d| d.source.clone());
                return Ok(InitReport {
                    ws_id: w.ws_id,
                    path,
                    changed: false,
                    declared_in,
                    apply: None,
                });
            }
        }
        let mut newly_declared = false;
        let decl_file = match self.config.workspace(&path) {
            Some(d) if d.state == DeclState::Present => {
                cwd_guard()?;
                d.source.clone()
            }
            Some(d) => {
                cwd_guard()?;
                edit::set_workspace_state(&d.source, &path, DeclState::Present)?;
                d.source.clone()
            }
            None => {
                newly_declared = true;
                if let Some(why) = self.quick_guard(&path) {
                    return Err(Error::new(
                        ErrorCode::InvalidPath,
                        format!("cannot make a workspace of {}: {why}", path.display()),
                    )
                    .hint("choose a project directory of your own"));
                }
                cwd_guard()?;
                let taken = |id: &str| {
                    self.store
                        .p
                        .state
                        .as_ref()
                        .is_some_and(|s| s.workspace(id).is_some())
                };
                let ws_id = crate::ids::allocate_ws_id(&path, taken);
                edit::declare_workspace(&self.config.dropin_dir, &ws_id, &path)?.0
            }
        };
        self.reload_config()?;
        let report = self.apply(ApplyOptions::default(), progress);
        match self.workspace_by_path(&path) {
            Some(w) => Ok(InitReport {
                ws_id: w.ws_id.clone(),
                path,
                changed: report.changed,
                declared_in: Some(decl_file),
                apply: Some(report),
            }),
            None => {
                let err = self.why_not_ready(&path, &report);
                let interrupted = self.store.p.pending().iter().any(
                    |o| matches!(&o.kind, crate::state::PendingKind::Init { path: p, .. } if *p == path),
                );
                if newly_declared && !interrupted {
                    // Nothing was converted: take the declaration back so the config does not
                    // keep asking for a workspace that cannot be made.
                    if let Err(e) = edit::remove_workspace(&decl_file, &path) {
                        tracing::warn!(file = %decl_file.display(), error = %e, "could not withdraw the declaration");
                    }
                    let _ = self.reload_config();
                }
                Err(err)
            }
        }
    }

    fn quick_guard(&self, path: &Path) -> Option<String> {
        let res = self.plan(PlanOptions::default()).backend?;
        let others: Vec<PathBuf> = self
            .store
            .p
            .state
            .iter()
            .flat_map(|s| s.workspaces.iter().map(|w| w.workspace_path.clone()))
            .chain(
                self.config
                    .workspaces
                    .iter()
                    .filter(|w| w.state == DeclState::Present)
                    .map(|w| w.path.clone()),
            )
            .collect();
        let refs: Vec<&Path> = others.iter().map(PathBuf::as_path).collect();
        crate::plan::init_guard(path, &res, &self.config.daemon.state_dir, &refs).or_else(|| {
            match crate::observe::path_state(path) {
                PathState::Dir { .. } => None,
                PathState::Missing => Some("it does not exist".to_string()),
                _ => Some("it is not a directory".to_string()),
            }
        })
    }

    fn why_not_ready(&self, path: &Path, report: &ApplyReport) -> Error {
        if let Some(a) = report.actions.iter().find(|a| a.result == Outcome::Failed) {
            if let Some(e) = &a.error {
                return e.clone();
            }
        }
        let f = report
            .findings
            .iter()
            .find(|f| f.path.as_deref() == Some(path) || f.is_blocking())
            .or_else(|| {
                report
                    .findings
                    .iter()
                    .find(|f| f.severity == Severity::Error)
            });
        match f {
            Some(f) => {
                let code = match f.kind {
                    FindingKind::BackendConflict | FindingKind::NewerStateVersion => {
                        ErrorCode::Blocked
                    }
                    FindingKind::StorageUnavailable => ErrorCode::StorageUnavailable,
                    FindingKind::PathOccupied => ErrorCode::WorkspaceDetached,
                    _ => ErrorCode::InvalidPath,
                };
                Error::new(code, f.message.clone()).hint(f.hint.clone())
            }
            None => Error::new(
                ErrorCode::OperationFailed,
                format!("{} did not become a workspace", path.display()),
            ),
        }
    }

    /// The recorded workspace at `path` (made absolute) that `release` acts on.
    pub fn release_target(&self, path: &Path) -> Result<WorkspaceEntry> {
        let path = absolute_user_path(path)?;
        self.workspace_by_path(&path)
            .cloned()
            .ok_or_else(|| Error::workspace_not_found(&path.display().to_string()))
    }

    /// `ws-ckpt release PATH` of the recorded workspace `ws`: set `state = "absent"` where it
    /// is declared (or declare it so), then apply; the workspace is gone on success.
    pub fn release(
        &mut self,
        ws: &WorkspaceEntry,
        progress: &mut dyn FnMut(&str, &crate::copy::Progress),
    ) -> Result<ReleaseReport> {
        let ws = ws.clone();
        let path = ws.workspace_path.clone();
        // A real directory at the path is never overwritten: refuse before declaring anything.
        if let Some(why) = release_blocker(&ws) {
            return Err(Error::new(ErrorCode::WorkspaceDetached, why));
        }
        match self.config.workspace(&path) {
            Some(d) => {
                edit::set_workspace_state(&d.source, &path, DeclState::Absent)?;
            }
            None => {
                let (file, _) = edit::declare_workspace(&self.config.dropin_dir, &ws.ws_id, &path)?;
                edit::set_workspace_state(&file, &path, DeclState::Absent)?;
            }
        }
        self.reload_config()?;
        let report = self.apply(ApplyOptions::default(), progress);
        if self.workspace_by_path(&path).is_some() {
            return Err(self.why_not_ready(&path, &report));
        }
        Ok(ReleaseReport {
            ws_id: ws.ws_id,
            path,
            apply: report,
        })
    }

    /// Recorded workspace at this path.
    pub fn workspace_by_path(&self, path: &Path) -> Option<&WorkspaceEntry> {
        self.store.p.state.as_ref()?.workspace_by_path(path)
    }

    /// Find a recorded workspace by ws_id or by path (relative paths are made absolute; the
    /// final component is not resolved because a workspace path is a symlink).
    pub fn resolve_workspace(&self, spec: &str) -> Result<WorkspaceEntry> {
        let state = self.store.p.state.as_ref();
        if let Some(w) = state.and_then(|s| s.workspace(spec)) {
            return Ok(w.clone());
        }
        if crate::ids::is_valid_ws_id(spec) && spec.starts_with("ws-") {
            return Err(Error::workspace_not_found(spec));
        }
        let path = absolute_user_path(Path::new(spec))?;
        state
            .and_then(|s| s.workspace_by_path(&path))
            .cloned()
            .ok_or_else(|| Error::workspace_not_found(&path.display().to_string()))
    }

    /// `status` from a fresh observation and plan; `daemon` describes the serving daemon.
    pub fn status(&self, daemon: Option<&DaemonInfo>) -> StatusReport {
        let (obs, res) = self.observe();
        let p = plan(
            &self.config,
            &self.store.p,
            &obs,
            &res,
            PlanOptions::default(),
            SystemTime::now(),
        );
        crate::status::build(&self.config, &self.store.p, &obs, &p, daemon)
    }

    /// Path of the config lock-holder info etc. (state dir).
    pub fn state_dir(&self) -> &Path {
        &self.config.daemon.state_dir
    }
}

/// Why releasing `w` cannot succeed now, as far as its path shows: a real directory or a file
/// occupies it (never overwritten, SPEC §5.4).
pub fn release_blocker(w: &WorkspaceEntry) -> Option<String> {
    match crate::observe::path_state(&w.workspace_path) {
        PathState::Dir { .. } | PathState::Other => Some(format!(
            "cannot recover workspace {}: {p} is a real directory or file now, not the workspace symlink; move it aside (e.g. `mv {p} {p}.moved`) and retry; the workspace and its snapshots are kept",
            w.ws_id,
            p = w.workspace_path.display()
        )),
        _ => None,
    }
}

/// Result of `init`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct InitReport {
    /// Workspace ID.
    pub ws_id: String,
    /// Path.
    pub path: PathBuf,
    /// False when it already was a workspace.
    pub changed: bool,
    /// Config file declaring it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_in: Option<PathBuf>,
    /// The apply that did it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<ApplyReport>,
}

/// Result of `release`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ReleaseReport {
    /// Workspace ID it had.
    pub ws_id: String,
    /// Path, now a plain directory.
    pub path: PathBuf,
    /// The apply that did it.
    pub apply: ApplyReport,
}
