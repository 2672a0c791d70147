//! The raw kernel baseline: the same btrfs ioctls ws-ckpt issues, called directly through
//! [`LinuxSys`] (open the source and the destination's parent, one
//! `BTRFS_IOC_SNAP_CREATE_V2`), on the filesystem the daemon uses, under a plain directory
//! `<mount>/bench-raw` that the daemon ignores (it is not a subvolume and holds no workspace).
//!
//! Also the bulk fill used to give workspaces thousands of snapshots quickly, and the sample
//! tree written into workspaces and raw sources alike. This module must not talk to the
//! daemon or decide what is measured.

use crate::scratch::check_interrupted;
use anyhow::{anyhow, bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use ws_ckpt::sys::linux::LinuxSys;
use ws_ckpt::sys::Sys;

/// First argument that makes this program the "raw spawned" baseline instead of the
/// benchmark: `ws-ckpt-bench raw-snapshot SRC DST ro|rw` opens SRC and DST's parent and makes
/// the one snapshot ioctl, started as a process like the CLI is.
pub(crate) const SPAWNED_MODE: &str = "raw-snapshot";

/// First argument that makes this program the kernel's side of the cleanup row:
/// `ws-ckpt-bench raw-delete DIR` deletes every subvolume in DIR but the last (by name), then
/// commits, syncs and waits for the btrfs cleaner — what `ws-ckpt cleanup --keep 1` asks of
/// the kernel, with nothing around it.
pub(crate) const DELETE_MODE: &str = "raw-delete";

/// The `raw-delete` mode: returns the exit code.
pub(crate) fn delete_main(args: &[String]) -> i32 {
    let [dir] = args else {
        eprintln!("usage: ws-ckpt-bench {DELETE_MODE} DIR");
        return 2;
    };
    let dir = Path::new(dir);
    let done = LinuxSys::new().map_err(|e| e.to_string()).and_then(|s| {
        let mut names = s.list_subvolumes(dir).map_err(|e| e.to_string())?;
        names.pop();
        for name in &names {
            s.delete_subvolume(&dir.join(name))
                .map_err(|e| e.to_string())?;
        }
        s.commit(dir).map_err(|e| e.to_string())?;
        s.sync_and_wait_cleaner(dir, ws_ckpt::execute::CLEANER_WAIT)
            .map_err(|e| e.to_string())
    });
    match done {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ws-ckpt-bench {DELETE_MODE}: {e}");
            1
        }
    }
}

/// The `raw-snapshot` mode: returns the exit code.
pub(crate) fn spawned_main(args: &[String]) -> i32 {
    let [src, dst, mode] = args else {
        eprintln!("usage: ws-ckpt-bench {SPAWNED_MODE} SRC DST ro|rw");
        return 2;
    };
    let made = LinuxSys::new().map_err(|e| e.to_string()).and_then(|s| {
        s.snapshot(Path::new(src), Path::new(dst), mode == "ro")
            .map_err(|e| e.to_string())
    });
    match made {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ws-ckpt-bench {SPAWNED_MODE}: {e}");
            1
        }
    }
}

/// Raw btrfs operations on one filesystem.
pub(crate) struct Raw {
    sys: LinuxSys,
    dir: PathBuf,
    seq: AtomicUsize,
}

impl Raw {
    /// Use `<mount>/bench-raw` (created) for raw sources and snapshots.
    pub(crate) fn new(mount: &Path) -> Result<Raw> {
        let dir = mount.join("bench-raw");
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Raw {
            sys: LinuxSys::new().context("cannot set up the raw btrfs baseline")?,
            dir,
            seq: AtomicUsize::new(0),
        })
    }

    /// The underlying [`Sys`] (for subvolume listing in the observe baseline).
    pub(crate) fn sys(&self) -> &LinuxSys {
        &self.sys
    }

    /// Create the raw source subvolume `<dir>/src-<name>` filled with the sample tree.
    pub(crate) fn source(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.join(format!("src-{name}"));
        self.sys.create_subvolume(&path)?;
        write_sample_tree(&path)?;
        Ok(path)
    }

    /// A fresh destination path `<dir>/<group>/<n>` (its parent created).
    pub(crate) fn dest(&self, group: &str) -> Result<PathBuf> {
        let parent = self.dir.join(group);
        fs::create_dir_all(&parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        Ok(parent.join(format!("s{n:07}")))
    }

    /// The directory `<dir>/<group>`, created.
    pub(crate) fn group_dir(&self, group: &str) -> Result<PathBuf> {
        let dir = self.dir.join(group);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }

    /// Start [`DELETE_MODE`] on `dir` (this program, as a process like the CLI's cleanup).
    pub(crate) fn spawn_delete(&self, dir: &Path) -> Result<std::process::Child> {
        let exe = std::env::current_exe().context("cannot locate this program")?;
        Command::new(exe)
            .arg(DELETE_MODE)
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot spawn the raw deletion")
    }

    /// One snapshot of `source` into `group`, timed (only the [`Sys::snapshot`] call).
    pub(crate) fn timed_snapshot(
        &self,
        source: &Path,
        group: &str,
        readonly: bool,
    ) -> Result<Duration> {
        let dest = self.dest(group)?;
        let t = Instant::now();
        self.sys.snapshot(source, &dest, readonly)?;
        Ok(t.elapsed())
    }
}

impl Raw {
    /// One snapshot of `source` into `group` by a spawned process ([`SPAWNED_MODE`]), timed
    /// from spawn to exit: the baseline of a CLI command.
    pub(crate) fn spawned_snapshot(
        &self,
        source: &Path,
        group: &str,
        readonly: bool,
    ) -> Result<Duration> {
        let dest = self.dest(group)?;
        let exe = std::env::current_exe().context("cannot locate this program")?;
        let mut cmd = Command::new(exe);
        cmd.arg(SPAWNED_MODE)
            .arg(source)
            .arg(&dest)
            .arg(if readonly { "ro" } else { "rw" })
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let t = Instant::now();
        let st = cmd.status().context("cannot spawn the raw baseline")?;
        let took = t.elapsed();
        if !st.success() {
            bail!(
                "the raw spawned snapshot of {} failed ({st})",
                source.display()
            );
        }
        Ok(took)
    }
}

/// Create read-only snapshots of `source` named `ids` inside `dir` (created), with `threads`
/// threads (concurrent snapshots share btrfs transaction commits). Returns the wall time.
pub(crate) fn bulk_snapshots(
    sys: &LinuxSys,
    source: &Path,
    dir: &Path,
    ids: &[String],
    threads: usize,
) -> Result<Duration> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(id) = ids.get(i) else { return Ok(()) };
                        check_interrupted()?;
                        sys.snapshot(source, &dir.join(id), true)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow!("a bulk snapshot thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(t.elapsed())
}

/// The sample content of every workspace and raw source: a small source tree (80 files of
/// 4 KiB in 8 directories), so that snapshots are not of empty subvolumes.
pub(crate) fn write_sample_tree(dir: &Path) -> Result<()> {
    let block: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    for d in 0..8 {
        let sub = dir.join(format!("src/mod{d}"));
        fs::create_dir_all(&sub).with_context(|| format!("cannot create {}", sub.display()))?;
        for f in 0..10 {
            let p = sub.join(format!("file{f}.rs"));
            fs::write(&p, &block).with_context(|| format!("cannot write {}", p.display()))?;
        }
    }
    let readme = dir.join("README.md");
    fs::write(&readme, b"benchmark workspace\n")
        .with_context(|| format!("cannot write {}", readme.display()))?;
    Ok(())
}

/// Write `files` files totalling `total` bytes under `dir/dirty` (replacing what a previous
/// round left), without syncing: the data stays dirty in the page cache. `round` varies the
/// content from one round to the next.
pub(crate) fn write_dirty(dir: &Path, files: usize, total: usize, round: usize) -> Result<()> {
    let d = dir.join("dirty");
    if d.exists() {
        fs::remove_dir_all(&d).with_context(|| format!("cannot remove {}", d.display()))?;
    }
    fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    let per = total / files.max(1);
    let data: Vec<u8> = (0..per)
        .map(|i| ((i * 31 + round * 7) % 256) as u8)
        .collect();
    for f in 0..files {
        let p = d.join(format!("f{f:05}"));
        fs::write(&p, &data).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

/// `syncfs` on the filesystem holding `path`: start a measurement with nothing dirty.
pub(crate) fn syncfs(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: syncfs takes an open fd and has no memory arguments.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("syncfs {}", path.display()));
    }
    Ok(())
}
