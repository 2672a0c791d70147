//! The `fleet` installation: many workspaces × many snapshots (issue 9: 100 × 1 000), for the
//! start-up rows — daemon restart → ready, a no-op pass, and the daemon's memory (`VmHWM`,
//! `VmRSS`) there.
//!
//! Building the fleet is setup, not measurement, and must be fast enough for every full run:
//! the workspaces are made by the daemon (`init` requests), then, with the daemon stopped, the
//! snapshots are made by raw `BTRFS_IOC_SNAP_CREATE_V2` calls into each workspace's snapshot
//! directory, with the filesystem switched to a throw-away pace ([`FastFill`]: the loop device
//! buffered, the mount `nobarrier`; restored and synced before anything is measured), and
//! each workspace's index is written once with the library's own types and writer
//! ([`IndexStore::write_full`] of a [`WorkspaceIndex`]), as the daemon's adoption would
//! record them but without one journal append per snapshot. Every measured start then finds
//! real subvolumes that its observation lists and an index that names each of them.
//!
//! This module must not print results (progress only, on stderr) or leave a daemon running or
//! the filesystem in its fill mode when it returns.

use crate::instance::{Instance, SLOW};
use crate::phases::{bulk_ids, ms, progress, summary, Results};
use crate::raw::{self, Raw};
use crate::report::{Metric, Target, Unit};
use crate::scratch::check_interrupted;
use crate::stats::Summary;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};
use ws_ckpt::api::Request;
use ws_ckpt::resolve::Resolution;
use ws_ckpt::state::{IndexLoad, IndexStore, SnapshotEntry};
use ws_ckpt::sys::Sys;
use ws_ckpt::time::Timestamp;

/// Issue 9: restart → ready at 100 × 1 000.
const READY_TARGET_MS: f64 = 300.0;
/// Issue 9: daemon RSS there.
const RSS_TARGET_KIB: f64 = 30.0 * 1024.0;

/// `LOOP_SET_DIRECT_IO` (linux/loop.h).
const LOOP_SET_DIRECT_IO: libc::c_ulong = 0x4C08;

/// The fill pace of a throw-away image: the loop device of `mount` switched to buffered I/O
/// and the filesystem remounted `nobarrier,nodiscard`, so that the one transaction commit
/// each snapshot ioctl makes is not a flush through to the host disk (about 4× faster on a
/// 2-core VM) and freed metadata blocks are not queued for discard. Dropping it restores
/// direct I/O, barriers and the discard mode and syncs the filesystem, so that what is
/// measured afterwards runs on the image as the daemon set it up. Only while no daemon runs.
struct FastFill {
    mount: PathBuf,
    device: Option<PathBuf>,
    /// The discard option to restore (`discard=async`, `discard`), if one was set.
    discard: Option<String>,
}

impl FastFill {
    fn enter(sys: &dyn Sys, mount: &Path) -> Result<FastFill> {
        let entry = sys
            .mounts()?
            .into_iter()
            .rev()
            .find(|m| m.mount_point == mount)
            .ok_or_else(|| anyhow!("{} is not mounted", mount.display()))?;
        let device = entry
            .source
            .starts_with("/dev/loop")
            .then(|| PathBuf::from(&entry.source));
        let discard = entry
            .super_options
            .split(',')
            .find(|o| *o == "discard" || o.starts_with("discard="))
            .map(str::to_string);
        let fill = FastFill {
            mount: mount.to_path_buf(),
            device,
            discard,
        };
        if let Some(dev) = &fill.device {
            set_direct_io(dev, false)?;
        }
        remount(mount, "nobarrier,nodiscard")?;
        Ok(fill)
    }
}

impl Drop for FastFill {
    fn drop(&mut self) {
        let options = match &self.discard {
            Some(d) => format!("barrier,{d}"),
            None => "barrier".to_string(),
        };
        let restored = raw::syncfs(&self.mount)
            .and_then(|()| remount(&self.mount, &options))
            .and_then(|()| match &self.device {
                Some(dev) => set_direct_io(dev, true),
                None => Ok(()),
            })
            .and_then(|()| raw::syncfs(&self.mount));
        if let Err(e) = restored {
            eprintln!(
                "ws-ckpt-bench: WARNING: cannot restore the normal pace of {}: {e:#}",
                self.mount.display()
            );
        }
    }
}

fn remount(mount: &Path, option: &str) -> Result<()> {
    use nix::mount::{mount as mount2, MsFlags};
    mount2(
        None::<&str>,
        mount,
        None::<&str>,
        MsFlags::MS_REMOUNT,
        Some(option),
    )
    .with_context(|| format!("cannot remount {} with {option}", mount.display()))
}

fn set_direct_io(device: &Path, on: bool) -> Result<()> {
    let f =
        std::fs::File::open(device).with_context(|| format!("cannot open {}", device.display()))?;
    // SAFETY: LOOP_SET_DIRECT_IO takes an integer argument; the descriptor is open.
    let rc = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            LOOP_SET_DIRECT_IO as _,
            libc::c_ulong::from(on),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // A backing filesystem without direct I/O: the device was buffered all along.
        if on && e.raw_os_error() == Some(libc::EINVAL) {
            return Ok(());
        }
        return Err(e).with_context(|| format!("LOOP_SET_DIRECT_IO {on} on {}", device.display()));
    }
    Ok(())
}

/// Record `ids` (snapshots just made in `ws_id`'s snapshot directory) in its index with the
/// library's writer: one `index.json` per workspace, the entries the daemon's adoption would
/// make (creation time, no message), in creation order.
fn record_snapshots(state_dir: &Path, ws_id: &str, ids: &[String]) -> Result<()> {
    let store = IndexStore::new(state_dir);
    let mut index = match store
        .load(ws_id, SystemTime::now())
        .with_context(|| format!("cannot load the index of {ws_id}"))?
    {
        IndexLoad::Loaded(i) => i,
        IndexLoad::Missing => bail!("workspace {ws_id} has no index after its init"),
        IndexLoad::Corrupt { error, .. } => bail!("the index of {ws_id} is corrupt: {error}"),
    };
    let base = SystemTime::now();
    for (i, id) in ids.iter().enumerate() {
        let at = base - Duration::from_micros((ids.len() - i) as u64);
        index
            .snapshots
            .insert(id.clone(), SnapshotEntry::new(Timestamp::nanos(at)));
    }
    store
        .write_full(ws_id, &index)
        .with_context(|| format!("cannot write the index of {ws_id}"))
}

/// Make the snapshots `ids` in every workspace of `ws_ids`, `threads` workspaces at a time,
/// one thread per workspace: snapshots into one directory serialize on that directory's
/// lock for the whole ioctl (its transaction commit included), snapshots into different
/// directories share commits.
fn fill(
    raw: &Raw,
    layout: &Resolution,
    ws_ids: &[String],
    ids: &[String],
    threads: usize,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let Some(id) = ws_ids.get(n) else {
                            return Ok(());
                        };
                        if n.is_multiple_of(10) {
                            progress(&format!(
                                "fleet: raw snapshots for workspace {n} of {} ({:.0} s so far)",
                                ws_ids.len(),
                                t.elapsed().as_secs_f64()
                            ));
                        }
                        raw::bulk_snapshots(
                            raw.sys(),
                            &layout.ws_subvol(id),
                            &layout.snap_dir(id),
                            ids,
                            1,
                        )?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow!("a fleet fill thread panicked"))??;
        }
        Ok(())
    })
}

/// Everything a pass must at least read from the kernel: the mount table and the subvolume
/// listings of data_root, snapshots_root and every workspace's snapshot directory (the
/// latter with [`Sys::list_subvolumes_many`], the fastest listing the library has: one tree
/// search of the subvolume references).
pub(crate) fn raw_observe(raw: &Raw, layout: &Resolution, ws_ids: &[String]) -> Result<Duration> {
    let sys = raw.sys();
    let t = Instant::now();
    sys.mounts()?;
    sys.list_subvolumes(&layout.data_root)?;
    sys.list_subvolumes(&layout.snapshots_root)?;
    let dirs: Vec<PathBuf> = ws_ids.iter().map(|id| layout.snap_dir(id)).collect();
    for listed in sys.list_subvolumes_many(&dirs) {
        listed?;
    }
    Ok(t.elapsed())
}

/// Memory of the daemon right after one start.
struct Memory {
    hwm_kib: u64,
    rss_kib: u64,
}

/// Many workspaces × many snapshots: daemon restart → ready, one no-op pass, its memory.
pub(crate) fn fleet_phase(
    scratch: &Path,
    bin: &Path,
    p: &crate::phases::Params,
    out: &mut Results,
) -> Result<()> {
    let (nw, ns) = (p.fleet_workspaces, p.fleet_snapshots);
    let mut inst = Instance::create(scratch, "fleet", bin, p.fleet_gib)?;
    progress(&format!(
        "fleet: new installation, {nw} workspaces × {ns} snapshots"
    ));
    inst.start_daemon()?;
    let raw = Raw::new(&inst.mount)?;
    let t = Instant::now();
    let mut workspaces = Vec::new();
    for i in 0..nw {
        check_interrupted()?;
        workspaces.push(inst.init_workspace(&format!("f{i:03}"))?);
    }
    let ws_ids: Vec<String> = workspaces.iter().map(|(_, id)| id.clone()).collect();
    out.context
        .insert("fleet_init_ms".into(), json!(ms(t.elapsed())));
    // With the daemon stopped: no pass reacts to the new subvolumes meanwhile, and nothing
    // else writes the indexes.
    inst.stop_daemon()?;
    let ids = bulk_ids(0, ns);
    let t = Instant::now();
    {
        let _pace = FastFill::enter(raw.sys(), &inst.mount)?;
        fill(&raw, &inst.layout(), &ws_ids, &ids, p.fleet_bulk_threads)?;
    }
    let made = t.elapsed();
    let t = Instant::now();
    for id in &ws_ids {
        record_snapshots(&inst.state_dir, id, &ids)?;
    }
    out.context.insert(
        "fleet_fill".into(),
        json!({
            "raw_snapshots": nw * ns,
            "raw_ms": ms(made),
            "snapshots_per_s": (nw * ns) as f64 / made.as_secs_f64(),
            "index_write_ms": ms(t.elapsed()),
        }),
    );

    // "Ready" = the socket answers a `list` of one workspace: state and indexes are loaded
    // and the first pass is done (the daemon binds after it).
    let probe = Request::List {
        workspace: Some(workspaces[0].0.display().to_string()),
        limit: Some(1),
        cursor: None,
        output: None,
    };
    progress("fleet: first start on the filled image");
    let first = inst.start_daemon_ready(&probe)?;
    out.context
        .insert("fleet_first_start_ms".into(), json!(ms(first)));
    let n = inst.snapshot_count(None)?;
    if n != nw * ns {
        bail!(
            "the daemon lists {n} snapshots after its first start, expected {}",
            nw * ns
        );
    }
    raw::syncfs(&inst.mount)?;

    progress(&format!("fleet: {} daemon restarts", p.fleet_reps));
    let (mut starts, mut stops, mut mem) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..p.fleet_reps {
        check_interrupted()?;
        if let Some(d) = inst.stop_daemon()? {
            stops.push(d);
        }
        starts.push(inst.start_daemon_ready(&probe)?);
        let status = inst.daemon_status()?;
        mem.push(Memory {
            hwm_kib: status.vm_hwm_kib,
            rss_kib: status.vm_rss_kib,
        });
    }
    progress(&format!("fleet: {} no-op passes", p.fleet_reps));
    let (mut passes, mut observe) = (Vec::new(), Vec::new());
    for _ in 0..p.fleet_reps {
        check_interrupted()?;
        let t = Instant::now();
        let reply = inst.call(
            &Request::Apply {
                check: false,
                prune: false,
            },
            SLOW,
        )?;
        passes.push(t.elapsed());
        if reply.get("changed").and_then(Value::as_bool) != Some(false) {
            eprintln!("ws-ckpt-bench: WARNING: the no-op apply changed something: {reply}");
        }
        observe.push(raw_observe(&raw, &inst.layout(), &ws_ids)?);
    }
    let after_passes = inst.daemon_status()?;
    if let Some(data) = &p.perf_start {
        progress(&format!(
            "fleet: one more restart under perf record -g ({})",
            data.display()
        ));
        inst.stop_daemon()?;
        inst.profile_next = Some(data.clone());
        let took = inst.start_daemon_ready(&probe)?;
        out.context
            .insert("fleet_profiled_start_ms".into(), json!(ms(took)));
        out.context
            .insert("fleet_perf_data".into(), json!(data.display().to_string()));
    }
    let obs = summary(&observe)?;
    let label = format!("{nw} ws × {ns} snapshots");
    let big = nw * ns >= 100_000;
    out.metrics.push(
        Metric::new(
            format!("daemon restart → ready ({label})"),
            Unit::Millis,
            summary(&starts)?,
            Some(obs),
            "SIGTERM the daemon, then spawn `ws-ckpt daemon` → its socket answers a `list` of one workspace (state and indexes loaded, first full pass done) vs reading the mount table and listing every subvolume directory once (the kernel reads any pass needs); target at 100 × 1 000: <= 300 ms",
        )
        .with_target(big.then_some(Target::OursAtMost(READY_TARGET_MS))),
    );
    out.metrics.push(Metric::new(
        format!("no-op apply pass ({label})"),
        Unit::Millis,
        summary(&passes)?,
        Some(obs),
        "one `apply` request that changes nothing vs the same raw listing",
    ));
    let kib = |v: &[f64]| Summary::of(v).ok_or_else(|| anyhow!("no samples"));
    let hwm: Vec<f64> = mem.iter().map(|m| m.hwm_kib as f64).collect();
    let rss: Vec<f64> = mem.iter().map(|m| m.rss_kib as f64).collect();
    out.metrics.push(
        Metric::new(
            format!("daemon peak RSS, VmHWM ({label})"),
            Unit::KiB,
            kib(&hwm)?,
            None,
            "VmHWM of the daemon right after each restart is ready (its peak so far: state, indexes, first pass); target at 100 × 1 000: <= 30 MiB",
        )
        .with_target(big.then_some(Target::OursAtMost(RSS_TARGET_KIB))),
    );
    out.metrics.push(
        Metric::new(
            format!("daemon RSS, VmRSS ({label})"),
            Unit::KiB,
            kib(&rss)?,
            None,
            "VmRSS of the daemon right after each restart is ready; target at 100 × 1 000: <= 30 MiB",
        )
        .with_target(big.then_some(Target::OursAtMost(RSS_TARGET_KIB))),
    );
    out.context.insert(
        "fleet_after_passes_kib".into(),
        json!({"vm_hwm": after_passes.vm_hwm_kib, "vm_rss": after_passes.vm_rss_kib}),
    );
    out.context.insert(
        "fleet_clean_stop_ms".into(),
        json!(summary(&stops).ok().map(|s| s.median)),
    );
    inst.stop_daemon()?;
    Ok(())
}
