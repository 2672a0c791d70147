//! The `ws-ckpt` front binary (issue 9, `cli/src/front.rs`): a plain checkpoint, rollback or
//! JSON list is served through the daemon's socket by the front itself, printed exactly as
//! `ws-ckpt-full` prints it (table, JSON, errors, notes, exit codes); every other command
//! line, and one no daemon takes, runs in `ws-ckpt-full` unchanged.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use ws_ckpt_integration_tests::compat_support::{Compat, DAEMON_START};
use ws_ckpt_integration_tests::{bin_path, full_bin_path, wait_until, Run, TestEnv, RUN_TIMEOUT};

/// `program args…` with the environment [`Compat::command`] gives the front.
fn run_program(c: &Compat, program: &Path, args: &[&str]) -> Run {
    let template = c.command(args);
    let mut cmd = Command::new(program);
    for (k, v) in template.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.args(args).stdin(std::process::Stdio::null());
    c.env.run_command(cmd, RUN_TIMEOUT)
}

/// The same command line run by the front, then by `ws-ckpt-full`.
fn both(c: &Compat, args: &[&str]) -> (Run, Run) {
    (
        run_program(c, &bin_path(), args),
        run_program(c, &full_bin_path(), args),
    )
}

/// The outcome of a run: exit code, stdout, stderr.
fn outcome(r: &Run) -> (Option<i32>, &str, &str) {
    (r.status, &r.stdout, &r.stderr)
}

/// stdout with the timing line's seconds and the given snapshot IDs replaced.
fn normalized(text: &str, ids: &[&str]) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line = if line.starts_with("Completed in ") {
            "Completed in Ns".to_string()
        } else {
            ids.iter()
                .fold(line.to_string(), |l, id| l.replace(id, "ID"))
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A JSON checkpoint result without the fields that differ between two checkpoints.
fn comparable(stdout: &str) -> Value {
    let mut v: Value = serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}):\n{stdout}"));
    let text = v.to_string();
    for k in ["snapshot", "created_at"] {
        v.as_object_mut()
            .unwrap_or_else(|| panic!("not an object: {text}"))
            .remove(k)
            .unwrap_or_else(|| panic!("no {k} in {text}"));
    }
    v
}

#[test]
fn the_front_prints_what_ws_ckpt_full_prints() {
    let Some(c) = Compat::native("front-same-output") else {
        return;
    };
    let w = c.workspace("same");
    let front = bin_path();
    let full = full_bin_path();

    // Table mode, every option.
    let args = |id: &'static str| {
        vec![
            "checkpoint",
            "-w",
            w.as_str(),
            "-s",
            id,
            "-m",
            "before edit",
            "--metadata",
            r#"{"tool":"edit"}"#,
            "--pin",
        ]
    };
    let a = run_program(&c, &front, &args("front-1"));
    let b = run_program(&c, &full, &args("full-1"));
    assert_eq!(a.status, Some(0), "{a:?}");
    assert_eq!(b.status, Some(0), "{b:?}");
    assert_eq!(
        normalized(&a.stdout, &["front-1"]),
        normalized(&b.stdout, &["full-1"])
    );
    assert_eq!(normalized(&a.stdout, &["front-1"]), "ID\nCompleted in Ns\n");
    assert_eq!(a.stderr, b.stderr);

    // JSON mode, generated IDs.
    let json = [
        "--format",
        "json",
        "checkpoint",
        "-w",
        w.as_str(),
        "-m",
        "j",
    ];
    let (a, b) = both(&c, &json);
    assert_eq!((a.status, b.status), (Some(0), Some(0)), "{a:?}\n{b:?}");
    assert_eq!(comparable(&a.stdout), comparable(&b.stdout));
    assert_eq!(a.stderr, b.stderr);

    // Errors: the same two lines, the same JSON document, the same exit code.
    for format in ["table", "json"] {
        let dup = [
            "--format",
            format,
            "checkpoint",
            "-w",
            w.as_str(),
            "-s",
            "front-1",
        ];
        let (a, b) = both(&c, &dup);
        assert_eq!(a.status, Some(1), "{a:?}");
        assert_eq!(outcome(&a), outcome(&b));
        assert!(a.stderr.contains("already exists"), "{a:?}");
    }
    let unknown = ["checkpoint", "-w", "ws-000000"];
    let (a, b) = both(&c, &unknown);
    assert_eq!(a.status, Some(1), "{a:?}");
    assert_eq!(outcome(&a), outcome(&b));

    // `list --format json`: the bytes the daemon wrote, the same from both; an unknown
    // workspace, the same error.
    for args in [
        &["--format", "json", "list", "-w", w.as_str()][..],
        &["list", "--format", "json"],
        &["--format", "json", "list", "-w", "ws-000000"],
    ] {
        let (a, b) = both(&c, args);
        assert_eq!(outcome(&a), outcome(&b));
        let shape = if a.status == Some(0) {
            "["
        } else {
            "{\n  \"error\""
        };
        assert!(a.stdout.starts_with(shape), "{args:?}: {a:?}");
    }

    // Rollback: the same line (or JSON) and timing line; the same errors.
    for args in [
        &["rollback", "-w", w.as_str(), "-s", "front-1"][..],
        &["rollback", "-w", w.as_str(), "-n", "1", "--force"],
        &[
            "--format",
            "json",
            "rollback",
            "-w",
            w.as_str(),
            "-s",
            "full-1",
        ],
        &["rollback", "-w", w.as_str(), "-s", "no-such-snapshot"],
        &[
            "--format",
            "json",
            "rollback",
            "-w",
            w.as_str(),
            "-n",
            "99999",
        ],
    ] {
        let (a, b) = both(&c, args);
        assert_eq!(
            (a.status, normalized(&a.stdout, &[]), &a.stderr),
            (b.status, normalized(&b.stdout, &[]), &b.stderr),
            "{args:?}"
        );
    }
    let (a, _) = both(&c, &["rollback", "-w", w.as_str(), "-s", "front-1"]);
    assert_eq!(
        normalized(&a.stdout, &[]),
        format!("{w} rolled back to front-1\nCompleted in Ns\n"),
        "{a:?}"
    );
    // A process inside the workspace: the same refusal.
    let occupant = c.occupant(&w);
    let (a, b) = both(&c, &["rollback", "-w", w.as_str(), "-s", "front-1"]);
    assert_eq!(a.status, Some(1), "{a:?}");
    assert_eq!(outcome(&a), outcome(&b));
    drop(occupant);

    // A plain directory is initialized first: the same note on stderr.
    let p1 = c.plain_dir("plain-front");
    let p2 = c.plain_dir("plain-full");
    let a = run_program(&c, &front, &["checkpoint", "-w", &p1, "-s", "s1"]);
    let b = run_program(&c, &full, &["checkpoint", "-w", &p2, "-s", "s1"]);
    assert_eq!((a.status, b.status), (Some(0), Some(0)), "{a:?}\n{b:?}");
    assert!(a.stderr.starts_with("initialized "), "{a:?}");
    assert_eq!(
        a.stderr.replace(&p1, "P").split(" as workspace ").next(),
        b.stderr.replace(&p2, "P").split(" as workspace ").next()
    );
    assert_eq!(normalized(&a.stdout, &[]), normalized(&b.stdout, &[]));
}

#[test]
fn the_front_serves_its_commands_without_ws_ckpt_full_and_names_it_for_anything_else() {
    let Some(c) = Compat::native("front-alone") else {
        return;
    };
    let w = c.workspace("alone");
    // The front alone, in a directory without ws-ckpt-full.
    let dir = c.env.root.join("front-only");
    std::fs::create_dir_all(&dir).unwrap();
    let lone = dir.join("ws-ckpt");
    std::fs::copy(bin_path(), &lone).unwrap();

    let r = run_program(&c, &lone, &["checkpoint", "-w", &w, "-s", "lone-1"]);
    assert_eq!(
        r.status,
        Some(0),
        "the front must serve a checkpoint itself: {r:?}"
    );
    assert_eq!(normalized(&r.stdout, &["lone-1"]), "ID\nCompleted in Ns\n");
    let r = run_program(&c, &lone, &["rollback", "-w", &w, "-s", "lone-1"]);
    assert_eq!(
        r.status,
        Some(0),
        "the front must serve a rollback itself: {r:?}"
    );
    assert!(
        r.stdout
            .starts_with(&format!("{w} rolled back to lone-1\n")),
        "{r:?}"
    );
    let listed = run_program(&c, &lone, &["--format", "json", "list", "-w", &w]);
    assert_eq!(
        listed.status,
        Some(0),
        "the front must serve a JSON list itself: {listed:?}"
    );
    assert!(listed.stdout.contains("\"lone-1\""), "{listed:?}");

    // Anything else needs ws-ckpt-full: the error names the missing file and the fix.
    for args in [
        &["--version"][..],
        &["list", "-w", &w],
        &["checkpoint", "-w", &w, "--help"],
    ] {
        let r = run_program(&c, &lone, args);
        assert_eq!(r.status, Some(1), "{args:?}: {r:?}");
        let missing = dir.join("ws-ckpt-full");
        assert!(
            r.stderr
                .contains(&format!("error: cannot run {}", missing.display())),
            "{args:?}: {r:?}"
        );
        assert!(r.stderr.contains("reinstall ws-ckpt"), "{r:?}");
        assert!(r.stdout.is_empty(), "{r:?}");
    }
}

#[test]
fn a_checkpoint_no_daemon_takes_runs_in_ws_ckpt_full() {
    let Some(c) = Compat::native("front-no-daemon") else {
        return;
    };
    let w = c.workspace("nodaemon");
    c.stop_daemon();
    // No daemon: the front passes the command on, and ws-ckpt-full runs it in-process (root).
    let r = c.cli(&["checkpoint", "-w", &w, "-s", "in-process-1"]);
    assert_eq!(r.status, Some(0), "{r:?}");
    assert_eq!(
        normalized(&r.stdout, &["in-process-1"]),
        "ID\nCompleted in Ns\n"
    );
    let listed = c.cli(&["--format", "json", "list", "-w", &w]);
    assert!(listed.stdout.contains("\"in-process-1\""), "{listed:?}");
    // `--metadata` that is not JSON: ws-ckpt-full's error, not the front's.
    let r = c.cli(&["checkpoint", "-w", &w, "--metadata", "{oops"]);
    assert_eq!(r.status, Some(1), "{r:?}");
    assert!(r.stderr.contains("--metadata is not valid JSON"), "{r:?}");
    // Other commands and the argument forms the front does not read go to ws-ckpt-full too.
    let r = c.cli(&["checkpoint", "-w", &w, "--bogus"]);
    assert_eq!(r.status, Some(2), "clap's usage error: {r:?}");
    assert!(r.stderr.contains("Usage: ws-ckpt checkpoint"), "{r:?}");
}

#[test]
fn the_front_never_uses_a_daemon_of_another_config_at_its_main_files_socket() {
    // Daemon A serves its own config on its runtime directory.
    let Some(a) = Compat::native("front-foreign-a") else {
        return;
    };
    // B's main file names A's runtime directory; a drop-in moves B's socket elsewhere.
    let Some(b) = TestEnv::new("front-foreign-b") else {
        return;
    };
    let moved = b.root.join("run-moved");
    std::fs::create_dir_all(&moved).unwrap();
    let a_run = serde_json::to_string(&a.env.runtime_dir.display().to_string()).unwrap();
    let main: String = b
        .base_config()
        .lines()
        .map(|l| match l.starts_with("runtime_dir = ") {
            true => format!("runtime_dir = {a_run}\n"),
            false => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&b.config, main).unwrap();
    let moved_toml = serde_json::to_string(&moved.display().to_string()).unwrap();
    std::fs::write(
        b.dropin_dir.join("10-runtime.toml"),
        format!("[daemon]\nruntime_dir = {moved_toml}\n"),
    )
    .unwrap();
    let daemon_b = b.spawn(&["daemon"], &[]);
    let socket_b = moved.join(ws_ckpt::ipc::SOCKET_NAME);
    assert!(
        wait_until(DAEMON_START, || std::os::unix::net::UnixStream::connect(
            &socket_b
        )
        .is_ok()),
        "daemon B does not serve on {}: {}",
        socket_b.display(),
        daemon_b.stderr()
    );
    let ws = b.home.join("ws-b");
    TestEnv::make_sample_tree(&ws);
    let ws = ws.display().to_string();
    let init = b.run(&["init", &ws]);
    assert_eq!(init.status, Some(0), "{init:?}");

    // The front reaches A on its main file's socket; A does not take a request for B's
    // config, and the command runs through B's whole config in ws-ckpt-full: in B.
    let front = |args: &[&str]| {
        let mut cmd = Command::new(bin_path());
        cmd.env_remove("WS_CKPT_SOCKET")
            .env("WS_CKPT_CONFIG", &b.config)
            .args(args)
            .stdin(std::process::Stdio::null());
        b.run_command(cmd, RUN_TIMEOUT)
    };
    let r = front(&["checkpoint", "-w", &ws, "-s", "b-1"]);
    assert_eq!(r.status, Some(0), "{r:?}");
    assert_eq!(normalized(&r.stdout, &["b-1"]), "ID\nCompleted in Ns\n");
    let r = front(&["--format", "json", "list", "-w", &ws]);
    assert_eq!(r.status, Some(0), "{r:?}");
    assert!(r.stdout.contains("\"b-1\""), "{r:?}");
    let in_a = a.cli(&["--format", "json", "list"]);
    assert!(
        !in_a.stdout.contains("b-1") && !in_a.stdout.contains(&ws),
        "{in_a:?}"
    );
    let in_b = b.run(&["--format", "json", "list", "-w", &ws]);
    assert!(in_b.stdout.contains("\"b-1\""), "{in_b:?}");
}

/// A daemon of an earlier version refuses the config identity as an unknown field: the
/// front passes the command on, and `ws-ckpt-full` sends it as before.
#[test]
fn a_daemon_that_predates_the_config_identity_still_serves_the_front() {
    let Some(env) = TestEnv::new("front-old-daemon") else {
        return;
    };
    let listener = std::os::unix::net::UnixListener::bind(env.socket_path()).expect("bind");
    let result = r#"{"ws_id":"ws-0a0b0c","workspace":"/w/a","snapshot":"s1","created_at":"2026-01-01T00:00:00Z","pinned":false,"empty":false,"initialized":false}"#;
    listener.set_nonblocking(true).expect("nonblocking");
    let server = std::thread::spawn(move || {
        let mut requests = Vec::new();
        // At most two connections, each awaited 30 s (a front that gives up makes one).
        for _ in 0..2 {
            let mut accepted = None;
            wait_until(std::time::Duration::from_secs(30), || {
                accepted = listener.accept().ok();
                accepted.is_some()
            });
            let Some((stream, _)) = accepted else {
                break;
            };
            stream.set_nonblocking(false).expect("blocking");
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(&stream), &mut line)
                .expect("request");
            let answer = if line.contains("\"config\"") {
                r#"{"ok":false,"error":{"code":"InvalidArgument","message":"invalid request: unknown field `config`, expected one of `workspace`, `snapshot`, `message`, `metadata`, `pin`"}}"#.to_string()
            } else {
                format!(r#"{{"ok":true,"result":{result}}}"#)
            };
            std::io::Write::write_all(&mut &stream, format!("{answer}\n").as_bytes())
                .expect("answer");
            requests.push(line);
        }
        requests
    });
    let mut cmd = Command::new(bin_path());
    cmd.env_remove("WS_CKPT_SOCKET")
        .env("WS_CKPT_CONFIG", &env.config)
        .args(["checkpoint", "-w", "ws-0a0b0c", "-s", "s1"])
        .stdin(std::process::Stdio::null());
    let r = env.run_command(cmd, RUN_TIMEOUT);
    let requests = server.join().expect("server");
    assert_eq!(r.status, Some(0), "{r:?}");
    assert_eq!(normalized(&r.stdout, &[]), "s1\nCompleted in Ns\n");
    assert!(requests[0].contains("\"config\""), "{requests:?}");
    assert!(!requests[1].contains("\"config\""), "{requests:?}");
}
