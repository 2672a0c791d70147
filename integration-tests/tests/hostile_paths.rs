//! Hostile-user suite, the workspace path after init (issue 7, attacks 5 and 10; SPEC §7.3,
//! §5.1): a parent replaced by a symlink is a finding and never followed, by the next passes
//! nor by a pending release; names that fit NAME_MAX work; an init that keeps failing after its
//! copy backs off instead of copying again every pass, and says why.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use ws_ckpt_integration_tests::hostile_support::{
    all_strings, build_tree, bursts, chown, objects_where, toml_str, Hostile, InotifyLog, Setup,
    TreeSpec,
};
use ws_ckpt_integration_tests::TestEnv;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Findings in root's status about the workspace `ws` at `path` (by ws_id, path or message).
fn findings_about(h: &Hostile, ws: &str, path: &Path) -> Vec<serde_json::Value> {
    let st = h.root_status();
    let p = s(path);
    objects_where(&st["findings"], &|m| {
        m.get("kind").is_some()
            && (m.get("ws_id").and_then(|v| v.as_str()) == Some(ws)
                || m.values()
                    .any(|v| v.as_str().is_some_and(|x| x.contains(&p))))
    })
    .into_iter()
    .cloned()
    .collect()
}

/// Attack 5: after `init ~/p/w`, alice replaces `~/p` by a symlink to root's directory. The
/// next passes (an `apply` and the daemon's own) must create nothing through it (no
/// `repair-symlink` into root's directory) and report a finding; so must a release declared
/// while the parent is swapped. Once she puts `~/p` back, her data is intact.
#[test]
fn attack05_a_swapped_parent_is_reported_never_followed() {
    let setup = Setup {
        reconcile_interval: "1s".into(),
        ..Setup::default()
    };
    let Some(h) = Hostile::new("hostile-a05", setup) else {
        return;
    };
    let p = h.alice.path("p");
    fs::create_dir(&p).unwrap();
    chown(&p, h.alice.uid, h.alice.gid);
    let w = p.join("w");
    build_tree(&w, &h.alice, &TreeSpec::default());
    let before = TestEnv::tree_digest(&w);
    h.as_user(&h.alice, &["init", &s(&w)]).ok();
    let ws = h.ws_id(&w);

    h.sh_as(
        &h.alice,
        &format!("mv p p.moved && ln -s '{}' p", h.victims.etc.display()),
    );
    let apply = h.root(&["--format", "json", "apply"]);
    eprintln!("apply after the swap: {}", apply.describe());
    h.wait_passes(2, Duration::from_secs(30));
    h.assert_no_damage(
        "passes after alice swapped the workspace's parent for a symlink to root's directory",
    );
    let f = findings_about(&h, &ws, &w);
    assert!(
        !f.is_empty(),
        "no finding reports that the parent of {} was replaced (expected a finding, nothing created); root's status: {:#}",
        w.display(),
        h.root_status()
    );

    // A release declared while the parent is swapped.
    h.add_to_declaration(&w, "state = \"absent\"");
    h.wait_passes(2, Duration::from_secs(30));
    let rel = h.as_user(&h.alice, &["release", &s(&w)]);
    eprintln!("alice's release while swapped: {}", rel.describe());
    h.wait_passes(1, Duration::from_secs(30));
    h.assert_no_damage(
        "a release pending while the workspace's parent was a symlink to root's directory",
    );
    assert!(
        !findings_about(&h, &ws, &w).is_empty(),
        "the swapped parent of {} is no longer reported while the release is pending",
        w.display()
    );

    // Alice puts her directory back: nothing of hers was lost.
    h.sh_as(&h.alice, "rm p && mv p.moved p");
    h.root(&["apply"]);
    h.wait_passes(2, Duration::from_secs(30));
    let after = TestEnv::tree_digest(&w);
    assert_eq!(
        after,
        before,
        "alice's data at {} differs after she restored its parent",
        w.display()
    );
    h.assert_no_damage("restoring the parent");
}

/// Attack 10, long names: a directory whose name is 250 bytes (fits NAME_MAX) inits,
/// checkpoints and releases like any other, data identical.
#[test]
fn attack10a_a_250_byte_name_inits_and_releases() {
    let Some(h) = Hostile::new("hostile-a10a", Setup::default()) else {
        return;
    };
    let name = format!("long-{}", "n".repeat(245));
    assert_eq!(name.len(), 250);
    let d = h.alice.path(&name);
    build_tree(&d, &h.alice, &TreeSpec::default());
    let before = TestEnv::tree_digest(&d);
    h.as_user(&h.alice, &["init", &s(&d)]).ok();
    assert!(
        fs::symlink_metadata(&d).is_ok_and(|m| m.file_type().is_symlink()),
        "{} is not a workspace after init",
        d.display()
    );
    assert_eq!(TestEnv::tree_digest(&d), before, "data changed by init");
    h.as_user(&h.alice, &["checkpoint", "-w", &s(&d), "-s", "l1"])
        .ok();
    h.as_user(&h.alice, &["release", &s(&d)]).ok();
    assert!(
        fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()),
        "{} is not a plain directory after release",
        d.display()
    );
    assert_eq!(TestEnv::tree_digest(&d), before, "data changed by release");
    h.assert_no_damage("the long-name init and release");
}

/// Attack 10, retries: root declares alice's `~/churn` while alice keeps rewriting a file in
/// it, so every init fails after its copy (verification). With a pass every second, the
/// daemon must back off (the daemon's reads of a file nobody else opens, counted by inotify,
/// show how often it copied) and report the failure as a finding.
#[test]
fn attack10b_an_init_failing_after_its_copy_backs_off() {
    let setup = Setup {
        reconcile_interval: "1s".into(),
        ..Setup::default()
    };
    let Some(h) = Hostile::new("hostile-a10b", setup) else {
        return;
    };
    let churn = h.alice.path("churn");
    build_tree(
        &churn,
        &h.alice,
        &TreeSpec {
            top_files: 300,
            ..TreeSpec::default()
        },
    );
    for (name, text) in [
        ("0-sentinel.dat", "read only by the daemon\n"),
        ("zz-churn.txt", "churn\n"),
    ] {
        let f = churn.join(name);
        fs::write(&f, text).unwrap();
        chown(&f, h.alice.uid, h.alice.gid);
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let writer = h.attacker(
        &h.alice,
        "writer",
        &["--file", &s(&churn.join("zz-churn.txt"))],
        120,
    );
    let opens = InotifyLog::watch(&churn, libc::IN_OPEN);
    let dropin = h.env.dropin_dir.join("60-hostile-churn.toml");
    fs::write(
        &dropin,
        format!("[[workspace]]\npath = {}\n", toml_str(&s(&churn))),
    )
    .unwrap();
    let reload = h.root(&["reload"]);
    eprintln!("reload: {}", reload.describe());

    let window = Duration::from_secs(12);
    let start = Instant::now();
    let mut passes = std::collections::BTreeSet::new();
    while start.elapsed() < window {
        if let Some(p) = h.last_pass() {
            passes.insert(p);
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    writer.assert_running("the observation window");
    let wst = writer.stop();
    let times: Vec<Instant> = opens
        .events()
        .iter()
        .filter(|e| e.name == "0-sentinel.dat")
        .map(|e| e.at)
        .collect();
    let attempts = bursts(&times, Duration::from_millis(300));
    let passes = passes.len();
    eprintln!(
        "writer: {wst}; {passes} passes, {attempts} copy attempts ({} opens of the sentinel)",
        times.len()
    );
    assert!(
        passes >= 8,
        "only {passes} reconcile passes in {window:?} with reconcile_interval = 1s: cannot judge the backoff"
    );
    assert!(
        attempts >= 1,
        "the daemon never tried to init {}",
        churn.display()
    );
    assert!(
        attempts <= passes / 2 + 1,
        "the init of {} that fails after its copy was copied again {attempts} times in {passes} passes (expected: exponential backoff, not a retry every pass)",
        churn.display()
    );
    let st = h.root_status();
    let about = objects_where(&st["findings"], &|m| {
        m.values()
            .any(|v| v.as_str().is_some_and(|x| x.contains(&s(&churn))))
    });
    assert!(
        !about.is_empty(),
        "no finding reports the failing init of {} and its error; root's status: {st:#}",
        churn.display()
    );
    let text = all_strings(&serde_json::Value::Array(
        about.into_iter().cloned().collect(),
    ))
    .join(" ");
    assert!(
        text.len() > s(&churn).len() + 10,
        "the finding does not say what failed: {text}"
    );
    h.assert_no_damage("the failing init");
}
