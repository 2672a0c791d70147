//! Harness for the upstream drop-in tests (`tests/compat_*.rs`, issue 11): drive the `ws-ckpt`
//! binary exactly as upstream's agent plugins (Hermes, OpenClaw) and its `e2e.sh` do — the same
//! argv, no `--config` argument, the same parsing of stdout, stderr and exit code — and report
//! every mismatch as "expected … / got …" so that the implementer can work test by test.
//!
//! What it does: [`Compat::native`] starts our daemon the usual way (`--config C daemon`) and
//! runs client commands with only the environment pointing at the test config
//! (`WS_CKPT_CONFIG`), so that the argv is the plugins' own. [`Compat::upstream`] mounts a
//! btrfs of its own first and starts the daemon as upstream's e2e script does (`daemon
//! --mount-path M --socket S`), with clients finding it through `WS_CKPT_SOCKET`. The parsers
//! below re-implement, in our own code, the decisions the plugins take on our output
//! (documented with line references in `docs/compat.md`).
//!
//! What it must not do: let any command reach the host's default paths. Every client command
//! gets `WS_CKPT_CONFIG` pointing into the test root (a binary that ignores `WS_CKPT_SOCKET`
//! then still only works inside the test root), and nothing here copies upstream code.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{bin_path, find_tool, run_tool, wait_until, Run, Spawned, TestEnv, RUN_TIMEOUT};

/// How long a daemon may take to open its socket (a debug build on a busy machine).
pub const DAEMON_START: Duration = Duration::from_secs(90);

/// Size of the btrfs the upstream-form tests mount before starting the daemon (as e2e.sh).
pub const UPSTREAM_FS_MIB: u64 = 256;

/// A test environment with a running daemon and a client that calls `ws-ckpt` as the plugins
/// do. Dropping it stops the daemon and tears everything down (see [`TestEnv`]).
pub struct Compat {
    /// The isolated environment (config, state, mounts) of this test.
    pub env: TestEnv,
    /// The daemon process (`None` for [`Compat::no_daemon`]).
    pub daemon: Option<Spawned>,
    /// `Some(S)` when the daemon was started in upstream form with `--socket S`; clients then
    /// get `WS_CKPT_SOCKET=S`.
    pub socket: Option<PathBuf>,
    /// `Some(M)` when the daemon was started with `--mount-path M` (a btrfs mounted by the
    /// test before the daemon started).
    pub upstream_mount: Option<PathBuf>,
}

impl Compat {
    /// Environment plus our daemon started natively (`ws-ckpt --config C daemon`); `None`
    /// when not root (after [`crate::require_root`]'s message).
    pub fn native(test: &str) -> Option<Compat> {
        let env = TestEnv::new(test)?;
        let daemon = env.spawn(&["daemon"], &[("WS_CKPT_LOG", "info")]);
        wait_for_socket(&daemon, &env.socket_path(), "ws-ckpt --config C daemon");
        Some(Compat {
            env,
            daemon: Some(daemon),
            socket: None,
            upstream_mount: None,
        })
    }

    /// Environment plus a btrfs of [`UPSTREAM_FS_MIB`] MiB mounted at `<root>/extra/upstream`
    /// (M) by the test, then the daemon started exactly as upstream's e2e script starts it:
    /// `ws-ckpt daemon --mount-path M --socket S --log-level info`, with `S` outside the
    /// config's runtime directory. Only `WS_CKPT_CONFIG` (state directory etc. inside the
    /// test root) is added to its environment.
    pub fn upstream(test: &str) -> Option<Compat> {
        let env = TestEnv::new(test)?;
        let mount = env.extra_btrfs("upstream", UPSTREAM_FS_MIB);
        let sock_dir = env.root.join("upstream-run");
        fs::create_dir_all(&sock_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", sock_dir.display()));
        let socket = sock_dir.join("ws-ckpt.sock");
        let mut cmd = bare_command(&env);
        cmd.arg("daemon")
            .arg("--mount-path")
            .arg(&mount)
            .arg("--socket")
            .arg(&socket)
            .args(["--log-level", "info"]);
        let daemon = env.spawn_command(cmd);
        wait_for_socket(
            &daemon,
            &socket,
            "ws-ckpt daemon --mount-path M --socket S --log-level info (upstream e2e.sh form)",
        );
        Some(Compat {
            env,
            daemon: Some(daemon),
            socket: Some(socket),
            upstream_mount: Some(mount),
        })
    }

    /// Environment without any daemon; clients get `WS_CKPT_SOCKET=<root>/no-daemon.sock`
    /// (nothing listens there) besides `WS_CKPT_CONFIG`.
    pub fn no_daemon(test: &str) -> Option<Compat> {
        let env = TestEnv::new(test)?;
        let socket = env.root.join("no-daemon.sock");
        Some(Compat {
            env,
            daemon: None,
            socket: Some(socket),
            upstream_mount: None,
        })
    }

    /// Stop the daemon with SIGTERM and wait (30 s) for it to exit; its exit status.
    pub fn stop_daemon(&self) -> std::process::ExitStatus {
        let d = self
            .daemon
            .as_ref()
            .expect("this environment has no daemon");
        d.term();
        d.wait_timeout(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("daemon did not stop on SIGTERM\n{}", d.stderr()))
    }

    /// A client command `ws-ckpt <args…>` as a plugin runs it: no `--config`, environment
    /// `WS_CKPT_CONFIG=<test config>` (and `WS_CKPT_SOCKET=S` in upstream form), stdin null.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = bare_command(&self.env);
        if let Some(s) = &self.socket {
            cmd.env("WS_CKPT_SOCKET", s);
        }
        cmd.args(args);
        cmd
    }

    /// Run a client command to completion (see [`Compat::command`]).
    pub fn cli(&self, args: &[&str]) -> Run {
        self.env.run_command(self.command(args), RUN_TIMEOUT)
    }

    /// [`Compat::cli`] with extra environment variables.
    pub fn cli_env(&self, args: &[&str], vars: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        cmd.envs(vars.iter().copied());
        self.env.run_command(cmd, RUN_TIMEOUT)
    }

    /// [`Compat::cli`] with `input` on stdin (a pipe-like file, not a terminal), as in
    /// `echo y | ws-ckpt recover -w ID`.
    pub fn cli_stdin(&self, args: &[&str], input: &str) -> Run {
        let mut cmd = self.command(args);
        cmd.stdin(self.input_file(input));
        self.env.run_command(cmd, RUN_TIMEOUT)
    }

    /// Run `ws-ckpt <args…>` on a pseudo-terminal (util-linux `script`), typing `input`.
    /// stdout and stderr arrive together in `stdout` (one terminal).
    pub fn cli_tty(&self, args: &[&str], input: &str) -> Run {
        let inner = self.command(args);
        let mut line = sh_quote(&bin_path().to_string_lossy());
        for a in args {
            line.push(' ');
            line.push_str(&sh_quote(a));
        }
        let mut cmd = Command::new(find_tool("script"));
        cmd.args(["-qec", &line, "/dev/null"]);
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.stdin(self.input_file(input));
        self.env.run_command(cmd, RUN_TIMEOUT)
    }

    /// Run `ws-ckpt <args…>` as another user (uid, gid), plugin-style.
    pub fn cli_as(&self, uid: u32, gid: u32, args: &[&str]) -> Run {
        use std::os::unix::process::CommandExt;
        let mut cmd = self.command(args);
        cmd.uid(uid).gid(gid);
        self.env.run_command(cmd, RUN_TIMEOUT)
    }

    fn input_file(&self, input: &str) -> File {
        let dir = self.env.logs_dir();
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = dir.join(format!("stdin-{n}.txt"));
        fs::write(&path, input).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        File::open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
    }

    /// A plain directory `<home>/<name>` holding the harness's sample tree; returns its path.
    pub fn plain_dir(&self, name: &str) -> String {
        let p = self.env.home.join(name);
        TestEnv::make_sample_tree(&p);
        p.display().to_string()
    }

    /// [`Compat::plain_dir`], then `init P` (asserted to succeed). Setup uses our positional
    /// form so that a test measures its own behaviour, not `init -w` (tested on its own).
    pub fn workspace(&self, name: &str) -> String {
        let p = self.plain_dir(name);
        let r = self.cli(&["init", &p]);
        expect(
            r.code() == Some(0) && Path::new(&p).is_symlink(),
            "init PATH (setup)",
            "exit 0 and PATH replaced by a symlink to the workspace subvolume",
            &r,
        );
        p
    }

    /// `checkpoint -w P -s ID` (asserted to succeed).
    pub fn checkpoint(&self, ws: &str, id: &str) {
        let r = self.cli(&["checkpoint", "-w", ws, "-s", id]);
        expect(
            r.code() == Some(0),
            "checkpoint -w WS -s ID (setup)",
            "exit 0",
            &r,
        );
    }

    /// The snapshots of `ws` as OpenClaw's list parser sees `list --workspace WS --format
    /// json`; `None` (with the reason) when the output is not the upstream array shape.
    pub fn openclaw_listed(&self, ws: &str) -> Result<Vec<PluginSnapshot>, String> {
        let r = self.cli(&["list", "--workspace", ws, "--format", "json"]);
        if r.code() != Some(0) {
            return Err(format!("exit {:?}\n{}", r.code(), r.describe()));
        }
        openclaw_parse_list(&r.stdout).map_err(|why| format!("{why}\n{}", r.describe()))
    }

    /// A process (`sleep`) whose working directory is `dir`, killed when dropped.
    pub fn occupant(&self, dir: &str) -> Spawned {
        let mut cmd = Command::new(find_tool("sleep"));
        cmd.arg("600").current_dir(dir).stdin(Stdio::null());
        let s = self.env.spawn_command(cmd);
        // The child must have entered its cwd before the caller proceeds.
        let cwd = PathBuf::from(format!("/proc/{}/cwd", s.pid()));
        wait_until(Duration::from_secs(5), || fs::read_link(&cwd).is_ok());
        s
    }
}

/// `ws-ckpt` with `NOTIFY_SOCKET` removed, `WS_CKPT_CONFIG=<test config>`, stdin null.
fn bare_command(env: &TestEnv) -> Command {
    let mut cmd = Command::new(bin_path());
    cmd.env_remove("NOTIFY_SOCKET")
        .env_remove("WS_CKPT_SOCKET")
        .env("WS_CKPT_CONFIG", &env.config)
        .stdin(Stdio::null());
    cmd
}

fn wait_for_socket(d: &Spawned, sock: &Path, form: &str) {
    let up = wait_until(DAEMON_START, || {
        if let Some(st) = d.try_wait() {
            panic!(
                "COMPAT daemon start\nexpected: `{form}` keeps running and serves on {}\n\
                 got: it exited with {st}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                sock.display(),
                d.stdout(),
                d.stderr()
            );
        }
        std::os::unix::net::UnixStream::connect(sock).is_ok()
    });
    if !up {
        panic!(
            "COMPAT daemon start\nexpected: `{form}` serves on {}\ngot: no socket after {:?}\n\
             --- stderr ---\n{}",
            sock.display(),
            DAEMON_START,
            d.stderr()
        );
    }
}

/// Single-quote `s` for `sh`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Fail the test unless `ok`, printing the behaviour, what was expected and the whole run.
#[track_caller]
pub fn expect(ok: bool, behaviour: &str, expected: &str, got: &Run) {
    if !ok {
        panic!(
            "COMPAT {behaviour}\nexpected: {expected}\ngot:\n{}",
            got.describe()
        );
    }
}

/// [`expect`] for a value that is not a [`Run`].
#[track_caller]
pub fn expect_value(ok: bool, behaviour: &str, expected: &str, got: &str) {
    if !ok {
        panic!("COMPAT {behaviour}\nexpected: {expected}\ngot: {got}");
    }
}

/// `s` without ANSI SGR sequences (`ESC [ … m`), as both plugins strip them.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The timing suffix OpenClaw appends to its tool results: the first whole line of stdout
/// that starts with `Completed in ` or `Failed after ` and has something after it.
pub fn extract_timing(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .find(|l| {
            ["Completed in ", "Failed after "]
                .iter()
                .any(|p| l.starts_with(p) && l.len() > p.len())
        })
        .map(str::to_string)
}

/// What Hermes' `_run_ws_ckpt_cmd` hands to the agent: trimmed stdout, or trimmed stderr when
/// stdout is empty.
pub fn hermes_output(r: &Run) -> String {
    let out = r.stdout.trim();
    if out.is_empty() {
        r.stderr.trim().to_string()
    } else {
        out.to_string()
    }
}

/// How OpenClaw classifies a failed command's stderr (case-sensitive substring tests, in its
/// order): the class name of the first rule that matches, or `"raw"`.
pub fn openclaw_error_class(stderr: &str) -> &'static str {
    let lower = stderr.to_lowercase();
    if stderr.contains("already exists") {
        "already-exists"
    } else if stderr.contains("active write") || stderr.contains("write operations") {
        "write-active"
    } else if stderr.contains("Insufficient disk space") || stderr.contains("insufficient") {
        "disk-space"
    } else if stderr.contains("cwd scan failed") {
        "cwd-scan"
    } else if stderr.contains("have cwd inside workspace") {
        "cwd-occupied"
    } else if stderr.contains("daemon is not running") || stderr.contains("daemon is starting up") {
        "daemon-down"
    } else if stderr.contains("not found") && lower.contains("snapshot") {
        "snapshot-not-found"
    } else if stderr.contains("not found") && lower.contains("workspace") {
        "workspace-not-found"
    } else {
        "raw"
    }
}

/// How Hermes classifies a failed command's stderr (on the lower-cased text, in its order).
pub fn hermes_error_class(stderr: &str) -> &'static str {
    let l = stderr.to_lowercase();
    if l.contains("binary not found") || l.contains("not found on path") {
        "cli-missing"
    } else if l.contains("timeout") {
        "timeout"
    } else if l.contains("already exists") {
        "already-exists"
    } else if l.contains("active write") || l.contains("write operations") {
        "write-active"
    } else if l.contains("insufficient") {
        "disk-space"
    } else if l.contains("cwd scan failed") {
        "cwd-scan"
    } else if l.contains("have cwd inside workspace") {
        "cwd-occupied"
    } else if l.contains("daemon is not running") || l.contains("daemon is starting up") {
        "daemon-down"
    } else if l.contains("not found") && l.contains("snapshot") {
        "snapshot-not-found"
    } else if l.contains("not found") && l.contains("workspace") {
        "workspace-not-found"
    } else {
        "raw"
    }
}

/// One snapshot as OpenClaw's list parser extracts it from `list --format json`.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSnapshot {
    /// `item.snapshot ?? item.id`.
    pub id: String,
    /// `meta.message ?? item.message`.
    pub message: Option<String>,
    /// `meta.metadata ?? item.metadata`.
    pub metadata: Option<Value>,
    /// `meta.created_at` (or the fallbacks).
    pub created_at: Option<String>,
}

/// Parse `list --format json` stdout as OpenClaw does: the whole of stdout must be JSON, and
/// only a top-level array yields snapshots (anything else is "no checkpoints").
pub fn openclaw_parse_list(stdout: &str) -> Result<Vec<PluginSnapshot>, String> {
    if stdout.trim().is_empty() {
        return Err("stdout is empty: the plugin would report \"No checkpoints found\"".into());
    }
    let v: Value = serde_json::from_str(stdout)
        .map_err(|e| format!("stdout is not one JSON document ({e}): the plugin logs a parse warning and shows no checkpoints"))?;
    let Some(items) = v.as_array() else {
        return Err(
            "stdout is JSON but not an array: the plugin shows \"No checkpoints found\"".into(),
        );
    };
    let text = |x: Option<&Value>| -> Option<String> {
        match x {
            Some(Value::Null) | None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        }
    };
    Ok(items
        .iter()
        .map(|item| {
            let meta = item.get("meta").cloned().unwrap_or(Value::Null);
            let pick = |k: &str| {
                meta.get(k)
                    .filter(|v| !v.is_null())
                    .or_else(|| item.get(k).filter(|v| !v.is_null()))
                    .cloned()
            };
            PluginSnapshot {
                id: text(
                    item.get("snapshot")
                        .filter(|v| !v.is_null())
                        .or(item.get("id")),
                )
                .unwrap_or_default(),
                message: text(pick("message").as_ref()),
                metadata: pick("metadata"),
                created_at: text(pick("created_at").as_ref()),
            }
        })
        .collect())
}

/// Effective auto-cleanup as both plugins read it from `config -w WS --format json`.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyView {
    /// Not a `ws-ckpt-policy/v1` document (with why).
    ParseError(String),
    /// `effective.is_disabled == true`.
    Disabled,
    /// Count mode with this count.
    Count(u64),
    /// Age mode with this raw duration.
    Age(String),
}

/// Parse a `ws-ckpt-policy/v1` document as the plugins do.
pub fn parse_policy(stdout: &str) -> PolicyView {
    let doc: Value = match serde_json::from_str(stdout) {
        Ok(v) => v,
        Err(e) => return PolicyView::ParseError(format!("not valid JSON: {e}")),
    };
    if !doc.is_object() {
        return PolicyView::ParseError("JSON root is not an object".into());
    }
    if doc["schema"] != "ws-ckpt-policy/v1" {
        return PolicyView::ParseError(format!("unknown schema {}", doc["schema"]));
    }
    let eff = &doc["effective"];
    if !eff.is_object() {
        return PolicyView::ParseError("missing `effective`".into());
    }
    if eff["is_disabled"] == true {
        return PolicyView::Disabled;
    }
    let keep = &eff["auto_cleanup_keep"];
    match keep["mode"].as_str() {
        Some("count") => match keep["count"].as_u64() {
            Some(n) => PolicyView::Count(n),
            None => PolicyView::ParseError(format!("bad count {}", keep["count"])),
        },
        Some("age") => match keep["raw"].as_str() {
            Some(raw) => PolicyView::Age(raw.to_string()),
            None => PolicyView::ParseError("`raw` is not a string".into()),
        },
        _ => PolicyView::ParseError(format!("unknown auto_cleanup_keep {keep}")),
    }
}

/// What `ws-ckpt status | grep "$PATH" | awk '{print $1}'` captures (as `$(…)` does: the
/// first field of every line containing `path`, joined by newlines, trailing newline cut).
pub fn grep_awk_first_field(stdout: &str, path: &str) -> String {
    stdout
        .lines()
        .filter(|l| l.contains(path))
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The ws_id SPEC §1 derives for `path` (`ws-` + 6 hex digits of SHA-256), by `sha256sum`.
pub fn ws_id_for(path: &str) -> String {
    let mut child = Command::new(find_tool("sha256sum"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(path.as_bytes())
        .expect("write to sha256sum");
    let out = child.wait_with_output().expect("sha256sum output");
    let hex = String::from_utf8_lossy(&out.stdout);
    format!("ws-{}", &hex[..6])
}

/// The snapshot subvolume names under `<snapshots_root>/<ws_id>` of a btrfs-loop layout
/// whose data root is `mount` (sorted).
pub fn snapshot_dirs(mount: &Path, ws_id: &str) -> Vec<String> {
    let dir = mount.join("snapshots").join(ws_id);
    let mut v: Vec<String> = fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A throwaway unprivileged user named `wsh_compat_<n>`, removed on drop.
pub struct CompatUser {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

impl CompatUser {
    /// Create the user (`useradd --no-create-home --user-group`).
    pub fn new(n: u32) -> CompatUser {
        let name = format!("wsh_compat_{n}");
        let _ = Command::new(find_tool("userdel")).arg(&name).output();
        run_tool(Command::new(find_tool("useradd")).args([
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
            &name,
        ]));
        let user = nix::unistd::User::from_name(&name)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("user {name} was just created but is not found"));
        CompatUser {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }
    }

    /// Give `path` (recursively) to this user.
    pub fn chown(&self, path: &str) {
        run_tool(
            Command::new(find_tool("chown"))
                .arg("-R")
                .arg(format!("{}:{}", self.uid, self.gid))
                .arg(path),
        );
    }
}

impl Drop for CompatUser {
    fn drop(&mut self) {
        let _ = Command::new(find_tool("userdel")).arg(&self.name).output();
    }
}

/// Data as ws-ckpt 0.5.0 leaves it for one btrfs-loop workspace, built by hand on the test's
/// own loop image (`<state>/btrfs-data.img`, mounted at `<root>/mnt` while building, then
/// unmounted and detached as after a reboot).
pub struct Upstream05Data {
    /// The user path (a symlink to `<mnt>/<ws_id>`).
    pub path: String,
    /// Its ws_id.
    pub ws_id: String,
    /// Snapshot IDs in creation order (`s1` parent of `s2`, `s2` the head).
    pub snapshots: Vec<String>,
}

impl Upstream05Data {
    /// Build the layout: subvolume `<mnt>/<ws_id>` holding `file.txt` ("v1" in `s1`, "v2" in
    /// `s2`, "live" now), read-only snapshots `<mnt>/snapshots/<ws_id>/{s1,s2}`, the symlink,
    /// `state.json` (version 1), `indexes/<ws_id>/index.json` with 0.5.0's lineage fields
    /// (`parent_id`, `child_ids`, `head`, `governed_evidence`, `guarded_rollbacks`,
    /// `recovered_orphans`) and `indexes/<ws_id>/policy.toml` with `policy`.
    pub fn build(env: &TestEnv, name: &str, policy: &str) -> Upstream05Data {
        let image = env.image.clone();
        let file = File::create(&image)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", image.display()));
        file.set_len(1024 * 1024 * 1024)
            .unwrap_or_else(|e| panic!("cannot size {}: {e}", image.display()));
        drop(file);
        run_tool(
            Command::new(find_tool("mkfs.btrfs"))
                .args(["-q", "-f"])
                .arg(&image),
        );
        let dev = run_tool(
            Command::new(find_tool("losetup"))
                .args(["-f", "--show"])
                .arg(&image),
        );
        let dev = String::from_utf8_lossy(&dev.stdout).trim().to_string();
        fs::create_dir_all(&env.mount).expect("create mount point");
        nix::mount::mount(
            Some(dev.as_str()),
            &env.mount,
            Some("btrfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("mount {dev} on {} failed: {e}", env.mount.display()));

        let path = env.home.join(name).display().to_string();
        let ws_id = ws_id_for(&path);
        let live = env.mount.join(&ws_id);
        let snaps_root = env.mount.join("snapshots");
        let snaps = snaps_root.join(&ws_id);
        let btrfs = find_tool("btrfs");
        run_tool(
            Command::new(&btrfs)
                .args(["subvolume", "create"])
                .arg(&live),
        );
        fs::create_dir_all(&snaps).expect("create snapshots dir");
        for (id, content) in [("s1", "v1\n"), ("s2", "v2\n")] {
            fs::write(live.join("file.txt"), content).expect("write file.txt");
            run_tool(
                Command::new(&btrfs)
                    .args(["subvolume", "snapshot", "-r"])
                    .arg(&live)
                    .arg(snaps.join(id)),
            );
        }
        fs::write(live.join("file.txt"), "live\n").expect("write file.txt");
        std::os::unix::fs::symlink(&live, &path).expect("create workspace symlink");

        let state = serde_json::json!({
            "version": 1,
            "backend": {"backend_type": "BtrfsLoop", "selection_method": "auto-detect",
                        "selected_at": "2026-07-01T10:00:00Z"},
            "paths": {"backend": "BtrfsLoop", "mount_path": env.mount, "data_root": env.mount,
                      "snapshots_root": snaps_root,
                      "loop_img": {"img_path": image, "img_size_bytes": 1073741824u64,
                                   "last_loop_device": dev}},
            "workspaces": [{"ws_id": ws_id, "workspace_path": path,
                            "registered_at": "2026-07-01T10:00:00Z",
                            "origin_backend": "BtrfsLoop"}]
        });
        fs::write(
            env.state_dir.join("state.json"),
            serde_json::to_string_pretty(&state).expect("serialize"),
        )
        .expect("write state.json");
        let index = serde_json::json!({
            "workspace_path": path,
            "snapshots": {
                "s1": {"message": "first", "metadata": {"event": "session_start", "turn": 0},
                       "pinned": false, "created_at": "2026-07-01T10:00:01.000000001Z",
                       "missing": false, "parent_id": null, "child_ids": ["s2"]},
                "s2": {"message": "second", "metadata": null, "pinned": true,
                       "created_at": "2026-07-01T10:00:02.000000002Z", "missing": false,
                       "parent_id": "s1", "child_ids": ["__live__"]}
            },
            "head": "s2",
            "governed_evidence": {},
            "guarded_rollbacks": {},
            "recovered_orphans": []
        });
        let idx_dir = env.state_dir.join("indexes").join(&ws_id);
        fs::create_dir_all(&idx_dir).expect("create index dir");
        fs::write(
            idx_dir.join("index.json"),
            serde_json::to_string_pretty(&index).expect("serialize"),
        )
        .expect("write index.json");
        fs::write(idx_dir.join("policy.toml"), policy).expect("write policy.toml");
        fs::set_permissions(
            idx_dir.join("policy.toml"),
            fs::Permissions::from_mode(0o600),
        )
        .expect("chmod policy.toml");

        // As after a reboot: nothing mounted, no loop device.
        nix::mount::umount2(&env.mount, nix::mount::MntFlags::empty())
            .unwrap_or_else(|e| panic!("umount {} failed: {e}", env.mount.display()));
        run_tool(Command::new(find_tool("losetup")).args(["-d", &dev]));
        Upstream05Data {
            path,
            ws_id,
            snapshots: vec!["s1".into(), "s2".into()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_line_is_found_like_the_plugin_regex() {
        assert_eq!(
            extract_timing("✓ done\nCompleted in 0.012s\n").as_deref(),
            Some("Completed in 0.012s")
        );
        assert_eq!(extract_timing("x Completed in 1s\n"), None);
        assert_eq!(extract_timing("Completed in \n"), None);
        assert_eq!(
            extract_timing("Failed after 2.000s").as_deref(),
            Some("Failed after 2.000s")
        );
    }

    #[test]
    fn list_parser_accepts_only_arrays() {
        let ok = r#"[{"id":"a","workspace":"/w","meta":{"message":"m","metadata":{"k":1},"pinned":false,"created_at":"t","missing":false}}]"#;
        let v = openclaw_parse_list(ok).unwrap();
        assert_eq!(v[0].id, "a");
        assert_eq!(v[0].message.as_deref(), Some("m"));
        assert_eq!(v[0].metadata, Some(serde_json::json!({"k": 1})));
        assert!(openclaw_parse_list(r#"{"workspaces":[]}"#).is_err());
        assert!(openclaw_parse_list("[]\nCompleted in 0.1s\n").is_err());
        assert!(openclaw_parse_list("").is_err());
    }

    #[test]
    fn error_classes_follow_the_plugins_order() {
        assert_eq!(
            openclaw_error_class("snapshot id 'x' already exists"),
            "already-exists"
        );
        assert_eq!(
            openclaw_error_class("workspace not found: /w (no snapshots)"),
            "snapshot-not-found"
        );
        assert_eq!(
            openclaw_error_class("workspace not found: /w"),
            "workspace-not-found"
        );
        assert_eq!(openclaw_error_class("Daemon is not running."), "raw");
        assert_eq!(hermes_error_class("Daemon is not running."), "daemon-down");
        assert_eq!(
            hermes_error_class("Refused: 1 process(es) have cwd inside workspace: PID 1"),
            "cwd-occupied"
        );
    }

    #[test]
    fn grep_awk_takes_first_field_of_each_matching_line() {
        let out = "  WORKSPACE PATH SNAPSHOTS\n  ws-abc123   /tmp/x/byid-ws   2\n";
        assert_eq!(grep_awk_first_field(out, "/tmp/x/byid-ws"), "ws-abc123");
        let two = "ws-1 /a/b 1\nnote: /a/b is fine\n";
        assert_eq!(grep_awk_first_field(two, "/a/b"), "ws-1\nnote:");
    }

    #[test]
    fn policy_parser_distinguishes_disabled_from_errors() {
        let doc = |eff: &str| format!(r#"{{"schema":"ws-ckpt-policy/v1","effective":{eff}}}"#);
        assert_eq!(
            parse_policy(&doc(r#"{"is_disabled":true}"#)),
            PolicyView::Disabled
        );
        assert_eq!(
            parse_policy(&doc(
                r#"{"is_disabled":false,"auto_cleanup_keep":{"mode":"count","count":5}}"#
            )),
            PolicyView::Count(5)
        );
        assert_eq!(
            parse_policy(&doc(
                r#"{"is_disabled":false,"auto_cleanup_keep":{"mode":"age","raw":"7d","secs":604800}}"#
            )),
            PolicyView::Age("7d".into())
        );
        assert!(matches!(
            parse_policy(r#"{"schema":"x"}"#),
            PolicyView::ParseError(_)
        ));
    }

    #[test]
    fn ansi_sequences_are_stripped() {
        assert_eq!(strip_ansi("\u{1b}[32m✓ ok\u{1b}[0m"), "✓ ok");
    }

    #[test]
    fn sh_quote_survives_quotes() {
        assert_eq!(sh_quote("a'b"), "'a'\\''b'");
    }
}
