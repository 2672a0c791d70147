//! The benchmark's private directory under `/var/tmp` and its teardown, plus the Ctrl-C flag.
//!
//! [`Scratch`] creates `/var/tmp/ws-ckpt-bench-XXXXXX`; on drop (normal end, error, panic or
//! after Ctrl-C) the caller has stopped its daemons, and the guard unmounts every mount under
//! that directory (deepest first), detaches every loop device backed by a file under it and
//! removes it. It must never unmount, detach or delete anything outside its own directory
//! (checked by name and location), and must not panic while tearing down.

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::mount::MntFlags;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Name prefix of the scratch directory.
pub const PREFIX: &str = "ws-ckpt-bench-";

/// Where the scratch directory is created (a real disk, like the default image location).
const BASE: &str = "/var/tmp";

/// `LOOP_CLR_FD` from `<linux/loop.h>`.
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catch the first SIGINT/SIGTERM: set a flag that the measurement loops poll, so that the
/// run stops between steps and tears down. The handler resets itself, so a second Ctrl-C
/// kills the benchmark at once (leaving its directory behind).
pub fn install_signal_handlers() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }
            .with_context(|| format!("cannot install a {sig} handler"))?;
    }
    Ok(())
}

/// True once SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fail with "interrupted" once SIGINT or SIGTERM arrived; called between measurement steps.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted (SIGINT/SIGTERM); stopping and tearing down");
    }
    Ok(())
}

/// The scratch directory; torn down on drop unless `keep` is set.
pub struct Scratch {
    root: PathBuf,
    dir: Option<tempfile::TempDir>,
    /// Keep the directory (after unmounting and detaching) for inspection.
    pub keep: bool,
}

impl Scratch {
    /// Create `/var/tmp/ws-ckpt-bench-XXXXXX` (mode 0755).
    pub fn new() -> Result<Scratch> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix(PREFIX)
            .tempdir_in(BASE)
            .with_context(|| format!("cannot create a scratch directory in {BASE}"))?;
        let root = fs::canonicalize(dir.path())
            .with_context(|| format!("cannot resolve {}", dir.path().display()))?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot chmod {}", root.display()))?;
        check_owned(&root).map_err(anyhow::Error::msg)?;
        Ok(Scratch {
            root,
            dir: Some(dir),
            keep: false,
        })
    }

    /// The scratch directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Unmount, detach and remove now; reports what could not be cleaned.
    pub fn teardown(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        if let Err(why) = check_owned(&self.root) {
            eprintln!("ws-ckpt-bench: NOT cleaning up: {why}");
            let _ = dir.keep();
            return;
        }
        let mounts = unmount_all_under(&self.root);
        let loops = detach_loops_under(&self.root);
        if !loops.is_empty() {
            eprintln!(
                "ws-ckpt-bench: loop devices still attached: {}",
                join(&loops)
            );
        }
        if !mounts.is_empty() {
            eprintln!(
                "ws-ckpt-bench: still mounted: {}; leaving {} in place (unmount, then rm -rf it)",
                join(&mounts),
                self.root.display()
            );
            let _ = dir.keep();
            return;
        }
        if self.keep {
            eprintln!("ws-ckpt-bench: keeping {}", self.root.display());
            let _ = dir.keep();
            return;
        }
        if let Err(e) = dir.close() {
            eprintln!(
                "ws-ckpt-bench: removing {} failed: {e}",
                self.root.display()
            );
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn join(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Only a directory this module could have created: `/var/tmp/ws-ckpt-bench-…`, no `..`.
fn check_owned(root: &Path) -> Result<(), String> {
    let name_ok = root
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(PREFIX) && n.len() > PREFIX.len());
    let base = fs::canonicalize(BASE).unwrap_or_else(|_| PathBuf::from(BASE));
    let parent_ok = root.parent() == Some(base.as_path());
    let clean = root
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if root.is_absolute() && name_ok && parent_ok && clean {
        Ok(())
    } else {
        Err(format!(
            "{} is not a {PREFIX}* directory in {BASE}",
            root.display()
        ))
    }
}

/// `path` is `root` or below it (component-wise; absolute paths only).
fn is_under(path: &Path, root: &Path) -> bool {
    path.is_absolute()
        && root.components().count() > 2
        && path
            .components()
            .all(|c| !matches!(c, Component::ParentDir))
        && path.starts_with(root)
}

/// Mount points at or below `root`, deepest first.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|f| PathBuf::from(unescape(f)))
        .filter(|m| is_under(m, root))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Undo mountinfo's octal escapes (`\040` = space).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            if let Ok(c) = u8::try_from(v) {
                out.push(c);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmount everything under `root`, deepest first (EBUSY → lazy). Returns what is left.
fn unmount_all_under(root: &Path) -> Vec<PathBuf> {
    for _ in 0..8 {
        let mounts = mounts_under(root);
        if mounts.is_empty() {
            break;
        }
        for m in &mounts {
            match nix::mount::umount2(m, MntFlags::empty()) {
                Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
                Err(Errno::EBUSY) => {
                    eprintln!("ws-ckpt-bench: {} busy; detaching lazily", m.display());
                    if let Err(e) = nix::mount::umount2(m, MntFlags::MNT_DETACH) {
                        eprintln!("ws-ckpt-bench: lazy unmount of {} failed: {e}", m.display());
                    }
                }
                Err(e) => eprintln!("ws-ckpt-bench: unmount of {} failed: {e}", m.display()),
            }
        }
    }
    mounts_under(root)
}

/// Loop devices whose backing file is under `root` (from sysfs).
fn loops_under(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(raw) = fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        let line = raw.trim_end_matches('\n');
        let line = line.strip_suffix(" (deleted)").unwrap_or(line);
        if is_under(Path::new(line), root) {
            found.push(PathBuf::from("/dev").join(name));
        }
    }
    found.sort();
    found
}

/// Detach loop devices backed by files under `root` (autoclear usually did it already).
fn detach_loops_under(root: &Path) -> Vec<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let loops = loops_under(root);
        if loops.is_empty() || Instant::now() >= deadline {
            return loops;
        }
        for dev in &loops {
            if let Ok(f) = File::open(dev) {
                // SAFETY: LOOP_CLR_FD takes no argument; the fd is open for the call.
                let rc = unsafe { libc::ioctl(f.as_raw_fd(), LOOP_CLR_FD as _, 0) };
                if rc != 0 {
                    let err = std::io::Error::last_os_error();
                    if err.raw_os_error() != Some(libc::ENXIO) {
                        eprintln!("ws-ckpt-bench: detaching {} failed: {err}", dev.display());
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_own_directories_are_cleaned() {
        assert!(check_owned(Path::new("/var/tmp/ws-ckpt-bench-abc123")).is_ok());
        assert!(check_owned(Path::new("/var/tmp/ws-ckpt-bench-")).is_err());
        assert!(check_owned(Path::new("/var/tmp/other")).is_err());
        assert!(check_owned(Path::new("/var/tmp")).is_err());
        assert!(check_owned(Path::new("/var/tmp/x/ws-ckpt-bench-abc")).is_err());
    }

    #[test]
    fn under_compares_components() {
        let root = Path::new("/var/tmp/ws-ckpt-bench-a");
        assert!(is_under(Path::new("/var/tmp/ws-ckpt-bench-a/mnt"), root));
        assert!(!is_under(Path::new("/var/tmp/ws-ckpt-bench-ab"), root));
        assert!(!is_under(Path::new("/var/tmp/ws-ckpt-bench-a/../x"), root));
        assert_eq!(unescape("/a\\040b"), "/a b");
    }
}
