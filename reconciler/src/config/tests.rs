//! Unit tests of parsing, validation, merging and rendering.

use super::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const MAIN: &str = "/etc/ws-ckpt/config.toml";

fn one(text: &str) -> Result<Config, ConfigError> {
    Config::from_sources(Path::new(MAIN), &[(PathBuf::from(MAIN), text.to_string())])
}

fn many(files: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let sources: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(f, t)| (PathBuf::from(f), t.to_string()))
        .collect();
    Config::from_sources(Path::new(MAIN), &sources)
}

/// Assert that `text` is rejected at `line:column` with `key`, and the message contains
/// `needle`.
#[track_caller]
fn rejects(text: &str, line: usize, column: usize, key: &str, needle: &str) {
    let err = one(text).expect_err("config should be rejected");
    assert_eq!(err.file, PathBuf::from(MAIN), "{err}");
    assert_eq!((err.line, err.column), (Some(line), Some(column)), "{err}");
    assert_eq!(err.key.as_deref(), Some(key), "{err}");
    assert!(err.message.contains(needle), "{err:?} lacks {needle:?}");
}

#[test]
fn empty_file_gives_spec_defaults() {
    let c = one("").unwrap();
    let mut expected = Config::defaults(Path::new(MAIN));
    expected.files = vec![PathBuf::from(MAIN)];
    assert_eq!(c, expected);
    assert_eq!(c.daemon.state_dir, PathBuf::from("/var/lib/ws-ckpt"));
    assert_eq!(c.daemon.runtime_dir, PathBuf::from("/run/ws-ckpt"));
    assert_eq!(c.daemon.reconcile_interval, Duration::from_secs(60));
    assert_eq!(c.daemon.log_level, "info");
    assert_eq!(c.backend.kind, BackendKind::Auto);
    assert_eq!(
        c.backend.btrfs_loop.image,
        PathBuf::from("/var/lib/ws-ckpt/btrfs-data.img")
    );
    assert_eq!(
        c.backend.btrfs_loop.mount,
        PathBuf::from("/mnt/btrfs-workspace")
    );
    assert_eq!(c.backend.btrfs_loop.img_size_gib, 30);
    assert_eq!(c.backend.btrfs_loop.img_max_percent, 40);
    assert_eq!(c.backend.btrfs_base.btrfs_mount, None);
    assert!(!c.retention.auto_cleanup);
    assert_eq!(c.retention.keep, Keep::Count(20));
    assert_eq!(c.retention.interval, Duration::from_secs(86_400));
    assert!(c.access.user_init);
    assert_eq!(c.dropin_dir, PathBuf::from("/etc/ws-ckpt/config.d"));
}

#[test]
fn spec_sample_parses() {
    let text = r#"
[daemon]
state_dir = "/var/lib/ws-ckpt"
runtime_dir = "/run/ws-ckpt"
reconcile_interval = "60s"        # periodic full pass; "0" = only on events
log_level = "info"

[backend]
type = "auto"                     # auto | btrfs-loop | btrfs-base

[backend.btrfs-loop]
image = "/var/lib/ws-ckpt/btrfs-data.img"
mount = "/mnt/btrfs-workspace"
img_size = 30
img_max_percent = 40

[backend.btrfs-base]
btrfs_mount = "/data"

[retention]
auto_cleanup = false
keep = 20
interval = "24h"

[access]
user_init = true

[[workspace]]
path = "/home/alice/project"
id = "ws-1a2b3c"
keep = 50
auto_cleanup = true
allow_users = ["bob"]
allow_groups = ["agents"]
state = "present"
"#;
    let c = one(text).unwrap();
    assert_eq!(
        c.backend.btrfs_base.btrfs_mount,
        Some(PathBuf::from("/data"))
    );
    assert_eq!(c.workspaces.len(), 1);
    let w = &c.workspaces[0];
    assert_eq!(w.path, PathBuf::from("/home/alice/project"));
    assert_eq!(w.id.as_deref(), Some("ws-1a2b3c"));
    assert_eq!(w.keep, Some(Keep::Count(50)));
    assert_eq!(w.auto_cleanup, Some(true));
    assert_eq!(w.allow_users, vec!["bob".to_string()]);
    assert_eq!(w.allow_groups, vec!["agents".to_string()]);
    assert_eq!(w.state, DeclState::Present);
    assert_eq!(w.source, PathBuf::from(MAIN));
    assert_eq!(c.effective_keep(w), Keep::Count(50));
    assert!(c.effective_auto_cleanup(w));
}

#[test]
fn image_defaults_to_state_dir_unless_set() {
    let c = one("[daemon]\nstate_dir = \"/tmp/demo/state\"\n").unwrap();
    assert_eq!(
        c.backend.btrfs_loop.image,
        PathBuf::from("/tmp/demo/state/btrfs-data.img")
    );
    // state_dir moved in a later file still moves the default image.
    let c = many(&[
        (MAIN, ""),
        (
            "/etc/ws-ckpt/config.d/10.toml",
            "[daemon]\nstate_dir = \"/s\"\n",
        ),
    ])
    .unwrap();
    assert_eq!(
        c.backend.btrfs_loop.image,
        PathBuf::from("/s/btrfs-data.img")
    );
    // An explicit image wins whatever the order.
    let c = many(&[
        (MAIN, "[backend.btrfs-loop]\nimage = \"/img/x.img\"\n"),
        (
            "/etc/ws-ckpt/config.d/10.toml",
            "[daemon]\nstate_dir = \"/s\"\n",
        ),
    ])
    .unwrap();
    assert_eq!(c.backend.btrfs_loop.image, PathBuf::from("/img/x.img"));
}

#[test]
fn later_files_override_scalars_and_workspaces_accumulate() {
    let c = many(&[
            (
                MAIN,
                "[daemon]\nlog_level = \"warn\"\nreconcile_interval = \"5m\"\n[retention]\nkeep = 5\n[[workspace]]\npath = \"/a\"\n",
            ),
            (
                "/etc/ws-ckpt/config.d/10-x.toml",
                "[daemon]\nlog_level = \"debug\"\n[[workspace]]\npath = \"/b\"\n",
            ),
            (
                "/etc/ws-ckpt/config.d/20-y.toml",
                "[retention]\nkeep = \"30d\"\n[backend]\ntype = \"btrfs-base\"\n",
            ),
        ])
        .unwrap();
    assert_eq!(c.daemon.log_level, "debug");
    assert_eq!(c.daemon.reconcile_interval, Duration::from_secs(300));
    assert_eq!(
        c.retention.keep,
        Keep::Age(Duration::from_secs(30 * 86_400))
    );
    assert_eq!(c.backend.kind, BackendKind::BtrfsBase);
    let paths: Vec<_> = c.workspaces.iter().map(|w| w.path.clone()).collect();
    assert_eq!(paths, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
    assert_eq!(
        c.workspaces[1].source,
        PathBuf::from("/etc/ws-ckpt/config.d/10-x.toml")
    );
    assert_eq!(c.files.len(), 3);
    assert_eq!(c.effective_keep(&c.workspaces[0]), c.retention.keep);
}

#[test]
fn identical_redeclaration_is_fine_conflicting_one_names_both_files() {
    let c = many(&[
        (MAIN, "[[workspace]]\npath = \"/a/b\"\nkeep = 3\n"),
        (
            "/etc/ws-ckpt/config.d/50-x.toml",
            "[[workspace]]\npath = \"/a/b/\"\nkeep = 3\n",
        ),
    ])
    .unwrap();
    assert_eq!(c.workspaces.len(), 1);
    assert_eq!(c.workspaces[0].source, PathBuf::from(MAIN));

    let err = many(&[
        (MAIN, "[[workspace]]\npath = \"/a/b\"\nkeep = 3\n"),
        (
            "/etc/ws-ckpt/config.d/50-x.toml",
            "# comment\n[[workspace]]\npath = \"/a/b/\"\nstate = \"absent\"\n",
        ),
    ])
    .unwrap_err();
    assert_eq!(err.file, PathBuf::from("/etc/ws-ckpt/config.d/50-x.toml"));
    assert_eq!((err.line, err.column), (Some(3), Some(8)));
    assert_eq!(err.key.as_deref(), Some("workspace.path"));
    assert!(
        err.message.contains("/etc/ws-ckpt/config.toml:2:8"),
        "{err}"
    );
    assert!(err.message.contains("keep, state"), "{err}");
    let shown = err.to_string();
    assert!(
        shown.starts_with("/etc/ws-ckpt/config.d/50-x.toml:3:8: `workspace.path`: workspace /a/b"),
        "{shown}"
    );
}

#[test]
fn conflicting_duplicate_within_one_file() {
    rejects(
        "[[workspace]]\npath = \"/a\"\n\n[[workspace]]\npath = \"/a\"\nid = \"x1\"\n",
        5,
        8,
        "workspace.path",
        "/etc/ws-ckpt/config.toml:2:8 with different id",
    );
}

#[test]
fn duplicate_ids_across_paths_are_rejected() {
    let err = many(&[
        (MAIN, "[[workspace]]\npath = \"/a\"\nid = \"same\"\n"),
        (
            "/x/config.d/a.toml",
            "[[workspace]]\npath = \"/b\"\nid = \"same\"\n",
        ),
    ])
    .unwrap_err();
    assert_eq!(err.file, PathBuf::from("/x/config.d/a.toml"));
    assert_eq!(
        (err.line, err.column, err.key.as_deref()),
        (Some(3), Some(6), Some("workspace.id"))
    );
    assert!(err.message.contains("/a"), "{err}");
}

#[test]
fn legacy_keys_are_aliases_and_new_keys_win_in_one_file() {
    let c = one(
            "auto_cleanup = true\nauto_cleanup_keep = 7\nauto_cleanup_interval_secs = 3600\nhealth_check_interval_secs = 30\n",
        )
        .unwrap();
    assert!(c.retention.auto_cleanup);
    assert_eq!(c.retention.keep, Keep::Count(7));
    assert_eq!(c.retention.interval, Duration::from_secs(3600));
    assert_eq!(c.daemon.reconcile_interval, Duration::from_secs(30));

    let c = one(
            "auto_cleanup = true\nauto_cleanup_keep = 7\nauto_cleanup_interval_secs = 3600\nhealth_check_interval_secs = 30\n\
             [daemon]\nreconcile_interval = \"0\"\n[retention]\nauto_cleanup = false\nkeep = 9\ninterval = \"2h\"\n",
        )
        .unwrap();
    assert!(!c.retention.auto_cleanup);
    assert_eq!(c.retention.keep, Keep::Count(9));
    assert_eq!(c.retention.interval, Duration::from_secs(7200));
    assert_eq!(c.daemon.reconcile_interval, Duration::ZERO);

    // Across files, the later file wins whichever spelling it uses.
    let c = many(&[
        (MAIN, "[retention]\nkeep = 9\n"),
        ("/d/x.toml", "auto_cleanup_keep = 4\n"),
    ])
    .unwrap();
    assert_eq!(c.retention.keep, Keep::Count(4));

    rejects(
        "auto_cleanup_keep = -1\n",
        1,
        21,
        "auto_cleanup_keep",
        "between 1 and",
    );
    rejects(
        "auto_cleanup_interval_secs = 0\n",
        1,
        30,
        "auto_cleanup_interval_secs",
        "at least 1",
    );
    rejects(
        "health_check_interval_secs = \"60s\"\n",
        1,
        30,
        "health_check_interval_secs",
        "integer",
    );
}

#[test]
fn durations_in_config() {
    let c = one(
        "[daemon]\nreconcile_interval = \"0\"\n[retention]\ninterval = \"2w\"\nkeep = \"90s\"\n",
    )
    .unwrap();
    assert_eq!(c.daemon.reconcile_interval, Duration::ZERO);
    assert_eq!(c.retention.interval, Duration::from_secs(14 * 86_400));
    assert_eq!(c.retention.keep, Keep::Age(Duration::from_secs(90)));
    rejects(
        "[daemon]\nreconcile_interval = \"60\"\n",
        2,
        22,
        "daemon.reconcile_interval",
        "without a unit",
    );
    rejects(
        "[daemon]\nreconcile_interval = 60\n",
        2,
        22,
        "daemon.reconcile_interval",
        "\"60s\"",
    );
    rejects(
        "[daemon]\nreconcile_interval = \"1y\"\n",
        2,
        22,
        "daemon.reconcile_interval",
        "`y`",
    );
    rejects(
        "[retention]\ninterval = \"0\"\n",
        2,
        12,
        "retention.interval",
        "greater than zero",
    );
    rejects(
        "[retention]\ninterval = true\n",
        2,
        12,
        "retention.interval",
        "a boolean",
    );
    rejects(
        "[retention]\nkeep = \"20\"\n",
        2,
        8,
        "retention.keep",
        "keep = 20",
    );
    rejects(
        "[retention]\nkeep = 0\n",
        2,
        8,
        "retention.keep",
        "at least 1",
    );
    rejects(
        "[retention]\nkeep = \"0\"\n",
        2,
        8,
        "retention.keep",
        "keep = 0",
    );
    rejects(
        "[retention]\nkeep = \"3 days\"\n",
        2,
        8,
        "retention.keep",
        "invalid duration",
    );
    rejects(
        "[[workspace]]\npath = \"/a\"\nkeep = 1.5\n",
        3,
        8,
        "workspace.keep",
        "a float",
    );
}

#[test]
fn rejects_unknown_keys_with_position() {
    rejects(
        "[daemon]\nstate_dri = \"/x\"\n",
        2,
        1,
        "daemon.state_dri",
        "unknown field `state_dri`",
    );
    rejects("bogus = 1\n", 1, 1, "bogus", "unknown field `bogus`");
    rejects(
        "[backend.btrfs-loop]\nsize = 3\n",
        2,
        1,
        "backend.btrfs-loop.size",
        "unknown field",
    );
    rejects(
        "[[workspace]]\npath = \"/a\"\nowner = \"me\"\n",
        3,
        1,
        "workspace.owner",
        "unknown field",
    );
    let err = one("[nope]\nx = 1\n").unwrap_err();
    assert_eq!(err.line, Some(1), "{err}");
    assert!(err.message.contains("nope"), "{err}");
}

#[test]
fn rejects_wrong_types_with_position() {
    rejects(
        "[daemon]\nstate_dir = 5\n",
        2,
        13,
        "daemon.state_dir",
        "invalid type",
    );
    rejects(
        "[access]\nuser_init = \"yes\"\n",
        2,
        13,
        "access.user_init",
        "invalid type",
    );
    rejects(
        "[backend.btrfs-loop]\nimg_size = \"30G\"\n",
        2,
        12,
        "backend.btrfs-loop.img_size",
        "invalid type",
    );
    rejects(
        "[[workspace]]\npath = \"/a\"\nallow_users = \"bob\"\n",
        3,
        15,
        "workspace.allow_users",
        "invalid type",
    );
    rejects("auto_cleanup = 1\n", 1, 16, "auto_cleanup", "invalid type");
}

#[test]
fn rejects_syntax_errors_with_position() {
    let err = one("[daemon]\nstate_dir = \"/x\n").unwrap_err();
    assert_eq!(err.line, Some(2), "{err}");
    assert!(err.column.is_some(), "{err}");
    assert!(
        err.to_string().starts_with("/etc/ws-ckpt/config.toml:2:"),
        "{err}"
    );
    let err = one("[daemon]\nlog_level = \"info\"\nlog_level = \"debug\"\n").unwrap_err();
    assert_eq!(err.line, Some(3), "{err}");
}

#[test]
fn rejects_bad_paths() {
    rejects(
        "[daemon]\nstate_dir = \"var/lib\"\n",
        2,
        13,
        "daemon.state_dir",
        "relative path",
    );
    rejects(
        "[daemon]\nruntime_dir = \"/run/../x\"\n",
        2,
        15,
        "daemon.runtime_dir",
        "`..`",
    );
    rejects(
        "[backend.btrfs-loop]\nimage = \"img\"\n",
        2,
        9,
        "backend.btrfs-loop.image",
        "relative",
    );
    rejects(
        "[backend.btrfs-loop]\nmount = \"\"\n",
        2,
        9,
        "backend.btrfs-loop.mount",
        "empty",
    );
    rejects(
        "[backend.btrfs-base]\nbtrfs_mount = \"data\"\n",
        2,
        15,
        "backend.btrfs-base.btrfs_mount",
        "relative",
    );
    rejects(
        "[[workspace]]\npath = \"project\"\n",
        2,
        8,
        "workspace.path",
        "relative",
    );
    rejects(
        "[[workspace]]\n  path = \"/a/../b\"\n",
        2,
        10,
        "workspace.path",
        "`..`",
    );
    rejects(
        "\n[[workspace]]\nid = \"x\"\n",
        2,
        1,
        "workspace",
        "missing field `path`",
    );
}

#[test]
fn normalizes_trailing_slashes_and_dots() {
    let c = one("[daemon]\nstate_dir = \"/srv/ws//state/\"\n[[workspace]]\npath = \"/a/./b/\"\n")
        .unwrap();
    assert_eq!(c.daemon.state_dir, PathBuf::from("/srv/ws/state"));
    assert_eq!(c.workspaces[0].path, PathBuf::from("/a/b"));
    assert!(c.workspace(Path::new("/a/b/")).is_some());
    assert!(c.workspace(Path::new("/a/b")).is_some());
    assert!(c.workspace(Path::new("/a")).is_none());
    assert!(c.workspace(Path::new("/a/b/c")).is_none());
}

#[test]
fn reserved_workspace_id_is_rejected() {
    // On the loop backend `<data_root>/snapshots` is the snapshots root itself.
    rejects(
        "[[workspace]]\npath = \"/a\"\nid = \"snapshots\"\n",
        3,
        6,
        "workspace.id",
        "own directories",
    );
}

#[test]
fn rejects_bad_ids_names_states_and_ranges() {
    rejects(
        "[[workspace]]\npath = \"/a\"\nid = \"../x\"\n",
        3,
        6,
        "workspace.id",
        "invalid workspace id",
    );
    rejects(
        "[[workspace]]\npath = \"/a\"\nid = \"\"\n",
        3,
        6,
        "workspace.id",
        "invalid workspace id",
    );
    let long = "a".repeat(65);
    rejects(
        &format!("[[workspace]]\npath = \"/a\"\nid = \"{long}\"\n"),
        3,
        6,
        "workspace.id",
        "invalid",
    );
    assert!(one(&format!(
        "[[workspace]]\npath = \"/a\"\nid = \"{}\"\n",
        "a".repeat(64)
    ))
    .is_ok());
    rejects(
        "[[workspace]]\npath = \"/a\"\nid = \"-x\"\n",
        3,
        6,
        "workspace.id",
        "invalid",
    );
    rejects(
        "[[workspace]]\npath = \"/a\"\nallow_users = [\"bob\", \"\"]\n",
        3,
        23,
        "workspace.allow_users",
        "empty user",
    );
    rejects(
        "[[workspace]]\npath = \"/a\"\nallow_groups = [\" \"]\n",
        3,
        17,
        "workspace.allow_groups",
        "empty group",
    );
    rejects(
        "[[workspace]]\npath = \"/a\"\nstate = \"gone\"\n",
        3,
        9,
        "workspace.state",
        "\"present\" or \"absent\"",
    );
    rejects(
        "[backend]\ntype = \"zfs\"\n",
        2,
        8,
        "backend.type",
        "btrfs-loop",
    );
    rejects(
        "[daemon]\nlog_level = \"verbose\"\n",
        2,
        13,
        "daemon.log_level",
        "error, warn, info, debug, trace",
    );
    rejects(
        "[backend.btrfs-loop]\nimg_max_percent = 0\n",
        2,
        19,
        "backend.btrfs-loop.img_max_percent",
        "between 1 and 100",
    );
    rejects(
        "[backend.btrfs-loop]\nimg_max_percent = 101\n",
        2,
        19,
        "backend.btrfs-loop.img_max_percent",
        "between 1 and 100",
    );
    rejects(
        "[backend.btrfs-loop]\nimg_size = 0\n",
        2,
        12,
        "backend.btrfs-loop.img_size",
        "at least 1",
    );
    let c = one("[[workspace]]\npath = \"/a\"\nstate = \"absent\"\n").unwrap();
    assert_eq!(c.workspaces[0].state, DeclState::Absent);
}

#[test]
fn column_counts_characters_not_bytes() {
    rejects(
        "# ünïcödé\n[[workspace]]\npath = \"/a\" # é\nid = \"é\"\n",
        4,
        6,
        "workspace.id",
        "invalid",
    );
    let err = one("[[workspace]]\npath = \"/ä\"\nstate = \"x\"\n").unwrap_err();
    assert_eq!(err.column, Some(9));
}

#[test]
fn error_display_omits_missing_parts() {
    let mut e = ConfigError {
        file: PathBuf::from("/f.toml"),
        line: Some(3),
        column: Some(7),
        key: Some("daemon.x".into()),
        message: "bad".into(),
    };
    assert_eq!(e.to_string(), "/f.toml:3:7: `daemon.x`: bad");
    e.column = None;
    assert_eq!(e.to_string(), "/f.toml:3: `daemon.x`: bad");
    e.line = None;
    e.key = None;
    assert_eq!(e.to_string(), "/f.toml: bad");
}

fn rich_config() -> Config {
    many(&[
            (
                MAIN,
                "[daemon]\nstate_dir = \"/s\"\nreconcile_interval = \"90s\"\nlog_level = \"TRACE\"\n\
                 [backend]\ntype = \"btrfs-loop\"\n[backend.btrfs-base]\nbtrfs_mount = \"/data\"\n\
                 [retention]\nauto_cleanup = true\nkeep = \"30d\"\ninterval = \"1h30m\"\n[access]\nuser_init = false\n\
                 [[workspace]]\npath = \"/w/\\\"quoted\\\" dir\"\nid = \"q.1\"\nkeep = 3\nauto_cleanup = false\n\
                 allow_users = [\"bob\", \"carol\"]\nallow_groups = [\"agents\"]\n",
            ),
            (
                "/etc/ws-ckpt/config.d/50-ws-abc.toml",
                "[[workspace]]\npath = \"/home/x\"\nstate = \"absent\"\nkeep = \"2w\"\n",
            ),
        ])
        .unwrap()
}

#[test]
fn canonical_toml_round_trips() {
    let c = rich_config();
    assert_eq!(c.daemon.log_level, "trace");
    let text = c.to_canonical_toml();
    assert_eq!(text, c.to_canonical_toml(), "deterministic");
    let back = one(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut expected = c.clone();
    expected.files = vec![PathBuf::from(MAIN)];
    for w in &mut expected.workspaces {
        w.source = PathBuf::from(MAIN);
    }
    assert_eq!(back, expected, "{text}");
    assert!(
        text.contains("# declared in /etc/ws-ckpt/config.d/50-ws-abc.toml"),
        "{text}"
    );
    // Defaults round-trip exactly, including the comment-only btrfs_mount.
    let d = Config::defaults(Path::new(MAIN));
    let mut back = one(&d.to_canonical_toml()).unwrap();
    back.files.clear();
    assert_eq!(back, d);
    // A single-file config round-trips to an identical Config.
    let single = one(&text).unwrap();
    assert_eq!(one(&single.to_canonical_toml()).unwrap(), single);
}

#[test]
fn json_has_documented_shape() {
    let c = rich_config();
    let j = c.to_json();
    assert_eq!(j["daemon"]["state_dir"], "/s");
    assert_eq!(j["daemon"]["reconcile_interval"], "90s");
    assert_eq!(j["daemon"]["reconcile_interval_secs"], 90);
    assert_eq!(j["backend"]["type"], "btrfs-loop");
    assert_eq!(j["backend"]["btrfs-loop"]["image"], "/s/btrfs-data.img");
    assert_eq!(j["backend"]["btrfs-loop"]["img_size"], 30);
    assert_eq!(j["backend"]["btrfs-base"]["btrfs_mount"], "/data");
    assert_eq!(j["retention"]["keep"], "30d");
    assert_eq!(j["retention"]["interval_secs"], 5400);
    assert_eq!(j["access"]["user_init"], false);
    assert_eq!(j["files"].as_array().map(Vec::len), Some(2));
    let ws = &j["workspaces"];
    assert_eq!(ws[0]["path"], "/w/\"quoted\" dir");
    assert_eq!(ws[0]["keep"], 3);
    assert_eq!(ws[0]["allow_users"], serde_json::json!(["bob", "carol"]));
    assert_eq!(ws[1]["id"], serde_json::Value::Null);
    assert_eq!(ws[1]["state"], "absent");
    assert_eq!(ws[1]["keep"], "2w");
    assert_eq!(ws[1]["effective_auto_cleanup"], true);
    assert_eq!(ws[1]["source"], "/etc/ws-ckpt/config.d/50-ws-abc.toml");
    let d = Config::defaults(Path::new(MAIN)).to_json();
    assert_eq!(
        d["backend"]["btrfs-base"]["btrfs_mount"],
        serde_json::Value::Null
    );
    assert_eq!(d["retention"]["keep"], 20);
}

#[test]
fn keep_and_kinds_parse_and_display() {
    assert_eq!("20".parse::<Keep>(), Ok(Keep::Count(20)));
    assert_eq!(
        "30d".parse::<Keep>(),
        Ok(Keep::Age(Duration::from_secs(30 * 86_400)))
    );
    assert!("0".parse::<Keep>().is_err());
    assert!("0s".parse::<Keep>().is_err());
    assert!("4294967296".parse::<Keep>().is_err());
    assert!("abc".parse::<Keep>().is_err());
    assert_eq!(Keep::Count(20).to_string(), "20");
    assert_eq!(
        Keep::Age(Duration::from_secs(30 * 86_400)).to_string(),
        "30d"
    );
    for k in [
        BackendKind::Auto,
        BackendKind::BtrfsLoop,
        BackendKind::BtrfsBase,
    ] {
        assert_eq!(k.to_string().parse::<BackendKind>(), Ok(k));
        assert_eq!(
            serde_json::to_value(k).unwrap(),
            serde_json::json!(k.to_string())
        );
    }
    assert_eq!(BackendKind::BtrfsLoop.to_string(), "btrfs-loop");
    assert_eq!("absent".parse::<DeclState>(), Ok(DeclState::Absent));
    assert_eq!(DeclState::default(), DeclState::Present);
}

#[test]
fn load_reads_main_then_dropins_in_lexical_order() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    // Missing everything: defaults, nothing read.
    let c = Config::load(&main).unwrap();
    assert!(c.files.is_empty());
    assert_eq!(c.dropin_dir, dir.path().join("config.d"));
    assert_eq!(c.daemon.log_level, "info");

    std::fs::write(&main, "[daemon]\nlog_level = \"warn\"\n").unwrap();
    let d = dir.path().join("config.d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("20-b.toml"), "[daemon]\nlog_level = \"debug\"\n").unwrap();
    std::fs::write(d.join("10-a.toml"), "[daemon]\nlog_level = \"error\"\n").unwrap();
    std::fs::write(d.join(".hidden.toml"), "garbage [[[").unwrap();
    std::fs::write(d.join("notes.txt"), "garbage [[[").unwrap();
    std::fs::write(d.join(".50-x.toml.tmp-1-0"), "garbage [[[").unwrap();
    std::fs::create_dir(d.join("sub.toml")).unwrap();
    let c = Config::load(&main).unwrap();
    assert_eq!(
        c.files,
        vec![main.clone(), d.join("10-a.toml"), d.join("20-b.toml")]
    );
    assert_eq!(c.daemon.log_level, "debug");

    // Only drop-ins, no main file.
    std::fs::remove_file(&main).unwrap();
    let c = Config::load(&main).unwrap();
    assert_eq!(c.files, vec![d.join("10-a.toml"), d.join("20-b.toml")]);

    // A bad drop-in is reported with its own name.
    std::fs::write(d.join("30-bad.toml"), "[daemon]\nfoo = 1\n").unwrap();
    let err = Config::load(&main).unwrap_err();
    assert_eq!(err.file, d.join("30-bad.toml"));
    assert_eq!(err.line, Some(2));
}

#[test]
fn load_reports_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the config file should be.
    let main = dir.path().join("config.toml");
    std::fs::create_dir(&main).unwrap();
    let err = Config::load(&main).unwrap_err();
    assert_eq!(err.file, main);
    assert!(err.to_string().contains("cannot read"), "{err}");
    // A drop-in "directory" that is a file.
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::write(dir2.path().join("config.d"), "").unwrap();
    let err = Config::load(&dir2.path().join("config.toml")).unwrap_err();
    assert_eq!(err.file, dir2.path().join("config.d"));
    // Invalid UTF-8.
    std::fs::write(dir2.path().join("x.toml"), [0xff, 0xfe]).unwrap();
    let err = Config::load(&dir2.path().join("x.toml")).unwrap_err();
    assert_eq!(err.file, dir2.path().join("x.toml"));
}

#[test]
fn hostile_input_never_panics() {
    let inputs = [
        "\u{0}",
        "[[workspace]]",
        "[[workspace]]\npath = 1",
        "workspace = 3",
        "workspace = [1]",
        "[daemon]\nreconcile_interval = \"99999999999999999999s\"",
        "keep = []",
        "[retention]\nkeep = -5",
        "[retention]\nkeep = 99999999999",
        "[backend.btrfs-loop]\nimg_size = -1",
        "a.b.c.d = 1",
        "[[workspace]]\npath = \"/\\u0000x\"",
        "\"\" = 1",
        "[backend]\ntype = [\"auto\"]",
    ];
    for input in inputs {
        let _ = one(input);
    }
    assert!(one("[[workspace]]\npath = \"/\\u0000x\"").is_err());
}
