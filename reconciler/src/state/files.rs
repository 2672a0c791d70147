//! The state directory's hygiene at start-up (SPEC §7.3, issue 10): the directory is made
//! 0700 and every state file 0600 (files written by an older ws-ckpt were 0644), and the
//! temporaries a killed atomic writer left behind are removed.
//!
//! Only names ws-ckpt itself makes are removed, only in its own directories: the atomic
//! writer's `.<name>.tmp.<pid>.<n>` next to `state.json` and its journal, next to each index
//! file and next to each drop-in of `config.d`, the `.<ws_id>.removing` directory of an
//! interrupted index removal, and `.ws-ckpt-creating-<hash>-<op>` next to the loop image (an image that was
//! being formatted). It runs while the caller holds the daemon lock, so no other ws-ckpt
//! process is writing there; its own process's temporaries are left alone.
//!
//! Every path here is ws-ckpt's own (from the root-owned config), never a caller's; entries
//! are still opened without following symlinks and changed through their descriptors.

use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::index::{INDEX_FILE, JOURNAL_FILE};
use super::pending_journal::STATE_JOURNAL_FILE;

/// Mode of the state directory.
pub const STATE_DIR_MODE: u32 = 0o700;
/// Mode of every file in it.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// What [`tidy_state_dir`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tidied {
    /// Files and directories whose mode was narrowed, with the old mode.
    pub narrowed: Vec<(PathBuf, u32)>,
    /// Temporaries removed.
    pub removed: Vec<PathBuf>,
}

/// Where the files to tidy are.
#[derive(Debug, Clone, Copy)]
pub struct StateDirs<'a> {
    /// `[daemon] state_dir`.
    pub state_dir: &'a Path,
    /// The config's drop-in directory.
    pub dropin_dir: &'a Path,
    /// The loop image (its directory may hold a half-formatted image).
    pub image: Option<&'a Path>,
}

/// Narrow modes and remove stale temporaries (see the module documentation). Problems with
/// one entry are logged and skipped; only a state directory that cannot be opened is an error.
pub fn tidy_state_dir(dirs: StateDirs<'_>) -> io::Result<Tidied> {
    let mut done = Tidied::default();
    let sd = dirs.state_dir;
    narrow(sd, STATE_DIR_MODE, true, &mut done)?;
    remove_writer_temps(sd, &["state.json", STATE_JOURNAL_FILE], &mut done);
    for f in ["state.json", "audit.jsonl"] {
        let _ = narrow(&sd.join(f), PRIVATE_FILE_MODE, false, &mut done);
    }
    let indexes = sd.join("indexes");
    if let Ok(rd) = fs::read_dir(&indexes) {
        for e in rd.flatten() {
            let name = e.file_name();
            let p = e.path();
            if is_removal_tomb(&name) {
                remove_tree(&indexes, &name, &mut done);
                continue;
            }
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            remove_writer_temps(&p, &[INDEX_FILE, JOURNAL_FILE], &mut done);
            for f in [INDEX_FILE, JOURNAL_FILE] {
                let _ = narrow(&p.join(f), PRIVATE_FILE_MODE, false, &mut done);
            }
        }
    }
    if let Ok(rd) = fs::read_dir(dirs.dropin_dir) {
        let tomls: Vec<OsString> = rd
            .flatten()
            .map(|e| e.file_name())
            .filter_map(|n| temp_base(&n).map(|b| b.to_os_string()))
            .filter(|b| b.as_bytes().ends_with(b".toml"))
            .collect();
        let bases: Vec<&str> = tomls.iter().filter_map(|b| b.to_str()).collect();
        remove_writer_temps(dirs.dropin_dir, &bases, &mut done);
    }
    if let Some(image) = dirs.image {
        if let (Some(dir), Some(name)) = (image.parent(), image.file_name()) {
            if let Ok(rd) = fs::read_dir(dir) {
                for e in rd.flatten() {
                    let n = e.file_name();
                    let ours = crate::tree::names::parse_temp_name(&n)
                        .is_some_and(|t| t.tag == "creating")
                        && crate::tree::names::is_temp_name_for(name, &n)
                        && e.file_type().is_ok_and(|t| t.is_file());
                    if ours {
                        unlink_in(dir, &n, &mut done);
                    }
                }
            }
        }
    }
    for (p, old) in &done.narrowed {
        tracing::info!(path = %p.display(), old_mode = format!("{old:04o}"), "narrowed the mode of a state file");
    }
    for p in &done.removed {
        tracing::info!(path = %p.display(), "removed a temporary left by an interrupted write");
    }
    Ok(done)
}

/// `.<base>.tmp.<pid>.<n>` → `<base>`.
fn temp_base(name: &OsStr) -> Option<&OsStr> {
    let b = name.as_bytes().strip_prefix(b".")?;
    let mut parts = b.rsplitn(3, |c| *c == b'.');
    let n = parts.next()?;
    let pid = parts.next()?;
    let rest = parts.next()?;
    let base = rest.strip_suffix(b".tmp")?;
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    (digits(n) && digits(pid) && !base.is_empty()).then(|| OsStr::from_bytes(base))
}

fn temp_pid(name: &OsStr) -> Option<u32> {
    let b = name.as_bytes();
    let mut parts = b.rsplitn(3, |c| *c == b'.');
    parts.next()?;
    std::str::from_utf8(parts.next()?).ok()?.parse().ok()
}

fn is_removal_tomb(name: &OsStr) -> bool {
    name.as_bytes()
        .strip_prefix(b".")
        .and_then(|r| r.strip_suffix(b".removing"))
        .and_then(|id| std::str::from_utf8(id).ok())
        .is_some_and(crate::ids::is_valid_ws_id)
}

/// Remove the atomic writer's temporaries of `bases` in `dir` (regular files only, never one
/// of this process).
fn remove_writer_temps(dir: &Path, bases: &[&str], done: &mut Tidied) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let me = std::process::id();
    for e in rd.flatten() {
        let n = e.file_name();
        let ours = temp_base(&n).is_some_and(|b| bases.iter().any(|x| OsStr::new(x) == b))
            && temp_pid(&n) != Some(me)
            && e.file_type().is_ok_and(|t| t.is_file());
        if ours {
            unlink_in(dir, &n, done);
        }
    }
}

/// `unlinkat(dir, name)` (a name is never followed).
fn unlink_in(dir: &Path, name: &OsStr, done: &mut Tidied) {
    let p = dir.join(name);
    let r = crate::tree::Dir::open(dir)
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|d| {
            nix::unistd::unlinkat(d.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir)
                .map_err(io::Error::from)
        });
    match r {
        Ok(()) => done.removed.push(p),
        Err(e) => {
            tracing::warn!(path = %p.display(), error = %e, "cannot remove a stale temporary")
        }
    }
}

/// Remove the tree `name` of `dir` (an index directory being removed when a process died).
fn remove_tree(dir: &Path, name: &OsStr, done: &mut Tidied) {
    let p = dir.join(name);
    let r = crate::tree::Dir::open(dir).and_then(|d| {
        let Some(st) = d.child_stat(name)? else {
            return Ok(());
        };
        crate::tree::Job::in_process()
            .remove(&d, name, st.identity())
            .map(drop)
    });
    match r {
        Ok(()) => done.removed.push(p),
        Err(e) => {
            tracing::warn!(path = %p.display(), error = %e, "cannot remove a stale directory")
        }
    }
}

/// `fchmod` `path` (opened without following a symlink) to `mode` when it grants more; only
/// entries owned by this process's user. A missing entry is not an error.
fn narrow(path: &Path, mode: u32, dir: bool, done: &mut Tidied) -> io::Result<()> {
    let mut flags = libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY;
    if dir {
        flags |= libc::O_DIRECTORY;
    }
    let f = match OpenOptions::new().read(true).custom_flags(flags).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !dir => return Ok(()),
        Err(e) => return Err(e),
    };
    let m = f.metadata()?;
    if m.is_dir() != dir || (!dir && !m.is_file()) {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if m.uid() != unsafe { libc::geteuid() } {
        tracing::warn!(path = %path.display(), uid = m.uid(), "a state file is not owned by ws-ckpt's user; its mode is left alone");
        return Ok(());
    }
    let old = m.mode() & 0o7777;
    if old & !mode == 0 {
        return Ok(());
    }
    // SAFETY: plain fchmod on a live descriptor.
    if unsafe { libc::fchmod(f.as_raw_fd(), mode as libc::mode_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    done.narrowed.push((path.to_path_buf(), old));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn temp_names_are_recognised_exactly() {
        assert_eq!(
            temp_base(OsStr::new(".state.json.tmp.12.3")),
            Some(OsStr::new("state.json"))
        );
        assert_eq!(
            temp_base(OsStr::new(".50-ws-1.toml.tmp.1.0")),
            Some(OsStr::new("50-ws-1.toml"))
        );
        for n in [
            "state.json",
            ".state.json.tmp",
            ".state.json.tmp.x.1",
            ".state.json.tmp.1.",
            "..tmp.1.2",
            ".state.json.tmp.1.2.3x",
            "state.json.tmp.1.2",
        ] {
            assert_eq!(temp_base(OsStr::new(n)), None, "{n}");
        }
        assert_eq!(temp_pid(OsStr::new(".state.json.tmp.12.3")), Some(12));
        assert!(is_removal_tomb(OsStr::new(".ws-1a2b3c.removing")));
        assert!(!is_removal_tomb(OsStr::new(".x/y.removing")));
    }

    #[test]
    fn modes_are_narrowed_and_only_our_temporaries_go() {
        let td = tempfile::tempdir().unwrap();
        let sd = td.path().join("state");
        let idx = sd.join("indexes/ws-1");
        let dropin = td.path().join("config.d");
        fs::create_dir_all(&idx).unwrap();
        fs::create_dir_all(&dropin).unwrap();
        fs::set_permissions(&sd, fs::Permissions::from_mode(0o755)).unwrap();
        for (p, m) in [
            (sd.join("state.json"), 0o644),
            (sd.join("audit.jsonl"), 0o644),
            (idx.join("index.json"), 0o644),
            (idx.join("journal.jsonl"), 0o600),
        ] {
            fs::write(&p, b"{}").unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(m)).unwrap();
        }
        let ours = [
            sd.join(".state.json.tmp.999999.0"),
            sd.join(".state.journal.jsonl.tmp.999999.5"),
            idx.join(".journal.jsonl.tmp.999999.1"),
            idx.join(".index.json.tmp.999999.2"),
            dropin.join(".50-ws-1.toml.tmp.999999.3"),
        ];
        let mine = sd.join(format!(".state.json.tmp.{}.7", std::process::id()));
        let foreign = [
            sd.join("operator-notes.txt"),
            sd.join(".notes.txt.tmp.999999.0"),
            dropin.join("50-ws-1.toml"),
            td.path().join(".state.json.tmp.999999.4"),
        ];
        for p in ours.iter().chain(&foreign).chain([&mine]) {
            fs::write(p, b"{\"partial").unwrap();
        }
        fs::create_dir_all(sd.join("indexes/.ws-2.removing/x")).unwrap();
        let done = tidy_state_dir(StateDirs {
            state_dir: &sd,
            dropin_dir: &dropin,
            image: None,
        })
        .unwrap();
        for p in &ours {
            assert!(!p.exists(), "{} survived", p.display());
        }
        assert!(!sd.join("indexes/.ws-2.removing").exists());
        for p in foreign.iter().chain([&mine]) {
            assert!(p.exists(), "{} was removed", p.display());
        }
        assert_eq!(mode(&sd), 0o700);
        for p in [
            sd.join("state.json"),
            sd.join("audit.jsonl"),
            idx.join("index.json"),
        ] {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        assert_eq!(done.narrowed.len(), 4, "{done:?}");
        // Twice: nothing left to do.
        let again = tidy_state_dir(StateDirs {
            state_dir: &sd,
            dropin_dir: &dropin,
            image: None,
        })
        .unwrap();
        assert_eq!(again, Tidied::default());
    }
}
