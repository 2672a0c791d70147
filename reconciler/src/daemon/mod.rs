//! `ws-ckpt daemon` (SPEC §7.1): takes the lock, runs a first full pass (crash recovery
//! included), serves the socket, and runs the watch-and-reconcile loop until SIGTERM/SIGINT.
//!
//! Threads and one channel, no async runtime: watches, the mount table, signals and the
//! periodic timer only send "reconcile now" ([`watch::Event`]); ONE loop debounces them and
//! runs a full, level-triggered pass under the engine mutex. Requests take the same mutex.
//! This module must not plan or change the system itself: it calls the engine. `--check`
//! only plans and prints; it never takes or changes the lock.

pub mod notify;
pub mod server;
pub mod watch;

use crate::api::{Caller, Request};
use crate::config::Config;
use crate::engine::{ApplyOptions, ApplyReport, Engine};
use crate::error::{Error, ErrorCode};
use crate::handler::Session;
use crate::ipc;
use crate::plan::{PlanOptions, Severity};
use crate::status::DaemonInfo;
use crate::sys::linux::LinuxSys;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use watch::{Event, WatchSet, Watches};

/// Quiet time that ends a burst of triggers before the pass runs.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// Longest a continuous stream of triggers can delay a pass.
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(2);
/// How long a stop waits for in-flight requests.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `STATUS=` line sent to systemd.
const STATUS_MAX: usize = 200;
/// Client timeout of `daemon --check` when it asks a running daemon.
const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// An engine-level error (config, lock, state, system), with its hint.
    #[error("{}{}", .0.message, .0.hint.as_ref().map(|h| format!("\n  hint: {h}")).unwrap_or_default())]
    Engine(Error),
    /// The socket could not be set up.
    #[error(transparent)]
    Server(#[from] server::ServerError),
    /// A trigger could not be set up.
    #[error(transparent)]
    Watch(#[from] watch::WatchError),
}

impl From<Error> for DaemonError {
    fn from(e: Error) -> Self {
        DaemonError::Engine(e)
    }
}

/// `ws-ckpt daemon`: returns the process exit code. `check` = `daemon --check` (one planning
/// pass, print findings, exit 1 on blocking findings, 0 otherwise; takes no lock-changing
/// action).
pub fn run(config_path: &Path, check: bool) -> i32 {
    if check {
        return run_check(config_path);
    }
    match serve(config_path) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "ws-ckpt daemon cannot start");
            eprintln!("ws-ckpt daemon: {e}");
            1
        }
    }
}

/// State shared by the loop, the accept thread and connection threads.
struct Shared {
    /// `None` once stopped.
    engine: Mutex<Option<Engine>>,
    watches: Mutex<Option<Watches>>,
    started: Instant,
    last_pass: Mutex<Option<String>>,
    config_error: Mutex<Option<String>>,
    last_findings: Mutex<Vec<String>>,
    stopping: Arc<AtomicBool>,
    /// Requests being handled right now.
    busy: AtomicUsize,
    tx: Mutex<Sender<Event>>,
    /// One lock per workspace: operations on a workspace are serialized, different
    /// workspaces proceed in parallel. Order: a workspace lock, then the engine lock.
    ws_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicked request must not take the daemon down; the persisted state is the truth.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct BusyGuard<'a>(&'a AtomicUsize);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn shutting_down() -> Error {
    Error::new(ErrorCode::Busy, "the ws-ckpt daemon is shutting down")
        .hint("retry when it is back (systemctl status ws-ckpt)")
}

impl Shared {
    fn new(engine: Engine, tx: Sender<Event>) -> Arc<Shared> {
        Arc::new(Shared {
            engine: Mutex::new(Some(engine)),
            watches: Mutex::new(None),
            started: Instant::now(),
            last_pass: Mutex::new(None),
            config_error: Mutex::new(None),
            last_findings: Mutex::new(Vec::new()),
            stopping: Arc::new(AtomicBool::new(false)),
            busy: AtomicUsize::new(0),
            tx: Mutex::new(tx),
            ws_locks: Mutex::new(HashMap::new()),
        })
    }

    fn ws_lock(&self, ws_id: &str) -> Arc<Mutex<()>> {
        Arc::clone(lock(&self.ws_locks).entry(ws_id.to_string()).or_default())
    }

    fn tick(&self, why: &'static str) {
        let _ = lock(&self.tx).send(Event::Tick(why));
    }

    /// One request from a connection: the common request path, while this daemon runs.
    fn handle(&self, caller: &Caller, req: Request) -> Result<Value, Error> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        let _busy = BusyGuard(&self.busy);
        if self.stopping.load(Ordering::SeqCst) {
            return Err(shutting_down());
        }
        let is_reload = matches!(req, Request::Reload);
        let result = crate::handler::handle(self, caller, req, &mut |_, _| {});
        if is_reload {
            self.tick("reload request");
        }
        result
    }

    /// Re-read the config; keep the last good one when it fails (reported, never partially
    /// applied).
    fn refresh_config(&self, engine: &mut Engine) {
        let path = engine.config.config_path.clone();
        let result = Config::load(&path).map_err(|e| e.to_string()).and_then(|c| {
            let old = &engine.config.daemon;
            if c.daemon.state_dir != old.state_dir || c.daemon.runtime_dir != old.runtime_dir {
                Err(format!(
                    "[daemon] state_dir or runtime_dir changed (now {} and {}); restart the daemon to use them",
                    c.daemon.state_dir.display(),
                    c.daemon.runtime_dir.display()
                ))
            } else {
                Ok(c)
            }
        });
        let mut err = lock(&self.config_error);
        match result {
            Ok(c) => {
                if err.take().is_some() {
                    tracing::info!(config = %path.display(), "config is valid again");
                }
                if c != engine.config {
                    tracing::info!(config = %path.display(), files = c.files.len(), workspaces = c.workspaces.len(), "config changed");
                    engine.config = c;
                }
            }
            Err(e) => {
                if err.as_deref() != Some(e.as_str()) {
                    tracing::error!(config = %path.display(), error = %e, "config rejected; still running on the last good config");
                }
                *err = Some(e);
            }
        }
    }

    fn refresh_watches(&self, engine: &Engine) {
        if let Some(w) = lock(&self.watches).as_mut() {
            w.update(watch_set(engine));
        }
    }

    /// One full pass. Returns the reconcile interval now in force.
    fn pass(&self, why: &str) -> Duration {
        let start = Instant::now();
        let mut guard = lock(&self.engine);
        let Some(engine) = guard.as_mut() else {
            return Duration::ZERO;
        };
        self.refresh_config(engine);
        let report = engine.apply(ApplyOptions::default(), &mut |_, _| {});
        let workspaces = engine
            .store
            .p
            .state
            .as_ref()
            .map_or(0, |s| s.workspaces.len());
        self.refresh_watches(engine);
        let interval = engine.config.daemon.reconcile_interval;
        drop(guard);
        *lock(&self.last_pass) = Some(crate::time::now_rfc3339());
        self.log_report(why, &report, start.elapsed());
        let summary = summarize(&report, workspaces, lock(&self.config_error).as_deref());
        if let Err(e) = notify::sd_notify(&format!(
            "STATUS={}",
            notify::one_line(&summary, STATUS_MAX)
        )) {
            tracing::warn!(error = %e, "cannot send status to systemd");
        }
        interval
    }

    fn log_report(&self, why: &str, report: &ApplyReport, took: Duration) {
        let done = report.actions.iter().filter(|a| a.result == "done").count();
        let failed = report
            .actions
            .iter()
            .filter(|a| a.result == "failed")
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

/// The daemon's side of the request path: one engine behind a mutex (the host-wide critical
/// section), one lock per workspace (taken before the engine, never while holding it).
impl Session for Shared {
    fn with_engine<R>(&self, f: impl FnOnce(&mut Engine) -> R) -> Result<R, Error> {
        let mut guard = lock(&self.engine);
        let engine = guard.as_mut().ok_or_else(shutting_down)?;
        Ok(f(engine))
    }

    fn in_workspace<R>(&self, ws_id: &str, f: impl FnOnce() -> R) -> R {
        let ws_lock = self.ws_lock(ws_id);
        let _held = lock(&ws_lock);
        f()
    }

    fn daemon_info(&self) -> Option<DaemonInfo> {
        Some(DaemonInfo {
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            last_pass: lock(&self.last_pass).clone(),
            config_error: lock(&self.config_error).clone(),
        })
    }

    fn after_mutation(&self, engine: &Engine) {
        // New workspaces bring new snapshot directories to watch.
        self.refresh_watches(engine);
    }
}

/// One line of health for `STATUS=`.
pub fn summarize(report: &ApplyReport, workspaces: usize, config_error: Option<&str>) -> String {
    let failed = report
        .actions
        .iter()
        .filter(|a| a.result == "failed")
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

/// What to watch for this engine's config and state.
fn watch_set(engine: &Engine) -> WatchSet {
    let cfg = &engine.config;
    let mut set = WatchSet {
        config_file: cfg.config_path.clone(),
        dropin_dir: cfg.dropin_dir.clone(),
        ..Default::default()
    };
    if let Some(state) = engine.store.p.state.as_ref() {
        let root = &state.paths.snapshots_root;
        set.snapshot_dirs.insert(root.clone());
        for w in &state.workspaces {
            set.snapshot_dirs.insert(root.join(&w.ws_id));
        }
        set.image = state.paths.loop_img.as_ref().map(|l| l.img_path.clone());
    }
    if set.image.is_none() && cfg.backend.kind != crate::config::BackendKind::BtrfsBase {
        set.image = Some(cfg.backend.btrfs_loop.image.clone());
    }
    set
}

fn open_engine(config: Config) -> Result<Engine, Error> {
    let state_dir = config.daemon.state_dir.clone();
    let sys = LinuxSys::new()?;
    Engine::open(config, Arc::new(sys), "daemon", Duration::ZERO).map_err(|e| {
        if e.code != ErrorCode::Locked {
            return e;
        }
        let lock_path = state_dir.join(crate::lock::LOCK_FILE);
        let content = std::fs::read_to_string(&lock_path).unwrap_or_default();
        let mut words = content.split_whitespace();
        let pid = words.next().unwrap_or("unknown").to_string();
        match words.next() {
            Some("daemon") | None => Error::new(ErrorCode::Locked, format!("another ws-ckpt daemon (pid {pid}) is running (it holds {})", lock_path.display()))
                .hint("stop it first (systemctl stop ws-ckpt), or use it: commands talk to the running daemon"),
            Some(role) => Error::new(ErrorCode::Locked, format!("another ws-ckpt process (pid {pid}, {role}) holds {}", lock_path.display()))
                .hint("wait for that command to finish, then start the daemon again"),
        }
    })
}

fn serve(config_path: &Path) -> Result<i32, DaemonError> {
    let config = Config::load(config_path).map_err(Error::from)?;
    tracing::info!(
        config = %config_path.display(),
        state_dir = %config.daemon.state_dir.display(),
        log_level = %config.daemon.log_level,
        "ws-ckpt daemon starting"
    );
    let runtime_dir = config.daemon.runtime_dir.clone();
    let engine = open_engine(config)?;
    if engine.unclean_detected {
        tracing::error!(
            state_dir = %engine.state_dir().display(),
            "the previous ws-ckpt run did not stop cleanly (crash, kill -9 or power loss); recorded in state.json, crash recovery runs in the first pass"
        );
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let shared = Shared::new(engine, tx.clone());
    // Signals first: a SIGTERM during the first pass waits in the channel.
    if let Err(e) = watch::spawn_signal_thread(tx.clone()) {
        close_engine(&shared);
        return Err(e.into());
    }
    let mut interval = shared.pass("startup");
    let (listener, socket) = match server::bind(&runtime_dir) {
        Ok(x) => x,
        Err(e) => {
            close_engine(&shared);
            return Err(e.into());
        }
    };
    let handler_shared = Arc::clone(&shared);
    let handler: Arc<server::Handler> =
        Arc::new(move |caller: &Caller, req: Request| handler_shared.handle(caller, req));
    let stopping = Arc::clone(&shared.stopping);
    let accept = std::thread::Builder::new()
        .name("ws-ckpt-accept".into())
        .spawn(move || server::accept_loop(listener, stopping, handler));
    let accept = match accept {
        Ok(h) => h,
        Err(source) => {
            close_engine(&shared);
            let _ = std::fs::remove_file(&socket);
            return Err(watch::WatchError::Thread {
                name: "accept",
                source,
            }
            .into());
        }
    };
    match Watches::new(tx.clone()) {
        Ok(w) => {
            *lock(&shared.watches) = Some(w);
            if let Some(engine) = lock(&shared.engine).as_ref() {
                shared.refresh_watches(engine);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "no filesystem watches; changes are seen at the next periodic pass")
        }
    }
    if let Err(e) = watch::spawn_mount_watcher(tx.clone()) {
        tracing::warn!(error = %e, "no mount-table watch; mount changes are seen at the next periodic pass");
    }
    if let Err(e) = notify::sd_notify(&format!("READY=1\nMAINPID={}", std::process::id())) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
    tracing::info!(socket = %socket.display(), pid = std::process::id(), "ws-ckpt daemon ready");
    drop(tx);

    let mut next = next_deadline(interval);
    while let Some(why) = wait_for_trigger(&rx, next) {
        interval = shared.pass(why);
        next = next_deadline(interval);
    }
    Ok(stop(&shared, &socket, accept))
}

fn next_deadline(interval: Duration) -> Option<Instant> {
    (!interval.is_zero()).then(|| Instant::now() + interval)
}

/// Block until something asks for a pass (then swallow the burst that follows), or until a
/// stop is requested (`None`). With no interval the loop sleeps until an event.
fn wait_for_trigger(rx: &Receiver<Event>, deadline: Option<Instant>) -> Option<&'static str> {
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

fn close_engine(shared: &Shared) {
    let engine = lock(&shared.engine).take();
    if let Some(engine) = engine {
        close(engine);
    }
}

/// Record the clean stop (unless the state must not be written) and release the lock.
fn close(mut engine: Engine) {
    if engine.store.p.problem.is_none() {
        if let Some(s) = engine.store.p.state.as_mut() {
            s.last_clean_stop = Some(crate::time::now_rfc3339());
            if let Err(e) = engine.store.save() {
                tracing::warn!(error = %e, "cannot record the clean stop in state.json");
            }
        }
    }
    engine.close();
}

/// Graceful stop: no new connections, in-flight requests finish (bounded), the engine closes
/// (the lock file goes, so the next start reports no crash), the socket is removed.
fn stop(shared: &Shared, socket: &Path, accept: std::thread::JoinHandle<()>) -> i32 {
    tracing::info!("stopping: no new requests");
    let _ = notify::sd_notify("STOPPING=1");
    shared.stopping.store(true, Ordering::SeqCst);
    // Wake the accept thread so that it sees the flag, then remove the socket.
    let _ = std::os::unix::net::UnixStream::connect(socket);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while !accept.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    remove_socket(socket);
    while shared.busy.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    loop {
        let engine = match shared.engine.try_lock() {
            Ok(mut g) => g.take(),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().take(),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(std::sync::TryLockError::WouldBlock) => {
                tracing::error!(
                    timeout_secs = STOP_TIMEOUT.as_secs(),
                    "a request is still running; exiting without a clean stop (the next start runs crash recovery)"
                );
                return 1;
            }
        };
        if let Some(engine) = engine {
            close(engine);
        }
        tracing::info!("ws-ckpt daemon stopped cleanly");
        return 0;
    }
}

fn remove_socket(socket: &Path) {
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(socket = %socket.display(), error = %e, "cannot remove the socket")
        }
    }
}

/// `daemon --check`: plan once (through a running daemon if one answers, else in-process
/// without taking the lock), print actions and findings. Exit 1 on blocking findings or when
/// no plan could be made, else 0.
fn run_check(config_path: &Path) -> i32 {
    let plan = match check_plan(config_path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}", e.message);
            if let Some(h) = &e.hint {
                eprintln!("  hint: {h}");
            }
            return 1;
        }
    };
    let (text, code) = render_check(&plan);
    print!("{text}");
    code
}

fn check_plan(config_path: &Path) -> Result<Value, Error> {
    let config = Config::load(config_path)?;
    let socket = ipc::socket_path(&config);
    if ipc::daemon_running(&socket) {
        return ipc::call(&socket, &Request::Plan { prune: false }, CHECK_TIMEOUT);
    }
    let sys = LinuxSys::new()?;
    let store = crate::store::Store::load(&config.daemon.state_dir, SystemTime::now())?;
    let (obs, res) = crate::observe::observe(&sys, &config, &store.p);
    let p = crate::plan::plan(
        &config,
        &store.p,
        &obs,
        &res,
        PlanOptions::default(),
        SystemTime::now(),
    );
    serde_json::to_value(&p)
        .map_err(|e| Error::new(ErrorCode::Io, format!("cannot encode the plan: {e}")))
}

/// Text of `daemon --check` for a plan (as JSON) and its exit code.
pub fn render_check(plan: &Value) -> (String, i32) {
    let empty = Vec::new();
    let actions = plan
        .get("actions")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let findings = plan
        .get("findings")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mut out = String::new();
    if actions.is_empty() {
        out.push_str("in sync: the daemon would change nothing\n");
    } else {
        out.push_str(&format!(
            "{} action(s) the daemon would take:\n",
            actions.len()
        ));
        for a in actions {
            let ws = a
                .get("ws_id")
                .and_then(Value::as_str)
                .map(|w| format!(" {w}"))
                .unwrap_or_default();
            out.push_str(&format!("  {}{ws}\n", s(a, "action")));
        }
    }
    let mut blocked = false;
    for f in findings {
        let kind = s(f, "kind");
        blocked |= matches!(kind.as_str(), "backend-conflict" | "newer-state-version");
        let sev = match s(f, "severity").as_str() {
            "error" => "ERROR".to_string(),
            other => other.to_string(),
        };
        out.push_str(&format!("{sev} [{kind}] {}\n", s(f, "message")));
        let hint = s(f, "hint");
        if !hint.is_empty() {
            out.push_str(&format!("    fix: {hint}\n"));
        }
    }
    if blocked {
        out.push_str("blocked: the daemon would refuse every change until this is fixed\n");
    }
    (out, i32::from(blocked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_burst_of_ticks_is_one_pass_and_shutdown_wins() {
        let (tx, rx) = mpsc::channel();
        for _ in 0..20 {
            tx.send(Event::Tick("x")).unwrap();
        }
        let t = Instant::now();
        assert_eq!(wait_for_trigger(&rx, None), Some("x"));
        assert!(t.elapsed() >= DEBOUNCE, "waits for the burst to end");
        assert!(rx.try_recv().is_err(), "the burst was swallowed");
        tx.send(Event::Tick("x")).unwrap();
        tx.send(Event::Reload).unwrap();
        assert_eq!(wait_for_trigger(&rx, None), Some("SIGHUP"));
        tx.send(Event::Tick("x")).unwrap();
        tx.send(Event::Shutdown).unwrap();
        assert_eq!(wait_for_trigger(&rx, None), None);
    }

    #[test]
    fn the_interval_fires_when_idle_and_endless_ticks_are_bounded() {
        let (tx, rx) = mpsc::channel::<Event>();
        let t = Instant::now();
        assert_eq!(
            wait_for_trigger(&rx, Some(Instant::now() + Duration::from_millis(50))),
            Some("interval")
        );
        assert!(t.elapsed() < Duration::from_secs(2));
        let feeder = std::thread::spawn(move || {
            for _ in 0..200 {
                if tx.send(Event::Tick("storm")).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let t = Instant::now();
        assert_eq!(wait_for_trigger(&rx, None), Some("storm"));
        assert!(
            t.elapsed() < MAX_DEBOUNCE + Duration::from_secs(1),
            "a storm must not starve passes"
        );
        drop(rx);
        feeder.join().unwrap();
    }

    fn finding(kind: &str, sev: &str) -> Value {
        serde_json::json!({"kind": kind, "severity": sev, "message": format!("{kind} happened"), "hint": format!("fix {kind}")})
    }

    #[test]
    fn check_output_exits_1_only_when_blocked_and_prints_the_fix() {
        let plan = serde_json::json!({"actions": [{"action": "mark-missing", "ws_id": "ws-abcdef"}], "findings": [finding("backend-conflict", "error")]});
        let (text, code) = render_check(&plan);
        assert_eq!(code, 1);
        assert!(text.contains("mark-missing ws-abcdef"), "{text}");
        assert!(
            text.contains("ERROR [backend-conflict] backend-conflict happened"),
            "{text}"
        );
        assert!(text.contains("fix: fix backend-conflict"), "{text}");
        let (text, code) = render_check(
            &serde_json::json!({"actions": [], "findings": [finding("storage-unavailable", "error")]}),
        );
        assert_eq!(code, 0, "{text}");
        let (text, code) = render_check(&serde_json::json!({"actions": [], "findings": []}));
        assert_eq!(
            (text.as_str(), code),
            ("in sync: the daemon would change nothing\n", 0)
        );
    }

    fn fake_engine(dir: &Path) -> Engine {
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        let d = dir.display();
        std::fs::write(
            etc.join("config.toml"),
            format!("[daemon]\nstate_dir = \"{d}/state\"\nruntime_dir = \"{d}/run\"\n[backend]\ntype = \"btrfs-loop\"\n[backend.btrfs-loop]\nimage = \"{d}/state/img\"\nmount = \"{d}/mnt\"\n"),
        )
        .unwrap();
        let config = Config::load(&etc.join("config.toml")).unwrap();
        Engine::open(
            config,
            Arc::new(crate::sys::fake::FakeSys::new()),
            "daemon",
            Duration::ZERO,
        )
        .unwrap()
    }

    #[test]
    fn status_over_the_socket_describes_this_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let shared = Shared::new(fake_engine(dir.path()), tx);
        shared.pass("test");
        let v = shared
            .handle(&Caller::this_process(), Request::Status { workspace: None })
            .unwrap();
        let d = &v["daemon"];
        assert_eq!(d["running"], true, "{v}");
        assert_eq!(d["pid"], std::process::id());
        assert!(d["uptime_secs"].is_u64());
        assert!(d["last_pass"].is_string(), "{v}");
        assert!(d.get("config_error").is_none());
        // A broken config: kept running on the last good one, reported in status.
        std::fs::create_dir_all(dir.path().join("etc/config.d")).unwrap();
        std::fs::write(
            dir.path().join("etc/config.d/90-bad.toml"),
            "[daemon]\nbogus_key = 1\n",
        )
        .unwrap();
        shared.pass("test");
        let v = shared
            .handle(&Caller::this_process(), Request::Status { workspace: None })
            .unwrap();
        let err = v["daemon"]["config_error"].as_str().unwrap_or_default();
        assert!(err.contains("bogus_key"), "{v}");
        assert_ne!(v["health"], "healthy");
        assert_eq!(
            lock(&shared.engine)
                .as_ref()
                .unwrap()
                .config
                .daemon
                .state_dir,
            dir.path().join("state")
        );
        // Reload requests tick the loop.
        let _ = shared.handle(&Caller::this_process(), Request::Reload);
        assert_eq!(rx.try_recv().unwrap(), Event::Tick("reload request"));
    }

    #[test]
    fn stop_releases_the_lock_and_refuses_later_requests() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = mpsc::channel();
        let shared = Shared::new(fake_engine(dir.path()), tx);
        let lock_file = dir.path().join("state").join(crate::lock::LOCK_FILE);
        assert!(lock_file.exists());
        let (listener, socket) = server::bind(&dir.path().join("run")).unwrap();
        let stopping = Arc::clone(&shared.stopping);
        let h: Arc<server::Handler> = Arc::new(|_: &Caller, _: Request| Ok(Value::Null));
        let accept = std::thread::spawn(move || server::accept_loop(listener, stopping, h));
        assert_eq!(stop(&shared, &socket, accept), 0);
        assert!(!lock_file.exists(), "clean stop removes the lock file");
        assert!(!socket.exists(), "clean stop removes the socket");
        let e = shared
            .handle(&Caller::this_process(), Request::Status { workspace: None })
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Busy);
    }

    #[test]
    fn second_daemon_is_refused_naming_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = fake_engine(dir.path());
        let e = match open_engine(first.config.clone()) {
            Err(e) => e,
            Ok(_) => panic!("second engine opened while the first holds the lock"),
        };
        assert!(
            e.message.contains(&format!(
                "another ws-ckpt daemon (pid {}) is running",
                std::process::id()
            )),
            "{}",
            e.message
        );
        first.close();
    }

    #[test]
    fn summary_is_one_line_with_the_worst_news_first() {
        let r = ApplyReport {
            changed: false,
            actions: vec![],
            findings: vec![],
        };
        assert_eq!(summarize(&r, 3, None), "ok: 3 workspace(s)");
        assert_eq!(
            summarize(&r, 0, Some("x.toml:1:1: bad")),
            "ok: 0 workspace(s); config error: x.toml:1:1: bad"
        );
    }
}
