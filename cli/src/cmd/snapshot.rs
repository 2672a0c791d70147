//! The snapshot commands: `checkpoint`, `rollback`, `list`, `delete`, `cleanup`, `diff`.

use super::{
    call_as, call_or_print, call_printed, call_raw, confirm, json_mode, str_of, ws_spec, QUICK,
    SLOW,
};
use crate::args::Cli;
use crate::output;
use serde_json::Value;
use std::io::IsTerminal;
use std::time::SystemTime;
use ws_ckpt::api::{ListOutput, Request};
use ws_ckpt::error::{Error, ErrorCode};
use ws_ckpt::ipc::{Printed, RawResult};
use ws_ckpt::ops::ListResult;

/// `checkpoint -w WS [-s ID] [-m MSG] [--metadata JSON] [--pin]`: prints the snapshot ID.
pub(super) fn checkpoint(
    cli: &Cli,
    workspace: &str,
    snapshot: Option<String>,
    message: Option<String>,
    metadata: Option<&str>,
    pin: bool,
) -> Result<i32, Error> {
    let metadata = metadata
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
        snapshot,
        message,
        metadata,
        pin,
    };
    if let Some(v) = call_or_print(cli, req, SLOW)? {
        print_checkpoint(&v);
    }
    Ok(0)
}

/// The table output of a checkpoint's result `v` (before the timing line): the snapshot ID
/// on stdout, notes on stderr. Shared with the front binary ([`crate::front`]).
pub(crate) fn print_checkpoint(v: &Value) {
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

/// `rollback -w WS (-s ID | -n N) [--preview] [--force]`.
pub(super) fn rollback(
    cli: &Cli,
    workspace: &str,
    snapshot: Option<String>,
    ancestors: Option<u32>,
    preview: bool,
    force: bool,
) -> Result<i32, Error> {
    let req = Request::Rollback {
        workspace: ws_spec(workspace)?,
        snapshot,
        ancestors,
        force,
        preview,
    };
    let Some(v) = call_or_print(cli, req, QUICK)? else {
        return Ok(0);
    };
    if preview {
        println!("Rollback preview (no changes applied)");
        println!("Target snapshot: {}", str_of(&v["snapshot"]));
        println!();
        println!("Changes since target snapshot (rollback will revert these):");
        print_diff(&v);
    } else {
        print_rollback(&v);
    }
    Ok(0)
}

/// The table output of a rollback's result `v` (before the timing line). Shared with the
/// front binary ([`crate::front`]).
pub(crate) fn print_rollback(v: &Value) {
    println!(
        "{} rolled back to {}",
        str_of(&v["workspace"]),
        str_of(&v["snapshot"])
    );
}

/// `list [-w WS] [--limit N] [--cursor T]`: in JSON upstream's array of items, or one page.
pub(super) fn list(
    cli: &Cli,
    workspace: Option<&str>,
    limit: Option<u32>,
    cursor: Option<String>,
) -> Result<i32, Error> {
    let workspace = workspace.map(ws_spec).transpose()?;
    let paged = limit.is_some() || cursor.is_some();
    let request = |output| Request::List {
        workspace: workspace.clone(),
        limit,
        cursor: cursor.clone(),
        output,
    };
    if !json_mode(cli) {
        print_list(&call_as(cli, request(None), QUICK)?);
        return Ok(0);
    }
    // The daemon writes the output itself; the CLI only copies it.
    let raw = match call_printed(cli, request(Some(ListOutput::Json)), QUICK) {
        Ok(Printed::Text(text)) => {
            output::write_stdout(&text);
            return Ok(0);
        }
        Ok(Printed::Result(raw)) => raw,
        // A daemon of an earlier version: it knows only the result.
        Err(e) if refuses_output_field(&e) => call_raw(cli, request(None), QUICK)?,
        Err(e) => return Err(e),
    };
    print_list_result(&raw, paged)?;
    Ok(0)
}

/// `list --format json` printed from a list result's text (a daemon that does not write
/// the output itself): straight from the text; a reply of another shape is decoded (and
/// refused with a message when it is no list at all). Shared with the front binary.
pub(crate) fn print_list_result(raw: &RawResult, paged: bool) -> Result<(), Error> {
    match crate::json::list_output(raw.bytes(), paged) {
        Some(listed) => output::write_stdout_with(|w| listed.write_to(w)),
        None => print_list_json(&parse_list(raw.bytes())?, paged),
    }
    Ok(())
}

/// True for a daemon's refusal of a list request's `output` field (it predates it).
pub(crate) fn refuses_output_field(e: &Error) -> bool {
    e.code == ErrorCode::InvalidArgument && e.message.contains("unknown field `output`")
}

/// A list reply decoded.
fn parse_list(text: &[u8]) -> Result<ListResult, Error> {
    serde_json::from_slice(text)
        .map_err(|e| Error::new(ErrorCode::Io, format!("unexpected reply from ws-ckpt: {e}")))
}

/// `list --format json` of a decoded list: upstream's array of items, or one page.
fn print_list_json(listed: &ListResult, paged: bool) {
    if paged {
        output::json(&listed.page_items());
    } else {
        output::json(&listed.items());
    }
}

/// `delete [-w WS] -s ID [--force] [--dry-run]`. A pinned or MISSING snapshot without
/// --force is deleted after a yes on a terminal (as upstream asks); without one it is refused.
pub(super) fn delete(
    cli: &Cli,
    workspace: Option<&str>,
    snapshot: &str,
    force: bool,
    dry_run: bool,
) -> Result<i32, Error> {
    let workspace = workspace.map(ws_spec).transpose()?;
    let req = |force| Request::Delete {
        workspace: workspace.clone(),
        snapshot: snapshot.to_string(),
        force,
        dry_run,
    };
    let v = match call_or_print(cli, req(force), QUICK) {
        Err(e)
            if !force
                && matches!(
                    e.code,
                    ErrorCode::SnapshotPinned | ErrorCode::SnapshotMissing
                )
                && std::io::stdin().is_terminal()
                && std::io::stderr().is_terminal() =>
        {
            eprintln!("⚠ {}", output::esc(&e.message));
            if !confirm("Delete it anyway?") {
                eprintln!("Operation cancelled: {snapshot} was not deleted.");
                return Ok(0);
            }
            call_or_print(cli, req(true), QUICK)?
        }
        other => other?,
    };
    if let Some(v) = v {
        let verb = if dry_run { "would delete" } else { "deleted" };
        for id in v["deleted"].as_array().into_iter().flatten() {
            println!("{verb} {} from {}", str_of(id), str_of(&v["ws_id"]));
        }
    }
    Ok(0)
}

/// `cleanup -w WS [--keep N|AGE] [--dry-run]`.
pub(super) fn cleanup(
    cli: &Cli,
    workspace: &str,
    keep: Option<String>,
    dry_run: bool,
) -> Result<i32, Error> {
    let req = Request::Cleanup {
        workspace: ws_spec(workspace)?,
        keep,
        dry_run,
    };
    if let Some(v) = call_or_print(cli, req, SLOW)? {
        let deleted = v["deleted"].as_array().cloned().unwrap_or_default();
        if deleted.is_empty() {
            println!(
                "nothing to delete in {} (keep {})",
                str_of(&v["ws_id"]),
                str_of(&v["keep"])
            );
        }
        let verb = if dry_run { "would delete" } else { "deleted" };
        for d in &deleted {
            println!("{verb} {} ({})", str_of(&d["id"]), str_of(&d["reason"]));
        }
        if !dry_run {
            if let Some(n) = v["freed_bytes"].as_u64() {
                println!("freed {}", ws_ckpt::plan::human_bytes(n));
            }
        }
    }
    Ok(0)
}

/// `diff -w WS -f FROM [-t TO]`.
pub(super) fn diff(
    cli: &Cli,
    workspace: &str,
    from: &str,
    to: Option<String>,
) -> Result<i32, Error> {
    let req = Request::Diff {
        workspace: ws_spec(workspace)?,
        from: from.to_string(),
        to,
    };
    if let Some(v) = call_or_print(cli, req, SLOW)? {
        print_diff(&v)
    }
    Ok(0)
}

fn print_list(v: &ListResult) {
    let now = SystemTime::now();
    if v.workspaces
        .iter()
        .all(|w| w.snapshots.is_empty() && w.problem.is_none())
    {
        println!("No snapshots found.");
    }
    for w in &v.workspaces {
        if w.snapshots.is_empty() && w.problem.is_none() {
            continue;
        }
        println!("{} {}", w.ws_id, output::esc(&w.path.display().to_string()));
        if let Some(p) = &w.problem {
            println!("  problem: {}", output::esc(p));
        }
        if w.snapshots.is_empty() {
            println!("  (no snapshots)");
            continue;
        }
        let rows: Vec<Vec<String>> = w
            .snapshots
            .iter()
            .map(|s| {
                let mut flags = Vec::new();
                if s.head {
                    flags.push("head");
                }
                if s.pinned {
                    flags.push("pinned");
                }
                if s.missing {
                    flags.push("MISSING");
                }
                let t = s.created_at.time();
                vec![
                    format!("  {}", s.id),
                    t.map(ws_ckpt::time::format_local)
                        .unwrap_or_else(|| s.created_at.as_str().to_string()),
                    t.map(|t| ws_ckpt::time::age(now, t)).unwrap_or_default(),
                    flags.join(","),
                    s.message.clone().unwrap_or_default(),
                    s.snapshot_path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                ]
            })
            .collect();
        output::table(
            &["  ID", "CREATED", "AGE", "FLAGS", "MESSAGE", "PATH"],
            &rows,
        );
    }
    if let Some(Some(c)) = &v.next_cursor {
        println!("more: repeat with --cursor {c}");
    }
}

fn print_diff(v: &Value) {
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        println!("No differences found.");
        return;
    }
    for e in &entries {
        let path = str_of(&e["path"]);
        match e["change"].as_str().unwrap_or("") {
            "added" => println!("+  {path}"),
            "deleted" => println!("-  {path}"),
            "modified" => println!("M  {path}"),
            "renamed" => println!("R  {} → {path}", str_of(&e["from"])),
            other => println!("?  {other} {path}"),
        }
    }
    println!();
    println!("{} change(s)", entries.len());
}
