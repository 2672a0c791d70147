//! Which directories may never become workspaces (SPEC §5.1 guards). Pure.

use crate::resolve::Resolution;
use std::path::Path;

/// System directories that may never become workspaces (the directory itself).
const SYSTEM_DIRS: &[&str] = &[
    "/",
    "/etc",
    "/usr",
    "/var",
    "/boot",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/home",
    "/root",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/opt",
    "/srv",
    "/tmp",
    "/var/tmp",
    "/mnt",
    "/media",
    "/usr/local",
    "/var/lib",
    "/var/log",
];
/// Trees nothing inside of which may become a workspace.
const SYSTEM_TREES: &[&str] = &["/proc", "/sys", "/dev", "/boot", "/etc", "/usr", "/run"];

/// Why `path` may not become a workspace, if it may not (SPEC §5.1 guards; pure).
pub fn init_guard(
    path: &Path,
    res: &Resolution,
    state_dir: &Path,
    others: &[&Path],
) -> Option<String> {
    if !path.is_absolute() {
        return Some(format!("{} is not an absolute path", path.display()));
    }
    if SYSTEM_DIRS.iter().any(|d| path == Path::new(d)) {
        return Some(format!("{} is a system directory", path.display()));
    }
    if let Some(t) = SYSTEM_TREES.iter().find(|t| path.starts_with(t)) {
        return Some(format!(
            "{} is inside the system directory {t}",
            path.display()
        ));
    }
    for (what, root) in [
        // For a loop backend the mount is the data root; for a base backend the mount is the
        // user's own filesystem, where workspaces may live (same-filesystem init).
        ("ws-ckpt's data root", &res.data_root),
        ("ws-ckpt's snapshots root", &res.snapshots_root),
        ("ws-ckpt's state directory", &state_dir.to_path_buf()),
    ] {
        if path.starts_with(root) || root.starts_with(path) {
            return Some(format!(
                "{} overlaps {what} {}",
                path.display(),
                root.display()
            ));
        }
    }
    if let Some(image) = &res.image {
        if image.starts_with(path) {
            return Some(format!(
                "{} contains the loop image {}",
                path.display(),
                image.display()
            ));
        }
    }
    for other in others {
        if *other == path {
            continue;
        }
        if path.starts_with(other) {
            return Some(format!(
                "{} is inside the workspace {}",
                path.display(),
                other.display()
            ));
        }
        if other.starts_with(path) {
            return Some(format!(
                "{} contains the workspace {}",
                path.display(),
                other.display()
            ));
        }
    }
    None
}
