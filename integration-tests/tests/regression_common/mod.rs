//! Helpers shared by the regression tests of issue 10 (`regression_issue10*.rs`).

#![allow(dead_code, unused_imports)]

pub(crate) use std::fs;
pub(crate) use std::path::{Path, PathBuf};
pub(crate) use std::time::{Duration, Instant};

pub(crate) use nix::sys::signal::Signal;
pub(crate) use serde_json::{json, Value};
pub(crate) use ws_ckpt_integration_tests::torture_support::{
    add_file, compare_tree, fill_to_enospc, gen_tree, indent, syncfs, write_tree, ws_subvol_rel,
    Inotify, Listed, Rig, Rng, Storage, Tree, TreeSize,
};
pub(crate) use ws_ckpt_integration_tests::{Run, Spawned};

/// Whether operations go through a daemon or run in the CLI process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Daemon,
    InProcess,
}

pub(crate) fn rig(test: &str, storage: Storage, via: Via) -> Option<Rig> {
    let mut rig = Rig::new(test, storage)?;
    match via {
        Via::Daemon => rig.start_daemon().unwrap_or_else(|e| panic!("{e}")),
        Via::InProcess => {
            rig.json(&["apply"]).0.ok();
        }
    }
    Some(rig)
}

/// A tree at `<home>/<name>`; returns its path and model.
pub(crate) fn make_tree(rig: &Rig, name: &str, seed: u64, size: TreeSize) -> (PathBuf, Tree) {
    let tree = gen_tree(&mut Rng::new(seed), size);
    let p = rig.layout.home.join(name);
    write_tree(&p, &tree);
    (p, tree)
}

/// `init PATH`; returns the ws_id.
#[track_caller]
pub(crate) fn init(rig: &Rig, p: &Path) -> String {
    let (r, v) = rig.json(&["init", &p.display().to_string()]);
    r.ok();
    v.and_then(|v| v["ws_id"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("init printed no ws_id\n{}", r.describe()))
}

#[track_caller]
pub(crate) fn checkpoint(rig: &Rig, p: &Path, id: &str, extra: &[&str]) -> Run {
    let ps = p.display().to_string();
    let mut a = vec!["checkpoint", "-w", ps.as_str(), "-s", id];
    a.extend_from_slice(extra);
    let (r, _) = rig.json(&a);
    r
}

/// The snapshots `list` shows for one workspace, by ID.
pub(crate) fn listed_for(rig: &Rig, ws_id: &str) -> Vec<Listed> {
    rig.listed()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .filter(|l| l.ws_keys.iter().any(|k| k == ws_id))
        .collect()
}

pub(crate) fn spawn(rig: &Rig, args: &[&str]) -> Spawned {
    let mut a: Vec<String> = vec!["--format".into(), "json".into()];
    a.extend(args.iter().map(|s| s.to_string()));
    rig.spawn(&a)
}

/// Recover the way an operator would: restart the daemon, or run `apply` in-process. Returns
/// the `apply`.
pub(crate) fn recover(rig: &mut Rig, via: Via) -> Run {
    if via == Via::Daemon {
        rig.kill_daemon();
        rig.start_daemon()
            .unwrap_or_else(|e| panic!("restart after the crash: {e}"));
    }
    rig.json(&["apply"]).0
}

#[track_caller]
pub(crate) fn assert_converged(rig: &Rig) {
    let p = rig.converged();
    assert!(p.is_empty(), "not converged:\n{}", p.join("\n"));
}

/// Hidden entries beside `p`: ws-ckpt's temporaries next to a user path are hidden
/// (`.ws-ckpt-<tag>-<hash>-<op>` today; whatever the name, the test directories hold nothing
/// else that is hidden).
pub(crate) fn temporaries_beside(p: &Path) -> Vec<String> {
    hidden_names(p.parent().unwrap())
}

pub(crate) fn hidden_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// Subvolumes (relative paths) that are not a recorded workspace or a listed snapshot.
pub(crate) fn unrecorded_subvolumes(rig: &Rig) -> Vec<String> {
    let (_, st) = rig.json(&["status"]);
    let st = st.expect("status JSON");
    let recorded: Vec<String> = st["workspaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["ws_id"].as_str().map(str::to_string))
        .collect();
    let listed = rig.listed().unwrap_or_else(|e| panic!("{e}"));
    rig.subvolumes()
        .into_keys()
        .filter(|p| {
            !recorded.iter().any(|id| *p == ws_subvol_rel(id))
                && !listed.iter().any(|l| {
                    l.ws_keys
                        .iter()
                        .any(|k| *p == format!("snapshots/{k}/{}", l.id))
                })
        })
        .collect()
}

pub(crate) fn findings(rig: &Rig) -> String {
    let (_, st) = rig.json(&["status"]);
    st.map(|v| v["findings"].to_string()).unwrap_or_default()
}

pub(crate) fn wait_exit(child: &Spawned, what: &str) -> std::process::ExitStatus {
    child
        .wait_timeout(Duration::from_secs(300))
        .unwrap_or_else(|| panic!("{what} did not finish within 300 s"))
}

pub(crate) const MID: TreeSize = TreeSize {
    files: 3000,
    bytes: 8 << 20,
};
pub(crate) const SMALL: TreeSize = TreeSize {
    files: 60,
    bytes: 1 << 20,
};

pub(crate) fn snapshot_on_disk(rig: &Rig, ws_id: &str, id: &str) -> bool {
    rig.subvolumes()
        .contains_key(&format!("snapshots/{ws_id}/{id}"))
}

pub(crate) fn interrupted_actions(v: &Option<Value>) -> Vec<String> {
    v.as_ref()
        .and_then(|v| v["actions"].as_array())
        .into_iter()
        .flatten()
        .filter(|a| {
            a["action"]
                .as_str()
                .is_some_and(|n| n.contains("interrupted"))
        })
        .map(|a| a.to_string())
        .collect()
}

pub(crate) fn small_state_dir(rig: &Rig) -> PathBuf {
    rig.layout.state_dir.parent().unwrap().to_path_buf()
}
