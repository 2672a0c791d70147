//! `config show` and `config validate`: the effective merged config, and whether a file and its
//! drop-ins are valid; and upstream's `config` (overview, `-g`, `-w WS`, with its change
//! flags), which the library answers with upstream's documents.

use super::{call, json_mode, str_of, ws_spec, QUICK};
use crate::args::{Cli, ConfigArgs};
use crate::output;
use serde_json::Value;
use std::path::Path;
use ws_ckpt::api::{ConfigChange, Request};
use ws_ckpt::config::Config;
use ws_ckpt::error::Error;

/// `config show`: every setting, defaults filled in (TOML, or JSON with --format json).
pub(super) fn show(cli: &Cli) -> Result<i32, Error> {
    let c = Config::load(&cli.config)?;
    if json_mode(cli) {
        output::json(&c.to_json())
    } else {
        print!("{}", c.to_canonical_toml())
    }
    Ok(0)
}

/// `config validate [PATH]`: exit 1 with file:line:column on error.
pub(super) fn validate(cli: &Cli, path: Option<&Path>) -> Result<i32, Error> {
    let p = path.unwrap_or(&cli.config);
    let c = Config::load(p)?;
    if json_mode(cli) {
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

/// Upstream's `config [-g | -w WS] [change flags]`: one request; the daemon (or root
/// in-process) edits the file that sets each value and reloads, then answers with the scope's
/// document, printed as JSON or as upstream's text.
pub(super) fn upstream(cli: &Cli, a: &ConfigArgs) -> Result<i32, Error> {
    let change = ConfigChange {
        auto_cleanup: match (a.enable_auto_cleanup, a.disable_auto_cleanup) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        keep: a.auto_cleanup_keep.clone(),
        interval_secs: a.auto_cleanup_interval,
        health_check_secs: a.health_check_interval,
        img_size_gb: a.img_size,
        img_max_percent: a.img_max_percent,
        reset: a.reset,
    };
    let req = Request::Config {
        workspace: a.workspace.as_deref().map(ws_spec).transpose()?,
        global: a.global,
        change,
    };
    let v = call(cli, req, QUICK)?;
    if json_mode(cli) {
        output::json(&v);
        return Ok(0);
    }
    match v["schema"].as_str() {
        Some("ws-ckpt-policy/v1") => print_policy(&v),
        Some("ws-ckpt-config/v1") => {
            println!("ws-ckpt global configuration");
            print_settings(&v, &v["auto_cleanup_keep"], "img_size_gb");
        }
        _ => {
            println!("ws-ckpt configuration");
            let g = &v["global"];
            let mut flat = g.clone();
            flat["config_file"] = v["config_file"].clone();
            print_settings(&flat, &g["auto_cleanup_keep"], "img_size");
            let w = &v["workspaces"];
            println!();
            println!("Workspaces");
            println!("  Total:                   {}", str_of(&w["total"]));
            println!("  With local override:     {}", str_of(&w["with_override"]));
            println!(
                "  Inherit global:          {}",
                str_of(&w["inherit_global"])
            );
        }
    }
    Ok(0)
}

/// `count` → `20`, `age` → `30d`; a bare number or string as is.
fn keep_text(k: &Value) -> String {
    match k["mode"].as_str() {
        Some("count") => str_of(&k["count"]),
        Some("age") => str_of(&k["raw"]),
        _ => str_of(k),
    }
}

fn secs_text(v: &Value) -> String {
    let s = v.as_u64().unwrap_or(0);
    format!("{s}s ({}m)", s / 60)
}

/// The settings lines of upstream's `config` view (0.3's plugins read `Auto-cleanup:` and
/// `Auto-cleanup keep:` with regular expressions).
fn print_settings(v: &Value, keep: &Value, img_key: &str) {
    let on = if v["auto_cleanup"] == true {
        "enabled"
    } else {
        "disabled"
    };
    println!("  Config file:             {}", str_of(&v["config_file"]));
    println!("  Mount path:              {}", str_of(&v["mount_path"]));
    println!("  Socket path:             {}", str_of(&v["socket_path"]));
    println!("  Auto-cleanup:            {on}");
    println!("  Auto-cleanup keep:       {}", keep_text(keep));
    println!(
        "  Auto-cleanup interval:   {}",
        secs_text(&v["auto_cleanup_interval_secs"])
    );
    println!(
        "  Health-check interval:   {}",
        secs_text(&v["health_check_interval_secs"])
    );
    println!("  Image size:              {} GB", str_of(&v[img_key]));
    println!(
        "  Image max percent:       {}%",
        str_of(&v["img_max_percent"])
    );
}

/// `config -w WS` as text: each setting's effective, own and global value and its source.
fn print_policy(v: &Value) {
    println!(
        "Workspace policy: {} ({})",
        str_of(&v["ws_id"]),
        str_of(&v["workspace"])
    );
    let local = |x: &Value, f: &dyn Fn(&Value) -> String| {
        if x.is_null() {
            "(inherit)".to_string()
        } else {
            f(x)
        }
    };
    let rows = vec![
        vec![
            "  auto_cleanup".to_string(),
            format!("effective={}", str_of(&v["effective"]["auto_cleanup"])),
            format!(
                "local={}",
                local(&v["local"]["auto_cleanup"], &|x: &Value| str_of(x))
            ),
            format!("global={}", str_of(&v["global"]["auto_cleanup"])),
            format!("from {}", str_of(&v["sources"]["auto_cleanup"])),
        ],
        vec![
            "  auto_cleanup_keep".to_string(),
            format!(
                "effective={}",
                keep_text(&v["effective"]["auto_cleanup_keep"])
            ),
            format!(
                "local={}",
                local(&v["local"]["auto_cleanup_keep"], &keep_text)
            ),
            format!("global={}", keep_text(&v["global"]["auto_cleanup_keep"])),
            format!("from {}", str_of(&v["sources"]["auto_cleanup_keep"])),
        ],
    ];
    for r in rows {
        println!("{}", r.join("  "));
    }
    if v["effective"]["is_disabled"] == true {
        println!("  automatic cleanup is off for this workspace");
    }
}
