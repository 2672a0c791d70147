//! `init` and `release`: a directory becomes a workspace, and back.

use super::{abs, call, json_mode, parse, SLOW};
use crate::args::Cli;
use crate::output;
use std::path::Path;
use ws_ckpt::api::Request;
use ws_ckpt::engine::{InitReport, ReleaseReport};
use ws_ckpt::error::Error;

/// `init PATH` / `init -w PATH` [`--force`].
pub(super) fn init(cli: &Cli, path: &Path, force: bool) -> Result<i32, Error> {
    let req = Request::Init {
        path: abs(path)?,
        force,
    };
    let v = call(cli, req, SLOW)?;
    let r: InitReport = parse(&v)?;
    if json_mode(cli) {
        output::json(&v)
    } else if r.changed {
        let path = r.path.display().to_string();
        println!("{} is now workspace {}", output::esc(&path), r.ws_id);
    } else {
        let path = r.path.display().to_string();
        println!("{} is already workspace {}", output::esc(&path), r.ws_id);
    }
    Ok(0)
}

/// `release PATH`.
pub(super) fn release(cli: &Cli, path: &Path) -> Result<i32, Error> {
    let v = call(cli, Request::Release { path: abs(path)? }, SLOW)?;
    let r: ReleaseReport = parse(&v)?;
    if json_mode(cli) {
        output::json(&v)
    } else {
        println!(
            "{} is a plain directory again (workspace {} released)",
            output::esc(&r.path.display().to_string()),
            r.ws_id
        );
    }
    Ok(0)
}
