//! Outside torture harness for crash and full-disk correctness (issue 10; SPEC §5.6, §11).
//!
//! What it does: drives the real `ws-ckpt` binary the way CrashMonkey/Jepsen testers do, with
//! no help from the code under test. A [`Rig`] is an isolated installation (a [`TestEnv`] with
//! its storage either on the host, on an ext4 "disk" that can lose power ([`PowerDisk`]), or
//! with a small `state_dir`). A [`Torture`] run builds workspaces from generated trees on
//! another filesystem ([`Tree`]), runs operations ([`Op`]: init, release, checkpoint with
//! message/metadata/pin, rollback, delete, cleanup) through the daemon or in-process, interrupts
//! them at random delays ([`Interruption`]: kill -9 of the daemon, of an in-process CLI or of
//! the client only, or a power cut), recovers (restart, `apply`) and checks the invariants of
//! [`Rig::check`] against a [`Model`] of what must be true before and after the operation:
//!
//! - every workspace's content equals the model before or after the operation (an
//!   acknowledged operation: after), existing snapshots are unchanged (same subvolume, same
//!   tree, same message/metadata/pin);
//! - `list` equals the disk: every listed snapshot exists with its message, metadata and pin,
//!   and every subvolume on the filesystem is a recorded workspace or a listed snapshot;
//! - nothing is left over: no `.ws-ckpt-*`, `.<ws>.rollback-*`, `.diff-*` temporaries, no
//!   atomic-writer temporaries (`.state.json.tmp.*`, `.journal.jsonl.tmp.*`, …), no state file
//!   moved aside as corrupt, no pending operation in `state.json`, which parses;
//! - the recovery `apply` succeeds, a second `apply` changes nothing, `plan` is in sync, and
//!   `status` is healthy with no findings.
//!
//! What it must not do: use the test-only fault hook or look inside the processes under test,
//! touch anything outside its own [`TestEnv`] root, or take the product's word for what is on
//! disk when the disk can be read instead. Helpers panic with a descriptive message on harness
//! failures; invariant failures are collected as [`Violation`]s with the seed, iteration,
//! operation and delay needed to replay them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::{find_tool, loops_under, mounts_under, run_tool, wait_until, Run, Spawned, TestEnv};

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

/// Seed of every random choice (hex with `0x` or decimal). Default: [`DEFAULT_SEED`].
pub const SEED_ENV: &str = "WS_CKPT_TORTURE_SEED";
/// Iterations of each kill -9 test (and rounds of the full-`state_dir` test).
pub const ITERATIONS_ENV: &str = "WS_CKPT_TORTURE_ITERATIONS";
/// Power cuts of the power-cut test.
pub const CUTS_ENV: &str = "WS_CKPT_TORTURE_CUTS";
/// `1` selects the long profile (see [`Settings::from_env`]).
pub const LONG_ENV: &str = "WS_CKPT_TORTURE_LONG";
/// Wall-clock cap of one torture test, in seconds (iterations stop when it is reached).
pub const MAX_SECS_ENV: &str = "WS_CKPT_TORTURE_MAX_SECS";

/// The fixed CI seed.
pub const DEFAULT_SEED: u64 = 0x155E_0010;

/// Size of a generated tree.
#[derive(Debug, Clone, Copy)]
pub struct TreeSize {
    /// Regular files (besides a few symlinks, a hard link and an empty directory).
    pub files: usize,
    /// Total bytes of file data (about half in a few large files).
    pub bytes: u64,
}

/// How long and how hard a torture run is.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Seed of every random choice.
    pub seed: u64,
    /// Iterations of each kill -9 test.
    pub iterations: usize,
    /// Power cuts of the power-cut test.
    pub cuts: usize,
    /// Rounds of the full-`state_dir` test.
    pub full_rounds: usize,
    /// Wall-clock cap of one test.
    pub max_time: Duration,
    /// The large workspace that is initialized and released over and over.
    pub big: TreeSize,
    /// The two small workspaces.
    pub small: TreeSize,
    /// Whether the long profile is selected.
    pub long: bool,
}

impl Settings {
    /// From the environment. CI profile (default): seed [`DEFAULT_SEED`], 24 iterations per
    /// kill mode, 30 power cuts, 12 full-`state_dir` rounds, a 2 500-file / 24 MiB large tree,
    /// 80 s cap per test. Long profile (`WS_CKPT_TORTURE_LONG=1`): 200 iterations per kill
    /// mode, 100 power cuts, 60 rounds, a 20 000-file / 200 MiB large tree, 1 h cap per test.
    /// `WS_CKPT_TORTURE_SEED`, `…_ITERATIONS`, `…_CUTS` and `…_MAX_SECS` override either.
    pub fn from_env() -> Settings {
        let long = std::env::var(LONG_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
        let mut s = if long {
            Settings {
                seed: DEFAULT_SEED,
                iterations: 200,
                cuts: 100,
                full_rounds: 60,
                max_time: Duration::from_secs(3600),
                big: TreeSize {
                    files: 20_000,
                    bytes: 200 << 20,
                },
                small: TreeSize {
                    files: 400,
                    bytes: 4 << 20,
                },
                long,
            }
        } else {
            Settings {
                seed: DEFAULT_SEED,
                iterations: 24,
                cuts: 30,
                full_rounds: 12,
                max_time: Duration::from_secs(80),
                big: TreeSize {
                    files: 2_500,
                    bytes: 24 << 20,
                },
                small: TreeSize {
                    files: 250,
                    bytes: 2 << 20,
                },
                long,
            }
        };
        if let Some(v) = env_u64(SEED_ENV) {
            s.seed = v;
        }
        if let Some(v) = env_u64(ITERATIONS_ENV) {
            s.iterations = v as usize;
            s.full_rounds = v as usize;
        }
        if let Some(v) = env_u64(CUTS_ENV) {
            s.cuts = v as usize;
        }
        if let Some(v) = env_u64(MAX_SECS_ENV) {
            s.max_time = Duration::from_secs(v);
        }
        s
    }

    /// The environment assignments that reproduce this run, for failure messages.
    pub fn replay_env(&self) -> String {
        format!(
            "{SEED_ENV}={:#x}{}",
            self.seed,
            if self.long {
                format!(" {LONG_ENV}=1")
            } else {
                String::new()
            }
        )
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------------------------

/// A small deterministic generator (SplitMix64): the same seed gives the same choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// An independent generator derived from this one's seed and `tag` (per iteration, per
    /// test), so that a choice in one iteration does not shift the next ones.
    pub fn fork(&self, tag: u64) -> Rng {
        let mut r = Rng(self.0 ^ tag.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next_u64();
        Rng(r.next_u64())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------------------------
// File content and trees
// ---------------------------------------------------------------------------------------------

/// Period of the content pattern: file bytes are `PATTERN[(key + i) % PATTERN_LEN]`, so
/// content is generated and verified with `memcpy`/`memcmp` speed even in debug builds.
const PATTERN_LEN: u64 = 1 << 16;

fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        let mut r = Rng::new(0x0070_6174_7465_726e);
        (0..PATTERN_LEN / 8)
            .flat_map(|_| r.next_u64().to_le_bytes())
            .collect()
    })
}

/// Write `len` bytes of the content with `key` to `w`.
fn write_content(w: &mut impl Write, len: u64, key: u64) -> io::Result<()> {
    let p = pattern();
    let mut done = 0u64;
    while done < len {
        let pos = ((key + done) % PATTERN_LEN) as usize;
        let n = ((PATTERN_LEN as usize - pos) as u64).min(len - done) as usize;
        w.write_all(&p[pos..pos + n])?;
        done += n as u64;
    }
    Ok(())
}

/// Check that `path` holds exactly the content (`len`, `key`); the first difference otherwise.
fn verify_content(path: &Path, len: u64, key: u64) -> Result<(), String> {
    let mut f = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let p = pattern();
    let mut buf = vec![0u8; PATTERN_LEN as usize];
    let mut done = 0u64;
    while done < len {
        let pos = ((key + done) % PATTERN_LEN) as usize;
        let n = ((PATTERN_LEN as usize - pos) as u64).min(len - done) as usize;
        f.read_exact(&mut buf[..n])
            .map_err(|e| format!("short read at byte {done}: {e}"))?;
        if buf[..n] != p[pos..pos + n] {
            let at = buf[..n]
                .iter()
                .zip(&p[pos..pos + n])
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!(
                "content differs from the expected version (first difference at byte {})",
                done + at as u64
            ));
        }
        done += n as u64;
    }
    let mut extra = [0u8; 1];
    match f.read(&mut extra) {
        Ok(0) => Ok(()),
        Ok(_) => Err(format!("longer than the expected {len} bytes")),
        Err(e) => Err(format!("read error after {len} bytes: {e}")),
    }
}

/// One entry of a [`Tree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory with this mode.
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A regular file: `len` bytes of the pattern starting at `key`.
    File {
        /// Permission bits.
        mode: u32,
        /// Size.
        len: u64,
        /// Content version.
        key: u64,
    },
    /// A symbolic link (target kept verbatim).
    Link {
        /// The link target.
        target: String,
    },
    /// A hard link to another (regular file) entry of the tree.
    Hard {
        /// The entry it shares its inode with.
        to: PathBuf,
    },
}

/// A directory tree: relative path → entry. Parents sort before their children.
pub type Tree = BTreeMap<PathBuf, Node>;

/// Generate a tree of about `size.files` files and `size.bytes` bytes: nested directories of
/// small files (some executable, some private), a few large files, relative and dangling
/// symlinks, a hard link and an empty directory.
pub fn gen_tree(rng: &mut Rng, size: TreeSize) -> Tree {
    let mut t = Tree::new();
    let top = (size.files / 40).clamp(4, 500);
    for d in 0..top {
        t.insert(
            PathBuf::from(format!("d{d:03}")),
            Node::Dir {
                mode: if d % 9 == 4 { 0o750 } else { 0o755 },
            },
        );
        for e in 0..3 {
            t.insert(
                PathBuf::from(format!("d{d:03}/e{e}")),
                Node::Dir { mode: 0o755 },
            );
        }
    }
    let blobs = (size.bytes / 2 / (4 << 20)).max(1);
    let blob_len = size.bytes / 2 / blobs;
    t.insert(PathBuf::from("blobs"), Node::Dir { mode: 0o755 });
    for b in 0..blobs {
        t.insert(
            PathBuf::from(format!("blobs/blob{b}.bin")),
            Node::File {
                mode: 0o644,
                len: blob_len,
                key: rng.below(PATTERN_LEN),
            },
        );
    }
    let avg = (size.bytes / 2 / size.files.max(1) as u64).max(1);
    for i in 0..size.files {
        let d = i % top;
        let e = (i / top) % 3;
        let mode = match i % 17 {
            5 => 0o755,
            11 => 0o600,
            _ => 0o644,
        };
        t.insert(
            PathBuf::from(format!("d{d:03}/e{e}/f{i:05}")),
            Node::File {
                mode,
                len: rng.below(2 * avg + 1),
                key: rng.below(PATTERN_LEN),
            },
        );
    }
    t.insert(PathBuf::from("links"), Node::Dir { mode: 0o755 });
    t.insert(
        PathBuf::from("links/to-blob"),
        Node::Link {
            target: "../blobs/blob0.bin".into(),
        },
    );
    t.insert(
        PathBuf::from("links/dangling"),
        Node::Link {
            target: "../no/such/file".into(),
        },
    );
    t.insert(
        PathBuf::from("links/hard-to-f00000"),
        Node::Hard {
            to: PathBuf::from("d000/e0/f00000"),
        },
    );
    t.insert(PathBuf::from("empty"), Node::Dir { mode: 0o700 });
    t
}

/// Create `tree` under `root` (which is created; it may also be a symlink to a directory).
pub fn write_tree(root: &Path, tree: &Tree) {
    fs::create_dir_all(root).unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
    for (rel, node) in tree {
        let p = root.join(rel);
        match node {
            Node::Dir { .. } => fs::create_dir_all(&p)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display())),
            Node::File { mode, len, key } => write_file(&p, *mode, *len, *key),
            Node::Link { target } => std::os::unix::fs::symlink(target, &p)
                .unwrap_or_else(|e| panic!("cannot create symlink {}: {e}", p.display())),
            Node::Hard { .. } => {}
        }
    }
    for (rel, node) in tree {
        match node {
            Node::Hard { to } => fs::hard_link(root.join(to), root.join(rel))
                .unwrap_or_else(|e| panic!("cannot link {}: {e}", root.join(rel).display())),
            Node::Dir { mode } => set_mode(&root.join(rel), *mode),
            _ => {}
        }
    }
}

/// Write a new regular file `rel` (0644, `len` bytes of content version `key`) under `root`
/// and record it in `tree`.
pub fn add_file(root: &Path, tree: &mut Tree, rel: &str, len: u64, key: u64) {
    write_file(&root.join(rel), 0o644, len, key);
    tree.insert(
        PathBuf::from(rel),
        Node::File {
            mode: 0o644,
            len,
            key,
        },
    );
}

fn write_file(p: &Path, mode: u32, len: u64, key: u64) {
    let mut f = File::create(p).unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
    write_content(&mut io::BufWriter::with_capacity(1 << 20, &mut f), len, key)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
    set_mode(p, mode);
}

fn set_mode(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", p.display()));
}

/// Change a few files of the tree at `root` (rewrite, delete, add), updating `tree`; files
/// sharing an inode are left alone. Returns a short description.
pub fn mutate_tree(root: &Path, tree: &mut Tree, rng: &mut Rng, counter: u64) -> String {
    let shared: BTreeSet<PathBuf> = tree
        .iter()
        .filter_map(|(p, n)| match n {
            Node::Hard { to } => Some([p.clone(), to.clone()]),
            _ => None,
        })
        .flatten()
        .collect();
    let files: Vec<PathBuf> = tree
        .iter()
        .filter(|(p, n)| matches!(n, Node::File { .. }) && !shared.contains(*p))
        .map(|(p, _)| p.clone())
        .collect();
    let mut done = Vec::new();
    for _ in 0..rng.range(1, 4) {
        let p = rng.pick(&files).clone();
        if let Some(Node::File { mode, len, key }) = tree.get(&p).cloned() {
            let len = if p.starts_with("blobs") {
                len
            } else {
                rng.below(len * 2 + 4096)
            };
            let key = (key + 1 + rng.below(PATTERN_LEN - 1)) % PATTERN_LEN;
            write_file(&root.join(&p), mode, len, key);
            tree.insert(p.clone(), Node::File { mode, len, key });
            done.push(format!("rewrote {}", p.display()));
        }
    }
    if rng.chance(30) {
        let p = rng.pick(&files).clone();
        if tree.contains_key(&p) {
            fs::remove_file(root.join(&p))
                .unwrap_or_else(|e| panic!("cannot remove {}: {e}", root.join(&p).display()));
            tree.remove(&p);
            done.push(format!("deleted {}", p.display()));
        }
    }
    if rng.chance(50) {
        let dirs: Vec<PathBuf> = tree
            .iter()
            .filter(|(p, n)| {
                matches!(n, Node::Dir { mode } if *mode == 0o755) && p.starts_with("d")
            })
            .map(|(p, _)| p.clone())
            .collect();
        if !dirs.is_empty() {
            let p = rng.pick(&dirs).join(format!("new-{counter}"));
            let (len, key) = (rng.below(20_000), rng.below(PATTERN_LEN));
            write_file(&root.join(&p), 0o644, len, key);
            tree.insert(
                p.clone(),
                Node::File {
                    mode: 0o644,
                    len,
                    key,
                },
            );
            done.push(format!("added {}", p.display()));
        }
    }
    done.join(", ")
}

/// What is actually at one path of a tree on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    Dir { mode: u32 },
    File { mode: u32, len: u64, ino: u64 },
    Link { target: String },
    Other { mode: u32 },
}

fn describe_node(n: &Node) -> String {
    match n {
        Node::Dir { mode } => format!("directory {mode:04o}"),
        Node::File { mode, len, key } => format!("file {mode:04o} {len} bytes (version {key})"),
        Node::Link { target } => format!("symlink -> {target}"),
        Node::Hard { to } => format!("hard link to {}", to.display()),
    }
}

fn describe_found(f: &Found) -> String {
    match f {
        Found::Dir { mode } => format!("directory {mode:04o}"),
        Found::File { mode, len, .. } => format!("file {mode:04o} {len} bytes"),
        Found::Link { target } => format!("symlink -> {target}"),
        Found::Other { mode } => format!("special file {mode:o}"),
    }
}

fn scan_tree(root: &Path) -> Result<BTreeMap<PathBuf, Found>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let entries =
            fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            let r = rel.join(entry.file_name());
            let p = root.join(&r);
            let m = fs::symlink_metadata(&p)
                .map_err(|e| format!("cannot stat {}: {e}", p.display()))?;
            let mode = m.mode() & 0o7777;
            let ft = m.file_type();
            let found = if ft.is_symlink() {
                let t =
                    fs::read_link(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                Found::Link {
                    target: t.to_string_lossy().into_owned(),
                }
            } else if ft.is_dir() {
                stack.push(r.clone());
                Found::Dir { mode }
            } else if ft.is_file() {
                Found::File {
                    mode,
                    len: m.len(),
                    ino: m.ino(),
                }
            } else {
                Found::Other { mode: m.mode() }
            };
            out.insert(r, found);
        }
    }
    Ok(out)
}

/// Differences between the tree at `root` and `expected` (at most a dozen, then a count).
/// With `content`, every regular file's bytes are verified too.
pub fn compare_tree(root: &Path, expected: &Tree, content: bool) -> Vec<String> {
    let found = match scan_tree(root) {
        Ok(f) => f,
        Err(e) => return vec![e],
    };
    let mut diffs = Vec::new();
    for (rel, want) in expected {
        let got = found.get(rel);
        let problem = match (want, got) {
            (_, None) => Some(format!("missing (expected {})", describe_node(want))),
            (Node::Dir { mode }, Some(Found::Dir { mode: m })) if mode == m => None,
            (
                Node::File { mode, len, key },
                Some(Found::File {
                    mode: m, len: l, ..
                }),
            ) if mode == m && len == l => {
                if content {
                    verify_content(&root.join(rel), *len, *key).err()
                } else {
                    None
                }
            }
            (Node::Link { target }, Some(Found::Link { target: t })) if target == t => None,
            (Node::Hard { to }, Some(Found::File { ino, .. })) => match found.get(to) {
                Some(Found::File { ino: other, .. }) if other == ino => None,
                _ => Some(format!("no longer shares its inode with {}", to.display())),
            },
            (want, Some(got)) => Some(format!(
                "expected {}, found {}",
                describe_node(want),
                describe_found(got)
            )),
        };
        if let Some(p) = problem {
            diffs.push(format!("{}: {p}", rel.display()));
        }
    }
    for (rel, got) in &found {
        if !expected.contains_key(rel) {
            diffs.push(format!(
                "{}: unexpected {}",
                rel.display(),
                describe_found(got)
            ));
        }
    }
    cap(diffs, 12)
}

fn cap(mut v: Vec<String>, n: usize) -> Vec<String> {
    if v.len() > n {
        let more = v.len() - n;
        v.truncate(n);
        v.push(format!("… and {more} more"));
    }
    v
}

/// Entries below `dir` (recursively, not following symlinks), at most `limit` counted.
pub fn count_entries(dir: &Path, limit: usize) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            n += 1;
            if n >= limit {
                return n;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    n
}

// ---------------------------------------------------------------------------------------------
// Model and operations
// ---------------------------------------------------------------------------------------------

/// What a snapshot must be.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapModel {
    /// `-m`.
    pub message: Option<String>,
    /// `--metadata`.
    pub metadata: Option<Value>,
    /// `--pin`.
    pub pinned: bool,
    /// The workspace tree when it was taken.
    pub tree: Tree,
}

/// What one workspace (or released directory) must be.
#[derive(Debug, Clone)]
pub struct WsModel {
    /// Short name (`big`, `small`, `keep`).
    pub name: String,
    /// The user path.
    pub path: PathBuf,
    /// Its ws_id (learned at the first init; derived from the path, so stable).
    pub ws_id: Option<String>,
    /// A workspace (symlink to its subvolume) rather than a plain directory.
    pub managed: bool,
    /// The torture may release it.
    pub releasable: bool,
    /// Its content.
    pub tree: Tree,
    /// Its snapshots (ID order is creation order).
    pub snaps: BTreeMap<String, SnapModel>,
}

/// What the whole installation must be.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// Every workspace the harness made.
    pub ws: Vec<WsModel>,
}

/// One operation of the torture, on workspace index `ws` of the [`Model`].
#[derive(Debug, Clone)]
pub enum Op {
    /// `init PATH` of a plain directory.
    Init {
        /// Workspace index.
        ws: usize,
    },
    /// `release PATH` of a workspace.
    Release {
        /// Workspace index.
        ws: usize,
    },
    /// `checkpoint -w PATH -s ID -m MSG --metadata JSON [--pin]`.
    Checkpoint {
        /// Workspace index.
        ws: usize,
        /// Snapshot ID (never reused).
        id: String,
        /// Message.
        message: String,
        /// Metadata.
        metadata: Value,
        /// `--pin`.
        pin: bool,
    },
    /// `rollback -w PATH -s ID`.
    Rollback {
        /// Workspace index.
        ws: usize,
        /// Target snapshot.
        to: String,
    },
    /// `delete -w PATH -s ID [--force]`.
    Delete {
        /// Workspace index.
        ws: usize,
        /// Snapshot.
        id: String,
        /// `--force` (needed for pinned snapshots).
        force: bool,
    },
    /// `cleanup -w PATH --keep N`.
    Cleanup {
        /// Workspace index.
        ws: usize,
        /// `--keep`.
        keep: usize,
    },
}

impl Op {
    /// The workspace index it acts on.
    pub fn ws(&self) -> usize {
        match self {
            Op::Init { ws }
            | Op::Release { ws }
            | Op::Checkpoint { ws, .. }
            | Op::Rollback { ws, .. }
            | Op::Delete { ws, .. }
            | Op::Cleanup { ws, .. } => *ws,
        }
    }

    /// Its kind, for statistics and duration estimates.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Init { .. } => "init",
            Op::Release { .. } => "release",
            Op::Checkpoint { .. } => "checkpoint",
            Op::Rollback { .. } => "rollback",
            Op::Delete { .. } => "delete",
            Op::Cleanup { .. } => "cleanup",
        }
    }

    /// The `ws-ckpt` arguments (with `--format json`).
    pub fn args(&self, m: &Model) -> Vec<String> {
        let path = m.ws[self.ws()].path.display().to_string();
        let mut a: Vec<String> = vec!["--format".into(), "json".into()];
        let more: Vec<String> = match self {
            Op::Init { .. } => vec!["init".into(), path],
            Op::Release { .. } => vec!["release".into(), path],
            Op::Checkpoint {
                id,
                message,
                metadata,
                pin,
                ..
            } => {
                let mut v = vec![
                    "checkpoint".into(),
                    "-w".into(),
                    path,
                    "-s".into(),
                    id.clone(),
                    "-m".into(),
                    message.clone(),
                    "--metadata".into(),
                    metadata.to_string(),
                ];
                if *pin {
                    v.push("--pin".into());
                }
                v
            }
            Op::Rollback { to, .. } => {
                vec![
                    "rollback".into(),
                    "-w".into(),
                    path,
                    "-s".into(),
                    to.clone(),
                ]
            }
            Op::Delete { id, force, .. } => {
                let mut v = vec!["delete".into(), "-w".into(), path, "-s".into(), id.clone()];
                if *force {
                    v.push("--force".into());
                }
                v
            }
            Op::Cleanup { keep, .. } => vec![
                "cleanup".into(),
                "-w".into(),
                path,
                "--keep".into(),
                keep.to_string(),
            ],
        };
        a.extend(more);
        a
    }

    /// A one-line description (`checkpoint big -s c00012 --pin`).
    pub fn describe(&self, m: &Model) -> String {
        let w = &m.ws[self.ws()].name;
        match self {
            Op::Init { .. } => format!("init {w}"),
            Op::Release { .. } => format!("release {w}"),
            Op::Checkpoint { id, pin, .. } => {
                format!(
                    "checkpoint {w} -s {id} -m … --metadata …{}",
                    if *pin { " --pin" } else { "" }
                )
            }
            Op::Rollback { to, .. } => format!("rollback {w} -s {to}"),
            Op::Delete { id, force, .. } => {
                format!("delete {w} -s {id}{}", if *force { " --force" } else { "" })
            }
            Op::Cleanup { keep, .. } => format!("cleanup {w} --keep {keep}"),
        }
    }

    /// The model after the operation completed.
    pub fn after(&self, m: &Model) -> Model {
        let mut a = m.clone();
        let w = &mut a.ws[self.ws()];
        match self {
            Op::Init { .. } => {
                w.managed = true;
                w.snaps.clear();
            }
            Op::Release { .. } => {
                w.managed = false;
                w.snaps.clear();
            }
            Op::Checkpoint {
                id,
                message,
                metadata,
                pin,
                ..
            } => {
                let tree = w.tree.clone();
                w.snaps.insert(
                    id.clone(),
                    SnapModel {
                        message: Some(message.clone()),
                        metadata: Some(metadata.clone()),
                        pinned: *pin,
                        tree,
                    },
                );
            }
            Op::Rollback { to, .. } => {
                w.tree = w.snaps[to].tree.clone();
            }
            Op::Delete { id, .. } => {
                w.snaps.remove(id);
            }
            Op::Cleanup { keep, .. } => {
                for id in cleanup_victims(&w.snaps, *keep) {
                    w.snaps.remove(&id);
                }
            }
        }
        a
    }
}

/// What `cleanup --keep N` deletes: unpinned snapshots beyond the N newest unpinned, never the
/// newest snapshot (SPEC §5.5; ID order is creation order in the torture).
pub fn cleanup_victims(snaps: &BTreeMap<String, SnapModel>, keep: usize) -> Vec<String> {
    let newest = snaps.keys().last().cloned();
    let unpinned: Vec<&String> = snaps
        .iter()
        .filter(|(_, s)| !s.pinned)
        .map(|(id, _)| id)
        .collect();
    let n = unpinned.len().saturating_sub(keep);
    unpinned[..n]
        .iter()
        .filter(|id| Some(**id) != newest.as_ref())
        .map(|id| (*id).clone())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Storage layouts, the power-cut disk and small filesystems
// ---------------------------------------------------------------------------------------------

/// `EXT4_IOC_SHUTDOWN` = `_IOR('X', 125, __u32)`.
const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587D;
/// `EXT4_GOING_FLAGS_NOLOGFLUSH`: stop at once, without flushing the journal (a power cut).
const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 0x2;
/// `LOOP_CLR_FD`.
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;

fn clear_loop(dev: &Path) {
    if let Ok(f) = File::open(dev) {
        // SAFETY: LOOP_CLR_FD takes no argument; the descriptor is valid during the call.
        unsafe { libc::ioctl(f.as_raw_fd(), LOOP_CLR_FD as _, 0) };
    }
}

/// Unmount `m` (every mount stacked there), retrying while busy for up to 10 s, then lazily.
fn unmount_retry(m: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if !mounts_under(m).iter().any(|x| x == m) {
            return Ok(());
        }
        match nix::mount::umount2(m, MntFlags::empty()) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => continue,
            Err(Errno::EBUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => {
                let _ = nix::mount::umount2(m, MntFlags::MNT_DETACH);
                return Err(format!(
                    "cannot unmount {}: {e} (detached lazily)",
                    m.display()
                ));
            }
        }
    }
}

/// An ext4 filesystem on its own loop image that can "lose power": [`PowerDisk::cut`] shuts it
/// down with `EXT4_IOC_SHUTDOWN` (`EXT4_GOING_FLAGS_NOLOGFLUSH`), so that everything not yet
/// durable (not fsynced, not in a committed journal transaction) is lost, exactly as with a
/// power failure of a disk without a volatile cache; [`PowerDisk::power_off`] then tears down
/// what sits on it and [`PowerDisk::power_on`] mounts it again (journal replay).
pub struct PowerDisk {
    image: PathBuf,
    mnt: PathBuf,
    dev: Option<PathBuf>,
    /// The loop device of the last power-on, tried first at the next one.
    last_dev: Option<PathBuf>,
    /// Mount points backed by files on this disk (unmounted first by `power_off`).
    dependents: Vec<PathBuf>,
}

impl PowerDisk {
    /// Create a `size_mib` MiB sparse image `<root>/<name>.img`, make ext4 on it and mount it
    /// at `<root>/<name>`. `dependents` are mount points of filesystems whose images will live
    /// on it (unmounted before it).
    pub fn create(root: &Path, name: &str, size_mib: u64, dependents: Vec<PathBuf>) -> PowerDisk {
        let image = root.join(format!("{name}.img"));
        let mnt = root.join(name);
        fs::create_dir_all(&mnt).unwrap_or_else(|e| panic!("cannot create {}: {e}", mnt.display()));
        File::create_new(&image)
            .and_then(|f| f.set_len(size_mib << 20))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", image.display()));
        run_tool(
            Command::new(find_tool("mkfs.ext4"))
                .args(["-q", "-F", "-m", "0"])
                .arg(&image),
        );
        let mut d = PowerDisk {
            image,
            mnt,
            dev: None,
            last_dev: None,
            dependents,
        };
        d.power_on();
        d
    }

    /// Where it is mounted.
    pub fn mount_point(&self) -> &Path {
        &self.mnt
    }

    /// Attach the image to a loop device and mount it (replaying its journal).
    ///
    /// The disk comes back as the device it was (a real disk keeps its major:minor across a
    /// power cut): the loop device it had is tried first, and any free one only when another
    /// test took that one meanwhile. Recorded identities (st_dev of the directory holding a
    /// workspace on this disk) then mean the same after the cut as before.
    pub fn power_on(&mut self) {
        let again = self.last_dev.as_ref().is_some_and(|d| {
            Command::new(find_tool("losetup"))
                .arg(d)
                .arg(&self.image)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|st| st.success())
        });
        let dev = if again {
            self.last_dev.clone().unwrap().display().to_string()
        } else {
            let out = run_tool(
                Command::new(find_tool("losetup"))
                    .args(["-f", "--show"])
                    .arg(&self.image),
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        nix::mount::mount(
            Some(dev.as_str()),
            &self.mnt,
            Some("ext4"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("mount {dev} on {} failed: {e}", self.mnt.display()));
        self.dev = Some(PathBuf::from(&dev));
        self.last_dev = Some(PathBuf::from(dev));
    }

    /// The power cut: shut the filesystem down without flushing its journal. From this instant
    /// nothing more reaches the disk.
    pub fn cut(&self) {
        let d = File::open(&self.mnt)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.mnt.display()));
        let flags: u32 = EXT4_GOING_FLAGS_NOLOGFLUSH;
        // SAFETY: EXT4_IOC_SHUTDOWN reads one u32 from the pointer, valid during the call.
        let rc = unsafe { libc::ioctl(d.as_raw_fd(), EXT4_IOC_SHUTDOWN as _, &flags) };
        assert_eq!(
            rc,
            0,
            "EXT4_IOC_SHUTDOWN on {} failed: {}",
            self.mnt.display(),
            io::Error::last_os_error()
        );
    }

    /// After a cut (and after every process using it was killed): unmount the dependents,
    /// detach every loop device backed by a file on the disk, unmount the disk and detach its
    /// loop device.
    pub fn power_off(&mut self) -> Result<(), String> {
        let mut errors = Vec::new();
        for m in self.dependents.clone() {
            if let Err(e) = unmount_retry(&m) {
                errors.push(e);
            }
        }
        if self.dev.is_some() {
            for l in loops_under(&self.mnt) {
                clear_loop(&l);
            }
            if !wait_until(Duration::from_secs(10), || {
                loops_under(&self.mnt).is_empty()
            }) {
                errors.push(format!(
                    "loop devices on {} still attached: {:?}",
                    self.mnt.display(),
                    loops_under(&self.mnt)
                ));
            }
            if let Err(e) = unmount_retry(&self.mnt) {
                errors.push(e);
            }
            if let Some(dev) = self.dev.take() {
                clear_loop(&dev);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// `syncfs` of the disk.
    pub fn sync(&self) {
        syncfs(&self.mnt);
    }
}

impl Drop for PowerDisk {
    fn drop(&mut self) {
        if let Err(e) = self.power_off() {
            eprintln!("torture: tearing down {} : {e}", self.mnt.display());
        }
    }
}

/// `syncfs` of the filesystem holding `path` (best effort).
pub fn syncfs(path: &Path) {
    if let Ok(f) = File::open(path) {
        let _ = nix::unistd::syncfs(&f);
    }
}

/// Mount a tmpfs of `size_mib` MiB at `dir` (created). The [`TestEnv`] unmounts it.
pub fn mount_tmpfs(dir: &Path, size_mib: u64) {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::empty(),
        Some(format!("size={size_mib}m,mode=0755").as_str()),
    )
    .unwrap_or_else(|e| panic!("mounting a tmpfs on {} failed: {e}", dir.display()));
}

/// Fill the filesystem holding `dir` until `ENOSPC` with files `dir/.filler-*` (large, then
/// page-sized, then single-byte writes). Returns the filler files.
pub fn fill_to_enospc(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for (i, chunk) in [1usize << 20, 4096, 1].into_iter().enumerate() {
        let p = dir.join(format!(".filler-{i}"));
        let mut f =
            File::create(&p).unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
        let buf = vec![0x5Au8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", p.display()),
            }
        }
        files.push(p);
    }
    files
}

/// Where an installation keeps its files.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Main config file (its `config.d` is beside it).
    pub config: PathBuf,
    /// `[daemon] state_dir`.
    pub state_dir: PathBuf,
    /// `[daemon] runtime_dir`.
    pub runtime_dir: PathBuf,
    /// The loop image.
    pub image: PathBuf,
    /// The btrfs mount = data_root.
    pub mount: PathBuf,
    /// Where the user directories are.
    pub home: PathBuf,
    /// The pre-FHS image path (kept inside the test root).
    pub legacy_image: PathBuf,
}

impl Layout {
    /// `config.d` beside the config.
    pub fn dropin_dir(&self) -> PathBuf {
        self.config
            .parent()
            .unwrap_or(Path::new("/"))
            .join("config.d")
    }

    /// `<mount>/snapshots`.
    pub fn snapshots_root(&self) -> PathBuf {
        self.mount.join("snapshots")
    }

    /// Where a workspace's subvolume is, as the storage layout documents it
    /// (docs/security.md): `<mount>/gates/<ws_id>/live`.
    pub fn ws_subvol(&self, ws_id: &str) -> PathBuf {
        self.mount.join(ws_subvol_rel(ws_id))
    }

    /// The main config file for this layout.
    pub fn config_text(&self) -> String {
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        format!(
            "# written by the ws-ckpt torture harness\n\
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
            q(&self.state_dir),
            q(&self.runtime_dir),
            q(&self.image),
            q(&self.mount),
            q(&self.legacy_image),
        )
    }
}

/// A workspace subvolume's path relative to the top of the filesystem, as `btrfs subvolume
/// list` prints it: `gates/<ws_id>/live` (each workspace's subvolume sits in its own
/// root-owned gate directory).
pub fn ws_subvol_rel(ws_id: &str) -> String {
    format!("gates/{ws_id}/live")
}

/// Where a [`Rig`] keeps state_dir, the image and the user directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// The standard [`TestEnv`] layout on the host filesystem.
    Host,
    /// Config, state_dir (with the image) and the user directories on a [`PowerDisk`].
    PowerDisk,
    /// state_dir alone on a tmpfs of this many MiB; the image elsewhere.
    SmallStateDir(u64),
}

// ---------------------------------------------------------------------------------------------
// The rig: one installation under test
// ---------------------------------------------------------------------------------------------

/// How long the daemon may take to accept a connection (and log it) after the client made it.
const ACCEPT_GRACE: Duration = Duration::from_secs(5);

/// The daemon's log filter: info, and the server's per-connection lines.
const DAEMON_LOG: &str = "info,ws_ckpt::daemon::server=debug";

/// First start creates and formats the image: allow for a slow machine.
const DAEMON_START: Duration = Duration::from_secs(90);

/// One isolated installation: a [`TestEnv`], its [`Layout`], the daemon when running, and the
/// power-cut disk when there is one. Dropping it kills the daemon and tears the disk down
/// before the environment cleans up.
pub struct Rig {
    /// Paths.
    pub layout: Layout,
    /// Leftovers and unrecorded subvolumes already reported by an earlier violation, which
    /// later checks no longer count (see [`Rig::tolerate`]).
    tolerated: BTreeSet<String>,
    /// Subvolume ID of every snapshot seen so far (relative path → ID): a snapshot must never
    /// be replaced by another subvolume of the same name.
    snap_ids: BTreeMap<String, u64>,
    daemon: Option<Spawned>,
    disk: Option<PowerDisk>,
    /// The environment (logs, cleanup). Declared last: dropped after the disk.
    pub env: TestEnv,
}

impl Rig {
    /// A fresh installation, or `None` when not root (after [`crate::require_root`]'s message).
    pub fn new(test: &str, storage: Storage) -> Option<Rig> {
        let mut env = TestEnv::new(test)?;
        let root = env.root.clone();
        let mut disk = None;
        let layout = match storage {
            Storage::Host => Layout {
                config: env.config.clone(),
                state_dir: env.state_dir.clone(),
                runtime_dir: env.runtime_dir.clone(),
                image: env.image.clone(),
                mount: env.mount.clone(),
                home: env.home.clone(),
                legacy_image: env.legacy_image(),
            },
            Storage::PowerDisk => {
                let d = PowerDisk::create(&root, "disk", 2048, vec![env.mount.clone()]);
                let m = d.mount_point().to_path_buf();
                disk = Some(d);
                Layout {
                    config: m.join("etc/config.toml"),
                    state_dir: m.join("state"),
                    runtime_dir: env.runtime_dir.clone(),
                    image: m.join("state/btrfs-data.img"),
                    mount: env.mount.clone(),
                    home: m.join("home"),
                    legacy_image: env.legacy_image(),
                }
            }
            Storage::SmallStateDir(mib) => {
                let small = root.join("small");
                mount_tmpfs(&small, mib);
                Layout {
                    config: env.config.clone(),
                    state_dir: small.join("state"),
                    runtime_dir: env.runtime_dir.clone(),
                    image: root.join("img/btrfs-data.img"),
                    mount: env.mount.clone(),
                    home: env.home.clone(),
                    legacy_image: env.legacy_image(),
                }
            }
        };
        for d in [
            layout.state_dir.clone(),
            layout.home.clone(),
            layout.dropin_dir(),
            layout
                .image
                .parent()
                .unwrap_or(Path::new("/"))
                .to_path_buf(),
        ] {
            fs::create_dir_all(&d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
            set_mode(&d, 0o755);
        }
        env.config = layout.config.clone();
        fs::write(&layout.config, layout.config_text())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", layout.config.display()));
        Some(Rig {
            layout,
            tolerated: BTreeSet::new(),
            snap_ids: BTreeMap::new(),
            daemon: None,
            disk,
            env,
        })
    }

    /// Stop counting `path` (a leftover or unrecorded subvolume already reported) in later
    /// checks, so that a run can go on after a violation without rebuilding everything.
    pub fn tolerate(&mut self, path: String) {
        self.tolerated.insert(path);
    }

    /// Remember the subvolume IDs of `model`'s snapshots as `obs` saw them (after a check
    /// passed), so that later checks notice a snapshot replaced under the same name.
    pub fn remember_snapshots(&mut self, obs: &Observation, model: &Model) {
        self.snap_ids.clear();
        for w in &model.ws {
            if let (true, Some(id)) = (w.managed, &w.ws_id) {
                for s in w.snaps.keys() {
                    let rel = format!("snapshots/{id}/{s}");
                    if let Some(sv) = obs.subvols.get(&rel) {
                        self.snap_ids.insert(rel, *sv);
                    }
                }
            }
        }
    }

    /// What [`Rig::tolerate`] was given.
    pub fn tolerated(&self) -> &BTreeSet<String> {
        &self.tolerated
    }

    /// Run `ws-ckpt <args>` to completion (through the daemon when one runs).
    pub fn run(&self, args: &[&str]) -> Run {
        self.env.run(args)
    }

    /// [`Rig::run`] with `--format json` prepended; the parsed stdout when it is JSON.
    pub fn json(&self, args: &[&str]) -> (Run, Option<Value>) {
        let mut a = vec!["--format", "json"];
        a.extend_from_slice(args);
        let r = self.env.run(&a);
        let v = serde_json::from_str(&r.stdout).ok();
        (r, v)
    }

    /// Start `ws-ckpt <args>` without waiting.
    pub fn spawn(&self, args: &[String]) -> Spawned {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.env.spawn(&a, &[])
    }

    /// Start the daemon and wait until its socket answers (after its first pass).
    pub fn start_daemon(&mut self) -> Result<(), String> {
        self.start_daemon_env(&[])
    }

    /// [`Rig::start_daemon`] with extra environment variables (e.g. `WS_CKPT_FAULT_HOLD`).
    pub fn start_daemon_env(&mut self, extra: &[(&str, &str)]) -> Result<(), String> {
        assert!(
            self.daemon.is_none(),
            "start_daemon: a daemon is already running"
        );
        // The server's debug lines say when a connection is over ([`Rig::wait_connection_closed`]).
        let mut env = vec![("WS_CKPT_LOG", DAEMON_LOG)];
        env.extend_from_slice(extra);
        let d = self.env.spawn(&["daemon"], &env);
        let sock = self.layout.runtime_dir.join("ws-ckpt.sock");
        let mut exited = None;
        let up = wait_until(DAEMON_START, || {
            if let Some(st) = d.try_wait() {
                exited = Some(st);
                return true;
            }
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
        if let Some(st) = exited {
            return Err(format!(
                "the daemon exited at start with {st}\n--- daemon stderr (tail) ---\n{}",
                tail_str(&d.stderr(), 3000)
            ));
        }
        if !up {
            return Err(format!(
                "the daemon did not open {} within {DAEMON_START:?}\n{}",
                sock.display(),
                tail_str(&d.stderr(), 3000)
            ));
        }
        self.daemon = Some(d);
        Ok(())
    }

    /// How many bytes the running daemon has logged so far (0 without a daemon).
    pub fn daemon_log_len(&self) -> usize {
        self.daemon.as_ref().map_or(0, |d| d.stderr().len())
    }

    /// Wait until the daemon has finished serving the connection of the client process `pid`
    /// (it logs "connection closed" for it after byte `since` of its log, answered or not: a
    /// killed client's request runs to its end in the daemon). A client killed before the
    /// daemon accepted its connection has none: when no "connection" line names it within
    /// [`ACCEPT_GRACE`], there is nothing to wait for. `false` when no daemon runs or the
    /// connection was not closed within `timeout`.
    pub fn wait_connection_closed(&self, pid: u32, since: usize, timeout: Duration) -> bool {
        let Some(d) = self.daemon.as_ref() else {
            return false;
        };
        let needle = format!("pid={pid}");
        let t0 = Instant::now();
        let names = |l: &str| l.split_whitespace().any(|w| w == needle.as_str());
        wait_until(timeout, || {
            let log = d.stderr();
            let mut lines = log.get(since..).unwrap_or(&log).lines();
            let mut opened = false;
            let closed = lines.any(|l| {
                opened |= l.contains(" connection ") && names(l);
                l.contains("connection closed") && names(l)
            });
            closed || (!opened && t0.elapsed() > ACCEPT_GRACE) || d.try_wait().is_some()
        }) && d.try_wait().is_none()
    }

    /// The running daemon, if any.
    pub fn daemon(&self) -> Option<&Spawned> {
        self.daemon.as_ref()
    }

    /// Whether the daemon is running (and did not exit by itself).
    pub fn daemon_alive(&self) -> bool {
        self.daemon.as_ref().is_some_and(|d| d.try_wait().is_none())
    }

    /// kill -9 the daemon (if running) and reap it.
    pub fn kill_daemon(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.kill9();
        }
    }

    /// SIGSTOP / SIGCONT / SIGKILL the daemon.
    pub fn signal_daemon(&self, sig: Signal) -> bool {
        self.daemon.as_ref().is_some_and(|d| d.signal(sig))
    }

    /// Stop the daemon cleanly (SIGTERM, 30 s).
    pub fn stop_daemon(&mut self) -> Result<(), String> {
        let Some(d) = self.daemon.take() else {
            return Ok(());
        };
        d.term();
        match d.wait_timeout(Duration::from_secs(30)) {
            Some(st) if st.success() => Ok(()),
            Some(st) => Err(format!(
                "the daemon stopped with {st}\n{}",
                tail_str(&d.stderr(), 3000)
            )),
            None => {
                d.kill9();
                Err(format!(
                    "the daemon did not stop on SIGTERM within 30 s\n{}",
                    tail_str(&d.stderr(), 3000)
                ))
            }
        }
    }

    /// The power-cut disk (for [`Storage::PowerDisk`]).
    pub fn disk(&self) -> Option<&PowerDisk> {
        self.disk.as_ref()
    }

    /// Cut the power of the disk ([`PowerDisk::cut`]), then kill -9 the daemon (a power cut
    /// stops every process too).
    pub fn power_cut(&mut self) {
        self.disk
            .as_ref()
            .expect("power_cut needs Storage::PowerDisk")
            .cut();
        self.kill_daemon();
    }

    /// After [`Rig::power_cut`] (and after killing every client): tear everything down and
    /// power the disk on again.
    pub fn power_cycle(&mut self) -> Result<(), String> {
        let disk = self
            .disk
            .as_mut()
            .expect("power_cycle needs Storage::PowerDisk");
        let r = disk.power_off();
        disk.power_on();
        r
    }

    /// Make everything written so far durable (syncfs of the btrfs mount and of the disk).
    pub fn sync(&self) {
        if self.layout.mount.is_dir() {
            syncfs(&self.layout.mount);
        }
        if let Some(d) = &self.disk {
            d.sync();
        }
        syncfs(&self.layout.state_dir);
        syncfs(&self.layout.home);
    }

    /// Every subvolume of the btrfs filesystem: path relative to its top → subvolume ID.
    pub fn subvolumes(&self) -> BTreeMap<String, u64> {
        let out = Command::new(find_tool("btrfs"))
            .args(["subvolume", "list"])
            .arg(&self.layout.mount)
            .output()
            .unwrap_or_else(|e| panic!("btrfs subvolume list: {e}"));
        assert!(
            out.status.success(),
            "btrfs subvolume list {} failed: {}",
            self.layout.mount.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (head, path) = l.split_once(" path ")?;
                let id = head.split_whitespace().nth(1)?.parse().ok()?;
                Some((path.to_string(), id))
            })
            .collect()
    }

    /// `state.json`, parsed (`Err` says why not).
    pub fn state_json(&self) -> Result<Value, String> {
        let p = self.layout.state_dir.join("state.json");
        let bytes = fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{} does not parse: {e}", p.display()))
    }

    /// The pending operations recorded on disk: `state.json`'s `pending`, then the lines of
    /// `state.journal.jsonl` when its header names this very `state.json` (inode and length;
    /// a journal naming another base was already folded into it). `begin` adds an operation,
    /// `update` replaces its kind (operation and phase), `end` forgets it.
    pub fn pending_ops(&self, state: &Value) -> Vec<Value> {
        let mut ops: Vec<Value> = state["pending"].as_array().cloned().unwrap_or_default();
        let base = self.layout.state_dir.join("state.json");
        let journal = self.layout.state_dir.join("state.journal.jsonl");
        let (Ok(meta), Ok(text)) = (fs::metadata(&base), fs::read_to_string(&journal)) else {
            return ops;
        };
        let mut lines = text.lines();
        let header: Value = match lines.next().map(serde_json::from_str) {
            Some(Ok(h)) => h,
            _ => return ops,
        };
        if header["base_ino"].as_u64() != Some(meta.ino())
            || header["base_len"].as_u64() != Some(meta.len())
        {
            return ops;
        }
        for line in lines {
            // A torn last line is ignored, as the daemon does.
            let Ok(change) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let op_id = change["op_id"].as_str().map(str::to_string);
            match change["op"].as_str() {
                Some("begin") => ops.push(change["pending"].clone()),
                Some("update") => {
                    for o in ops
                        .iter_mut()
                        .filter(|o| o["op_id"].as_str() == op_id.as_deref())
                    {
                        if let (Some(o), Some(kind)) =
                            (o.as_object_mut(), change["kind"].as_object())
                        {
                            for (k, v) in kind {
                                o.insert(k.clone(), v.clone());
                            }
                        }
                    }
                }
                Some("end") => ops.retain(|o| o["op_id"].as_str() != op_id.as_deref()),
                _ => {}
            }
        }
        ops
    }

    /// Snapshots `list` reports, flattened.
    pub fn listed(&self) -> Result<Vec<Listed>, String> {
        let (r, v) = self.json(&["list"]);
        match (r.code(), v) {
            (Some(0), Some(v)) => Ok(parse_list(&v)),
            _ => Err(format!("`ws-ckpt list` failed:\n{}", r.describe())),
        }
    }

    /// Observe everything the invariants need (see [`Observation`]).
    pub fn observe(&self, model: &Model) -> Observation {
        let mut problems = Vec::new();
        let mut usable = true;
        let (st_run, st) = self.json(&["status"]);
        let status = match st {
            Some(v) if matches!(st_run.code(), Some(0) | Some(3)) => v,
            _ => {
                usable = false;
                problems.push(format!(
                    "`ws-ckpt status` failed:\n{}",
                    indent(&st_run.describe())
                ));
                Value::Null
            }
        };
        let mut recorded = BTreeMap::new();
        for w in status["workspaces"].as_array().into_iter().flatten() {
            if let (Some(id), Some(p)) = (w["ws_id"].as_str(), w["path"].as_str()) {
                recorded.insert(
                    id.to_string(),
                    (
                        PathBuf::from(p),
                        w["condition"].as_str().unwrap_or("?").to_string(),
                    ),
                );
            }
        }
        let findings: Vec<String> = status["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                format!(
                    "{}: {}",
                    f["kind"].as_str().unwrap_or("?"),
                    f["message"].as_str().unwrap_or("?")
                )
            })
            .collect();
        if !status.is_null() && status["health"] != "healthy" {
            problems.push(format!(
                "`status` says health {} (expected \"healthy\"); findings: {}",
                status["health"],
                if findings.is_empty() {
                    "none".to_string()
                } else {
                    findings.join("; ")
                }
            ));
        }
        let listed = match self.listed() {
            Ok(l) => l,
            Err(e) => {
                usable = false;
                problems.push(e);
                Vec::new()
            }
        };
        let subvols = self.subvolumes();
        let mut obs = Observation {
            status,
            recorded,
            findings,
            listed,
            subvols,
            problems,
            usable,
            strays: Vec::new(),
        };
        if usable {
            self.scan_leftovers(model, &mut obs);
        }
        self.check_state_file(&mut obs);
        obs
    }

    fn check_state_file(&self, obs: &mut Observation) {
        match self.state_json() {
            Err(e) => obs.problems.push(e),
            Ok(v) => {
                if v["version"] != 1 {
                    obs.problems.push(format!(
                        "state.json has version {} (expected 1)",
                        v["version"]
                    ));
                }
                let pending: Vec<String> = self
                    .pending_ops(&v)
                    .iter()
                    .map(|p| {
                        format!(
                            "{} {} (op {})",
                            p["operation"].as_str().unwrap_or("?"),
                            p["phase"].as_str().unwrap_or(""),
                            p["op_id"].as_str().unwrap_or("?")
                        )
                    })
                    .collect();
                if !pending.is_empty() {
                    obs.problems.push(format!(
                        "state.json still records pending operation(s) after recovery: {}",
                        pending.join(", ")
                    ));
                }
            }
        }
    }

    fn scan_leftovers(&self, model: &Model, obs: &mut Observation) {
        let mut left = Vec::new();
        let homes: BTreeSet<PathBuf> = model
            .ws
            .iter()
            .filter_map(|w| w.path.parent().map(Path::to_path_buf))
            .chain([self.layout.home.clone()])
            .collect();
        // The user directories' parents hold nothing but the harness's workspaces: anything
        // else there (`.<name>.ws-ckpt-init-*`, …, whatever it is called) was left by ws-ckpt.
        let ours: BTreeSet<&Path> = model.ws.iter().map(|w| w.path.as_path()).collect();
        for h in &homes {
            for (_, p) in dir_names(h) {
                if !ours.contains(p.as_path()) {
                    left.push((p.clone(), describe_leftover(&p)));
                }
            }
        }
        let recorded: BTreeSet<&String> = obs.recorded.keys().collect();
        for (name, p) in dir_names(&self.layout.mount) {
            if name == "snapshots" || name == "gates" || obs.subvols.contains_key(&name) {
                continue;
            }
            left.push((p.clone(), describe_leftover(&p)));
        }
        // One gate per recorded workspace, holding its subvolume and nothing else.
        for (ws_id, p) in dir_names(&self.layout.mount.join("gates")) {
            if !recorded.contains(&ws_id) {
                left.push((
                    p.clone(),
                    format!(
                        "{} (storage gate of unrecorded workspace {ws_id})",
                        describe_leftover(&p)
                    ),
                ));
                continue;
            }
            for (name, q) in dir_names(&p) {
                if name != "live" && !obs.subvols.contains_key(&format!("gates/{ws_id}/{name}")) {
                    left.push((q.clone(), describe_leftover(&q)));
                }
            }
        }
        let listed: BTreeSet<(String, String)> = obs
            .listed
            .iter()
            .flat_map(|l| l.ws_keys.iter().map(|k| (k.clone(), l.id.clone())))
            .collect();
        for (ws_id, p) in dir_names(&self.layout.snapshots_root()) {
            if !recorded.contains(&ws_id) {
                left.push((
                    p.clone(),
                    format!(
                        "{} (snapshot directory of unrecorded workspace {ws_id})",
                        describe_leftover(&p)
                    ),
                ));
                continue;
            }
            for (name, q) in dir_names(&p) {
                let rel = format!("snapshots/{ws_id}/{name}");
                if !listed.contains(&(ws_id.clone(), name.clone()))
                    && !obs.subvols.contains_key(&rel)
                {
                    left.push((q.clone(), describe_leftover(&q)));
                }
            }
        }
        for (rel, p) in walk_names(&self.layout.state_dir) {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with('.') {
                left.push((
                    p.clone(),
                    format!(
                        "{} (a hidden temporary, e.g. of the atomic writer)",
                        p.display()
                    ),
                ));
            } else if name.contains(".corrupt-") {
                left.push((
                    p.clone(),
                    format!(
                        "{} (a state file was found corrupt and moved aside: a write was torn)",
                        p.display()
                    ),
                ));
            } else if let Some(ws) = rel.strip_prefix("indexes/") {
                if !ws.contains('/') && !recorded.contains(&ws.to_string()) {
                    left.push((
                        p.clone(),
                        format!("{} (index of unrecorded workspace {ws})", p.display()),
                    ));
                }
            }
        }
        for (name, p) in dir_names(&self.layout.dropin_dir()) {
            if name.starts_with('.') {
                left.push((
                    p.clone(),
                    format!("{} (temporary file in config.d)", p.display()),
                ));
            }
        }
        for (path, l) in left {
            let path = path.display().to_string();
            if self.tolerated.contains(&path) {
                continue;
            }
            obs.strays.push(path);
            let reported = obs
                .findings
                .iter()
                .find(|f| l.split_whitespace().next().is_some_and(|p| f.contains(p)));
            obs.problems.push(format!(
                "leftover: {l} [{}]",
                match reported {
                    Some(f) => format!("reported: {f}"),
                    None => "not reported by any finding".to_string(),
                }
            ));
        }
        let _ = model;
    }

    /// Compare the observation with `candidates` (e.g. `[("before", …), ("after", …)]`) for
    /// workspace `op_ws`; every other workspace must equal the first candidate. Returns the
    /// index of the matching candidate, or every problem found (model-independent problems
    /// included). `content` verifies the bytes of every file of every snapshot too (the
    /// operated-on workspace's live tree is always verified).
    pub fn check(
        &self,
        obs: &Observation,
        candidates: &[(&str, &Model)],
        op_ws: Option<usize>,
        content: bool,
    ) -> Result<usize, Vec<String>> {
        let mut problems = obs.problems.clone();
        if !obs.usable {
            return Err(problems);
        }
        let base = candidates[0].1;
        let mut chosen = None;
        match op_ws {
            Some(j) => {
                let mut why = Vec::new();
                let structural: Vec<Vec<String>> = candidates
                    .iter()
                    .map(|(_, m)| self.compare_ws(obs, &m.ws[j], false, false))
                    .collect();
                for (i, (name, m)) in candidates.iter().enumerate() {
                    let diffs = if structural[i].is_empty() {
                        self.compare_ws(obs, &m.ws[j], true, content)
                    } else {
                        structural[i].clone()
                    };
                    if diffs.is_empty() {
                        chosen = Some(i);
                        break;
                    }
                    why.push(format!("vs {name}:\n{}", indent(&diffs.join("\n"))));
                }
                if chosen.is_none() {
                    let names: Vec<&str> = candidates.iter().map(|(n, _)| *n).collect();
                    problems.push(format!(
                        "workspace `{}` ({}) matches none of [{}]:\n{}",
                        base.ws[j].name,
                        base.ws[j].path.display(),
                        names.join(", "),
                        indent(&why.join("\n"))
                    ));
                }
            }
            None => chosen = Some(0),
        }
        let outcome = candidates[chosen.unwrap_or(0)].1;
        for (j, w) in outcome.ws.iter().enumerate() {
            if Some(j) == op_ws {
                continue;
            }
            let diffs = self.compare_ws(obs, w, content, content);
            if !diffs.is_empty() {
                problems.push(format!(
                    "workspace `{}` ({}), not operated on, changed:\n{}",
                    w.name,
                    w.path.display(),
                    indent(&diffs.join("\n"))
                ));
            }
        }
        // Every subvolume on disk is a recorded workspace or a listed snapshot of the outcome
        // (with no candidate matching, anything either candidate expects is tolerated here).
        let mut expected = BTreeSet::new();
        let models: Vec<&Model> = match chosen {
            Some(i) => vec![candidates[i].1],
            None => candidates.iter().map(|(_, m)| *m).collect(),
        };
        for m in models {
            for w in &m.ws {
                if let (true, Some(id)) = (w.managed, &w.ws_id) {
                    expected.insert(ws_subvol_rel(id));
                    for s in w.snaps.keys() {
                        expected.insert(format!("snapshots/{id}/{s}"));
                    }
                }
            }
        }
        for (p, id) in &obs.subvols {
            if !expected.contains(p)
                && !self
                    .tolerated
                    .contains(&self.layout.mount.join(p).display().to_string())
            {
                let reported = obs.findings.iter().find(|f| f.contains(p.as_str()));
                problems.push(format!(
                    "unrecorded subvolume {} (ID {id}) on the filesystem [{}]",
                    self.layout.mount.join(p).display(),
                    match reported {
                        Some(f) => format!("reported: {f}"),
                        None => "not reported by any finding".to_string(),
                    }
                ));
            }
        }
        let known: BTreeSet<&String> = outcome.ws.iter().filter_map(|w| w.ws_id.as_ref()).collect();
        for (id, (p, _)) in &obs.recorded {
            if !known.contains(id) {
                problems.push(format!(
                    "unexpected workspace {id} ({}) is recorded",
                    p.display()
                ));
            }
        }
        match (chosen, problems.is_empty()) {
            (Some(i), true) => Ok(i),
            _ => Err(problems),
        }
    }

    /// Subvolumes (full paths) that none of `models` expects and that are not tolerated.
    pub fn unexpected_subvolumes(&self, obs: &Observation, models: &[&Model]) -> Vec<String> {
        let mut expected = BTreeSet::new();
        for m in models {
            for w in &m.ws {
                if let (true, Some(id)) = (w.managed, &w.ws_id) {
                    expected.insert(ws_subvol_rel(id));
                    for s in w.snaps.keys() {
                        expected.insert(format!("snapshots/{id}/{s}"));
                    }
                }
            }
        }
        obs.subvols
            .keys()
            .filter(|p| !expected.contains(*p))
            .map(|p| self.layout.mount.join(p).display().to_string())
            .filter(|p| !self.tolerated.contains(p))
            .collect()
    }

    /// Differences between the disk and one workspace model. `live_content` verifies the
    /// workspace's file bytes, `snap_content` those of its snapshots.
    fn compare_ws(
        &self,
        obs: &Observation,
        w: &WsModel,
        live_content: bool,
        snap_content: bool,
    ) -> Vec<String> {
        let mut d = Vec::new();
        let path_str = w.path.display().to_string();
        let meta = fs::symlink_metadata(&w.path);
        let rec = obs.recorded.iter().find(|(_, (p, _))| *p == w.path);
        if w.managed {
            let Some(ws_id) = &w.ws_id else {
                return vec!["harness: workspace without a known ws_id".into()];
            };
            let subvol = self.layout.ws_subvol(ws_id);
            match fs::read_link(&w.path) {
                Ok(t) if t == subvol => {}
                Ok(t) => d.push(format!(
                    "path is a symlink to {}, expected {}",
                    t.display(),
                    subvol.display()
                )),
                Err(_) => d.push(format!(
                    "path is {}, expected the workspace symlink to {}",
                    describe_meta(&meta),
                    subvol.display()
                )),
            }
            match rec {
                Some((id, (_, cond))) => {
                    if id != ws_id {
                        d.push(format!("status records it as {id}, expected {ws_id}"));
                    }
                    if cond != "ready" {
                        d.push(format!("status condition is {cond:?}, expected \"ready\""));
                    }
                }
                None => d.push("status does not record it as a workspace".into()),
            }
            if !obs.subvols.contains_key(&ws_subvol_rel(ws_id)) {
                d.push(format!("its subvolume {} does not exist", subvol.display()));
            }
            if d.is_empty() {
                for x in compare_tree(&w.path, &w.tree, live_content) {
                    d.push(format!("content: {x}"));
                }
            }
            let listed: BTreeMap<&str, &Listed> = obs
                .listed
                .iter()
                .filter(|l| l.ws_keys.iter().any(|k| k == ws_id || *k == path_str))
                .map(|l| (l.id.as_str(), l))
                .collect();
            for (id, s) in &w.snaps {
                let rel = format!("snapshots/{ws_id}/{id}");
                let Some(l) = listed.get(id.as_str()) else {
                    d.push(format!(
                        "snapshot {id} is not listed{}",
                        if obs.subvols.contains_key(&rel) {
                            " (its subvolume exists)"
                        } else {
                            " and its subvolume is gone"
                        }
                    ));
                    continue;
                };
                if l.message != s.message || l.metadata != s.metadata || l.pinned != s.pinned {
                    d.push(format!(
                        "snapshot {id} is listed with message {:?}, metadata {}, pinned {}; expected message {:?}, metadata {}, pinned {}",
                        l.message,
                        l.metadata.as_ref().map(|m| m.to_string()).unwrap_or("null".into()),
                        l.pinned,
                        s.message,
                        s.metadata.as_ref().map(|m| m.to_string()).unwrap_or("null".into()),
                        s.pinned
                    ));
                }
                if l.missing {
                    d.push(format!("snapshot {id} is listed as MISSING"));
                }
                let Some(sv) = obs.subvols.get(&rel) else {
                    d.push(format!(
                        "snapshot {id} is listed but its subvolume {rel} is not on disk"
                    ));
                    continue;
                };
                if let Some(old) = self.snap_ids.get(&rel).filter(|old| *old != sv) {
                    d.push(format!(
                        "snapshot {id} was replaced: its subvolume ID was {old}, now {sv}"
                    ));
                }
                for x in compare_tree(&self.layout.mount.join(&rel), &s.tree, snap_content) {
                    d.push(format!("snapshot {id} content: {x}"));
                }
            }
            for id in listed.keys() {
                if !w.snaps.contains_key(*id) {
                    let l = listed[id];
                    d.push(format!(
                        "snapshot {id} is listed but should not exist (message {:?}, pinned {})",
                        l.message, l.pinned
                    ));
                }
            }
        } else {
            match &meta {
                Ok(m) if m.is_dir() => {}
                _ => d.push(format!(
                    "path is {}, expected a plain directory",
                    describe_meta(&meta)
                )),
            }
            if let Some((id, (_, cond))) = rec {
                d.push(format!(
                    "status still records it as workspace {id} ({cond})"
                ));
            }
            if let Some(ws_id) = &w.ws_id {
                let n = obs
                    .listed
                    .iter()
                    .filter(|l| l.ws_keys.iter().any(|k| k == ws_id || *k == path_str))
                    .count();
                if n > 0 {
                    d.push(format!("{n} snapshot(s) still listed for it"));
                }
            }
            if d.is_empty() {
                for x in compare_tree(&w.path, &w.tree, live_content) {
                    d.push(format!("content: {x}"));
                }
            }
        }
        cap(d, 16)
    }

    /// The model-independent checks that follow a recovery: a second `apply` changes nothing
    /// and `plan --detailed-exitcode` is in sync.
    pub fn converged(&self) -> Vec<String> {
        let mut p = Vec::new();
        let (r, v) = self.json(&["apply"]);
        match (r.code(), v) {
            (Some(0), Some(v)) if v["changed"] == false => {}
            _ => p.push(format!(
                "a second `apply` did not report `changed: false`:\n{}",
                indent(&r.describe())
            )),
        }
        let r = self.run(&["plan", "--detailed-exitcode"]);
        if r.code() != Some(0) {
            p.push(format!(
                "`plan --detailed-exitcode` is not in sync (exit {:?}):\n{}",
                r.code(),
                indent(&r.stdout)
            ));
        }
        p
    }

    /// Names, sizes and times of what ws-ckpt writes (state files, drop-ins, user paths,
    /// data_root and snapshot entries), for telling whether an interrupted operation had
    /// started to change anything. Cheap (no process is started), so that it can be taken
    /// right before a power cut.
    pub fn fingerprint(&self) -> BTreeSet<String> {
        let mut f = BTreeSet::new();
        for (rel, p) in walk_names(&self.layout.state_dir) {
            if p == self.layout.image || rel == "daemon.lock" || rel == "audit.jsonl" {
                continue;
            }
            if let Ok(m) = fs::symlink_metadata(&p) {
                f.insert(format!(
                    "state:{rel}:{}:{}",
                    m.len(),
                    m.mtime_nsec() + m.mtime() * 1_000_000_000
                ));
            }
        }
        for (name, p) in dir_names(&self.layout.dropin_dir()) {
            if let Ok(m) = fs::symlink_metadata(&p) {
                f.insert(format!("cfg:{name}:{}:{}", m.len(), m.mtime_nsec()));
            }
        }
        for (name, p) in dir_names(&self.layout.home) {
            f.insert(format!(
                "home:{name}:{}",
                describe_meta(&fs::symlink_metadata(&p))
            ));
        }
        for (name, _) in dir_names(&self.layout.mount) {
            f.insert(format!("data:{name}"));
        }
        for (ws, p) in dir_names(&self.layout.mount.join("gates")) {
            for (name, _) in dir_names(&p) {
                f.insert(format!("gate:{ws}/{name}"));
            }
        }
        for (ws, p) in dir_names(&self.layout.snapshots_root()) {
            for (name, _) in dir_names(&p) {
                f.insert(format!("snap:{ws}/{name}"));
            }
        }
        f
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            if d.try_wait().is_none() {
                d.kill9();
            }
        }
        if let Some(mut disk) = self.disk.take() {
            if let Err(e) = disk.power_off() {
                eprintln!("torture: {e}");
            }
        }
    }
}

/// What [`Rig::observe`] saw.
#[derive(Debug)]
pub struct Observation {
    /// `status --format json`.
    pub status: Value,
    /// Recorded workspaces: ws_id → (path, condition).
    pub recorded: BTreeMap<String, (PathBuf, String)>,
    /// `status` findings as `kind: message`.
    pub findings: Vec<String>,
    /// Every snapshot `list` shows.
    pub listed: Vec<Listed>,
    /// Every subvolume on the filesystem (relative path → ID).
    pub subvols: BTreeMap<String, u64>,
    /// Model-independent problems (leftovers, state.json, failed commands).
    pub problems: Vec<String>,
    /// `status` and `list` worked (otherwise nothing is compared with the model).
    pub usable: bool,
    /// Paths of the leftovers found (not counting tolerated ones).
    pub strays: Vec<String>,
}

/// One snapshot as `list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    /// The workspace it belongs to, as `list` names it (ws_id and/or path).
    pub ws_keys: Vec<String>,
    /// Snapshot ID.
    pub id: String,
    /// Message.
    pub message: Option<String>,
    /// Metadata.
    pub metadata: Option<Value>,
    /// Pinned.
    pub pinned: bool,
    /// Shown as MISSING.
    pub missing: bool,
}

/// Read `list --format json` in either shape: ours (`{"workspaces":[{ws_id, path,
/// snapshots:[…]}]}`) or upstream's (an array, or `{"snapshots":[…]}`, of `{"id",
/// "workspace", "meta":{…}}` items).
pub fn parse_list(v: &Value) -> Vec<Listed> {
    fn field<'a>(item: &'a Value, k: &str) -> &'a Value {
        match item.get(k) {
            Some(x) if !x.is_null() => x,
            _ => item
                .get("meta")
                .and_then(|m| m.get(k))
                .unwrap_or(&Value::Null),
        }
    }
    fn one(item: &Value, keys: Vec<String>) -> Option<Listed> {
        Some(Listed {
            ws_keys: keys,
            id: item.get("id")?.as_str()?.to_string(),
            message: field(item, "message").as_str().map(str::to_string),
            metadata: Some(field(item, "metadata").clone()).filter(|m| !m.is_null()),
            pinned: field(item, "pinned").as_bool().unwrap_or(false),
            missing: field(item, "missing").as_bool().unwrap_or(false),
        })
    }
    let mut out = Vec::new();
    if let Some(ws) = v.get("workspaces").and_then(Value::as_array) {
        for w in ws {
            let keys: Vec<String> = ["ws_id", "path"]
                .iter()
                .filter_map(|k| w.get(*k).and_then(Value::as_str).map(str::to_string))
                .collect();
            for s in w["snapshots"].as_array().into_iter().flatten() {
                out.extend(one(s, keys.clone()));
            }
        }
        return out;
    }
    let items = v
        .as_array()
        .or_else(|| v.get("snapshots").and_then(Value::as_array));
    for item in items.into_iter().flatten() {
        let keys: Vec<String> = ["workspace", "ws_id", "path"]
            .iter()
            .filter_map(|k| field(item, k).as_str().map(str::to_string))
            .collect();
        out.extend(one(item, keys));
    }
    out
}

fn dir_names(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    v.sort();
    v
}

/// Every path below `dir` (not following symlinks) as (relative path, path).
fn walk_names(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((rel, d)) = stack.pop() {
        for (name, p) in dir_names(&d) {
            let r = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                stack.push((r.clone(), p.clone()));
            }
            out.push((r, p));
        }
    }
    out
}

fn describe_meta(m: &io::Result<fs::Metadata>) -> String {
    match m {
        Err(e) if e.kind() == io::ErrorKind::NotFound => "missing".into(),
        Err(e) => format!("unreadable ({e})"),
        Ok(m) if m.file_type().is_symlink() => "a symlink".into(),
        Ok(m) if m.is_dir() => "a directory".into(),
        Ok(_) => "a file".into(),
    }
}

fn describe_leftover(p: &Path) -> String {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => format!(
            "{} (a directory with {} entries)",
            p.display(),
            count_entries(p, 1_000_000)
        ),
        Ok(m) if m.file_type().is_symlink() => format!(
            "{} (a symlink to {})",
            p.display(),
            fs::read_link(p)
                .map(|t| t.display().to_string())
                .unwrap_or_default()
        ),
        _ => p.display().to_string(),
    }
}

/// Arguments as a shell would need them typed (single-quoted where needed).
pub fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.len() > 300 {
                // Generated padding: shown shortened (the seed regenerates it).
                let mut cut = 120;
                while !a.is_char_boundary(cut) {
                    cut += 1;
                }
                format!("'{}…[{} more bytes]'", &a[..cut], a.len() - cut)
            } else if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_./=:,-+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Indent every line by four spaces.
pub fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn tail_str(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

// ---------------------------------------------------------------------------------------------
// inotify, for landing an interruption at an externally visible instant
// ---------------------------------------------------------------------------------------------

/// A minimal inotify reader (non-blocking descriptor, `poll` with a timeout).
pub struct Inotify {
    fd: OwnedFd,
    queued: VecDeque<(u32, String)>,
}

impl Inotify {
    /// A new inotify instance.
    pub fn new() -> Inotify {
        // SAFETY: plain syscall; the returned descriptor is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1: {}", io::Error::last_os_error());
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Inotify {
            fd,
            queued: VecDeque::new(),
        }
    }

    /// Watch `dir` for the events in `mask` (`libc::IN_CREATE | libc::IN_MOVED_TO`, …).
    pub fn watch(&self, dir: &Path, mask: u32) {
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("path without NUL");
        // SAFETY: valid descriptor and NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask) };
        assert!(
            wd >= 0,
            "inotify_add_watch {}: {}",
            dir.display(),
            io::Error::last_os_error()
        );
    }

    /// The next event (mask, name) within `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Option<(u32, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.queued.pop_front() {
                return Some(e);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().clamp(1, 1000) as i32) };
            let mut buf = [0u8; 16384];
            // SAFETY: reading into a buffer we own, of the given length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                continue;
            }
            let mut off = 0usize;
            let n = n as usize;
            while off + 16 <= n {
                let mask = u32::from_ne_bytes(buf[off + 4..off + 8].try_into().unwrap_or([0; 4]));
                let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap_or([0; 4]))
                    as usize;
                let raw = &buf[off + 16..(off + 16 + len).min(n)];
                let name = String::from_utf8_lossy(raw.split(|b| *b == 0).next().unwrap_or(&[]))
                    .into_owned();
                self.queued.push_back((mask, name));
                off += 16 + len;
            }
        }
    }
}

impl Default for Inotify {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------------------------
// The torture loop
// ---------------------------------------------------------------------------------------------

/// How operations are interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interruption {
    /// kill -9 of the daemon while a client's request runs in it; restart the daemon.
    Kill9Daemon,
    /// kill -9 of an in-process CLI (no daemon); the next `apply` recovers.
    Kill9InProcess,
    /// kill -9 of the client only; the daemon carries on.
    Kill9Client,
    /// Power cut of the disk holding state_dir, the image and the user directories.
    PowerCut,
    /// Not an interruption: state_dir (a 16 MiB tmpfs) filled to `ENOSPC` while the operation
    /// runs; it must succeed, or fail with no later effect.
    FullStateDir,
}

impl Interruption {
    fn name(self) -> &'static str {
        match self {
            Interruption::Kill9Daemon => "kill -9 of the daemon",
            Interruption::Kill9InProcess => "kill -9 of the in-process CLI",
            Interruption::Kill9Client => "kill -9 of the client only",
            Interruption::PowerCut => "power cut (EXT4_IOC_SHUTDOWN, NOLOGFLUSH)",
            Interruption::FullStateDir => "state_dir full (ENOSPC)",
        }
    }

    fn tag(self) -> u64 {
        match self {
            Interruption::Kill9Daemon => 1,
            Interruption::Kill9InProcess => 2,
            Interruption::Kill9Client => 3,
            Interruption::PowerCut => 4,
            Interruption::FullStateDir => 5,
        }
    }

    fn uses_daemon(self) -> bool {
        !matches!(self, Interruption::Kill9InProcess)
    }
}

/// One broken invariant, with everything needed to understand and replay it.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Iteration (0-based; `None` during setup).
    pub iteration: Option<usize>,
    /// Which world (1 + resets after earlier violations) it happened in.
    pub world: usize,
    /// What was done and when it was interrupted.
    pub context: String,
    /// Every problem found.
    pub problems: Vec<String>,
}

/// Counters of a torture run.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Iterations run.
    pub iterations: usize,
    /// Interruptions that landed while the operation was changing things.
    pub mid: usize,
    /// Interruptions before the operation had changed anything.
    pub early: usize,
    /// Interruptions after the operation had completed.
    pub late: usize,
    /// Power cuts after the client had been told the operation succeeded.
    pub acked: usize,
    /// Iterations whose power cut was meant to come after the acknowledgement (never
    /// mid-operation by design; not counted when checking the mid-operation share).
    pub post_ack: usize,
    /// Iterations per operation kind.
    pub per_kind: BTreeMap<&'static str, usize>,
    /// Mid-operation interruptions per operation kind.
    pub mid_per_kind: BTreeMap<&'static str, usize>,
    /// Worlds built (1 + one per reset after a violation).
    pub worlds: usize,
}

/// Stop after this many violations (each one resets the world).
const MAX_VIOLATIONS: usize = 8;

/// A torture run: one [`Interruption`] kind, a fixed seed, a bounded number of iterations.
pub struct Torture {
    test: String,
    mode: Interruption,
    settings: Settings,
    rng: Rng,
    rig: Option<Rig>,
    model: Model,
    /// Estimated duration per (kind, workspace) in milliseconds.
    est: BTreeMap<(&'static str, usize), f64>,
    /// Learned delay (ms) before which an interruption usually finds nothing changed yet.
    first_effect: BTreeMap<(&'static str, usize), f64>,
    next_snap: u64,
    /// The last iteration's (before, after, workspace), for [`Torture::absorb`].
    last: Option<(Model, Model, usize)>,
    /// Violations absorbed without rebuilding the world.
    absorbed: usize,
    /// Statistics so far.
    pub stats: Stats,
    /// Violations so far.
    pub violations: Vec<Violation>,
    started: Instant,
}

enum Allowed {
    Both,
    AfterOnly,
    BeforeOnly,
}

impl Torture {
    /// A run of `test` with `mode`; `None` when not root.
    pub fn new(test: &str, mode: Interruption, settings: Settings) -> Option<Torture> {
        if !crate::require_root(test) {
            return None;
        }
        let rng = Rng::new(settings.seed).fork(mode.tag());
        Some(Torture {
            test: test.to_string(),
            mode,
            settings,
            rng,
            rig: None,
            model: Model::default(),
            est: BTreeMap::new(),
            first_effect: BTreeMap::new(),
            next_snap: 0,
            last: None,
            absorbed: 0,
            stats: Stats::default(),
            violations: Vec::new(),
            started: Instant::now(),
        })
    }

    fn rig(&self) -> &Rig {
        self.rig.as_ref().expect("world built")
    }

    fn rig_mut(&mut self) -> &mut Rig {
        self.rig.as_mut().expect("world built")
    }

    fn storage(&self) -> Storage {
        match self.mode {
            Interruption::PowerCut => Storage::PowerDisk,
            Interruption::FullStateDir => Storage::SmallStateDir(16),
            _ => Storage::Host,
        }
    }

    /// Build a fresh world: trees, workspaces, and one uninterrupted run of every operation
    /// (which calibrates the delays and checks the invariants without interruption).
    fn build_world(&mut self) -> Result<(), Violation> {
        self.rig = None;
        self.stats.worlds += 1;
        let name = format!("{}-w{}", self.test, self.stats.worlds);
        let t_build = Instant::now();
        let rig = Rig::new(&name, self.storage()).expect("root was checked");
        let mut trng = self.rng.fork(0xABCD + self.stats.worlds as u64);
        let specs = [
            ("big", self.settings.big, true),
            ("small", self.settings.small, true),
            (
                "keep",
                TreeSize {
                    files: self.settings.small.files / 2,
                    bytes: self.settings.small.bytes / 2,
                },
                false,
            ),
        ];
        let mut model = Model::default();
        for (n, size, releasable) in specs {
            let tree = gen_tree(&mut trng, size);
            let path = rig.layout.home.join(n);
            write_tree(&path, &tree);
            model.ws.push(WsModel {
                name: n.to_string(),
                path,
                ws_id: None,
                managed: false,
                releasable,
                tree,
                snaps: BTreeMap::new(),
            });
        }
        self.model = model;
        self.rig = Some(rig);
        if self.mode.uses_daemon() {
            let r = self.rig_mut().start_daemon();
            r.map_err(|e| self.setup_violation("starting the daemon", vec![e]))?;
        }
        let mut plan: Vec<Op> = (0..3).map(|ws| Op::Init { ws }).collect();
        for ws in 0..3 {
            for k in 0..2 {
                let op = self.new_checkpoint(ws, k == 0 && ws == 2);
                plan.push(op);
            }
        }
        for op in plan {
            self.run_uninterrupted(op)?;
        }
        let first = |t: &Torture, ws: usize| {
            t.model.ws[ws]
                .snaps
                .keys()
                .next()
                .cloned()
                .unwrap_or_default()
        };
        let to = first(self, 2);
        self.run_uninterrupted(Op::Rollback { ws: 2, to })?;
        self.run_uninterrupted(Op::Cleanup { ws: 2, keep: 1 })?;
        let id = first(self, 1);
        self.run_uninterrupted(Op::Delete {
            ws: 1,
            id,
            force: false,
        })?;
        let converged = self.rig().converged();
        if !converged.is_empty() {
            return Err(self.setup_violation("after the setup operations", converged));
        }
        eprintln!(
            "torture {}: world {} built and every operation checked once in {:.1} s; estimated durations (ms): {:?}",
            self.test,
            self.stats.worlds,
            t_build.elapsed().as_secs_f64(),
            self.est.iter().map(|((k, w), ms)| (format!("{k}/{}", self.model.ws[*w].name), ms.round())).collect::<Vec<_>>()
        );
        Ok(())
    }

    fn setup_violation(&self, what: &str, problems: Vec<String>) -> Violation {
        Violation {
            iteration: None,
            world: self.stats.worlds,
            context: format!("{}: world setup, {what}", self.mode.name()),
            problems,
        }
    }

    fn new_checkpoint(&mut self, ws: usize, pin: bool) -> Op {
        self.next_snap += 1;
        let n = self.next_snap;
        let words = [
            "edit",
            "refactor",
            "shell",
            "git pull",
            "rm -rf build",
            "测试",
            "überprüfen",
        ];
        let w = *self.rng.pick(&words);
        Op::Checkpoint {
            ws,
            id: format!("c{n:05}"),
            message: format!("torture step {n}: before {w}"),
            metadata: json!({"step": n, "seed": format!("{:#x}", self.settings.seed), "tool": w, "nested": {"k": [n, "v"]}}),
            pin,
        }
    }

    /// Run one operation to completion; it must succeed and the world must equal the model
    /// after it.
    fn run_uninterrupted(&mut self, op: Op) -> Result<(), Violation> {
        let before = self.model.clone();
        let after = op.after(&before);
        let args = op.args(&before);
        let t0 = Instant::now();
        let child = self.rig().spawn(&args);
        let status = loop {
            if let Some(st) = child.try_wait() {
                break st;
            }
            if t0.elapsed() > Duration::from_secs(600) {
                child.kill9();
                return Err(self.setup_violation(
                    &op.describe(&before),
                    vec!["did not finish within 600 s".into()],
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        self.learn(&op, ms);
        let what = op.describe(&before);
        if !status.success() {
            return Err(self.setup_violation(
                &what,
                vec![format!(
                    "the operation failed without interruption ({status}):\n{}\n{}",
                    indent(&child.stdout()),
                    indent(&child.stderr())
                )],
            ));
        }
        let out: Value = serde_json::from_str(&child.stdout()).unwrap_or(Value::Null);
        let mut after = after;
        if let Op::Init { ws } = op {
            match out["ws_id"].as_str() {
                Some(id) => after.ws[ws].ws_id = Some(id.to_string()),
                None => {
                    return Err(self.setup_violation(
                        &what,
                        vec![format!("init printed no ws_id: {}", child.stdout())],
                    ))
                }
            }
        }
        if let Op::Cleanup { ws, keep } = op {
            let mut got: Vec<String> = out["deleted"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["id"].as_str().map(str::to_string))
                .collect();
            got.sort();
            let want = cleanup_victims(&before.ws[ws].snaps, keep);
            if got != want {
                return Err(self.setup_violation(
                    &what,
                    vec![format!(
                        "cleanup deleted {got:?}; the harness's retention rule predicts {want:?}"
                    )],
                ));
            }
        }
        let obs = self.rig().observe(&after);
        let problems = match self
            .rig()
            .check(&obs, &[("after", &after)], Some(op.ws()), false)
        {
            Ok(_) => Vec::new(),
            Err(p) => p,
        };
        if !problems.is_empty() {
            return Err(self.setup_violation(&what, problems));
        }
        self.rig_mut().remember_snapshots(&obs, &after);
        self.model = after;
        Ok(())
    }

    fn learn(&mut self, op: &Op, ms: f64) {
        let key = (op.kind(), op.ws());
        let e = self.est.entry(key).or_insert(ms);
        *e = *e * 0.6 + ms * 0.4;
    }

    fn estimate(&self, op: &Op) -> f64 {
        let known = |k: &'static str| self.est.get(&(k, op.ws())).copied();
        known(op.kind())
            .or_else(|| match op.kind() {
                // Not measured yet: a release copies the tree back, like an init.
                "release" => known("init").map(|ms| ms * 1.3),
                _ => None,
            })
            .unwrap_or(match op.kind() {
                "init" | "release" => 1500.0,
                _ => 40.0,
            })
    }

    fn choose_op(&mut self, rng: &mut Rng) -> Op {
        let m = &self.model;
        let managed: Vec<usize> = (0..m.ws.len()).filter(|&i| m.ws[i].managed).collect();
        let released: Vec<usize> = (0..m.ws.len()).filter(|&i| !m.ws[i].managed).collect();
        let with_snaps: Vec<usize> = managed
            .iter()
            .copied()
            .filter(|&i| !m.ws[i].snaps.is_empty())
            .collect();
        let releasable: Vec<usize> = managed
            .iter()
            .copied()
            .filter(|&i| m.ws[i].releasable)
            .collect();
        // A power cut mostly matters for multi-step operations: fewer checkpoints there.
        let cut = self.mode == Interruption::PowerCut;
        let mut menu: Vec<(&str, u64)> = vec![("checkpoint", if cut { 14 } else { 28 })];
        if !with_snaps.is_empty() {
            menu.extend([
                ("rollback", if cut { 26 } else { 16 }),
                ("delete", 10),
                ("cleanup", 10),
            ]);
        }
        if !releasable.is_empty() {
            menu.push(("release", 18));
        }
        if !released.is_empty() {
            menu.push(("init", 45));
        }
        let total: u64 = menu.iter().map(|(_, w)| w).sum();
        let mut x = rng.below(total);
        let kind = menu
            .iter()
            .find(|(_, w)| {
                if x < *w {
                    true
                } else {
                    x -= w;
                    false
                }
            })
            .map(|(k, _)| *k)
            .unwrap_or("checkpoint");
        let pick_snap = |rng: &mut Rng, ws: usize| {
            let ids: Vec<&String> = m.ws[ws].snaps.keys().collect();
            (*rng.pick(&ids)).clone()
        };
        match kind {
            "rollback" => {
                let ws = *rng.pick(&with_snaps);
                Op::Rollback {
                    ws,
                    to: pick_snap(rng, ws),
                }
            }
            "delete" => {
                let ws = *rng.pick(&with_snaps);
                let id = pick_snap(rng, ws);
                let force = m.ws[ws].snaps[&id].pinned || rng.chance(20);
                Op::Delete { ws, id, force }
            }
            "cleanup" => {
                let ws = *rng.pick(&with_snaps);
                Op::Cleanup {
                    ws,
                    keep: rng.range(1, 3) as usize,
                }
            }
            "release" => Op::Release {
                ws: *rng.pick(&releasable),
            },
            "init" => Op::Init {
                ws: *rng.pick(&released),
            },
            _ => {
                let ws = *rng.pick(&managed);
                let pin = rng.chance(30);
                self.new_checkpoint(ws, pin)
            }
        }
    }

    fn out_of_time(&self) -> bool {
        self.started.elapsed() > self.settings.max_time
    }

    /// Run the whole torture (kill -9 modes: `settings.iterations`; power cut:
    /// `settings.cuts`) and return the statistics. Violations are collected in
    /// [`Torture::violations`]; after each the world is rebuilt.
    pub fn run(&mut self) -> &Stats {
        let n = match self.mode {
            Interruption::PowerCut => self.settings.cuts,
            Interruption::FullStateDir => self.settings.full_rounds,
            _ => self.settings.iterations,
        };
        if let Err(v) = self.guarded(None) {
            self.violations.push(v);
            return &self.stats;
        }
        for i in 0..n {
            if self.out_of_time() || self.violations.len() >= MAX_VIOLATIONS {
                break;
            }
            self.stats.iterations += 1;
            if let Err(v) = self.guarded(Some(i)) {
                eprintln!("{}", self.format_violation(&v));
                self.violations.push(v);
                if self.violations.len() >= MAX_VIOLATIONS || self.out_of_time() || i + 1 == n {
                    break;
                }
                if self.absorb() {
                    continue;
                }
                if let Err(v) = self.guarded(None) {
                    self.violations.push(v);
                    break;
                }
            }
        }
        &self.stats
    }

    /// After a violation, try to go on in the same world instead of rebuilding it: tolerate
    /// the leftovers and unrecorded subvolumes just reported, take a new snapshot's message,
    /// metadata and pin from `list` (the violation already says they were lost), and accept
    /// the world if it then matches the model before or after the operation and has
    /// converged. Anything else (content, a failing `apply`, a pending operation) rebuilds.
    fn absorb(&mut self) -> bool {
        let Some((before, mut after, ws)) = self.last.take() else {
            return false;
        };
        if self.rig.is_none() {
            return false;
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let obs = self.rig().observe(&after);
            if !obs.usable {
                return false;
            }
            if let Some(id) = after.ws[ws].ws_id.clone() {
                for (sid, snap) in after.ws[ws].snaps.iter_mut() {
                    if before.ws[ws].snaps.contains_key(sid) {
                        continue;
                    }
                    if let Some(l) = obs
                        .listed
                        .iter()
                        .find(|l| l.id == *sid && l.ws_keys.contains(&id))
                    {
                        snap.message = l.message.clone();
                        snap.metadata = l.metadata.clone();
                        snap.pinned = l.pinned;
                    }
                }
            }
            let strays: Vec<String> = obs
                .strays
                .iter()
                .cloned()
                .chain(self.rig().unexpected_subvolumes(&obs, &[&before, &after]))
                .collect();
            for p in strays {
                self.rig_mut().tolerate(p);
            }
            let obs = self.rig().observe(&after);
            let cands = [("before", &before), ("after", &after)];
            match self.rig().check(&obs, &cands, Some(ws), false) {
                Ok(k) if self.rig().converged().is_empty() => {
                    self.model = cands[k].1.clone();
                    true
                }
                _ => false,
            }
        }));
        let ok = r.unwrap_or(false);
        if ok {
            self.absorbed += 1;
            eprintln!(
                "torture {}: violation absorbed; going on in the same world, tolerating {:?}",
                self.test,
                self.rig().tolerated()
            );
        }
        ok
    }

    /// Run setup (`None`) or one iteration, turning a harness panic into a violation.
    fn guarded(&mut self, it: Option<usize>) -> Result<(), Violation> {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match it {
            None => self.build_world(),
            Some(i) if self.mode == Interruption::FullStateDir => self.full_round(i),
            Some(i) => self.iteration(i),
        }));
        match r {
            Ok(x) => x,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                Err(Violation {
                    iteration: it,
                    world: self.stats.worlds,
                    context: format!("{}: the harness panicked", self.mode.name()),
                    problems: vec![msg],
                })
            }
        }
    }

    fn iteration(&mut self, i: usize) -> Result<(), Violation> {
        let mut rng = self.rng.fork(1000 + i as u64);
        if self.mode == Interruption::PowerCut {
            self.rig().sync();
        }
        // The harness's own writes (not interrupted): what a user does between operations.
        let mut mutated = String::new();
        if rng.chance(60) {
            let j = rng.below(self.model.ws.len() as u64) as usize;
            let path = self.model.ws[j].path.clone();
            let d = mutate_tree(&path, &mut self.model.ws[j].tree, &mut rng, i as u64);
            mutated = format!("{}: {d}", self.model.ws[j].name);
        }
        let op = self.choose_op(&mut rng);
        let before = self.model.clone();
        let after = op.after(&before);
        self.last = Some((before.clone(), after.clone(), op.ws()));
        let what = op.describe(&before);
        let est = self.estimate(&op);
        *self.stats.per_kind.entry(op.kind()).or_default() += 1;
        let after_ack = self.mode == Interruption::PowerCut && rng.chance(30);
        self.stats.post_ack += usize::from(after_ack);
        // Uniform over the part of the operation that changes things: from where earlier
        // interruptions found nothing changed yet (learned) to a bit past its duration.
        let key = (op.kind(), op.ws());
        let lo = self
            .first_effect
            .get(&key)
            .copied()
            .unwrap_or(0.0)
            .min(est * 0.9)
            * 0.8;
        let delay_ms = lo + rng.unit() * (est * 1.15 - lo);
        let delay = Duration::from_secs_f64(delay_ms / 1000.0);
        // Half of the interruptions (of the mid-operation power cuts: 60 %) wait for the first
        // visible change on disk and then a random part of the operation's duration.
        let triggered = !after_ack
            && rng.chance(if self.mode == Interruption::PowerCut {
                60
            } else {
                50
            });
        let extra = Duration::from_secs_f64(rng.unit() * est * 0.9 / 1000.0);
        let mut first_change_ms: Option<f64> = None;
        let in_process_cut = self.mode == Interruption::PowerCut && rng.chance(35);
        if self.mode == Interruption::PowerCut {
            // Either through the daemon or in-process, switched per iteration.
            let res = if in_process_cut {
                self.rig_mut().stop_daemon()
            } else if self.rig().daemon().is_none() {
                self.rig_mut().start_daemon()
            } else {
                Ok(())
            };
            res.map_err(|e| self.violation(i, &what, "", vec![e]))?;
            self.rig().sync();
        }
        let fp0 = self.rig().fingerprint();
        let args = op.args(&before);
        let t0 = Instant::now();
        let log_at_spawn = self.rig().daemon_log_len();
        let client = self.rig().spawn(&args);
        let mut exited: Option<(std::process::ExitStatus, f64)> = None;
        if after_ack {
            let st = client.wait_timeout(Duration::from_secs(600));
            exited = st.map(|s| (s, t0.elapsed().as_secs_f64() * 1000.0));
            std::thread::sleep(Duration::from_millis(rng.below(20)));
        } else if triggered {
            // Wait until the operation visibly starts changing things, then a random part of
            // its remaining duration.
            let limit = Duration::from_secs_f64((est * 3.0 + 2000.0) / 1000.0);
            let mut since: Option<Instant> = None;
            while t0.elapsed() < limit {
                if let Some(st) = client.try_wait() {
                    exited = Some((st, t0.elapsed().as_secs_f64() * 1000.0));
                    break;
                }
                match since {
                    None => {
                        if self.rig().fingerprint() != fp0 {
                            since = Some(Instant::now());
                            first_change_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                    Some(t) if t.elapsed() >= extra => break,
                    Some(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
        } else {
            while t0.elapsed() < delay {
                if let Some(st) = client.try_wait() {
                    exited = Some((st, t0.elapsed().as_secs_f64() * 1000.0));
                    break;
                }
                std::thread::sleep(Duration::from_micros(300));
            }
        }
        if !after_ack && exited.is_none() {
            exited = client
                .try_wait()
                .map(|st| (st, t0.elapsed().as_secs_f64() * 1000.0));
        }
        let at_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let acked = exited.is_some_and(|(s, _)| s.success());
        if let Some((_, ms)) = exited {
            self.learn(&op, ms);
        }
        let mut problems = Vec::new();
        if self.mode.uses_daemon()
            && self.mode != Interruption::PowerCut
            && !self.rig().daemon_alive()
        {
            problems.push("the daemon had exited by itself before the kill".to_string());
        }
        let mut cut_fp = None;
        match self.mode {
            Interruption::Kill9Daemon => {
                self.rig_mut().kill_daemon();
                if client.wait_timeout(Duration::from_secs(600)).is_none() {
                    problems.push(
                        "the client did not exit within 600 s after the daemon was killed".into(),
                    );
                    client.kill9();
                }
            }
            Interruption::Kill9InProcess => {
                client.kill9();
            }
            Interruption::Kill9Client | Interruption::FullStateDir => {
                client.kill9();
                // The daemon carries the request on: its outcome (and anything it leaves) is
                // judged once it has finished, not while it still writes.
                if !self.rig().wait_connection_closed(
                    client.pid(),
                    log_at_spawn,
                    Duration::from_secs(600),
                ) {
                    problems.push(format!(
                        "the daemon did not finish the request of the killed client (pid {}) within 600 s",
                        client.pid()
                    ));
                }
            }
            Interruption::PowerCut => {
                // What had changed is read just before the cut (the disk is unreadable after).
                cut_fp = Some(self.rig().fingerprint());
                self.rig_mut().power_cut();
                client.kill9();
            }
        }
        let in_flight = exited.is_none();
        let changed = match &cut_fp {
            Some(f) => *f != fp0,
            None => self.rig().fingerprint() != fp0,
        };
        let fe = self.first_effect.entry(key).or_insert(0.0);
        let class = if !in_flight {
            self.stats.late += 1;
            "after the operation had completed"
        } else if self.mode == Interruption::Kill9Client || changed {
            self.stats.mid += 1;
            *self.stats.mid_per_kind.entry(op.kind()).or_default() += 1;
            if at_ms < *fe {
                *fe -= (*fe - at_ms) * 0.5;
            }
            "mid-operation"
        } else {
            self.stats.early += 1;
            if at_ms > *fe {
                *fe += (at_ms - *fe) * 0.5;
            }
            "before the operation had changed anything"
        };
        if acked && self.mode == Interruption::PowerCut {
            self.stats.acked += 1;
        }
        let ctx = format!(
            "op: {what}\ncommand: ws-ckpt {}\n{} {:.0} ms after the client started{} ({}; estimated duration {:.0} ms){}{}{}",
            shell_words(&args),
            self.mode.name(),
            at_ms,
            match first_change_ms {
                Some(f) => format!(", {:.0} ms after the first change on disk", at_ms - f),
                None if triggered => ", waiting for the first change on disk".to_string(),
                None => String::new(),
            },
            class,
            est,
            match exited {
                Some((s, ms)) => format!("\nclient had exited ({s}) after {ms:.0} ms"),
                None => String::new(),
            },
            if acked && self.mode == Interruption::PowerCut { "\nthe operation was ACKNOWLEDGED before the cut" } else { "" },
            if mutated.is_empty() { String::new() } else { format!("\nharness write before it: {mutated}") },
        );
        // Recovery.
        match self.mode {
            Interruption::Kill9Daemon => {
                if let Err(e) = self.rig_mut().start_daemon() {
                    problems.push(format!("the daemon did not restart after kill -9: {e}"));
                    return Err(self.violation(i, &ctx, "", problems));
                }
            }
            Interruption::PowerCut => {
                if let Err(e) = self.rig_mut().power_cycle() {
                    problems.push(format!("tearing down after the cut: {e}"));
                }
                if !in_process_cut {
                    if let Err(e) = self.rig_mut().start_daemon() {
                        problems.push(format!("the daemon did not start after the power cut: {e}"));
                        return Err(self.violation(i, &ctx, "", problems));
                    }
                }
            }
            _ => {}
        }
        let (r, _) = self.rig().json(&["apply"]);
        if r.code() != Some(0) {
            problems.push(format!(
                "the recovery `apply` exited {:?} (expected 0):\n{}",
                r.code(),
                indent(&tail_str(&r.describe(), 4000))
            ));
        }
        let allowed = match exited {
            Some((s, _)) if s.success() => Allowed::AfterOnly,
            Some((s, _))
                if self.mode != Interruption::Kill9Daemon
                    && self.mode != Interruption::PowerCut =>
            {
                problems.push(format!(
                    "the operation failed before it was interrupted ({s}):\n{}",
                    indent(&tail_str(&client.stderr(), 2000))
                ));
                Allowed::BeforeOnly
            }
            _ => Allowed::Both,
        };
        let candidates: Vec<(&str, &Model)> = match allowed {
            Allowed::Both => vec![("before", &before), ("after", &after)],
            Allowed::AfterOnly => vec![("after (the client was told it succeeded)", &after)],
            Allowed::BeforeOnly => vec![("before", &before)],
        };
        let full = i % 5 == 4;
        let obs = self.rig().observe(&after);
        let outcome = self.rig().check(&obs, &candidates, Some(op.ws()), full);
        match outcome {
            Ok(k) => {
                self.model = candidates[k].1.clone();
                let chosen = candidates[k].1;
                self.rig_mut().remember_snapshots(&obs, chosen);
                eprintln!(
                    "torture {} it={i}: {what}: {} at {at_ms:.0} ms ({class}) -> {}",
                    self.test,
                    self.mode.name(),
                    candidates[k].0
                );
            }
            Err(p) => problems.extend(p),
        }
        problems.extend(self.rig().converged());
        if !problems.is_empty() {
            return Err(self.violation(i, &ctx, "", problems));
        }
        Ok(())
    }

    /// One round of the full-`state_dir` test: fill state_dir to `ENOSPC`, run one of
    /// delete, cleanup, release or checkpoint, and check that it either succeeded or failed
    /// with no effect, now (while full), after space is back and a pass ran, and after a
    /// restart.
    fn full_round(&mut self, i: usize) -> Result<(), Violation> {
        const STILL_FULL: &str = "while state_dir is still full";
        let mut rng = self.rng.fork(1000 + i as u64);
        if rng.chance(50) {
            let j = rng.below(self.model.ws.len() as u64) as usize;
            let path = self.model.ws[j].path.clone();
            mutate_tree(&path, &mut self.model.ws[j].tree, &mut rng, i as u64);
        }
        let m = &self.model;
        let with_snaps: Vec<usize> = (0..m.ws.len())
            .filter(|&j| m.ws[j].managed && !m.ws[j].snaps.is_empty())
            .collect();
        let releasable: Vec<usize> = (0..m.ws.len())
            .filter(|&j| m.ws[j].managed && m.ws[j].releasable)
            .collect();
        let released: Vec<usize> = (0..m.ws.len()).filter(|&j| !m.ws[j].managed).collect();
        let managed: Vec<usize> = (0..m.ws.len()).filter(|&j| m.ws[j].managed).collect();
        if !released.is_empty() && rng.chance(50) {
            // Give a released workspace back (with space) so release stays possible.
            let ws = *rng.pick(&released);
            self.run_uninterrupted(Op::Init { ws })?;
        }
        let kind = *rng.pick(&["delete", "cleanup", "release", "checkpoint", "checkpoint"]);
        let op = match kind {
            "delete" if !with_snaps.is_empty() => {
                let ws = *rng.pick(&with_snaps);
                let ids: Vec<String> = self.model.ws[ws].snaps.keys().cloned().collect();
                let id = rng.pick(&ids).clone();
                let force = self.model.ws[ws].snaps[&id].pinned;
                Op::Delete { ws, id, force }
            }
            "cleanup" if !with_snaps.is_empty() => Op::Cleanup {
                ws: *rng.pick(&with_snaps),
                keep: 1,
            },
            "release" if !releasable.is_empty() => Op::Release {
                ws: *rng.pick(&releasable),
            },
            _ => {
                let managed: Vec<usize> = (0..self.model.ws.len())
                    .filter(|&j| self.model.ws[j].managed)
                    .collect();
                let ws = *rng.pick(if managed.is_empty() {
                    &[2usize][..]
                } else {
                    &managed
                });
                let pin = rng.chance(40);
                let mut op = self.new_checkpoint(ws, pin);
                if let Op::Checkpoint { metadata, .. } = &mut op {
                    if rng.chance(50) {
                        // An index record larger than a page cannot fit in a partly used block.
                        metadata["padding"] = Value::String("x".repeat(9000));
                    }
                }
                op
            }
        };
        let _ = managed;
        let in_process = rng.chance(20);
        let res = if in_process {
            self.rig_mut().stop_daemon()
        } else if self.rig().daemon().is_none() {
            self.rig_mut().start_daemon()
        } else {
            Ok(())
        };
        let what = op.describe(&self.model);
        res.map_err(|e| self.violation(i, &what, "", vec![e]))?;
        *self.stats.per_kind.entry(op.kind()).or_default() += 1;
        let before = self.model.clone();
        let after = op.after(&before);
        self.last = Some((before.clone(), after.clone(), op.ws()));
        let small = self
            .rig()
            .layout
            .state_dir
            .parent()
            .expect("state_dir has a parent")
            .to_path_buf();
        let fillers = fill_to_enospc(&small);
        let args = op.args(&before);
        let child = self.rig().spawn(&args);
        let st = child.wait_timeout(Duration::from_secs(600));
        let ok = st.is_some_and(|s| s.success());
        let ctx = format!(
            "op: {what}\ncommand: ws-ckpt {}\n{} {}, with state_dir full (ENOSPC): {}{}",
            shell_words(&args),
            if in_process {
                "in-process"
            } else {
                "through the daemon"
            },
            match st {
                Some(s) => format!("exited {s}"),
                None => "did not finish within 600 s".into(),
            },
            if ok { "succeeded" } else { "FAILED" },
            if ok {
                String::new()
            } else {
                let out: Value = serde_json::from_str(&child.stdout()).unwrap_or(Value::Null);
                format!(
                    ": {} {}",
                    out["error"]["message"].as_str().unwrap_or(""),
                    tail_str(child.stderr().trim(), 600)
                )
            }
        );
        if st.is_none() {
            child.kill9();
        }
        if ok {
            self.stats.late += 1;
        } else {
            self.stats.mid += 1;
            *self.stats.mid_per_kind.entry(op.kind()).or_default() += 1;
        }
        let mut problems = Vec::new();
        let now: Vec<(&str, &Model)> = if ok {
            vec![("after (it reported success)", &after)]
        } else {
            vec![("before (it reported failure)", &before)]
        };
        let label = |p: Vec<String>, when: &str| -> Vec<String> {
            p.into_iter().map(|x| format!("{when}: {x}")).collect()
        };
        let interrupted = |v: &Option<Value>| -> Vec<String> {
            v.as_ref()
                .and_then(|v| v["actions"].as_array())
                .into_iter()
                .flatten()
                .filter(|a| {
                    a["action"]
                        .as_str()
                        .is_some_and(|n| n.contains("interrupted"))
                })
                .map(|a| {
                    format!(
                        "{} ({}){}",
                        a["action"].as_str().unwrap_or("?"),
                        a["detail"].as_str().unwrap_or(""),
                        a["result"]
                            .as_str()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    )
                })
                .collect()
        };
        // 1. Before any pass (through the daemon: while still full; in-process commands
        //    cannot even take the lock on a full state_dir, so they look once space is back):
        //    list and disk agree, nothing is half-done, no interrupted record is left.
        let mut look = |rig: &Rig, when: &str| {
            let mut obs = rig.observe(&after);
            // A full state_dir may well be reported as degraded while it lasts.
            obs.problems
                .retain(|p| !p.starts_with("`status` says health"));
            // An operation whose irreversible step is durable is reported done even when its
            // end record cannot be written yet: the record stays on disk, owed, until space is
            // back (recovery would finish it the way it was reported). Only while full, and
            // only after a success; after the next pass it must be gone (checked below).
            if ok && when == STILL_FULL {
                obs.problems
                    .retain(|p| !p.starts_with("state.json still records pending operation"));
            }
            if let Err(p) = rig.check(&obs, &now, Some(op.ws()), false) {
                problems.extend(label(p, when));
            }
            let (_, plan) = rig.json(&["plan"]);
            let ghosts = interrupted(&plan);
            if !ok && !ghosts.is_empty() {
                problems.push(format!(
                    "{when}: the failed operation left an interrupted record; `plan` proposes {ghosts:?}"
                ));
            }
        };
        if !in_process {
            look(self.rig(), STILL_FULL);
        }
        // 2. Space back, a pass runs: no ghost of a failed operation.
        for f in &fillers {
            let _ = fs::remove_file(f);
        }
        if in_process {
            look(self.rig(), "once space is back, before any pass");
        }
        let (r, applied) = self.rig().json(&["apply"]);
        let ghosts = interrupted(&applied);
        if !ok && !ghosts.is_empty() {
            problems.push(format!(
                "after space came back: the next pass carried out the FAILED operation: {ghosts:?}"
            ));
        }
        if r.code() != Some(0) {
            problems.push(format!(
                "after space came back: `apply` exited {:?}:\n{}",
                r.code(),
                indent(&tail_str(&r.describe(), 3000))
            ));
        }
        // A failed release stays declared `absent`: the declarative retry may release it.
        let later: Vec<(&str, &Model)> = match (&op, ok) {
            (Op::Release { .. }, false) => {
                vec![("before", &before), ("after (declarative retry)", &after)]
            }
            _ => now.clone(),
        };
        let obs = self.rig().observe(&after);
        let mut outcome = 0;
        match self.rig().check(&obs, &later, Some(op.ws()), false) {
            Ok(k) => outcome = k,
            Err(p) => problems.extend(label(p, "after space came back and a pass ran")),
        }
        // 3. After a restart.
        if !in_process {
            if let Err(e) = self
                .rig_mut()
                .stop_daemon()
                .and_then(|_| self.rig_mut().start_daemon())
            {
                problems.push(format!("restarting the daemon: {e}"));
                return Err(self.violation(i, &ctx, "", problems));
            }
        }
        let obs = self.rig().observe(&after);
        if let Err(p) = self
            .rig()
            .check(&obs, &later[outcome..=outcome], Some(op.ws()), i % 3 == 2)
        {
            problems.extend(label(p, "after a restart"));
        }
        problems.extend(label(self.rig().converged(), "after a restart"));
        if !problems.is_empty() {
            return Err(self.violation(i, &ctx, "", problems));
        }
        self.model = later[outcome].1.clone();
        Ok(())
    }

    fn violation(&self, i: usize, ctx: &str, extra: &str, problems: Vec<String>) -> Violation {
        let tolerated = match self.rig.as_ref().map(Rig::tolerated) {
            Some(t) if !t.is_empty() => format!(
                "\n(still tolerating, from earlier violations in this world: {})",
                t.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            _ => String::new(),
        };
        Violation {
            iteration: Some(i),
            world: self.stats.worlds,
            context: format!("{ctx}{extra}{tolerated}"),
            problems,
        }
    }

    /// A violation as text: seed, iteration, operation, delay, problems and how to replay.
    pub fn format_violation(&self, v: &Violation) -> String {
        let it = match v.iteration {
            Some(i) => format!("iteration={i}"),
            None => "world setup".into(),
        };
        let replay_n = v.iteration.map(|i| i + 1).unwrap_or(1);
        format!(
            "TORTURE VIOLATION in {}: seed={:#x} {it} world={}\n{}\nproblems:\n{}\nreplay: {} {}={replay_n} cargo test -p ws-ckpt-integration-tests --test torture {} -- --nocapture",
            self.test,
            self.settings.seed,
            v.world,
            indent(&v.context),
            v.problems
                .iter()
                .map(|p| indent(&format!("- {p}")))
                .collect::<Vec<_>>()
                .join("\n"),
            self.settings.replay_env(),
            if self.mode == Interruption::PowerCut { CUTS_ENV } else { ITERATIONS_ENV },
            self.test
        )
    }

    /// Panic with every violation, or when too few interruptions landed mid-operation (a run
    /// that never interrupts anything proves nothing). `min_mid_percent` of the iterations must
    /// have landed mid-operation, and at least one.
    pub fn finish(&mut self, min_mid_percent: usize) {
        // Tear the world down first: a panic with a live TestEnv would dump every log.
        self.rig = None;
        let s = &self.stats;
        let summary = format!(
            "{}: seed={:#x}, {} iteration(s) in {:.0} s, {} world(s), {} violation(s) absorbed; interruptions: {} mid-operation, {} before any change, {} after completion{}; per kind {:?}; mid-operation per kind {:?}",
            self.test,
            self.settings.seed,
            s.iterations,
            self.started.elapsed().as_secs_f64(),
            s.worlds,
            self.absorbed,
            s.mid,
            s.early,
            s.late,
            if self.mode == Interruption::PowerCut { format!(", {} after an acknowledgement", s.acked) } else { String::new() },
            s.per_kind,
            s.mid_per_kind
        );
        eprintln!("{summary}");
        if !self.violations.is_empty() {
            let all: Vec<String> = self
                .violations
                .iter()
                .map(|v| self.format_violation(v))
                .collect();
            panic!(
                "{} violation(s) of the crash-safety invariants\n{summary}\n\n{}",
                self.violations.len(),
                all.join("\n\n")
            );
        }
        // Cuts meant to come after the acknowledgement are not expected to land mid-operation.
        let aimed = s.iterations.saturating_sub(s.post_ack);
        let need = (aimed * min_mid_percent).div_ceil(100).max(1);
        assert!(
            s.mid >= need,
            "only {} of {aimed} interruptions aimed inside an operation landed mid-operation (need at least {need}): the run proves too little\n{summary}",
            s.mid,
        );
        assert!(
            s.iterations >= 3,
            "only {} iteration(s) ran within the time cap\n{summary}",
            s.iterations
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_forks_independently() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(7).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut r = Rng::new(7);
        let mut f1 = r.fork(1);
        let mut f2 = r.fork(2);
        assert_ne!(f1.next_u64(), f2.next_u64());
        assert_eq!(
            Rng::new(7).fork(1).next_u64(),
            Rng::new(7).fork(1).next_u64()
        );
        for _ in 0..1000 {
            assert!(r.range(3, 5) >= 3 && r.range(3, 5) <= 5);
            assert!(r.unit() < 1.0);
        }
    }

    #[test]
    fn generated_trees_are_written_and_verified_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("t");
        let mut tree = gen_tree(
            &mut Rng::new(1),
            TreeSize {
                files: 200,
                bytes: 3 << 20,
            },
        );
        write_tree(&root, &tree);
        assert!(compare_tree(&root, &tree, true).is_empty());
        // One byte changed in a large file is found, with its offset.
        let blob = root.join("blobs/blob0.bin");
        let mut data = fs::read(&blob).unwrap();
        data[100_000] ^= 1;
        fs::write(&blob, &data).unwrap();
        let d = compare_tree(&root, &tree, true);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].contains("blobs/blob0.bin") && d[0].contains("100000"),
            "{d:?}"
        );
        // Structure only: the same byte change is not seen; a new file and a mode change are.
        assert!(compare_tree(&root, &tree, false).is_empty());
        fs::write(root.join("d000/extra"), b"x").unwrap();
        fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o755)).unwrap();
        let d = compare_tree(&root, &tree, false);
        assert_eq!(d.len(), 2, "{d:?}");
        // Mutations keep the model in step with the disk.
        fs::remove_file(root.join("d000/extra")).unwrap();
        fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o700)).unwrap();
        let Node::File { key, .. } = tree[Path::new("blobs/blob0.bin")] else {
            panic!("blob0 is not a file in the model");
        };
        write_file(&blob, 0o644, data.len() as u64, key);
        let mut rng = Rng::new(9);
        for i in 0..20 {
            mutate_tree(&root, &mut tree, &mut rng, i);
        }
        assert!(compare_tree(&root, &tree, true).is_empty());
    }

    fn snap(pinned: bool) -> SnapModel {
        SnapModel {
            message: None,
            metadata: None,
            pinned,
            tree: Tree::new(),
        }
    }

    #[test]
    fn cleanup_victims_follow_the_retention_rule() {
        let snaps: BTreeMap<String, SnapModel> = [
            ("c1", false),
            ("c2", true),
            ("c3", false),
            ("c4", false),
            ("c5", false),
        ]
        .into_iter()
        .map(|(id, p)| (id.to_string(), snap(p)))
        .collect();
        assert_eq!(cleanup_victims(&snaps, 2), ["c1", "c3"]);
        assert_eq!(cleanup_victims(&snaps, 1), ["c1", "c3", "c4"]);
        assert!(cleanup_victims(&snaps, 4).is_empty());
        // The newest is never deleted, even when pinned ones push it out of `keep`.
        let only: BTreeMap<String, SnapModel> = [("a", true), ("b", false)]
            .into_iter()
            .map(|(i, p)| (i.to_string(), snap(p)))
            .collect();
        assert!(cleanup_victims(&only, 0).is_empty());
    }

    #[test]
    fn list_is_read_in_both_shapes() {
        let ours = json!({"workspaces": [{"ws_id": "ws-1", "path": "/p", "snapshots": [
            {"id": "s1", "message": "m", "metadata": {"k": 1}, "pinned": true, "missing": false}]}]});
        let upstream = json!([{"id": "s1", "workspace": "/p",
            "meta": {"message": "m", "metadata": {"k": 1}, "pinned": true}}]);
        let a = parse_list(&ours);
        let b = parse_list(&upstream);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].ws_keys, ["ws-1", "/p"]);
        assert_eq!(
            (a[0].id.as_str(), a[0].message.as_deref(), a[0].pinned),
            ("s1", Some("m"), true)
        );
        assert_eq!(b[0].ws_keys, ["/p"]);
        assert_eq!(
            (b[0].metadata.clone(), b[0].pinned, b[0].missing),
            (Some(json!({"k": 1})), true, false)
        );
        let paged = json!({"snapshots": upstream, "next_cursor": null});
        assert_eq!(parse_list(&paged), b);
    }

    #[test]
    fn operations_know_their_after_state() {
        let ws = WsModel {
            name: "w".into(),
            path: PathBuf::from("/h/w"),
            ws_id: Some("ws-1".into()),
            managed: true,
            releasable: true,
            tree: Tree::new(),
            snaps: BTreeMap::new(),
        };
        let m = Model { ws: vec![ws] };
        let c = Op::Checkpoint {
            ws: 0,
            id: "c1".into(),
            message: "m".into(),
            metadata: json!({"a": 1}),
            pin: true,
        };
        let a = c.after(&m);
        assert!(a.ws[0].snaps["c1"].pinned);
        assert_eq!(
            c.args(&m),
            [
                "--format",
                "json",
                "checkpoint",
                "-w",
                "/h/w",
                "-s",
                "c1",
                "-m",
                "m",
                "--metadata",
                "{\"a\":1}",
                "--pin"
            ]
        );
        let r = Op::Release { ws: 0 }.after(&a);
        assert!(!r.ws[0].managed && r.ws[0].snaps.is_empty());
        assert!(Op::Init { ws: 0 }.after(&r).ws[0].managed);
    }

    #[test]
    fn shell_words_quote_and_shorten() {
        let args: Vec<String> = ["-m", "it's here", "plain", &"x".repeat(400)]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let s = shell_words(&args);
        assert!(s.starts_with("-m 'it'\\''s here' plain 'xxx"), "{s}");
        assert!(s.contains("[280 more bytes]"), "{s}");
    }
}
