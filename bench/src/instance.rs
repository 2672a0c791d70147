//! One isolated ws-ckpt installation inside the scratch directory: its config (every path
//! under `<scratch>/<name>`, a sparse btrfs-loop image), the real daemon binary running on it,
//! and the two ways of asking it something — spawning the `ws-ckpt` CLI, or one request on
//! the socket with [`ws_ckpt::ipc::call`].
//!
//! It must not measure or interpret results beyond success/failure, and must never point
//! ws-ckpt at the system paths (`/var/lib/ws-ckpt`, `/run/ws-ckpt`, `/mnt/btrfs-workspace`).

use crate::scratch::check_interrupted;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use ws_ckpt::api::Request;
use ws_ckpt::resolve::Resolution;
use ws_ckpt::state::{BackendType, SelectionMethod};

/// Environment variables removed from every child (host config, systemd notification, log
/// level overrides).
const SCRUBBED_ENV: &[&str] = &["WS_CKPT_CONFIG", "NOTIFY_SOCKET", "WS_CKPT_LOG"];

/// How long the daemon may take to answer on its socket after start.
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a clean stop may take before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// Socket timeout for quick requests.
pub(crate) const QUICK: Duration = Duration::from_secs(120);
/// Socket timeout for passes over many snapshots.
pub(crate) const SLOW: Duration = Duration::from_secs(3600);

/// A ws-ckpt installation under `<scratch>/<name>`.
pub(crate) struct Instance {
    /// The `ws-ckpt` binary.
    pub bin: PathBuf,
    /// `<dir>/etc/config.toml`.
    pub config: PathBuf,
    /// `<dir>/mnt`: the btrfs-loop mount (data_root).
    pub mount: PathBuf,
    /// `<dir>/home`: plain directories that become workspaces.
    pub home: PathBuf,
    /// `<dir>/run/ws-ckpt.sock`.
    pub socket: PathBuf,
    /// `<dir>/state`: the daemon's state_dir.
    pub state_dir: PathBuf,
    logs: PathBuf,
    daemon: Option<Child>,
    starts: usize,
    /// `perf record -g` output for the next daemon start (the daemon then runs under perf).
    pub profile_next: Option<PathBuf>,
    /// The running daemon was started under perf (its process group is signalled).
    profiled: bool,
}

impl Instance {
    /// The storage layout of this instance (its loop backend mounted at `mount`, data_root
    /// there, snapshots_root at `mount/snapshots` as the loop backend resolves it), so that
    /// every workspace and snapshot path comes from the library's one layout
    /// ([`Resolution::ws_subvol`], [`Resolution::snap_dir`]), gates included.
    pub(crate) fn layout(&self) -> Resolution {
        Resolution {
            backend_type: BackendType::BtrfsLoop,
            selection_method: SelectionMethod::Config,
            mount: self.mount.clone(),
            data_root: self.mount.clone(),
            snapshots_root: self.mount.join("snapshots"),
            image: None,
            conflict: None,
        }
    }

    /// Create the directories and the config. `img_gib`: image size cap (the file is sparse).
    pub(crate) fn create(scratch: &Path, name: &str, bin: &Path, img_gib: u64) -> Result<Instance> {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch.join(name);
        let etc = dir.join("etc");
        let state = dir.join("state");
        let run = dir.join("run");
        let home = dir.join("home");
        let logs = dir.join("logs");
        for d in [
            &dir,
            &etc,
            &etc.join("config.d"),
            &state,
            &run,
            &home,
            &logs,
        ] {
            fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            fs::set_permissions(d, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot chmod {}", d.display()))?;
        }
        let mount = dir.join("mnt");
        let q = |p: &Path| Value::from(p.display().to_string()).to_string();
        let text = format!(
            "# written by ws-ckpt-bench; everything lives under {dir}\n\
             [daemon]\n\
             state_dir = {state}\n\
             runtime_dir = {run}\n\
             reconcile_interval = \"0\"\n\
             log_level = \"warn\"\n\
             \n\
             [backend]\n\
             type = \"btrfs-loop\"\n\
             \n\
             [backend.btrfs-loop]\n\
             image = {image}\n\
             mount = {mount}\n\
             img_size = {img_gib}\n\
             img_max_percent = 100\n\
             legacy_image = {legacy}\n\
             \n\
             [retention]\n\
             auto_cleanup = false\n\
             # the growth rows go past the default cap of snapshots per workspace\n\
             max_snapshots = 1000000\n",
            dir = dir.display(),
            state = q(&state),
            run = q(&run),
            image = q(&state.join("btrfs-data.img")),
            mount = q(&mount),
            legacy = q(&dir.join("legacy/btrfs-data.img")),
        );
        let config = etc.join("config.toml");
        fs::write(&config, text).with_context(|| format!("cannot write {}", config.display()))?;
        Ok(Instance {
            bin: bin.to_path_buf(),
            config,
            mount,
            home,
            socket: run.join(ws_ckpt::ipc::SOCKET_NAME),
            state_dir: state,
            logs,
            daemon: None,
            starts: 0,
            profile_next: None,
            profiled: false,
        })
    }

    /// `ws-ckpt --config <config> <args…>` with a scrubbed environment and stdin null.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        for v in SCRUBBED_ENV {
            cmd.env_remove(v);
        }
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Run the CLI to completion; error (with its stderr) unless it exits 0. Returns the
    /// wall time from spawn to exit.
    pub(crate) fn cli(&self, args: &[&str]) -> Result<Duration> {
        let mut cmd = self.command(args);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let t = Instant::now();
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        let elapsed = t.elapsed();
        if !out.status.success() {
            bail!(
                "`ws-ckpt {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(elapsed)
    }

    /// One request on the socket.
    pub(crate) fn call(&self, req: &Request, timeout: Duration) -> Result<Value> {
        ws_ckpt::ipc::call(&self.socket, req, timeout)
            .map_err(|e| anyhow!("{} request to the daemon failed: {e}", req.op()))
    }

    /// A checkpoint through the socket; returns the snapshot ID.
    pub(crate) fn checkpoint(&self, workspace: &Path) -> Result<String> {
        let v = self.call(
            &Request::Checkpoint {
                workspace: workspace.display().to_string(),
                snapshot: None,
                message: None,
                metadata: None,
                pin: false,
            },
            QUICK,
        )?;
        v.get("snapshot")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("checkpoint reply without a snapshot ID: {v}"))
    }

    /// `init` of `<home>/<name>` (created with the sample tree) through the socket; returns
    /// the workspace path and its ws_id.
    pub(crate) fn init_workspace(&self, name: &str) -> Result<(PathBuf, String)> {
        let path = self.home.join(name);
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        crate::raw::write_sample_tree(&path)?;
        let v = self.call(
            &Request::Init {
                path: path.clone(),
                force: false,
            },
            SLOW,
        )?;
        let ws_id = v
            .get("ws_id")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("init reply without ws_id: {v}"))?;
        Ok((path, ws_id.to_string()))
    }

    /// Snapshots recorded (and not MISSING) in one workspace, or in all when `None`
    /// (`list` through the socket).
    pub(crate) fn snapshot_count(&self, workspace: Option<&Path>) -> Result<usize> {
        let v = self.call(
            &Request::List {
                workspace: workspace.map(|w| w.display().to_string()),
                limit: None,
                cursor: None,
                output: None,
            },
            SLOW,
        )?;
        let workspaces = v
            .get("workspaces")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("list reply without workspaces"))?;
        Ok(workspaces
            .iter()
            .filter_map(|w| w.get("snapshots").and_then(Value::as_array))
            .flatten()
            .filter(|s| s.get("missing").and_then(Value::as_bool) != Some(true))
            .count())
    }

    /// `apply` through the socket; errors when it did not converge.
    pub(crate) fn apply(&self) -> Result<Value> {
        let v = self.call(
            &Request::Apply {
                check: false,
                prune: false,
            },
            SLOW,
        )?;
        let failed = v
            .get("actions")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x.get("result") == Some(&"failed".into())));
        if failed {
            bail!("apply reported failed actions: {v}");
        }
        Ok(v)
    }

    /// Start the daemon (own process group, so a terminal Ctrl-C reaches only the benchmark)
    /// and wait until its socket accepts connections (it binds after its first pass). Returns
    /// the time from spawn to the first accepted connection.
    pub(crate) fn start_daemon(&mut self) -> Result<Duration> {
        self.start_daemon_until(None)
    }

    /// [`Instance::start_daemon`], ready only once the socket answers `probe` successfully
    /// (a connection the daemon accepts but cannot answer yet is retried).
    pub(crate) fn start_daemon_ready(&mut self, probe: &Request) -> Result<Duration> {
        self.start_daemon_until(Some(probe))
    }

    fn start_daemon_until(&mut self, probe: Option<&Request>) -> Result<Duration> {
        if self.daemon.is_some() {
            bail!("the daemon of {} is already running", self.config.display());
        }
        self.starts += 1;
        let log = self.logs.join(format!("daemon-{}.log", self.starts));
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("cannot reopen {}", log.display()))?;
        let mut cmd = self.command(&["daemon"]);
        self.profiled = false;
        if let Some(data) = self.profile_next.take() {
            let plain = cmd;
            cmd = Command::new("perf");
            cmd.args(["record", "-g", "-q", "-o"]).arg(&data).arg("--");
            cmd.arg(plain.get_program()).args(plain.get_args());
            for v in SCRUBBED_ENV {
                cmd.env_remove(v);
            }
            cmd.stdin(Stdio::null());
            self.profiled = true;
        }
        cmd.stdout(out).stderr(err).process_group(0);
        let t = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {} daemon", self.bin.display()))?;
        self.daemon = Some(child);
        let mut last_error = None;
        loop {
            let ready = match probe {
                None => ws_ckpt::ipc::daemon_running(&self.socket),
                Some(req) if ws_ckpt::ipc::daemon_running(&self.socket) => {
                    match ws_ckpt::ipc::call(&self.socket, req, QUICK) {
                        Ok(_) => true,
                        Err(e) => {
                            last_error = Some(e.to_string());
                            false
                        }
                    }
                }
                Some(_) => false,
            };
            if ready {
                return Ok(t.elapsed());
            }
            if let Some(child) = self.daemon.as_mut() {
                if let Some(status) = child.try_wait().context("waiting for the daemon")? {
                    self.daemon = None;
                    bail!(
                        "the daemon exited ({status}) before answering; its log:\n{}",
                        tail(&log)
                    );
                }
            }
            if t.elapsed() > START_TIMEOUT {
                bail!(
                    "the daemon did not answer on {} within {START_TIMEOUT:?}{}",
                    self.socket.display(),
                    last_error
                        .map(|e| format!(" (last answer: {e})"))
                        .unwrap_or_default()
                );
            }
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The daemon's pid, when running.
    pub(crate) fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// The daemon's memory from `/proc/<pid>/status` (not of a daemon started under perf).
    pub(crate) fn daemon_status(&self) -> Result<ProcMemory> {
        if self.profiled {
            bail!("the daemon runs under perf; its memory is not the daemon's alone");
        }
        let pid = self
            .daemon_pid()
            .ok_or_else(|| anyhow!("the daemon is not running"))?;
        let path = format!("/proc/{pid}/status");
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        Ok(ProcMemory {
            vm_hwm_kib: status_kib(&text, "VmHWM:")
                .ok_or_else(|| anyhow!("no VmHWM line in {path}"))?,
            vm_rss_kib: status_kib(&text, "VmRSS:")
                .ok_or_else(|| anyhow!("no VmRSS line in {path}"))?,
        })
    }

    /// Stop the daemon cleanly (SIGTERM, wait; SIGKILL after a bound). Returns how long the
    /// clean stop took, `None` when no daemon was running.
    pub(crate) fn stop_daemon(&mut self) -> Result<Option<Duration>> {
        let Some(mut child) = self.daemon.take() else {
            return Ok(None);
        };
        let t = Instant::now();
        if let Ok(None) = child.try_wait() {
            // Under perf: the whole group (perf and the daemon it started), so that perf
            // writes its data after the daemon stopped.
            let id = child.id() as i32;
            let pid = nix::unistd::Pid::from_raw(if self.profiled { -id } else { id });
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        loop {
            if let Some(status) = child.try_wait().context("waiting for the daemon")? {
                if !status.success() {
                    eprintln!("ws-ckpt-bench: the daemon exited with {status}");
                }
                return Ok(Some(t.elapsed()));
            }
            if t.elapsed() > STOP_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the daemon did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed it");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Err(e) = self.stop_daemon() {
            eprintln!("ws-ckpt-bench: {e:#}");
        }
    }
}

/// Resident memory of a process, KiB.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcMemory {
    /// Peak resident set size (`VmHWM`).
    pub vm_hwm_kib: u64,
    /// Resident set size now (`VmRSS`).
    pub vm_rss_kib: u64,
}

/// `VmHWM:   12345 kB` → 12345 (for `key` = `"VmHWM:"`).
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_in_kib() {
        let status = "Name:\tws-ckpt\nVmPeak:\t  99999 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(12345));
        assert_eq!(status_kib(status, "VmRSS:"), Some(1000));
        assert_eq!(status_kib("Name:\tx\n", "VmHWM:"), None);
    }
}
