//! The daemon's socket: binding `<runtime_dir>/ws-ckpt.sock` (mode 0666), the accept
//! thread, one thread per connection (bounded; threads are reused), and the caller's identity from
//! `SO_PEERCRED`.
//!
//! It moves requests between the wire ([`crate::ipc`]) and a handler; it must not decide
//! what a request may do (that is `auth`, via `Engine::handle`).

use crate::api::{Caller, Reply, Request};
use crate::error::{Error, ErrorCode};
use crate::ipc;
use crate::locks::relock;
use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most connections of non-root callers served at once; more get a "busy" error and are
/// closed.
pub const MAX_CONNECTIONS: usize = 64;
/// Most connections one non-root uid may hold at once (so one user cannot take every slot).
pub const MAX_PER_UID: usize = 16;
/// Slots beyond [`MAX_CONNECTIONS`] that only root can take: root's commands are served even
/// when other users hold every slot.
pub const ROOT_RESERVE: usize = 16;

/// Errors setting up the socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The runtime directory or socket could not be created.
    #[error(
        "cannot {what} {path}: {source}; check that the runtime directory is writable by root"
    )]
    Io {
        /// What was being done.
        what: &'static str,
        /// Path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Something that is not a socket sits where the socket goes.
    #[error("{path} exists and is not a socket; remove it or set [daemon] runtime_dir elsewhere")]
    NotASocket {
        /// Path.
        path: PathBuf,
    },
    /// Another process answers on the socket.
    #[error("another process already serves {path}; stop it first")]
    InUse {
        /// Path.
        path: PathBuf,
    },
}

/// Create `runtime_dir` (0755) when missing, remove a stale socket (only when nobody answers
/// on it), bind, and make the socket mode 0666 (authorization is by `SO_PEERCRED`).
pub fn bind(runtime_dir: &Path) -> Result<(UnixListener, PathBuf), ServerError> {
    bind_at(&runtime_dir.join(ipc::SOCKET_NAME))
}

/// [`bind`] for the socket path itself (`daemon --socket S`): its directory is created when
/// missing.
pub fn bind_at(socket: &Path) -> Result<(UnixListener, PathBuf), ServerError> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| ServerError::Io { what, path, source }
    };
    let runtime_dir = socket.parent().unwrap_or(Path::new("/"));
    if !runtime_dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(runtime_dir)
            .map_err(io("create the runtime directory", runtime_dir))?;
    }
    let path = socket.to_path_buf();
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if ipc::daemon_running(&path) {
                return Err(ServerError::InUse { path });
            }
            tracing::info!(socket = %path.display(), "removing stale socket");
            std::fs::remove_file(&path).map_err(io("remove the stale socket", &path))?;
        }
        Ok(_) => return Err(ServerError::NotASocket { path }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspect", &path)(e)),
    }
    let listener = UnixListener::bind(&path).map_err(io("bind the socket", &path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
        .map_err(io("chmod", &path))?;
    Ok((listener, path))
}

/// The caller's uid, gid and pid from `SO_PEERCRED`.
pub fn peer_caller(stream: &UnixStream) -> Result<Caller, Error> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| {
            Error::new(
                ErrorCode::Io,
                format!("cannot read the caller's credentials (SO_PEERCRED): {e}"),
            )
        })?;
    Ok(Caller {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
    })
}

/// Handles one decoded request for one caller.
pub type Handler = dyn Fn(&Caller, Request) -> Result<Reply, Error> + Send + Sync;

/// Live connections: all of them, and per uid.
#[derive(Default)]
struct Slots {
    total: usize,
    by_uid: HashMap<u32, usize>,
}

/// Why a connection gets no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoSlot {
    /// Every slot for non-root callers is taken.
    Full,
    /// This uid holds [`MAX_PER_UID`] already.
    PerUid,
}

impl Slots {
    /// Take a slot for `uid`: root while fewer than `MAX_CONNECTIONS + ROOT_RESERVE` are
    /// live; another uid while it holds fewer than `MAX_PER_UID` and non-root callers hold
    /// fewer than `MAX_CONNECTIONS`.
    fn take(&mut self, uid: u32) -> Result<(), NoSlot> {
        let mine = self.by_uid.get(&uid).copied().unwrap_or(0);
        if uid == 0 {
            if self.total >= MAX_CONNECTIONS + ROOT_RESERVE {
                return Err(NoSlot::Full);
            }
        } else {
            let root = self.by_uid.get(&0).copied().unwrap_or(0);
            if mine >= MAX_PER_UID {
                return Err(NoSlot::PerUid);
            }
            if self.total - root >= MAX_CONNECTIONS {
                return Err(NoSlot::Full);
            }
        }
        self.total += 1;
        *self.by_uid.entry(uid).or_insert(0) += 1;
        Ok(())
    }

    fn give_back(&mut self, uid: u32) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.by_uid.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                self.by_uid.remove(&uid);
            }
        }
    }
}

/// Holds a connection's slot while it exists.
struct ConnGuard {
    slots: Arc<Mutex<Slots>>,
    uid: u32,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        relock(&self.slots).give_back(self.uid);
    }
}

/// Connection threads kept waiting for the next connection at most (each for [`IDLE_FOR`]):
/// one caller's share of the slots, so that a burst of concurrent clients (agents
/// checkpointing side by side) starts no thread once it has started as many as it has
/// clients.
const IDLE_WORKERS: usize = MAX_PER_UID;
/// How long a connection thread waits for the next connection before it ends.
const IDLE_FOR: Duration = Duration::from_secs(30);

/// One accepted connection, holding its slot.
struct Job {
    stream: UnixStream,
    caller: Caller,
    guard: ConnGuard,
}

/// The connection threads. A thread that served its connection waits a while for the next
/// (at most [`IDLE_WORKERS`] wait, each for [`IDLE_FOR`]), so that a request usually starts
/// no thread: the accept thread queues the connection for a waiting thread, and starts a
/// thread only when every waiting one already has a connection queued for it.
struct Workers {
    pool: Arc<Pool>,
    handler: Arc<Handler>,
    /// The daemon's config file (see [`serve`]).
    config: Arc<Option<PathBuf>>,
}

/// What the accept thread and the waiting connection threads share.
#[derive(Default)]
struct Pool {
    state: Mutex<PoolState>,
    wake: std::sync::Condvar,
}

#[derive(Default)]
struct PoolState {
    /// Connections queued for waiting threads (never more than `waiting`).
    queue: std::collections::VecDeque<Job>,
    /// Threads waiting for a connection.
    waiting: usize,
    /// The accept loop ended: waiting threads end.
    closed: bool,
}

impl Pool {
    /// Wait for the next connection (at most [`IDLE_FOR`]); `None` when this thread should
    /// end: enough threads wait already, the accept loop ended, or none came.
    fn next(&self) -> Option<Job> {
        let mut g = relock(&self.state);
        if g.waiting >= IDLE_WORKERS || g.closed {
            return None;
        }
        g.waiting += 1;
        let deadline = std::time::Instant::now() + IDLE_FOR;
        let job = loop {
            if let Some(job) = g.queue.pop_front() {
                break Some(job);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if g.closed || left.is_zero() {
                break None;
            }
            g = self
                .wake
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        g.waiting -= 1;
        job
    }
}

impl Workers {
    fn new(handler: Arc<Handler>, config: Option<PathBuf>) -> Workers {
        Workers {
            pool: Arc::default(),
            handler,
            config: Arc::new(config),
        }
    }

    /// Serve `job` on a waiting thread, else on a new one.
    fn run(&self, job: Job) {
        {
            let mut g = relock(&self.pool.state);
            if g.waiting > g.queue.len() {
                g.queue.push_back(job);
                drop(g);
                self.pool.wake.notify_one();
                return;
            }
        }
        let pool = Arc::clone(&self.pool);
        let handler = Arc::clone(&self.handler);
        let config = Arc::clone(&self.config);
        let spawned = std::thread::Builder::new()
            .name("ws-ckpt-conn".into())
            .spawn(move || {
                let mut job = job;
                loop {
                    serve(job.stream, job.caller, handler.as_ref(), config.as_deref());
                    drop(job.guard);
                    match pool.next() {
                        Some(j) => job = j,
                        None => return,
                    }
                }
            });
        if let Err(e) = spawned {
            // The connection is closed (its slot given back) with the job.
            tracing::warn!(error = %e, "cannot start a connection thread");
        }
    }
}

impl Drop for Workers {
    /// The accept loop ended: waiting threads end (they hold the handler). A connection
    /// still queued is served first.
    fn drop(&mut self) {
        relock(&self.pool.state).closed = true;
        self.pool.wake.notify_all();
    }
}

/// Accept connections until `stopping` is set (wake the thread with a connection after
/// setting it). Each connection is served on a thread of its own (see [`Workers`]); beyond the slots its caller may take
/// (see [`MAX_CONNECTIONS`], [`MAX_PER_UID`], [`ROOT_RESERVE`]) a connection gets a `Busy`
/// error and is closed.
///
/// `config`: the daemon's config file. A request whose client found this socket in a config
/// file without reading its drop-ins names that file ([`ipc::encode_request_for`]); it is
/// run only when that is this file.
pub fn accept_loop(
    listener: UnixListener,
    stopping: Arc<AtomicBool>,
    handler: Arc<Handler>,
    config: Option<PathBuf>,
) {
    let slots = Arc::new(Mutex::new(Slots::default()));
    let workers = Workers::new(handler, config);
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                // Out of file descriptors and similar: do not spin.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if stopping.load(Ordering::SeqCst) {
            // Say so (the request is not run: the client may take it elsewhere); connections
            // still queued are reset when the listener closes, which says the same.
            refuse(stream, super::shared::shutting_down());
            break;
        }
        let caller = match peer_caller(&stream) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "refusing a connection");
                refuse(stream, e);
                continue;
            }
        };
        let taken = relock(&slots).take(caller.uid);
        if let Err(why) = taken {
            refuse_busy(stream, &caller, why);
            continue;
        }
        let guard = ConnGuard {
            slots: Arc::clone(&slots),
            uid: caller.uid,
        };
        workers.run(Job {
            stream,
            caller,
            guard,
        });
    }
    tracing::debug!("no longer accepting connections");
}

fn serve(stream: UnixStream, caller: Caller, handler: &Handler, config: Option<&Path>) {
    tracing::debug!(uid = caller.uid, pid = caller.pid, "connection");
    // Looked at per request: an edited config (a new file) is still ours.
    let serves = |id: &str| {
        config.is_some_and(|p| std::fs::metadata(p).is_ok_and(|m| ipc::config_identity(&m) == id))
    };
    let serves: &dyn Fn(&str) -> bool = &serves;
    let mut heavy = false;
    ipc::serve_connection(stream, ipc::Timeouts::DAEMON, serves, &mut |req| {
        let op = req.op();
        heavy |= super::heap::is_heavy(op);
        let r = handler(&caller, req);
        match &r {
            Ok(_) => tracing::debug!(uid = caller.uid, pid = caller.pid, op, "request done"),
            Err(e) => {
                tracing::debug!(uid = caller.uid, pid = caller.pid, op, code = ?e.code, error = %e.message, "request refused or failed")
            }
        }
        r
    });
    // Answered: what the request freed goes back to the kernel, off the client's time.
    if heavy {
        super::heap::release_free_memory();
    }
    // The request is over, answered or not (a client killed meanwhile): tests that kill a
    // client wait for this line before they judge what the daemon did.
    tracing::debug!(uid = caller.uid, pid = caller.pid, "connection closed");
}

/// Answer `e` on a connection that is not served, without waiting for the client.
fn refuse(stream: UnixStream, e: Error) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = std::io::Write::write_all(&mut &stream, &ipc::response_line(&Err(e)));
}

fn refuse_busy(stream: UnixStream, caller: &Caller, why: NoSlot) {
    tracing::warn!(
        uid = caller.uid,
        pid = caller.pid,
        ?why,
        "too many connections; refusing one"
    );
    let e = match why {
        NoSlot::PerUid => Error::new(
            ErrorCode::Busy,
            format!(
                "uid {} holds {MAX_PER_UID} connections to the ws-ckpt daemon already (the per-user limit)",
                caller.uid
            ),
        )
        .hint("close idle connections of this user, or retry in a moment"),
        NoSlot::Full => Error::new(
            ErrorCode::Busy,
            format!("the ws-ckpt daemon is serving {MAX_CONNECTIONS} connections already"),
        )
        .hint("retry in a moment; close idle connections"),
    };
    refuse(stream, e);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    #[test]
    fn bind_creates_dir_socket_mode_and_replaces_only_stale_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let rt = dir.path().join("run/ws");
        let (l, path) = bind(&rt).unwrap();
        assert_eq!(path, rt.join(ipc::SOCKET_NAME));
        assert_eq!(
            std::fs::metadata(&rt).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o666
        );
        // Somebody answers: refuse (the accept backlog answers connect() while `l` lives).
        assert!(matches!(bind(&rt), Err(ServerError::InUse { .. })));
        drop(l);
        // Stale socket file: replaced.
        let (_l2, _) = bind(&rt).unwrap();
        // Not a socket: never removed.
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join(ipc::SOCKET_NAME), "data").unwrap();
        assert!(matches!(bind(&other), Err(ServerError::NotASocket { .. })));
        assert_eq!(
            std::fs::read_to_string(other.join(ipc::SOCKET_NAME)).unwrap(),
            "data"
        );
    }

    #[test]
    fn peer_credentials_are_ours() {
        let (a, _b) = UnixStream::pair().unwrap();
        let c = peer_caller(&a).unwrap();
        assert_eq!(c, Caller::this_process());
    }

    #[test]
    fn accept_loop_serves_callers_with_their_credentials_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let (l, path) = bind(dir.path()).unwrap();
        let stopping = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(|caller: &Caller, req: Request| {
            Ok(serde_json::json!({"uid": caller.uid, "pid": caller.pid, "op": req.op()}).into())
        });
        let s2 = Arc::clone(&stopping);
        let t = std::thread::spawn(move || accept_loop(l, s2, handler, None));
        let v = status_via(&path);
        assert_eq!(v["uid"], Caller::this_process().uid);
        assert_eq!(v["pid"], std::process::id());
        assert_eq!(v["op"], "status");
        stopping.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&path);
        t.join().unwrap();
    }

    /// A status request on a new connection to `path`; the handler's result.
    fn status_via(path: &Path) -> serde_json::Value {
        let mut c = UnixStream::connect(path).unwrap();
        c.write_all(
            format!(
                "{}\n",
                ipc::encode_request(&Request::Status { workspace: None })
            )
            .as_bytes(),
        )
        .unwrap();
        let mut line = String::new();
        BufReader::new(&c).read_line(&mut line).unwrap();
        serde_json::from_str::<serde_json::Value>(&line).unwrap()["result"].clone()
    }

    #[test]
    fn a_connection_thread_serves_the_next_connection_and_ends_with_the_loop() {
        let dir = tempfile::tempdir().unwrap();
        let (l, path) = bind(dir.path()).unwrap();
        let stopping = Arc::new(AtomicBool::new(false));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&threads);
        let handler: Arc<Handler> = Arc::new(move |_: &Caller, _: Request| {
            let me = std::thread::current();
            seen.lock().unwrap().push(me.id());
            Ok(serde_json::json!({"thread": me.name()}).into())
        });
        let s2 = Arc::clone(&stopping);
        let t = std::thread::spawn(move || accept_loop(l, s2, handler, None));
        for _ in 0..5 {
            assert_eq!(status_via(&path)["thread"], "ws-ckpt-conn");
            // The thread that answered is back waiting once its slot is free.
            std::thread::sleep(Duration::from_millis(50));
        }
        let ids = threads.lock().unwrap().clone();
        assert_eq!(ids.len(), 5);
        assert!(
            ids.iter().all(|id| *id == ids[0]),
            "one thread served the five connections one after the other: {ids:?}"
        );
        stopping.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&path);
        t.join().unwrap();
        // The waiting thread ends with the loop (its sender is gone): the handler, which it
        // holds, is dropped.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&threads) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(Arc::strong_count(&threads), 1, "the waiting thread ended");
    }

    #[test]
    fn concurrent_clients_are_served_by_as_many_waiting_threads() {
        let dir = tempfile::tempdir().unwrap();
        let (l, path) = bind(dir.path()).unwrap();
        let stopping = Arc::new(AtomicBool::new(false));
        let threads = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let seen = Arc::clone(&threads);
        let handler: Arc<Handler> = Arc::new(move |_: &Caller, _: Request| {
            seen.lock().unwrap().insert(std::thread::current().id());
            Ok(serde_json::Value::Null.into())
        });
        let s2 = Arc::clone(&stopping);
        let t = std::thread::spawn(move || accept_loop(l, s2, handler, None));
        // Rounds of four clients connecting at once; between rounds the threads that served
        // them are back waiting.
        const CLIENTS: usize = 4;
        let start = Arc::new(std::sync::Barrier::new(CLIENTS));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (start, path) = (Arc::clone(&start), path.clone());
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        start.wait();
                        status_via(&path);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        let served_by = threads.lock().unwrap().len();
        assert!(
            served_by <= CLIENTS + 1,
            "40 connections of {CLIENTS} concurrent clients were served by {served_by} threads"
        );
        stopping.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&path);
        t.join().unwrap();
    }

    #[test]
    fn too_many_connections_get_busy() {
        let dir = tempfile::tempdir().unwrap();
        let (l, path) = bind(dir.path()).unwrap();
        let stopping = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> =
            Arc::new(|_: &Caller, _: Request| Ok(serde_json::Value::Null.into()));
        let s2 = Arc::clone(&stopping);
        let t = std::thread::spawn(move || accept_loop(l, s2, handler, None));
        // Idle connections occupy every slot this uid may take (the server waits for their
        // first line).
        let mine = if nix::unistd::geteuid().is_root() {
            MAX_CONNECTIONS + ROOT_RESERVE
        } else {
            MAX_PER_UID
        };
        let idle: Vec<UnixStream> = (0..mine)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let extra = UnixStream::connect(&path).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut line = String::new();
        BufReader::new(&extra).read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["error"]["code"], "Busy", "{line}");
        drop(idle);
        stopping.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&path);
        t.join().unwrap();
    }

    #[test]
    fn one_uid_cannot_take_every_slot_and_root_always_gets_one() {
        let mut slots = Slots::default();
        // Alice takes what she can: her per-uid share.
        let alice = (0..100).filter(|_| slots.take(1001).is_ok()).count();
        assert_eq!(alice, MAX_PER_UID);
        assert_eq!(slots.take(1001), Err(NoSlot::PerUid));
        // Other users fill the rest of the non-root slots.
        let mut uid = 2000;
        while slots.total < MAX_CONNECTIONS {
            if slots.take(uid).is_err() {
                uid += 1;
            }
        }
        assert_eq!(slots.take(3000), Err(NoSlot::Full));
        // Root still gets its reserve, and only that.
        let root = (0..100).filter(|_| slots.take(0).is_ok()).count();
        assert_eq!(root, ROOT_RESERVE);
        // A freed slot goes back to whoever asks next.
        slots.give_back(1001);
        assert_eq!(slots.take(3000), Ok(()));
        assert_eq!(slots.by_uid.get(&1001), Some(&(MAX_PER_UID - 1)));
    }
}
