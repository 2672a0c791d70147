//! Which processes have their working directory inside a workspace (SPEC §5.3: rollback
//! refuses while one does, unless forced).
//!
//! A process is "inside" when `stat(/proc/<pid>/cwd).st_dev` equals the workspace subvolume's
//! `st_dev`: btrfs gives every subvolume its own anonymous device number, so this also catches
//! bind-mount aliases and paths reached through other symlinks. Read-only: it never signals or
//! otherwise touches the processes it finds, and unreadable `/proc` entries (processes that
//! exited, or that we may not inspect) are skipped.

use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Longest command line reported per process.
const MAX_COMMAND_LEN: usize = 200;

/// A process whose current directory is inside a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessUse {
    /// Process ID.
    pub pid: i32,
    /// Its command line (arguments joined by spaces, shortened), or its name.
    pub command: String,
}

/// Every process under `proc_root` (normally `/proc`) whose cwd lies on device `dev`, except
/// the pids in `exclude`, sorted by pid.
pub fn processes_with_cwd_on(proc_root: &Path, dev: u64, exclude: &[i32]) -> Vec<ProcessUse> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut found: Vec<ProcessUse> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| !exclude.contains(pid))
        .filter_map(|pid| {
            let dir = proc_root.join(pid.to_string());
            let cwd = std::fs::metadata(dir.join("cwd")).ok()?;
            (cwd.dev() == dev).then(|| ProcessUse {
                pid,
                command: command_of(&dir),
            })
        })
        .collect();
    found.sort_by_key(|p| p.pid);
    found
}

/// `/proc/<pid>/cmdline` joined by spaces, else `comm`, else `?`.
fn command_of(dir: &Path) -> String {
    let from_cmdline = std::fs::read(dir.join("cmdline")).ok().and_then(|raw| {
        let parts: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    });
    let s = from_cmdline
        .or_else(|| {
            std::fs::read_to_string(dir.join("comm"))
                .ok()
                .map(|c| c.trim().to_string())
        })
        .unwrap_or_else(|| "?".to_string());
    if s.chars().count() > MAX_COMMAND_LEN {
        let mut t: String = s.chars().take(MAX_COMMAND_LEN).collect();
        t.push('…');
        t
    } else {
        s
    }
}

/// One line listing the processes, e.g. `1234 (vim a.txt), 99 (bash)`.
pub fn describe(procs: &[ProcessUse]) -> String {
    procs
        .iter()
        .map(|p| format!("{} ({})", p.pid, p.command))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake /proc: pid dirs with a `cwd` symlink, `cmdline` and `comm`.
    fn fake_proc(root: &Path, pid: i32, cwd: &Path, cmdline: &[u8]) {
        let d = root.join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        symlink(cwd, d.join("cwd")).unwrap();
        std::fs::write(d.join("cmdline"), cmdline).unwrap();
        std::fs::write(d.join("comm"), b"comm-name\n").unwrap();
    }

    #[test]
    fn finds_processes_by_device_and_skips_excluded_and_unreadable() {
        let t = tempfile::tempdir().unwrap();
        let proc_root = t.path().join("proc");
        let inside = t.path().join("ws");
        std::fs::create_dir_all(&inside).unwrap();
        let dev = std::fs::metadata(&inside).unwrap().dev();
        fake_proc(&proc_root, 10, &inside, b"vim\0a.txt\0");
        fake_proc(&proc_root, 11, &inside, b"");
        fake_proc(&proc_root, 12, &inside, b"excluded\0");
        // cwd on another device: /proc itself is never on the tempdir's filesystem.
        fake_proc(&proc_root, 13, Path::new("/proc"), b"elsewhere\0");
        // Dangling cwd (process gone): skipped.
        fake_proc(&proc_root, 14, &t.path().join("gone"), b"gone\0");
        std::fs::create_dir_all(proc_root.join("self-not-a-pid")).unwrap();
        let found = processes_with_cwd_on(&proc_root, dev, &[12]);
        assert_eq!(
            found,
            vec![
                ProcessUse {
                    pid: 10,
                    command: "vim a.txt".into()
                },
                ProcessUse {
                    pid: 11,
                    command: "comm-name".into()
                },
            ]
        );
        assert_eq!(describe(&found), "10 (vim a.txt), 11 (comm-name)");
        assert!(processes_with_cwd_on(&t.path().join("nope"), dev, &[]).is_empty());
    }

    #[test]
    fn real_proc_finds_this_process() {
        let cwd = std::env::current_dir().unwrap();
        let dev = std::fs::metadata(&cwd).unwrap().dev();
        let me = std::process::id() as i32;
        let found = processes_with_cwd_on(Path::new("/proc"), dev, &[]);
        assert!(found.iter().any(|p| p.pid == me), "{found:?}");
        let found = processes_with_cwd_on(Path::new("/proc"), dev, &[me]);
        assert!(!found.iter().any(|p| p.pid == me));
    }

    #[test]
    fn long_command_lines_are_shortened() {
        let t = tempfile::tempdir().unwrap();
        let long = "x".repeat(500);
        fake_proc(t.path(), 5, t.path(), long.as_bytes());
        let found =
            processes_with_cwd_on(t.path(), std::fs::metadata(t.path()).unwrap().dev(), &[]);
        assert_eq!(found[0].command.chars().count(), MAX_COMMAND_LEN + 1);
    }
}
