//! One function per subcommand (one file per group): each builds a [`Request`], hands it to the
//! library's [`Client`] (the daemon when one answers, else in-process as root), and prints the
//! JSON result as a table or as is. The output is the same either way because both routes
//! produce the same JSON value.

mod config;
mod daemon;
mod plan;
mod snapshot;
mod status;
mod workspace;

use crate::args::{Cli, Command, ConfigCommand, Format};
use crate::output;
use serde_json::Value;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;
use ws_ckpt::api::Request;
use ws_ckpt::client::Client;
use ws_ckpt::copy::Progress;
use ws_ckpt::error::{Error, ErrorCode};
use ws_ckpt::paths::absolute_user_path;

/// Socket timeout for quick requests and for ones that may copy whole trees.
const QUICK: Duration = Duration::from_secs(300);
const SLOW: Duration = Duration::from_secs(6 * 3600);

/// Run the parsed command; returns the process exit code.
pub(crate) fn run(cli: Cli) -> i32 {
    let json = cli.format == Format::Json;
    match dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            output::error(&e, json);
            1
        }
    }
}

fn dispatch(cli: &Cli) -> Result<i32, Error> {
    match &cli.command {
        Command::Plan {
            detailed_exitcode,
            prune,
        } => plan::plan(cli, *detailed_exitcode, *prune),
        Command::Apply { check, diff, prune } => plan::apply(cli, *check, *diff, *prune),
        Command::Reload => plan::reload(cli),
        Command::Status { workspace } => status::status(cli, workspace.as_deref()),
        Command::Init { path } => workspace::init(cli, path),
        Command::Release { path } => workspace::release(cli, path),
        Command::Checkpoint {
            workspace,
            snapshot,
            message,
            metadata,
            pin,
        } => snapshot::checkpoint(
            cli,
            workspace,
            snapshot.clone(),
            message.clone(),
            metadata.as_deref(),
            *pin,
        ),
        Command::Rollback {
            workspace,
            snapshot,
            force,
        } => snapshot::rollback(cli, workspace, snapshot, *force),
        Command::List { workspace } => snapshot::list(cli, workspace.as_deref()),
        Command::Delete {
            workspace,
            snapshot,
            force,
        } => snapshot::delete(cli, workspace.as_deref(), snapshot, *force),
        Command::Cleanup { workspace, keep } => snapshot::cleanup(cli, workspace, keep.clone()),
        Command::Diff {
            workspace,
            from,
            to,
        } => snapshot::diff(cli, workspace, from, to.clone()),
        Command::Daemon { check: false } => Ok(ws_ckpt::daemon::run(&cli.config)),
        Command::Daemon { check: true } => Ok(daemon::check(cli)),
        Command::Config(ConfigCommand::Show) => config::show(cli),
        Command::Config(ConfigCommand::Validate { path }) => config::validate(cli, path.as_deref()),
        Command::Completions { shell } => crate::gen::completions(*shell),
        Command::Man { page, out_dir } => crate::gen::man(page.as_deref(), out_dir.as_deref()),
    }
}

/// Send `req` (to the daemon, or in-process as root), with copy progress on a terminal.
fn call(cli: &Cli, req: Request, timeout: Duration) -> Result<Value, Error> {
    let mut progress = progress_printer();
    Client::new(&cli.config).call(req, timeout, &mut progress)
}

fn json_mode(cli: &Cli) -> bool {
    cli.format == Format::Json
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

fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, Error> {
    serde_json::from_value(v.clone())
        .map_err(|e| Error::new(ErrorCode::Io, format!("unexpected reply from ws-ckpt: {e}")))
}

/// A JSON value as text for a terminal (control characters escaped: [`output::esc`]).
fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => crate::output::esc(s).into_owned(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
