//! End-to-end tests of `ws-ckpt daemon` and its socket (SPEC §7, seed scenarios 1–6 of
//! §13) on a real loop-backed btrfs. Root only; each test has its own [`TestEnv`].

use serde_json::{json, Value};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use ws_ckpt_integration_tests::{btrfs, find_tool, wait_until, Spawned, TestEnv};

/// First start creates and formats the image: allow for a slow machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);

fn start(env: &TestEnv) -> Spawned {
    start_env(env, &[])
}

fn start_env(env: &TestEnv, extra: &[(&str, &str)]) -> Spawned {
    let mut vars = vec![("WS_CKPT_LOG", "info")];
    vars.extend_from_slice(extra);
    let d = env.spawn(&["daemon"], &vars);
    let sock = env.socket_path();
    let up = wait_until(START_TIMEOUT, || {
        if let Some(st) = d.try_wait() {
            panic!(
                "daemon exited early with {st}\n--- stderr ---\n{}",
                d.stderr()
            );
        }
        UnixStream::connect(&sock).is_ok()
    });
    assert!(
        up,
        "daemon did not open {} in time\n{}",
        sock.display(),
        d.stderr()
    );
    d
}

fn stop(d: &Spawned) {
    assert!(d.term(), "daemon already gone\n{}", d.stderr());
    let st = d
        .wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("daemon did not stop on SIGTERM\n{}", d.stderr()));
    assert!(st.success(), "daemon stop: {st}\n{}", d.stderr());
}

/// Send raw bytes, read every response line until the daemon closes or `wait` passes.
fn raw(env: &TestEnv, bytes: &[u8], wait: Duration) -> Vec<Value> {
    let mut s = UnixStream::connect(env.socket_path()).expect("connect to the daemon");
    s.set_read_timeout(Some(wait)).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => out.push(
                serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("bad response line {line:?}: {e}")),
            ),
        }
    }
    out
}

/// One request as root over the socket; the whole response object.
fn req(env: &TestEnv, mut body: Value) -> Value {
    body.as_object_mut().unwrap().insert("v".into(), json!(1));
    let mut s = UnixStream::connect(env.socket_path()).expect("connect to the daemon");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(format!("{body}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad response {line:?} to {body}: {e}"))
}

#[track_caller]
fn ok(resp: Value) -> Value {
    assert_eq!(resp["ok"], true, "request failed: {resp}");
    resp["result"].clone()
}

#[track_caller]
fn err_code(resp: &Value) -> String {
    assert_eq!(resp["ok"], false, "expected an error: {resp}");
    resp["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn status(env: &TestEnv) -> Value {
    let r = env.run(&["--format", "json", "status"]);
    assert!(
        matches!(r.code(), Some(0) | Some(3) | Some(1)),
        "{}",
        r.describe()
    );
    r.json()
}

fn ws_status<'a>(st: &'a Value, path: &Path) -> Option<&'a Value> {
    st["workspaces"]
        .as_array()?
        .iter()
        .find(|w| w["path"].as_str() == Some(&path.display().to_string()))
}

fn snapshot_ids(list: &Value) -> Vec<String> {
    // `list` returns either an array of workspaces with snapshots or a flat array of entries;
    // collect every snapshot ID found anywhere in it.
    let mut ids = Vec::new();
    fn walk(v: &Value, ids: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(id) = m
                    .get("id")
                    .or_else(|| m.get("snapshot"))
                    .and_then(Value::as_str)
                {
                    ids.push(id.to_string());
                }
                for (_, x) in m {
                    walk(x, ids);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, ids)),
            _ => {}
        }
    }
    walk(list, &mut ids);
    ids.sort();
    ids.dedup();
    ids
}

fn snapshot_is_missing(list: &Value, id: &str) -> bool {
    fn walk(v: &Value, id: &str) -> bool {
        match v {
            Value::Object(m) => {
                let this = m
                    .get("id")
                    .or_else(|| m.get("snapshot"))
                    .and_then(Value::as_str)
                    == Some(id);
                (this && m.get("missing") == Some(&Value::Bool(true)))
                    || m.values().any(|x| walk(x, id))
            }
            Value::Array(a) => a.iter().any(|x| walk(x, id)),
            _ => false,
        }
    }
    walk(list, id)
}

fn plain_dir(env: &TestEnv, name: &str) -> PathBuf {
    let d = env.home.join(name);
    TestEnv::make_sample_tree(&d);
    d
}

fn ws_id_of(env: &TestEnv, path: &Path) -> String {
    let st = status(env);
    ws_status(&st, path).unwrap_or_else(|| panic!("{} not in status: {st}", path.display()))
        ["ws_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn scenario1_workspaces_and_checkpoints_survive_a_restart() {
    let Some(env) = TestEnv::new("daemon-s1") else {
        return;
    };
    let d = start(&env);
    let a = plain_dir(&env, "a");
    let b = plain_dir(&env, "b");
    ok(req(
        &env,
        json!({"op": "checkpoint", "workspace": a, "snapshot": "c1"}),
    ));
    fs::write(a.join("README.txt"), "changed\n").unwrap();
    ok(req(
        &env,
        json!({"op": "checkpoint", "workspace": a, "snapshot": "c2", "message": "second"}),
    ));
    ok(req(
        &env,
        json!({"op": "checkpoint", "workspace": b, "snapshot": "only"}),
    ));
    let before = ok(req(&env, json!({"op": "list"})));
    let digest = TestEnv::tree_digest(&a);
    stop(&d);
    assert!(
        !env.state_dir.join("daemon.lock").exists(),
        "clean stop removes the lock"
    );

    let d = start(&env);
    let after = ok(req(&env, json!({"op": "list"})));
    assert_eq!(snapshot_ids(&after), snapshot_ids(&before));
    assert_eq!(snapshot_ids(&after), ["c1", "c2", "only"]);
    assert_eq!(TestEnv::tree_digest(&a), digest);
    let st = status(&env);
    for p in [&a, &b] {
        assert_eq!(ws_status(&st, p).unwrap()["condition"], "ready", "{st}");
    }
    assert!(st["daemon"]["last_unclean_shutdown"].is_null(), "{st}");
    ok(req(
        &env,
        json!({"op": "rollback", "workspace": a, "snapshot": "c1"}),
    ));
    assert_eq!(
        fs::read_to_string(a.join("README.txt")).unwrap(),
        "sample workspace\n"
    );
    stop(&d);
}

#[test]
fn scenario2_tampered_backend_type_blocks_and_check_prints_the_fix() {
    let Some(env) = TestEnv::new("daemon-s2") else {
        return;
    };
    let d = start(&env);
    let a = plain_dir(&env, "a");
    ok(req(&env, json!({"op": "init", "path": a})));
    stop(&d);
    let state_path = env.state_dir.join("state.json");
    let mut state: Value = serde_json::from_str(&fs::read_to_string(&state_path).unwrap()).unwrap();
    state["backend"]["backend_type"] = json!("BtrfsBase");
    fs::write(&state_path, serde_json::to_string_pretty(&state).unwrap()).unwrap();
    // No type in the config: the persisted (tampered) choice is authoritative.
    fs::write(
        &env.config,
        env.base_config()
            .replace("type = \"btrfs-loop\"", "type = \"auto\""),
    )
    .unwrap();
    let tampered = fs::read_to_string(&state_path).unwrap();
    let mnt_before = fs::read_dir(&env.mount).map(|r| r.count()).unwrap_or(0);

    let check = env.run(&["daemon", "--check"]);
    assert_ne!(check.code(), Some(0), "{}", check.describe());
    let text = format!("{}{}", check.stdout, check.stderr);
    assert!(
        text.contains("backend-conflict") && text.contains("fix"),
        "{}",
        check.describe()
    );

    let d = start(&env);
    let b = plain_dir(&env, "b");
    let r = req(&env, json!({"op": "init", "path": b}));
    assert_ne!(r["ok"], true, "{r}");
    let st = status(&env);
    assert_eq!(st["health"], "error", "{st}");
    assert!(b.is_dir() && !b.is_symlink(), "nothing converted");
    assert_eq!(
        fs::read_dir(&env.mount).map(|r| r.count()).unwrap_or(0),
        mnt_before,
        "nothing created"
    );
    let now: Value = serde_json::from_str(&fs::read_to_string(&state_path).unwrap()).unwrap();
    let then: Value = serde_json::from_str(&tampered).unwrap();
    assert_eq!(
        now["backend"], then["backend"],
        "the backend record is not rewritten"
    );
    let r = req(
        &env,
        json!({"op": "checkpoint", "workspace": a, "snapshot": "x"}),
    );
    assert_eq!(err_code(&r), "Blocked", "{r}");
    let r = req(&env, json!({"op": "apply"}));
    let report = ok(r);
    assert!(
        report["actions"].as_array().is_none_or(|a| a.is_empty()),
        "{report}"
    );
    stop(&d);
}

#[test]
fn scenario3_kill9_is_reported_once_and_a_clean_stop_is_not() {
    let Some(env) = TestEnv::new("daemon-s3") else {
        return;
    };
    let d = start(&env);
    let lock = env.state_dir.join("daemon.lock");
    assert!(lock.exists());
    d.kill9();
    assert!(lock.exists(), "kill -9 leaves the lock file");

    let d = start(&env);
    let st = status(&env);
    let crash = st["daemon"]["last_unclean_shutdown"].clone();
    assert!(crash.is_string(), "unclean shutdown not reported: {st}");
    assert_eq!(st["daemon"]["running"], true);
    assert_eq!(st["daemon"]["pid"], d.pid());
    stop(&d);
    assert!(!lock.exists(), "SIGTERM removes the lock file");

    let d = start(&env);
    let st = status(&env);
    assert_eq!(
        st["daemon"]["last_unclean_shutdown"], crash,
        "a clean restart records no new crash: {st}"
    );
    stop(&d);
}

fn sha256_hex(s: &str) -> String {
    let mut child = Command::new(find_tool("sha256sum"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn scenario4_v0_layout_is_migrated_and_every_snapshot_listed() {
    let Some(env) = TestEnv::new("daemon-s4") else {
        return;
    };
    // Let the daemon build the filesystem, then replace its records by a v0 layout.
    let d = start(&env);
    stop(&d);
    fs::remove_file(env.state_dir.join("state.json")).unwrap();
    let _ = fs::remove_dir_all(env.state_dir.join("indexes"));
    let proj = env.home.join("legacy-proj");
    let ws_id = format!("ws-{}", &sha256_hex(&proj.display().to_string())[..6]);
    let subvol = env.mount.join(&ws_id);
    btrfs(&["subvolume", "create", &subvol.display().to_string()]);
    TestEnv::make_sample_tree(&subvol);
    let snaps = env.mount.join("snapshots").join(&ws_id);
    fs::create_dir_all(&snaps).unwrap();
    let mut entries = serde_json::Map::new();
    for (i, id) in ["v0-a", "v0-b", "v0-c"].iter().enumerate() {
        btrfs(&[
            "subvolume",
            "snapshot",
            "-r",
            &subvol.display().to_string(),
            &snaps.join(id).display().to_string(),
        ]);
        entries.insert(
            id.to_string(),
            json!({"message": format!("m{i}"), "metadata": null, "pinned": false, "created_at": format!("2025-01-0{}T00:00:00Z", i + 1), "missing": false}),
        );
    }
    fs::write(
        snaps.join("index.json"),
        json!({"workspace_path": proj, "snapshots": entries}).to_string(),
    )
    .unwrap();
    std::os::unix::fs::symlink(&subvol, &proj).unwrap();

    let d = start(&env);
    let list = ok(req(&env, json!({"op": "list", "workspace": proj})));
    assert_eq!(snapshot_ids(&list), ["v0-a", "v0-b", "v0-c"], "{list}");
    assert!(
        env.state_dir.join("state.json").exists(),
        "state.json written by the migration"
    );
    let st = status(&env);
    assert_eq!(
        ws_status(&st, &proj).unwrap()["ws_id"],
        ws_id.as_str(),
        "{st}"
    );
    stop(&d);
}

#[test]
fn scenario5_lost_image_gives_per_workspace_errors_and_recovers_live() {
    let Some(env) = TestEnv::new("daemon-s5") else {
        return;
    };
    let d = start(&env);
    let a = plain_dir(&env, "a");
    ok(req(&env, json!({"op": "init", "path": a})));
    let ws_id = ws_id_of(&env, &a);
    stop(&d);
    // Simulate a lost device: unmount, detach, move the image away.
    nix::mount::umount2(&env.mount, nix::mount::MntFlags::MNT_DETACH).unwrap();
    let moved = env.root.join("image-elsewhere.img");
    assert!(wait_until(Duration::from_secs(10), || {
        ws_ckpt_integration_tests::loops_under(&env.root).is_empty()
    }));
    fs::rename(&env.image, &moved).unwrap();

    let d = start(&env);
    let st = status(&env);
    let w = ws_status(&st, &a).unwrap_or_else(|| panic!("workspace vanished from status: {st}"));
    assert_eq!(w["condition"], "storage-unavailable", "{st}");
    let detail = format!("{}{}", w["detail"], st["findings"]);
    assert!(detail.contains(&ws_id), "{st}");
    assert!(!env.image.exists(), "no fresh empty image may be created");
    let r = req(
        &env,
        json!({"op": "checkpoint", "workspace": a, "snapshot": "x"}),
    );
    assert_ne!(r["ok"], true, "{r}");

    fs::rename(&moved, &env.image).unwrap();
    let back = wait_until(Duration::from_secs(20), || {
        ws_status(&status(&env), &a).is_some_and(|w| w["condition"] == "ready")
    });
    assert!(
        back,
        "storage did not come back without a restart: {}",
        status(&env)
    );
    assert_eq!(
        fs::read_to_string(a.join("README.txt")).unwrap(),
        "sample workspace\n"
    );
    stop(&d);
}

#[test]
fn scenario6_deleted_snapshot_is_missing_live_and_after_restart() {
    let Some(env) = TestEnv::new("daemon-s6") else {
        return;
    };
    let d = start(&env);
    let a = plain_dir(&env, "a");
    ok(req(
        &env,
        json!({"op": "checkpoint", "workspace": a, "snapshot": "c1"}),
    ));
    ok(req(
        &env,
        json!({"op": "checkpoint", "workspace": a, "snapshot": "c2"}),
    ));
    let ws_id = ws_id_of(&env, &a);
    let c1 = env.mount.join("snapshots").join(&ws_id).join("c1");
    assert!(c1.is_dir());
    btrfs(&["subvolume", "delete", &c1.display().to_string()]);
    // The daemon notices by itself (inotify → pass → mark-missing), before anyone asks.
    let marked = wait_until(Duration::from_secs(5), || {
        d.stderr().contains("mark-missing")
    });
    assert!(marked, "no mark-missing pass within 5 s\n{}", d.stderr());
    let seen = wait_until(Duration::from_secs(5), || {
        snapshot_is_missing(&ok(req(&env, json!({"op": "list", "workspace": a}))), "c1")
    });
    assert!(seen, "c1 not MISSING within 5 s without a restart");
    let r = req(
        &env,
        json!({"op": "rollback", "workspace": a, "snapshot": "c1"}),
    );
    assert_eq!(err_code(&r), "SnapshotMissing", "{r}");
    ok(req(
        &env,
        json!({"op": "rollback", "workspace": a, "snapshot": "c2"}),
    ));
    stop(&d);
    let d = start(&env);
    let list = ok(req(&env, json!({"op": "list", "workspace": a})));
    assert!(snapshot_is_missing(&list, "c1"), "{list}");
    assert!(!snapshot_is_missing(&list, "c2"), "{list}");
    stop(&d);
}

#[test]
fn dropin_workspace_is_picked_up_without_sighup() {
    let Some(env) = TestEnv::new("daemon-dropin") else {
        return;
    };
    let d = start(&env);
    let p = plain_dir(&env, "declared");
    fs::write(
        env.dropin_dir.join("60-declared.toml"),
        format!("[[workspace]]\npath = \"{}\"\n", p.display()),
    )
    .unwrap();
    let t = Instant::now();
    // Done when status reports it ready: the symlink appears before the init is recorded, and
    // status does not wait for a workspace's lock (locks by workspace).
    let done = wait_until(Duration::from_secs(10), || {
        p.is_symlink() && ws_status(&status(&env), &p).is_some_and(|w| w["condition"] == "ready")
    });
    assert!(done, "drop-in not applied without SIGHUP\n{}", d.stderr());
    eprintln!("drop-in applied after {:?}", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    stop(&d);
}

#[test]
fn sighup_and_reload_run_a_pass_and_bad_config_keeps_the_last_good_one() {
    let Some(env) = TestEnv::new("daemon-hup") else {
        return;
    };
    // Only events trigger passes here, so a pass after SIGHUP is the SIGHUP's doing.
    fs::write(
        &env.config,
        env.base_config()
            .replace("[daemon]\n", "[daemon]\nreconcile_interval = \"0\"\n"),
    )
    .unwrap();
    let d = start(&env);
    let before = ok(req(&env, json!({"op": "status"})))["daemon"]["last_pass"].clone();
    assert!(before.is_string());
    std::thread::sleep(Duration::from_millis(1100));
    assert!(d.signal(nix::sys::signal::Signal::SIGHUP));
    assert!(
        wait_until(Duration::from_secs(10), || ok(req(
            &env,
            json!({"op": "status"})
        ))["daemon"]["last_pass"]
            != before),
        "SIGHUP did not run a pass"
    );
    env.run(&["reload"]).ok();
    // A broken drop-in is reported and not applied; the daemon keeps serving.
    fs::write(
        env.dropin_dir.join("90-bad.toml"),
        "[daemon]\nno_such_key = 1\n",
    )
    .unwrap();
    assert!(d.signal(nix::sys::signal::Signal::SIGHUP));
    let reported = wait_until(Duration::from_secs(10), || {
        ok(req(&env, json!({"op": "status"})))["daemon"]["config_error"]
            .as_str()
            .is_some_and(|e| e.contains("no_such_key"))
    });
    assert!(
        reported,
        "config error not reported: {}",
        ok(req(&env, json!({"op": "status"})))
    );
    assert!(d.try_wait().is_none(), "daemon died on a bad config");
    fs::remove_file(env.dropin_dir.join("90-bad.toml")).unwrap();
    assert!(wait_until(Duration::from_secs(10), || ok(req(
        &env,
        json!({"op": "status"})
    ))["daemon"]["config_error"]
        .is_null()));
    stop(&d);
}

#[test]
fn second_daemon_is_refused_naming_the_pid() {
    let Some(env) = TestEnv::new("daemon-second") else {
        return;
    };
    let d = start(&env);
    let second = env.spawn(&["daemon"], &[]);
    let st = second
        .wait_timeout(Duration::from_secs(20))
        .expect("second daemon must exit");
    assert_eq!(st.code(), Some(1));
    let msg = second.stderr();
    assert!(
        msg.contains(&format!(
            "another ws-ckpt daemon (pid {}) is running",
            d.pid()
        )),
        "{msg}"
    );
    assert!(
        UnixStream::connect(env.socket_path()).is_ok(),
        "the first daemon still serves"
    );
    stop(&d);
}

#[test]
fn ready_and_status_are_sent_to_notify_socket() {
    let Some(env) = TestEnv::new("daemon-notify") else {
        return;
    };
    let sock_path = env.root.join("notify.sock");
    let listener = UnixDatagram::bind(&sock_path).unwrap();
    listener.set_read_timeout(Some(START_TIMEOUT)).unwrap();
    let d = start_env(&env, &[("NOTIFY_SOCKET", &sock_path.display().to_string())]);
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while !(got.contains("READY=1") && got.contains("STATUS=")) {
        let n = listener.recv(&mut buf).expect("no notification");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
        got.push('\n');
    }
    assert!(got.contains("STATUS=ok"), "{got}");
    stop(&d);
    let mut rest = String::new();
    listener
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    while let Ok(n) = listener.recv(&mut buf) {
        rest.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(rest.contains("STOPPING=1"), "{rest}");
}

#[test]
fn garbage_and_oversized_requests_leave_the_daemon_serving() {
    let Some(env) = TestEnv::new("daemon-garbage") else {
        return;
    };
    let d = start(&env);
    let w = Duration::from_secs(10);
    for bad in [
        &b"hello\n"[..],
        b"{\"v\":2,\"op\":\"status\"}\n",
        b"{\"v\":1,\"op\":\"rm-rf\"}\n",
        b"\xff\xfe\xfd\n",
        b"[]\n",
        b"{\"op\":\"status\"}\n",
    ] {
        let r = raw(&env, bad, w);
        assert_eq!(r.len(), 1, "{:?} -> {r:?}", String::from_utf8_lossy(bad));
        assert_eq!(r[0]["error"]["code"], "InvalidArgument", "{r:?}");
    }
    // Oversized: 2 MiB without a newline.
    let big = vec![b'a'; 2 << 20];
    let mut s = UnixStream::connect(env.socket_path()).unwrap();
    s.set_write_timeout(Some(w)).unwrap();
    s.set_read_timeout(Some(w)).unwrap();
    let _ = s.write_all(&big);
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.contains("InvalidArgument"), "{resp}");
    // Half a request, then hang up.
    drop(
        UnixStream::connect(env.socket_path())
            .unwrap()
            .write_all(b"{\"v\":1,\"op\":"),
    );
    // Several requests on one connection still work, and the daemon is alive.
    let line = "{\"v\":1,\"op\":\"status\"}\n";
    let r = raw(
        &env,
        format!("{line}{line}").as_bytes(),
        Duration::from_secs(3),
    );
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r.iter().all(|x| x["ok"] == true));
    assert!(d.try_wait().is_none());
    stop(&d);
}

/// A throwaway unprivileged user, removed on drop.
struct TempUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TempUser {
    fn new() -> TempUser {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("wsckpt-it-{:06x}", (std::process::id() ^ nanos) & 0xff_ffff);
        let out = Command::new(find_tool("useradd"))
            .args([
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                &name,
            ])
            .output()
            .expect("run useradd");
        assert!(
            out.status.success(),
            "useradd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let user = nix::unistd::User::from_name(&name)
            .unwrap()
            .expect("user just created");
        TempUser {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new(find_tool("userdel")).arg(&self.name).output();
    }
}

#[test]
fn unprivileged_user_owns_its_workspace_and_nothing_else() {
    let Some(env) = TestEnv::new("daemon-user") else {
        return;
    };
    let user = TempUser::new();
    let d = start(&env);
    let mine = plain_dir(&env, "mine");
    Command::new("chown")
        .args(["-R", &format!("{}:{}", user.uid, user.gid)])
        .arg(&mine)
        .status()
        .unwrap();
    let roots = plain_dir(&env, "roots");
    ok(req(&env, json!({"op": "init", "path": roots})));
    let root_dir = plain_dir(&env, "root-plain");
    let as_user = |args: &[&str]| env.run_as(user.uid, user.gid, args, &[]);
    let m = mine.display().to_string();

    as_user(&["checkpoint", "-w", &m, "-s", "u1"]).ok();
    fs::write(mine.join("README.txt"), "scribble\n").unwrap();
    as_user(&["rollback", "-w", &m, "-s", "u1", "--force"]).ok();
    assert_eq!(
        fs::read_to_string(mine.join("README.txt")).unwrap(),
        "sample workspace\n"
    );

    let refused = |args: &[&str], what: &str| {
        let r = as_user(args);
        assert_ne!(
            r.code(),
            Some(0),
            "{what} must be refused\n{}",
            r.describe()
        );
        r
    };
    let r = refused(
        &["checkpoint", "-w", &roots.display().to_string(), "-s", "x"],
        "checkpoint of root's workspace",
    );
    // Root's workspace answers exactly like a directory of root's that is none (SPEC 7.2: a
    // caller learns nothing about workspaces it may not use).
    let plain = refused(
        &[
            "checkpoint",
            "-w",
            &root_dir.display().to_string(),
            "-s",
            "x",
        ],
        "checkpoint of a root directory",
    );
    assert_eq!(
        r.stderr.replace(&roots.display().to_string(), "PATH"),
        plain
            .stderr
            .replace(&root_dir.display().to_string(), "PATH"),
        "{}\n{}",
        r.describe(),
        plain.describe()
    );
    // SPEC §7.2: another user's workspace is answered like one that does not exist.
    assert!(
        r.stderr.contains("workspace not found") && !r.stderr.contains("uid 0"),
        "{}",
        r.describe()
    );
    refused(
        &["rollback", "-w", &m, "-s", "../../etc"],
        "a ../ snapshot ID",
    );
    refused(&["checkpoint", "-w", &m, "-s", "../x"], "a ../ snapshot ID");
    refused(&["apply"], "apply");
    refused(
        &["init", &root_dir.display().to_string()],
        "init of a root-owned directory",
    );
    assert!(root_dir.is_dir() && !root_dir.is_symlink());
    // The same refusals over the raw socket would be identical; root still can do everything.
    ok(req(
        &env,
        json!({"op": "checkpoint", "workspace": roots, "snapshot": "r1"}),
    ));
    stop(&d);
}

#[test]
fn socket_is_world_writable_and_removed_on_stop() {
    let Some(env) = TestEnv::new("daemon-socket") else {
        return;
    };
    let d = start(&env);
    let mode = fs::symlink_metadata(env.socket_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o666);
    stop(&d);
    assert!(!env.socket_path().exists());
    assert!(!env.state_dir.join("daemon.lock").exists());
}

/// SPEC §11: 16 concurrent clients mixing checkpoints, rollbacks, lists and deletes on four
/// workspaces: no lost index entries, no deadlock, no error other than documented conflicts.
#[test]
fn sixteen_concurrent_clients_lose_nothing() {
    let Some(env) = TestEnv::new("daemon-concurrency") else {
        return;
    };
    let d = start(&env);
    let dirs: Vec<PathBuf> = (0..4).map(|i| plain_dir(&env, &format!("c{i}"))).collect();
    for (i, dir) in dirs.iter().enumerate() {
        ok(req(
            &env,
            json!({"op": "checkpoint", "workspace": dir, "snapshot": format!("base{i}")}),
        ));
    }
    let per_client = 6;
    let env = &env;
    let dirs = &dirs;
    std::thread::scope(|s| {
        for client in 0..16 {
            s.spawn(move || {
                let ws = client % 4;
                let dir = &dirs[ws];
                for n in 0..per_client {
                    let id = format!("k{client}-{n}");
                    ok(req(
                        env,
                        json!({"op": "checkpoint", "workspace": dir, "snapshot": id, "message": "concurrent"}),
                    ));
                    match n % 3 {
                        0 => {
                            ok(req(env, json!({"op": "list", "workspace": dir})));
                        }
                        1 => {
                            ok(req(
                                env,
                                json!({"op": "rollback", "workspace": dir, "snapshot": format!("base{ws}")}),
                            ));
                        }
                        _ => {
                            // Delete our own previous checkpoint: only we know its ID.
                            ok(req(
                                env,
                                json!({"op": "delete", "workspace": dir, "snapshot": format!("k{client}-{}", n - 1)}),
                            ));
                        }
                    }
                }
            });
        }
    });
    let list = ok(req(env, json!({"op": "list"})));
    let ids = snapshot_ids(&list);
    let mut expected: Vec<String> = (0..4).map(|i| format!("base{i}")).collect();
    for client in 0..16 {
        for n in 0..per_client {
            // Checkpoints n = 1 and 4 were deleted (by the n = 2 and 5 steps).
            if n % 3 != 1 {
                expected.push(format!("k{client}-{n}"));
            }
        }
    }
    let mut got = ids.clone();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "index entries lost or left behind");
    // Index and disk agree: every listed snapshot has its subvolume, none is MISSING.
    for id in &ids {
        assert!(!snapshot_is_missing(&list, id), "{id} MISSING");
    }
    let subvols: usize = dirs
        .iter()
        .map(|dir| {
            let ws = ws_id_of(env, dir);
            fs::read_dir(env.mount.join("snapshots").join(ws))
                .unwrap()
                .count()
        })
        .sum();
    assert_eq!(subvols, expected.len(), "one snapshot subvolume per entry");
    let names = |d: &Path| -> Vec<String> {
        fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let mut stray: Vec<String> = names(&env.mount)
        .into_iter()
        .filter(|n| n != "snapshots" && n != "gates")
        .collect();
    // Each workspace's storage gate holds its subvolume (`live`) and nothing else.
    for ws in names(&env.mount.join("gates")) {
        stray.extend(
            names(&env.mount.join("gates").join(&ws))
                .into_iter()
                .filter(|n| n != "live")
                .map(|n| format!("gates/{ws}/{n}")),
        );
    }
    assert!(stray.is_empty(), "temporary subvolumes left: {stray:?}");
    stop(&d);
}

/// Issue 4: the CLI prints the same thing whether it runs in-process or through the daemon.
#[test]
fn cli_output_is_the_same_in_process_and_through_the_daemon() {
    let Some(env) = TestEnv::new("daemon-same-output") else {
        return;
    };
    let a = plain_dir(&env, "a");
    let w = a.to_str().unwrap();
    env.run(&["checkpoint", "-w", w, "-s", "one", "-m", "first"])
        .ok();
    env.run(&[
        "checkpoint",
        "-w",
        w,
        "-s",
        "two \"quoted\" é",
        "--pin",
        "-m",
        "tab\there, newline\nthere",
        "--metadata",
        r#"{"tool":"edit","n":[1,2.5,-0.0,1e-7],"nested":{"empty":{},"list":[],"s":"\u001b\\"}}"#,
    ])
    .ok();
    let commands: [&[&str]; 6] = [
        &["list"],
        &["list", "-w", w],
        &["list", "-w", w, "--limit", "1"],
        &["list", "--cursor", "7b7d"],
        &["diff", "-w", w, "-f", "one", "-t", "two \"quoted\" é"],
        &["plan"],
    ];
    let capture = |env: &TestEnv| -> Vec<(String, String)> {
        commands
            .iter()
            .flat_map(|c| {
                // A cursor it never issued is refused (in JSON: the error document).
                let refused = c.contains(&"--cursor");
                let table = env.run(c);
                let mut j = vec!["--format", "json"];
                j.extend_from_slice(c);
                let json = env.run(&j);
                for r in [&table, &json] {
                    match refused {
                        true => assert_eq!(r.code(), Some(1), "{c:?}: {}", r.stderr),
                        false => {
                            r.ok();
                        }
                    }
                }
                // serde_json's pretty form of the value, whichever way it was printed.
                let v: serde_json::Value = serde_json::from_str(&json.stdout)
                    .unwrap_or_else(|e| panic!("{c:?}: not JSON ({e}): {}", json.stdout));
                assert_eq!(
                    json.stdout,
                    format!("{}\n", serde_json::to_string_pretty(&v).unwrap()),
                    "{c:?}"
                );
                [
                    (table.stdout.clone(), table.stderr.clone()),
                    (json.stdout.clone(), String::new()),
                ]
            })
            .collect()
    };
    let in_process = capture(&env);
    let d = start(&env);
    let via_daemon = capture(&env);
    assert_eq!(in_process, via_daemon);
    // A refusal is reported the same way too.
    let e1 = env.run(&["--format", "json", "rollback", "-w", w, "-s", "nope"]);
    stop(&d);
    let e2 = env.run(&["--format", "json", "rollback", "-w", w, "-s", "nope"]);
    assert_eq!(
        (e1.code(), e1.stdout.clone()),
        (e2.code(), e2.stdout.clone())
    );
    assert_eq!(e1.code(), Some(1));
}
