//! Unit tests of the daemon over the fake system: trigger debouncing, status over the
//! socket, a clean stop, a second daemon, the systemd summary.

use super::reconcile::{summarize, wait_for_trigger};
use super::server;
use super::shared::Shared;
use super::shutdown::stop;
use super::watch::Event;
use super::{open_engine, DEBOUNCE, MAX_DEBOUNCE};
use crate::api::{Caller, Request};
use crate::config::Config;
use crate::engine::{ApplyReport, Engine};
use crate::error::ErrorCode;
use serde_json::Value;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn a_burst_of_ticks_is_one_pass_and_shutdown_wins() {
    let (tx, rx) = mpsc::channel();
    for _ in 0..20 {
        tx.send(Event::Tick("x")).unwrap();
    }
    let t = Instant::now();
    assert_eq!(wait_for_trigger(&rx, None), Some("x"));
    assert!(t.elapsed() >= DEBOUNCE, "waits for the burst to end");
    assert!(rx.try_recv().is_err(), "the burst was swallowed");
    tx.send(Event::Tick("x")).unwrap();
    tx.send(Event::Reload).unwrap();
    assert_eq!(wait_for_trigger(&rx, None), Some("SIGHUP"));
    tx.send(Event::Tick("x")).unwrap();
    tx.send(Event::Shutdown).unwrap();
    assert_eq!(wait_for_trigger(&rx, None), None);
}

#[test]
fn the_interval_fires_when_idle_and_endless_ticks_are_bounded() {
    let (tx, rx) = mpsc::channel::<Event>();
    let t = Instant::now();
    assert_eq!(
        wait_for_trigger(&rx, Some(Instant::now() + Duration::from_millis(50))),
        Some("interval")
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    let feeder = std::thread::spawn(move || {
        for _ in 0..200 {
            if tx.send(Event::Tick("storm")).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let t = Instant::now();
    assert_eq!(wait_for_trigger(&rx, None), Some("storm"));
    assert!(
        t.elapsed() < MAX_DEBOUNCE + Duration::from_secs(1),
        "a storm must not starve passes"
    );
    drop(rx);
    feeder.join().unwrap();
}

fn fake_engine(dir: &Path) -> Engine {
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let d = dir.display();
    std::fs::write(
        etc.join("config.toml"),
        format!("[daemon]\nstate_dir = \"{d}/state\"\nruntime_dir = \"{d}/run\"\n[backend]\ntype = \"btrfs-loop\"\n[backend.btrfs-loop]\nimage = \"{d}/state/img\"\nmount = \"{d}/mnt\"\n"),
    )
    .unwrap();
    let config = Config::load(&etc.join("config.toml")).unwrap();
    Engine::open(
        config,
        Arc::new(crate::sys::fake::FakeSys::new()),
        "daemon",
        Duration::ZERO,
    )
    .unwrap()
}

#[test]
fn status_over_the_socket_describes_this_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = mpsc::channel();
    let shared = Shared::new(fake_engine(dir.path()), tx);
    shared.pass("test");
    let v = shared
        .handle(&Caller::this_process(), Request::Status { workspace: None })
        .unwrap()
        .decode::<Value>()
        .unwrap();
    let d = &v["daemon"];
    assert_eq!(d["running"], true, "{v}");
    assert_eq!(d["pid"], std::process::id());
    assert!(d["uptime_secs"].is_u64());
    assert!(d["last_pass"].is_string(), "{v}");
    assert!(d.get("config_error").is_none());
    // A broken config: kept running on the last good one, reported in status.
    std::fs::create_dir_all(dir.path().join("etc/config.d")).unwrap();
    std::fs::write(
        dir.path().join("etc/config.d/90-bad.toml"),
        "[daemon]\nbogus_key = 1\n",
    )
    .unwrap();
    shared.pass("test");
    let v = shared
        .handle(&Caller::this_process(), Request::Status { workspace: None })
        .unwrap()
        .decode::<Value>()
        .unwrap();
    let err = v["daemon"]["config_error"].as_str().unwrap_or_default();
    assert!(err.contains("bogus_key"), "{v}");
    assert_ne!(v["health"], "healthy");
    assert_eq!(
        shared.engine().unwrap().config().daemon.state_dir,
        dir.path().join("state")
    );
    // Reload requests tick the loop.
    let _ = shared.handle(&Caller::this_process(), Request::Reload);
    assert_eq!(rx.try_recv().unwrap(), Event::Tick("reload request"));
}

#[test]
fn stop_releases_the_lock_and_refuses_later_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::channel();
    let shared = Shared::new(fake_engine(dir.path()), tx);
    let lock_file = dir.path().join("state").join(crate::lock::LOCK_FILE);
    assert!(lock_file.exists());
    let (listener, socket) = server::bind(&dir.path().join("run")).unwrap();
    let stopping = Arc::clone(&shared.stopping);
    let h: Arc<server::Handler> = Arc::new(|_: &Caller, _: Request| Ok(Value::Null.into()));
    let accept = std::thread::spawn(move || server::accept_loop(listener, stopping, h, None));
    assert_eq!(stop(&shared, &socket, accept), 0);
    assert!(!lock_file.exists(), "clean stop removes the lock file");
    assert!(!socket.exists(), "clean stop removes the socket");
    let e = shared
        .handle(&Caller::this_process(), Request::Status { workspace: None })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Busy);
}

#[test]
fn second_daemon_is_refused_naming_the_pid() {
    let dir = tempfile::tempdir().unwrap();
    let first = fake_engine(dir.path());
    let e = match open_engine((*first.config()).clone()) {
        Err(e) => e,
        Ok(_) => panic!("second engine opened while the first holds the lock"),
    };
    assert!(
        e.message.contains(&format!(
            "another ws-ckpt daemon (pid {}) is running",
            std::process::id()
        )),
        "{}",
        e.message
    );
    first.close();
}

#[test]
fn summary_is_one_line_with_the_worst_news_first() {
    let r = ApplyReport {
        changed: false,
        actions: vec![],
        findings: vec![],
    };
    assert_eq!(summarize(&r, 3, None), "ok: 3 workspace(s)");
    assert_eq!(
        summarize(&r, 0, Some("x.toml:1:1: bad")),
        "ok: 0 workspace(s); config error: x.toml:1:1: bad"
    );
}
