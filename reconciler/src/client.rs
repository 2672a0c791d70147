//! The client side of a command: where a [`Request`] goes. To the running daemon over its
//! socket when one answers; otherwise, for root, in-process on an engine of its own (same
//! request path, same lock, same JSON result, so the output does not depend on the route).
//!
//! This module chooses the transport and nothing else: it neither prints (the CLI does) nor
//! interprets results.

use crate::api::{Caller, Progress, Request};
use crate::config::{Config, DEFAULT_RUNTIME_DIR};
use crate::engine::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::ipc;
use crate::plan::PlanOptions;
use crate::sys::linux::LinuxSys;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long an in-process command waits for another in-process command to finish.
pub const LOCK_WAIT: Duration = Duration::from_secs(120);

/// The client of one command: the config it was started with and the daemon's socket.
#[derive(Debug)]
pub struct Client {
    config: Result<Config>,
    socket: PathBuf,
    /// The socket was named explicitly (`WS_CKPT_SOCKET`, as upstream's clients do): only a
    /// daemon there may serve the command, never in-process work on the config's paths.
    explicit: bool,
}

impl Client {
    /// A client for the config at `config_path`. When the config does not load (the daemon
    /// keeps running on its last good one), the socket is found from `[daemon] runtime_dir`
    /// of the main file alone, else the default; the error is reported when a command needs
    /// the config itself.
    pub fn new(config_path: &Path) -> Client {
        let config = Config::load(config_path).map_err(Error::from);
        let socket = match &config {
            Ok(c) => ipc::socket_path(c),
            Err(_) => runtime_dir_of(config_path).join(ipc::SOCKET_NAME),
        };
        Client {
            config,
            socket,
            explicit: false,
        }
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
        self.config.as_ref().map_err(Clone::clone)
    }

    /// True when a daemon answers on the socket.
    pub fn daemon_running(&self) -> bool {
        ipc::daemon_running(&self.socket)
    }

    /// Send `req` to the daemon when one answers (each read and write bounded by `timeout`),
    /// else run it in-process as the current user, which needs root. `progress` receives
    /// progress of long copies in-process.
    pub fn call(&self, req: Request, timeout: Duration, progress: Progress<'_>) -> Result<Value> {
        if self.daemon_running() {
            return ipc::call(&self.socket, &req, timeout);
        }
        if self.explicit {
            return Err(Error::daemon_not_running(&self.socket, "WS_CKPT_SOCKET names it")
                .hint("start the daemon that serves this socket, or unset WS_CKPT_SOCKET to use the configured one"));
        }
        let config = self.config()?.clone();
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::daemon_not_running(
                &self.socket,
                "and running without it needs root",
            )
            .hint("start the daemon (systemctl start ws-ckpt), or run the command as root"));
        }
        let sys = LinuxSys::new()?;
        let engine = Engine::open(config, Arc::new(sys), "cli", LOCK_WAIT)?;
        let result =
            crate::handler::handle_in_process(&engine, &Caller::this_process(), req, progress);
        engine.close();
        result
    }

    /// Send `req` to the running daemon; an error saying so when none answers.
    pub fn call_daemon(&self, req: &Request, timeout: Duration) -> Result<Value> {
        if !self.daemon_running() {
            return Err(Error::daemon_not_running(&self.socket, "this command needs it")
            .hint("start it (systemctl start ws-ckpt); without a daemon, `ws-ckpt apply` converges directly"));
        }
        ipc::call(&self.socket, req, timeout)
    }

    /// `daemon --check`: the plan of the running daemon, or (none running) one planning pass
    /// in-process that neither takes nor changes the lock. The plan as JSON.
    pub fn check_plan(&self, timeout: Duration) -> Result<Value> {
        let config = self.config()?;
        if self.daemon_running() {
            return ipc::call(&self.socket, &Request::Plan { prune: false }, timeout);
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
        let c = Client::new(&dir.path().join("missing/config.toml"));
        assert_eq!(
            c.socket(),
            Path::new(DEFAULT_RUNTIME_DIR).join(ipc::SOCKET_NAME)
        );
    }
}
