//! `ws-ckpt daemon` (SPEC §7.1): takes the lock, runs a first full pass (crash recovery
//! included), serves the socket, and runs the watch-and-reconcile loop until SIGTERM/SIGINT.
//!
//! Threads and one channel, no async runtime: watches, the mount table, signals and the
//! periodic timer only send "reconcile now" ([`watch::Event`]); ONE loop debounces them and
//! runs a full, level-triggered pass. Requests and the pass share the engine, which
//! serializes work per workspace (different workspaces proceed in parallel).
//! This module must not plan or change the system itself: it calls the engine. (`daemon
//! --check`, which only plans and never takes the lock, is the client's: `client`.)

mod heap;
pub mod notify;
mod reconcile;
pub mod server;
mod shared;
mod shutdown;
pub mod watch;

use crate::api::{Caller, Request};
use crate::config::Config;
use crate::engine::Engine;
use crate::error::{Error, ErrorCode};
use crate::sys::linux::LinuxSys;
pub use reconcile::summarize;
use reconcile::{next_deadline, wait_for_trigger};
use shared::{lock, Shared};
use shutdown::{close_engine, stop};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use watch::Watches;

/// Quiet time that ends a burst of triggers before the pass runs.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// Longest a continuous stream of triggers can delay a pass.
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(2);
/// How long a stop waits for in-flight requests.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `STATUS=` line sent to systemd.
const STATUS_MAX: usize = 200;

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

/// `ws-ckpt daemon`: returns the process exit code. (`daemon --check` plans without a
/// daemon: see `client::Client::check_plan`.)
pub fn run(config_path: &Path) -> i32 {
    run_with(config_path, crate::config::Overrides::default())
}

/// [`run`] with upstream's command-line settings (`daemon --mount-path M --socket S
/// --log-level L`) applied over the config.
pub fn run_with(config_path: &Path, overrides: crate::config::Overrides) -> i32 {
    match serve(config_path, overrides) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "ws-ckpt daemon cannot start");
            eprintln!("ws-ckpt daemon: {e}");
            1
        }
    }
}

/// How long a starting daemon waits for an in-process command that holds the lock.
pub const COMMAND_WAIT: Duration = Duration::from_secs(120);

/// Take the lock and open the engine. Held by another daemon → refuse to start, naming its
/// pid. Held by an in-process command (or by a holder that has not written its name yet) →
/// wait for it (at most [`COMMAND_WAIT`]) instead of refusing: a `status` issued right
/// before the start must not keep the daemon from starting.
fn open_engine(config: Config) -> Result<Engine, Error> {
    let state_dir = config.daemon.state_dir.clone();
    let sys: Arc<dyn crate::sys::Sys> = Arc::new(LinuxSys::new()?);
    let lock_path = state_dir.join(crate::lock::LOCK_FILE);
    let deadline = std::time::Instant::now() + COMMAND_WAIT;
    let mut waiting_for = None;
    loop {
        let e = match Engine::open(config.clone(), Arc::clone(&sys), "daemon", Duration::ZERO) {
            Err(e) if e.code == ErrorCode::Locked => e,
            r => {
                // Its connection threads outlive each answer: a rollback's last commit runs
                // right after it is answered.
                // It serves many requests: the host observation is reused while the mount
                // table is unchanged.
                if let Ok(engine) = &r {
                    engine.set_defer_finishing(true);
                    engine.set_reuse_host_observation(true);
                }
                return r;
            }
        };
        let holder = crate::lock::holder(&state_dir);
        let pid = holder
            .as_ref()
            .map_or_else(|| "unknown".to_string(), |h| h.pid_text());
        if holder.as_ref().is_some_and(|h| h.is_daemon() && h.alive()) {
            return Err(Error::new(ErrorCode::Locked, format!("another ws-ckpt daemon (pid {pid}) is running (it holds {})", lock_path.display()))
                .hint("stop it first (systemctl stop ws-ckpt), or use it: commands talk to the running daemon"));
        }
        if std::time::Instant::now() >= deadline {
            return Err(Error::new(
                ErrorCode::Locked,
                format!(
                    "{} (waited {}s for it to finish)",
                    e.message,
                    COMMAND_WAIT.as_secs()
                ),
            )
            .hint("wait for that command to finish, then start the daemon again"));
        }
        if waiting_for.as_ref() != Some(&pid) {
            tracing::info!(pid = %pid, lock = %lock_path.display(), "an in-process ws-ckpt command holds the lock; waiting for it to finish");
            waiting_for = Some(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn serve(config_path: &Path, overrides: crate::config::Overrides) -> Result<i32, DaemonError> {
    let config = Config::load(config_path)
        .map_err(Error::from)?
        .with_overrides(overrides);
    tracing::info!(
        config = %config_path.display(),
        state_dir = %config.daemon.state_dir.display(),
        log_level = %config.daemon.log_level,
        "ws-ckpt daemon starting"
    );
    let socket_path = crate::ipc::socket_path(&config);
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
    // Records interrupted checkpoints left behind, once (none is in flight yet).
    if let Some(engine) = shared.engine() {
        engine.sweep_checkpoint_records();
    }
    spawn_settler(&shared);
    let (listener, socket) = match server::bind_at(&socket_path) {
        Ok(x) => x,
        Err(e) => {
            close_engine(&shared);
            return Err(e.into());
        }
    };
    // Absolute: requests compare it with the file their client read (see accept_loop).
    let config_file =
        std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_path_buf());
    let handler_shared = Arc::clone(&shared);
    let handler: Arc<server::Handler> =
        Arc::new(move |caller: &Caller, req: Request| handler_shared.handle(caller, req));
    let stopping = Arc::clone(&shared.stopping);
    let accept = std::thread::Builder::new()
        .name("ws-ckpt-accept".into())
        .spawn(move || server::accept_loop(listener, stopping, handler, Some(config_file)));
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
            if let Some(engine) = shared.engine() {
                shared.refresh_watches(&engine);
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

/// How long the settle thread waits for work before it looks at `stopping` again (it holds
/// no engine meanwhile).
const SETTLE_IDLE: Duration = Duration::from_secs(2);

/// Start the thread that settles answered checkpoints ([`crate::settle`]); only once it runs
/// are checkpoints answered before their journal line is durable. It ends when the daemon
/// stops (the engine's close settles what is left).
fn spawn_settler(shared: &Arc<Shared>) {
    let Some(engine) = shared.engine() else {
        return;
    };
    let queue = engine.unsettled_queue();
    let s = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name("ws-ckpt-settle".into())
        .spawn(move || {
            while !s.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                if !queue.wait(SETTLE_IDLE) {
                    continue;
                }
                queue.gather(crate::settle::SETTLE_DELAY);
                match s.engine() {
                    // Nothing settled (busy workspaces, a journal that cannot be synced):
                    // no faster than one round per delay.
                    Some(engine) if engine.settle_due() == 0 => {
                        drop(engine);
                        std::thread::sleep(crate::settle::SETTLE_DELAY);
                    }
                    Some(_) => {}
                    // Stopping: the engine's close settles what waits.
                    None => std::thread::sleep(SETTLE_IDLE),
                }
            }
        });
    match spawned {
        Ok(_) => engine.set_settle_later(true),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the settle thread; each checkpoint makes its journal line durable before it is answered")
        }
    }
}

#[cfg(test)]
mod tests;
