//! Check modes leave no trace (issue 12 "check modes write to disk"): without a daemon,
//! `plan`, `status`, `list` and `apply --check` create no state directory, and once one
//! exists `apply --check` writes no audit line (a real `apply` writes exactly one). Real
//! btrfs (the loop backend of the test's own root); root only.

use std::fs;
use ws_ckpt_integration_tests::TestEnv;

#[test]
fn plan_status_list_and_apply_check_create_nothing_and_audit_nothing() {
    let Some(env) = TestEnv::new("check-modes") else {
        return;
    };
    if env.state_dir.exists() {
        fs::remove_dir(&env.state_dir).expect("the harness's state dir is empty");
    }
    for args in [
        vec!["--format", "json", "plan"],
        vec!["--format", "json", "status"],
        vec!["--format", "json", "list"],
        vec!["--format", "json", "apply", "--check"],
    ] {
        let r = env.run(&args);
        assert!(
            matches!(r.code(), Some(0) | Some(1) | Some(3)),
            "{}",
            r.describe()
        );
        assert!(
            !env.state_dir.exists(),
            "`{}` created {} (expected: check modes leave no trace)",
            args.join(" "),
            env.state_dir.display()
        );
    }
    // A real apply creates the state (and one audit line); a check afterwards adds none.
    env.run(&["apply"]).ok();
    let audit = env.state_dir.join("audit.jsonl");
    let lines = || {
        fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let after_apply = lines();
    assert_eq!(after_apply, 1, "a real apply writes one audit line");
    env.run(&["apply", "--check"]).ok();
    env.run(&["plan"]).ok();
    assert_eq!(lines(), after_apply, "apply --check wrote an audit line");
    assert!(
        !env.state_dir.join("daemon.lock").exists(),
        "a check left the lock file behind"
    );
}
