//! Every file in `config-examples/` must validate; a few values per file are checked so the
//! comments in them stay true.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ws_ckpt::config::{BackendKind, Config, DeclState, Keep};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config-examples")
}

fn load(name: &str) -> Config {
    let path = examples_dir().join(name);
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.files.first(), Some(&path), "{name} was not read");
    config
}

fn decl<'a>(config: &'a Config, path: &str) -> &'a ws_ckpt::config::WorkspaceDecl {
    config
        .workspace(Path::new(path))
        .unwrap_or_else(|| panic!("{path} not declared"))
}

#[test]
fn every_example_validates_and_round_trips() {
    let mut names: Vec<String> = std::fs::read_dir(examples_dir())
        .expect("config-examples directory")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    for expected in [
        "base-backend.toml",
        "legacy-0.3.toml",
        "loop-backend.toml",
        "many-workspaces.toml",
        "minimal.toml",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing");
    }
    let readme = std::fs::read_to_string(examples_dir().join("README.md")).expect("README.md");
    for name in &names {
        assert!(
            readme.contains(name.as_str()),
            "README.md does not list {name}"
        );
        let config = load(name);
        let canonical = config.to_canonical_toml();
        let back = Config::from_sources(
            &config.config_path,
            &[(config.config_path.clone(), canonical.clone())],
        )
        .unwrap_or_else(|e| panic!("{name}: canonical form rejected: {e}\n{canonical}"));
        assert_eq!(back.daemon, config.daemon, "{name}");
        assert_eq!(back.backend, config.backend, "{name}");
        assert_eq!(back.retention, config.retention, "{name}");
        assert_eq!(back.workspaces.len(), config.workspaces.len(), "{name}");
    }
}

#[test]
fn minimal() {
    let c = load("minimal.toml");
    assert_eq!(c.backend.kind, BackendKind::Auto);
    assert_eq!(c.daemon.state_dir, PathBuf::from("/var/lib/ws-ckpt"));
    assert_eq!(
        c.backend.btrfs_loop.image,
        PathBuf::from("/var/lib/ws-ckpt/btrfs-data.img")
    );
    assert_eq!(decl(&c, "/srv/agent/project").state, DeclState::Present);
}

#[test]
fn loop_backend_keeps_everything_under_one_directory() {
    let c = load("loop-backend.toml");
    assert_eq!(c.backend.kind, BackendKind::BtrfsLoop);
    let root = Path::new("/var/tmp/ws-ckpt-demo");
    for p in [
        &c.daemon.state_dir,
        &c.daemon.runtime_dir,
        &c.backend.btrfs_loop.image,
        &c.backend.btrfs_loop.mount,
    ] {
        assert!(
            p.starts_with(root),
            "{} is outside {}",
            p.display(),
            root.display()
        );
    }
    assert_eq!(c.backend.btrfs_loop.img_size_gib, 2);
    assert_eq!(c.daemon.reconcile_interval, Duration::from_secs(30));
    assert_eq!(c.retention.keep, Keep::Count(10));
    assert!(c.retention.auto_cleanup);
}

#[test]
fn base_backend() {
    let c = load("base-backend.toml");
    assert_eq!(c.backend.kind, BackendKind::BtrfsBase);
    assert_eq!(
        c.backend.btrfs_base.btrfs_mount,
        Some(PathBuf::from("/data"))
    );
    assert_eq!(
        c.retention.keep,
        Keep::Age(Duration::from_secs(30 * 86_400))
    );
    let build = decl(&c, "/data/agents/build");
    assert_eq!(c.effective_keep(build), Keep::Count(50));
    let research = decl(&c, "/data/agents/research");
    assert_eq!(c.effective_keep(research), c.retention.keep);
}

#[test]
fn many_workspaces() {
    let c = load("many-workspaces.toml");
    assert!(c.workspaces.len() >= 6);
    let pair = decl(&c, "/home/alice/pair");
    assert_eq!(pair.allow_users, vec!["bob".to_string()]);
    assert_eq!(pair.allow_groups, vec!["agents".to_string()]);
    let ci = decl(&c, "/srv/ci/checkout");
    assert_eq!(ci.id.as_deref(), Some("ci-checkout"));
    assert_eq!(c.effective_keep(ci), Keep::Count(200));
    assert_eq!(
        c.effective_keep(decl(&c, "/srv/agents/sandbox-1")),
        Keep::Age(Duration::from_secs(3 * 86_400))
    );
    assert!(!c.effective_auto_cleanup(decl(&c, "/srv/agents/golden")));
    assert!(c.effective_auto_cleanup(decl(&c, "/home/alice/project")));
    assert_eq!(
        decl(&c, "/home/bob/old-experiment").state,
        DeclState::Absent
    );
}

#[test]
fn legacy_keys() {
    let c = load("legacy-0.3.toml");
    assert!(c.retention.auto_cleanup);
    assert_eq!(c.retention.keep, Keep::Count(15));
    assert_eq!(c.retention.interval, Duration::from_secs(7200));
    assert_eq!(c.daemon.reconcile_interval, Duration::from_secs(120));
}
