//! `status`: backend, daemon and workspace health. Exit 0 whenever a report was made (as
//! upstream; its plugins take anything else for "no daemon"); `--detailed-exitcode`: 0
//! healthy, 3 degraded, 1 error.

use super::plan::print_findings;
use super::{call, json_mode, parse, str_of, ws_spec, QUICK};
use crate::args::Cli;
use crate::output;
use ws_ckpt::api::Request;
use ws_ckpt::error::Error;
use ws_ckpt::status::StatusReport;

/// `status [-w WORKSPACE] [--detailed-exitcode]`.
pub(super) fn status(
    cli: &Cli,
    workspace: Option<&str>,
    detailed_exitcode: bool,
) -> Result<i32, Error> {
    let workspace = workspace.map(ws_spec).transpose()?;
    let v = call(cli, Request::Status { workspace }, QUICK)?;
    let st: StatusReport = parse(&v)?;
    if json_mode(cli) {
        output::json(&v)
    } else {
        print_status(&st)
    }
    Ok(if detailed_exitcode { st.exit_code() } else { 0 })
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
    }
    // Why it is not healthy, each with its fix (workspace conditions, warnings and errors,
    // pending changes); then what is only informational.
    if !st.attention.is_empty() {
        println!("needs attention:");
        for a in &st.attention {
            println!("  - {}", output::esc(&a.message));
            println!("    fix: {}", output::esc(&a.fix));
        }
    }
    let info: Vec<_> = st
        .findings
        .iter()
        .filter(|f| f.severity < ws_ckpt::plan::Severity::Warning)
        .cloned()
        .collect();
    print_findings(&info);
}
