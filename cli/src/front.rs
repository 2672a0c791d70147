//! The `ws-ckpt` binary: a front that serves, over the daemon's socket, the commands agents
//! send around risky tool calls — `ws-ckpt [--config P] [--format F] checkpoint -w WS [-s ID]
//! [-m MSG] [--metadata JSON] [--pin]`, `rollback -w WS (-s ID | -n N) [--force]` and
//! `--format json list [-w WS]` (all read by [`crate::fast`]) — and runs `ws-ckpt-full`,
//! installed next to it, for everything else, with `execve`: same process, same arguments
//! (the first one too), same environment and descriptors.
//!
//! Why two binaries: starting the full binary (9 MB, 8 300 relocations, clap, the engine)
//! costs about 0.45 ms more than starting a program that only talks to the socket, a sixth of
//! a whole checkpoint on a VM (issue 9: end to end within 1.2 × a spawned raw snapshot). This
//! front (1.1 MB, 1 200 relocations) links the request types, the socket exchange and the
//! output of these three commands, and nothing of clap or the engine.
//!
//! The front serves a command only when the daemon answers it; in every other case it passes
//! the command line on unchanged before anything was sent, and `ws-ckpt-full` does what it
//! always does (the hand-off with a starting daemon, in-process work as root, clap's errors
//! and help):
//! - the words are not a plain checkpoint, rollback or JSON list, or `--metadata` is not
//!   JSON;
//! - the main config file does not parse (or names no plain absolute `runtime_dir`) and a
//!   drop-in mentions `runtime_dir`;
//! - nothing answers on the socket the main file names, or the daemon did not take the
//!   request: it is stopping, it serves another config file (the request names the main
//!   file's identity, so a drop-in that moved `runtime_dir` is never missed, and the
//!   drop-ins are not read: one per workspace), or it predates that check.
//!
//! A daemon's answer is printed exactly as `ws-ckpt-full` prints it: the JSON result, or the
//! table lines and upstream's timing line, or the list the daemon wrote; an error on stderr
//! (and as JSON on stdout in JSON mode), exit code 1.

use crate::cmd::QUICK;
use crate::fast::{self, Fast, FastCommand};
use crate::output;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Instant;
use ws_ckpt::api::{ListOutput, Request};
use ws_ckpt::ipc::{self, Exchange, Printed};

/// The name of the binary every other command runs in.
pub const FULL_BINARY: &str = "ws-ckpt-full";

/// `ws-ckpt`: serve a plain checkpoint, rollback or JSON list through the daemon, else run
/// `ws-ckpt-full`.
pub fn main() -> ! {
    let started = Instant::now();
    let argv: Vec<OsString> = std::env::args_os().collect();
    if let Some(code) = fast::parse_fast(&argv).and_then(|f| serve(&f, started)) {
        std::process::exit(code);
    }
    exec_full(&argv)
}

/// The command `f` through the daemon: its exit code once the daemon answered, `None`
/// (nothing sent, or not taken) to leave the command to `ws-ckpt-full`.
fn serve(f: &Fast, started: Instant) -> Option<i32> {
    let to = daemon_for(&f.config)?;
    match &f.command {
        FastCommand::Checkpoint {
            workspace,
            snapshot,
            message,
            metadata,
            pin,
        } => {
            let metadata = match metadata {
                Some(m) => Some(serde_json::from_str(m).ok()?),
                None => None,
            };
            let req = Request::Checkpoint {
                workspace: crate::cmd::ws_spec(workspace).ok()?,
                snapshot: snapshot.clone(),
                message: message.clone(),
                metadata,
                pin: *pin,
            };
            let print = crate::cmd::print_checkpoint;
            change(&to, &req, print, f.json, started, crate::cmd::SLOW)
        }
        FastCommand::Rollback {
            workspace,
            snapshot,
            ancestors,
            force,
        } => {
            let req = Request::Rollback {
                workspace: crate::cmd::ws_spec(workspace).ok()?,
                snapshot: snapshot.clone(),
                ancestors: *ancestors,
                force: *force,
                preview: false,
            };
            change(
                &to,
                &req,
                crate::cmd::print_rollback,
                f.json,
                started,
                QUICK,
            )
        }
        // The table is printed from the decoded result: that stays in ws-ckpt-full.
        FastCommand::List { .. } if !f.json => None,
        FastCommand::List { workspace } => {
            let workspace = match workspace {
                Some(w) => Some(crate::cmd::ws_spec(w).ok()?),
                None => None,
            };
            list_json(&to, workspace)
        }
    }
}

/// Where the front sends a request: the socket, and the identity of the config file it
/// found it in without reading the drop-ins (`None`: named by `WS_CKPT_SOCKET`, or found
/// with them).
struct Daemon {
    socket: PathBuf,
    config: Option<String>,
}

/// The daemon of the config at `config`: `WS_CKPT_SOCKET`; else the socket the main file
/// names, sent with the file's identity (a daemon serving another config there does not take
/// the request, see `ws_ckpt::client::main_file_socket`), which spares reading one drop-in
/// per workspace; else the one the main file and the drop-ins name.
fn daemon_for(config: &Path) -> Option<Daemon> {
    if let Some(socket) = crate::cmd::explicit_socket() {
        return Some(Daemon {
            socket,
            config: None,
        });
    }
    if let Some((socket, id)) = ws_ckpt::client::main_file_socket(config) {
        return Some(Daemon {
            socket,
            config: Some(id),
        });
    }
    Some(Daemon {
        socket: ws_ckpt::client::socket_without_loading(config)?,
        config: None,
    })
}

/// A checkpoint or rollback request to `to` (each read and write bounded by `timeout`),
/// printed as `ws-ckpt-full` prints it: the JSON result, or the table lines (`print`) and
/// upstream's timing line.
fn change(
    to: &Daemon,
    req: &Request,
    print: fn(&serde_json::Value),
    json: bool,
    started: Instant,
    timeout: std::time::Duration,
) -> Option<i32> {
    let stream = ipc::connect(&to.socket).ok()??;
    let raw = match ipc::exchange_raw_for(stream, &to.socket, req, to.config.as_deref(), timeout) {
        Exchange::Answered(Ok(raw)) => raw,
        Exchange::Answered(Err(e)) => {
            output::error(&e, json);
            return Some(1);
        }
        Exchange::NotTaken(_) => return None,
    };
    let printed = if json {
        output::json_text(raw.bytes())
    } else {
        serde_json::from_slice(raw.bytes())
            .map(|v| print(&v))
            .map_err(|e| crate::cmd::unexpected_reply(&e))
    };
    match printed {
        Ok(()) => {
            if !json {
                output::completed(started);
            }
            Some(0)
        }
        Err(e) => {
            output::error(&e, json);
            Some(1)
        }
    }
}

/// `list --format json` on `socket`: the daemon writes the output, the front copies it. A
/// daemon of an earlier version, which refuses the request's `output` field, is asked again
/// for the result, printed as `ws-ckpt-full` prints it.
fn list_json(to: &Daemon, workspace: Option<String>) -> Option<i32> {
    let (socket, config) = (to.socket.as_path(), to.config.as_deref());
    let request = |output| Request::List {
        workspace: workspace.clone(),
        limit: None,
        cursor: None,
        output,
    };
    let stream = ipc::connect(socket).ok()??;
    let printed = request(Some(ListOutput::Json));
    let answer = match ipc::exchange_printed_for(stream, socket, &printed, config, QUICK) {
        Exchange::Answered(Ok(Printed::Text(text))) => {
            output::write_stdout(&text);
            return Some(0);
        }
        Exchange::Answered(Ok(Printed::Result(raw))) => Ok(raw),
        Exchange::Answered(Err(e)) if crate::cmd::refuses_output_field(&e) => {
            let stream = ipc::connect(socket).ok()??;
            match ipc::exchange_raw_for(stream, socket, &request(None), config, QUICK) {
                Exchange::Answered(answer) => answer,
                Exchange::NotTaken(_) => return None,
            }
        }
        Exchange::Answered(Err(e)) => Err(e),
        Exchange::NotTaken(_) => return None,
    };
    match answer.and_then(|raw| crate::cmd::print_list_result(&raw, false)) {
        Ok(()) => Some(0),
        Err(e) => {
            output::error(&e, true);
            Some(1)
        }
    }
}

/// Replace this process with `ws-ckpt-full` and the same arguments; when that fails, say
/// which file is missing and exit 1.
fn exec_full(argv: &[OsString]) -> ! {
    let full = full_binary();
    let mut cmd = std::process::Command::new(&full);
    cmd.arg0(argv.first().map_or("ws-ckpt".as_ref(), OsString::as_os_str))
        .args(argv.iter().skip(1));
    let e = cmd.exec();
    eprintln!("error: cannot run {}: {e}", full.display());
    eprintln!(
        "hint: ws-ckpt runs every command but a plain checkpoint, rollback or JSON list through {FULL_BINARY}, installed in the same directory; reinstall ws-ckpt"
    );
    std::process::exit(1)
}

/// `ws-ckpt-full` in the directory of the running binary (symlinks resolved).
fn full_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/ws-ckpt"));
    exe.parent()
        .unwrap_or(Path::new("/usr/bin"))
        .join(FULL_BINARY)
}
