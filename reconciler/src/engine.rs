//! The engine: one object that holds the lock, the config, the persisted state and the system
//! handle, and offers every operation (apply, plan, status, init, release, …) as
//! request-in/result-out functions. The CLI and the daemon both call it.
//!
//! It is shared between threads (every method takes `&self`): the daemon serves requests on
//! it in parallel. Work on one workspace is serialized by that workspace's lock
//! ([`Engine::in_workspace`]); work that concerns no workspace by the host lock
//! ([`Engine::in_host`]); the persisted state by the store's own short critical section. A
//! pass runs the host actions first, then each workspace's actions under its lock, one
//! workspace at a time, re-planning a workspace whose state changed since the plan.
//!
//! It sequences observe → plan → execute; it contains no planning rules itself.

use crate::config::{edit, Config, DeclState};
use crate::error::{Error, ErrorCode, Result};
use crate::execute::{ActionOutcome, Executor, Outcome};
use crate::finding::{Finding, FindingKind, Severity};
use crate::lock::DaemonLock;
use crate::locks::{relock, ReentrantLock, WorkspaceLocks};
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
use std::sync::{Arc, Mutex, RwLock};
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
    /// Only the host actions and those of the workspace at this path (init and release act
    /// on their own workspace; the others are left to their own requests and passes).
    pub only: Option<PathBuf>,
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

/// The engine (shared: see the module documentation).
pub struct Engine {
    /// Effective config; replaced as a whole on reload.
    config: RwLock<Arc<Config>>,
    sys: Arc<dyn Sys>,
    /// Persisted state (its own short critical section).
    pub store: Store,
    workspaces: WorkspaceLocks,
    host: ReentrantLock,
    lock: Mutex<Option<DaemonLock>>,
    /// The previous holder of the lock did not stop cleanly.
    pub unclean_detected: bool,
    /// Answer a rollback before its last commit ([`Engine::set_defer_finishing`]).
    defer_finishing: std::sync::atomic::AtomicBool,
    /// The last step of operations answered already, by workspace: run under the
    /// workspace's lock before anything else runs on it.
    owed: Mutex<std::collections::BTreeMap<String, OwedFinish>>,
    /// Checkpoints answered before their journal line was durable, their records still on
    /// their snapshot directories (the daemon; see [`crate::settle`]).
    pub(crate) unsettled: Arc<crate::settle::Unsettled>,
    /// Answer checkpoints before their journal line is durable ([`Engine::set_settle_later`]).
    settle_later: std::sync::atomic::AtomicBool,
    /// The host observation operations resolve their storage from (reused by the daemon).
    host_cache: crate::host_cache::HostCache,
}

/// The last step of a rollback that was answered already: commit the deletion of the old
/// state, then end the record.
#[derive(Debug, Clone)]
pub struct OwedFinish {
    /// The operation.
    pub op_id: String,
    /// The btrfs mount to commit.
    pub mount: PathBuf,
}

/// The path an action is about, when it names one.
fn action_path(a: &Action) -> Option<&Path> {
    match a {
        Action::InitWorkspace { path, .. }
        | Action::AdoptWorkspace { path, .. }
        | Action::RepairSymlink { path, .. }
        | Action::ReleaseWorkspace { path, .. } => Some(path),
        _ => None,
    }
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
        let engine = Engine {
            unclean_detected: lock.previous_unclean,
            config: RwLock::new(Arc::new(config)),
            sys,
            store,
            workspaces: WorkspaceLocks::default(),
            host: ReentrantLock::default(),
            defer_finishing: Default::default(),
            owed: Default::default(),
            unsettled: Default::default(),
            settle_later: Default::default(),
            host_cache: Default::default(),
            lock: Mutex::new(Some(lock)),
        };
        if engine.store.has_unsettled() {
            // A checkpoint whose process stopped after its record: kept when its snapshot is
            // there (resolving the storage settles it), else withdrawn.
            let _ = engine.light_resolution();
        }
        if engine.unclean_detected {
            tracing::warn!(
                lock = %engine.state_dir().join(crate::lock::LOCK_FILE).display(),
                "the previous ws-ckpt process did not stop cleanly; running crash recovery"
            );
            if engine.store.read().problem.is_none() {
                engine.store.update_state(|s| {
                    if let Some(s) = s.as_mut() {
                        s.last_unclean_shutdown = Some(crate::time::now_rfc3339());
                    }
                })?;
            }
        }
        Ok(engine)
    }

    /// Open for a command that only reads (`status`, `plan`, `list`, `apply --check`) while
    /// the state directory does not exist: nothing is recorded yet, so there is nothing to
    /// lock, and nothing is created (check modes leave no trace; SPEC §7.1). `None` when the
    /// state directory exists: such a command takes the lock with [`Engine::open`].
    pub fn open_if_nothing_recorded(config: &Config, sys: Arc<dyn Sys>) -> Result<Option<Engine>> {
        let state_dir = &config.daemon.state_dir;
        match std::fs::symlink_metadata(state_dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("inspect", state_dir, e)),
            Ok(_) => return Ok(None),
        }
        let store = Store::load(state_dir, SystemTime::now())?;
        Ok(Some(Engine {
            unclean_detected: false,
            config: RwLock::new(Arc::new(config.clone())),
            sys,
            store,
            workspaces: WorkspaceLocks::default(),
            host: ReentrantLock::default(),
            defer_finishing: Default::default(),
            owed: Default::default(),
            unsettled: Default::default(),
            settle_later: Default::default(),
            host_cache: Default::default(),
            lock: Mutex::new(None),
        }))
    }

    /// Clean stop: settle the answered checkpoints ([`crate::settle`]), remove the lock
    /// file. (Index journals compact themselves when they grow, so a stop costs nothing per
    /// snapshot.) Further calls do nothing.
    pub fn close(&self) {
        // Checkpoints answered before their line was durable: settled while this process
        // still holds the state directory.
        self.settle_records();
        let lock = self.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(lock) = lock {
            lock.release();
        }
    }

    /// The effective config (a snapshot: a reload replaces it, never changes it in place).
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replace the effective config.
    pub fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }

    /// Run `f` holding workspace `ws_id`: operations and pass steps on one workspace run one
    /// at a time; different workspaces proceed in parallel. Reentrant for this thread.
    pub fn in_workspace<R>(&self, ws_id: &str, f: impl FnOnce() -> R) -> R {
        self.workspaces.run(ws_id, || {
            self.finish_owed_locked(ws_id);
            f()
        })
    }

    /// Answer rollbacks before their last commit, which then runs right after (the daemon:
    /// its connection threads outlive the answer). A command that owns its engine finishes
    /// before it returns.
    pub fn set_defer_finishing(&self, on: bool) {
        self.defer_finishing
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Answer a checkpoint once its snapshot and record are committed, leaving its journal
    /// line's `fdatasync` and the record's removal to the daemon's settle thread (set once
    /// that thread runs; see [`crate::settle`]). A command that owns its engine does both
    /// before it answers.
    pub fn set_settle_later(&self, on: bool) {
        self.settle_later
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn settles_later(&self) -> bool {
        self.settle_later.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Reuse the host observation between requests while the mount table and the config are
    /// unchanged (the daemon; see [`crate::host_cache`]).
    pub fn set_reuse_host_observation(&self, on: bool) {
        self.host_cache.set_enabled(on);
    }

    /// The host observation for `config` (phase 1; reused when allowed, see
    /// [`Engine::set_reuse_host_observation`]).
    pub(crate) fn host_observation(&self, config: &Arc<Config>) -> Arc<crate::model::Observed> {
        self.host_cache
            .get(config, || crate::observe::observe_host(self.sys(), config))
    }

    pub(crate) fn defers_finishing(&self) -> bool {
        self.defer_finishing
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Leave `finish` for after the answer; the caller holds `ws_id`'s lock.
    pub(crate) fn owe_finish(&self, ws_id: &str, finish: OwedFinish) {
        let previous = relock(&self.owed).insert(ws_id.to_string(), finish);
        if let Some(p) = previous {
            // Not expected: each operation on the workspace runs the owed step first.
            self.finish_logged(ws_id, p);
        }
    }

    /// Commit the deletion of the old state, then end the record.
    pub(crate) fn finish(&self, f: OwedFinish) -> Result<()> {
        crate::fault::point("rollback:before-commit");
        self.sys.commit(&f.mount)?;
        crate::fault::point("rollback:after-commit");
        self.store.end(&f.op_id)
    }

    fn finish_logged(&self, ws_id: &str, f: OwedFinish) {
        let op = f.op_id.clone();
        if let Err(e) = self.finish(f) {
            // The record stays: the next pass finishes it (recovery commits, then ends it).
            tracing::warn!(ws_id, op, error = %e.message, "could not finish an answered rollback; the next pass finishes it");
        }
    }

    /// Run the owed step of `ws_id`, if any; the caller holds its lock. The entry goes only
    /// once the step is done: [`Engine::finish_owed_all`] (a status, a plan) that sees it
    /// waits for the lock, so it never looks at the record while the step is under way.
    fn finish_owed_locked(&self, ws_id: &str) {
        let owed = relock(&self.owed).get(ws_id).cloned();
        if let Some(f) = owed {
            self.finish_logged(ws_id, f);
            relock(&self.owed).remove(ws_id);
        }
    }

    /// True when some answered operation still owes its last step.
    pub fn has_owed(&self) -> bool {
        !relock(&self.owed).is_empty()
    }

    /// Run every owed step, each under its workspace's lock (the daemon, right after
    /// answering; passes, plans and shutdown, so that none reports an answered operation as
    /// interrupted).
    pub fn finish_owed_all(&self) {
        let ws: Vec<String> = relock(&self.owed).keys().cloned().collect();
        for w in ws {
            self.in_workspace(&w, || ());
        }
    }

    /// True when some thread holds workspace `ws_id` (diagnostics and tests).
    pub fn workspace_busy(&self, ws_id: &str) -> bool {
        self.workspaces.is_held(ws_id)
    }

    /// Run `f` holding the host lock (steps that concern no single workspace: bootstrap,
    /// image growth and migration, config edits). Never taken while holding a workspace.
    pub fn in_host<R>(&self, f: impl FnOnce() -> R) -> R {
        self.host.run(f)
    }

    /// An executor over this engine's system handle and store, with `config`.
    pub fn executor<'a>(
        &'a self,
        config: &'a Config,
        res: &'a Resolution,
        progress: crate::execute::ProgressFn<'a>,
    ) -> Executor<'a> {
        Executor {
            sys: self.sys.as_ref(),
            config,
            store: &self.store,
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
    pub fn reload_config(&self) -> Result<()> {
        // `reload` keeps the command-line settings (`daemon --mount-path`, `--socket`, …).
        self.set_config(self.config().reload()?);
        Ok(())
    }

    /// Observe the system now (host, then the backend resolved once, then its storage).
    pub fn observe(&self) -> (Observed, Resolution) {
        let persisted = self.store.snapshot();
        observe(self.sys.as_ref(), &self.config(), &persisted)
    }

    /// Plan against a fresh observation.
    pub fn plan(&self, opts: PlanOptions) -> Plan {
        // An answered operation's last step is not an interruption to report.
        self.finish_owed_all();
        let persisted = self.store.snapshot();
        self.plan_from(&self.config(), &persisted, opts)
    }

    fn plan_from(
        &self,
        config: &Config,
        persisted: &crate::model::Persisted,
        opts: PlanOptions,
    ) -> Plan {
        let (obs, res) = observe(self.sys.as_ref(), config, persisted);
        plan(config, persisted, &obs, &res, opts, SystemTime::now())
    }

    /// Converge: repeat observe → plan → execute until nothing is left to do (bounded).
    ///
    /// Each round runs the host actions first (under the host lock), then the actions of each
    /// workspace under that workspace's lock, one workspace at a time. A workspace whose
    /// recorded state changed between the plan and taking its lock (a request ran on it
    /// meanwhile) is planned again first, so no step runs on a stale plan.
    pub fn apply(
        &self,
        opts: ApplyOptions,
        progress: &mut dyn FnMut(&str, &crate::tree::Progress),
    ) -> ApplyReport {
        self.finish_owed_all();
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
        if !opts.check && self.store.has_owed() {
            // A withdrawal or a durable effect kept in memory only (a full state directory):
            // written as soon as there is room (see `store`).
            if let Err(e) = self.store.flush_owed() {
                tracing::warn!(error = %e, "the state directory still cannot be written");
            }
        }
        for round in 0..MAX_ROUNDS {
            if self.store.has_unsettled() {
                // Interrupted checkpoints keep their message, metadata and pin (never adopted
                // bare) once their snapshot is seen.
                if let Ok(res) = self.light_resolution() {
                    self.settle_checkpoints(&res);
                }
            }
            let config = self.config();
            let (persisted, generations) = self.store.snapshot_with_generations();
            let p = self.plan_from(&config, &persisted, popts);
            report.findings = p.findings.clone();
            if round == 0 && !opts.check && !p.findings.iter().any(|f| f.is_blocking()) {
                self.forget_stale_failures(&p);
            }
            let recorded = opts
                .only
                .as_deref()
                .and_then(|path| persisted.state.as_ref()?.workspace_by_path(path))
                .map(|w| w.ws_id.clone());
            let in_scope = |a: &Action| match (&opts.only, a.ws_id()) {
                (None, _) | (_, None) => true,
                (Some(only), Some(ws)) => {
                    action_path(a) == Some(only.as_path()) || recorded.as_deref() == Some(ws)
                }
            };
            let scope: Vec<String> = p
                .actions
                .iter()
                .filter(|a| in_scope(a))
                .filter_map(|a| a.ws_id().map(str::to_string))
                .collect();
            let actions: Vec<Action> = p
                .actions
                .into_iter()
                .filter(|a| a.ws_id().is_none_or(|w| scope.iter().any(|s| s == w)))
                .collect();
            if actions.is_empty() || p.findings.iter().any(|f| f.is_blocking()) {
                break;
            }
            if opts.check {
                report.actions = actions
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
            // Host actions first, then one workspace at a time, in plan order.
            let mut groups: Vec<(Option<String>, Vec<Action>)> = Vec::new();
            for action in actions {
                let ws = action.ws_id().map(str::to_string);
                match groups.iter_mut().find(|(w, _)| *w == ws) {
                    Some((_, list)) => list.push(action),
                    None => groups.push((ws, vec![action])),
                }
            }
            groups.sort_by_key(|(ws, _)| ws.is_some());
            let mut failed = false;
            let mut config_touched = false;
            for (ws, planned) in groups {
                let mut run_group = |planned: Vec<Action>| {
                    let config = self.config();
                    let actions = match &ws {
                        Some(w)
                            if self.store.generation(Some(w))
                                != generations.get(&Some(w.clone())).copied().unwrap_or(0) =>
                        {
                            // Changed since the plan: plan again for this workspace.
                            let fresh = self.plan(popts);
                            if fresh.findings.iter().any(|f| f.is_blocking()) {
                                Vec::new()
                            } else {
                                fresh
                                    .actions
                                    .into_iter()
                                    .filter(|a| a.ws_id() == Some(w.as_str()))
                                    .collect()
                            }
                        }
                        _ => planned,
                    };
                    for action in actions {
                        config_touched |= matches!(
                            action,
                            Action::DeclareMigrated { .. } | Action::MigrateV0Indexes { .. }
                        );
                        let mut executor = self.executor(&config, &res, progress);
                        executor.init_owner = opts.init_owner.as_ref();
                        let result = executor.run(&action);
                        self.note_outcome(&action, result.as_ref().err());
                        report.actions.push(match result {
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
                        });
                    }
                };
                match &ws {
                    Some(w) => self.in_workspace(w, || run_group(planned)),
                    None => self.in_host(|| run_group(planned)),
                }
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
    /// succeeded. A record that cannot be written is not kept (the store puts memory back), so
    /// with a full state directory a failing action is retried on every pass.
    fn note_outcome(&self, action: &Action, error: Option<&Error>) {
        let key = action.failure_key();
        let written = self.store.update_state(|state| {
            let Some(state) = state.as_mut() else {
                return;
            };
            match error {
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
                }
                None => {
                    state.clear_failure(&key);
                }
            }
        });
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not persist the failure record of an action");
        }
    }

    /// Forget failure records of actions a fresh plan no longer has (done meanwhile, or no
    /// longer wanted).
    fn forget_stale_failures(&self, p: &Plan) {
        let live: std::collections::BTreeSet<String> = p
            .actions
            .iter()
            .map(Action::failure_key)
            .chain(p.backing_off.iter().cloned())
            .collect();
        let written = self.store.update_state(|state| {
            if let Some(state) = state.as_mut() {
                state.failures.retain(|f| live.contains(&f.key));
            }
        });
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not persist the removal of stale failure records");
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

    /// `ws-ckpt init PATH`: declare in a drop-in, then apply (the host steps and this
    /// workspace's only); report the workspace. Unless `force`, a directory in which a process
    /// other than `caller` (and this one) has its working directory is refused before anything
    /// changes (as upstream 0.3.3+).
    pub fn init(
        &self,
        path: &Path,
        force: bool,
        caller: &crate::api::Caller,
        progress: &mut dyn FnMut(&str, &crate::tree::Progress),
    ) -> Result<InitReport> {
        // Taken as sent (made absolute, `.`/`..` removed), never resolved again as root: the
        // caller's CLI resolved it as the caller.
        let path = crate::paths::lexical_absolute(path)?;
        let owner = (!caller.is_root()).then_some(caller.uid);
        let cwd_guard = || match force {
            true => Ok(()),
            false => crate::procs::guard_init(&path, caller),
        };
        let declared = self.in_host(|| self.declare_for_init(&path, &cwd_guard))?;
        let (decl_file, newly_declared) = match declared {
            Declared::Already(report) => return Ok(report),
            Declared::In { file, new } => (file, new),
        };
        let opts = || ApplyOptions {
            only: Some(path.clone()),
            retry_failed: true,
            init_owner: owner.map(|uid| (path.clone(), uid)),
            ..Default::default()
        };
        let mut report = self.apply(opts(), progress);
        for _ in 0..3 {
            if self.workspace_by_path(&path).is_some() {
                break;
            }
            // Another pass (a watch trigger, a concurrent request) may be initializing it
            // right now: its pending init is recorded. Wait for that workspace, look again.
            let in_flight = self
                .store
                .read()
                .pending()
                .iter()
                .find_map(|o| match &o.kind {
                    crate::state::PendingKind::Init { path: p, ws_id, .. } if *p == path => {
                        Some(ws_id.clone())
                    }
                    _ => None,
                });
            let Some(ws_id) = in_flight else { break };
            self.in_workspace(&ws_id, || ());
            report = self.apply(opts(), progress);
        }
        match self.workspace_by_path(&path) {
            Some(w) => Ok(InitReport {
                ws_id: w.ws_id,
                path,
                changed: report.changed,
                declared_in: Some(decl_file),
                apply: Some(report),
            }),
            None => {
                let err = self.why_not_ready(&path, &report);
                let interrupted = self.store.read().pending().iter().any(
                    |o| matches!(&o.kind, crate::state::PendingKind::Init { path: p, .. } if *p == path),
                );
                if newly_declared && !interrupted {
                    // Nothing was converted: take the declaration back so the config does not
                    // keep asking for a workspace that cannot be made.
                    self.in_host(|| {
                        if let Err(e) = edit::remove_workspace(&decl_file, &path) {
                            tracing::warn!(file = %decl_file.display(), error = %e, "could not withdraw the declaration");
                        }
                        let _ = self.reload_config();
                    });
                }
                Err(err)
            }
        }
    }

    /// The config side of `init` (under the host lock): already a workspace, or declared now
    /// (in which file, and whether this call added the declaration).
    fn declare_for_init(
        &self,
        path: &Path,
        cwd_guard: &dyn Fn() -> Result<()>,
    ) -> Result<Declared> {
        let config = self.config();
        if let Some(w) = self.workspace_by_path(path) {
            if config
                .workspace(path)
                .is_none_or(|d| d.state == DeclState::Present)
            {
                let declared_in = config.workspace(path).map(|d| d.source.clone());
                return Ok(Declared::Already(InitReport {
                    ws_id: w.ws_id,
                    path: path.to_path_buf(),
                    changed: false,
                    declared_in,
                    apply: None,
                }));
            }
        }
        let (file, new) = match config.workspace(path) {
            Some(d) if d.state == DeclState::Present => {
                cwd_guard()?;
                (d.source.clone(), false)
            }
            Some(d) => {
                cwd_guard()?;
                edit::set_workspace_state(&d.source, path, DeclState::Present)?;
                (d.source.clone(), false)
            }
            None => {
                if let Some(why) = self.quick_guard(path) {
                    return Err(Error::new(
                        ErrorCode::InvalidPath,
                        format!("cannot make a workspace of {}: {why}", path.display()),
                    )
                    .hint("choose a project directory of your own"));
                }
                cwd_guard()?;
                let taken = |id: &str| {
                    self.store
                        .read()
                        .state
                        .as_ref()
                        .is_some_and(|s| s.workspace(id).is_some())
                };
                let ws_id = crate::ids::allocate_ws_id(path, taken);
                (
                    edit::declare_workspace(&config.dropin_dir, &ws_id, path)?.0,
                    true,
                )
            }
        };
        self.reload_config()?;
        Ok(Declared::In { file, new })
    }

    fn quick_guard(&self, path: &Path) -> Option<String> {
        let res = self.plan(PlanOptions::default()).backend?;
        let config = self.config();
        let others: Vec<PathBuf> = self
            .store
            .read()
            .state
            .iter()
            .flat_map(|s| s.workspaces.iter().map(|w| w.workspace_path.clone()))
            .chain(
                config
                    .workspaces
                    .iter()
                    .filter(|w| w.state == DeclState::Present)
                    .map(|w| w.path.clone()),
            )
            .collect();
        let refs: Vec<&Path> = others.iter().map(PathBuf::as_path).collect();
        crate::plan::init_guard(path, &res, &config.daemon.state_dir, &refs).or_else(|| {
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
            .ok_or_else(|| Error::workspace_not_found(&path.display().to_string()))
    }

    /// `ws-ckpt release PATH` of the recorded workspace `ws`: set `state = "absent"` where it
    /// is declared (or declare it so), then apply (the host steps and this workspace's only);
    /// the workspace is gone on success.
    pub fn release(
        &self,
        ws: &WorkspaceEntry,
        progress: &mut dyn FnMut(&str, &crate::tree::Progress),
    ) -> Result<ReleaseReport> {
        let ws = ws.clone();
        let path = ws.workspace_path.clone();
        // A real directory at the path is never overwritten: refuse before declaring anything.
        if let Some(why) = release_blocker(&ws) {
            return Err(Error::new(ErrorCode::WorkspaceDetached, why));
        }
        self.in_host(|| {
            let config = self.config();
            match config.workspace(&path) {
                Some(d) => {
                    edit::set_workspace_state(&d.source, &path, DeclState::Absent)?;
                }
                None => {
                    let (file, _) = edit::declare_workspace(&config.dropin_dir, &ws.ws_id, &path)?;
                    edit::set_workspace_state(&file, &path, DeclState::Absent)?;
                }
            }
            self.reload_config()
        })?;
        let report = self.apply(
            ApplyOptions {
                only: Some(path.clone()),
                retry_failed: true,
                ..Default::default()
            },
            progress,
        );
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
    pub fn workspace_by_path(&self, path: &Path) -> Option<WorkspaceEntry> {
        self.store
            .read()
            .state
            .as_ref()?
            .workspace_by_path(path)
            .cloned()
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
        let by_id = self
            .store
            .read()
            .state
            .as_ref()
            .and_then(|s| s.workspace(spec).cloned())
            .filter(|w| visible(w));
        if let Some(w) = by_id {
            return Ok(w);
        }
        if crate::ids::is_valid_ws_id(spec) && spec.starts_with("ws-") {
            return Err(Error::workspace_not_found(spec));
        }
        let path = absolute_user_path(Path::new(spec))?;
        self.workspace_by_path(&path)
            .filter(|w| visible(w))
            .ok_or_else(|| Error::workspace_not_found(&path.display().to_string()))
    }

    /// `status` from a fresh observation and plan; `daemon` describes the serving daemon.
    pub fn status(&self, daemon: Option<&DaemonInfo>) -> StatusReport {
        self.finish_owed_all();
        let config = self.config();
        let persisted = self.store.snapshot();
        let (obs, res) = observe(self.sys.as_ref(), &config, &persisted);
        let p = plan(
            &config,
            &persisted,
            &obs,
            &res,
            PlanOptions::default(),
            SystemTime::now(),
        );
        crate::status::build(&config, &persisted, &obs, &p, daemon)
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.config().daemon.state_dir.clone()
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

/// What the config side of `init` found or did.
enum Declared {
    /// The path already is a declared, recorded workspace.
    Already(InitReport),
    /// Declared (now or before) in `file`; `new` when this call added it.
    In { file: PathBuf, new: bool },
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
