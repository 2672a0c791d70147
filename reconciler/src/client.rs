//! The client side of a command: where a [`Request`] goes. To the running daemon over its
//! socket when one answers; otherwise, for root, in-process on an engine of its own (same
//! request path, same lock, same JSON result, so the output does not depend on the route).
//!
//! Hand-off with a daemon that is starting or stopping (SPEC §7.1): one connection per
//! command (no separate probe); when nothing answers and the lock is held by a daemon, the
//! command waits for that daemon's socket (bounded by [`START_WAIT`], saying so once on a
//! terminal) instead of waiting on the lock; a request a stopping daemon did not take (it
//! says it is shutting down, or the connection is reset) goes to the next daemon or runs
//! in-process. It never waits on the lock of a running daemon: a daemon that answers is used.
//!
//! This module chooses the transport and nothing else: it does not interpret results, and it
//! prints nothing but that one waiting line (on stderr, only when stderr is a terminal).

use crate::api::{Caller, Progress, Reply, Request};
use crate::config::{Config, DEFAULT_RUNTIME_DIR};
use crate::engine::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::ipc::{self, RawResult};
use crate::plan::PlanOptions;
use crate::sys::linux::LinuxSys;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How long an in-process command waits for another in-process command to finish.
pub const LOCK_WAIT: Duration = Duration::from_secs(120);

/// How long a command waits for a starting daemon to open its socket (or for the lock).
pub const START_WAIT: Duration = Duration::from_secs(120);

/// Pause between two looks at the socket and the lock while waiting.
const POLL: Duration = Duration::from_millis(20);

/// The one line a waiting command prints (stderr, terminals only).
fn notice(text: &str) {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        eprintln!("ws-ckpt: {text}");
    }
}

/// True when the running process is root.
fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The client of one command: the config it was started with and the daemon's socket.
#[derive(Debug)]
pub struct Client {
    config_path: PathBuf,
    /// Loaded when first needed: a command the daemon serves never loads it (its socket is
    /// known from the main file alone, see [`Client::new`]).
    config: std::cell::OnceCell<Result<Config>>,
    socket: PathBuf,
    /// The socket was named explicitly (`WS_CKPT_SOCKET`, as upstream's clients do): only a
    /// daemon there may serve the command, never in-process work on the config's paths.
    explicit: bool,
}

impl Client {
    /// A client for the config at `config_path`. The socket is `[daemon] runtime_dir` of the
    /// main file (else the default) when no drop-in mentions `runtime_dir`: then the config is
    /// loaded only when a command needs it (no daemon answers, or the command reads it).
    /// Otherwise the config is loaded now and names the socket; when it does not load (the
    /// daemon keeps running on its last good one), the main file's `runtime_dir` does, and
    /// the error is reported when a command needs the config itself.
    pub fn new(config_path: &Path) -> Client {
        let mut client = Client {
            config_path: config_path.to_path_buf(),
            config: std::cell::OnceCell::new(),
            socket: PathBuf::new(),
            explicit: false,
        };
        client.socket = match quick_runtime_dir(config_path) {
            Some(dir) => dir.join(ipc::SOCKET_NAME),
            None => match client.load() {
                Ok(c) => ipc::socket_path(c),
                Err(_) => runtime_dir_of(config_path).join(ipc::SOCKET_NAME),
            },
        };
        client
    }

    fn load(&self) -> &Result<Config> {
        self.config
            .get_or_init(|| Config::load(&self.config_path).map_err(Error::from))
    }

    /// Talk to the daemon on `socket` only (`WS_CKPT_SOCKET`): when nothing answers there,
    /// every command fails with "daemon is not running" instead of running in-process on the
    /// config's default paths (which may belong to another daemon, e.g. a sidecar's).
    pub fn with_socket(mut self, socket: Option<PathBuf>) -> Client {
        if let Some(s) = socket {
            self.socket = s;
            self.explicit = true;
        }
        self
    }
    /// The daemon's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The loaded config, or why it does not load.
    pub fn config(&self) -> Result<&Config> {
        self.load().as_ref().map_err(Clone::clone)
    }

    /// True when a daemon answers on the socket.
    pub fn daemon_running(&self) -> bool {
        ipc::daemon_running(&self.socket)
    }

    /// Send `req` to the daemon when one answers (each read and write bounded by `timeout`),
    /// else run it in-process as the current user, which needs root. `progress` receives
    /// progress of long copies in-process. See the module documentation for the hand-off
    /// with a daemon that is starting or stopping.
    pub fn call(&self, req: Request, timeout: Duration, progress: Progress<'_>) -> Result<Value> {
        self.call_as(req, timeout, progress)
    }

    /// [`Client::call`], with the result decoded straight into `T` (a large `list` is read
    /// once, not through a [`Value`]).
    pub fn call_as<T: DeserializeOwned>(
        &self,
        req: Request,
        timeout: Duration,
        progress: Progress<'_>,
    ) -> Result<T> {
        self.call_with(req, timeout, progress, ipc::exchange_as::<T>, Reply::decode)
    }

    /// [`Client::call`], with the result as compact JSON text, not decoded: from the daemon
    /// the text it wrote, in-process the text of the engine's reply (the same text either
    /// way), for a command that prints the result as JSON.
    pub fn call_raw(
        &self,
        req: Request,
        timeout: Duration,
        progress: Progress<'_>,
    ) -> Result<RawResult> {
        self.call_with(req, timeout, progress, ipc::exchange_raw, |r| {
            Ok(RawResult::from_reply(r))
        })
    }

    /// [`Client::call`] of a request that asks for its printed form (`list` with `output`):
    /// the text to print, or the result's JSON text when the daemon answered with the
    /// result. The same text from the daemon or in-process.
    pub fn call_printed(
        &self,
        req: Request,
        timeout: Duration,
        progress: Progress<'_>,
    ) -> Result<ipc::Printed> {
        self.call_with(req, timeout, progress, ipc::exchange_printed, |r| {
            Ok(ipc::Printed::from_reply(r))
        })
    }

    /// The transport of [`Client::call_as`] and [`Client::call_raw`]: `exchange` sends the
    /// request on a daemon connection and decodes its answer; `from_reply` decodes the
    /// in-process reply.
    fn call_with<T>(
        &self,
        req: Request,
        timeout: Duration,
        progress: Progress<'_>,
        exchange: impl Fn(UnixStream, &Path, &Request, Duration) -> ipc::Exchange<T>,
        from_reply: impl Fn(Reply) -> Result<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + START_WAIT;
        let mut waited_for: Option<String> = None;
        let mut wait = |what: String| {
            if waited_for.as_deref() != Some(what.as_str()) {
                notice(&format!(
                    "waiting for {what} (at most {}s)",
                    START_WAIT.as_secs()
                ));
                waited_for = Some(what);
            }
            std::thread::sleep(POLL);
        };
        loop {
            let last_chance = Instant::now() >= deadline;
            if let Some(stream) = ipc::connect(&self.socket)? {
                match exchange(stream, &self.socket, &req, timeout) {
                    ipc::Exchange::Answered(r) => return r,
                    ipc::Exchange::NotTaken(e) if last_chance => return Err(e),
                    ipc::Exchange::NotTaken(_) => {
                        wait("the ws-ckpt daemon to restart".into());
                        continue;
                    }
                }
            }
            // Nothing answers. WS_CKPT_SOCKET names one daemon: never fall back to the
            // configured paths.
            if self.explicit {
                return Err(Error::daemon_not_running(&self.socket, "WS_CKPT_SOCKET names it")
                    .hint("start the daemon that serves this socket, or unset WS_CKPT_SOCKET to use the configured one"));
            }
            // A daemon holding the lock is starting: wait for its socket.
            let config = self.config()?;
            let holder = crate::lock::holder(&config.daemon.state_dir);
            let starting = holder.as_ref().filter(|h| h.is_daemon() && h.alive());
            if let (Some(h), false) = (starting, last_chance) {
                wait(format!(
                    "the ws-ckpt daemon (pid {}) to start",
                    h.pid_text()
                ));
                continue;
            }
            if !is_root() {
                return Err(Error::daemon_not_running(
                    &self.socket,
                    "and running without it needs root",
                )
                .hint("start the daemon (systemctl start ws-ckpt), or run the command as root"));
            }
            match self
                .in_process(config, &req, progress)
                .and_then(&from_reply)
            {
                Err(e) if e.code == ErrorCode::Locked && !last_chance => {
                    // Another in-process command, or a daemon that took the lock just now.
                    let h = crate::lock::holder(&config.daemon.state_dir);
                    let who = match &h {
                        Some(h) if h.is_daemon() => {
                            format!("the ws-ckpt daemon (pid {}) to start", h.pid_text())
                        }
                        Some(h) => format!("ws-ckpt (pid {}) to finish", h.pid_text()),
                        None => "the ws-ckpt state lock".to_string(),
                    };
                    wait(who);
                }
                r => return r,
            }
        }
    }

    /// Run `req` in-process, taking the state lock without waiting (a read-only request with
    /// no state directory takes none and creates nothing).
    fn in_process(&self, config: &Config, req: &Request, progress: Progress<'_>) -> Result<Reply> {
        let sys: Arc<dyn crate::sys::Sys> = Arc::new(LinuxSys::new()?);
        let reads_only = matches!(
            req,
            Request::Status { .. }
                | Request::Plan { .. }
                | Request::List { .. }
                | Request::Apply { check: true, .. }
        );
        let unlocked = match reads_only {
            true => Engine::open_if_nothing_recorded(config, Arc::clone(&sys))?,
            false => None,
        };
        let engine = match unlocked {
            Some(e) => e,
            None => Engine::open(config.clone(), sys, "cli", Duration::ZERO)?,
        };
        let result = crate::handler::handle_in_process_reply(
            &engine,
            &Caller::this_process(),
            req.clone(),
            progress,
        );
        engine.close();
        result
    }

    /// Send `req` to the running daemon (one connection); an error saying so when none
    /// answers.
    pub fn call_daemon(&self, req: &Request, timeout: Duration) -> Result<Value> {
        let Some(stream) = ipc::connect(&self.socket)? else {
            return Err(Error::daemon_not_running(&self.socket, "this command needs it")
            .hint("start it (systemctl start ws-ckpt); without a daemon, `ws-ckpt apply` converges directly"));
        };
        match ipc::exchange(stream, &self.socket, req, timeout) {
            ipc::Exchange::Answered(r) => r,
            ipc::Exchange::NotTaken(e) => Err(e),
        }
    }

    /// `daemon --check`: the plan of the running daemon, or (none running) one planning pass
    /// in-process that neither takes nor changes the lock. The plan as JSON.
    pub fn check_plan(&self, timeout: Duration) -> Result<Value> {
        let config = self.config()?;
        if let Some(stream) = ipc::connect(&self.socket)? {
            if let ipc::Exchange::Answered(r) = ipc::exchange(
                stream,
                &self.socket,
                &Request::Plan { prune: false },
                timeout,
            ) {
                return r;
            }
        }
        if self.explicit {
            return Err(Error::daemon_not_running(
                &self.socket,
                "WS_CKPT_SOCKET names it",
            ));
        }
        let sys = LinuxSys::new()?;
        let store = crate::store::Store::load(&config.daemon.state_dir, SystemTime::now())?;
        let persisted = store.snapshot();
        let (obs, res) = crate::observe::observe(&sys, config, &persisted);
        let p = crate::plan::plan(
            config,
            &persisted,
            &obs,
            &res,
            PlanOptions::default(),
            SystemTime::now(),
        );
        serde_json::to_value(&p)
            .map_err(|e| Error::new(ErrorCode::Io, format!("cannot encode the plan: {e}")))
    }
}

/// The daemon's socket the config at `config_path` names, found without loading the config
/// (see [`quick_runtime_dir`]); `None` when only loading it can tell. For a client that
/// links no config loader (the CLI's front binary).
pub fn socket_without_loading(config_path: &Path) -> Option<PathBuf> {
    quick_runtime_dir(config_path).map(|dir| dir.join(ipc::SOCKET_NAME))
}

/// The socket the main config file at `config_path` names (its `[daemon] runtime_dir`, else
/// the default), without reading the drop-ins, and the file's [`ipc::config_identity`]: a
/// request sent with it ([`ipc::exchange_raw_for`]) is run only by a daemon serving this very
/// file, wherever a drop-in may have moved its socket; another daemon there does not take
/// it. `None` when the file cannot be read or its `runtime_dir` is not a plain absolute
/// path (then [`socket_without_loading`] or the whole config decides).
pub fn main_file_socket(config_path: &Path) -> Option<(PathBuf, String)> {
    use std::io::Read;
    let mut file = std::fs::File::open(config_path).ok()?;
    let identity = ipc::config_identity(&file.metadata().ok()?);
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    let dir = main_file_runtime_dir(&text)?;
    Some((dir.join(ipc::SOCKET_NAME), identity))
}

/// `[daemon] runtime_dir` of a main config file's text, else the default; `None` when the
/// text does not parse or the value is not a plain absolute path.
fn main_file_runtime_dir(text: &str) -> Option<PathBuf> {
    let table = text.parse::<toml::Table>().ok()?;
    match table.get("daemon").and_then(|d| d.get("runtime_dir")) {
        None => Some(PathBuf::from(DEFAULT_RUNTIME_DIR)),
        Some(v) => normalized_abs(v.as_str()?),
    }
}

/// The runtime directory the full config would give, found without loading it: `[daemon]
/// runtime_dir` of the main file (the default when absent or when the file is missing), as
/// long as it is a valid absolute path and no drop-in in `config.d` mentions `runtime_dir`
/// (then only the full load knows). `None`: load the config.
fn quick_runtime_dir(config_path: &Path) -> Option<PathBuf> {
    let dir = match std::fs::read_to_string(config_path) {
        Ok(text) => main_file_runtime_dir(&text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => PathBuf::from(DEFAULT_RUNTIME_DIR),
        Err(_) => return None,
    };
    let dropins = crate::config::dropin_dir_for(config_path);
    match std::fs::read_dir(&dropins) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.ok()?;
                let name = entry.file_name();
                let name = name.to_str()?;
                if name.starts_with('.') || !name.ends_with(".toml") {
                    continue;
                }
                let text = std::fs::read(entry.path()).ok()?;
                if text
                    .windows(b"runtime_dir".len())
                    .any(|w| w == b"runtime_dir")
                {
                    return None;
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(_) => return None,
    }
    Some(dir)
}

/// An absolute path written without `..`, normalized as the config loader does (repeated and
/// trailing slashes, `.` components); `None` for anything else (the loader reports it).
fn normalized_abs(text: &str) -> Option<PathBuf> {
    use std::path::Component;
    let path = Path::new(text);
    if !path.is_absolute() || text.contains('\0') {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// `[daemon] runtime_dir` of the main config file alone (no validation, no drop-ins), else
/// the default.
fn runtime_dir_of(config_path: &Path) -> PathBuf {
    std::fs::read_to_string(config_path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| {
            t.get("daemon")?
                .get("runtime_dir")?
                .as_str()
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_comes_from_the_config_or_its_main_file_or_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.toml");
        let run = dir.path().join("run");
        std::fs::write(
            &cfg,
            format!("[daemon]\nruntime_dir = \"{}\"\n", run.display()),
        )
        .unwrap();
        assert_eq!(Client::new(&cfg).socket(), run.join(ipc::SOCKET_NAME));
        // A broken drop-in: the main file still names the runtime dir.
        std::fs::create_dir_all(dir.path().join("config.d")).unwrap();
        std::fs::write(dir.path().join("config.d/9-bad.toml"), "bogus = 1\n").unwrap();
        let c = Client::new(&cfg);
        assert_eq!(c.socket(), run.join(ipc::SOCKET_NAME));
        assert_eq!(c.config().unwrap_err().code, ErrorCode::ConfigInvalid);
        // A drop-in that sets runtime_dir: only the full load knows the socket.
        let other = dir.path().join("other-run");
        std::fs::write(
            dir.path().join("config.d/9-bad.toml"),
            format!("[daemon]\nruntime_dir = \"{}\"\n", other.display()),
        )
        .unwrap();
        assert_eq!(Client::new(&cfg).socket(), other.join(ipc::SOCKET_NAME));
        // Written with extra slashes and `.`: the same directory as the loader's.
        std::fs::remove_file(dir.path().join("config.d/9-bad.toml")).unwrap();
        std::fs::write(
            &cfg,
            format!("[daemon]\nruntime_dir = \"{}/./\"\n", run.display()),
        )
        .unwrap();
        let c = Client::new(&cfg);
        assert_eq!(c.socket(), run.join(ipc::SOCKET_NAME));
        assert_eq!(ipc::socket_path(c.config().unwrap()), c.socket());
        let c = Client::new(&dir.path().join("missing/config.toml"));
        assert_eq!(
            c.socket(),
            Path::new(DEFAULT_RUNTIME_DIR).join(ipc::SOCKET_NAME)
        );
    }
}
