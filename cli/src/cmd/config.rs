//! `config show` and `config validate`: the effective merged config, and whether a file and its
//! drop-ins are valid.

use super::json_mode;
use crate::args::Cli;
use crate::output;
use std::path::Path;
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
