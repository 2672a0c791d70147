//! `recover` (upstream's name for release, docs/compat.md §4.8): one workspace (`-w PATH|WS_ID`)
//! or every one the caller may release (`--all`), after a confirmation that shows how many
//! snapshots each will lose. The answer is read from stdin, terminal or not (`echo y |`), as
//! upstream's scripts and RPM hooks send it. With `--all` every workspace is tried and the
//! exit status is 1 when any failed.

use super::{call, confirm, json_mode, parse, str_of, ws_spec, QUICK, SLOW};
use crate::args::Cli;
use crate::output;
use serde_json::json;
use ws_ckpt::api::Request;
use ws_ckpt::error::Error;
use ws_ckpt::ops::{RecoverPreview, RecoverTarget};

/// A path for a terminal (control characters escaped).
fn shown(p: &std::path::Path) -> String {
    output::esc(&p.display().to_string()).into_owned()
}

fn snapshots(n: usize) -> String {
    if n == 1 {
        "1 snapshot".to_string()
    } else {
        format!("{n} snapshots")
    }
}

/// `recover (-w WS | --all) [--force]`.
pub(super) fn recover(
    cli: &Cli,
    workspace: Option<&str>,
    all: bool,
    force: bool,
) -> Result<i32, Error> {
    let json = json_mode(cli);
    let workspace = match (workspace, all) {
        (Some(w), false) => Some(ws_spec(w)?),
        _ => None,
    };
    let single = workspace.is_some();
    let v = call(cli, Request::RecoverPreview { workspace }, QUICK)?;
    let preview: RecoverPreview = parse(&v)?;
    let targets = preview.workspaces;
    if targets.is_empty() {
        if json {
            output::json(&json!({"recovered": [], "failed": []}));
        } else {
            println!("No workspaces to recover.");
        }
        return Ok(0);
    }
    if !force {
        // The question goes where it cannot break a JSON document on stdout.
        let say = |line: String| {
            if json {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        };
        if single {
            let t = &targets[0];
            say(format!(
                "Workspace: {} ({})",
                shown(&t.path),
                snapshots(t.snapshots)
            ));
        } else {
            say(format!("Recovering {} workspace(s):", targets.len()));
            for t in &targets {
                say(format!("  {} ({})", shown(&t.path), snapshots(t.snapshots)));
            }
        }
        say(
            "Each workspace becomes a plain directory again at its path; its snapshots are \
             deleted once the data is back and verified."
                .to_string(),
        );
        if !confirm("Proceed?") {
            if json {
                output::json(&json!({"recovered": [], "failed": [], "cancelled": true}));
            } else {
                println!("Operation cancelled.");
            }
            return Ok(0);
        }
    }
    let mut recovered = Vec::new();
    let mut failed: Vec<(RecoverTarget, Error)> = Vec::new();
    for t in targets {
        let req = Request::Release {
            path: t.path.clone(),
        };
        match call(cli, req, SLOW) {
            Ok(_) => {
                if !json {
                    println!("✓ Workspace recovered: {}", shown(&t.path));
                }
                recovered.push(t);
            }
            Err(e) => {
                if single {
                    return Err(e);
                }
                eprintln!(
                    "Error [{:?}] recovering {}: {}",
                    e.code,
                    shown(&t.path),
                    output::esc(&e.message)
                );
                if let Some(h) = &e.hint {
                    eprintln!("hint: {}", output::esc(h));
                }
                failed.push((t, e));
            }
        }
    }
    let total = recovered.len() + failed.len();
    if json {
        output::json(&json!({
            "recovered": recovered,
            "failed": failed.iter().map(|(t, e)| json!({
                "ws_id": t.ws_id,
                "path": t.path,
                "error": e,
            })).collect::<Vec<_>>(),
        }));
    } else if !single && failed.is_empty() {
        println!("All workspaces recovered.");
    }
    if failed.is_empty() {
        return Ok(0);
    }
    eprintln!(
        "Recover failed for {}/{total} workspace(s); failed workspaces and their snapshots are preserved for retry.",
        failed.len()
    );
    if !json {
        for (t, _) in &failed {
            eprintln!("  {} ({})", shown(&t.path), str_of(&json!(t.ws_id)));
        }
    }
    Ok(1)
}
