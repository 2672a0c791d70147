//! One function per subcommand (one file per group): each builds a [`Request`], hands it to the
//! library's [`Client`] (the daemon when one answers, else in-process as root), and prints the
//! JSON result as a table or as is. The output is the same either way because both routes
//! produce the same JSON text; in JSON mode it is re-printed from that text without decoding
//! it ([`crate::json`]). `WS_CKPT_SOCKET` (upstream's variable) pins the daemon's
//! socket: then nothing runs in-process.
//!
//! After a successful change in table mode, the last stdout line is upstream's
//! `Completed in <secs>s`, which its OpenClaw plugin appends to its replies.

mod config;
mod daemon;
mod plan;
mod recover;
mod snapshot;
mod status;
mod workspace;

pub(crate) use snapshot::{
    print_checkpoint, print_list_result, print_rollback, refuses_output_field,
};

use crate::args::{Cli, Command, ConfigCommand, Format};
use crate::output;
use serde_json::Value;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;
use ws_ckpt::api::Request;
use ws_ckpt::client::Client;
use ws_ckpt::error::{Error, ErrorCode};
use ws_ckpt::ipc::{Printed, RawResult};
use ws_ckpt::paths::absolute_user_path;
use ws_ckpt::tree::Progress;

/// Socket timeout for quick requests and for ones that may copy whole trees.
pub(crate) const QUICK: Duration = Duration::from_secs(300);
pub(crate) const SLOW: Duration = Duration::from_secs(6 * 3600);

/// Run the parsed command; returns the process exit code.
pub(crate) fn run(cli: Cli) -> i32 {
    let json = cli.format == Format::Json;
    let started = std::time::Instant::now();
    match dispatch(&cli) {
        Ok(code) => {
            if code == 0 && !json && prints_timing(&cli.command) {
                output::completed(started);
            }
            code
        }
        Err(e) => {
            output::error(&e, json);
            1
        }
    }
}

/// The commands after which upstream prints its timing line and its plugins look for it:
/// those that change a workspace.
fn prints_timing(c: &Command) -> bool {
    matches!(
        c,
        Command::Checkpoint { .. }
            | Command::Rollback { .. }
            | Command::Delete { .. }
            | Command::Cleanup { .. }
            | Command::Init { .. }
            | Command::Release { .. }
    )
}

fn dispatch(cli: &Cli) -> Result<i32, Error> {
    match &cli.command {
        Command::Plan {
            detailed_exitcode,
            prune,
        } => plan::plan(cli, *detailed_exitcode, *prune),
        Command::Apply { check, diff, prune } => plan::apply(cli, *check, *diff, *prune),
        Command::Reload => plan::reload(cli),
        Command::Status {
            workspace,
            detailed_exitcode,
        } => status::status(cli, workspace.as_deref(), *detailed_exitcode),
        Command::Init {
            path,
            workspace,
            force,
        } => {
            let dir = path
                .as_deref()
                .or(workspace.as_deref())
                .ok_or_else(|| Error::new(ErrorCode::InvalidArgument, "init needs a directory"))?;
            workspace::init(cli, dir, *force)
        }
        Command::Release { path } => workspace::release(cli, path),
        Command::Recover {
            workspace,
            all,
            force,
        } => recover::recover(cli, workspace.as_deref(), *all, *force),
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
            num_ancestors,
            preview,
            force,
        } => snapshot::rollback(
            cli,
            workspace,
            snapshot.clone(),
            *num_ancestors,
            *preview,
            *force,
        ),
        Command::List {
            workspace,
            limit,
            cursor,
        } => snapshot::list(cli, workspace.as_deref(), *limit, cursor.clone()),
        Command::Delete {
            workspace,
            snapshot,
            force,
            dry_run,
        } => snapshot::delete(cli, workspace.as_deref(), snapshot, *force, *dry_run),
        Command::Cleanup {
            workspace,
            keep,
            dry_run,
        } => snapshot::cleanup(cli, workspace, keep.clone(), *dry_run),
        Command::Diff {
            workspace,
            from,
            to,
        } => snapshot::diff(cli, workspace, from, to.clone()),
        Command::Daemon {
            check: false,
            mount_path,
            socket,
            log_level,
        } => {
            let overrides = ws_ckpt::config::Overrides {
                mount: mount_path.as_deref().map(abs).transpose()?,
                socket: socket.as_deref().map(abs).transpose()?,
                log_level: log_level.clone(),
            };
            Ok(ws_ckpt::daemon::run_with(&cli.config, overrides))
        }
        Command::Daemon { check: true, .. } => Ok(daemon::check(cli)),
        Command::Config {
            command: Some(ConfigCommand::Show),
            ..
        } => config::show(cli),
        Command::Config {
            command: Some(ConfigCommand::Validate { path }),
            ..
        } => config::validate(cli, path.as_deref()),
        Command::Config {
            command: None,
            args,
        } => config::upstream(cli, args),
        Command::Completions { shell } => crate::gen::completions(*shell),
        Command::Man { page, out_dir } => crate::gen::man(page.as_deref(), out_dir.as_deref()),
    }
}

/// Send `req` (to the daemon, or in-process as root), with copy progress on a terminal.
fn call(cli: &Cli, req: Request, timeout: Duration) -> Result<Value, Error> {
    let mut progress = progress_printer();
    client(cli).call(req, timeout, &mut progress)
}

/// [`call`] for a command whose JSON output is its result unchanged: in JSON mode the result
/// is printed from its text as it came (not decoded, see [`crate::json`]) and `None` is
/// returned; in table mode its value is returned for the table.
fn call_or_print(cli: &Cli, req: Request, timeout: Duration) -> Result<Option<Value>, Error> {
    let mut progress = progress_printer();
    let client = client(cli);
    if !json_mode(cli) {
        return client.call(req, timeout, &mut progress).map(Some);
    }
    let raw = client.call_raw(req, timeout, &mut progress)?;
    output::json_text(raw.bytes())?;
    Ok(None)
}

/// [`call`], with the result as the JSON text it came as.
fn call_raw(cli: &Cli, req: Request, timeout: Duration) -> Result<RawResult, Error> {
    let mut progress = progress_printer();
    client(cli).call_raw(req, timeout, &mut progress)
}

/// [`call`] of a request asking for its printed form (see `Client::call_printed`).
fn call_printed(cli: &Cli, req: Request, timeout: Duration) -> Result<Printed, Error> {
    let mut progress = progress_printer();
    client(cli).call_printed(req, timeout, &mut progress)
}

/// [`call`], with the result decoded straight into `T`.
fn call_as<T: serde::de::DeserializeOwned>(
    cli: &Cli,
    req: Request,
    timeout: Duration,
) -> Result<T, Error> {
    let mut progress = progress_printer();
    client(cli).call_as(req, timeout, &mut progress)
}

/// The client of this command: `WS_CKPT_SOCKET`, when set, is the only daemon it may use.
fn client(cli: &Cli) -> Client {
    Client::new(&cli.config).with_socket(explicit_socket())
}

/// The socket `WS_CKPT_SOCKET` names, when it is set and not empty.
pub(crate) fn explicit_socket() -> Option<PathBuf> {
    std::env::var_os("WS_CKPT_SOCKET")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}

/// Ask `question` on stderr and read one answer line from stdin: true for `y`/`Y`/`yes`.
fn confirm(question: &str) -> bool {
    use std::io::{BufRead, Write};
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes")
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
pub(crate) fn ws_spec(s: &str) -> Result<String, Error> {
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
    serde_json::from_value(v.clone()).map_err(|e| unexpected_reply(&e))
}

/// The error of a result that does not decode as its command expects.
pub(crate) fn unexpected_reply(e: &serde_json::Error) -> Error {
    Error::new(ErrorCode::Io, format!("unexpected reply from ws-ckpt: {e}"))
}

/// A JSON value as text for a terminal (control characters escaped: [`output::esc`]).
fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => crate::output::esc(s).into_owned(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
