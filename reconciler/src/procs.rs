//! Which processes have their working directory inside a workspace (SPEC §5.3: rollback
//! refuses while one does, unless forced) or inside a directory about to become one (init,
//! as upstream 0.3.3+: the directory is replaced by a symlink, their cwd would be left in
//! the deleted original).
//!
//! In a workspace, a process is "inside" when `stat(/proc/<pid>/cwd).st_dev` equals the
//! workspace subvolume's `st_dev`: btrfs gives every subvolume its own anonymous device
//! number, so this also catches bind-mount aliases and paths reached through other symlinks.
//! In a plain directory it is inside when its cwd is the directory or below it. Read-only:
//! it never signals or otherwise touches the processes it finds, and unreadable `/proc`
//! entries (processes that exited, or that we may not inspect) are skipped.

use crate::api::Caller;
use crate::error::{Error, ErrorCode};
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
    /// Its owner (the uid of `/proc/<pid>`).
    pub uid: u32,
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
            (cwd.dev() == dev).then(|| process_use(&dir, pid))
        })
        .collect();
    found.sort_by_key(|p| p.pid);
    found
}

/// Every process under `proc_root` whose cwd is `dir` (absolute, symlinks resolved) or lies
/// below it, except the pids in `exclude`, sorted by pid. A cwd the kernel reports as
/// deleted is not inside anything.
pub fn processes_with_cwd_under(proc_root: &Path, dir: &Path, exclude: &[i32]) -> Vec<ProcessUse> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut found: Vec<ProcessUse> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| !exclude.contains(pid))
        .filter_map(|pid| {
            let pdir = proc_root.join(pid.to_string());
            let cwd = std::fs::read_link(pdir.join("cwd")).ok()?;
            if cwd.as_os_str().as_encoded_bytes().ends_with(b" (deleted)") {
                return None;
            }
            cwd.starts_with(dir).then(|| process_use(&pdir, pid))
        })
        .collect();
    found.sort_by_key(|p| p.pid);
    found
}

fn process_use(dir: &Path, pid: i32) -> ProcessUse {
    ProcessUse {
        pid,
        command: command_of(dir),
        uid: std::fs::metadata(dir).map(|m| m.uid()).unwrap_or(u32::MAX),
    }
}

/// Refuse to turn `dir` into a workspace while a process other than `caller` and this one
/// has its working directory in it (nothing to do for a path that is no directory).
pub fn guard_init(dir: &Path, caller: &Caller) -> Result<(), Error> {
    let Ok(real) = std::fs::canonicalize(dir) else {
        return Ok(());
    };
    if !real.is_dir() {
        return Ok(());
    }
    let me = std::process::id() as i32;
    let users = processes_with_cwd_under(Path::new("/proc"), &real, &[me, caller.pid]);
    if users.is_empty() {
        return Ok(());
    }
    Err(occupied_error(dir, &users, caller).hint(format!(
        "its contents move into a subvolume and {} becomes a symlink, which would leave them in the deleted original: stop them or change their directory, or pass --force",
        dir.display()
    )))
}

/// The refusal for `users` having their cwd inside `path`, in upstream's words (`N
/// process(es) have cwd inside workspace`, which its plugins match). A non-root caller is
/// told the PIDs and commands of its own processes only; the others are counted.
pub fn occupied_error(path: &Path, users: &[ProcessUse], caller: &Caller) -> Error {
    let (shown, hidden): (Vec<&ProcessUse>, Vec<&ProcessUse>) = users
        .iter()
        .partition(|p| caller.is_root() || p.uid == caller.uid);
    let mut detail: Vec<String> = shown
        .iter()
        .map(|p| format!("PID {} ({})", p.pid, p.command))
        .collect();
    if !hidden.is_empty() {
        detail.push(format!("{} process(es) of other users", hidden.len()));
    }
    Error::new(
        ErrorCode::Busy,
        format!(
            "Refused: {} process(es) have cwd inside workspace {}: {}",
            users.len(),
            path.display(),
            detail.join("; ")
        ),
    )
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
                    command: "vim a.txt".into(),
                    uid: found[0].uid,
                },
                ProcessUse {
                    pid: 11,
                    command: "comm-name".into(),
                    uid: found[1].uid,
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
    fn finds_processes_below_a_directory_and_words_the_refusal() {
        let t = tempfile::tempdir().unwrap();
        let proc_root = t.path().join("proc");
        let dir = t.path().join("proj");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::create_dir_all(t.path().join("proj2")).unwrap();
        fake_proc(&proc_root, 20, &dir, b"sh\0");
        fake_proc(&proc_root, 21, &dir.join("sub"), b"vim\0");
        fake_proc(&proc_root, 22, &t.path().join("proj2"), b"not-inside\0");
        fake_proc(&proc_root, 23, &dir, b"the-caller\0");
        let found = processes_with_cwd_under(&proc_root, &dir, &[23]);
        let pids: Vec<i32> = found.iter().map(|p| p.pid).collect();
        assert_eq!(pids, [20, 21]);
        let root = Caller {
            uid: 0,
            gid: 0,
            pid: 1,
        };
        let e = occupied_error(&dir, &found, &root);
        assert_eq!(e.code, ErrorCode::Busy);
        assert!(
            e.message
                .contains("2 process(es) have cwd inside workspace"),
            "{}",
            e.message
        );
        assert!(e.message.contains("PID 21 (vim)"), "{}", e.message);
        // Another user sees only a count of processes that are not its own.
        let other = Caller {
            uid: 4242,
            gid: 4242,
            pid: 2,
        };
        let e = occupied_error(&dir, &found, &other);
        assert!(
            !e.message.contains("vim") && e.message.contains("2 process(es) of other users"),
            "{}",
            e.message
        );
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
