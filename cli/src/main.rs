//! `ws-ckpt`: the front binary (see `ws_ckpt_cli::front`). A plain `checkpoint`, `rollback`
//! or JSON `list` is served through the daemon's socket; every other command runs in
//! `ws-ckpt-full`.

fn main() {
    ws_ckpt_cli::front::main()
}
