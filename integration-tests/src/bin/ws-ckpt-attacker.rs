//! `ws-ckpt-attacker`: the hostile local user of the hostile-user suite (issue 7,
//! `tests/hostile_*.rs`). The tests start it with `Command::uid/gid` as an unprivileged user
//! and it attacks the root daemon the way such a user could: swapping entries of her own trees
//! for symlinks to root-owned victims in tight loops, hijacking the daemon's temporary entries
//! in her home, reading everything she can reach for a secret, holding socket connections.
//!
//! Protocol with the test: it prints `READY` on stdout once set up, runs until the stop file
//! exists (checked every few milliseconds) or `--max-secs` pass, then undoes what it must
//! (puts a toggled directory back) and prints one JSON line of statistics (`iterations`,
//! `swaps`, `hits`, `secret_hits`, …) so that the test can prove the attack really ran during
//! the operation. It never prints the secret itself.
//!
//! It must not need privileges, touch anything outside the paths it is given, or run without
//! a bound: every loop ends at the stop file or the deadline.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Prefix of every name the attacker creates itself (never hijacked by itself).
const OWN_PREFIX: &str = ".atk-";

/// Largest part of a file the secret reader looks at.
const READ_LIMIT: u64 = 1 << 20;

fn usage() -> ! {
    eprintln!(
        "usage: ws-ckpt-attacker MODE --stop FILE [--max-secs N] [options]\n\
         modes:\n\
         \x20 toggle-parent  --dir D --name N --target T [--dwell-us MIN:MAX] [--trigger blind|read]\n\
         \x20 hijack         --dir D --as own|symlink --target DIR --file-target FILE [--when immediate|nonempty] [--delay-us N]\n\
         \x20 removal        --dir D --name N --target DIR\n\
         \x20 toggle-subdirs --dir TREE --prefix P --target DIR [--dwell-us MIN:MAX]\n\
         \x20 loris          --socket S --conns N --interval-ms M\n\
         \x20 writer         --file F\n\
         \x20 probe          --paths-file F [--scan DIR]...\n\
         \x20 send           --socket S --request-file F\n\
         common: --secret S --scan DIR (a reader thread looks for S in everything under DIR)"
    );
    std::process::exit(2)
}

/// Parsed command line: the mode and `--key value` pairs (repeatable keys keep every value).
struct Args {
    mode: String,
    kv: HashMap<String, Vec<String>>,
}

impl Args {
    fn parse() -> Args {
        let mut it = std::env::args().skip(1);
        let mode = it.next().unwrap_or_else(|| usage());
        let mut kv: HashMap<String, Vec<String>> = HashMap::new();
        while let Some(k) = it.next() {
            let Some(key) = k.strip_prefix("--") else {
                eprintln!("unexpected argument {k:?}");
                usage()
            };
            let v = it.next().unwrap_or_else(|| {
                eprintln!("--{key} needs a value");
                usage()
            });
            kv.entry(key.to_string()).or_default().push(v);
        }
        Args { mode, kv }
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.kv.get(k).and_then(|v| v.last()).map(String::as_str)
    }
    fn req(&self, k: &str) -> &str {
        self.get(k).unwrap_or_else(|| {
            eprintln!("--{k} is required in mode {}", self.mode);
            usage()
        })
    }
    fn path(&self, k: &str) -> PathBuf {
        PathBuf::from(self.req(k))
    }
    fn all(&self, k: &str) -> Vec<String> {
        self.kv.get(k).cloned().unwrap_or_default()
    }
    fn num(&self, k: &str, default: u64) -> u64 {
        match self.get(k) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("--{k} wants a number, got {v:?}");
                usage()
            }),
        }
    }
    fn range(&self, k: &str, default: (u64, u64)) -> (u64, u64) {
        match self.get(k) {
            None => default,
            Some(v) => {
                let (a, b) = v.split_once(':').unwrap_or((v, v));
                match (a.parse(), b.parse()) {
                    (Ok(a), Ok(b)) if a <= b => (a, b),
                    _ => {
                        eprintln!("--{k} wants MIN:MAX, got {v:?}");
                        usage()
                    }
                }
            }
        }
    }
}

/// Counters shared by the attack loop and the reader thread; printed as JSON at the end.
#[derive(Default)]
struct Stats {
    iterations: AtomicU64,
    swaps: AtomicU64,
    hits: AtomicU64,
    errors: AtomicU64,
    scans: AtomicU64,
    files_read: AtomicU64,
    first_error: Mutex<Option<String>>,
    secret_hits: Mutex<Vec<String>>,
    notes: Mutex<Vec<String>>,
    extra: Mutex<serde_json::Map<String, serde_json::Value>>,
}

impl Stats {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(what);
        }
    }
    fn note(&self, what: String) {
        let mut notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        if notes.len() < 50 {
            notes.push(what);
        }
    }
    fn set(&self, k: &str, v: serde_json::Value) {
        self.extra
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(k.to_string(), v);
    }
    fn to_json(&self, mode: &str, elapsed: Duration) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("mode".into(), mode.into());
        m.insert("elapsed_ms".into(), (elapsed.as_millis() as u64).into());
        for (k, v) in [
            ("iterations", &self.iterations),
            ("swaps", &self.swaps),
            ("hits", &self.hits),
            ("errors", &self.errors),
            ("scans", &self.scans),
            ("files_read", &self.files_read),
        ] {
            m.insert(k.into(), v.load(Ordering::Relaxed).into());
        }
        let first = self
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        m.insert("first_error".into(), first.into());
        let hits = self
            .secret_hits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        m.insert("secret_hits".into(), hits.into());
        let notes = self.notes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        m.insert("notes".into(), notes.into());
        for (k, v) in self.extra.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            m.insert(k.clone(), v.clone());
        }
        serde_json::Value::Object(m)
    }
}

/// When to stop: the stop file exists or the deadline passed. Checks the file at most every
/// 2 ms so that a tight loop stays tight.
struct Stopper {
    file: PathBuf,
    deadline: Instant,
    last_check: Mutex<Instant>,
    stopped: AtomicBool,
}

impl Stopper {
    fn should_stop(&self) -> bool {
        if self.stopped.load(Ordering::Relaxed) {
            return true;
        }
        let now = Instant::now();
        if now >= self.deadline {
            self.stopped.store(true, Ordering::Relaxed);
            return true;
        }
        let mut last = self.last_check.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(*last) < Duration::from_millis(2) {
            return false;
        }
        *last = now;
        if fs::symlink_metadata(&self.file).is_ok() {
            self.stopped.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// A small xorshift generator: enough randomness for dwell times, no dependency.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9)
            ^ u64::from(std::process::id()) << 32;
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next() % (hi - lo + 1)
        }
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_else(|_| {
        eprintln!("path with a NUL byte: {}", p.display());
        std::process::exit(2)
    })
}

fn cname(n: &OsString) -> CString {
    CString::new(n.as_bytes()).unwrap_or_else(|_| CString::from(c"invalid"))
}

/// `renameat2(dirfd, a, dirfd, b, RENAME_EXCHANGE)`.
fn exchange_at(dir: &OwnedFd, a: &CString, b: &CString) -> io::Result<()> {
    // SAFETY: valid descriptor and NUL-terminated names for the duration of the call.
    let rc = unsafe {
        libc::renameat2(
            dir.as_raw_fd(),
            a.as_ptr(),
            dir.as_raw_fd(),
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn open_dir(p: &Path) -> io::Result<OwnedFd> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(p)?;
    Ok(OwnedFd::from(f))
}

fn names(dir: &Path) -> Vec<OsString> {
    match fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.file_name()).collect(),
        Err(_) => Vec::new(),
    }
}

fn is_own(name: &OsString) -> bool {
    name.as_bytes().starts_with(OWN_PREFIX.as_bytes())
}

/// Replace `link` by a symlink to `target` (removing a stale one first).
fn fresh_symlink(target: &Path, link: &Path) -> io::Result<()> {
    let _ = fs::remove_file(link);
    std::os::unix::fs::symlink(target, link)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Read at most [`READ_LIMIT`] bytes of a regular file without following a final symlink
/// and without blocking on FIFOs.
fn read_head(p: &Path) -> io::Result<Vec<u8>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)?;
    let mut buf = Vec::new();
    f.take(READ_LIMIT).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The reader: walk every `dir` (never following symlinks) again and again until stopped,
/// reading every regular file this user can open and recording those that hold `secret`.
/// Files owned by someone else are read on every pass (that is where a leaked copy shows up
/// first); the user's own files every eighth pass.
fn reader(secret: Vec<u8>, dirs: Vec<PathBuf>, stats: Arc<Stats>, stop: Arc<Stopper>) {
    let me = nix::unistd::geteuid().as_raw();
    let mut pass: u64 = 0;
    let mut found: HashSet<PathBuf> = HashSet::new();
    while !stop.should_stop() {
        let all = pass.is_multiple_of(8);
        pass += 1;
        let mut stack: Vec<PathBuf> = dirs.clone();
        while let Some(d) = stack.pop() {
            if stop.should_stop() {
                break;
            }
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                let Ok(m) = fs::symlink_metadata(&p) else {
                    continue;
                };
                if m.is_dir() {
                    stack.push(p);
                } else if m.is_file() && (all || m.uid() != me) {
                    if let Ok(data) = read_head(&p) {
                        stats.files_read.fetch_add(1, Ordering::Relaxed);
                        if contains(&data, &secret) && found.insert(p.clone()) {
                            stats
                                .secret_hits
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(p.display().to_string());
                        }
                    }
                }
            }
        }
        stats.scans.fetch_add(1, Ordering::Relaxed);
    }
}

/// `toggle-parent`: exchange `dir/name` (a directory of ours on the path of the operation)
/// with `dir/.atk-<name>` (a symlink to a root directory) again and again. `--trigger blind`
/// flips with a random dwell; `--trigger read` keeps the real directory until the daemon starts
/// reading inside it (inotify), waits for the reads to pause, then holds the symlink.
fn toggle_parent(a: &Args, stats: &Stats, stop: &Stopper) {
    let dir = a.path("dir");
    let name = OsString::from(a.req("name"));
    let target = a.path("target");
    let (lo, hi) = a.range("dwell-us", (5_000, 60_000));
    let trigger = a.get("trigger").unwrap_or("blind");
    let mut evil_name = OsString::from(OWN_PREFIX);
    evil_name.push(&name);
    if let Err(e) = fresh_symlink(&target, &dir.join(&evil_name)) {
        eprintln!(
            "cannot create the symlink {}: {e}",
            dir.join(&evil_name).display()
        );
        std::process::exit(1);
    }
    let dfd = open_dir(&dir).unwrap_or_else(|e| {
        eprintln!("cannot open {}: {e}", dir.display());
        std::process::exit(1)
    });
    let (n1, n2) = (cname(&name), cname(&evil_name));
    let real_ino = fs::symlink_metadata(dir.join(&name))
        .map(|m| m.ino())
        .unwrap_or(0);
    let inotify = if trigger == "read" {
        let ino = Inotify::watch_tree(&dir.join(&name), READ_EVENTS);
        // Our own walk while adding the watches queued events: not the daemon's.
        ino.drain();
        Some(ino)
    } else {
        None
    };
    ready();
    let mut rng = Rng::new();
    let mut evil = false;
    while !stop.should_stop() {
        stats.iterations.fetch_add(1, Ordering::Relaxed);
        if let Some(ino) = &inotify {
            // Wait for the first read, then for a pause of 300 µs, then hold the symlink.
            if !ino.wait_event(stop, Duration::from_millis(5)) {
                continue;
            }
            let mut quiet = Instant::now();
            while quiet.elapsed() < Duration::from_micros(300) && !stop.should_stop() {
                if ino.drain() > 0 {
                    quiet = Instant::now();
                }
            }
            if exchange_at(&dfd, &n1, &n2).is_ok() {
                stats.swaps.fetch_add(1, Ordering::Relaxed);
                stats.hits.fetch_add(1, Ordering::Relaxed);
                evil = true;
            }
            sleep_until_stop(stop, Duration::from_micros(rng.between(lo, hi)));
            if exchange_at(&dfd, &n1, &n2).is_ok() {
                stats.swaps.fetch_add(1, Ordering::Relaxed);
                evil = false;
            }
            ino.drain();
            continue;
        }
        match exchange_at(&dfd, &n1, &n2) {
            Ok(()) => {
                evil = !evil;
                stats.swaps.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => stats.error(format!("exchange {:?}: {e}", name)),
        }
        std::thread::sleep(Duration::from_micros(rng.between(lo, hi)));
    }
    // Put the real directory back under its name.
    let now_ino = fs::symlink_metadata(dir.join(&name))
        .map(|m| m.ino())
        .unwrap_or(0);
    if now_ino != real_ino && exchange_at(&dfd, &n1, &n2).is_err() {
        stats.error(format!("could not restore {:?}", name));
    }
    stats.set("ended_on_symlink", evil.into());
}

fn sleep_until_stop(stop: &Stopper, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !stop.should_stop() {
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(2)));
    }
}

/// `hijack`: every new entry that appears in `dir` (the user's home) and that the attacker did
/// not make is a temporary entry of the daemon. Rename it away and put in its place either a
/// directory of ours (`--as own`: holding a symlink to `--file-target` (or `--target` for a
/// directory) for every entry the daemon had already made, and every non-symlink the daemon
/// creates in it afterwards is replaced the same way) or a symlink to
/// the root directory `--target` (`--as symlink`). `--when nonempty` waits until the daemon
/// has started filling the entry, `--delay-us N` waits N µs after seeing it (both so that the
/// daemon's own checks of a fresh empty directory have passed).
fn hijack(a: &Args, stats: &Stats, stop: &Stopper) {
    let dir = a.path("dir");
    let own = match a.req("as") {
        "own" => true,
        "symlink" => false,
        other => {
            eprintln!("--as own|symlink, not {other:?}");
            usage()
        }
    };
    let target = a.path("target");
    let file_target = a.path("file-target");
    let nonempty = a.get("when") == Some("nonempty");
    let delay = Duration::from_micros(a.num("delay-us", 0));
    let baseline: HashSet<OsString> = names(&dir).into_iter().collect();
    let mut ours: HashSet<(u64, u64)> = HashSet::new();
    let mut own_dirs: Vec<PathBuf> = Vec::new();
    let mut stash = 0u64;
    ready();
    while !stop.should_stop() {
        stats.iterations.fetch_add(1, Ordering::Relaxed);
        for name in names(&dir) {
            if baseline.contains(&name) || is_own(&name) {
                continue;
            }
            let p = dir.join(&name);
            let Ok(m) = fs::symlink_metadata(&p) else {
                continue;
            };
            if ours.contains(&(m.dev(), m.ino())) || !m.is_dir() {
                continue;
            }
            if nonempty && names(&p).is_empty() {
                continue;
            }
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            stash += 1;
            let away = dir.join(format!("{OWN_PREFIX}stash-{}-{stash}", std::process::id()));
            if let Err(e) = fs::rename(&p, &away) {
                stats.error(format!("rename {}: {e}", p.display()));
                continue;
            }
            let made = if own {
                fs::DirBuilder::new().mode(0o755).create(&p)
            } else {
                std::os::unix::fs::symlink(&target, &p)
            };
            match made.and_then(|_| fs::symlink_metadata(&p)) {
                Ok(m) => {
                    ours.insert((m.dev(), m.ino()));
                    if own {
                        // Mirror what the daemon already put in its directory with symlinks
                        // to the victims: a step it still has to do on one of those entries
                        // (by path) lands on a victim.
                        for n in names(&away) {
                            let is_dir =
                                fs::symlink_metadata(away.join(&n)).is_ok_and(|m| m.is_dir());
                            let to = if is_dir { &target } else { &file_target };
                            if std::os::unix::fs::symlink(to, p.join(&n)).is_ok() {
                                stats.swaps.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        own_dirs.push(p.clone());
                    }
                    stats.hits.fetch_add(1, Ordering::Relaxed);
                    stats.note(format!(
                        "hijacked {} ({})",
                        name.to_string_lossy(),
                        if own { "own dir" } else { "symlink" }
                    ));
                }
                Err(e) => stats.error(format!("replace {}: {e}", p.display())),
            }
        }
        for d in &own_dirs {
            for name in names(d) {
                let p = d.join(&name);
                let Ok(m) = fs::symlink_metadata(&p) else {
                    continue;
                };
                if m.file_type().is_symlink() || ours.contains(&(m.dev(), m.ino())) {
                    continue;
                }
                let swapped = if m.is_dir() {
                    let away = d.join(format!("{OWN_PREFIX}sub-{}", m.ino()));
                    fs::rename(&p, away).and_then(|_| std::os::unix::fs::symlink(&target, &p))
                } else {
                    fs::remove_file(&p).and_then(|_| std::os::unix::fs::symlink(&file_target, &p))
                };
                match swapped {
                    Ok(()) => {
                        stats.swaps.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => stats.error(format!("swap {}: {e}", p.display())),
                }
            }
        }
    }
}

/// Events that show the daemon reading or deleting inside a watched tree.
const READ_EVENTS: u32 = libc::IN_OPEN | libc::IN_ACCESS;

/// A non-blocking inotify instance.
struct Inotify {
    fd: OwnedFd,
}

impl Inotify {
    fn new() -> Inotify {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            eprintln!("inotify_init1: {}", io::Error::last_os_error());
            std::process::exit(1);
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Inotify { fd }
    }
    fn add(&self, p: &Path, mask: u32) -> bool {
        self.add_wd(p, mask) >= 0
    }
    fn add_wd(&self, p: &Path, mask: u32) -> i32 {
        let c = cstr(p);
        // SAFETY: valid descriptor and NUL-terminated path.
        unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask) }
    }
    /// Read every pending event; returns the watch descriptors they came from.
    fn read_wds(&self) -> Vec<i32> {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: the buffer is valid for its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return out;
            }
            let hdr = std::mem::size_of::<libc::inotify_event>();
            let mut off = 0usize;
            while off + hdr <= n as usize {
                // SAFETY: the kernel wrote a whole event header at `off`; read_unaligned copes
                // with the byte buffer's alignment.
                let e: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf.as_ptr().add(off).cast()) };
                out.push(e.wd);
                off += hdr + e.len as usize;
            }
        }
    }
    /// Watch `root` and every directory below it (no symlinks followed).
    fn watch_tree(root: &Path, mask: u32) -> Inotify {
        let ino = Inotify::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            ino.add(&d, mask);
            for n in names(&d) {
                let p = d.join(n);
                if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                    stack.push(p);
                }
            }
        }
        ino
    }
    /// Read and discard every pending event; returns how many bytes were read.
    fn drain(&self) -> usize {
        let mut buf = [0u8; 8192];
        let mut total = 0;
        loop {
            // SAFETY: the buffer is valid for its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return total;
            }
            total += n as usize;
        }
    }
    /// Wait up to `max` for an event (polling); true when one arrived.
    fn wait_event(&self, stop: &Stopper, max: Duration) -> bool {
        let end = Instant::now() + max;
        loop {
            if self.drain() > 0 {
                return true;
            }
            if Instant::now() >= end || stop.should_stop() {
                return false;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// `removal`: the directory `dir/name` is about to be turned into a workspace. Once its path
/// has been swapped for the workspace symlink, find where the original went (by inode), wait
/// until the daemon starts deleting inside it, then exchange each remaining subdirectory with a
/// symlink to the root directory `--target`: a removal that walks by path now empties the
/// target.
fn removal(a: &Args, stats: &Stats, stop: &Stopper) {
    let dir = a.path("dir");
    let name = a.req("name").to_string();
    let target = a.path("target");
    let orig = dir.join(&name);
    let m = fs::symlink_metadata(&orig).unwrap_or_else(|e| {
        eprintln!("cannot stat {}: {e}", orig.display());
        std::process::exit(1)
    });
    let key = (m.dev(), m.ino());
    let subdirs: Vec<OsString> = names(&orig)
        .into_iter()
        .filter(|n| fs::symlink_metadata(orig.join(n)).is_ok_and(|m| m.is_dir()))
        .collect();
    let ino = Inotify::new();
    let wds: Vec<i32> = subdirs
        .iter()
        .map(|s| ino.add_wd(&orig.join(s), libc::IN_DELETE))
        .collect();
    let mut touched = vec![false; subdirs.len()];
    ready();
    let mut located: Option<PathBuf> = None;
    let mut seen_move = false;
    let mut done = false;
    while !stop.should_stop() {
        stats.iterations.fetch_add(1, Ordering::Relaxed);
        if done {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        if located.is_none() {
            let moved = fs::symlink_metadata(&orig).map_or(true, |m| (m.dev(), m.ino()) != key);
            if moved {
                located = names(&dir)
                    .into_iter()
                    .map(|n| dir.join(n))
                    .find(|p| fs::symlink_metadata(p).is_ok_and(|m| (m.dev(), m.ino()) == key));
                if !seen_move {
                    seen_move = true;
                    stats.set("moved", true.into());
                }
                if let Some(p) = &located {
                    stats.set("located", true.into());
                    stats.note(format!("original moved to {}", p.display()));
                }
            }
            continue;
        }
        let busy = ino.read_wds();
        if busy.is_empty() {
            continue;
        }
        for wd in busy {
            if let Some(i) = wds.iter().position(|w| *w == wd) {
                touched[i] = true;
            }
        }
        // Deleting has started: swap every subdirectory the daemon has not reached yet (the
        // one it is emptying stays, so that it goes on to the next).
        stats.hits.fetch_add(1, Ordering::Relaxed);
        let Some(loc) = located.clone() else { continue };
        let Ok(dfd) = open_dir(&loc) else {
            stats.error(format!("cannot open {}", loc.display()));
            done = true;
            continue;
        };
        for (i, s) in subdirs.iter().enumerate() {
            if touched[i] || !fs::symlink_metadata(loc.join(s)).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let link = OsString::from(format!("{OWN_PREFIX}rm-{i}"));
            if fresh_symlink(&target, &loc.join(&link)).is_err() {
                continue;
            }
            match exchange_at(&dfd, &cname(s), &cname(&link)) {
                Ok(()) => {
                    stats.swaps.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => stats.error(format!("exchange {:?}: {e}", s)),
            }
        }
        done = true;
    }
}

/// `toggle-subdirs`: in the tree `dir`, exchange every subdirectory whose name starts with
/// `--prefix` with a symlink to the root directory `--target`, each staying in a state for a
/// random dwell. The symlinks wait in a side directory next to the tree (`.atk-side-<name>`,
/// made before `READY`), so the tree itself only ever holds the one name, a directory or a
/// symlink. Both directories are addressed by descriptors, so the toggling goes on wherever
/// the daemon moves the tree. At the end every directory is put back.
fn toggle_subdirs(a: &Args, stats: &Stats, stop: &Stopper) {
    let tree = a.path("dir");
    let prefix = a.req("prefix").as_bytes().to_vec();
    let target = a.path("target");
    let (lo, hi) = a.range("dwell-us", (2_000, 20_000));
    let baits: Vec<OsString> = names(&tree)
        .into_iter()
        .filter(|n| n.as_bytes().starts_with(&prefix))
        .filter(|n| fs::symlink_metadata(tree.join(n)).is_ok_and(|m| m.is_dir()))
        .collect();
    if baits.is_empty() {
        eprintln!(
            "no subdirectory of {} starts with {:?}",
            tree.display(),
            String::from_utf8_lossy(&prefix)
        );
        std::process::exit(1);
    }
    let tree_name = tree
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let mut side_name = OsString::from(OWN_PREFIX);
    side_name.push("side-");
    side_name.push(&tree_name);
    let side = tree.parent().unwrap_or(Path::new("/")).join(side_name);
    if let Err(e) = fs::DirBuilder::new().mode(0o755).create(&side) {
        if e.kind() != io::ErrorKind::AlreadyExists {
            eprintln!("cannot create {}: {e}", side.display());
            std::process::exit(1);
        }
    }
    let open = |p: &Path| {
        open_dir(p).unwrap_or_else(|e| {
            eprintln!("cannot open {}: {e}", p.display());
            std::process::exit(1)
        })
    };
    let (tfd, sfd) = (open(&tree), open(&side));
    let pairs: Vec<(CString, u64)> = baits
        .iter()
        .map(|b| {
            if let Err(e) = fresh_symlink(&target, &side.join(b)) {
                eprintln!("cannot create {}: {e}", side.join(b).display());
                std::process::exit(1);
            }
            let ino = fs::symlink_metadata(tree.join(b))
                .map(|m| m.ino())
                .unwrap_or(0);
            (cname(b), ino)
        })
        .collect();
    let swap = |n: &CString| -> io::Result<()> {
        // SAFETY: valid descriptors and NUL-terminated names for the duration of the call.
        let rc = unsafe {
            libc::renameat2(
                tfd.as_raw_fd(),
                n.as_ptr(),
                sfd.as_raw_fd(),
                n.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let mut rng = Rng::new();
    let mut next_flip: Vec<Instant> = (0..pairs.len())
        .map(|_| Instant::now() + Duration::from_micros(rng.between(0, lo)))
        .collect();
    ready();
    while !stop.should_stop() {
        stats.iterations.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        for (i, (n, _)) in pairs.iter().enumerate() {
            if now < next_flip[i] {
                continue;
            }
            match swap(n) {
                Ok(()) => {
                    stats.swaps.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => stats.error(format!("exchange: {e}")),
            }
            next_flip[i] = now + Duration::from_micros(rng.between(lo, hi));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    // Put every real directory back in the tree (by inode, not by our count).
    for (n, ino) in &pairs {
        let name = std::ffi::OsStr::from_bytes(n.as_bytes());
        let now = fs::symlink_metadata(tree.join(name))
            .map(|m| m.ino())
            .unwrap_or(0);
        if now != *ino && swap(n).is_err() {
            stats.error(format!("could not restore {:?}", name));
        }
    }
}

/// `loris`: hold `--conns` connections to the daemon's socket, each sending one more byte of a
/// request that never ends every `--interval-ms`. A connection the daemon closes is reopened
/// at the next tick (a real attacker keeps every slot it can get).
fn loris(a: &Args, stats: &Stats, stop: &Stopper) {
    let socket = a.path("socket");
    let want = a.num("conns", 100) as usize;
    let interval = Duration::from_millis(a.num("interval-ms", 2000));
    let head: &[u8] = b"{\"v\":1,\"op\":\"status\",\"workspace\":\"";
    let mut conns: Vec<Option<UnixStream>> = (0..want).map(|_| None).collect();
    let mut opened = 0u64;
    let mut closed_by_daemon = 0u64;
    let mut max_held = 0usize;
    let open = |opened: &mut u64| -> Option<UnixStream> {
        let s = UnixStream::connect(&socket).ok()?;
        *opened += 1;
        s.set_nonblocking(true).ok()?;
        let mut s = s;
        s.write_all(&head[..1]).ok()?;
        Some(s)
    };
    for c in conns.iter_mut() {
        *c = open(&mut opened);
    }
    let mut sent = vec![1usize; want];
    ready();
    let mut next = Instant::now() + interval;
    while !stop.should_stop() {
        stats.iterations.fetch_add(1, Ordering::Relaxed);
        // A connection the daemon answered or closed is dead for us.
        for c in conns.iter_mut() {
            let Some(s) = c else { continue };
            let mut buf = [0u8; 512];
            match s.read(&mut buf) {
                Ok(0) => {
                    *c = None;
                    closed_by_daemon += 1;
                }
                Ok(_) => {
                    stats.hits.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    *c = None;
                    closed_by_daemon += 1;
                }
            }
        }
        let held = conns.iter().filter(|c| c.is_some()).count();
        max_held = max_held.max(held);
        if Instant::now() >= next {
            next = Instant::now() + interval;
            for (i, c) in conns.iter_mut().enumerate() {
                match c {
                    Some(s) => {
                        let byte = if sent[i] < head.len() {
                            head[sent[i]]
                        } else {
                            b'a'
                        };
                        if s.write_all(&[byte]).is_err() {
                            *c = None;
                            closed_by_daemon += 1;
                        } else {
                            sent[i] += 1;
                            stats.swaps.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => {
                        *c = open(&mut opened);
                        sent[i] = 1;
                    }
                }
            }
        }
        stats.set("held", held.into());
        std::thread::sleep(Duration::from_millis(20));
    }
    stats.set("opened", opened.into());
    stats.set("closed_by_daemon", closed_by_daemon.into());
    stats.set("max_held", max_held.into());
    stats.set("wanted", want.into());
}

/// `writer`: keep rewriting `--file` (a directory being copied never verifies).
fn writer(a: &Args, stats: &Stats, stop: &Stopper) {
    let file = a.path("file");
    ready();
    let mut n = 0u64;
    while !stop.should_stop() {
        n += 1;
        stats.iterations.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = fs::write(&file, format!("churn {n}\n").repeat(1 + (n % 7) as usize)) {
            stats.error(format!("write {}: {e}", file.display()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `probe`: try to read every path listed in `--paths-file` (one per line) and, with
/// `--scan`, everything found below those directories; report which ones held the secret
/// and how many could be opened at all. One pass, then exit.
fn probe(a: &Args, stats: &Stats) {
    let secret = a.req("secret").as_bytes().to_vec();
    let list = fs::read_to_string(a.req("paths-file")).unwrap_or_default();
    let mut readable = Vec::new();
    let mut tried = 0u64;
    let mut paths: Vec<PathBuf> = list
        .lines()
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .collect();
    let mut stack: Vec<PathBuf> = a.all("scan").into_iter().map(PathBuf::from).collect();
    while let Some(d) = stack.pop() {
        for n in names(&d) {
            let p = d.join(n);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) if m.is_file() => paths.push(p),
                _ => {}
            }
        }
    }
    for p in &paths {
        tried += 1;
        if let Ok(data) = read_head(p) {
            readable.push(p.display().to_string());
            if contains(&data, &secret) {
                stats
                    .secret_hits
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(p.display().to_string());
            }
        }
    }
    stats.iterations.store(tried, Ordering::Relaxed);
    stats.set("readable", readable.len().into());
}

/// `send`: send the request line in `--request-file` over the socket and print the reply line
/// (as a JSON string under `reply`).
fn send(a: &Args, stats: &Stats) {
    let socket = a.path("socket");
    let mut body = fs::read(a.req("request-file")).unwrap_or_else(|e| {
        eprintln!("cannot read the request: {e}");
        std::process::exit(1)
    });
    if body.last() != Some(&b'\n') {
        body.push(b'\n');
    }
    let reply = (|| -> io::Result<String> {
        let mut s = UnixStream::connect(&socket)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.write_all(&body)?;
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.contains(&b'\n') {
                        break;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    })();
    match reply {
        Ok(r) => stats.set("reply", r.trim_end().into()),
        Err(e) => stats.error(format!("socket: {e}")),
    }
}

fn ready() {
    let mut out = io::stdout().lock();
    let _ = out.write_all(b"READY\n");
    let _ = out.flush();
}

fn main() {
    let args = Args::parse();
    let start = Instant::now();
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(Stopper {
        file: args
            .get("stop")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/nonexistent/ws-ckpt-attacker-stop")),
        deadline: start + Duration::from_secs(args.num("max-secs", 120)),
        last_check: Mutex::new(start),
        stopped: AtomicBool::new(false),
    });
    let reader_thread = args
        .get("secret")
        .filter(|_| args.mode != "probe")
        .map(|s| {
            let secret = s.as_bytes().to_vec();
            let dirs: Vec<PathBuf> = args.all("scan").into_iter().map(PathBuf::from).collect();
            let (stats, stop) = (Arc::clone(&stats), Arc::clone(&stop));
            std::thread::spawn(move || reader(secret, dirs, stats, stop))
        });
    match args.mode.as_str() {
        "toggle-parent" => toggle_parent(&args, &stats, &stop),
        "hijack" => hijack(&args, &stats, &stop),
        "removal" => removal(&args, &stats, &stop),
        "toggle-subdirs" => toggle_subdirs(&args, &stats, &stop),
        "loris" => loris(&args, &stats, &stop),
        "writer" => writer(&args, &stats, &stop),
        "probe" => probe(&args, &stats),
        "send" => send(&args, &stats),
        other => {
            eprintln!("unknown mode {other:?}");
            usage()
        }
    }
    stop.stopped.store(true, Ordering::Relaxed);
    if let Some(t) = reader_thread {
        let _ = t.join();
    }
    let line = stats.to_json(&args.mode, start.elapsed());
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
