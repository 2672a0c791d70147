//! `ws-ckpt`: the command-line front end. It parses arguments, calls the engine in
//! `ws_ckpt` (the reconciler library) and prints tables or JSON. No behaviour lives here.

mod args;
mod cmds;
mod output;

use clap::Parser;

fn main() {
    let cli = args::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("WS_CKPT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let code = cmds::run(cli);
    std::process::exit(code);
}
