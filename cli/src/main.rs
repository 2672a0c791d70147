//! `ws-ckpt`: the command-line front end. It parses arguments, calls the engine in
//! `ws_ckpt` (the reconciler library) and prints tables or JSON. No behaviour lives here.

mod args;
mod cmd;
mod gen;
mod json;
mod output;

use clap::Parser;

fn main() {
    // A tree worker started by the daemon (hidden argument) runs its job and exits here.
    ws_ckpt::tree::worker::main_if_worker();
    let cli = args::Cli::parse();
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
    let filter = tracing_subscriber::EnvFilter::try_from_env("WS_CKPT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let code = cmd::run(cli);
    std::process::exit(code);
}
