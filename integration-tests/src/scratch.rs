//! The one loop fixture: an owned scratch directory whose mounts and loop devices are torn
//! down with it, and btrfs filesystems on loop devices made inside it. Used by [`TestEnv`],
//! by the root-tier btrfs tests ([`LoopBtrfs`]) and by the benchmark (`ws-ckpt-bench`).
//!
//! What it must not do: unmount, detach or delete anything outside its own directory (checked
//! by name and location before every teardown), or panic while tearing down. Mount points are
//! read with the product's own mountinfo parser (`ws_ckpt::sys::mountinfo`).
//!
//! [`TestEnv`]: crate::TestEnv

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::MntFlags;

use crate::{find_tool, require_root, run_tool, sanitize, wait_until};

/// `LOOP_CLR_FD` from `<linux/loop.h>`.
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;

/// Name prefix of every scratch directory of the root-tier btrfs tests.
pub const BTRFS_PREFIX: &str = "ws-ckpt-it-btrfs-";

/// An owned directory `<base>/<prefix>…`, torn down on drop (or by [`Scratch::teardown`]):
/// every mount below it unmounted (deepest first, lazily when busy), every loop device backed
/// by a file below it detached, then the directory removed, unless `keep` is set or a mount
/// could not be removed.
pub struct Scratch {
    root: PathBuf,
    dir: Option<tempfile::TempDir>,
    prefix: String,
    bases: Vec<PathBuf>,
    label: &'static str,
    /// Keep the directory (after unmounting and detaching) for inspection.
    pub keep: bool,
}

impl Scratch {
    /// Create `<base>/<prefix>XXXXXX` (mode 0755, canonical) in the first of `bases` that is a
    /// writable directory. `label` prefixes every message of the teardown.
    pub fn create(prefix: &str, bases: &[&str], label: &'static str) -> io::Result<Scratch> {
        let base = bases
            .iter()
            .map(Path::new)
            .find(|b| b.is_dir() && nix::unistd::access(*b, nix::unistd::AccessFlags::W_OK).is_ok())
            .ok_or_else(|| {
                io::Error::other(format!(
                    "none of {} is a writable directory",
                    bases.join(", ")
                ))
            })?;
        let dir = tempfile::Builder::new().prefix(prefix).tempdir_in(base)?;
        let root = fs::canonicalize(dir.path())?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))?;
        let scratch = Scratch {
            root,
            dir: Some(dir),
            prefix: prefix.to_string(),
            bases: bases
                .iter()
                .map(|b| fs::canonicalize(b).unwrap_or_else(|_| PathBuf::from(b)))
                .collect(),
            label,
            keep: false,
        };
        scratch.check().map_err(io::Error::other)?;
        Ok(scratch)
    }

    /// The directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn check(&self) -> Result<(), String> {
        let bases: Vec<&Path> = self.bases.iter().map(PathBuf::as_path).collect();
        check_owned(&self.root, &self.prefix, &bases)
    }

    /// Unmount, detach and remove now (once); reports on stderr what could not be cleaned.
    pub fn teardown(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let label = self.label;
        if let Err(why) = self.check() {
            eprintln!("{label}: NOT cleaning up: {why}");
            let _ = dir.keep();
            return;
        }
        let mounts = unmount_all_under(&self.root, label);
        let loops = detach_loops_under(&self.root, label);
        if !loops.is_empty() {
            eprintln!("{label}: loop devices still attached: {}", join(&loops));
        }
        if !mounts.is_empty() {
            eprintln!(
                "{label}: still mounted under {}: {}; leaving the directory in place (unmount, then remove it)",
                self.root.display(),
                join(&mounts)
            );
            let _ = dir.keep();
            return;
        }
        if self.keep {
            eprintln!("{label}: keeping {}", self.root.display());
            let _ = dir.keep();
            return;
        }
        if let Err(e) = dir.close() {
            eprintln!("{label}: removing {} failed: {e}", self.root.display());
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.teardown()));
        if result.is_err() {
            eprintln!(
                "{}: teardown of {} panicked; mounts or loop devices may be left",
                self.label,
                self.root.display()
            );
        }
    }
}

/// A btrfs filesystem on a loop device for one root-tier test, in its own [`Scratch`]
/// (`/var/tmp/ws-ckpt-it-btrfs-<test>-…`): torn down (unmounted, detached, removed) on drop,
/// even when the test panics.
pub struct LoopBtrfs {
    mnt: PathBuf,
    scratch: Scratch,
}

impl LoopBtrfs {
    /// A fresh `size_mib` MiB btrfs mounted at `<scratch>/fs`, or `None` when not root (after
    /// [`require_root`]'s message; under `CI` it panics instead).
    pub fn new(test: &str, size_mib: u64) -> Option<LoopBtrfs> {
        if !require_root(test) {
            return None;
        }
        let prefix = format!("{BTRFS_PREFIX}{}-", sanitize(test));
        let scratch = Scratch::create(&prefix, &["/var/tmp", "/tmp"], "ws-ckpt-it")
            .unwrap_or_else(|e| panic!("cannot create a scratch directory for {test}: {e}"));
        let mnt = make_loop_btrfs(scratch.root(), "fs", size_mib);
        Some(LoopBtrfs { mnt, scratch })
    }

    /// Where the filesystem is mounted.
    pub fn mnt(&self) -> &Path {
        &self.mnt
    }

    /// The scratch directory holding the image and the mount point.
    pub fn dir(&self) -> &Path {
        self.scratch.root()
    }
}

/// Make an independent btrfs filesystem of `size_mib` MiB (at least ~128: mkfs.btrfs refuses
/// smaller) inside `dir`: a sparse image `<dir>/<name>.img` formatted with `mkfs.btrfs`,
/// attached with `losetup -f --show` and mounted at `<dir>/<name>`, which is returned. The
/// owner of `dir` tears it down.
///
/// # Panics
/// On a bad name or when any step fails, naming the step.
pub fn make_loop_btrfs(dir: &Path, name: &str, size_mib: u64) -> PathBuf {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        panic!("make_loop_btrfs: bad name {name:?}; use a plain file name");
    }
    let image = dir.join(format!("{name}.img"));
    let mnt = dir.join(name);
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

/// Refuse to tear down anything but a directory a [`Scratch`] could have created: absolute,
/// named `<prefix>…`, directly inside one of `bases`, without `.` or `..` components.
pub fn check_owned(root: &Path, prefix: &str, bases: &[&Path]) -> Result<(), String> {
    let name_ok = root
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(prefix) && n.len() > prefix.len());
    let parent_ok = root.parent().is_some_and(|p| {
        bases
            .iter()
            .any(|b| p == *b || p == fs::canonicalize(b).unwrap_or_else(|_| b.to_path_buf()))
    });
    let clean = !root
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir));
    if root.is_absolute() && name_ok && parent_ok && clean {
        Ok(())
    } else {
        let bases: Vec<String> = bases.iter().map(|b| b.display().to_string()).collect();
        Err(format!(
            "{} is not a {prefix}* directory in {}",
            root.display(),
            bases.join(" or ")
        ))
    }
}

/// `path` is `root` or inside it, compared component by component, for absolute paths only.
pub fn is_under(path: &Path, root: &Path) -> bool {
    path.is_absolute()
        && root.is_absolute()
        && root.components().count() > 1
        && !path.components().any(|c| c == Component::ParentDir)
        && path.starts_with(root)
}

/// Mount points (as the product's mountinfo parser reads them) that are at or below `root`,
/// deepest first; a path mounted several times appears several times.
pub fn mount_points_under<'a>(
    mounts: impl IntoIterator<Item = &'a ws_ckpt::sys::MountEntry>,
    root: &Path,
) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mounts
        .into_iter()
        .map(|m| m.mount_point.clone())
        .filter(|m| is_under(m, root))
        .collect();
    sort_deepest_first(&mut found);
    found
}

/// Every mount point at or below `root` in this process's mount namespace (from
/// `/proc/self/mountinfo`), deepest first; a path mounted several times appears several times.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let root = canonical_or_same(root);
    let mounts = ws_ckpt::sys::mountinfo::read_mountinfo().unwrap_or_else(|e| {
        eprintln!("ws-ckpt-it: {e}");
        Vec::new()
    });
    mount_points_under(&mounts, &root)
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

/// The path in a sysfs `backing_file` line, without the trailing newline or " (deleted)".
pub(crate) fn backing_file_path(raw: &str) -> PathBuf {
    let line = raw.strip_suffix('\n').unwrap_or(raw);
    let line = line.strip_suffix(" (deleted)").unwrap_or(line);
    PathBuf::from(line)
}

pub(crate) fn sort_deepest_first(paths: &mut [PathBuf]) {
    paths.sort_by(|a, b| {
        b.components()
            .count()
            .cmp(&a.components().count())
            .then_with(|| a.cmp(b))
    });
}

pub(crate) fn canonical_or_same(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Unmount everything under `root`, deepest first; EBUSY → lazy detach. Returns the mounts
/// still present afterwards.
fn unmount_all_under(root: &Path, label: &str) -> Vec<PathBuf> {
    for _pass in 0..8 {
        let mounts = mounts_under(root);
        if mounts.is_empty() {
            return mounts;
        }
        for m in &mounts {
            if !is_under(m, root) {
                eprintln!(
                    "{label}: refusing to unmount {} (outside {})",
                    m.display(),
                    root.display()
                );
                continue;
            }
            match nix::mount::umount2(m, MntFlags::empty()) {
                Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
                Err(Errno::EBUSY) => {
                    eprintln!("{label}: {} busy; detaching lazily", m.display());
                    if let Err(e) = nix::mount::umount2(m, MntFlags::MNT_DETACH) {
                        eprintln!("{label}: lazy unmount of {} failed: {e}", m.display());
                    }
                }
                Err(e) => eprintln!("{label}: unmount of {} failed: {e}", m.display()),
            }
        }
    }
    mounts_under(root)
}

/// Detach every loop device backed by a file under `root`; returns those still attached after
/// a short wait (autoclear and lazy detach complete asynchronously).
fn detach_loops_under(root: &Path, label: &str) -> Vec<PathBuf> {
    for dev in loops_under(root) {
        if let Err(e) = clear_loop(&dev) {
            eprintln!("{label}: detaching {} failed: {e}", dev.display());
        }
    }
    wait_until(Duration::from_secs(5), || loops_under(root).is_empty());
    loops_under(root)
}

fn clear_loop(dev: &Path) -> io::Result<()> {
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

fn join(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mount points as the product's parser (which the teardown uses) reads them.
    fn mount_points(text: &str) -> Vec<PathBuf> {
        ws_ckpt::sys::mountinfo::parse_mountinfo(text)
            .into_iter()
            .map(|m| m.mount_point)
            .collect()
    }

    #[test]
    fn mountinfo_unescapes_mount_points() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:5 / /var/tmp/ws-ckpt-it-a/back\\134slash rw - btrfs /dev/loop3 rw\n";
        assert_eq!(
            mount_points(text),
            vec![
                PathBuf::from("/mnt/with space"),
                PathBuf::from("/var/tmp/ws-ckpt-it-a/back\\slash")
            ]
        );
        let field = |f: &str| mount_points(&format!("1 2 0:1 / {f} rw - btrfs /dev/x rw\n"));
        assert_eq!(field("/a\\011b\\012"), [PathBuf::from("/a\tb\n")]);
        assert_eq!(field("/trailing\\04"), [PathBuf::from("/trailing\\04")]);
        let root = Path::new("/var/tmp/ws-ckpt-it-a");
        let parsed = ws_ckpt::sys::mountinfo::parse_mountinfo(text);
        assert_eq!(
            mount_points_under(&parsed, root),
            [PathBuf::from("/var/tmp/ws-ckpt-it-a/back\\slash")]
        );
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
        let check_owned_root = |p: &Path| {
            check_owned(
                p,
                crate::ROOT_PREFIX,
                &[Path::new("/var/tmp"), Path::new("/tmp")],
            )
        };
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
    fn only_own_bench_directories_are_cleaned() {
        let bench = |p: &str| check_owned(Path::new(p), "ws-ckpt-bench-", &[Path::new("/var/tmp")]);
        assert!(bench("/var/tmp/ws-ckpt-bench-abc123").is_ok());
        assert!(bench("/var/tmp/ws-ckpt-bench-").is_err());
        assert!(bench("/var/tmp/other").is_err());
        assert!(bench("/var/tmp").is_err());
        assert!(bench("/var/tmp/x/ws-ckpt-bench-abc").is_err());
        assert!(bench("/tmp/ws-ckpt-bench-abc").is_err());
    }
}
