//! The command line: it parses arguments, calls the engine in `ws_ckpt` (the reconciler
//! library) and prints tables or JSON. No behaviour lives here.
//!
//! Two binaries run it. `ws-ckpt` ([`front`]) serves the plain `checkpoint`, `rollback` and
//! JSON `list` agents send around tool calls straight through the daemon's socket, and hands
//! every other command line to `ws-ckpt-full` ([`full_main`]: clap, every command, the daemon,
//! in-process work) with `execve`. The front links none of the engine, so starting it costs
//! what starting a small program costs (see [`front`]).

mod args;
mod cmd;
mod fast;
pub mod front;
mod gen;
mod json;
mod output;

use clap::Parser;

/// `ws-ckpt-full`: every command, parsed by clap (the front's plain forms without building
/// its command tree, see `fast`), then run; exits with the command's code.
pub fn full_main() -> ! {
    // A tree worker started by the daemon (hidden argument) runs its job and exits here.
    ws_ckpt::tree::worker::main_if_worker();
    // The agents' plain forms skip building clap's command tree (see `fast`).
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = fast::parse(&argv).unwrap_or_else(|| args::Cli::parse_from(argv));
    // WS_CKPT_LOG wins; the daemon otherwise logs at its config's log_level, commands at warn.
    let default_level = match &cli.command {
        args::Command::Daemon {
            log_level: Some(l), ..
        } => l.clone(),
        args::Command::Daemon { .. } => ws_ckpt::config::Config::load(&cli.config)
            .map(|c| c.daemon.log_level)
            .unwrap_or_else(|_| "info".to_string()),
        _ => "warn".to_string(),
    };
    init_logging(&default_level);
    let code = cmd::run(cli);
    std::process::exit(code);
}

/// Log to stderr at `WS_CKPT_LOG`, else at `default_level`. A bare level (the usual case) is
/// a plain level filter: a directive filter (`ws_ckpt=debug,…`) is parsed only when one is
/// given, since that parsing costs every command ~0.05 ms at start.
fn init_logging(default_level: &str) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let from_env = std::env::var("WS_CKPT_LOG").ok();
    let directives = from_env
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or(default_level);
    if let Ok(level) = directives
        .trim()
        .parse::<tracing_subscriber::filter::LevelFilter>()
    {
        return builder.with_max_level(level).init();
    }
    // As before: a WS_CKPT_LOG that does not parse falls back to the default level.
    let filter = tracing_subscriber::EnvFilter::try_new(directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    builder.with_env_filter(filter).init();
}
