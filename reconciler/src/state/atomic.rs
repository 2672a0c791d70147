//! Crash-safe file replacement: the one atomic-write helper used for every file ws-ckpt persists
//! (state.json, indexes, config drop-ins), and the "move a bad file aside" helper.
//!
//! A reader never sees a torn file: bytes go to a uniquely named temporary file in the same
//! directory, which is fsynced, renamed over the target and followed by an fsync of the
//! directory. This module must not decide what to write or when; it must never delete a file
//! that it did not create itself.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Mode of a file created by [`write_atomic`] when no file exists at the target yet.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// Per-process counter that makes temporary names unique between threads.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Atomically replace `path` with `bytes`: temp file in the same directory (unique name),
/// write, fsync, rename over `path`, fsync the directory.
///
/// The new file keeps the permission bits of the file it replaces, or gets
/// [`DEFAULT_FILE_MODE`] (0644) when `path` does not exist yet. The parent directory must exist.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mode = match fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o7777,
        Err(e) if e.kind() == io::ErrorKind::NotFound => DEFAULT_FILE_MODE,
        Err(e) => return Err(e),
    };
    write_atomic_mode(path, bytes, mode)
}

/// Same as [`write_atomic`], with an explicit mode for the new file (e.g. 0o644); the mode is set
/// with `fchmod`, so the process umask does not change it.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let (dir, name) = split_path(path)?;
    let (tmp_path, mut file) = create_temp(&dir, &name)?;
    let result = (|| {
        file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp_path, path)?;
        Ok(())
    })();
    if let Err(e) = result {
        // Best effort: the temporary file is ours; the target was not touched.
        let _ = fs::remove_file(&tmp_path);
        return Err(e);
    }
    tracing::debug!(path = %path.display(), bytes = bytes.len(), "wrote file atomically");
    fsync_dir(&dir)
}

/// fsync a directory so that renames, creations and removals in it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?;
    d.sync_all()
}

/// Move a file that cannot be used aside instead of deleting it:
/// `<path>.<tag>-<YYYYMMDDTHHMMSSZ>`, with `-2`, `-3`… appended when that name is taken
/// (an existing file is never replaced). Returns the new path. The directory is fsynced.
pub fn move_aside(path: &Path, tag: &str, now: SystemTime) -> io::Result<PathBuf> {
    let (dir, name) = split_path(path)?;
    let stamp = compact_timestamp(now);
    let base = format!("{}.{tag}-{stamp}", name.to_string_lossy());
    for n in 1u32.. {
        let candidate = if n == 1 {
            dir.join(&base)
        } else {
            dir.join(format!("{base}-{n}"))
        };
        match rename_noreplace(path, &candidate) {
            Ok(()) => {
                fsync_dir(&dir)?;
                tracing::debug!(from = %path.display(), to = %candidate.display(), "moved file aside");
                return Ok(candidate);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "no free name to move {} aside",
        path.display()
    )))
}

/// `2026-11-24T15:07:42Z` → `20261124T150742Z`.
fn compact_timestamp(now: SystemTime) -> String {
    crate::time::format_rfc3339(now)
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

/// Rename without ever replacing an existing `to`: hard link then unlink (portable, atomic
/// no-replace). Falls back to check-then-rename on filesystems without hard links.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match fs::hard_link(from, to) {
        Ok(()) => fs::remove_file(from),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EPERM) | Some(libc::EOPNOTSUPP) | Some(libc::EXDEV)
            ) =>
        {
            if fs::symlink_metadata(to).is_ok() {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            fs::rename(from, to)
        }
        Err(e) => Err(e),
    }
}

/// Split into (directory, file name); a bare file name means the current directory.
fn split_path(path: &Path) -> io::Result<(PathBuf, std::ffi::OsString)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_os_string()))
}

/// Create a new, uniquely named temporary file next to the target (never an existing file).
fn create_temp(dir: &Path, name: &std::ffi::OsStr) -> io::Result<(PathBuf, File)> {
    let pid = std::process::id();
    loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{}.tmp.{pid}.{n}", name.to_string_lossy()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            // A leftover of a crashed process that had the same pid: take the next number.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_creates_and_replaces_without_temp_files() {
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        write_atomic(&p, b"two, longer").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two, longer");
        write_atomic(&p, b"").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"");
        assert_eq!(names(td.path()), vec!["state.json".to_string()]);
    }

    #[test]
    fn modes_are_explicit_or_preserved_and_ignore_umask() {
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("f");
        write_atomic(&p, b"x").unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        write_atomic_mode(&p, b"y", 0o600).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        // Replacing keeps the mode of the file it replaces.
        write_atomic(&p, b"z").unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        write_atomic_mode(&p, b"w", 0o666).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o666
        );
    }

    #[test]
    fn failed_write_leaves_target_and_no_temp() {
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("f");
        write_atomic(&p, b"keep").unwrap();
        // Renaming a file over a non-empty directory fails: target untouched, temp removed.
        let d = td.path().join("d");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("inner"), b"").unwrap();
        assert!(write_atomic(&d, b"nope").is_err());
        assert_eq!(fs::read(&p).unwrap(), b"keep");
        assert_eq!(names(td.path()), vec!["d".to_string(), "f".to_string()]);
        // A missing parent directory is an error, not a panic.
        assert!(write_atomic(&td.path().join("no/such/f"), b"x").is_err());
        assert!(write_atomic(Path::new("/"), b"x").is_err());
    }

    #[test]
    fn concurrent_writers_never_tear() {
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("f");
        let handles: Vec<_> = (0..8u8)
            .map(|i| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        write_atomic(&p, &vec![b'a' + i; 4096]).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let bytes = fs::read(&p).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert!(bytes.iter().all(|b| *b == bytes[0]));
        assert_eq!(names(td.path()), vec!["f".to_string()]);
    }

    #[test]
    fn move_aside_never_replaces() {
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("state.json");
        let now = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let stamp = compact_timestamp(now);
        assert_eq!(stamp.len(), "20261124T150742Z".len(), "{stamp}");
        let mut moved = Vec::new();
        for i in 0..3 {
            fs::write(&p, format!("bad {i}")).unwrap();
            moved.push(move_aside(&p, "corrupt", now).unwrap());
            assert!(!p.exists());
        }
        let base = format!("state.json.corrupt-{stamp}");
        assert_eq!(moved[0], td.path().join(&base));
        assert_eq!(moved[1], td.path().join(format!("{base}-2")));
        assert_eq!(moved[2], td.path().join(format!("{base}-3")));
        for (i, m) in moved.iter().enumerate() {
            assert_eq!(fs::read_to_string(m).unwrap(), format!("bad {i}"));
        }
        assert!(move_aside(&td.path().join("absent"), "corrupt", now).is_err());
    }
}
