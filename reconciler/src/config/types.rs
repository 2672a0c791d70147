//! The validated configuration as the rest of ws-ckpt sees it: settings structs, the
//! enumerations with their TOML spellings, and queries on the merged [`Config`].

use super::duration::{format_duration, parse_duration};
use super::validate::normalize_abs_path;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Which storage backend to use (`[backend] type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// Keep the persisted choice; detect once when there is none.
    Auto,
    /// An image file on a loop device.
    BtrfsLoop,
    /// An already mounted btrfs filesystem.
    BtrfsBase,
}

impl BackendKind {
    /// The TOML spelling: `auto`, `btrfs-loop` or `btrfs-base`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Auto => "auto",
            BackendKind::BtrfsLoop => "btrfs-loop",
            BackendKind::BtrfsBase => "btrfs-base",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BackendKind::Auto),
            "btrfs-loop" => Ok(BackendKind::BtrfsLoop),
            "btrfs-base" => Ok(BackendKind::BtrfsBase),
            other => Err(InvalidValue(format!(
                "unknown backend type \"{other}\"; use \"auto\", \"btrfs-loop\" or \"btrfs-base\""
            ))),
        }
    }
}

/// Retention policy: keep the N newest unpinned snapshots, or drop unpinned ones older than
/// an age. TOML: an integer, or a duration string such as `"30d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Keep this many newest unpinned snapshots (at least 1).
    Count(u32),
    /// Drop unpinned snapshots older than this (never zero).
    Age(Duration),
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keep::Count(n) => write!(f, "{n}"),
            Keep::Age(d) => f.write_str(&format_duration(*d)),
        }
    }
}

impl FromStr for Keep {
    type Err = InvalidValue;
    /// `"20"` → `Count(20)`, `"30d"` → `Age(30 days)`; used for `cleanup --keep`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<u32>() {
                Ok(0) => Err(InvalidValue(
                    "keep = 0 would keep nothing; use at least 1 (the newest snapshot is never deleted)".into(),
                )),
                Ok(n) => Ok(Keep::Count(n)),
                Err(_) => Err(InvalidValue(format!(
                    "keep count {s} is too large; the maximum is {}",
                    u32::MAX
                ))),
            };
        }
        match parse_duration(s) {
            Ok(d) if d.is_zero() => Err(InvalidValue(
                "a keep age of 0 would keep nothing; use e.g. \"30d\"".into(),
            )),
            Ok(d) => Ok(Keep::Age(d)),
            Err(e) => Err(InvalidValue(format!(
                "keep must be a count such as 20 or an age such as \"30d\": {e}"
            ))),
        }
    }
}

/// Whether a declared workspace should exist (`state` key of `[[workspace]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeclState {
    /// Managed as a workspace (the default).
    #[default]
    Present,
    /// Released: data goes back to a plain directory.
    Absent,
}

impl DeclState {
    /// The TOML spelling: `present` or `absent`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeclState::Present => "present",
            DeclState::Absent => "absent",
        }
    }
}

impl fmt::Display for DeclState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeclState {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "present" => Ok(DeclState::Present),
            "absent" => Ok(DeclState::Absent),
            other => Err(InvalidValue(format!(
                "state must be \"present\" or \"absent\", not \"{other}\""
            ))),
        }
    }
}

/// A single value (CLI argument or config string) that failed to parse; the message says
/// what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

/// `[daemon]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonSettings {
    /// `state.json`, indexes, lock, audit log (and the default loop image).
    pub state_dir: PathBuf,
    /// Holds the IPC socket.
    pub runtime_dir: PathBuf,
    /// Periodic full pass; [`Duration::ZERO`] = only on events.
    pub reconcile_interval: Duration,
    /// One of `error`, `warn`, `info`, `debug`, `trace`.
    pub log_level: String,
}

/// `[backend.btrfs-loop]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopSettings {
    /// Image file; defaults to `<state_dir>/btrfs-data.img`.
    pub image: PathBuf,
    /// Where the image is mounted (the data root).
    pub mount: PathBuf,
    /// Absolute size cap in GiB (`img_size`).
    pub img_size_gib: u64,
    /// Cap as a percentage (1..=100) of the host filesystem holding the image.
    pub img_max_percent: u32,
    /// Where ws-ckpt ≤ 0.2 kept the image (pre-FHS); moved to `image` on upgrade.
    pub legacy_image: PathBuf,
}

/// `[backend.btrfs-base]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseSettings {
    /// Mount point of the btrfs filesystem; `None` = detect.
    pub btrfs_mount: Option<PathBuf>,
}

/// `[backend]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSettings {
    /// `type`.
    pub kind: BackendKind,
    /// Loop-image settings (used when the effective backend is btrfs-loop).
    pub btrfs_loop: LoopSettings,
    /// Existing-filesystem settings (used when the effective backend is btrfs-base).
    pub btrfs_base: BaseSettings,
}

/// `[retention]`: defaults for every workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionSettings {
    /// Run the retention pass automatically.
    pub auto_cleanup: bool,
    /// What to keep.
    pub keep: Keep,
    /// How often the retention pass runs (never zero).
    pub interval: Duration,
    /// Most snapshots a workspace may hold; a checkpoint beyond it is refused.
    pub max_snapshots: u32,
}

/// `[access]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessSettings {
    /// A non-root caller may declare a workspace it owns.
    pub user_init: bool,
}

/// One `[[workspace]]` table after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceDecl {
    /// Absolute, normalized path (no trailing slash, no `.`/`..`).
    pub path: PathBuf,
    /// Explicit ws_id; `None` = derived from the path.
    pub id: Option<String>,
    /// Overrides `[retention] keep`.
    pub keep: Option<Keep>,
    /// Overrides `[retention] auto_cleanup`.
    pub auto_cleanup: Option<bool>,
    /// Overrides `[retention] max_snapshots`.
    pub max_snapshots: Option<u32>,
    /// Users allowed besides the owner and root.
    pub allow_users: Vec<String>,
    /// Groups whose members are allowed.
    pub allow_groups: Vec<String>,
    /// Present or absent (released).
    pub state: DeclState,
    /// The file that declared it (the first one, for identical re-declarations).
    pub source: PathBuf,
}

/// The merged, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[daemon]`.
    pub daemon: DaemonSettings,
    /// `[backend]`.
    pub backend: BackendSettings,
    /// `[retention]`.
    pub retention: RetentionSettings,
    /// `[access]`.
    pub access: AccessSettings,
    /// Declared workspaces in declaration order (files in order, tables in file order).
    pub workspaces: Vec<WorkspaceDecl>,
    /// The main config file (whether or not it exists).
    pub config_path: PathBuf,
    /// `<dir of config_path>/config.d`.
    pub dropin_dir: PathBuf,
    /// Files actually read, in order.
    pub files: Vec<PathBuf>,
    /// What `ws-ckpt daemon` was told on its command line (upstream's form); applied over
    /// the files, and again after every reload ([`Config::reload`]).
    pub overrides: Overrides,
}

/// Settings given on the command line of `ws-ckpt daemon` in upstream's form
/// (`--mount-path M --socket S --log-level L`). They win over the config files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--mount-path M`: the loop backend's mount point (`[backend] type = "btrfs-loop"`,
    /// `[backend.btrfs-loop] mount = M`). A btrfs filesystem already mounted at M is used as
    /// it is (no image is created or mounted); otherwise the image is mounted at M.
    pub mount: Option<PathBuf>,
    /// `--socket S`: the socket path itself (instead of `<runtime_dir>/ws-ckpt.sock`).
    pub socket: Option<PathBuf>,
    /// `--log-level L`.
    pub log_level: Option<String>,
}

impl Config {
    /// This config with `o` applied (see [`Overrides`]).
    pub fn with_overrides(mut self, o: Overrides) -> Config {
        if let Some(m) = &o.mount {
            self.backend.kind = BackendKind::BtrfsLoop;
            self.backend.btrfs_loop.mount = m.clone();
        }
        if let Some(l) = &o.log_level {
            self.daemon.log_level = l.clone();
        }
        self.overrides = o;
        self
    }

    /// Read the files again ([`Config::load`] of the same main file), with the same
    /// overrides.
    pub fn reload(&self) -> Result<Config, super::ConfigError> {
        Config::load(&self.config_path).map(|c| c.with_overrides(self.overrides.clone()))
    }

    /// True when a btrfs filesystem already mounted at the loop mount point is to be used as
    /// it is (`daemon --mount-path`, upstream's e2e setup).
    pub fn use_mounted_loop(&self) -> bool {
        self.overrides.mount.as_deref() == Some(self.backend.btrfs_loop.mount.as_path())
    }
}

impl Config {
    /// The declaration whose path is exactly `path` (after removing trailing slashes and `.`
    /// components; no symlink resolution).
    pub fn workspace(&self, path: &Path) -> Option<&WorkspaceDecl> {
        let wanted = path
            .to_str()
            .and_then(|s| normalize_abs_path(s).ok())
            .unwrap_or_else(|| path.to_path_buf());
        self.workspaces.iter().find(|w| w.path == wanted)
    }

    /// The workspace's `keep`, else `[retention] keep`.
    pub fn effective_keep(&self, ws: &WorkspaceDecl) -> Keep {
        ws.keep.unwrap_or(self.retention.keep)
    }

    /// The workspace's `max_snapshots`, else `[retention] max_snapshots`.
    pub fn effective_max_snapshots(&self, ws: &WorkspaceDecl) -> u32 {
        ws.max_snapshots.unwrap_or(self.retention.max_snapshots)
    }

    /// The workspace's `auto_cleanup`, else `[retention] auto_cleanup`.
    pub fn effective_auto_cleanup(&self, ws: &WorkspaceDecl) -> bool {
        ws.auto_cleanup.unwrap_or(self.retention.auto_cleanup)
    }
}
