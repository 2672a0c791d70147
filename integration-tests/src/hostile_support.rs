//! Harness of the hostile-user suite (issue 7, SPEC §7.2/§7.3, `tests/hostile_*.rs`).
//!
//! What it does: [`Hostile::new`] gives a test a [`TestEnv`] with a running `ws-ckpt daemon`
//! (`[access] user_init = true`), three real unprivileged users created for the test
//! ([`TestUser`], names `wsh_host_<role><hex>`: `alice` the attacker and owner, `bob` another
//! user, `carol` the one `allow_users` names) whose homes (0700) live on the test directory's
//! filesystem, never the loop btrfs, so init and release copy; and root-owned [`Victims`] (a
//! stand-in for `/etc`, a 0700 directory holding a secret, a copy of `/bin/true` standing in for
//! a setuid target, a directory to be emptied). [`Hostile::assert_no_damage`] is the check run
//! after every attack: victims byte-, mode-, owner- and time-identical, no setuid/setgid file
//! the attacker could use anywhere under the test directory (mount included), the secret
//! nowhere in the homes or the mount, the daemon still answering root. [`Attacker`] drives the
//! `ws-ckpt-attacker` binary as a user.
//!
//! What it must not do: depend on how the fix lays out its storage or names its temporary
//! entries (victims, secrets and setuid files are found by walking, not by guessing paths),
//! point an attacker at anything outside the test directory, or leave a user, a process or a
//! mount behind (users are removed on drop, after the environment killed its children).

use crate::{find_tool, wait_until, Run, Spawned, TestEnv};
use serde_json::Value;
use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::fs;
use std::hash::Hasher;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Name prefix of every user this suite creates.
pub const USER_PREFIX: &str = "wsh_host_";

/// Rounds of each race test (default: per test, small enough for CI). Set e.g.
/// `WS_CKPT_HOSTILE_ROUNDS=200 WS_CKPT_HOSTILE_SECS=1800` for a long run.
pub const ROUNDS_ENV: &str = "WS_CKPT_HOSTILE_ROUNDS";

/// Time budget in seconds of each race test's loop (default: per test); the loop stops at the
/// round count or the budget, whichever comes first (at least one round always runs).
pub const SECS_ENV: &str = "WS_CKPT_HOSTILE_SECS";

/// Override of the attacker binary's path.
pub const ATTACKER_ENV: &str = "WS_CKPT_ATTACKER";

/// The round count of a race test: [`ROUNDS_ENV`] or `default`.
pub fn rounds(default: usize) -> usize {
    std::env::var(ROUNDS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// The time budget of a race test's loop: [`SECS_ENV`] or `default_secs`.
pub fn budget(default_secs: u64) -> Duration {
    Duration::from_secs(
        std::env::var(SECS_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(default_secs),
    )
}

/// Path of the `ws-ckpt-attacker` binary: [`ATTACKER_ENV`], else in the profile directory of
/// the running test (cargo builds a package's binaries before its integration tests), so that
/// `WS_CKPT_BIN` can point the suite at another `ws-ckpt` and keep this attacker.
pub fn attacker_bin() -> PathBuf {
    let p = match std::env::var_os(ATTACKER_ENV) {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe()
                .unwrap_or_else(|e| panic!("cannot locate the running test binary: {e}"));
            let mut dir = exe.parent().unwrap_or(Path::new("/")).to_path_buf();
            if dir.file_name().is_some_and(|n| n == "deps") {
                dir.pop();
            }
            dir.join("ws-ckpt-attacker")
        }
    };
    assert!(
        p.is_file(),
        "attacker binary not found at {}; run `cargo build -p ws-ckpt-integration-tests --bins` (or set {ATTACKER_ENV})",
        p.display()
    );
    p
}

fn rand_hex(bytes: usize) -> String {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let mut h = DefaultHasher::new();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.write_usize(SEQ.fetch_add(1, Ordering::Relaxed));
    let mut out = String::new();
    let mut x = h.finish();
    while out.len() < bytes * 2 {
        out.push_str(&format!("{x:016x}"));
        let mut h2 = DefaultHasher::new();
        h2.write_u64(x);
        x = h2.finish();
    }
    out.truncate(bytes * 2);
    out
}

/// `<prefix>-<24 random hex digits>`: a marker string no file holds by chance.
pub fn token(prefix: &str) -> String {
    format!("{prefix}-{}", rand_hex(12))
}

/// A TOML basic string holding `s` (same escaping as the harness' config writer).
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
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

/// A real unprivileged user created for one test (`useradd`, no login shell), with a 0700 home
/// it owns. Removed with `userdel` on drop.
pub struct TestUser {
    /// Login name (`wsh_host_<role><hex>`).
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid (a group of its own).
    pub gid: u32,
    /// Its home (mode 0700, owned by it).
    pub home: PathBuf,
}

impl TestUser {
    /// Create the user `wsh_host_<role><hex>` with its home at `<homes>/<name>`.
    ///
    /// # Panics
    /// When `useradd` keeps failing (the passwd lock is retried for a few seconds).
    pub fn create(role: &str, homes: &Path) -> TestUser {
        let name = format!("{USER_PREFIX}{role}{}", rand_hex(3));
        let home = homes.join(&name);
        let mut last = String::new();
        for attempt in 0..40 {
            let out = Command::new(find_tool("useradd"))
                .args([
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    "--user-group",
                ])
                .arg("--home-dir")
                .arg(&home)
                .arg(&name)
                .output()
                .unwrap_or_else(|e| panic!("cannot run useradd: {e}"));
            if out.status.success() {
                last.clear();
                break;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            // Another process holds the passwd lock: try again shortly.
            std::thread::sleep(Duration::from_millis(50 + 25 * attempt));
        }
        assert!(last.is_empty(), "useradd {name} failed: {last}");
        let user = nix::unistd::User::from_name(&name)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("user {name} not found right after useradd"));
        let u = TestUser {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home,
        };
        fs::create_dir_all(&u.home)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", u.home.display()));
        chown(&u.home, u.uid, u.gid);
        chmod(&u.home, 0o700);
        u
    }

    /// `<home>/<rel>`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.home.join(rel)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        for attempt in 0..40u64 {
            match Command::new(find_tool("userdel")).arg(&self.name).output() {
                Ok(o) if o.status.success() => return,
                Ok(o) => {
                    let err = String::from_utf8_lossy(&o.stderr);
                    if err.contains("does not exist") {
                        return;
                    }
                    if attempt == 39 {
                        eprintln!("ws-ckpt-hostile: userdel {} failed: {err}", self.name);
                    }
                }
                Err(e) => {
                    eprintln!("ws-ckpt-hostile: cannot run userdel: {e}");
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50 + 25 * attempt));
        }
    }
}

/// Remove `wsh_host_*` users left by a test run that was killed before its cleanup: those
/// whose home directory no longer exists (a live test's home always does).
pub fn sweep_stale_users() {
    let Ok(passwd) = fs::read_to_string("/etc/passwd") else {
        return;
    };
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || !f[0].starts_with(USER_PREFIX) {
            continue;
        }
        if !Path::new(f[5]).exists() {
            eprintln!("ws-ckpt-hostile: removing stale test user {}", f[0]);
            let _ = Command::new(find_tool("userdel")).arg(f[0]).output();
        }
    }
}

/// `chown` without following a symlink.
pub fn chown(p: &Path, uid: u32, gid: u32) {
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        p,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap_or_else(|e| panic!("cannot chown {}: {e}", p.display()));
}

/// `chmod` (the path is the test's own, never a symlink).
pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", p.display()));
}

fn write_file(p: &Path, data: &[u8], mode: u32) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
    }
    fs::write(p, data).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
    chmod(p, mode);
}

/// Describe every entry of a tree, `root` itself included (as the empty path): kind, mode (with
/// setuid/setgid/sticky), owner, size, mtime, ctime and a content hash (symlink: its target).
/// Never follows symlinks. Two equal digests mean byte-, mode- and owner-identical trees
/// that nobody wrote to, chmod-ed or chown-ed since (ctime catches a change undone later).
pub fn owned_digest(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let m = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) => {
                out.insert(rel, format!("unreadable: {e}"));
                continue;
            }
        };
        let ft = m.file_type();
        let what = if ft.is_symlink() {
            format!(
                "symlink -> {}",
                fs::read_link(&p)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default()
            )
        } else if ft.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                for e in rd.flatten() {
                    stack.push(rel.join(e.file_name()));
                }
            }
            "dir".to_string()
        } else if ft.is_file() {
            let mut h = DefaultHasher::new();
            h.write(&fs::read(&p).unwrap_or_default());
            format!("file hash={:016x}", h.finish())
        } else {
            "other".to_string()
        };
        out.insert(
            rel,
            format!(
                "{what} mode={:04o} uid={} gid={} size={} mtime={}.{:09} ctime={}.{:09}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                if ft.is_dir() { 0 } else { m.size() },
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            ),
        );
    }
    out
}

/// Lines describing how `after` differs from `before` (empty when equal).
pub fn digest_diff(
    base: &Path,
    before: &BTreeMap<PathBuf, String>,
    after: &BTreeMap<PathBuf, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => out.push(format!("VANISHED {}: was {v}", base.join(k).display())),
            Some(w) if w != v => out.push(format!(
                "CHANGED {}:\n      before: {v}\n      after:  {w}",
                base.join(k).display()
            )),
            _ => {}
        }
    }
    for (k, v) in after {
        if !before.contains_key(k) {
            out.push(format!("APPEARED {}: {v}", base.join(k).display()));
        }
    }
    out
}

/// Root-owned victims under `<test root>/victims` (mode 0755, like `/`).
pub struct Victims {
    /// `<root>/victims`.
    pub root: PathBuf,
    /// Stand-in for `/etc`: a 0755 root directory with `conf.d/` (0755) and files.
    pub etc: PathBuf,
    /// A 0700 root directory; `secret.txt` (0644, readable if the directory could be entered)
    /// and `inner/key` (0600) hold [`Victims::secret`].
    pub secret_dir: PathBuf,
    /// A root-owned copy of `/bin/true` (0755) standing in for a binary that must never
    /// become setuid.
    pub suid_target: PathBuf,
    /// A 0755 root directory with files and a subdirectory, that must never be emptied.
    pub wipe: PathBuf,
    /// The secret string (random per test).
    pub secret: String,
    before: BTreeMap<PathBuf, String>,
}

impl Victims {
    /// Create the victims (all owned by root) and record their digest.
    pub fn create(root: &Path) -> Victims {
        let v = root.join("victims");
        let secret = format!("WSH-SECRET-{}", rand_hex(12));
        fs::create_dir_all(&v).unwrap_or_else(|e| panic!("cannot create {}: {e}", v.display()));
        chmod(&v, 0o755);
        let etc = v.join("etc");
        write_file(&etc.join("conf.d/00-root.conf"), b"root = true\n", 0o644);
        write_file(&etc.join("conf.d/10-more.conf"), b"more = 1\n", 0o644);
        write_file(&etc.join("passwd"), b"root:x:0:0::/root:/bin/sh\n", 0o644);
        write_file(&etc.join("shadow"), b"root:*:1::::::\n", 0o640);
        chmod(&etc.join("conf.d"), 0o755);
        chmod(&etc, 0o755);
        let secret_dir = v.join("secret");
        write_file(
            &secret_dir.join("secret.txt"),
            format!("{secret}\n").as_bytes(),
            0o644,
        );
        write_file(
            &secret_dir.join("inner/key"),
            format!("key {secret}\n").as_bytes(),
            0o600,
        );
        chmod(&secret_dir.join("inner"), 0o755);
        chmod(&secret_dir, 0o700);
        let bin = v.join("bin");
        fs::create_dir_all(&bin).unwrap_or_else(|e| panic!("cannot create {}: {e}", bin.display()));
        chmod(&bin, 0o755);
        let suid_target = bin.join("suid-target");
        let truebin = ["/bin/true", "/usr/bin/true"]
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .expect("/bin/true");
        fs::copy(truebin, &suid_target)
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", truebin.display()));
        chmod(&suid_target, 0o755);
        let wipe = v.join("wipe");
        for i in 0..20 {
            write_file(
                &wipe.join(format!("keep-{i:02}")),
                format!("keep {i}\n").as_bytes(),
                0o644,
            );
        }
        write_file(&wipe.join("sub/deep"), b"deep\n", 0o644);
        chmod(&wipe.join("sub"), 0o755);
        chmod(&wipe, 0o755);
        let before = owned_digest(&v);
        Victims {
            root: v,
            etc,
            secret_dir,
            suid_target,
            wipe,
            secret,
            before,
        }
    }

    /// Every difference from the digest taken at creation.
    pub fn damage(&self) -> Vec<String> {
        digest_diff(&self.root, &self.before, &owned_digest(&self.root))
    }
}

/// Files under `roots` (never following symlinks) with a setuid bit not owned by `uid`, or a
/// setgid bit whose group is not `gid`: something the user could run with another identity.
pub fn foreign_setid_files(roots: &[&Path], uid: u32, gid: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = roots.iter().map(|p| p.to_path_buf()).collect();
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
                continue;
            }
            if !m.is_file() {
                continue;
            }
            let mode = m.mode();
            let bad_uid = mode & libc::S_ISUID != 0 && m.uid() != uid;
            let bad_gid = mode & libc::S_ISGID != 0 && m.gid() != gid;
            if bad_uid || bad_gid {
                out.push(format!(
                    "{} mode={:04o} uid={} gid={}",
                    p.display(),
                    mode & 0o7777,
                    m.uid(),
                    m.gid()
                ));
            }
        }
    }
    out
}

/// Regular files under `roots` (never following symlinks) whose first 16 MiB contain
/// `needle`, read as root.
pub fn files_containing(roots: &[&Path], needle: &str) -> Vec<PathBuf> {
    let needle = needle.as_bytes();
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = roots.iter().map(|p| p.to_path_buf()).collect();
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                let mut buf = Vec::new();
                let read = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&p)
                    .and_then(|f| f.take(16 << 20).read_to_end(&mut buf));
                if read.is_ok() && buf.windows(needle.len()).any(|w| w == needle) {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    out
}

/// Shape of a test tree built by [`build_tree`].
#[derive(Debug, Clone)]
pub struct TreeSpec {
    /// Files directly in the root.
    pub top_files: usize,
    /// Subdirectories of the root (`d000`, `d001`, …).
    pub subdirs: usize,
    /// Files in each subdirectory.
    pub files_per_dir: usize,
    /// Size of each small file.
    pub file_size: usize,
    /// Size of `0-big.bin` (incompressible data), 0 for none.
    pub big: u64,
    /// Mode of every file (setuid allowed: applied after the chown).
    pub file_mode: u32,
    /// Mode of every subdirectory.
    pub dir_mode: u32,
    /// Mode of the root.
    pub root_mode: u32,
    /// Text every small file starts with.
    pub tag: String,
}

impl Default for TreeSpec {
    fn default() -> Self {
        TreeSpec {
            top_files: 10,
            subdirs: 0,
            files_per_dir: 0,
            file_size: 1024,
            big: 0,
            file_mode: 0o644,
            dir_mode: 0o755,
            root_mode: 0o755,
            tag: "hostile test data".into(),
        }
    }
}

fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Write `size` bytes of incompressible data to the new file `p`, owned by `owner`, mode 0644.
pub fn write_big(p: &Path, size: u64, owner: &TestUser) {
    let mut f =
        fs::File::create_new(p).unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
    let chunk = pseudo_random(size ^ 0x5eed, 1 << 20);
    let mut left = size;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..k])
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
        left -= k as u64;
    }
    drop(f);
    chown(p, owner.uid, owner.gid);
    chmod(p, 0o644);
}

/// Build `dir` (must not exist) after `spec`, owned by `owner`: modes are set after the
/// ownership so that setuid bits survive.
pub fn build_tree(dir: &Path, owner: &TestUser, spec: &TreeSpec) {
    fs::create_dir(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    let small = |p: &Path, i: usize| {
        let mut data = format!("{} {i}\n", spec.tag).into_bytes();
        data.extend(pseudo_random(
            i as u64 + 1,
            spec.file_size.saturating_sub(data.len()),
        ));
        fs::write(p, data).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
    };
    let mut n = 0;
    for i in 0..spec.top_files {
        let p = dir.join(format!("f{i:05}"));
        small(&p, n);
        n += 1;
        files.push(p);
    }
    for d in 0..spec.subdirs {
        let sd = dir.join(format!("d{d:03}"));
        fs::create_dir(&sd).unwrap_or_else(|e| panic!("cannot create {}: {e}", sd.display()));
        for i in 0..spec.files_per_dir {
            let p = sd.join(format!("f{i:04}"));
            small(&p, n);
            n += 1;
            files.push(p);
        }
        dirs.push(sd);
    }
    if spec.big > 0 {
        let p = dir.join("0-big.bin");
        write_big(&p, spec.big, owner);
        files.push(p);
    }
    for p in files.iter().chain(dirs.iter()) {
        chown(p, owner.uid, owner.gid);
    }
    for p in &files {
        chmod(p, spec.file_mode);
    }
    for d in dirs.iter().skip(1) {
        chmod(d, spec.dir_mode);
    }
    chmod(dir, spec.root_mode);
}

/// A running `ws-ckpt-attacker` (as some user): wait for `READY`, prove it still runs, stop it
/// and read its statistics.
pub struct Attacker {
    proc: Spawned,
    stop_file: PathBuf,
    what: String,
}

impl Attacker {
    /// Wait until the attacker printed `READY`.
    ///
    /// # Panics
    /// When it exits first or takes longer than 60 s.
    pub fn wait_ready(&self) {
        let ok = wait_until(Duration::from_secs(60), || {
            if let Some(st) = self.proc.try_wait() {
                panic!(
                    "attacker {} exited with {st} before it was ready\n--- stderr ---\n{}",
                    self.what,
                    self.proc.stderr()
                );
            }
            self.proc.stdout().contains("READY")
        });
        assert!(ok, "attacker {} never got ready", self.what);
    }

    /// Panic unless the attacker is still running (so it ran during the whole operation).
    pub fn assert_running(&self, during: &str) {
        if let Some(st) = self.proc.try_wait() {
            panic!(
                "the attacker {} stopped ({st}) before the end of {during}: the attack did not cover the whole operation\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.what,
                self.proc.stdout(),
                self.proc.stderr()
            );
        }
    }

    /// Ask it to stop, wait (30 s at most) and return its statistics line.
    pub fn stop(self) -> Value {
        fs::write(&self.stop_file, b"stop\n")
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.stop_file.display()));
        let st = self.proc.wait_timeout(Duration::from_secs(30));
        let out = self.proc.stdout();
        let line = out.lines().rev().find(|l| l.starts_with('{'));
        match (st, line) {
            (Some(_), Some(l)) => serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("attacker {} printed bad stats {l:?}: {e}", self.what)),
            _ => panic!(
                "attacker {} did not stop with its statistics (status {st:?})\n--- stdout ---\n{out}\n--- stderr ---\n{}",
                self.what,
                self.proc.stderr()
            ),
        }
    }
}

/// Options of [`Hostile::new`].
#[derive(Debug, Clone)]
pub struct Setup {
    /// `[daemon] reconcile_interval`.
    pub reconcile_interval: String,
    /// Appended to the config verbatim (more tables).
    pub extra: String,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            reconcile_interval: "60s".into(),
            extra: String::new(),
        }
    }
}

/// One hostile-user test: environment, daemon, users, victims.
pub struct Hostile {
    /// The daemon (dropped first).
    pub daemon: Option<Spawned>,
    /// The environment (killed children, unmounted, removed on drop, before the users go).
    pub env: TestEnv,
    /// The attacker, owner of the workspaces under attack.
    pub alice: TestUser,
    /// Another user, who must learn and read nothing of alice's.
    pub bob: TestUser,
    /// The user alice's workspaces name in `allow_users` when a test grants it.
    pub carol: TestUser,
    /// Root-owned victims.
    pub victims: Victims,
    ctl: PathBuf,
    seq: AtomicUsize,
}

impl Hostile {
    /// Build everything and start the daemon; `None` when not root (after the loud skip).
    pub fn new(test: &str, setup: Setup) -> Option<Hostile> {
        let env = TestEnv::new(test)?;
        sweep_stale_users();
        let alice = TestUser::create("a", &env.home);
        let bob = TestUser::create("b", &env.home);
        let carol = TestUser::create("c", &env.home);
        let victims = Victims::create(&env.root);
        let ctl = env.root.join("ctl");
        fs::create_dir_all(&ctl).unwrap_or_else(|e| panic!("cannot create {}: {e}", ctl.display()));
        chmod(&ctl, 0o755);
        let mut h = Hostile {
            daemon: None,
            env,
            alice,
            bob,
            carol,
            victims,
            ctl,
            seq: AtomicUsize::new(0),
        };
        h.write_config(&setup);
        h.start_daemon();
        h.check_filesystems();
        Some(h)
    }

    /// Rewrite the config: the harness' base, `reconcile_interval`, `[access] user_init = true`,
    /// then `setup.extra`.
    pub fn write_config(&self, setup: &Setup) {
        let base = self.env.base_config().replacen(
            "[daemon]\n",
            &format!(
                "[daemon]\nreconcile_interval = {}\n",
                toml_str(&setup.reconcile_interval)
            ),
            1,
        );
        let text = format!("{base}\n[access]\nuser_init = true\n\n{}\n", setup.extra);
        fs::write(&self.env.config, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.env.config.display()));
    }

    /// Start `ws-ckpt daemon` and wait until root's `status` answers through it.
    pub fn start_daemon(&mut self) {
        let d = self.env.spawn(&["daemon"], &[("WS_CKPT_LOG", "info")]);
        let sock = self.env.socket_path();
        let up = wait_until(Duration::from_secs(90), || {
            if let Some(st) = d.try_wait() {
                panic!(
                    "daemon exited early with {st}\n--- stderr ---\n{}",
                    d.stderr()
                );
            }
            UnixStream::connect(&sock).is_ok()
        });
        assert!(
            up,
            "daemon did not open {} in time\n{}",
            sock.display(),
            d.stderr()
        );
        self.daemon = Some(d);
        self.root_status();
    }

    /// The homes must be on another filesystem than the btrfs, so that init and release copy.
    fn check_filesystems(&self) {
        let home = fs::metadata(&self.alice.home).expect("stat home").dev();
        let mnt = fs::metadata(&self.env.mount)
            .unwrap_or_else(|e| {
                panic!("the daemon did not mount {}: {e}", self.env.mount.display())
            })
            .dev();
        assert_ne!(
            home,
            mnt,
            "the homes ({}) must not be on the workspace btrfs ({})",
            self.alice.home.display(),
            self.env.mount.display()
        );
        let mount_fs = nix::sys::statfs::statfs(&self.env.mount)
            .unwrap_or_else(|e| panic!("statfs {}: {e}", self.env.mount.display()));
        assert!(
            mount_fs.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC,
            "{} is not btrfs",
            self.env.mount.display()
        );
        let mnt_fsid =
            nix::sys::statfs::statfs(&self.env.mount).map(|s| format!("{:?}", s.filesystem_id()));
        let home_fsid =
            nix::sys::statfs::statfs(&self.alice.home).map(|s| format!("{:?}", s.filesystem_id()));
        assert_ne!(
            mnt_fsid.ok(),
            home_fsid.ok(),
            "the homes share a filesystem with the workspace btrfs: nothing would be copied"
        );
    }

    /// `ws-ckpt ARGS…` as root (through the daemon).
    pub fn root(&self, args: &[&str]) -> Run {
        self.env.run(args)
    }

    /// `ws-ckpt ARGS…` as `user` (through the daemon), with `HOME` set to the user's home.
    pub fn as_user(&self, user: &TestUser, args: &[&str]) -> Run {
        let home = user.home.display().to_string();
        self.env
            .run_as(user.uid, user.gid, args, &[("HOME", home.as_str())])
    }

    /// `/bin/sh -c SCRIPT` as `user` (for moves and links a user makes in her own tree).
    #[track_caller]
    pub fn sh_as(&self, user: &TestUser, script: &str) -> Run {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .uid(user.uid)
            .gid(user.gid)
            .env("HOME", &user.home)
            .current_dir(&user.home);
        let r = self.env.run_command(cmd, Duration::from_secs(60));
        r.ok();
        r
    }

    /// Root's `status --format json` through the daemon.
    ///
    /// # Panics
    /// When it does not answer with a JSON report (the daemon is no longer serving).
    pub fn root_status(&self) -> Value {
        let r = self.root(&["--format", "json", "status"]);
        assert!(
            matches!(r.code(), Some(0) | Some(1) | Some(3)),
            "root's status did not answer: the daemon is no longer serving\n{}",
            r.describe()
        );
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| {
            panic!(
                "root's status printed no JSON ({e}): the daemon is no longer serving\n{}",
                r.describe()
            )
        })
    }

    /// The ws_id of the workspace at `path`, from root's status.
    ///
    /// # Panics
    /// When status does not list it.
    pub fn ws_id(&self, path: &Path) -> String {
        let st = self.root_status();
        find_ws_id(&st, path).unwrap_or_else(|| {
            panic!(
                "{} is not a workspace in root's status: {st:#}",
                path.display()
            )
        })
    }

    /// Start the attacker binary as `user` in `mode` with `args`; waits for `READY`.
    pub fn attacker(&self, user: &TestUser, mode: &str, args: &[&str], max_secs: u64) -> Attacker {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let stop_file = self.ctl.join(format!("stop-{n}"));
        let _ = fs::remove_file(&stop_file);
        let mut cmd = Command::new(attacker_bin());
        cmd.arg(mode)
            .args(args)
            .arg("--stop")
            .arg(&stop_file)
            .arg("--max-secs")
            .arg(max_secs.to_string())
            .uid(user.uid)
            .gid(user.gid)
            .env("HOME", &user.home)
            .current_dir(&user.home)
            .stdin(std::process::Stdio::null());
        let what = format!("{mode} (as {})", user.name);
        let a = Attacker {
            proc: self.env.spawn_command(cmd),
            stop_file,
            what,
        };
        a.wait_ready();
        a
    }

    /// Run the attacker binary once as `user` in a one-shot mode (`probe`, `send`) and return
    /// its statistics line.
    pub fn attacker_once(&self, user: &TestUser, mode: &str, args: &[&str]) -> Value {
        let mut cmd = Command::new(attacker_bin());
        cmd.arg(mode)
            .args(args)
            .uid(user.uid)
            .gid(user.gid)
            .current_dir(&user.home);
        let r = self.env.run_command(cmd, Duration::from_secs(120));
        let line = r.stdout.lines().rev().find(|l| l.starts_with('{'));
        match line {
            Some(l) => {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad attacker output {l:?}: {e}"))
            }
            None => panic!("attacker {mode} printed no statistics\n{}", r.describe()),
        }
    }

    /// A file under the control directory (root-owned, world-readable) holding `text`.
    pub fn ctl_file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.ctl.join(name);
        fs::write(&p, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
        chmod(&p, 0o644);
        p
    }

    /// Everything a security failure would leave, as readable lines: damaged victims, setuid or
    /// setgid files the attacker could use, copies of the secret in the homes or the mount, a
    /// daemon that no longer answers root.
    pub fn damage(&self) -> Vec<String> {
        let mut out = self.victims.damage();
        for f in foreign_setid_files(&[&self.env.root], self.alice.uid, self.alice.gid) {
            out.push(format!("SETID {f}"));
        }
        for f in files_containing(&[&self.env.home, &self.env.mount], &self.victims.secret) {
            out.push(format!("SECRET COPIED to {}", f.display()));
        }
        if let Some(d) = &self.daemon {
            if let Some(st) = d.try_wait() {
                out.push(format!("DAEMON EXITED with {st}"));
            }
        }
        let r = self.root(&["--format", "json", "status"]);
        if !matches!(r.code(), Some(0) | Some(1) | Some(3))
            || serde_json::from_str::<Value>(&r.stdout).is_err()
        {
            out.push(format!(
                "DAEMON NOT SERVING root's status:\n{}",
                r.describe()
            ));
        }
        out
    }

    /// Panic with every line of [`Hostile::damage`] unless there is none.
    #[track_caller]
    pub fn assert_no_damage(&self, after: &str) {
        let d = self.damage();
        if !d.is_empty() {
            panic!(
                "after {after}: the attack did damage (expected: victims unchanged, no foreign setuid/setgid file, the secret nowhere, the daemon serving):\n  {}",
                d.join("\n  ")
            );
        }
    }

    /// The daemon's `last_pass` from root's status (`None` before the first).
    pub fn last_pass(&self) -> Option<String> {
        self.root_status()["daemon"]["last_pass"]
            .as_str()
            .map(str::to_string)
    }

    /// Wait until the daemon reported `n` more reconcile passes (its `last_pass` changed `n`
    /// times; it has a one-second resolution, so this is a lower bound), at most `timeout`.
    ///
    /// # Panics
    /// When fewer passes were seen in time.
    pub fn wait_passes(&self, n: usize, timeout: Duration) {
        let mut last = self.last_pass();
        let mut seen = 0;
        let ok = wait_until(timeout, || {
            let now = self.last_pass();
            if now != last {
                seen += 1;
                last = now;
            }
            std::thread::sleep(Duration::from_millis(200));
            seen >= n
        });
        assert!(
            ok,
            "the daemon ran only {seen} of {n} reconcile passes within {timeout:?}"
        );
    }

    /// Add `line` to the `[[workspace]]` table that declares `path` (in the main config or a
    /// drop-in, wherever it is), then `reload` as root; returns the reload's output.
    pub fn add_to_declaration(&self, path: &Path, line: &str) -> Run {
        let p = path.display().to_string();
        let mut files = vec![self.env.config.clone()];
        if let Ok(rd) = fs::read_dir(&self.env.dropin_dir) {
            let mut more: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            more.sort();
            files.extend(more);
        }
        for f in &files {
            let text = fs::read_to_string(f).unwrap_or_default();
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            let at = lines.iter().position(|l| {
                let t = l.trim_start();
                t.starts_with("path")
                    && (t.contains(&format!("\"{p}\"")) || t.contains(&format!("'{p}'")))
            });
            if let Some(i) = at {
                lines.insert(i + 1, line.to_string());
                fs::write(f, lines.join("\n") + "\n")
                    .unwrap_or_else(|e| panic!("cannot write {}: {e}", f.display()));
                let r = self.root(&["reload"]);
                assert!(
                    r.code().is_some(),
                    "reload after adding {line:?} to {} did not finish\n{}",
                    f.display(),
                    r.describe()
                );
                return r;
            }
        }
        panic!(
            "no config file declares {p} (looked in {:?})",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
        );
    }
}

/// The `ws_id` of the object in `v` (anywhere) that has a string field equal to `path` and a
/// string `ws_id`.
pub fn find_ws_id(v: &Value, path: &Path) -> Option<String> {
    let p = path.display().to_string();
    match v {
        Value::Object(m) => {
            let here = m.values().any(|x| x.as_str() == Some(p.as_str()));
            if here {
                if let Some(id) = m.get("ws_id").and_then(Value::as_str) {
                    return Some(id.to_string());
                }
            }
            m.values().find_map(|x| find_ws_id(x, path))
        }
        Value::Array(a) => a.iter().find_map(|x| find_ws_id(x, path)),
        _ => None,
    }
}

/// Every string anywhere in `v`.
pub fn all_strings(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Object(m) => m.values().for_each(|x| walk(x, out)),
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

/// Every snapshot ID in a `list` reply (any shape: objects with `id` or `snapshot`).
pub fn snapshot_ids(v: &Value) -> Vec<String> {
    let mut ids = Vec::new();
    fn walk(v: &Value, ids: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(id) = m
                    .get("id")
                    .or_else(|| m.get("snapshot"))
                    .and_then(Value::as_str)
                {
                    if !id.starts_with("ws-") {
                        ids.push(id.to_string());
                    }
                }
                m.values().for_each(|x| walk(x, ids));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, ids)),
            _ => {}
        }
    }
    walk(v, &mut ids);
    ids.sort();
    ids.dedup();
    ids
}

/// Every object in `v` (anywhere) for which `pred` holds.
pub fn objects_where<'a>(
    v: &'a Value,
    pred: &dyn Fn(&serde_json::Map<String, Value>) -> bool,
) -> Vec<&'a Value> {
    let mut out = Vec::new();
    fn walk<'a>(
        v: &'a Value,
        pred: &dyn Fn(&serde_json::Map<String, Value>) -> bool,
        out: &mut Vec<&'a Value>,
    ) {
        match v {
            Value::Object(m) => {
                if pred(m) {
                    out.push(v);
                }
                m.values().for_each(|x| walk(x, pred, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, pred, out)),
            _ => {}
        }
    }
    walk(v, pred, &mut out);
    out
}

/// Control characters a terminal would act on: C0 except newline and tab, DEL, and C1.
pub fn terminal_controls(s: &str) -> Vec<String> {
    s.char_indices()
        .filter(|(_, c)| {
            (*c < ' ' && *c != '\n' && *c != '\t')
                || *c == '\u{7f}'
                || ('\u{80}'..='\u{9f}').contains(c)
        })
        .map(|(i, c)| format!("U+{:04X} at byte {i}", c as u32))
        .collect()
}

/// One inotify event seen by [`InotifyLog`].
#[derive(Debug, Clone)]
pub struct Event {
    /// When it was read.
    pub at: Instant,
    /// Its mask.
    pub mask: u32,
    /// The entry name inside the watched directory (empty for the directory itself).
    pub name: String,
}

/// Records inotify events on one directory in a background thread (as root, in the test
/// process): who opened what inside a user's tree, without relying on the daemon's logs.
pub struct InotifyLog {
    events: Arc<Mutex<Vec<Event>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InotifyLog {
    /// Watch `dir` for `mask` (e.g. `libc::IN_OPEN`).
    pub fn watch(dir: &Path, mask: u32) -> InotifyLog {
        // SAFETY: plain syscall; checked below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("path without NUL");
        // SAFETY: valid descriptor and NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) };
        assert!(
            wd >= 0,
            "inotify_add_watch {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ev, st) = (Arc::clone(&events), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                // SAFETY: the buffer is valid for its length.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                let now = Instant::now();
                let mut off = 0usize;
                let hdr = std::mem::size_of::<libc::inotify_event>();
                while off + hdr <= n as usize {
                    // SAFETY: the kernel wrote a whole event header at `off`; read_unaligned
                    // copes with the byte buffer's alignment.
                    let e: libc::inotify_event =
                        unsafe { std::ptr::read_unaligned(buf.as_ptr().add(off).cast()) };
                    let name_bytes = &buf[off + hdr..(off + hdr + e.len as usize).min(n as usize)];
                    let name = String::from_utf8_lossy(name_bytes)
                        .trim_end_matches('\0')
                        .to_string();
                    ev.lock().unwrap_or_else(|p| p.into_inner()).push(Event {
                        at: now,
                        mask: e.mask,
                        name,
                    });
                    off += hdr + e.len as usize;
                }
            }
        });
        InotifyLog {
            events,
            stop,
            thread: Some(thread),
        }
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for InotifyLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Group event times into bursts separated by more than `gap`; returns how many bursts.
pub fn bursts(times: &[Instant], gap: Duration) -> usize {
    let mut n = 0;
    let mut last: Option<Instant> = None;
    for t in times {
        if last.is_none_or(|l| t.duration_since(l) > gap) {
            n += 1;
        }
        last = Some(*t);
    }
    n
}

/// Run `cmd` with a deadline, without panicking on timeout: `Err` describes a hang (the
/// process is killed).
pub fn run_with_deadline(env: &TestEnv, cmd: Command, timeout: Duration) -> Result<Run, String> {
    let line = format!("{cmd:?}");
    let p = env.spawn_command(cmd);
    match p.wait_timeout(timeout) {
        Some(st) => Ok(Run {
            cmd: line,
            status: st.code(),
            stdout: p.stdout(),
            stderr: p.stderr(),
        }),
        None => {
            p.kill9();
            Err(format!(
                "{line} did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                p.stdout(),
                p.stderr()
            ))
        }
    }
}
