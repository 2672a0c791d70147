//! The measurements of SPEC §10, in the order they run. Each pairs what ws-ckpt does with the
//! raw kernel operation it cannot avoid, measured in the same run on the same filesystem,
//! interleaved where possible so that drift (page cache, btrfs background work) hits both.
//!
//! Two installations are used: `main` (single-operation costs, 8 clients, dirty data and the
//! growth to 10 000 snapshots in one workspace) and `fleet` (many workspaces × many snapshots:
//! daemon start, no-op pass, peak RSS). This module must not print results (only progress on
//! stderr) or leave a daemon running when it returns.

use crate::instance::{Instance, QUICK};
use crate::raw::{self, Raw};
use crate::report::{Metric, Target, Unit};
use crate::scratch::check_interrupted;
use crate::stats::{p99_millis, ratio, Summary};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};
use ws_ckpt::api::Request;
use ws_ckpt::sys::Sys;

/// Sizes of one run.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// `--quick`.
    pub quick: bool,
    /// Repetitions of the single-operation measurements.
    pub reps: usize,
    /// Concurrent clients (and raw threads).
    pub clients: usize,
    /// Checkpoints per client per round.
    pub per_client: usize,
    /// Rounds of the concurrent measurement.
    pub conc_rounds: usize,
    /// Snapshot counts at which one workspace's checkpoint cost is measured.
    pub levels: Vec<usize>,
    /// Repetitions per level.
    pub level_reps: usize,
    /// Rounds of the dirty-data measurement.
    pub dirty_rounds: usize,
    /// Files written before each dirty checkpoint.
    pub dirty_files: usize,
    /// Bytes written before each dirty checkpoint.
    pub dirty_bytes: usize,
    /// Workspaces of the fleet.
    pub fleet_workspaces: usize,
    /// Snapshots per fleet workspace.
    pub fleet_snapshots: usize,
    /// Daemon restarts and no-op passes measured on the fleet.
    pub fleet_reps: usize,
    /// Threads creating bulk snapshots while the daemon runs.
    pub bulk_threads: usize,
    /// Threads creating the fleet's snapshots, one workspace each (the daemon stopped).
    pub fleet_bulk_threads: usize,
    /// Image size cap of `main`, GiB (sparse).
    pub main_gib: u64,
    /// Image size cap of `fleet`, GiB (sparse).
    pub fleet_gib: u64,
    /// Checkpoints per CLI client per round (spawned processes).
    pub cli_per_client: usize,
    /// Rounds of the CLI clients' measurement (each: our CLI clients, then the raw spawned
    /// loops); more than the socket rows' because a round of processes is short and noisy.
    pub cli_rounds: usize,
    /// Idle checkpoints whose p99 is the interference baseline.
    pub idle_reps: usize,
    /// Bytes of the tree another workspace is initialized from during the interference row.
    pub big_tree_bytes: usize,
    /// Snapshots another workspace's cleanup deletes during the interference row.
    pub cleanup_snapshots: usize,
    /// Cleanups of that many snapshots whose checkpoint samples are pooled (one cleanup
    /// leaves only a few dozen samples for its p99).
    pub cleanup_rounds: usize,
    /// `list --format json` runs per snapshot level.
    pub list_reps: usize,
    /// `--perf-start`: one more fleet restart under `perf record -g`, written here.
    pub perf_start: Option<PathBuf>,
}

impl Params {
    /// The full run (about 15-20 minutes on 2 cores, the fleet included) or `--quick` (1-2).
    pub(crate) fn new(quick: bool) -> Params {
        if quick {
            Params {
                quick,
                reps: 20,
                clients: 8,
                per_client: 8,
                conc_rounds: 2,
                levels: vec![10, 1000],
                level_reps: 20,
                dirty_rounds: 3,
                dirty_files: 1000,
                dirty_bytes: 64 << 20,
                fleet_workspaces: 20,
                fleet_snapshots: 100,
                fleet_reps: 3,
                bulk_threads: 4,
                fleet_bulk_threads: 4,
                main_gib: 4,
                fleet_gib: 4,
                cli_per_client: 3,
                cli_rounds: 3,
                idle_reps: 60,
                big_tree_bytes: 256 << 20,
                cleanup_snapshots: 200,
                cleanup_rounds: 1,
                list_reps: 10,
                perf_start: None,
            }
        } else {
            Params {
                quick,
                reps: 40,
                clients: 8,
                per_client: 20,
                conc_rounds: 3,
                levels: vec![10, 1000, 10_000],
                level_reps: 30,
                dirty_rounds: 5,
                dirty_files: 1000,
                dirty_bytes: 64 << 20,
                fleet_workspaces: 100,
                fleet_snapshots: 1000,
                fleet_reps: 3,
                bulk_threads: 4,
                fleet_bulk_threads: 4,
                main_gib: 8,
                fleet_gib: 16,
                cli_per_client: 12,
                cli_rounds: 7,
                idle_reps: 150,
                big_tree_bytes: 1 << 30,
                cleanup_snapshots: 500,
                cleanup_rounds: 4,
                list_reps: 20,
                perf_start: None,
            }
        }
    }

    /// The sizes as JSON (for the report's context).
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "quick": self.quick,
            "reps": self.reps,
            "clients": self.clients,
            "checkpoints_per_client": self.per_client,
            "concurrent_rounds": self.conc_rounds,
            "snapshot_levels": self.levels,
            "reps_per_level": self.level_reps,
            "dirty_rounds": self.dirty_rounds,
            "dirty_files": self.dirty_files,
            "dirty_bytes": self.dirty_bytes,
            "fleet_workspaces": self.fleet_workspaces,
            "fleet_snapshots_per_workspace": self.fleet_snapshots,
            "fleet_reps": self.fleet_reps,
            "cli_checkpoints_per_client": self.cli_per_client,
            "cli_rounds": self.cli_rounds,
            "idle_reps": self.idle_reps,
            "big_tree_bytes": self.big_tree_bytes,
            "cleanup_snapshots": self.cleanup_snapshots,
            "cleanup_rounds": self.cleanup_rounds,
            "list_reps": self.list_reps,
        })
    }
}

/// Collected results: rows for the table, plus context for the JSON.
#[derive(Default)]
pub(crate) struct Results {
    /// The rows, in order.
    pub metrics: Vec<Metric>,
    /// Extra facts (setup timings, counts).
    pub context: Map<String, Value>,
}

pub(crate) fn progress(msg: &str) {
    eprintln!("[ws-ckpt-bench] {msg}");
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn summary(samples: &[Duration]) -> Result<Summary> {
    Summary::of_millis(samples).ok_or_else(|| anyhow!("no samples"))
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// The two parts of a run (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Part {
    /// The `main` installation: single operations, clients, interference, dirty, growth.
    Main,
    /// The `fleet` installation: restart → ready, no-op pass, RSS.
    Fleet,
}

/// Run the parts in `only` (every part when empty); rows are appended to `out` as they are
/// measured, so that an error or Ctrl-C still leaves what was measured so far.
pub(crate) fn run_all(
    scratch: &Path,
    bin: &Path,
    p: &Params,
    only: &[Part],
    out: &mut Results,
) -> Result<()> {
    let wanted = |part| only.is_empty() || only.contains(&part);
    if wanted(Part::Main) {
        main_phases(scratch, bin, p, out)?;
        check_interrupted()?;
    }
    if wanted(Part::Fleet) {
        crate::fleet::fleet_phase(scratch, bin, p, out)?;
    }
    Ok(())
}

/// Workspaces of the `main` installation, with their raw twins.
struct Pair {
    ws: PathBuf,
    src: PathBuf,
}

fn main_phases(scratch: &Path, bin: &Path, p: &Params, out: &mut Results) -> Result<()> {
    let mut inst = Instance::create(scratch, "main", bin, p.main_gib)?;
    progress("starting the daemon on a fresh loop image (mkfs included)");
    let first = inst.start_daemon()?;
    out.context
        .insert("first_start_with_mkfs_ms".into(), json!(ms(first)));
    let raw = Raw::new(&inst.mount)?;
    progress(&format!(
        "creating {} workspaces with `ws-ckpt init`",
        p.clients
    ));
    let mut pairs = Vec::new();
    let mut inits = Vec::new();
    for i in 0..p.clients {
        let ws = inst.home.join(format!("ws{i}"));
        std::fs::create_dir_all(&ws).with_context(|| format!("cannot create {}", ws.display()))?;
        raw::write_sample_tree(&ws)?;
        inits.push(inst.cli(&["init", &path_str(&ws)])?);
        let src = raw.source(&i.to_string())?;
        pairs.push(Pair { ws, src });
    }
    out.metrics.push(Metric::new(
        "init of a small directory (CLI)",
        Unit::Millis,
        summary(&inits)?,
        None,
        "`ws-ckpt init DIR` process start to exit, 81 files (no raw counterpart)",
    ));
    raw::syncfs(&inst.mount)?;

    single_operations(&inst, &raw, &pairs[0], p, out)?;
    concurrent(&inst, &raw, &pairs, p, out)?;
    interference(&inst, &raw, &pairs[1], p, out)?;
    dirty(&inst, &raw, &pairs[0], p, out)?;
    growth(&inst, &raw, p, out)?;
    inst.stop_daemon()?;
    Ok(())
}

/// Checkpoint and rollback, end to end (CLI) and through the socket, vs one raw snapshot.
fn single_operations(
    inst: &Instance,
    raw: &Raw,
    pair: &Pair,
    p: &Params,
    out: &mut Results,
) -> Result<()> {
    let ws = path_str(&pair.ws);
    progress(&format!(
        "checkpoint: {} × (CLI, socket, raw ioctl)",
        p.reps
    ));
    let (mut cli, mut sock, mut rawt, mut spawned) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..p.reps {
        check_interrupted()?;
        cli.push(inst.cli(&["checkpoint", "-w", &ws])?);
        spawned.push(raw.spawned_snapshot(&pair.src, "ckpt-spawned", true)?);
        let t = Instant::now();
        inst.checkpoint(&pair.ws)?;
        sock.push(t.elapsed());
        rawt.push(raw.timed_snapshot(&pair.src, "ckpt", true)?);
    }
    let raw_ckpt = summary(&rawt)?;
    out.metrics.push(Metric::new(
        "checkpoint, CLI vs raw spawned",
        Unit::Millis,
        summary(&cli)?,
        Some(summary(&spawned)?),
        "spawn `ws-ckpt checkpoint -w WS` → exit vs spawn of a tiny program that opens the subvolume and makes the one ioctl → exit (target: ratio <= 1.2)",)
    .with_target(Some(Target::RatioAtMost(1.2)))
    );
    out.metrics.push(Metric::new(
        "checkpoint, end to end (CLI)",
        Unit::Millis,
        summary(&cli)?,
        Some(raw_ckpt),
        "spawn `ws-ckpt checkpoint -w WS` → exit (daemon running) vs one raw read-only BTRFS_IOC_SNAP_CREATE_V2 of a subvolume with the same files",
    ));
    out.metrics.push(Metric::new(
        "checkpoint, socket only",
        Unit::Millis,
        summary(&sock)?,
        Some(raw_ckpt),
        "one `checkpoint` request on the daemon socket (ipc::call, no process start) vs the same raw snapshot",
    ));

    let target = inst.checkpoint(&pair.ws)?;
    let raw_target = raw.dest("rb-target")?;
    raw.sys().snapshot(&pair.src, &raw_target, true)?;
    progress(&format!("rollback: {} × (CLI, socket, raw ioctl)", p.reps));
    let (mut cli, mut sock, mut rawt, mut spawned) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..p.reps {
        check_interrupted()?;
        cli.push(inst.cli(&["rollback", "-w", &ws, "-s", &target])?);
        spawned.push(raw.spawned_snapshot(&raw_target, "rb-spawned", false)?);
        let t = Instant::now();
        inst.call(
            &Request::Rollback {
                workspace: ws.clone(),
                snapshot: Some(target.clone()),
                ancestors: None,
                force: false,
                preview: false,
            },
            QUICK,
        )?;
        sock.push(t.elapsed());
        rawt.push(raw.timed_snapshot(&raw_target, "rb", false)?);
    }
    let raw_rb = summary(&rawt)?;
    out.metrics.push(Metric::new(
        "rollback, CLI vs raw spawned writable snapshot",
        Unit::Millis,
        summary(&cli)?,
        Some(summary(&spawned)?),
        "spawn `ws-ckpt rollback -w WS -s ID` → exit vs spawn of the tiny program making one writable snapshot of a read-only snapshot (target: ratio <= 1.6)",)
    .with_target(Some(Target::RatioAtMost(1.6)))
    );
    out.metrics.push(Metric::new(
        "rollback, end to end (CLI)",
        Unit::Millis,
        summary(&cli)?,
        Some(raw_rb),
        "spawn `ws-ckpt rollback -w WS -s ID` → exit vs one raw writable snapshot of a read-only snapshot (ws-ckpt also exchanges the names and deletes the old subvolume)",
    ));
    out.metrics.push(Metric::new(
        "rollback, socket only",
        Unit::Millis,
        summary(&sock)?,
        Some(raw_rb),
        "one `rollback` request on the socket vs the same raw writable snapshot",
    ));
    Ok(())
}

/// `clients` threads, each checkpointing its own workspace through the socket, vs as many
/// threads each snapshotting its own raw subvolume.
fn concurrent(
    inst: &Instance,
    raw: &Raw,
    pairs: &[Pair],
    p: &Params,
    out: &mut Results,
) -> Result<()> {
    progress(&format!(
        "{} clients × {} checkpoints, {} rounds (socket vs raw threads)",
        p.clients, p.per_client, p.conc_rounds
    ));
    let (mut ours_rate, mut raw_rate, mut ours_lat, mut raw_lat) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..p.conc_rounds {
        check_interrupted()?;
        let (wall, lat) = in_threads(pairs, p.per_client, |pair| {
            let t = Instant::now();
            inst.checkpoint(&pair.ws)?;
            Ok(t.elapsed())
        })?;
        ours_rate.push((pairs.len() * p.per_client) as f64 / wall.as_secs_f64());
        ours_lat.extend(lat);
        let (wall, lat) = in_threads(pairs, p.per_client, |pair| {
            let name = pair
                .src
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            let group = format!("conc-{}", name.unwrap_or_default());
            raw.timed_snapshot(&pair.src, &group, true)
        })?;
        raw_rate.push((pairs.len() * p.per_client) as f64 / wall.as_secs_f64());
        raw_lat.extend(lat);
    }
    let rate = |v: &[f64]| Summary::of(v).ok_or_else(|| anyhow!("no samples"));
    out.metrics.push(Metric::new(
        format!("{} clients: throughput", p.clients),
        Unit::PerSecond,
        rate(&ours_rate)?,
        Some(rate(&raw_rate)?),
        format!(
            "checkpoints/s of {n} threads each sending `checkpoint` requests for its own workspace vs snapshots/s of {n} threads each snapshotting its own subvolume (median over rounds)",
            n = p.clients
        ),
    ));
    progress(&format!(
        "{} CLI clients × {} checkpoints, {} rounds (processes vs raw spawned loops)",
        p.clients, p.cli_per_client, p.cli_rounds
    ));
    let (mut cli_rate, mut spawned_rate) = (Vec::new(), Vec::new());
    for _ in 0..p.cli_rounds {
        check_interrupted()?;
        let (wall, _) = in_threads(pairs, p.cli_per_client, |pair| {
            inst.cli(&["checkpoint", "-w", &path_str(&pair.ws)])
        })?;
        cli_rate.push((pairs.len() * p.cli_per_client) as f64 / wall.as_secs_f64());
        let (wall, _) = in_threads(pairs, p.cli_per_client, |pair| {
            let name = pair
                .src
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            raw.spawned_snapshot(
                &pair.src,
                &format!("spawned-{}", name.unwrap_or_default()),
                true,
            )
        })?;
        spawned_rate.push((pairs.len() * p.cli_per_client) as f64 / wall.as_secs_f64());
    }
    out.metrics.push(Metric::new(
        format!("{} CLI clients: throughput", p.clients),
        Unit::PerSecond,
        rate(&cli_rate)?,
        Some(rate(&spawned_rate)?),
        format!(
            "checkpoints/s of {n} threads each spawning `ws-ckpt checkpoint -w WS` for its own workspace vs snapshots/s of {n} loops of the raw spawned program (target: ours >= 0.8 × raw, ratio <= 1.25)",
            n = p.clients
        ),)
    .with_target(Some(Target::RatioAtMost(1.25)))
    );
    out.metrics.push(Metric::new(
        format!("{} clients: latency", p.clients),
        Unit::Millis,
        summary(&ours_lat)?,
        Some(summary(&raw_lat)?),
        "per-request latency during the concurrent rounds vs per-ioctl latency of the raw threads",
    ));
    Ok(())
}

/// Run `op` `per` times in one thread per pair, all released together; returns the wall
/// time until the last finished and every operation's own duration.
fn in_threads<F>(pairs: &[Pair], per: usize, op: F) -> Result<(Duration, Vec<Duration>)>
where
    F: Fn(&Pair) -> Result<Duration> + Sync,
{
    let barrier = Barrier::new(pairs.len() + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .iter()
            .map(|pair| {
                let (op, barrier) = (&op, &barrier);
                s.spawn(move || -> Result<Vec<Duration>> {
                    barrier.wait();
                    (0..per).map(|_| op(pair)).collect()
                })
            })
            .collect();
        barrier.wait();
        let t = Instant::now();
        let mut all = Vec::new();
        let mut first_err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(v)) => all.extend(v),
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => first_err = first_err.or(Some(anyhow!("a client thread panicked"))),
            }
        }
        let wall = t.elapsed();
        match first_err {
            Some(e) => Err(e),
            None => Ok((wall, all)),
        }
    })
}

/// Repeat `op` until `busy` has exited (at least `min` times), with each one's duration.
fn timed_while(
    busy: &mut std::process::Child,
    min: usize,
    mut op: impl FnMut() -> Result<Duration>,
) -> Result<(Vec<Duration>, bool)> {
    let mut samples = Vec::new();
    let exited_early = loop {
        check_interrupted()?;
        let done = busy
            .try_wait()
            .context("cannot wait for the background command")?;
        if let Some(st) = done {
            if !st.success() {
                bail!("the background command failed ({st})");
            }
            break samples.len() < min;
        }
        samples.push(op()?);
    };
    Ok((samples, exited_early))
}

/// Socket checkpoints of `pair` until `busy` has exited (at least `min` of them), with
/// their durations.
fn checkpoints_while(
    inst: &Instance,
    pair: &Pair,
    busy: &mut std::process::Child,
    min: usize,
) -> Result<(Vec<Duration>, bool)> {
    timed_while(busy, min, || {
        let t = Instant::now();
        inst.checkpoint(&pair.ws)?;
        Ok(t.elapsed())
    })
}

/// Checkpoint p99 of one workspace while another is being initialized from a large tree, and
/// while another's snapshots are being cleaned up, vs its idle p99 (issue 9: at most 2×).
fn interference(
    inst: &Instance,
    raw: &Raw,
    pair: &Pair,
    p: &Params,
    out: &mut Results,
) -> Result<()> {
    progress(&format!(
        "interference: {} idle checkpoints (and as many raw snapshots)",
        p.idle_reps
    ));
    raw::syncfs(&inst.mount)?;
    let (mut idle, mut raw_idle) = (Vec::new(), Vec::new());
    for _ in 0..p.idle_reps {
        check_interrupted()?;
        let t = Instant::now();
        inst.checkpoint(&pair.ws)?;
        idle.push(t.elapsed());
        raw_idle.push(raw.timed_snapshot(&pair.src, "idle", true)?);
    }
    let idle_p99 = p99_millis(&idle).ok_or_else(|| anyhow!("no idle samples"))?;
    let raw_idle_p99 = p99_millis(&raw_idle).ok_or_else(|| anyhow!("no idle samples"))?;

    let big = inst.home.join("big");
    let files = 64usize;
    progress(&format!(
        "interference: writing a {} MiB tree, then checkpoints during its init",
        p.big_tree_bytes >> 20
    ));
    std::fs::create_dir_all(&big).with_context(|| format!("cannot create {}", big.display()))?;
    let chunk: Vec<u8> = (0..(p.big_tree_bytes / files))
        .map(|i| (i % 251) as u8)
        .collect();
    for f in 0..files {
        let path = big.join(format!("data-{f:03}.bin"));
        std::fs::write(&path, &chunk)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    raw::syncfs(&big)?;
    // First the kernel's own pace (`big` is still a plain host directory; the init turns it
    // into a workspace): raw snapshots of the twin while a plain `cp -r` of the same tree
    // into another subvolume of the same filesystem, then `sync -f` (the init ends with a
    // syncfs too), runs.
    progress(&format!(
        "interference: raw snapshots during a plain cp -r of the {} MiB tree",
        p.big_tree_bytes >> 20
    ));
    let target = raw.dest("cp-target")?;
    raw.sys().create_subvolume(&target)?;
    let script = "cp -r -- \"$1\" \"$2/copy\" && sync -f -- \"$2\"";
    let mut cp = std::process::Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(&big)
        .arg(&target)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("cannot spawn cp -r")?;
    let cp_start = Instant::now();
    let (raw_during, _) = timed_while(&mut cp, 5, || {
        raw.timed_snapshot(&pair.src, "during-cp", true)
    })?;
    let cp_ms = ms(cp_start.elapsed());
    let raw_during_p99 =
        p99_millis(&raw_during).ok_or_else(|| anyhow!("the cp ended before any snapshot"))?;
    out.metrics.push(Metric::new(
        format!("kernel: raw snapshot p99 during a {} MiB cp -r", p.big_tree_bytes >> 20),
        Unit::Millis,
        Summary::single(raw_during_p99),
        Some(Summary::single(raw_idle_p99)),
        format!(
            "the kernel's own slowdown, no ws-ckpt involved: p99 of {} raw in-process snapshot ioctls of a subvolume while `cp -r` + `sync -f` copies the same {} MiB tree into another subvolume of the same filesystem ({cp_ms:.0} ms) vs the raw idle p99 over {} (interleaved with the idle checkpoints); compare with the init row's ratio",
            raw_during.len(),
            p.big_tree_bytes >> 20,
            raw_idle.len()
        ),
    ));
    out.context.insert("big_tree_cp_ms".into(), json!(cp_ms));

    let mut init = inst
        .command(&["init", &path_str(&big)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("cannot spawn ws-ckpt init")?;
    let init_start = Instant::now();
    let (during, early) = checkpoints_while(inst, pair, &mut init, 5)?;
    let init_ms = ms(init_start.elapsed());
    let during_p99 =
        p99_millis(&during).ok_or_else(|| anyhow!("the init ended before any checkpoint"))?;
    if early {
        eprintln!(
            "ws-ckpt-bench: WARNING: the init took only {init_ms:.0} ms ({} checkpoints during it)",
            during.len()
        );
    }
    out.metrics.push(Metric::new(
        format!("checkpoint p99 during a {} MiB init", p.big_tree_bytes >> 20),
        Unit::Millis,
        Summary::single(during_p99),
        Some(Summary::single(idle_p99)),
        format!(
            "p99 of {} socket checkpoints of one workspace while `ws-ckpt init` copies and verifies a {} MiB tree into another ({init_ms:.0} ms) vs its idle p99 over {} (target: ratio <= 2)",
            during.len(),
            p.big_tree_bytes >> 20,
            idle.len()
        ),)
    .with_target(Some(Target::RatioAtMost(2.0)))
    );

    out.context
        .insert("big_tree_init_ms".into(), json!(init_ms));

    let (ws, ws_id) = inst.init_workspace("cleanme")?;
    let n = p.cleanup_snapshots;
    let (mut during, mut raw_during) = (Vec::new(), Vec::new());
    let (mut cleanup_ms, mut raw_cleanup_ms) = (0.0, 0.0);
    for round in 0..p.cleanup_rounds {
        progress(&format!(
            "interference: cleanup round {} of {}: {n} snapshots each, deleted by the kernel alone, then by ws-ckpt cleanup",
            round + 1,
            p.cleanup_rounds
        ));
        // The kernel's side first: raw snapshots of the twin while a raw deletion of as many
        // snapshots (commit, sync, cleaner wait) runs.
        let dir = raw.group_dir(&format!("cleanup-{round}"))?;
        raw::bulk_snapshots(raw.sys(), &pair.src, &dir, &bulk_ids(0, n), p.bulk_threads)?;
        raw::syncfs(&inst.mount)?;
        let mut delete = raw.spawn_delete(&dir)?;
        let t = Instant::now();
        let (samples, _) = timed_while(&mut delete, 5, || {
            raw.timed_snapshot(&pair.src, "during-delete", true)
        })?;
        raw_cleanup_ms += ms(t.elapsed());
        raw_during.extend(samples);

        raw::bulk_snapshots(
            raw.sys(),
            &inst.layout().ws_subvol(&ws_id),
            &inst.layout().snap_dir(&ws_id),
            &bulk_ids(round * n, n),
            p.bulk_threads,
        )?;
        inst.apply()?;
        raw::syncfs(&inst.mount)?;
        let mut cleanup = inst
            .command(&["cleanup", "-w", &path_str(&ws), "--keep", "1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot spawn ws-ckpt cleanup")?;
        let t = Instant::now();
        let (samples, _) = checkpoints_while(inst, pair, &mut cleanup, 5)?;
        cleanup_ms += ms(t.elapsed());
        during.extend(samples);
    }
    let rounds = p.cleanup_rounds as f64;
    let raw_during_p99 = p99_millis(&raw_during)
        .ok_or_else(|| anyhow!("the raw deletion ended before any snapshot"))?;
    out.metrics.push(Metric::new(
        format!("kernel: raw snapshot p99 during a {n}-snapshot deletion"),
        Unit::Millis,
        Summary::single(raw_during_p99),
        Some(Summary::single(raw_idle_p99)),
        format!(
            "the kernel's own slowdown, no ws-ckpt involved: p99 of {} raw in-process snapshot ioctls of a subvolume while another process deletes {} snapshots of it, commits, syncs and waits for the cleaner ({} rounds, {:.0} ms each) vs the raw idle p99; compare with the cleanup row's ratio",
            raw_during.len(),
            n - 1,
            p.cleanup_rounds,
            raw_cleanup_ms / rounds
        ),
    ));
    let during_p99 =
        p99_millis(&during).ok_or_else(|| anyhow!("the cleanup ended before any checkpoint"))?;
    out.metrics.push(Metric::new(
        format!("checkpoint p99 during a {n}-snapshot cleanup"),
        Unit::Millis,
        Summary::single(during_p99),
        Some(Summary::single(idle_p99)),
        format!(
            "p99 of {} socket checkpoints of one workspace while `ws-ckpt cleanup --keep 1` deletes {} snapshots of another and waits for the cleaner ({} rounds, {:.0} ms each) vs its idle p99 (target: ratio <= 2)",
            during.len(),
            n - 1,
            p.cleanup_rounds,
            cleanup_ms / rounds
        ),)
    .with_target(Some(Target::RatioAtMost(2.0)))
    );
    Ok(())
}

/// Checkpoint right after writing files, vs the raw ioctl after the same writes.
fn dirty(inst: &Instance, raw: &Raw, pair: &Pair, p: &Params, out: &mut Results) -> Result<()> {
    progress(&format!(
        "dirty data: {} rounds of {} files / {} MiB, then checkpoint (socket) vs raw",
        p.dirty_rounds,
        p.dirty_files,
        p.dirty_bytes >> 20
    ));
    let (mut ours, mut rawt) = (Vec::new(), Vec::new());
    for round in 0..p.dirty_rounds {
        check_interrupted()?;
        raw::syncfs(&inst.mount)?;
        raw::write_dirty(&pair.ws, p.dirty_files, p.dirty_bytes, round)?;
        let t = Instant::now();
        inst.checkpoint(&pair.ws)?;
        ours.push(t.elapsed());
        raw::syncfs(&inst.mount)?;
        raw::write_dirty(&pair.src, p.dirty_files, p.dirty_bytes, round)?;
        rawt.push(raw.timed_snapshot(&pair.src, "dirty", true)?);
    }
    out.metrics.push(Metric::new(
        "checkpoint after writing (dirty data)",
        Unit::Millis,
        summary(&ours)?,
        Some(summary(&rawt)?),
        format!(
            "`checkpoint` request right after writing {} files / {} MiB into the workspace (unsynced) vs the raw snapshot right after the same writes into its subvolume; both flush the data",
            p.dirty_files,
            p.dirty_bytes >> 20
        ),
    ));
    Ok(())
}

/// Snapshot IDs `bulk-<start>…` (valid, sortable).
pub(crate) fn bulk_ids(start: usize, count: usize) -> Vec<String> {
    (start..start + count)
        .map(|i| format!("bulk-{i:06}"))
        .collect()
}

/// Issue 9's `list --format json` targets: <= 5 ms at 1 000 snapshots, <= 30 ms at 10 000.
fn list_target(level: usize) -> Option<Target> {
    match level {
        1000 => Some(Target::OursAtMost(5.0)),
        10_000 => Some(Target::OursAtMost(30.0)),
        _ => None,
    }
}

/// Checkpoint cost in one workspace holding 10, 1 000 (and 10 000) snapshots.
fn growth(inst: &Instance, raw: &Raw, p: &Params, out: &mut Results) -> Result<()> {
    let (ws, ws_id) = inst.init_workspace("growth")?;
    let subvol = inst.layout().ws_subvol(&ws_id);
    let snap_dir = inst.layout().snap_dir(&ws_id);
    let src = raw.source("growth")?;
    let mut have = 0usize;
    let mut next_id = 0usize;
    let mut rows: Vec<(usize, Summary, Summary)> = Vec::new();
    for &level in &p.levels {
        check_interrupted()?;
        let need = level.saturating_sub(have);
        if need > 0 {
            progress(&format!(
                "growth: {need} raw snapshots into the workspace, then `apply` adopts them"
            ));
            let ids = bulk_ids(next_id, need);
            next_id += need;
            let made = raw::bulk_snapshots(raw.sys(), &subvol, &snap_dir, &ids, p.bulk_threads)?;
            let t = Instant::now();
            inst.apply()?;
            let adopt = t.elapsed();
            have += need;
            // The daemon may have adopted some already (a pass triggered meanwhile).
            let n = inst.snapshot_count(Some(&ws))?;
            if n != have {
                bail!("the workspace lists {n} snapshots after apply, expected {have}");
            }
            out.context.insert(
                format!("growth_bulk_{level}"),
                json!({"raw_snapshots": need, "raw_ms": ms(made), "adopt_apply_ms": ms(adopt)}),
            );
        }
        progress(&format!(
            "growth: {} checkpoints at {have} snapshots (socket vs raw)",
            p.level_reps
        ));
        raw::syncfs(&inst.mount)?;
        let (mut ours, mut rawt) = (Vec::new(), Vec::new());
        for _ in 0..p.level_reps {
            check_interrupted()?;
            let t = Instant::now();
            inst.checkpoint(&ws)?;
            ours.push(t.elapsed());
            rawt.push(raw.timed_snapshot(&src, "growth", true)?);
        }
        let (o, r) = (summary(&ours)?, summary(&rawt)?);
        out.metrics.push(Metric::new(
            format!("checkpoint at {level} snapshots"),
            Unit::Millis,
            o,
            Some(r),
            format!("`checkpoint` request in a workspace already holding {have} snapshots vs a raw snapshot on the same filesystem (which holds as many subvolumes)"),
        ));
        rows.push((level, o, r));
        have += p.level_reps;
        let ws_s = path_str(&ws);
        let mut lists = Vec::new();
        for _ in 0..p.list_reps {
            check_interrupted()?;
            lists.push(inst.cli(&["--format", "json", "list", "-w", &ws_s])?);
        }
        out.metrics.push(Metric::new(
            format!("list --format json at {level} snapshots"),
            Unit::Millis,
            summary(&lists)?,
            None,
            format!("spawn `ws-ckpt --format json list -w WS` → exit for a workspace holding {have} snapshots (targets: <= 5 ms at 1 000, <= 30 ms at 10 000)"),
        ).with_target(list_target(level)));
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        let growth = ratio(last.1.median, first.1.median);
        let raw_growth = ratio(last.2.median, first.2.median);
        if let (Some(g), Some(rg)) = (growth, raw_growth) {
            out.metrics.push(Metric::new(
                format!("checkpoint growth {} → {} snapshots", first.0, last.0),
                Unit::Factor,
                Summary::single(g),
                Some(Summary::single(rg)),
                format!(
                    "ours: our median at {} snapshots / our median at {} (must stay ~1); raw: the same for the raw snapshot (the kernel's own growth); ratio: ours / raw, the growth the kernel does not explain",
                    last.0, first.0
                ),
            ));
        }
    }
    Ok(())
}
