//! One function per subcommand: load config, open the engine, call it, print the result,
//! return the exit code.

use crate::args::{Cli, Command, ConfigCommand, Format};
use crate::output;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use ws_ckpt::config::Config;
use ws_ckpt::copy::Progress;
use ws_ckpt::engine::{ApplyOptions, ApplyReport, Engine};
use ws_ckpt::error::{Error, ErrorCode};
use ws_ckpt::plan::{Plan, PlanOptions, Severity};
use ws_ckpt::status::StatusReport;
use ws_ckpt::sys::linux::LinuxSys;

/// How long an in-process command waits for another in-process command to finish.
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// Run the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let json = cli.format == Format::Json;
    match dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            output::error(&e, json);
            1
        }
    }
}

fn load_config(path: &Path) -> Result<Config, Error> {
    Config::load(path).map_err(Error::from)
}

fn open_engine(cli: &Cli) -> Result<Engine, Error> {
    let config = load_config(&cli.config)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::new(
            ErrorCode::PermissionDenied,
            "this command needs root when no ws-ckpt daemon is running",
        )
        .hint("run it with sudo, or start the daemon (systemctl start ws-ckpt)"));
    }
    let sys = LinuxSys::new()?;
    Engine::open(config, Arc::new(sys), "cli", LOCK_WAIT)
}

fn progress_printer() -> impl FnMut(&str, &Progress) {
    let tty = std::io::stderr().is_terminal();
    let mut last_label = String::new();
    move |label: &str, p: &Progress| {
        if !tty {
            return;
        }
        if label != last_label {
            last_label = label.to_string();
        }
        let pct = (p.bytes_done * 100)
            .checked_div(p.bytes_total)
            .unwrap_or(100);
        eprint!(
            "\r{label}: {pct:>3}% ({} of {}, {}/{} entries)\x1b[K",
            ws_ckpt::plan::human_bytes(p.bytes_done),
            ws_ckpt::plan::human_bytes(p.bytes_total),
            p.entries_done,
            p.entries_total
        );
        if p.entries_done >= p.entries_total && p.bytes_done >= p.bytes_total {
            eprintln!();
        }
    }
}

fn dispatch(cli: &Cli) -> Result<i32, Error> {
    let json = cli.format == Format::Json;
    match &cli.command {
        Command::Plan {
            detailed_exitcode,
            prune,
        } => {
            let engine = open_engine(cli)?;
            let p = engine.plan(PlanOptions { prune: *prune });
            engine.close();
            print_plan(&p, json);
            Ok(if p.has_errors() {
                1
            } else if *detailed_exitcode && !p.actions.is_empty() {
                2
            } else {
                0
            })
        }
        Command::Apply { check, diff, prune } => {
            let mut engine = open_engine(cli)?;
            let mut progress = progress_printer();
            let report = engine.apply(
                ApplyOptions {
                    check: *check,
                    prune: *prune,
                },
                &mut progress,
            );
            engine.close();
            print_apply(&report, json, *diff);
            Ok(if report.ok() { 0 } else { 1 })
        }
        Command::Status { workspace } => {
            let engine = open_engine(cli)?;
            let mut st = engine.status();
            engine.close();
            if let Some(w) = workspace {
                let abs = ws_ckpt::engine::absolute_user_path(Path::new(w)).ok();
                st.workspaces
                    .retain(|x| x.ws_id == *w || Some(&x.path) == abs.as_ref());
                if st.workspaces.is_empty() {
                    return Err(Error::new(
                        ErrorCode::WorkspaceNotFound,
                        format!("no workspace {w}"),
                    )
                    .hint("`ws-ckpt status` lists all workspaces"));
                }
            }
            print_status(&st, json);
            Ok(st.exit_code())
        }
        Command::Init { path } => {
            let mut engine = open_engine(cli)?;
            let mut progress = progress_printer();
            let r = engine.init(path, &mut progress);
            engine.close();
            let r = r?;
            if json {
                output::json(&r);
            } else if r.changed {
                println!("{} is now workspace {}", r.path.display(), r.ws_id);
            } else {
                println!("{} is already workspace {}", r.path.display(), r.ws_id);
            }
            Ok(0)
        }
        Command::Release { path } => {
            let mut engine = open_engine(cli)?;
            let mut progress = progress_printer();
            let r = engine.release(path, &mut progress);
            engine.close();
            let r = r?;
            if json {
                output::json(&r);
            } else {
                println!(
                    "{} is a plain directory again (workspace {} released)",
                    r.path.display(),
                    r.ws_id
                );
            }
            Ok(0)
        }
        Command::Config(ConfigCommand::Show) => {
            let c = load_config(&cli.config)?;
            if json {
                output::json(&c.to_json());
            } else {
                print!("{}", c.to_canonical_toml());
            }
            Ok(0)
        }
        Command::Config(ConfigCommand::Validate { path }) => {
            let p = path.as_deref().unwrap_or(&cli.config);
            let c = load_config(p)?;
            if json {
                output::json(&serde_json::json!({
                    "valid": true,
                    "files": c.files,
                    "workspaces": c.workspaces.len(),
                }));
            } else {
                println!(
                    "{}: valid ({} file(s), {} workspace(s))",
                    p.display(),
                    c.files.len(),
                    c.workspaces.len()
                );
            }
            Ok(0)
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "ws-ckpt", &mut std::io::stdout());
            Ok(0)
        }
        Command::Checkpoint { .. }
        | Command::Rollback { .. }
        | Command::List { .. }
        | Command::Delete { .. }
        | Command::Cleanup { .. }
        | Command::Diff { .. }
        | Command::Reload
        | Command::Daemon { .. } => Err(Error::new(ErrorCode::InvalidArgument, "not wired yet")),
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .map_err(|e| Error::new(ErrorCode::Io, e.to_string()))?;
            Ok(0)
        }
    }
}

fn severity_label(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Error => "ERROR",
    }
}

fn print_findings(findings: &[ws_ckpt::plan::Finding]) {
    for f in findings {
        let kind = serde_json::to_value(f.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        println!("{} [{kind}] {}", severity_label(f.severity), f.message);
        println!("    fix: {}", f.hint);
    }
}

fn print_plan(p: &Plan, json: bool) {
    if json {
        output::json(p);
        return;
    }
    if p.actions.is_empty() {
        println!("in sync: nothing to do");
    } else {
        println!("{} action(s) pending:", p.actions.len());
        for a in &p.actions {
            println!("  {:<20} {}", a.name(), a.describe());
        }
    }
    print_findings(&p.findings);
}

fn print_apply(r: &ApplyReport, json: bool, diff: bool) {
    if json {
        output::json(r);
        return;
    }
    if r.actions.is_empty() {
        println!("in sync: nothing changed");
    }
    for a in &r.actions {
        let detail = if diff || a.result != "done" {
            format!(" {}", a.action.describe())
        } else {
            match a.action.ws_id() {
                Some(ws) => format!(" {ws}"),
                None => String::new(),
            }
        };
        println!("{:<8} {}{detail}", a.result, a.action.name());
        if let Some(e) = &a.error {
            println!("    error: {}", e.message);
            if let Some(h) = &e.hint {
                println!("    hint: {h}");
            }
        }
    }
    print_findings(&r.findings);
}

fn print_status(st: &StatusReport, json: bool) {
    if json {
        output::json(st);
        return;
    }
    let health = serde_json::to_value(st.health)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    println!("health: {health}");
    if let Some(b) = &st.backend {
        println!(
            "backend: {} ({}), mount {} {}",
            b.backend_type,
            b.selection_method,
            b.mount.display(),
            if b.mounted {
                "(mounted)"
            } else {
                "(NOT mounted)"
            }
        );
        if let Some(img) = &b.image {
            println!(
                "  image {} {}{}",
                img.display(),
                b.image_size_bytes
                    .map(ws_ckpt::plan::human_bytes)
                    .unwrap_or_else(|| "(missing)".into()),
                match (&b.device, b.direct_io) {
                    (Some(d), Some(true)) => format!(" on {d} (direct I/O)"),
                    (Some(d), Some(false)) => {
                        format!(" on {d} (buffered I/O: the host filesystem refused direct I/O)")
                    }
                    (Some(d), None) => format!(" on {d}"),
                    _ => String::new(),
                }
            );
        }
        if let Some(u) = &b.usage {
            println!(
                "  usage {} of {} ({}%)",
                ws_ckpt::plan::human_bytes(u.used_bytes),
                ws_ckpt::plan::human_bytes(u.total_bytes),
                u.used_percent
            );
        }
    }
    let d = &st.daemon;
    match (d.running, d.pid) {
        (true, Some(pid)) => println!("daemon: running (pid {pid})"),
        _ => println!("daemon: not running (commands run in-process)"),
    }
    if let Some(t) = &d.last_unclean_shutdown {
        println!("  last unclean shutdown: {t}");
    }
    if st.workspaces.is_empty() {
        println!("workspaces: none");
    } else {
        let rows: Vec<Vec<String>> = st
            .workspaces
            .iter()
            .map(|w| {
                vec![
                    w.ws_id.clone(),
                    serde_json::to_value(w.condition)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    w.snapshots.to_string(),
                    w.missing.to_string(),
                    w.path.display().to_string(),
                ]
            })
            .collect();
        output::table(
            &["WS_ID", "CONDITION", "SNAPSHOTS", "MISSING", "PATH"],
            &rows,
        );
        for w in &st.workspaces {
            if let Some(d) = &w.detail {
                println!("  {}: {d}", w.ws_id);
            }
        }
    }
    if st.pending_actions > 0 {
        println!(
            "{} action(s) pending: run `ws-ckpt apply`",
            st.pending_actions
        );
    }
    print_findings(&st.findings);
}
