//! `ws-ckpt-bench`: the benchmark of SPEC §10. As root it builds a private btrfs loop image
//! under `/var/tmp/ws-ckpt-bench-*`, runs the real `ws-ckpt` daemon and CLI on it, and prints
//! each cost next to the raw kernel cost measured in the same run (see `bench/README.md`).
//!
//! It must not touch the system installation (`/var/lib/ws-ckpt`, `/run/ws-ckpt`,
//! `/mnt/btrfs-workspace`), and must leave nothing behind: daemons stopped, images unmounted,
//! loop devices detached, the directory removed — also on error and Ctrl-C.

mod fleet;
mod instance;
mod phases;
mod raw;
mod report;
mod scratch;
mod stats;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Measure ws-ckpt against raw btrfs ioctls on a private loop image (needs root).
#[derive(Debug, Parser)]
#[command(name = "ws-ckpt-bench", version)]
struct Args {
    /// Smaller run (about 1-2 minutes): fewer repetitions, growth only to 1 000 snapshots, a
    /// fleet of 20 workspaces × 100 snapshots.
    #[arg(long)]
    quick: bool,
    /// Print the results as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// The `ws-ckpt` binary to measure (default: `ws-ckpt` next to this program).
    #[arg(long, value_name = "PATH")]
    ws_ckpt: Option<PathBuf>,
    /// Keep the scratch directory (after stopping, unmounting and detaching) for inspection.
    #[arg(long)]
    keep: bool,
    /// Run only these parts (repeatable): `main` (single operations, clients, interference,
    /// dirty data, growth and list) or `fleet` (restart → ready, no-op pass, RSS).
    #[arg(long, value_enum, value_name = "PART")]
    only: Vec<phases::Part>,
    /// After the fleet's measured restarts, restart it once more under `perf record -g`
    /// (writes `PATH`; read it with `perf report -i PATH`): where the start-up time goes.
    #[arg(long, value_name = "PATH")]
    perf_start: Option<PathBuf>,
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(raw::SPAWNED_MODE) {
        std::process::exit(raw::spawned_main(&argv[2..]));
    }
    if argv.get(1).map(String::as_str) == Some(raw::DELETE_MODE) {
        std::process::exit(raw::delete_main(&argv[2..]));
    }
    let args = Args::parse();
    let code = match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ws-ckpt-bench: {e:#}");
            if scratch::interrupted() {
                130
            } else {
                1
            }
        }
    };
    std::process::exit(code);
}

fn ws_ckpt_binary(args: &Args) -> Result<PathBuf> {
    let path = match &args.ws_ckpt {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot locate this program")?
            .with_file_name("ws-ckpt"),
    };
    if !path.is_file() {
        bail!(
            "ws-ckpt binary not found at {}; build it (cargo build --release -p ws-ckpt) or pass --ws-ckpt PATH",
            path.display()
        );
    }
    std::fs::canonicalize(&path).with_context(|| format!("cannot resolve {}", path.display()))
}

fn kernel() -> String {
    let u = nix::sys::utsname::uname();
    match u {
        Ok(u) => u.release().to_string_lossy().into_owned(),
        Err(_) => "unknown".into(),
    }
}

fn run(args: &Args) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("needs root (loop devices, mounts, btrfs ioctls); run `sudo scripts/bench`");
    }
    let bin = ws_ckpt_binary(args)?;
    scratch::install_signal_handlers()?;
    let mut params = phases::Params::new(args.quick);
    params.perf_start = args.perf_start.clone();
    let mut scratch = scratch::create()?;
    scratch.keep = args.keep;
    eprintln!(
        "[ws-ckpt-bench] {} run in {} with {}",
        if args.quick { "quick" } else { "full" },
        scratch.root().display(),
        bin.display()
    );
    let started = Instant::now();
    let mut results = phases::Results::default();
    let outcome = phases::run_all(scratch.root(), &bin, &params, &args.only, &mut results);
    eprintln!("[ws-ckpt-bench] tearing down {}", scratch.root().display());
    scratch.teardown();
    let mut context = json!({
        "kernel": kernel(),
        "ws_ckpt": bin.display().to_string(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "params": params.to_json(),
        "total_seconds": started.elapsed().as_secs_f64(),
        "complete": outcome.is_ok(),
    });
    if let Value::Object(c) = &mut context {
        c.extend(results.context);
    }
    print(&results.metrics, context, args.json, &bin);
    outcome
}

fn print(metrics: &[report::Metric], context: Value, as_json: bool, bin: &Path) {
    if as_json {
        println!("{:#}", report::json(metrics, context));
        return;
    }
    if metrics.is_empty() {
        return;
    }
    println!(
        "ws-ckpt benchmark ({}; kernel {}; {:.0} s)\n",
        bin.display(),
        context.get("kernel").and_then(Value::as_str).unwrap_or("?"),
        context
            .get("total_seconds")
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
    );
    print!("{}", report::table(metrics));
    if let Some(c) = context.as_object() {
        println!("\nsetup and context:");
        for (k, v) in c.iter().filter(|(k, _)| k.as_str() != "params") {
            println!("  {k} = {}", compact(v));
        }
    }
}

/// A JSON value on one line, numbers rounded to 0.1.
fn compact(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.1}"),
            _ => n.to_string(),
        },
        Value::Object(m) => {
            let parts: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}: {}", compact(v)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
        other => other.to_string(),
    }
}
