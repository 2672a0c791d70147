//! `ws-ckpt-full`: every `ws-ckpt` command, the daemon and in-process work (see
//! `ws_ckpt_cli::full_main`). `ws-ckpt` runs it for everything it does not serve itself.

fn main() {
    ws_ckpt_cli::full_main()
}
