//! The daemon's shared state (the engine, shared by every thread; the trigger channel; what
//! status reports about the daemon) and its side of the request path.
//!
//! The engine is not behind a daemon-wide lock: it serializes work per workspace itself (see
//! `engine`). The slot holding it is only emptied at shutdown. A panicked request never takes
//! the daemon down (poisoned locks are taken over).

use super::watch::{Event, WatchSet, Watches};
use crate::api::{Caller, Reply, Request};
use crate::engine::Engine;
use crate::error::{Error, ErrorCode};
use crate::handler::Session;
use crate::status::DaemonInfo;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

/// State shared by the loop, the accept thread and connection threads.
pub(super) struct Shared {
    /// `None` once stopped.
    pub(super) engine: RwLock<Option<Arc<Engine>>>,
    pub(super) watches: Mutex<Option<Watches>>,
    pub(super) started: Instant,
    pub(super) last_pass: Mutex<Option<String>>,
    pub(super) config_error: Mutex<Option<String>>,
    pub(super) last_findings: Mutex<Vec<String>>,
    pub(super) stopping: Arc<AtomicBool>,
    /// Requests being handled right now.
    pub(super) busy: AtomicUsize,
    pub(super) tx: Mutex<Sender<Event>>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicked request must not take the daemon down; the persisted state is the truth.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) struct BusyGuard<'a>(&'a AtomicUsize);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) fn shutting_down() -> Error {
    Error::new(ErrorCode::Busy, crate::ipc::SHUTTING_DOWN)
        .hint("retry when it is back (systemctl status ws-ckpt)")
}

impl Shared {
    pub(super) fn new(engine: Engine, tx: Sender<Event>) -> Arc<Shared> {
        Arc::new(Shared {
            engine: RwLock::new(Some(Arc::new(engine))),
            watches: Mutex::new(None),
            started: Instant::now(),
            last_pass: Mutex::new(None),
            config_error: Mutex::new(None),
            last_findings: Mutex::new(Vec::new()),
            stopping: Arc::new(AtomicBool::new(false)),
            busy: AtomicUsize::new(0),
            tx: Mutex::new(tx),
        })
    }

    /// The engine, while the daemon runs.
    pub(super) fn engine(&self) -> Option<Arc<Engine>> {
        self.engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Take the engine out (shutdown); requests that still hold it finish with it.
    pub(super) fn take_engine(&self) -> Option<Arc<Engine>> {
        self.engine
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub(super) fn tick(&self, why: &'static str) {
        let _ = lock(&self.tx).send(Event::Tick(why));
    }

    /// One request from a connection: the common request path, while this daemon runs.
    pub(super) fn handle(&self, caller: &Caller, req: Request) -> Result<Reply, Error> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        let _busy = BusyGuard(&self.busy);
        if self.stopping.load(Ordering::SeqCst) {
            return Err(shutting_down());
        }
        let is_reload = matches!(req, Request::Reload);
        let result = crate::handler::handle_reply(self, caller, req, &mut |_, _| {});
        self.finish_owed_after_answer();
        if is_reload {
            self.tick("reload request");
        }
        result
    }

    /// A request left the last step of its operation for after its answer (a rollback's
    /// commit): run it on a thread of its own, which waits for the workspace's lock and so
    /// starts as the answer is sent. Anything else on that workspace runs the step first.
    fn finish_owed_after_answer(&self) {
        let Some(engine) = self.engine() else {
            return;
        };
        if !engine.has_owed() {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("ws-ckpt-finish".into())
            .spawn(move || engine.finish_owed_all());
        if let Err(e) = spawned {
            // The next request on the workspace, pass or plan runs it instead.
            tracing::warn!(error = %e, "cannot start a thread for an answered rollback's last commit");
        }
    }

    /// Re-read the config; keep the last good one when it fails (reported, never partially
    /// applied).
    pub(super) fn refresh_config(&self, engine: &Engine) {
        let current = engine.config();
        let path = current.config_path.clone();
        // `reload` keeps the daemon's command-line settings (--mount-path, --socket, …).
        let result = current.reload().map_err(|e| e.to_string()).and_then(|c| {
            let old = &current.daemon;
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
                if c != *current {
                    tracing::info!(config = %path.display(), files = c.files.len(), workspaces = c.workspaces.len(), "config changed");
                    engine.set_config(c);
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

    pub(super) fn refresh_watches(&self, engine: &Engine) {
        if let Some(w) = lock(&self.watches).as_mut() {
            w.update(watch_set(engine));
        }
    }
}

/// The daemon's side of the request path: the shared engine, held by nothing host-wide.
impl Session for Shared {
    fn with_engine<R>(&self, f: impl FnOnce(&Engine) -> R) -> Result<R, Error> {
        let engine = self.engine().ok_or_else(shutting_down)?;
        Ok(f(&engine))
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
        // New workspaces bring new snapshot directories to watch. Most requests (a
        // checkpoint, a rollback) change none: then no stat of every watched directory before
        // the reply (a directory replaced meanwhile is re-watched by the pass its removal
        // triggers).
        let want = watch_set(engine);
        if let Some(w) = lock(&self.watches).as_mut() {
            if !w.has_set(&want) {
                w.update(want);
            }
        }
    }
}

/// What to watch for this engine's config and state.
fn watch_set(engine: &Engine) -> WatchSet {
    let cfg = engine.config();
    let mut set = WatchSet {
        config_file: cfg.config_path.clone(),
        dropin_dir: cfg.dropin_dir.clone(),
        ..Default::default()
    };
    if let Some(state) = engine.store.read().state.as_ref() {
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
