//! Desired state: the TOML configuration (SPEC §2) parsed, validated and merged into one
//! [`Config`].
//!
//! Three steps: `raw` mirrors the TOML with serde; a pure validation turns each file into
//! typed settings with positioned errors; a pure merge combines the main file and the
//! `config.d/*.toml` drop-ins. Only [`Config::load`] reads files, and [`edit`] writes them.
//! This module must not look at the live system: whether a path exists, is mounted or is a
//! btrfs filesystem is observation's business, not the config's.
//!
//! Merge rules: files are applied in order (the main file, then drop-ins in lexical order);
//! a later file overrides each scalar key it sets. `[[workspace]]` tables are merged by path:
//! an identical re-declaration is accepted, a different one is an error naming both files.
//! The ws-ckpt 0.2/0.3 top-level keys `auto_cleanup`, `auto_cleanup_keep`,
//! `auto_cleanup_interval_secs` and `health_check_interval_secs` are aliases of
//! `retention.auto_cleanup`, `retention.keep`, `retention.interval` and
//! `daemon.reconcile_interval`; when one file sets both an alias and the new key, the new key
//! wins (and the alias is still validated). Across files, the later file wins whichever
//! spelling it uses.

pub mod duration;
pub mod edit;
mod error;
pub mod keys;
mod merge;
mod raw;
mod render;
mod types;
mod validate;

pub use duration::{format_duration, parse_duration, DurationError};
pub use edit::{
    declare_workspace, remove_workspace, set_workspace_state, write_migrated, EditError, GlobalKey,
    MigratedDecl, MigratedPolicy, SettingValue,
};
pub(crate) use error::error_at;
pub use error::ConfigError;
pub use merge::dropin_dir_for;
pub use types::{
    AccessSettings, BackendKind, BackendSettings, BaseSettings, Config, DaemonSettings, DeclState,
    InvalidValue, Keep, LoopSettings, Overrides, RetentionSettings, WorkspaceDecl,
};
pub(crate) use validate::normalize_abs_path;

/// Where the main config file lives unless `--config`/`WS_CKPT_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/ws-ckpt/config.toml";
/// Name of the drop-in directory next to the main config file.
pub const DROPIN_DIR_NAME: &str = "config.d";
/// Default `[daemon] state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ws-ckpt";
/// Default `[daemon] runtime_dir`.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/ws-ckpt";
/// Where ws-ckpt ≤ 0.2 kept the loop image (moved to the FHS path on upgrade).
pub const DEFAULT_LEGACY_IMAGE: &str = "/data/ws-ckpt/btrfs-data.img";
/// Default `[backend.btrfs-loop] mount`.
pub const DEFAULT_LOOP_MOUNT: &str = "/mnt/btrfs-workspace";
/// Default `[retention] max_snapshots` (snapshots one workspace may hold).
pub const DEFAULT_MAX_SNAPSHOTS: u32 = 100_000;
/// Largest accepted `max_snapshots`.
pub const MAX_MAX_SNAPSHOTS: u32 = 1_000_000;
/// File name of the loop image inside `state_dir` when `image` is not set.
pub const DEFAULT_IMAGE_NAME: &str = "btrfs-data.img";

impl From<ConfigError> for crate::error::Error {
    fn from(e: ConfigError) -> Self {
        let hint = if e.line.is_some() {
            "fix the file at the position shown; `ws-ckpt config validate` checks it"
        } else {
            "check that the file exists and is readable (`ws-ckpt --config PATH` or WS_CKPT_CONFIG picks another one)"
        };
        crate::error::Error::new(crate::error::ErrorCode::ConfigInvalid, e.to_string()).hint(hint)
    }
}

impl From<EditError> for crate::error::Error {
    fn from(e: EditError) -> Self {
        crate::error::Error::new(crate::error::ErrorCode::ConfigInvalid, e.to_string())
    }
}

#[cfg(test)]
mod tests;
