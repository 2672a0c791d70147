//! CLI ↔ daemon hand-off (issue 9 item 2, SPEC §7.1): commands issued while the daemon
//! restarts never fail and never take much longer than the start itself; a command issued
//! while the daemon is starting waits for its socket (not for its lock); a daemon started
//! while an in-process command holds the lock waits for that command instead of refusing to
//! start. Real btrfs, the real daemon; root only. Bounded by count and time.

use serde_json::Value;
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ws_ckpt_integration_tests::{wait_until, Spawned, TestEnv};

/// First start creates and formats the image: allow for a slow machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// What a command may take beyond the longest daemon start it overlapped.
const BOUND: Duration = Duration::from_secs(10);

fn start(env: &TestEnv, extra: &[(&str, &str)]) -> (Spawned, Duration) {
    let mut vars = vec![("WS_CKPT_LOG", "info")];
    vars.extend_from_slice(extra);
    let t = Instant::now();
    let d = env.spawn(&["daemon"], &vars);
    let up = wait_until(START_TIMEOUT, || {
        if let Some(st) = d.try_wait() {
            panic!("daemon exited early with {st}\n{}", d.stderr());
        }
        UnixStream::connect(env.socket_path()).is_ok()
    });
    assert!(up, "daemon did not open its socket\n{}", d.stderr());
    (d, t.elapsed())
}

fn stop(d: &Spawned) {
    assert!(d.term(), "daemon already gone\n{}", d.stderr());
    let st = d
        .wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("daemon did not stop on SIGTERM\n{}", d.stderr()));
    assert!(st.success(), "daemon stop: {st}\n{}", d.stderr());
}

fn plain_dir(env: &TestEnv, name: &str) -> PathBuf {
    let d = env.home.join(name);
    TestEnv::make_sample_tree(&d);
    d
}

/// Every snapshot ID in a `list --format json` output (an array of snapshots, or a page
/// `{"snapshots": […]}`, or workspaces holding `snapshots`: whatever the shape, the objects
/// with an `id`).
fn snapshot_ids(list: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(m) => {
                if let Some(id) = m.get("id").and_then(Value::as_str) {
                    out.push(id.to_string());
                }
                m.values().for_each(|x| walk(x, out));
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(list, &mut out);
    out
}

/// One command run by the loop: what, how long, how it ended.
struct Ran {
    args: String,
    took: Duration,
    code: Option<i32>,
    output: String,
}

#[test]
fn commands_issued_while_the_daemon_restarts_never_fail_and_wait_only_for_the_start() {
    let Some(env) = TestEnv::new("handoff-restart") else {
        return;
    };
    let (d, first) = start(&env, &[]);
    eprintln!("first start (image creation included): {first:?}");
    let a = plain_dir(&env, "a");
    env.run(&["init", a.to_str().unwrap()]).ok();
    let env = Arc::new(env);
    let stop_loop = Arc::new(AtomicBool::new(false));
    let ran: Arc<Mutex<Vec<Ran>>> = Arc::default();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let worker = {
        let (env, stop_loop, ran, acked) = (
            Arc::clone(&env),
            Arc::clone(&stop_loop),
            Arc::clone(&ran),
            Arc::clone(&acked),
        );
        let a = a.to_str().unwrap().to_string();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut i = 0u32;
            // Bounded by count and time.
            while !stop_loop.load(Ordering::SeqCst) && i < 400 && t0.elapsed() < START_TIMEOUT {
                let id = format!("r{i:03}");
                let is_checkpoint = i % 3 != 2;
                let args: Vec<&str> = match is_checkpoint {
                    true => vec!["--format", "json", "checkpoint", "-w", &a, "-s", &id],
                    false => vec!["--format", "json", "list", "-w", &a],
                };
                let line = args.join(" ");
                let t = Instant::now();
                let r = env.run_command(env.command(&args), Duration::from_secs(150));
                let took = t.elapsed();
                if r.code() == Some(0) && is_checkpoint {
                    acked.lock().unwrap().push(id.clone());
                }
                ran.lock().unwrap().push(Ran {
                    args: line,
                    took,
                    code: r.code(),
                    output: format!("{}{}", r.stdout, r.stderr),
                });
                i += 1;
            }
        })
    };
    // Restart the daemon a few times while the loop runs.
    let mut d = d;
    let mut longest_start = Duration::ZERO;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        stop(&d);
        std::thread::sleep(Duration::from_millis(300));
        let (next, took) = start(&env, &[]);
        eprintln!("restart → socket: {took:?}");
        longest_start = longest_start.max(took);
        d = next;
    }
    std::thread::sleep(Duration::from_millis(700));
    stop_loop.store(true, Ordering::SeqCst);
    worker.join().expect("the command loop panicked");
    let ran = ran.lock().unwrap();
    assert!(ran.len() >= 6, "only {} commands ran", ran.len());
    let failed: Vec<String> = ran
        .iter()
        .filter(|r| r.code != Some(0))
        .map(|r| {
            format!(
                "{} → {:?} after {:?}:\n{}",
                r.args, r.code, r.took, r.output
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} commands failed during restarts (expected: none):\n{}",
        failed.len(),
        ran.len(),
        failed.join("\n")
    );
    let slowest = ran.iter().max_by_key(|r| r.took).unwrap();
    assert!(
        slowest.took <= longest_start + BOUND,
        "`{}` took {:?}; the longest restart took {longest_start:?} (expected at most the start plus {BOUND:?})",
        slowest.args,
        slowest.took
    );
    eprintln!(
        "{} commands, slowest {:?} ({}), longest restart {longest_start:?}",
        ran.len(),
        slowest.took,
        slowest.args
    );
    // Nothing acknowledged was lost.
    let listed = env.run(&["--format", "json", "list", "-w", a.to_str().unwrap()]);
    let ids = snapshot_ids(&listed.json());
    let lost: Vec<String> = acked
        .lock()
        .unwrap()
        .iter()
        .filter(|id| !ids.contains(id))
        .cloned()
        .collect();
    assert!(lost.is_empty(), "acknowledged checkpoints lost: {lost:?}");
    stop(&d);
}

/// Hold files for `WS_CKPT_FAULT_HOLD`.
fn holds(env: &TestEnv) -> PathBuf {
    let h = env.root.join("holds");
    fs::create_dir_all(&h).unwrap();
    h
}

fn wait_reached(holds: &Path, point: &str, who: &Spawned) {
    let reached = holds.join(format!("{point}.reached"));
    let ok = wait_until(Duration::from_secs(120), || {
        reached.exists() || who.try_wait().is_some()
    });
    assert!(
        ok && reached.exists(),
        "{point} was never reached ({:?})\n{}",
        who.try_wait(),
        who.stderr()
    );
}

#[test]
fn a_daemon_started_while_an_in_process_command_holds_the_lock_waits_for_it() {
    let Some(env) = TestEnv::new("handoff-daemon-waits") else {
        return;
    };
    let a = plain_dir(&env, "a");
    // No daemon: root's commands run in-process.
    env.run(&["init", a.to_str().unwrap()]).ok();
    let h = holds(&env);
    let point = "checkpoint:after-record";
    fs::write(h.join(point), b"held\n").unwrap();
    let ck = env.spawn(
        &["checkpoint", "-w", a.to_str().unwrap(), "-s", "held"],
        &[("WS_CKPT_FAULT_HOLD", h.to_str().unwrap())],
    );
    wait_reached(&h, point, &ck);
    let d = env.spawn(&["daemon"], &[("WS_CKPT_LOG", "info")]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        d.try_wait().is_none(),
        "the daemon refused to start while an in-process command held the lock (expected: it waits for it):\n{}",
        d.stderr()
    );
    let _ = fs::remove_file(h.join(point));
    let st = ck
        .wait_timeout(Duration::from_secs(60))
        .expect("the held checkpoint did not finish");
    assert!(st.success(), "the held checkpoint failed: {}", ck.stderr());
    let up = wait_until(START_TIMEOUT, || {
        d.try_wait().is_none() && UnixStream::connect(env.socket_path()).is_ok()
    });
    assert!(
        up,
        "the daemon did not start after the command finished\n{}",
        d.stderr()
    );
    let st = env.run(&["--format", "json", "status"]).json();
    assert_eq!(st["daemon"]["running"], true, "{st}");
    let ids = snapshot_ids(&env.run(&["--format", "json", "list"]).json());
    assert!(ids.contains(&"held".to_string()), "{ids:?}");
    stop(&d);
}

#[test]
fn a_command_issued_while_the_daemon_starts_waits_for_its_socket() {
    let Some(env) = TestEnv::new("handoff-cli-waits") else {
        return;
    };
    // The first pass of the next start initializes a declared workspace; hold it there, so
    // the daemon holds the lock and has no socket yet.
    let (d, _) = start(&env, &[]);
    stop(&d);
    let p = plain_dir(&env, "declared");
    fs::write(
        env.dropin_dir.join("60-declared.toml"),
        format!("[[workspace]]\npath = \"{}\"\n", p.display()),
    )
    .unwrap();
    let h = holds(&env);
    let point = "init:after-copy";
    fs::write(h.join(point), b"held\n").unwrap();
    let d = env.spawn(
        &["daemon"],
        &[
            ("WS_CKPT_LOG", "info"),
            ("WS_CKPT_FAULT_HOLD", h.to_str().unwrap()),
        ],
    );
    wait_reached(&h, point, &d);
    let status = env.spawn(&["--format", "json", "status"], &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        status.try_wait().is_none(),
        "`status` did not wait for the starting daemon: {:?}\n{}",
        status.try_wait(),
        status.stderr()
    );
    let released = Instant::now();
    let _ = fs::remove_file(h.join(point));
    let st = status
        .wait_timeout(START_TIMEOUT)
        .expect("status did not finish after the daemon started");
    assert!(
        matches!(st.code(), Some(0) | Some(3)),
        "status failed: {st}\n{}",
        status.stderr()
    );
    eprintln!("status answered {:?} after the release", released.elapsed());
    let out = fs::read_to_string(status.stdout_path()).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        v["daemon"]["running"], true,
        "status ran in-process instead of through the daemon: {v}"
    );
    stop(&d);
}
