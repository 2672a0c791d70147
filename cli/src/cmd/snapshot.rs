//! The snapshot commands: `checkpoint`, `rollback`, `list`, `delete`, `cleanup`, `diff`.

use super::{call, json_mode, str_of, ws_spec, QUICK, SLOW};
use crate::args::Cli;
use crate::output;
use serde_json::Value;
use ws_ckpt::api::Request;
use ws_ckpt::error::{Error, ErrorCode};

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
    let v = call(cli, req, SLOW)?;
    if json_mode(cli) {
        output::json(&v);
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

/// `rollback -w WS -s ID [--force]`.
pub(super) fn rollback(
    cli: &Cli,
    workspace: &str,
    snapshot: &str,
    force: bool,
) -> Result<i32, Error> {
    let req = Request::Rollback {
        workspace: ws_spec(workspace)?,
        snapshot: snapshot.to_string(),
        force,
    };
    let v = call(cli, req, QUICK)?;
    if json_mode(cli) {
        output::json(&v);
    } else {
        println!(
            "{} rolled back to {}",
            str_of(&v["workspace"]),
            str_of(&v["snapshot"])
        );
    }
    Ok(0)
}

/// `list [-w WS]`.
pub(super) fn list(cli: &Cli, workspace: Option<&str>) -> Result<i32, Error> {
    let workspace = workspace.map(ws_spec).transpose()?;
    let v = call(cli, Request::List { workspace }, QUICK)?;
    if json_mode(cli) {
        output::json(&v)
    } else {
        print_list(&v)
    }
    Ok(0)
}

/// `delete [-w WS] -s ID [--force]`.
pub(super) fn delete(
    cli: &Cli,
    workspace: Option<&str>,
    snapshot: &str,
    force: bool,
) -> Result<i32, Error> {
    let workspace = workspace.map(ws_spec).transpose()?;
    let req = Request::Delete {
        workspace,
        snapshot: snapshot.to_string(),
        force,
    };
    let v = call(cli, req, QUICK)?;
    if json_mode(cli) {
        output::json(&v);
    } else {
        for id in v["deleted"].as_array().into_iter().flatten() {
            println!("deleted {} from {}", str_of(id), str_of(&v["ws_id"]));
        }
    }
    Ok(0)
}

/// `cleanup -w WS [--keep N|AGE]`.
pub(super) fn cleanup(cli: &Cli, workspace: &str, keep: Option<String>) -> Result<i32, Error> {
    let req = Request::Cleanup {
        workspace: ws_spec(workspace)?,
        keep,
    };
    let v = call(cli, req, SLOW)?;
    if json_mode(cli) {
        output::json(&v);
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
    let v = call(cli, req, SLOW)?;
    if json_mode(cli) {
        output::json(&v)
    } else {
        print_diff(&v)
    }
    Ok(0)
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
