//! One function per subcommand: build a [`Request`], send it to the daemon when one answers
//! on the socket or run it in-process (root), then print the JSON result as a table or as is.
//! The output is the same either way because both paths produce the same JSON value.

use crate::args::{Cli, Command, ConfigCommand, Format};
use crate::output;
use serde_json::Value;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use ws_ckpt::api::{Caller, Request};
use ws_ckpt::config::Config;
use ws_ckpt::copy::Progress;
use ws_ckpt::engine::{ApplyReport, Engine, InitReport, ReleaseReport};
use ws_ckpt::error::{Error, ErrorCode};
use ws_ckpt::paths::absolute_user_path;
use ws_ckpt::plan::{Finding, Plan, Severity};
use ws_ckpt::status::StatusReport;
use ws_ckpt::sys::linux::LinuxSys;

/// How long an in-process command waits for another in-process command to finish.
const LOCK_WAIT: Duration = Duration::from_secs(120);
/// Socket timeout for quick requests and for ones that may copy whole trees.
const QUICK: Duration = Duration::from_secs(300);
const SLOW: Duration = Duration::from_secs(6 * 3600);

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

fn progress_printer() -> impl FnMut(&str, &Progress) {
    let tty = std::io::stderr().is_terminal();
    move |label: &str, p: &Progress| {
        if !tty {
            return;
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

/// A workspace argument: an existing path is made absolute (the daemon has another cwd);
/// anything else (a ws_id) is passed as is.
fn ws_spec(s: &str) -> Result<String, Error> {
    if std::fs::symlink_metadata(s).is_ok() || s.contains('/') {
        Ok(absolute_user_path(Path::new(s))?.display().to_string())
    } else {
        Ok(s.to_string())
    }
}

fn abs(p: &Path) -> Result<PathBuf, Error> {
    absolute_user_path(p)
}

/// The daemon's socket. When the config does not load (the daemon keeps running on its last
/// good one), `[daemon] runtime_dir` is read from the main file alone, else the default.
fn socket_path(cli: &Cli) -> (PathBuf, Result<Config, Error>) {
    let config = load_config(&cli.config);
    let runtime_dir = match &config {
        Ok(c) => c.daemon.runtime_dir.clone(),
        Err(_) => std::fs::read_to_string(&cli.config)
            .ok()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .and_then(|t| {
                t.get("daemon")?
                    .get("runtime_dir")?
                    .as_str()
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(ws_ckpt::config::DEFAULT_RUNTIME_DIR)),
    };
    (runtime_dir.join(ws_ckpt::ipc::SOCKET_NAME), config)
}

/// Send `req` to the daemon if one answers, else run it in-process (root only).
fn call(cli: &Cli, req: Request, timeout: Duration) -> Result<Value, Error> {
    let (socket, config) = socket_path(cli);
    if ws_ckpt::ipc::daemon_running(&socket) {
        return ws_ckpt::ipc::call(&socket, &req, timeout);
    }
    let config = config?;
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::new(
            ErrorCode::PermissionDenied,
            format!(
                "no ws-ckpt daemon answers on {}, and running without it needs root",
                socket.display()
            ),
        )
        .hint("start the daemon (systemctl start ws-ckpt), or run the command as root"));
    }
    let sys = LinuxSys::new()?;
    let mut engine = Engine::open(config, Arc::new(sys), "cli", LOCK_WAIT)?;
    let mut progress = progress_printer();
    let result = ws_ckpt::handler::handle_in_process(
        &mut engine,
        &Caller::this_process(),
        req,
        &mut progress,
    );
    engine.close();
    result
}

fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, Error> {
    serde_json::from_value(v.clone())
        .map_err(|e| Error::new(ErrorCode::Io, format!("unexpected reply from ws-ckpt: {e}")))
}

fn dispatch(cli: &Cli) -> Result<i32, Error> {
    let json = cli.format == Format::Json;
    let print_json = |v: &Value| output::json(v);
    match &cli.command {
        Command::Plan {
            detailed_exitcode,
            prune,
        } => {
            let v = call(cli, Request::Plan { prune: *prune }, QUICK)?;
            let p: Plan = parse(&v)?;
            if json {
                print_json(&v)
            } else {
                print_plan(&p)
            }
            Ok(
                if p.findings.iter().any(|f| f.severity == Severity::Error) {
                    1
                } else if *detailed_exitcode && !p.actions.is_empty() {
                    2
                } else {
                    0
                },
            )
        }
        Command::Apply { check, diff, prune } => {
            let v = call(
                cli,
                Request::Apply {
                    check: *check,
                    prune: *prune,
                },
                SLOW,
            )?;
            let r: ApplyReport = parse(&v)?;
            if json {
                print_json(&v)
            } else {
                print_apply(&r, *diff)
            }
            Ok(if r.ok() { 0 } else { 1 })
        }
        Command::Status { workspace } => {
            let workspace = workspace.as_deref().map(ws_spec).transpose()?;
            let v = call(cli, Request::Status { workspace }, QUICK)?;
            let st: StatusReport = parse(&v)?;
            if json {
                print_json(&v)
            } else {
                print_status(&st)
            }
            Ok(st.exit_code())
        }
        Command::Init { path } => {
            let v = call(cli, Request::Init { path: abs(path)? }, SLOW)?;
            let r: InitReport = parse(&v)?;
            if json {
                print_json(&v)
            } else if r.changed {
                println!("{} is now workspace {}", r.path.display(), r.ws_id);
            } else {
                println!("{} is already workspace {}", r.path.display(), r.ws_id);
            }
            Ok(0)
        }
        Command::Release { path } => {
            let v = call(cli, Request::Release { path: abs(path)? }, SLOW)?;
            let r: ReleaseReport = parse(&v)?;
            if json {
                print_json(&v)
            } else {
                println!(
                    "{} is a plain directory again (workspace {} released)",
                    r.path.display(),
                    r.ws_id
                );
            }
            Ok(0)
        }
        Command::Checkpoint {
            workspace,
            snapshot,
            message,
            metadata,
            pin,
        } => {
            let metadata = metadata
                .as_deref()
                .map(|m| {
                    serde_json::from_str::<Value>(m).map_err(|e| {
                        Error::new(
                            ErrorCode::InvalidArgument,
                            format!("--metadata is not valid JSON: {e}"),
                        )
                        .hint("pass a JSON value, e.g. --metadata '{\"tool\":\"edit\"}'")
                    })
                })
                .transpose()?;
            let req = Request::Checkpoint {
                workspace: ws_spec(workspace)?,
                snapshot: snapshot.clone(),
                message: message.clone(),
                metadata,
                pin: *pin,
            };
            let v = call(cli, req, SLOW)?;
            if json {
                print_json(&v);
            } else {
                if v["initialized"] == true {
                    eprintln!(
                        "initialized {} as workspace {}",
                        str_of(&v["workspace"]),
                        str_of(&v["ws_id"])
                    );
                }
                if v["empty"] == true {
                    eprintln!("note: the workspace is empty; the snapshot is empty too");
                }
                println!("{}", str_of(&v["snapshot"]));
            }
            Ok(0)
        }
        Command::Rollback {
            workspace,
            snapshot,
            force,
        } => {
            let req = Request::Rollback {
                workspace: ws_spec(workspace)?,
                snapshot: snapshot.clone(),
                force: *force,
            };
            let v = call(cli, req, QUICK)?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "{} rolled back to {}",
                    str_of(&v["workspace"]),
                    str_of(&v["snapshot"])
                );
            }
            Ok(0)
        }
        Command::List { workspace } => {
            let workspace = workspace.as_deref().map(ws_spec).transpose()?;
            let v = call(cli, Request::List { workspace }, QUICK)?;
            if json {
                print_json(&v)
            } else {
                print_list(&v)
            }
            Ok(0)
        }
        Command::Delete {
            workspace,
            snapshot,
            force,
        } => {
            let workspace = workspace.as_deref().map(ws_spec).transpose()?;
            let v = call(
                cli,
                Request::Delete {
                    workspace,
                    snapshot: snapshot.clone(),
                    force: *force,
                },
                QUICK,
            )?;
            if json {
                print_json(&v);
            } else {
                for id in v["deleted"].as_array().into_iter().flatten() {
                    println!("deleted {} from {}", str_of(id), str_of(&v["ws_id"]));
                }
            }
            Ok(0)
        }
        Command::Cleanup { workspace, keep } => {
            let v = call(
                cli,
                Request::Cleanup {
                    workspace: ws_spec(workspace)?,
                    keep: keep.clone(),
                },
                SLOW,
            )?;
            if json {
                print_json(&v);
            } else {
                let deleted = v["deleted"].as_array().cloned().unwrap_or_default();
                if deleted.is_empty() {
                    println!("nothing to delete in {}", str_of(&v["ws_id"]));
                }
                for d in &deleted {
                    println!("deleted {} ({})", str_of(&d["id"]), str_of(&d["reason"]));
                }
                if let Some(n) = v["freed_bytes"].as_u64() {
                    println!("freed {}", ws_ckpt::plan::human_bytes(n));
                }
            }
            Ok(0)
        }
        Command::Diff {
            workspace,
            from,
            to,
        } => {
            let req = Request::Diff {
                workspace: ws_spec(workspace)?,
                from: from.clone(),
                to: to.clone(),
            };
            let v = call(cli, req, SLOW)?;
            if json {
                print_json(&v)
            } else {
                print_diff(&v)
            }
            Ok(0)
        }
        Command::Reload => {
            let (socket, _) = socket_path(cli);
            if !ws_ckpt::ipc::daemon_running(&socket) {
                return Err(Error::new(ErrorCode::Io, format!("no ws-ckpt daemon answers on {}", socket.display()))
                    .hint("start it (systemctl start ws-ckpt); without a daemon, `ws-ckpt apply` converges directly"));
            }
            let v = ws_ckpt::ipc::call(&socket, &Request::Reload, SLOW)?;
            let r: ApplyReport = parse(&v)?;
            if json {
                print_json(&v)
            } else {
                print_apply(&r, false)
            }
            Ok(if r.ok() { 0 } else { 1 })
        }
        Command::Daemon { check } => Ok(ws_ckpt::daemon::run(&cli.config, *check)),
        Command::Config(ConfigCommand::Show) => {
            let c = load_config(&cli.config)?;
            if json {
                output::json(&c.to_json())
            } else {
                print!("{}", c.to_canonical_toml())
            }
            Ok(0)
        }
        Command::Config(ConfigCommand::Validate { path }) => {
            let p = path.as_deref().unwrap_or(&cli.config);
            let c = load_config(p)?;
            if json {
                output::json(
                    &serde_json::json!({"valid": true, "files": c.files, "workspaces": c.workspaces.len()}),
                );
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
        Command::Completions { shell } => crate::gen::completions(*shell),
        Command::Man { page, out_dir } => crate::gen::man(page.as_deref(), out_dir.as_deref()),
    }
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn severity_label(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Error => "ERROR",
    }
}

fn print_findings(findings: &[Finding]) {
    for f in findings {
        let kind = str_of(&serde_json::to_value(f.kind).unwrap_or_default());
        println!("{} [{kind}] {}", severity_label(f.severity), f.message);
        println!("    fix: {}", f.hint);
    }
}

fn print_plan(p: &Plan) {
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

fn print_apply(r: &ApplyReport, diff: bool) {
    if r.actions.is_empty() {
        println!("in sync: nothing changed");
    }
    for a in &r.actions {
        let detail = if diff || a.result != "done" {
            format!(" {}", a.action.describe())
        } else {
            a.action
                .ws_id()
                .map(|ws| format!(" {ws}"))
                .unwrap_or_default()
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

fn print_status(st: &StatusReport) {
    println!(
        "health: {}",
        str_of(&serde_json::to_value(st.health).unwrap_or_default())
    );
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
            let size = b
                .image_size_bytes
                .map(ws_ckpt::plan::human_bytes)
                .unwrap_or_else(|| "(missing)".into());
            let dev = match (&b.device, b.direct_io) {
                (Some(d), Some(true)) => format!(" on {d} (direct I/O)"),
                (Some(d), Some(false)) => {
                    format!(" on {d} (buffered I/O: the host filesystem refused direct I/O)")
                }
                (Some(d), None) => format!(" on {d}"),
                _ => String::new(),
            };
            println!("  image {} {size}{dev}", img.display());
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
        (true, Some(pid)) => {
            let up = d
                .uptime_secs
                .map(|s| format!(", up {s}s"))
                .unwrap_or_default();
            let pass = d
                .last_pass
                .as_deref()
                .map(|p| format!(", last pass {p}"))
                .unwrap_or_default();
            println!("daemon: running (pid {pid}{up}{pass})");
        }
        _ => println!("daemon: not running (commands run in-process)"),
    }
    if let Some(e) = &d.config_error {
        println!("  CONFIG ERROR (running on the last good config): {e}");
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
                    str_of(&serde_json::to_value(w.condition).unwrap_or_default()),
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

fn print_list(v: &Value) {
    let workspaces = v["workspaces"].as_array().cloned().unwrap_or_default();
    if workspaces.is_empty() {
        println!("no workspaces");
    }
    for w in &workspaces {
        println!("{} {}", str_of(&w["ws_id"]), str_of(&w["path"]));
        let snaps = w["snapshots"].as_array().cloned().unwrap_or_default();
        if snaps.is_empty() {
            println!("  (no snapshots)");
            continue;
        }
        let rows: Vec<Vec<String>> = snaps
            .iter()
            .map(|s| {
                let mut flags = Vec::new();
                if s["pinned"] == true {
                    flags.push("pinned");
                }
                if s["missing"] == true {
                    flags.push("MISSING");
                }
                vec![
                    format!("  {}", str_of(&s["id"])),
                    str_of(&s["created_at"]),
                    flags.join(","),
                    str_of(&s["message"]),
                ]
            })
            .collect();
        output::table(&["  ID", "CREATED", "FLAGS", "MESSAGE"], &rows);
    }
}

fn print_diff(v: &Value) {
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        println!("no changes");
    }
    for e in &entries {
        let path = str_of(&e["path"]);
        match e["change"].as_str().unwrap_or("") {
            "added" => println!("+ {path}"),
            "deleted" => println!("- {path}"),
            "modified" => println!("M {path}"),
            "renamed" => println!("R {} → {path}", str_of(&e["from"])),
            other => println!("? {other} {path}"),
        }
    }
}
