//! Graceful stop: refuse new requests, let in-flight ones finish (bounded), record the clean
//! stop, release the lock and remove the socket.

use super::notify;
use super::shared::Shared;
use super::STOP_TIMEOUT;
use crate::engine::Engine;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) fn close_engine(shared: &Shared) {
    if let Some(engine) = shared.take_engine() {
        close(&engine);
    }
}

/// Record the clean stop (unless the state must not be written) and release the lock.
pub(super) fn close(engine: &Engine) {
    engine.finish_owed_all();
    if engine.store.read().problem.is_none() {
        let recorded = engine.store.update_state(|s| {
            if let Some(s) = s.as_mut() {
                s.last_clean_stop = Some(crate::time::now_rfc3339());
            }
        });
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "cannot record the clean stop in state.json");
        }
    }
    engine.close();
}

/// Graceful stop: no new connections, in-flight requests finish (bounded), the engine closes
/// (the lock file goes, so the next start reports no crash), the socket is removed.
pub(super) fn stop(shared: &Shared, socket: &Path, accept: std::thread::JoinHandle<()>) -> i32 {
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
    // New requests now fail with "shutting down"; wait for those holding the engine.
    let Some(engine) = shared.take_engine() else {
        tracing::info!("ws-ckpt daemon stopped cleanly");
        return 0;
    };
    while Arc::strong_count(&engine) > 1 {
        if Instant::now() >= deadline {
            tracing::error!(
                timeout_secs = STOP_TIMEOUT.as_secs(),
                "a request is still running; exiting without a clean stop (the next start runs crash recovery)"
            );
            return 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    close(&engine);
    tracing::info!("ws-ckpt daemon stopped cleanly");
    0
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
