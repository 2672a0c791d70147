//! `ws-ckpt`: the front binary (see `ws_ckpt_cli::front`). A plain `checkpoint` is served
//! through the daemon's socket; every other command runs in `ws-ckpt-full`.

fn main() {
    ws_ckpt_cli::front::main()
}
