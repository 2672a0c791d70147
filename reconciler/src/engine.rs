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
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Plan only (`--check`).
    pub check: bool,
    /// Release undeclared workspaces.
    pub prune: bool,
    /// Run actions that failed recently at once (an explicit `apply`, `init`, `release`)
    /// instead of waiting for their backoff (a pass of the daemon).
    pub retry_failed: bool,
    /// An init on behalf of a user: the directory at this path must be owned by this uid
    /// when the executor opens it (without following a symlink), else nothing is done.
    pub init_owner: Option<(PathBuf, u32)>,
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
        // Holding the lock: no other ws-ckpt process writes here now.
        crate::state::tidy_state_dir(crate::state::StateDirs {
            state_dir: &config.daemon.state_dir,
            dropin_dir: &config.dropin_dir,
            image: Some(&config.backend.btrfs_loop.image),
        })
        .map_err(|e| Error::io("secure the state directory", &config.daemon.state_dir, e))?;
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
            init_owner: None,
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
        let path = self.config.config_path.clone();
        self.config = Config::load(&path)?;
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
        progress: &mut dyn FnMut(&str, &crate::tree::Progress),
    ) -> ApplyReport {
        let mut report = ApplyReport {
            changed: false,
            actions: Vec::new(),
            findings: Vec::new(),
        };
        let popts = PlanOptions {
            prune: opts.prune,
            retry_failed: opts.retry_failed,
        };
        // Findings are reported as a pass sees them: a failing action shows with its backoff.
        let fopts = PlanOptions {
            retry_failed: false,
            ..popts
        };
        for round in 0..MAX_ROUNDS {
            let p = self.plan(popts);
            report.findings = p.findings.clone();
            if round == 0 && !opts.check && !p.blocked() {
                self.forget_stale_failures(&p);
            }
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
                    init_owner: opts.init_owner.as_ref(),
                }
                .run(&action);
                self.note_outcome(&action, result.as_ref().err());
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
                report.findings = self.plan(fopts).findings;
                break;
            }
            if round + 1 == MAX_ROUNDS {
                report.findings = self.plan(fopts).findings;
            }
        }
        report
    }

    /// Record an action's failure for its backoff, or forget earlier failures once it
    /// succeeded. Kept in memory even when state.json cannot be written.
    fn note_outcome(&mut self, action: &Action, error: Option<&Error>) {
        let key = action.failure_key();
        let Some(state) = self.store.p.state.as_mut() else {
            return;
        };
        let changed = match error {
            Some(e) => {
                let text = match &e.hint {
                    Some(h) => format!("{} ({h})", e.message),
                    None => e.message.clone(),
                };
                state.record_failure(
                    &key,
                    action.ws_id(),
                    action.path(),
                    &text,
                    SystemTime::now(),
                );
                true
            }
            None => state.clear_failure(&key),
        };
        if changed {
            if let Err(e) = self.store.save() {
                tracing::warn!(error = %e, "could not persist the failure record of an action");
            }
        }
    }

    /// Forget failure records of actions a fresh plan no longer has (done meanwhile, or no
    /// longer wanted).
    fn forget_stale_failures(&mut self, p: &Plan) {
        let Some(state) = self.store.p.state.as_mut() else {
            return;
        };
        let live: std::collections::BTreeSet<String> = p
            .actions
            .iter()
            .map(Action::failure_key)
            .chain(p.backing_off.iter().cloned())
            .collect();
        let before = state.failures.len();
        state.failures.retain(|f| live.contains(&f.key));
        if state.failures.len() != before {
            if let Err(e) = self.store.save() {
                tracing::warn!(error = %e, "could not persist the removal of stale failure records");
            }
        }
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

    /// `ws-ckpt init PATH`: declare in a drop-in, then apply; report the workspace.
    pub fn init(
        &mut self,
        path: &Path,
        progress: &mut dyn FnMut(&str, &crate::tree::Progress),
    ) -> Result<InitReport> {
        self.init_as(path, None, progress)
    }

    /// [`Engine::init`] on behalf of `owner` (a non-root caller): the directory must be hers
    /// when it is opened for the copy. The path is taken as sent (made absolute, `.`/`..`
    /// removed), never resolved again: the caller's CLI resolved it as her.
    pub fn init_as(
        &mut self,
        path: &Path,
        owner: Option<u32>,
        progress: &mut dyn FnMut(&str, &crate::tree::Progress),
    ) -> Result<InitReport> {
        let path = crate::paths::lexical_absolute(path)?;
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
            Some(d) if d.state == DeclState::Present => d.source.clone(),
            Some(d) => {
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
        let explicit = ApplyOptions {
            retry_failed: true,
            init_owner: owner.map(|uid| (path.clone(), uid)),
            ..ApplyOptions::default()
        };
        let report = self.apply(explicit, progress);
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
                // ws-ckpt's own storage reached another way (a bind mount of data_root, …).
                PathState::Dir { .. } => crate::observe::open_parent(path)
                    .and_then(|(d, n)| d.open_dir(n))
                    .ok()
                    .and_then(|dir| {
                        let mounts = self.sys.mounts().unwrap_or_default();
                        crate::observe::storage_alias(&dir, &res, &mounts)
                    }),
                PathState::Missing => Some("it does not exist".to_string()),
                PathState::Unreachable { why } => Some(format!(
                    "the directory holding it cannot be opened without following a symlink ({why})"
                )),
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
        self.release_target_for(path, &|_| true)
    }

    /// [`Engine::release_target`] among the workspaces `visible` accepts (the others answer
    /// exactly as if they did not exist).
    pub fn release_target_for(
        &self,
        path: &Path,
        visible: &dyn Fn(&WorkspaceEntry) -> bool,
    ) -> Result<WorkspaceEntry> {
        let path = absolute_user_path(path)?;
        self.workspace_by_path(&path)
            .filter(|w| visible(w))
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::WorkspaceNotFound,
                    format!("{} is not a workspace", path.display()),
                )
                .hint("`ws-ckpt list` shows the workspaces")
            })
    }

    /// `ws-ckpt release PATH` of the recorded workspace `ws`: set `state = "absent"` where it
    /// is declared (or declare it so), then apply; the workspace is gone on success.
    pub fn release(
        &mut self,
        ws: &WorkspaceEntry,
        progress: &mut dyn FnMut(&str, &crate::tree::Progress),
    ) -> Result<ReleaseReport> {
        let ws = ws.clone();
        let path = ws.workspace_path.clone();
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
        let explicit = ApplyOptions {
            retry_failed: true,
            ..ApplyOptions::default()
        };
        let report = self.apply(explicit, progress);
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
        self.resolve_workspace_for(spec, &|_| true)
    }

    /// [`Engine::resolve_workspace`] among the workspaces `visible` accepts: the others answer
    /// exactly as if they did not exist (SPEC §7.2).
    pub fn resolve_workspace_for(
        &self,
        spec: &str,
        visible: &dyn Fn(&WorkspaceEntry) -> bool,
    ) -> Result<WorkspaceEntry> {
        let state = self.store.p.state.as_ref();
        if let Some(w) = state.and_then(|s| s.workspace(spec)).filter(|w| visible(w)) {
            return Ok(w.clone());
        }
        if crate::ids::is_valid_ws_id(spec) && spec.starts_with("ws-") {
            return Err(Error::new(
                ErrorCode::WorkspaceNotFound,
                format!("no workspace with ID {spec}"),
            )
            .hint("`ws-ckpt list` shows the workspaces and their IDs"));
        }
        let path = absolute_user_path(Path::new(spec))?;
        state
            .and_then(|s| s.workspace_by_path(&path))
            .filter(|w| visible(w))
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::WorkspaceNotFound,
                    format!("{} is not a workspace", path.display()),
                )
                .hint(format!(
                    "`ws-ckpt init {}` makes it one; `ws-ckpt list` shows the workspaces",
                    path.display()
                ))
            })
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
