//! Harness for the tree-engine tests (`tests/tree_*.rs`): throwaway unprivileged users
//! (`wsh_tree_*`, removed on drop), a root-owned victim directory whose every byte, mode, owner,
//! mtime and xattr is recorded and re-checked, an inotify watch proving nobody even opened it,
//! and scans of a tree for setuid files and for a secret.
//!
//! What it must not do: touch anything outside the paths it is given, or leave a user behind.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::hash::Hasher;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::find_tool;

/// Name prefix of every user the tree tests create.
pub const USER_PREFIX: &str = "wsh_tree_";

/// A throwaway unprivileged user (no home, no shell, own group), deleted on drop.
pub struct TreeUser {
    /// Login name (`wsh_tree_…`).
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

impl TreeUser {
    /// Create a new user; retries while another test holds the passwd lock.
    pub fn new() -> TreeUser {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{USER_PREFIX}{}_{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut last = String::new();
        for _ in 0..100 {
            let out = Command::new(find_tool("useradd"))
                .args(["--no-create-home", "--shell", "/usr/sbin/nologin"])
                .args(["--user-group", &name])
                .output()
                .unwrap_or_else(|e| panic!("cannot run useradd: {e}"));
            if out.status.success() {
                let user = nix::unistd::User::from_name(&name)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| panic!("user {name} was just created but is not found"));
                return TreeUser {
                    uid: user.uid.as_raw(),
                    gid: user.gid.as_raw(),
                    name,
                };
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("useradd {name} failed: {last}");
    }

    /// `chown -R` a path to this user (symlinks themselves, never followed).
    pub fn own(&self, path: &Path) {
        crate::run_tool(
            Command::new(find_tool("chown"))
                .args(["-R", "-h", &format!("{}:{}", self.uid, self.gid)])
                .arg(path),
        );
    }

    /// A command running `program` as this user (uid and gid, no supplementary groups).
    pub fn command(&self, program: &Path) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(program);
        cmd.uid(self.uid).gid(self.gid).current_dir("/");
        cmd
    }
}

impl Default for TreeUser {
    fn default() -> Self {
        TreeUser::new()
    }
}

impl Drop for TreeUser {
    fn drop(&mut self) {
        for _ in 0..50 {
            match Command::new(find_tool("userdel")).arg(&self.name).output() {
                Ok(o) if o.status.success() => return,
                Ok(o) if String::from_utf8_lossy(&o.stderr).contains("does not exist") => return,
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        eprintln!("ws-ckpt-it: could not delete user {}", self.name);
    }
}

/// Type, mode, owner, size, content hash, symlink target, mtime and xattrs of every entry at
/// and below `root` (never following a symlink).
pub fn full_digest(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
        let ft = m.file_type();
        let what = if ft.is_symlink() {
            format!("link->{}", fs::read_link(&p).unwrap().display())
        } else if ft.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            "dir".to_string()
        } else if ft.is_file() {
            let mut h = DefaultHasher::new();
            h.write(&fs::read(&p).unwrap());
            format!("file {:016x}", h.finish())
        } else {
            format!("special {:#x}", m.rdev())
        };
        let xattrs = if ft.is_symlink() {
            String::new()
        } else {
            xattrs_of(&p)
        };
        out.insert(
            p.strip_prefix(root).unwrap().to_path_buf(),
            format!(
                "{what} mode={:o} owner={}:{} size={} mtime={}.{} xattrs={xattrs}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.size(),
                m.mtime(),
                m.mtime_nsec()
            ),
        );
    }
    out
}

fn xattrs_of(p: &Path) -> String {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: `c` is NUL-terminated; `buf` is writable for its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return String::new();
    }
    let mut out = Vec::new();
    for name in buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        // SAFETY: as above.
        let k = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        out.push(format!(
            "{}={:?}",
            String::from_utf8_lossy(name),
            &v[..k.max(0) as usize]
        ));
    }
    out.sort();
    out.join(",")
}

/// A root-owned directory (mode 0700) the attacker wants: a secret file (0600), a root
/// "binary" (0755), a subdirectory; recorded at creation and watched with inotify.
pub struct Victim {
    /// The directory.
    pub dir: PathBuf,
    /// The secret's content (unique per victim).
    pub secret: Vec<u8>,
    before: BTreeMap<PathBuf, String>,
    watch: OwnedFd,
}

/// inotify events that mean someone opened, read, changed or touched the victim.
const WATCH_MASK: u32 = libc::IN_OPEN
    | libc::IN_ACCESS
    | libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

impl Victim {
    /// Create the victim at `dir` (must not exist) and start watching it.
    pub fn new(dir: &Path) -> Victim {
        fs::create_dir(dir).unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let secret = format!("WSCKPT-SECRET-{nanos:x}").into_bytes();
        fs::write(dir.join("secret"), &secret).unwrap();
        fs::set_permissions(dir.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(dir.join("bin"), b"#!/bin/sh\necho root\n").unwrap();
        fs::set_permissions(dir.join("bin"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir(dir.join("inner")).unwrap();
        fs::write(dir.join("inner/keep"), b"keep").unwrap();
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
        let before = full_digest(dir);
        // SAFETY: plain inotify_init1; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: the kernel just returned this descriptor.
        let watch = unsafe { OwnedFd::from_raw_fd(fd) };
        for p in [
            dir.to_path_buf(),
            dir.join("inner"),
            dir.join("secret"),
            dir.join("bin"),
        ] {
            let c = CString::new(p.as_os_str().as_bytes()).unwrap();
            // SAFETY: `c` is NUL-terminated; the descriptor is live.
            let w = unsafe { libc::inotify_add_watch(watch.as_raw_fd(), c.as_ptr(), WATCH_MASK) };
            assert!(
                w >= 0,
                "inotify_add_watch {}: {}",
                p.display(),
                std::io::Error::last_os_error()
            );
        }
        Victim {
            dir: dir.to_path_buf(),
            secret,
            before,
            watch,
        }
    }

    /// Number of inotify events since the last call (each means someone opened, read or changed
    /// the victim).
    pub fn events(&self) -> usize {
        let mut buf = vec![0u8; 64 << 10];
        let mut n = 0;
        loop {
            // SAFETY: `buf` is writable for its length; the descriptor is live.
            let k =
                unsafe { libc::read(self.watch.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if k <= 0 {
                return n;
            }
            let mut off = 0usize;
            while off + 16 <= k as usize {
                let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap()) as usize;
                n += 1;
                off += 16 + len;
            }
        }
    }

    /// Assert nobody touched the victim: no inotify event, and every byte, mode, owner, mtime
    /// and xattr as recorded.
    pub fn assert_untouched(&self) {
        let events = self.events();
        assert_eq!(
            events,
            0,
            "{events} inotify events on the victim {}",
            self.dir.display()
        );
        assert_eq!(full_digest(&self.dir), self.before, "the victim changed");
    }
}

/// Regular files at or below `root` with a setuid or setgid bit, with their owner uid.
///
/// Like every walk in this harness that runs while attackers swap entries, it goes by
/// descriptors and never follows a symlink: a walk by path would itself read (and so
/// "touch") a victim an attacker linked in.
pub fn setuid_files(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    walk_files_nofollow(root, &mut |path, file| {
        if let Ok(m) = file.metadata() {
            if m.mode() & 0o6000 != 0 {
                out.push((path.to_path_buf(), m.uid()));
            }
        }
    });
    out
}

/// Regular files at or below `root` whose content contains `needle` (walked by descriptors,
/// see [`setuid_files`]).
pub fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk_files_nofollow(root, &mut |path, mut file| {
        let mut data = Vec::new();
        if std::io::Read::read_to_end(&mut file, &mut data).is_ok()
            && data.windows(needle.len()).any(|w| w == needle)
        {
            out.push(path.to_path_buf());
        }
    });
    out
}

/// Visit every regular file at or below `root`: each directory is opened relative to its
/// parent's descriptor with `O_NOFOLLOW|O_DIRECTORY`, each file with `O_NOFOLLOW`, so an entry
/// swapped for a symlink mid-walk is skipped, never followed.
fn walk_files_nofollow(root: &Path, visit: &mut dyn FnMut(&Path, fs::File)) {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let file_flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let Ok(top) = nix::fcntl::open(root, dir_flags, Mode::empty()) else {
        return;
    };
    let mut stack: Vec<(PathBuf, OwnedFd)> = vec![(root.to_path_buf(), top)];
    while let Some((path, dir)) = stack.pop() {
        let Ok(listing) = nix::dir::Dir::openat(&dir, ".", dir_flags, Mode::empty()) else {
            continue;
        };
        let names: Vec<CString> = listing
            .into_iter()
            .flatten()
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect();
        for name in names {
            let child = path.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
            if let Ok(fd) = openat(&dir, name.as_c_str(), dir_flags, Mode::empty()) {
                stack.push((child, fd));
            } else if let Ok(fd) = openat(&dir, name.as_c_str(), file_flags, Mode::empty()) {
                let file = fs::File::from(fd);
                if file.metadata().map(|m| m.is_file()).unwrap_or(false) {
                    visit(&child, file);
                }
            }
        }
    }
}
