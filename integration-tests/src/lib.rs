//! Real-btrfs end-to-end test harness for ws-ckpt.
//!
//! What it does: gives every test an isolated [`TestEnv`] — a fresh directory under `/var/tmp`
//! (or `/tmp`) named `ws-ckpt-it-…` holding the config, state, runtime, mount and home
//! directories — runs the built `ws-ckpt` binary against it ([`TestEnv::run`],
//! [`TestEnv::spawn`]), builds extra btrfs filesystems on loop devices
//! ([`TestEnv::extra_btrfs`]) and compares directory trees ([`TestEnv::tree_digest`]). On drop
//! it kills the children it spawned, unmounts every mount under its root, detaches every loop
//! device backed by a file under its root and removes the directory, even when the test
//! panicked.
//!
//! What it must not do: touch anything outside its own root (no global mounts, no loop devices
//! it cannot prove are backed by its own files, never `/var/lib/ws-ckpt`, `/run/ws-ckpt` or
//! `/mnt/btrfs-workspace`), depend on the behaviour of the `ws-ckpt` binary, or panic in `Drop`.
//!
//! Helpers panic with a descriptive message on failure: a panic is how a test fails.

#![deny(missing_docs)]

pub mod compat_support;

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::hash::Hasher;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::MntFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Name prefix of every test root directory.
pub const ROOT_PREFIX: &str = "ws-ckpt-it-";

/// Default time limit for [`TestEnv::run`] and [`TestEnv::run_env`].
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Environment variables removed from every child so that the host's settings cannot leak
/// into a test (`WS_CKPT_CONFIG` would redirect the config; `NOTIFY_SOCKET` would make a
/// daemon talk to the test runner's systemd).
const SCRUBBED_ENV: &[&str] = &["WS_CKPT_CONFIG", "NOTIFY_SOCKET"];

/// Set this environment variable to keep each test root (after unmounting and detaching) for
/// post-mortem inspection.
pub const KEEP_ENV: &str = "WS_CKPT_IT_KEEP";

/// Set this environment variable to run the tests against another `ws-ckpt` binary.
pub const BIN_ENV: &str = "WS_CKPT_BIN";

/// `LOOP_CLR_FD` from `<linux/loop.h>`.
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;

/// Where external tools are looked for after `$PATH` (test runners often lack the sbin dirs).
const TOOL_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// Path of the built `ws-ckpt` binary: `<target dir>/<profile>/ws-ckpt`, derived from the
/// location of the running test binary (`<target>/<profile>/deps/…`). The environment variable
/// [`BIN_ENV`] overrides it.
///
/// # Panics
/// When the binary does not exist: "ws-ckpt binary not found at …; run `cargo build
/// --workspace` first".
pub fn bin_path() -> PathBuf {
    let path = match std::env::var_os(BIN_ENV) {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe()
                .unwrap_or_else(|e| panic!("cannot locate the running test binary: {e}"));
            bin_path_from_exe(&exe)
        }
    };
    if !path.is_file() {
        panic!(
            "ws-ckpt binary not found at {}; run `cargo build --workspace` first",
            path.display()
        );
    }
    path
}

/// `<profile dir>/ws-ckpt` for a test executable living in `<profile dir>/deps/` (or directly
/// in the profile dir).
fn bin_path_from_exe(exe: &Path) -> PathBuf {
    let mut dir = exe.parent().unwrap_or(Path::new("/")).to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir.join("ws-ckpt")
}

/// True when a test needing root may run (effective uid 0).
///
/// When not root: if the environment variable `CI` is set this panics ("real-btrfs tests must
/// run in CI: run as root"), otherwise it prints a loud `SKIPPED (needs root): <test>` to
/// stderr (bypassing libtest's output capture) and returns false.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("real-btrfs tests must run in CI: run as root (test {test})");
    }
    // Straight to fd 2: libtest captures `eprintln!` of passing tests, and a skip must be
    // visible without `--nocapture`.
    let banner = "=".repeat(65);
    let msg = format!("{banner}\nSKIPPED (needs root): {test}\n{banner}\n");
    let _ = io::stderr().lock().write_all(msg.as_bytes());
    false
}

/// Poll `cond` (every 20 ms) until it returns true or `timeout` passes; returns its last value.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every mount point at or below `root` in this process's mount namespace (from
/// `/proc/self/mountinfo`), deepest first; a path mounted several times appears several times.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let root = canonical_or_same(root);
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_else(|e| {
        eprintln!("ws-ckpt-it: cannot read /proc/self/mountinfo: {e}");
        String::new()
    });
    let mut found: Vec<PathBuf> = parse_mountinfo(&text)
        .into_iter()
        .filter(|m| is_under(m, &root))
        .collect();
    sort_deepest_first(&mut found);
    found
}

/// Every loop device (`/dev/loopN`) whose backing file lies at or below `root` (from
/// `/sys/block/loop*/loop/backing_file`, including backing files deleted since).
pub fn loops_under(root: &Path) -> Vec<PathBuf> {
    let root = canonical_or_same(root);
    let mut found = Vec::new();
    let entries = match fs::read_dir("/sys/block") {
        Ok(e) => e,
        Err(e) => {
            eprintln!("ws-ckpt-it: cannot read /sys/block: {e}");
            return found;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue; // not bound
        };
        if is_under(&backing_file_path(&backing), &root) {
            found.push(PathBuf::from("/dev").join(name));
        }
    }
    found.sort();
    found
}

/// Mount points (field 5) of `/proc/self/mountinfo` text, unescaped.
fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .collect()
}

/// Undo the kernel's octal escaping of space, tab, newline and backslash (`\040` …).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path in a sysfs `backing_file` line, without the trailing newline or " (deleted)".
fn backing_file_path(raw: &str) -> PathBuf {
    let line = raw.strip_suffix('\n').unwrap_or(raw);
    let line = line.strip_suffix(" (deleted)").unwrap_or(line);
    PathBuf::from(line)
}

/// `path` is `root` or inside it, compared component by component, for absolute paths only.
fn is_under(path: &Path, root: &Path) -> bool {
    path.is_absolute()
        && root.is_absolute()
        && root.components().count() > 1
        && !path.components().any(|c| c == Component::ParentDir)
        && path.starts_with(root)
}

fn sort_deepest_first(paths: &mut [PathBuf]) {
    paths.sort_by(|a, b| {
        b.components()
            .count()
            .cmp(&a.components().count())
            .then_with(|| a.cmp(b))
    });
}

fn canonical_or_same(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// A TOML basic string (with quotes) holding `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_path(p: &Path) -> String {
    toml_string(&p.to_string_lossy())
}

/// Reduce a test name to `[A-Za-z0-9_-]`, at most 40 characters.
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    if s.is_empty() {
        "x".to_string()
    } else {
        s
    }
}

/// Locate an external program in `$PATH`, then in `/usr/local/sbin`, `/usr/sbin`, `/sbin`,
/// `/usr/bin` and `/bin`.
///
/// # Panics
/// When it is nowhere, listing every place it looked.
pub fn find_tool(name: &str) -> PathBuf {
    let mut looked = Vec::new();
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path_var).chain(TOOL_DIRS.iter().map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        {
            return candidate;
        }
        looked.push(candidate.display().to_string());
    }
    panic!(
        "{name} not found (looked in: {}); install it (btrfs-progs / util-linux)",
        looked.join(", ")
    );
}

/// Run a helper command to completion, panicking with its command line, status, stdout and
/// stderr on failure. Returns its output.
#[track_caller]
pub fn run_tool(cmd: &mut Command) -> std::process::Output {
    let line = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {line}: {e}"));
    if !out.status.success() {
        panic!(
            "{line} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Run `btrfs ARGS…` (btrfs-progs, tests only), panicking with its stderr on failure.
#[track_caller]
pub fn btrfs(args: &[&str]) {
    run_tool(Command::new(find_tool("btrfs")).args(args));
}

/// `program` with [`SCRUBBED_ENV`] removed and stdin null.
fn scrubbed_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The result of one finished `ws-ckpt` (or other) invocation.
#[derive(Debug, Clone)]
pub struct Run {
    /// The command line, for messages.
    pub cmd: String,
    /// Exit code; `None` when the process was killed by a signal.
    pub status: Option<i32>,
    /// Everything written to stdout (lossy UTF-8).
    pub stdout: String,
    /// Everything written to stderr (lossy UTF-8).
    pub stderr: String,
}

impl Run {
    /// The exit code (`None` when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status
    }

    /// Assert exit code 0; on failure panics showing the command, stdout and stderr.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        if self.status != Some(0) {
            panic!(
                "expected success, got exit {:?}\n{}",
                self.status,
                self.describe()
            );
        }
        self
    }

    /// Assert a specific exit code; on mismatch panics showing the output.
    #[track_caller]
    pub fn assert_code(&self, expected: i32) -> &Self {
        if self.status != Some(expected) {
            panic!(
                "expected exit {expected}, got {:?}\n{}",
                self.status,
                self.describe()
            );
        }
        self
    }

    /// Parse stdout as JSON; panics showing the output when it is not JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not JSON ({e})\n{}", self.describe());
        })
    }

    /// Command, exit code, stdout and stderr as one block of text.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nexit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.cmd, self.status, self.stdout, self.stderr
        )
    }
}

/// A child process started by [`TestEnv::spawn`] whose output goes to files under
/// `<root>/logs`. Killed with SIGKILL and reaped on drop (and by the owning [`TestEnv`]'s
/// drop) if still running.
pub struct Spawned {
    child: Arc<Mutex<Child>>,
    pid: u32,
    cmd: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Spawned {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command line, for messages.
    pub fn cmd(&self) -> &str {
        &self.cmd
    }

    /// File receiving the child's stdout.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    /// File receiving the child's stderr.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// The exit status if the child has exited (reaping it), else `None`.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        let mut child = lock(&self.child);
        child
            .try_wait()
            .unwrap_or_else(|e| panic!("waiting for {} failed: {e}", self.cmd))
    }

    /// Send `sig` if the child has not been reaped yet (so a recycled pid is never hit).
    /// Returns whether the signal was sent.
    pub fn signal(&self, sig: Signal) -> bool {
        let mut child = lock(&self.child);
        match child.try_wait() {
            Ok(None) => nix::sys::signal::kill(Pid::from_raw(self.pid as i32), sig).is_ok(),
            _ => false,
        }
    }

    /// Send SIGTERM (without waiting).
    pub fn term(&self) -> bool {
        self.signal(Signal::SIGTERM)
    }

    /// SIGKILL the child (if still running) and reap it; returns its exit status.
    pub fn kill9(&self) -> ExitStatus {
        let mut child = lock(&self.child);
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if let Err(e) = child.kill() {
            panic!("SIGKILL to {} (pid {}) failed: {e}", self.cmd, self.pid);
        }
        child
            .wait()
            .unwrap_or_else(|e| panic!("reaping {} failed: {e}", self.cmd))
    }

    /// Wait up to `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.try_wait();
            status.is_some()
        });
        status
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        kill_and_reap(&self.child);
    }
}

/// SIGKILL and reap a child unless it was already reaped. Never panics.
fn kill_and_reap(child: &Mutex<Child>) {
    let mut child = lock(child);
    if let Ok(None) = child.try_wait() {
        if let Err(e) = child.kill() {
            eprintln!("ws-ckpt-it: SIGKILL to pid {} failed: {e}", child.id());
        }
        if let Err(e) = child.wait() {
            eprintln!("ws-ckpt-it: reaping pid {} failed: {e}", child.id());
        }
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Last `max` bytes of a file, lossy.
fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > max && f.seek(SeekFrom::Start(len - max)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// An isolated environment for one real-btrfs test: a private directory tree, a config whose
/// every path points inside it, and cleanup of all mounts, loop devices and processes on drop.
///
/// Layout: `etc/config.toml`, `etc/config.d/`, `state/` (the loop image goes to
/// `state/btrfs-data.img`), `run/`, `mnt` (not created: the daemon creates its mount point),
/// `home/` (a plain directory on the host filesystem for user workspaces), `logs/` (output of
/// every command run), `extra/` (filesystems from [`TestEnv::extra_btrfs`]).
pub struct TestEnv {
    /// The test root (canonical), `/var/tmp/ws-ckpt-it-<test>-XXXXXX`, mode 0755.
    pub root: PathBuf,
    /// `<root>/etc/config.toml`.
    pub config: PathBuf,
    /// `<root>/etc/config.d`.
    pub dropin_dir: PathBuf,
    /// `<root>/state` (the daemon's `state_dir`).
    pub state_dir: PathBuf,
    /// `<root>/run` (the daemon's `runtime_dir`).
    pub runtime_dir: PathBuf,
    /// `<root>/state/btrfs-data.img` (the btrfs-loop image; not pre-created).
    pub image: PathBuf,
    /// `<root>/mnt` (the btrfs-loop mount point; not pre-created).
    pub mount: PathBuf,
    /// `<root>/home`, a plain directory on the host filesystem.
    pub home: PathBuf,
    /// The directory and the root path cleanup acts on; never taken from the public fields.
    dir: Option<tempfile::TempDir>,
    owned_root: PathBuf,
    children: Mutex<Vec<Arc<Mutex<Child>>>>,
    log_seq: AtomicUsize,
}

impl TestEnv {
    /// Create the environment, or `None` when not root (after [`require_root`]'s message).
    ///
    /// Creates the directories and writes [`TestEnv::base_config`]: backend `btrfs-loop`
    /// with `img_size = 1` and `img_max_percent = 100`, so the daemon creates a 1 GiB sparse
    /// image (the harness pre-creates nothing).
    pub fn new(test: &str) -> Option<TestEnv> {
        if !require_root(test) {
            return None;
        }
        let base = temp_base();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{ROOT_PREFIX}{}-", sanitize(test)))
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("cannot create a test dir under {}: {e}", base.display()));
        let root = fs::canonicalize(dir.path())
            .unwrap_or_else(|e| panic!("cannot canonicalize {}: {e}", dir.path().display()));
        let env = TestEnv {
            config: root.join("etc/config.toml"),
            dropin_dir: root.join("etc/config.d"),
            state_dir: root.join("state"),
            runtime_dir: root.join("run"),
            image: root.join("state/btrfs-data.img"),
            mount: root.join("mnt"),
            home: root.join("home"),
            owned_root: root.clone(),
            root,
            dir: Some(dir),
            children: Mutex::new(Vec::new()),
            log_seq: AtomicUsize::new(0),
        };
        // World-traversable like the real /var/lib, /run and /home, so that tests running
        // clients as unprivileged users can reach the socket and their workspaces.
        for d in [&env.root, &env.state_dir, &env.runtime_dir, &env.home] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
            fs::set_permissions(d, fs::Permissions::from_mode(0o755))
                .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", d.display()));
        }
        for d in [env.dropin_dir.clone(), env.logs_dir()] {
            fs::create_dir_all(&d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
        }
        env.write_config("");
        Some(env)
    }

    /// `<root>/logs`, where the output of every run and spawned process goes.
    pub fn logs_dir(&self) -> PathBuf {
        self.owned_root.join("logs")
    }

    /// `<runtime_dir>/ws-ckpt.sock`.
    pub fn socket_path(&self) -> PathBuf {
        self.runtime_dir.join("ws-ckpt.sock")
    }

    /// The standard config: `[daemon]` with `state_dir` and `runtime_dir`, `[backend]
    /// type = "btrfs-loop"` and `[backend.btrfs-loop]` with `image`, `mount`, `img_size = 1`
    /// (GiB) and `img_max_percent = 100`. Every path is under the root.
    pub fn base_config(&self) -> String {
        format!(
            "# written by the ws-ckpt integration-test harness\n\
             [daemon]\n\
             state_dir = {}\n\
             runtime_dir = {}\n\
             \n\
             [backend]\n\
             type = \"btrfs-loop\"\n\
             \n\
             [backend.btrfs-loop]\n\
             image = {}\n\
             mount = {}\n\
             img_size = 1\n\
             img_max_percent = 100\n\
             legacy_image = {}\n",
            toml_path(&self.state_dir),
            toml_path(&self.runtime_dir),
            toml_path(&self.image),
            toml_path(&self.mount),
            toml_path(&self.legacy_image()),
        )
    }

    /// Where this environment's pre-FHS (ws-ckpt ≤ 0.2) image path points: `<root>/data/ws-ckpt/btrfs-data.img`.
    pub fn legacy_image(&self) -> PathBuf {
        self.root.join("data/ws-ckpt/btrfs-data.img")
    }

    /// Rewrite the config file with [`TestEnv::base_config`] plus `extra` appended verbatim.
    pub fn write_config(&self, extra: &str) {
        let mut text = self.base_config();
        if !extra.is_empty() {
            text.push('\n');
            text.push_str(extra);
            if !extra.ends_with('\n') {
                text.push('\n');
            }
        }
        fs::write(&self.config, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.config.display()));
    }

    /// A `ws-ckpt --config <config> <args…>` command with `WS_CKPT_CONFIG` and
    /// `NOTIFY_SOCKET` removed and stdin null, for tests that need to customise it (e.g. run
    /// as another user with `CommandExt::uid`) before [`TestEnv::run_command`].
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = scrubbed_command(&bin_path());
        cmd.arg("--config").arg(&self.config).args(args);
        cmd
    }

    /// Run `ws-ckpt --config <config> <args…>` to completion (120 s limit, then SIGKILL and a
    /// panic).
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    /// [`TestEnv::run`] with extra environment variables.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied());
        self.run_command(cmd, RUN_TIMEOUT)
    }

    /// [`TestEnv::run_env`] as another user (uid, gid; std drops the supplementary groups when
    /// root switches uid, so build the command with [`TestEnv::command`] for group tests).
    pub fn run_as(&self, uid: u32, gid: u32, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied()).uid(uid).gid(gid);
        self.run_command(cmd, RUN_TIMEOUT)
    }

    /// Run any command to completion with output captured to files under `<root>/logs`
    /// (so a grandchild keeping the output open cannot hang the test).
    ///
    /// # Panics
    /// When it cannot start, or after killing it (SIGKILL) when it runs longer than `timeout`.
    pub fn run_command(&self, mut cmd: Command, timeout: Duration) -> Run {
        let line = format!("{cmd:?}");
        eprintln!("$ {line}");
        let (out_path, err_path) = self.log_paths(&cmd);
        cmd.stdout(self.create_log(&out_path))
            .stderr(self.create_log(&err_path));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {line}: {e}"));
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(e) => panic!("waiting for {line} failed: {e}"),
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let run = Run {
                    cmd: line,
                    status: None,
                    stdout: read_lossy(&out_path),
                    stderr: read_lossy(&err_path),
                };
                panic!("timed out after {timeout:?}; killed\n{}", run.describe());
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        };
        Run {
            cmd: line,
            status: status.code(),
            stdout: read_lossy(&out_path),
            stderr: read_lossy(&err_path),
        }
    }

    /// Start `ws-ckpt --config <config> <args…>` without waiting (daemons, kill -9 tests).
    /// Output goes to files under `<root>/logs`.
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> Spawned {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied());
        self.spawn_command(cmd)
    }

    /// Start any command without waiting, output to files under `<root>/logs`; it is killed
    /// and reaped when the returned handle or this environment is dropped.
    pub fn spawn_command(&self, mut cmd: Command) -> Spawned {
        let line = format!("{cmd:?}");
        eprintln!("$ {line} &");
        let (stdout_path, stderr_path) = self.log_paths(&cmd);
        cmd.stdout(self.create_log(&stdout_path))
            .stderr(self.create_log(&stderr_path));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {line}: {e}"));
        let pid = child.id();
        let child = Arc::new(Mutex::new(child));
        lock(&self.children).push(Arc::clone(&child));
        Spawned {
            child,
            pid,
            cmd: line,
            stdout_path,
            stderr_path,
        }
    }

    fn log_paths(&self, cmd: &Command) -> (PathBuf, PathBuf) {
        let n = self.log_seq.fetch_add(1, Ordering::Relaxed);
        let program = Path::new(cmd.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let first = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .find(|a| !a.starts_with('-') && !a.starts_with('/'))
            .unwrap_or_default();
        let stem = format!("{n:03}-{}-{}", sanitize(&program), sanitize(&first));
        let logs = self.logs_dir();
        (
            logs.join(format!("{stem}.stdout")),
            logs.join(format!("{stem}.stderr")),
        )
    }

    fn create_log(&self, path: &Path) -> File {
        File::create(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()))
    }

    /// Make an independent btrfs filesystem of `size_mib` MiB (at least ~128: mkfs.btrfs
    /// refuses smaller): a sparse image `<root>/extra/<name>.img` attached with
    /// `losetup -f --show` and mounted at `<root>/extra/<name>`, which is returned. Torn down
    /// when the environment is dropped.
    pub fn extra_btrfs(&self, name: &str, size_mib: u64) -> PathBuf {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            panic!("extra_btrfs: bad name {name:?}; use a plain file name");
        }
        let extra = self.owned_root.join("extra");
        let image = extra.join(format!("{name}.img"));
        let mnt = extra.join(name);
        fs::create_dir_all(&mnt).unwrap_or_else(|e| panic!("cannot create {}: {e}", mnt.display()));
        let file = File::create_new(&image)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", image.display()));
        file.set_len(size_mib * 1024 * 1024)
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
        let dev = String::from_utf8_lossy(&dev.stdout);
        let dev = dev.trim();
        if !dev.starts_with("/dev/loop") {
            panic!(
                "losetup printed {dev:?} for {}; expected /dev/loopN",
                image.display()
            );
        }
        nix::mount::mount(
            Some(dev),
            &mnt,
            Some("btrfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("mount {dev} on {} failed: {e}", mnt.display()));
        mnt
    }

    /// Create a sample tree under `dir` (created if missing): nested directories with small
    /// files, a 1 MiB file, an executable, a relative symlink, a hard link and an empty
    /// directory.
    pub fn make_sample_tree(dir: &Path) {
        let write = |rel: &str, data: &[u8]| {
            let p = dir.join(rel);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
            }
            fs::write(&p, data).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
        };
        write("README.txt", b"sample workspace\n");
        write("src/main.rs", b"fn main() { println!(\"hello\"); }\n");
        write("src/deep/nested/dir/leaf.txt", b"leaf\n");
        let big: Vec<u8> = (0..1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        write("data/big.bin", &big);
        write("bin/run.sh", b"#!/bin/sh\necho run\n");
        let exec = dir.join("bin/run.sh");
        fs::set_permissions(&exec, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", exec.display()));
        let link = dir.join("link-to-readme");
        std::os::unix::fs::symlink("README.txt", &link)
            .unwrap_or_else(|e| panic!("cannot create symlink {}: {e}", link.display()));
        let hard = dir.join("src/hardlink-to-main.rs");
        fs::hard_link(dir.join("src/main.rs"), &hard)
            .unwrap_or_else(|e| panic!("cannot create hard link {}: {e}", hard.display()));
        let empty = dir.join("empty");
        fs::create_dir_all(&empty)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", empty.display()));
    }

    /// Describe every entry below `dir` (following `dir` itself if it is a symlink, but no
    /// symlink inside): relative path → `dir mode=…`, `file mode=… size=… hash=…`,
    /// `symlink -> target` or `other mode=…`. The hash is std's `DefaultHasher` over the
    /// content: fine for equality checks, not cryptographic. `dir` itself is not listed.
    pub fn tree_digest(dir: &Path) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        digest_into(dir, Path::new(""), &mut out);
        out
    }
}

fn digest_into(base: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let here = base.join(rel);
    let entries =
        fs::read_dir(&here).unwrap_or_else(|e| panic!("cannot list {}: {e}", here.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", here.display()));
        let rel_child = rel.join(entry.file_name());
        let path = base.join(&rel_child);
        let meta = fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
        let mode = meta.mode() & 0o7777;
        let ft = meta.file_type();
        let desc = if ft.is_symlink() {
            let target = fs::read_link(&path)
                .unwrap_or_else(|e| panic!("cannot read link {}: {e}", path.display()));
            format!("symlink -> {}", target.display())
        } else if ft.is_dir() {
            digest_into(base, &rel_child, out);
            format!("dir mode={mode:04o}")
        } else if ft.is_file() {
            let data =
                fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let mut h = DefaultHasher::new();
            h.write(&data);
            format!(
                "file mode={mode:04o} size={} hash={:016x}",
                data.len(),
                h.finish()
            )
        } else {
            format!("other mode={mode:04o}")
        };
        out.insert(rel_child, desc);
    }
}

/// `/var/tmp` when usable (a real disk, unlike a tmpfs `/tmp`, so direct I/O and size
/// percentages behave as on a host), else `/tmp`.
fn temp_base() -> PathBuf {
    let var_tmp = Path::new("/var/tmp");
    if var_tmp.is_dir() && nix::unistd::access(var_tmp, nix::unistd::AccessFlags::W_OK).is_ok() {
        canonical_or_same(var_tmp)
    } else {
        canonical_or_same(Path::new("/tmp"))
    }
}

/// Refuse to clean up anything but a directory this harness could have created: absolute,
/// named `ws-ckpt-it-…`, directly inside `/var/tmp` or `/tmp`.
fn check_owned_root(root: &Path) -> Result<(), String> {
    let name_ok = root
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(ROOT_PREFIX) && n.len() > ROOT_PREFIX.len());
    let parent_ok = root.parent().is_some_and(|p| {
        [Path::new("/var/tmp"), Path::new("/tmp")]
            .iter()
            .any(|b| p == *b || p == canonical_or_same(b))
    });
    let clean = !root
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir));
    if root.is_absolute() && name_ok && parent_ok && clean {
        Ok(())
    } else {
        Err(format!(
            "{} is not a {ROOT_PREFIX}* directory in /var/tmp or /tmp",
            root.display()
        ))
    }
}

/// Unmount everything under `root`, deepest first; EBUSY → lazy detach. Returns the mounts
/// still present afterwards.
fn unmount_all_under(root: &Path) -> Vec<PathBuf> {
    for _pass in 0..8 {
        let mounts = mounts_under(root);
        if mounts.is_empty() {
            return mounts;
        }
        for m in &mounts {
            if !is_under(m, root) {
                eprintln!(
                    "ws-ckpt-it: refusing to unmount {} (outside {})",
                    m.display(),
                    root.display()
                );
                continue;
            }
            match nix::mount::umount2(m, MntFlags::empty()) {
                Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
                Err(Errno::EBUSY) => {
                    eprintln!("ws-ckpt-it: {} busy; detaching lazily", m.display());
                    if let Err(e) = nix::mount::umount2(m, MntFlags::MNT_DETACH) {
                        eprintln!("ws-ckpt-it: lazy unmount of {} failed: {e}", m.display());
                    }
                }
                Err(e) => eprintln!("ws-ckpt-it: unmount of {} failed: {e}", m.display()),
            }
        }
    }
    mounts_under(root)
}

/// Detach every loop device backed by a file under `root`; returns those still attached after
/// a short wait (autoclear and lazy detach complete asynchronously).
fn detach_loops_under(root: &Path) -> Vec<PathBuf> {
    for dev in loops_under(root) {
        if let Err(e) = clear_loop(&dev) {
            eprintln!("ws-ckpt-it: detaching {} failed: {e}", dev.display());
        }
    }
    wait_until(Duration::from_secs(5), || loops_under(root).is_empty());
    loops_under(root)
}

fn clear_loop(dev: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = File::open(dev)?;
    // SAFETY: LOOP_CLR_FD takes no argument; the fd is valid for the duration of the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), LOOP_CLR_FD as _, 0) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENXIO) {
        return Ok(()); // already unbound
    }
    Err(err)
}

impl TestEnv {
    fn cleanup(&mut self) {
        let root = self.owned_root.clone();
        if let Err(why) = check_owned_root(&root) {
            eprintln!("ws-ckpt-it: NOT cleaning up: {why}");
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
            return;
        }
        let panicking = std::thread::panicking();
        let children: Vec<_> = std::mem::take(&mut *lock(&self.children));
        for child in &children {
            kill_and_reap(child);
        }
        if panicking {
            self.dump_logs();
        }
        let mounts = unmount_all_under(&root);
        let loops = detach_loops_under(&root);
        if !loops.is_empty() {
            let list: Vec<_> = loops.iter().map(|l| l.display().to_string()).collect();
            eprintln!(
                "ws-ckpt-it: loop devices still attached: {}",
                list.join(", ")
            );
        }
        let Some(dir) = self.dir.take() else { return };
        if !mounts.is_empty() {
            let list: Vec<_> = mounts.iter().map(|m| m.display().to_string()).collect();
            eprintln!(
                "ws-ckpt-it: still mounted under {}: {}; leaving the directory in place",
                root.display(),
                list.join(", ")
            );
            let _ = dir.keep();
            return;
        }
        if std::env::var_os(KEEP_ENV).is_some() {
            eprintln!("ws-ckpt-it: {KEEP_ENV} set; keeping {}", root.display());
            let _ = dir.keep();
            return;
        }
        if let Err(e) = dir.close() {
            eprintln!("ws-ckpt-it: removing {} failed: {e}", root.display());
        }
    }

    /// On a failing test, print the tail of every log so the cause is in the test output.
    fn dump_logs(&self) {
        let Ok(entries) = fs::read_dir(self.logs_dir()) else {
            return;
        };
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let text = tail(&p, 4096);
            if !text.trim().is_empty() {
                eprintln!("----- {} (tail) -----\n{}", p.display(), text);
            }
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.cleanup()));
        if result.is_err() {
            eprintln!(
                "ws-ckpt-it: cleanup of {} panicked; mounts or loop devices may be left",
                self.owned_root.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_path_is_next_to_deps_dir() {
        assert_eq!(
            bin_path_from_exe(Path::new("/t/debug/deps/harness_selftest-abc")),
            PathBuf::from("/t/debug/ws-ckpt")
        );
        assert_eq!(
            bin_path_from_exe(Path::new("/t/release/some-test")),
            PathBuf::from("/t/release/ws-ckpt")
        );
    }

    #[test]
    fn mountinfo_unescapes_mount_points() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:5 / /var/tmp/ws-ckpt-it-a/back\\134slash rw - btrfs /dev/loop3 rw\n";
        assert_eq!(
            parse_mountinfo(text),
            vec![
                PathBuf::from("/mnt/with space"),
                PathBuf::from("/var/tmp/ws-ckpt-it-a/back\\slash")
            ]
        );
        assert_eq!(unescape_mountinfo("a\\011b\\012"), "a\tb\n");
        assert_eq!(unescape_mountinfo("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn is_under_compares_components_not_prefixes() {
        let root = Path::new("/var/tmp/ws-ckpt-it-abc");
        assert!(is_under(Path::new("/var/tmp/ws-ckpt-it-abc"), root));
        assert!(is_under(Path::new("/var/tmp/ws-ckpt-it-abc/mnt/x"), root));
        assert!(!is_under(Path::new("/var/tmp/ws-ckpt-it-abcd"), root));
        assert!(!is_under(Path::new("/var/tmp"), root));
        assert!(!is_under(Path::new("/var/tmp/ws-ckpt-it-abc/../x"), root));
        assert!(!is_under(Path::new("relative/x"), root));
        assert!(!is_under(Path::new("/anything"), Path::new("/")));
    }

    #[test]
    fn deepest_mounts_come_first() {
        let mut v = vec![
            PathBuf::from("/r/a"),
            PathBuf::from("/r/a/b/c"),
            PathBuf::from("/r/a/b"),
        ];
        sort_deepest_first(&mut v);
        assert_eq!(v, ["/r/a/b/c", "/r/a/b", "/r/a"].map(PathBuf::from));
    }

    #[test]
    fn backing_file_strips_newline_and_deleted() {
        assert_eq!(
            backing_file_path("/var/tmp/x/img (deleted)\n"),
            PathBuf::from("/var/tmp/x/img")
        );
        assert_eq!(backing_file_path("/a b/img\n"), PathBuf::from("/a b/img"));
    }

    #[test]
    fn owned_root_check_rejects_foreign_paths() {
        assert!(check_owned_root(Path::new("/var/tmp/ws-ckpt-it-t-1234")).is_ok());
        assert!(check_owned_root(Path::new("/tmp/ws-ckpt-it-t-1234")).is_ok());
        assert!(check_owned_root(Path::new("/")).is_err());
        assert!(check_owned_root(Path::new("/var/tmp")).is_err());
        assert!(check_owned_root(Path::new("/var/tmp/ws-ckpt-it-")).is_err());
        assert!(check_owned_root(Path::new("/var/lib/ws-ckpt-it-x")).is_err());
        assert!(check_owned_root(Path::new("/var/tmp/other")).is_err());
        assert!(check_owned_root(Path::new("/var/tmp/x/ws-ckpt-it-y")).is_err());
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string("/a/b"), "\"/a/b\"");
        assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        let v: toml_probe::Probe = toml_probe::parse(&format!("k = {}", toml_string("x\"\\\u{1}")));
        assert_eq!(v.0, "x\"\\\u{1}");
    }

    /// A tiny reader for `k = "…"` lines, enough to check the escaper round-trips without a
    /// TOML dependency in this crate.
    mod toml_probe {
        pub struct Probe(pub String);
        pub fn parse(line: &str) -> Probe {
            let s = line
                .strip_prefix("k = \"")
                .and_then(|s| s.strip_suffix('"'));
            let s = s.unwrap_or_else(|| panic!("not a k = \"…\" line: {line}"));
            let mut out = String::new();
            let mut chars = s.chars();
            while let Some(c) = chars.next() {
                if c != '\\' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some('u') => {
                        let hex: String = chars.by_ref().take(4).collect();
                        let n = u32::from_str_radix(&hex, 16).unwrap_or_else(|e| panic!("{e}"));
                        out.push(char::from_u32(n).unwrap_or('?'));
                    }
                    other => panic!("bad escape {other:?}"),
                }
            }
            Probe(out)
        }
    }

    #[test]
    fn commands_drop_host_config_and_notify_socket() {
        let cmd = scrubbed_command(Path::new("/bin/true"));
        let removed: Vec<_> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert!(
            removed.contains(&"WS_CKPT_CONFIG".to_string()),
            "{removed:?}"
        );
        assert!(
            removed.contains(&"NOTIFY_SOCKET".to_string()),
            "{removed:?}"
        );
    }

    #[test]
    fn sanitize_keeps_names_short_and_safe() {
        assert_eq!(sanitize("a::b c/d"), "a__b_c_d");
        assert_eq!(sanitize(""), "x");
        assert_eq!(sanitize(&"y".repeat(100)).len(), 40);
    }

    #[test]
    fn tree_digest_sees_content_mode_and_links() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("w");
        TestEnv::make_sample_tree(&d);
        let a = TestEnv::tree_digest(&d);
        assert!(a[Path::new("data/big.bin")].contains("size=1048576"));
        assert_eq!(a[Path::new("link-to-readme")], "symlink -> README.txt");
        assert_eq!(a[Path::new("empty")], "dir mode=0755");
        assert!(a[Path::new("bin/run.sh")].contains("mode=0755"));
        assert_eq!(
            a[Path::new("src/main.rs")],
            a[Path::new("src/hardlink-to-main.rs")]
        );
        assert!(a.contains_key(Path::new("src/deep/nested/dir/leaf.txt")));
        assert_eq!(TestEnv::tree_digest(&d), a, "digest must be deterministic");

        // Same size, different content.
        fs::write(d.join("README.txt"), b"sample workspacX\n").unwrap();
        let b = TestEnv::tree_digest(&d);
        assert_ne!(a[Path::new("README.txt")], b[Path::new("README.txt")]);

        // Mode change only.
        fs::set_permissions(
            d.join("src/deep/nested/dir/leaf.txt"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let c = TestEnv::tree_digest(&d);
        assert_ne!(b, c);

        // Through a top-level symlink (a workspace after init) the digest is the same.
        let via = tmp.path().join("via");
        std::os::unix::fs::symlink(&d, &via).unwrap();
        assert_eq!(TestEnv::tree_digest(&via), c);
    }

    #[test]
    fn run_reports_code_and_json() {
        let ok = Run {
            cmd: "x".into(),
            status: Some(0),
            stdout: "{\"a\":1}".into(),
            stderr: String::new(),
        };
        assert_eq!(ok.ok().json()["a"], 1);
        let bad = Run {
            cmd: "x".into(),
            status: Some(2),
            stdout: "nope".into(),
            stderr: "err".into(),
        };
        let msg = std::panic::catch_unwind(|| {
            bad.ok();
        })
        .unwrap_err();
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains("exit Some(2)") && msg.contains("nope") && msg.contains("err"),
            "{msg}"
        );
        assert!(std::panic::catch_unwind(|| bad.json()).is_err());
        bad.assert_code(2);
    }
}
