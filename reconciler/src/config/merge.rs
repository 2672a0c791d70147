//! Loading and merging (SPEC §2): the main file, then `config.d/*.toml` in lexical order; a
//! later file overrides each scalar it sets; `[[workspace]]` tables merge by path (identical
//! re-declarations are fine, different ones are an error naming both files). Only
//! [`Config::load`] reads files.

use super::error::{ConfigError, Loc};
use super::types::{
    AccessSettings, BackendKind, BackendSettings, BaseSettings, Config, DaemonSettings, Keep,
    LoopSettings, RetentionSettings, WorkspaceDecl,
};
use super::validate::validate_file;
use super::{
    DEFAULT_IMAGE_NAME, DEFAULT_LEGACY_IMAGE, DEFAULT_LOOP_MOUNT, DEFAULT_MAX_SNAPSHOTS,
    DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR, DROPIN_DIR_NAME,
};
use indexmap::IndexMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Names of the settings in which two declarations of one path differ.
fn decl_differences(a: &WorkspaceDecl, b: &WorkspaceDecl) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.id != b.id {
        out.push("id");
    }
    if a.keep != b.keep {
        out.push("keep");
    }
    if a.auto_cleanup != b.auto_cleanup {
        out.push("auto_cleanup");
    }
    if a.max_snapshots != b.max_snapshots {
        out.push("max_snapshots");
    }
    if a.allow_users != b.allow_users {
        out.push("allow_users");
    }
    if a.allow_groups != b.allow_groups {
        out.push("allow_groups");
    }
    if a.state != b.state {
        out.push("state");
    }
    out
}

/// `<dir of config_path>/config.d`.
pub fn dropin_dir_for(config_path: &Path) -> PathBuf {
    match config_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(DROPIN_DIR_NAME),
        _ => PathBuf::from(DROPIN_DIR_NAME),
    }
}

impl Config {
    /// All defaults (SPEC §2), as if `config_path` did not exist.
    pub fn defaults(config_path: &Path) -> Config {
        let state_dir = PathBuf::from(DEFAULT_STATE_DIR);
        Config {
            daemon: DaemonSettings {
                runtime_dir: PathBuf::from(DEFAULT_RUNTIME_DIR),
                reconcile_interval: Duration::from_secs(60),
                log_level: "info".to_string(),
                state_dir: state_dir.clone(),
            },
            backend: BackendSettings {
                kind: BackendKind::Auto,
                btrfs_loop: LoopSettings {
                    image: state_dir.join(DEFAULT_IMAGE_NAME),
                    mount: PathBuf::from(DEFAULT_LOOP_MOUNT),
                    img_size_gib: 30,
                    img_max_percent: 40,
                    legacy_image: PathBuf::from(DEFAULT_LEGACY_IMAGE),
                },
                btrfs_base: BaseSettings { btrfs_mount: None },
            },
            retention: RetentionSettings {
                auto_cleanup: false,
                keep: Keep::Count(20),
                interval: Duration::from_secs(24 * 3600),
                max_snapshots: DEFAULT_MAX_SNAPSHOTS,
            },
            access: AccessSettings { user_init: true },
            workspaces: Vec::new(),
            config_path: config_path.to_path_buf(),
            dropin_dir: dropin_dir_for(config_path),
            files: Vec::new(),
            overrides: Default::default(),
        }
    }

    /// Read `config_path` (missing = all defaults) then `<dir of config_path>/config.d/*.toml`
    /// in lexical order (hidden files skipped; a missing `config.d` = no drop-ins). An
    /// unreadable file or directory is an error naming it.
    pub fn load(config_path: &Path) -> Result<Config, ConfigError> {
        let mut sources = Vec::new();
        match std::fs::read_to_string(config_path) {
            Ok(text) => sources.push((config_path.to_path_buf(), text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ConfigError::io(config_path, "read the config file", &e)),
        }
        let dropin_dir = dropin_dir_for(config_path);
        match std::fs::read_dir(&dropin_dir) {
            Ok(entries) => {
                let mut files = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|e| {
                        ConfigError::io(&dropin_dir, "list the drop-in directory", &e)
                    })?;
                    let name = entry.file_name();
                    let Some(name_str) = name.to_str() else {
                        continue;
                    };
                    if name_str.starts_with('.') || !name_str.ends_with(".toml") {
                        continue;
                    }
                    let path = entry.path();
                    let meta = std::fs::metadata(&path)
                        .map_err(|e| ConfigError::io(&path, "read the drop-in file", &e))?;
                    if meta.is_file() {
                        files.push(path);
                    }
                }
                files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
                for path in files {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| ConfigError::io(&path, "read the drop-in file", &e))?;
                    sources.push((path, text));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ConfigError::io(
                    &dropin_dir,
                    "list the drop-in directory",
                    &e,
                ))
            }
        }
        Config::from_sources(config_path, &sources)
    }

    /// Pure: parse, validate and merge the given `(file, text)` pairs in order (the main
    /// config file first, then drop-ins). [`Config::load`] uses it.
    pub fn from_sources(
        config_path: &Path,
        sources: &[(PathBuf, String)],
    ) -> Result<Config, ConfigError> {
        let mut config = Config::defaults(config_path);
        let mut image = None;
        let mut workspaces: IndexMap<PathBuf, (WorkspaceDecl, Loc)> = IndexMap::new();
        let mut ids: IndexMap<String, (PathBuf, Loc)> = IndexMap::new();
        for (file, text) in sources {
            let layer = validate_file(file, text)?;
            config.files.push(file.clone());
            let d = &mut config.daemon;
            set(&mut d.state_dir, layer.state_dir);
            set(&mut d.runtime_dir, layer.runtime_dir);
            set(&mut d.reconcile_interval, layer.reconcile_interval);
            set(&mut d.log_level, layer.log_level);
            let b = &mut config.backend;
            set(&mut b.kind, layer.kind);
            if layer.image.is_some() {
                image = layer.image;
            }
            set(&mut b.btrfs_loop.mount, layer.mount);
            set(&mut b.btrfs_loop.img_size_gib, layer.img_size_gib);
            set(&mut b.btrfs_loop.img_max_percent, layer.img_max_percent);
            set(&mut b.btrfs_loop.legacy_image, layer.legacy_image);
            if layer.btrfs_mount.is_some() {
                b.btrfs_base.btrfs_mount = layer.btrfs_mount;
            }
            let r = &mut config.retention;
            set(&mut r.auto_cleanup, layer.auto_cleanup);
            set(&mut r.keep, layer.keep);
            set(&mut r.interval, layer.retention_interval);
            set(&mut r.max_snapshots, layer.max_snapshots);
            set(&mut config.access.user_init, layer.user_init);

            for (decl, loc, id_loc) in layer.workspaces {
                if let Some((first, first_loc)) = workspaces.get(&decl.path) {
                    let diff = decl_differences(first, &decl);
                    if diff.is_empty() {
                        continue;
                    }
                    return Err(loc.err(
                        "workspace.path",
                        format!(
                            "workspace {} is also declared at {first_loc} with different {}; keep one [[workspace]] table for this path (or make both identical)",
                            decl.path.display(),
                            diff.join(", ")
                        ),
                    ));
                }
                if let (Some(id), Some(id_loc)) = (&decl.id, id_loc) {
                    if let Some((other_path, other_loc)) = ids.get(id) {
                        return Err(id_loc.err(
                            "workspace.id",
                            format!(
                                "id \"{id}\" is already used by workspace {} at {other_loc}; give each workspace its own id",
                                other_path.display()
                            ),
                        ));
                    }
                    ids.insert(id.clone(), (decl.path.clone(), id_loc));
                }
                workspaces.insert(decl.path.clone(), (decl, loc));
            }
        }
        config.backend.btrfs_loop.image =
            image.unwrap_or_else(|| config.daemon.state_dir.join(DEFAULT_IMAGE_NAME));
        config.workspaces = workspaces.into_values().map(|(d, _)| d).collect();
        Ok(config)
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}
