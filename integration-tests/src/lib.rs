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
pub mod hostile_support;
mod process;
pub mod scratch;
pub mod tree_support;

pub use process::{Run, Spawned};
pub use scratch::{loops_under, make_loop_btrfs, mounts_under, LoopBtrfs, Scratch};

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::hash::Hasher;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use process::{kill_and_reap, read_lossy, tail};

pub mod torture_support;

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

/// Path of `ws-ckpt-full`, which the `ws-ckpt` front runs for every command but a plain
/// checkpoint: next to [`bin_path`].
///
/// # Panics
/// When it does not exist there.
pub fn full_bin_path() -> PathBuf {
    let front = bin_path();
    let path = front.with_file_name("ws-ckpt-full");
    if !path.is_file() {
        panic!(
            "ws-ckpt-full not found next to {}; run `cargo build --workspace` first",
            front.display()
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
pub(crate) fn sanitize(name: &str) -> String {
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

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
    scratch: Scratch,
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
        // /var/tmp when usable (a real disk, unlike a tmpfs /tmp, so direct I/O and size
        // percentages behave as on a host), else /tmp.
        let scratch = Scratch::create(
            &format!("{ROOT_PREFIX}{}-", sanitize(test)),
            &["/var/tmp", "/tmp"],
            "ws-ckpt-it",
        )
        .unwrap_or_else(|e| panic!("cannot create a test dir: {e}"));
        let root = scratch.root().to_path_buf();
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
            scratch,
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

    /// Where workspace `ws_id`'s subvolume is, as `resolve.rs` lays storage out:
    /// `<mount>/gates/<ws_id>/live` (each workspace behind its root-owned storage gate).
    pub fn ws_subvol(&self, ws_id: &str) -> PathBuf {
        self.mount.join("gates").join(ws_id).join("live")
    }

    /// `<root>/logs`, where the output of every run and spawned process goes.
    pub fn logs_dir(&self) -> PathBuf {
        self.owned_root.join("logs")
    }

    /// `<runtime_dir>/ws-ckpt.sock`.
    pub fn socket_path(&self) -> PathBuf {
        self.runtime_dir.join(ws_ckpt::ipc::SOCKET_NAME)
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
        let extra = self.owned_root.join("extra");
        fs::create_dir_all(&extra)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", extra.display()));
        make_loop_btrfs(&extra, name, size_mib)
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

impl TestEnv {
    fn cleanup(&mut self) {
        let panicking = std::thread::panicking();
        let children: Vec<_> = std::mem::take(&mut *lock(&self.children));
        for child in &children {
            kill_and_reap(child);
        }
        if panicking {
            self.dump_logs();
        }
        if std::env::var_os(KEEP_ENV).is_some() {
            eprintln!("ws-ckpt-it: {KEEP_ENV} set");
            self.scratch.keep = true;
        }
        self.scratch.teardown();
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
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string("/a/b"), "\"/a/b\"");
        assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        let v: toml_probe::Probe = toml_probe::parse(&format!("k = {}", toml_string("x\"\\\u{1}")));
        assert_eq!(v.0, "x\"\\\u{1}");
    }

    /// A tiny reader for `k = "…"` lines, enough to check the escaper round-trips without a
    /// TOML dependency in this crate.
    mod toml_probe {
        pub(super) struct Probe(pub String);
        pub(super) fn parse(line: &str) -> Probe {
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
