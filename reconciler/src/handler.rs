//! The one path every request takes, in the daemon and in-process alike (SPEC §7.2):
//! validate its IDs → resolve what it names once ([`Target`]) → authorize once → run it →
//! audit it once. The result is a JSON value, so the CLI prints the same thing either way.
//!
//! How the path reaches the engine is the [`Session`]: an in-process command owns its engine
//! ([`handle_in_process`]); the daemon shares one between its threads. Either way the engine
//! is shared, not locked: each operation takes its own workspace's lock, and the only
//! host-wide critical section is the store's (one record at a time), so requests on
//! different workspaces run in parallel whatever they do.
//!
//! This module routes; it decides nothing about authorization (`auth`) and implements no
//! operation (`ops`, `engine`).

use crate::api::{Addressed, Caller, CheckpointArgs, ListOutput, Progress, Reply, Request, Target};
use crate::engine::{ApplyOptions, ApplyReport, Engine};
use crate::error::{Error, ErrorCode, Result};
use crate::ops::{ListPage, RollbackTarget};
use crate::paths::absolute_user_path;
use crate::plan::PlanOptions;
use crate::policy::ConfigScope;
use crate::status::DaemonInfo;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// How the request path reaches the engine.
pub trait Session {
    /// Run `f` with the engine. Holds nothing host-wide: the engine serializes what it must
    /// itself. Fails when there is no engine any more (a daemon shutting down).
    fn with_engine<R>(&self, f: impl FnOnce(&Engine) -> R) -> Result<R>;

    /// The daemon serving the request, if one does (shown by `status`).
    fn daemon_info(&self) -> Option<DaemonInfo> {
        None
    }

    /// Called with the engine after a mutating request ran (the daemon watches the snapshot
    /// directories of new workspaces). Default: nothing.
    fn after_mutation(&self, engine: &Engine) {
        let _ = engine;
    }
}

/// Run one request: validate, resolve, authorize, execute, audit (mutating requests, whether
/// they succeed or are refused).
pub fn handle(
    session: &impl Session,
    caller: &Caller,
    req: Request,
    progress: Progress<'_>,
) -> Result<Value> {
    handle_reply(session, caller, req, progress)?.decode()
}

/// [`handle`], with the result as the daemon sends it: large results (a `list`) already
/// written as JSON text, the others as values.
pub fn handle_reply(
    session: &impl Session,
    caller: &Caller,
    req: Request,
    progress: Progress<'_>,
) -> Result<Reply> {
    session.with_engine(|engine| {
        let result = run(session, engine, caller, &req, progress);
        crate::audit::record(&engine.state_dir(), caller, &req, &result);
        result
    })?
}

/// [`handle`] for a command that owns its engine.
pub fn handle_in_process(
    engine: &Engine,
    caller: &Caller,
    req: Request,
    progress: Progress<'_>,
) -> Result<Value> {
    handle_in_process_reply(engine, caller, req, progress)?.decode()
}

/// [`handle_in_process`], with the result as [`handle_reply`] gives it.
pub fn handle_in_process_reply(
    engine: &Engine,
    caller: &Caller,
    req: Request,
    progress: Progress<'_>,
) -> Result<Reply> {
    handle_reply(&Exclusive(engine), caller, req, progress)
}

/// The session of a command that owns its engine.
struct Exclusive<'a>(&'a Engine);

impl Session for Exclusive<'_> {
    fn with_engine<R>(&self, f: impl FnOnce(&Engine) -> R) -> Result<R> {
        Ok(f(self.0))
    }
}

fn run(
    session: &impl Session,
    engine: &Engine,
    caller: &Caller,
    req: &Request,
    progress: Progress<'_>,
) -> Result<Reply> {
    req.check_ids()?;
    let target = resolve_for(engine, caller, req)?;
    crate::auth::authorize(&engine.config(), caller, req, &target)?;
    let daemon = match req {
        Request::Status { .. } => session.daemon_info(),
        _ => None,
    };
    let result = dispatch(
        engine,
        caller,
        req.clone(),
        target,
        daemon.as_ref(),
        progress,
    );
    if req.is_mutating() {
        session.after_mutation(engine);
    }
    result
}

/// What `req` names, looked up once (the step before authorization).
pub fn resolve(engine: &Engine, req: &Request) -> Result<Target> {
    resolve_for(engine, &Caller::this_process_as_root(), req)
}

/// What `req` names for `caller`: workspaces the caller may not use are not found, exactly
/// as if they did not exist (SPEC §7.2).
pub fn resolve_for(engine: &Engine, caller: &Caller, req: &Request) -> Result<Target> {
    let config = engine.config();
    let visible = |w: &crate::state::WorkspaceEntry| crate::auth::may_use(&config, caller, w);
    let workspace = |spec: &str| {
        engine
            .resolve_workspace_for(spec, &visible)
            .map(|w| Target::Workspace(Addressed::new(w, spec)))
    };
    match req {
        Request::Checkpoint {
            workspace: spec, ..
        } => match engine.resolve_workspace_for(spec, &visible) {
            Ok(w) => Ok(Target::Workspace(Addressed::new(w, spec))),
            Err(e) if e.code == ErrorCode::WorkspaceNotFound => Ok(Target::Unrecorded {
                path: absolute_user_path(Path::new(spec))?,
                not_found: e,
            }),
            Err(e) => Err(e),
        },
        Request::Rollback {
            workspace: spec, ..
        }
        | Request::Cleanup {
            workspace: spec, ..
        }
        | Request::Diff {
            workspace: spec, ..
        }
        | Request::List {
            workspace: Some(spec),
            ..
        }
        | Request::Status {
            workspace: Some(spec),
        }
        | Request::Delete {
            workspace: Some(spec),
            ..
        }
        | Request::RecoverPreview {
            workspace: Some(spec),
        }
        | Request::Config {
            workspace: Some(spec),
            ..
        } => workspace(spec),
        Request::Delete {
            workspace: None,
            snapshot,
            ..
        } => Ok(Target::Holders(
            engine
                .snapshot_holders(snapshot)
                .into_iter()
                .filter(|w| visible(w))
                .collect(),
        )),
        Request::Release { path } => {
            let w = engine.release_target_for(path, &visible)?;
            let spec = w.workspace_path.display().to_string();
            Ok(Target::Workspace(Addressed::new(w, &spec)))
        }
        Request::List {
            workspace: None, ..
        }
        | Request::Status { workspace: None }
        | Request::RecoverPreview { workspace: None }
        | Request::Config {
            workspace: None, ..
        }
        | Request::Init { .. }
        | Request::Plan { .. }
        | Request::Apply { .. }
        | Request::Reload => Ok(Target::Host),
    }
}

/// Reduce the report of an apply that ran on `caller`'s behalf (init, release) to what the
/// caller may see: actions and findings about its own workspaces (`own`: the one the request
/// was about, recorded or no longer), and host findings naming no path.
fn filter_apply(engine: &Engine, caller: &Caller, report: &mut ApplyReport, own: &str) {
    if caller.is_root() {
        return;
    }
    let state = engine.store.read().state.clone();
    let mut visible = crate::auth::visible_workspaces(&engine.config(), state.as_ref(), caller);
    visible.push(own.to_string());
    report.actions.retain(|a| {
        a.action
            .ws_id()
            .is_some_and(|id| visible.iter().any(|v| v == id))
    });
    report
        .findings
        .retain(|f| crate::auth::finding_visible(f, &visible));
}

fn to_value<T: Serialize>(v: &T) -> Result<Reply> {
    serde_json::to_value(v)
        .map(Reply::Value)
        .map_err(|e| Error::new(ErrorCode::Io, format!("cannot encode result: {e}")))
}

/// Run an authorized request (each operation takes its workspace's lock itself).
fn dispatch(
    engine: &Engine,
    caller: &Caller,
    req: Request,
    target: Target,
    daemon: Option<&DaemonInfo>,
    progress: Progress<'_>,
) -> Result<Reply> {
    let addressed = |t: &Target| match t {
        Target::Workspace(w) => Ok(w.clone()),
        _ => Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("`{}` needs a workspace", req.op()),
        )),
    };
    match &req {
        Request::Checkpoint {
            snapshot,
            message,
            metadata,
            pin,
            ..
        } => {
            let args = CheckpointArgs {
                snapshot: snapshot.clone(),
                message: message.clone(),
                metadata: metadata.clone(),
                pin: *pin,
            };
            match target {
                Target::Unrecorded { path, not_found } => to_value(
                    &engine.checkpoint_unrecorded(&path, not_found, args, caller, progress)?,
                ),
                t => to_value(&engine.checkpoint(&addressed(&t)?.entry, args)?),
            }
        }
        Request::Rollback {
            snapshot,
            ancestors,
            force,
            preview,
            ..
        } => {
            let goal = match (snapshot, ancestors) {
                (Some(s), None) => RollbackTarget::Named(s.clone()),
                (None, Some(n)) => RollbackTarget::Ancestors(*n),
                _ => {
                    return Err(Error::new(
                        ErrorCode::InvalidArgument,
                        "rollback needs exactly one of --snapshot ID and --num-ancestors N",
                    ))
                }
            };
            let ws = addressed(&target)?;
            if *preview {
                to_value(&engine.rollback_preview(&ws, &goal)?)
            } else {
                to_value(&engine.rollback(&ws.entry, &goal, *force, caller)?)
            }
        }
        Request::List {
            workspace,
            limit,
            cursor,
            output,
        } => {
            let ws = match workspace {
                Some(_) => Some(addressed(&target)?),
                None => None,
            };
            let page = ListPage {
                limit: *limit,
                cursor: cursor.clone(),
            };
            // Thousands of snapshots: written as text once, from the indexes themselves.
            match output {
                Some(ListOutput::Json) => Ok(Reply::Printed(engine.list_output_json(
                    caller,
                    ws.as_ref(),
                    &page,
                )?)),
                None => Ok(Reply::Json(engine.list_json(caller, ws.as_ref(), &page)?)),
            }
        }
        Request::Delete {
            snapshot,
            force,
            dry_run,
            ..
        } => {
            let ws = match &target {
                Target::Holders(holders) => engine.unique_holder(caller, holders, snapshot)?,
                t => addressed(t)?,
            };
            to_value(&engine.delete(&ws, snapshot, *force, *dry_run)?)
        }
        Request::Cleanup { keep, dry_run, .. } => {
            to_value(&engine.cleanup(&addressed(&target)?, keep.as_deref(), *dry_run)?)
        }
        Request::RecoverPreview { workspace } => {
            let ws = match workspace {
                Some(_) => Some(addressed(&target)?),
                None => None,
            };
            to_value(&engine.recover_preview(caller, ws.as_ref()))
        }
        Request::Config {
            workspace,
            global,
            change,
        } => {
            let ws = match workspace {
                Some(_) => Some(addressed(&target)?),
                None => None,
            };
            let scope = match (&ws, global) {
                (Some(_), true) => {
                    return Err(Error::new(
                        ErrorCode::InvalidArgument,
                        "-g (global) and -w (one workspace) are exclusive",
                    ))
                }
                (Some(w), false) => ConfigScope::Workspace(w),
                (None, true) => ConfigScope::Global,
                (None, false) => ConfigScope::Overview,
            };
            engine
                .config_request(caller, scope, change)
                .map(Reply::Value)
        }
        Request::Diff { from, to, .. } => {
            to_value(&engine.diff(&addressed(&target)?, from, to.as_deref())?)
        }
        Request::Init { path, force } => {
            let mut r = engine.init(path, *force, caller, progress)?;
            if let Some(a) = r.apply.as_mut() {
                filter_apply(engine, caller, a, &r.ws_id);
            }
            to_value(&r)
        }
        Request::Release { .. } => {
            let mut r = engine.release(&addressed(&target)?.entry, progress)?;
            filter_apply(engine, caller, &mut r.apply, &r.ws_id);
            to_value(&r)
        }
        Request::Status { workspace } => {
            let mut st = engine.status(daemon);
            let state = engine.store.read().state.clone();
            crate::auth::filter_status(&engine.config(), state.as_ref(), caller, &mut st);
            if workspace.is_some() {
                let ws = addressed(&target)?;
                // Named by its path, a detached workspace is an error (SPEC §4 rule 5, as
                // upstream 0.5.0); by ws_id it is reported.
                if !ws.by_id {
                    let res = engine.light_resolution()?;
                    engine.check_attached(&ws, &res)?;
                }
                st.only_workspace(ws.ws_id());
            }
            to_value(&st)
        }
        Request::Plan { prune } => to_value(&engine.plan(PlanOptions {
            prune: *prune,
            retry_failed: false,
        })),
        Request::Apply { check, prune } => to_value(&engine.apply(
            ApplyOptions {
                check: *check,
                prune: *prune,
                retry_failed: true,
                ..ApplyOptions::default()
            },
            progress,
        )),
        Request::Reload => {
            engine.reload_config()?;
            to_value(&engine.apply(ApplyOptions::default(), progress))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::sys::fake::FakeSys;
    use crate::sys::Sys;
    use std::sync::Arc;
    use std::time::Duration;

    const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 1,
    };

    /// A bootstrapped fake backend with workspace `<root>/home/a`.
    fn engine(dir: &Path) -> Engine {
        engine_with(dir, Arc::new(FakeSys::new()), &["a"])
    }

    /// A bootstrapped fake backend with workspaces `<root>/home/<name>`.
    fn engine_with(dir: &Path, sys: Arc<FakeSys>, names: &[&str]) -> Engine {
        let d = dir.display();
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::create_dir_all(dir.join("img")).unwrap();
        let mut decls = String::new();
        for n in names {
            std::fs::create_dir_all(dir.join("home").join(n)).unwrap();
            decls += &format!("[[workspace]]\npath = \"{d}/home/{n}\"\n");
        }
        std::fs::write(
            dir.join("etc/config.toml"),
            format!("[daemon]\nstate_dir = \"{d}/state\"\nruntime_dir = \"{d}/run\"\n[backend]\ntype = \"btrfs-loop\"\n[backend.btrfs-loop]\nimage = \"{d}/img/i\"\nmount = \"{d}/mnt\"\nlegacy_image = \"{d}/legacy.img\"\nimg_size = 1\n{decls}"),
        )
        .unwrap();
        let config = Config::load(&dir.join("etc/config.toml")).unwrap();
        sys.create_image(&dir.join("img/i"), 1 << 30).unwrap();
        let e = Engine::open(config, sys, "cli", Duration::ZERO).unwrap();
        assert!(e.apply(ApplyOptions::default(), &mut |_, _| {}).ok());
        e
    }

    fn audit_lines(e: &Engine) -> Vec<Value> {
        std::fs::read_to_string(e.config().daemon.state_dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn checkpoint_req(workspace: &Path, id: &str) -> Request {
        Request::Checkpoint {
            workspace: workspace.display().to_string(),
            snapshot: Some(id.into()),
            message: None,
            metadata: None,
            pin: false,
        }
    }

    #[test]
    fn a_checkpoint_holds_only_its_workspace_during_the_snapshot_ioctl() {
        let dir = tempfile::tempdir().unwrap();
        let sys = Arc::new(FakeSys::new());
        let e = Arc::new(engine_with(dir.path(), Arc::clone(&sys), &["a", "b"]));
        let (a, b) = (dir.path().join("home/a"), dir.path().join("home/b"));
        let ws_a = e.resolve_workspace(&a.display().to_string()).unwrap().ws_id;
        // While a's snapshot ioctl runs: a is held, the store is free, and a checkpoint of b
        // (another thread) runs to its end.
        let (tx, rx) = std::sync::mpsc::channel();
        let e2 = Arc::clone(&e);
        sys.on_next("snapshot", move || {
            let a_held = e2.workspace_busy(&ws_a);
            let e3 = Arc::clone(&e2);
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let r = handle_in_process(&e3, &ROOT, checkpoint_req(&b, "b1"), &mut |_, _| {});
                let _ = done_tx.send(r);
            });
            let other = done_rx.recv_timeout(Duration::from_secs(20));
            let _ = tx.send((a_held, other));
        });
        let v = handle_in_process(&e, &ROOT, checkpoint_req(&a, "a1"), &mut |_, _| {}).unwrap();
        assert_eq!(v["snapshot"], "a1");
        let (a_held, other) = rx.recv().unwrap();
        assert!(a_held, "the snapshot ioctl runs holding its workspace");
        let other = other.expect("a checkpoint of another workspace waited for this one");
        assert_eq!(other.unwrap()["snapshot"], "b1");
        let audit = audit_lines(&e);
        let ops: Vec<(&str, &str)> = audit
            .iter()
            .map(|l| {
                (
                    l["snapshot"].as_str().unwrap(),
                    l["result"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(ops, [("b1", "ok"), ("a1", "ok")], "audited once each");
    }

    #[test]
    fn refusals_are_audited_and_ids_are_checked_before_any_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let user = Caller {
            uid: 4242,
            gid: 4242,
            pid: 2,
        };
        let err = handle_in_process(
            &e,
            &user,
            Request::Apply {
                check: false,
                prune: false,
            },
            &mut |_, _| {},
        )
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::PermissionDenied);
        let req = Request::Rollback {
            workspace: "ws-nowhere".into(),
            snapshot: Some("../x".into()),
            ancestors: None,
            preview: false,
            force: false,
        };
        let err = handle_in_process(&e, &ROOT, req, &mut |_, _| {}).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{err:?}");
        let audit = audit_lines(&e);
        let results: Vec<&str> = audit
            .iter()
            .map(|l| l["result"].as_str().unwrap())
            .collect();
        assert_eq!(results, ["PermissionDenied", "InvalidArgument"]);
        // Read-only requests are not audited.
        handle_in_process(
            &e,
            &user,
            Request::Status { workspace: None },
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(audit_lines(&e).len(), 2);
    }

    #[test]
    fn status_describes_the_serving_daemon_without_patching_json() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let v = handle_in_process(
            &e,
            &ROOT,
            Request::Status { workspace: None },
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(v["daemon"]["running"], false);
        assert_eq!(v["health"], "healthy", "{v}");
        let st = e.status(Some(&DaemonInfo {
            pid: 7,
            uptime_secs: 3,
            last_pass: Some("2026-01-01T00:00:00Z".into()),
            config_error: Some("x.toml:1:1: bad".into()),
        }));
        assert!(st.daemon.running);
        assert_eq!(st.daemon.pid, Some(7));
        assert_eq!(st.daemon.config_error.as_deref(), Some("x.toml:1:1: bad"));
        assert_eq!(st.health, crate::status::Health::Degraded);
    }
}
