//! `state.json`: the serde types of the persisted state (format version 1, field for field that
//! of ws-ckpt 0.3) and the functions that load and save it.
//!
//! Loading never loses data: an unparsable file is moved aside, a file from a newer ws-ckpt is
//! left alone and never overwritten, and fields this version does not know are kept in `extra`
//! and written back. This module must not decide anything from the state (no backend choice, no
//! repair); it only reads and writes the file.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::atomic::{move_aside, write_atomic_mode};
use super::pending::{PendingEntry, PendingOp};
use super::StateError;

/// The state format version written by this ws-ckpt (the same as ws-ckpt 0.3).
pub const STATE_VERSION: u32 = 1;

/// Mode of `state.json`: it names every user's paths, so only root reads it (SPEC §7.3).
pub const STATE_FILE_MODE: u32 = 0o600;

/// Which kind of storage holds the workspaces (`"BtrfsLoop"` / `"BtrfsBase"` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BackendType {
    /// An image file on a loop device.
    BtrfsLoop,
    /// An already mounted btrfs filesystem.
    BtrfsBase,
}

impl fmt::Display for BackendType {
    /// The spelling used in the config file (`btrfs-loop`, `btrfs-base`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendType::BtrfsLoop => "btrfs-loop",
            BackendType::BtrfsBase => "btrfs-base",
        })
    }
}

/// How the persisted backend was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelectionMethod {
    /// Explicit `[backend] type` in the config.
    Config,
    /// Explicit config type that differs from the previously persisted one.
    ConfigOverride,
    /// `auto` in the config, kept from the persisted state.
    Persisted,
    /// `auto` with no state: detected once.
    AutoDetect,
}

impl fmt::Display for SelectionMethod {
    /// The JSON spelling (`config`, `config-override`, `persisted`, `auto-detect`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SelectionMethod::Config => "config",
            SelectionMethod::ConfigOverride => "config-override",
            SelectionMethod::Persisted => "persisted",
            SelectionMethod::AutoDetect => "auto-detect",
        })
    }
}

/// `backend`: which backend is authoritative and how it was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendIdentity {
    /// The backend type.
    pub backend_type: BackendType,
    /// How it was chosen.
    pub selection_method: SelectionMethod,
    /// When it was chosen (RFC 3339).
    pub selected_at: String,
    /// Fields this version does not know; written back unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `paths.loop_img`: the image of a `BtrfsLoop` backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopImage {
    /// Path of the image file.
    pub img_path: PathBuf,
    /// Size of the image file in bytes when last seen.
    pub img_size_bytes: u64,
    /// Loop device it was last attached to (`null` when unknown).
    #[serde(default)]
    pub last_loop_device: Option<PathBuf>,
    /// The size the image was created or last grown for (ws-ckpt ≥ 0.4): growth happens
    /// only when the config asks for more than this, a shrink is reported only below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub img_target_bytes: Option<u64>,
    /// Fields this version does not know; written back unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `paths`: where the backend keeps its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendPaths {
    /// Backend these paths belong to.
    pub backend: BackendType,
    /// Mount point of the btrfs filesystem.
    pub mount_path: PathBuf,
    /// Directory holding one writable subvolume per workspace.
    pub data_root: PathBuf,
    /// Directory holding `<ws_id>/<snapshot_id>` snapshot subvolumes.
    pub snapshots_root: PathBuf,
    /// The image, for `BtrfsLoop` only (absent for `BtrfsBase`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_img: Option<LoopImage>,
    /// Fields this version does not know; written back unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `workspaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceEntry {
    /// Workspace ID (`ws-4612d8`).
    pub ws_id: String,
    /// The user path (a symlink to the workspace subvolume).
    pub workspace_path: PathBuf,
    /// When the workspace was initialized (RFC 3339).
    pub registered_at: String,
    /// Backend the workspace subvolume lives on.
    pub origin_backend: BackendType,
    /// Owner uid recorded at init (absent in ws-ckpt 0.3 files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uid: Option<u32>,
    /// The directory holding the user path, as recorded at init (or, for a workspace recorded
    /// before ws-ckpt 0.5, on the first pass that reached it without a symlink): every later
    /// pass and operation re-opens it and refuses to act when it is another directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRecord>,
    /// Whether other users could reach the original directory (every ancestor was
    /// world-searchable) when it became a workspace; the storage gate then lets them search
    /// it too. `None`: not yet decided (a workspace recorded before ws-ckpt 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub others_search: Option<bool>,
    /// Fields this version does not know; written back unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Identity and owner of the directory that holds a workspace path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRecord {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// Owner uid.
    pub uid: u32,
    /// The filesystem's ID (`statfs` `f_fsid`, from its UUID on btrfs, ext4, xfs): unlike
    /// `st_dev`, it survives a reboot or a remount on another device number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsid: Option<u64>,
}

impl ParentRecord {
    /// Whether `now` is the directory this record names: the same inode of the same
    /// filesystem — the same `st_dev`, or, when the device number changed (a reboot, a
    /// remount), the same non-zero filesystem ID recorded on both sides.
    pub fn matches(&self, now: &ParentRecord) -> bool {
        self.ino == now.ino
            && (self.dev == now.dev
                || matches!((self.fsid, now.fsid), (Some(a), Some(b)) if a != 0 && a == b))
    }

    /// An identity recorded on this directory's filesystem, moved to the device number the
    /// filesystem has `now` (unchanged when the device number did not change, or when it was
    /// recorded on another filesystem).
    pub fn rebase(&self, now: &ParentRecord, id: crate::tree::Identity) -> crate::tree::Identity {
        if id.dev == self.dev && self.matches(now) {
            crate::tree::Identity { dev: now.dev, ..id }
        } else {
            id
        }
    }
}

/// An action that failed and is retried with exponential backoff (SPEC §7.3): passes do not
/// run it again before `retry_at`; an explicit `apply` does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionFailure {
    /// What failed: the action's backoff key (`init-workspace ws-1a2b3c`).
    pub key: String,
    /// The workspace it was about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws_id: Option<String>,
    /// The path it was about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Consecutive failures.
    pub failures: u32,
    /// The last error, as reported.
    pub error: String,
    /// When it last failed (RFC 3339).
    pub last_failed_at: String,
    /// Not before this time (RFC 3339).
    pub retry_at: crate::time::Timestamp,
}

/// The whole `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// The authoritative backend.
    pub backend: BackendIdentity,
    /// The backend's paths.
    pub paths: BackendPaths,
    /// Managed workspaces.
    #[serde(default)]
    pub workspaces: Vec<WorkspaceEntry>,
    /// In-flight multi-step operations (written by the executor), decoded when loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingEntry>,
    /// When the last unclean shutdown was detected (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_unclean_shutdown: Option<String>,
    /// When the daemon last stopped cleanly (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_clean_stop: Option<String>,
    /// The recorded workspaces are declared in the config (ws-ckpt ≥ 0.4). Absent in a 0.3
    /// state: its workspaces are then declared in `config.d/40-migrated.toml` once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub config_declared: bool,
    /// Actions that keep failing, backing off (ws-ckpt ≥ 0.5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<ActionFailure>,
    /// Fields this version does not know; written back unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl StateFile {
    /// A fresh state at [`STATE_VERSION`] with no workspaces.
    pub fn new(backend: BackendIdentity, paths: BackendPaths) -> Self {
        StateFile {
            version: STATE_VERSION,
            backend,
            paths,
            workspaces: Vec::new(),
            pending: Vec::new(),
            last_unclean_shutdown: None,
            last_clean_stop: None,
            config_declared: false,
            failures: Vec::new(),
            extra: Map::new(),
        }
    }

    /// The pending operations this version can read.
    pub fn pending_ops(&self) -> impl Iterator<Item = &PendingOp> {
        self.pending.iter().filter_map(PendingEntry::op)
    }

    /// The pending entries it cannot read (kept verbatim): entry and why.
    pub fn undecodable_pending(&self) -> impl Iterator<Item = (&Value, &str)> {
        self.pending.iter().filter_map(|e| match e {
            PendingEntry::Undecodable { value, error } => Some((value, error.as_str())),
            PendingEntry::Op(_) => None,
        })
    }

    /// Record that the action with backoff key `key` failed at `now` with `error`: the
    /// consecutive count grows and the next attempt waits 2 s, 4 s, 8 s, … (at most an hour).
    pub fn record_failure(
        &mut self,
        key: &str,
        ws_id: Option<&str>,
        path: Option<&Path>,
        error: &str,
        now: SystemTime,
    ) {
        let failures = self
            .failures
            .iter()
            .find(|f| f.key == key)
            .map_or(1, |f| f.failures.saturating_add(1));
        let delay = backoff_delay(failures);
        self.failures.retain(|f| f.key != key);
        self.failures.push(ActionFailure {
            key: key.to_string(),
            ws_id: ws_id.map(str::to_string),
            path: path.map(Path::to_path_buf),
            failures,
            error: error.to_string(),
            last_failed_at: crate::time::format_rfc3339(now),
            retry_at: crate::time::Timestamp::nanos(now + delay),
        });
    }

    /// Forget the failures of `key` (it succeeded, or is no longer planned); whether there
    /// were any.
    pub fn clear_failure(&mut self, key: &str) -> bool {
        let before = self.failures.len();
        self.failures.retain(|f| f.key != key);
        self.failures.len() != before
    }

    /// The workspace with this ID.
    pub fn workspace(&self, ws_id: &str) -> Option<&WorkspaceEntry> {
        self.workspaces.iter().find(|w| w.ws_id == ws_id)
    }

    /// The workspace with this ID, mutable.
    pub fn workspace_mut(&mut self, ws_id: &str) -> Option<&mut WorkspaceEntry> {
        self.workspaces.iter_mut().find(|w| w.ws_id == ws_id)
    }

    /// The workspace recorded at exactly this user path (callers canonicalize first).
    pub fn workspace_by_path(&self, path: &Path) -> Option<&WorkspaceEntry> {
        self.workspaces.iter().find(|w| w.workspace_path == path)
    }
}

/// How long an action that failed `failures` times in a row waits before it is retried by a
/// pass: 2 s doubled per failure, at most an hour.
pub fn backoff_delay(failures: u32) -> std::time::Duration {
    let secs = 2u64.saturating_mul(1u64 << failures.saturating_sub(1).min(20));
    std::time::Duration::from_secs(secs.min(3600))
}

/// Result of [`load_state`].
// Returned once per load; boxing `Loaded` would only complicate matching.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum StateLoad {
    /// No state file: a first run, or a v0 (ws-ckpt ≤ 0.2) installation.
    Missing,
    /// The file parsed.
    Loaded(StateFile),
    /// The file did not parse; it was moved to `moved_to` (never deleted) and the state must be
    /// rebuilt from the disk, with a loud warning.
    Corrupt {
        /// Where the unreadable file now is.
        moved_to: PathBuf,
        /// Why it did not parse.
        error: String,
    },
    /// The file was written by a newer ws-ckpt; it was left untouched and must not be overwritten.
    NewerVersion {
        /// The version found in the file.
        version: u32,
    },
}

/// What the `version` field of a state file says.
enum VersionField {
    /// An integer no newer than ours.
    Supported,
    /// An integer newer than ours (saturated to `u32::MAX`).
    Newer(u32),
    /// Not JSON, not an object, no `version`, or not a non-negative integer.
    Invalid(String),
}

fn version_field(bytes: &[u8]) -> VersionField {
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return VersionField::Invalid(e.to_string()),
    };
    match value.get("version") {
        None if !value.is_object() => VersionField::Invalid("not a JSON object".to_string()),
        None => VersionField::Invalid("missing field `version`".to_string()),
        Some(v) => match v.as_u64() {
            Some(n) if n <= u64::from(STATE_VERSION) => VersionField::Supported,
            Some(n) => VersionField::Newer(u32::try_from(n).unwrap_or(u32::MAX)),
            None => VersionField::Invalid(format!("`version` is not an integer: {v}")),
        },
    }
}

/// Load `path`. A file that fails to parse (or has a version field that is not an integer) is
/// renamed to `<path>.corrupt-<YYYYMMDDTHHMMSSZ>` (suffix -2, -3 if taken) — never deleted — and
/// `Corrupt` returned. A version > [`STATE_VERSION`] returns `NewerVersion` and leaves the file
/// alone. Errors only when the file cannot be read or moved.
pub fn load_state(path: &Path, now: SystemTime) -> Result<StateLoad, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(StateLoad::Missing),
        Err(e) => return Err(StateError::io(path, e)),
    };
    let error = match version_field(&bytes) {
        VersionField::Newer(version) => {
            tracing::warn!(path = %path.display(), version, "state file written by a newer ws-ckpt");
            return Ok(StateLoad::NewerVersion { version });
        }
        VersionField::Invalid(error) => error,
        VersionField::Supported => match serde_json::from_slice::<StateFile>(&bytes) {
            Ok(state) => return Ok(StateLoad::Loaded(state)),
            Err(e) => e.to_string(),
        },
    };
    let moved_to = move_aside(path, "corrupt", now).map_err(|e| StateError::io(path, e))?;
    tracing::warn!(
        path = %path.display(),
        moved_to = %moved_to.display(),
        %error,
        "state file is corrupt; moved aside, state will be rebuilt from the disk"
    );
    Ok(StateLoad::Corrupt { moved_to, error })
}

/// Atomically write `state` to `path` (creating the parent directory if needed). Refuses
/// ([`StateError::NewerVersion`], "written by a newer ws-ckpt") when the file currently on disk
/// has a newer version. Pretty-printed JSON with a trailing newline, mode 0600.
pub fn save_state(path: &Path, state: &StateFile) -> Result<(), StateError> {
    save_state_via(path, state, |bytes| {
        write_atomic_mode(path, bytes, STATE_FILE_MODE).map_err(|e| StateError::io(path, e))
    })
}

/// [`save_state`] with the final write done by `write` (given the bytes to install at `path`;
/// the state journal uses it to fold itself into the new file).
pub(crate) fn save_state_via(
    path: &Path,
    state: &StateFile,
    write: impl FnOnce(&[u8]) -> Result<(), StateError>,
) -> Result<(), StateError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            if let VersionField::Newer(version) = version_field(&bytes) {
                return Err(StateError::NewerVersion {
                    path: path.to_path_buf(),
                    version,
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| StateError::io(parent, e))?;
            }
        }
        Err(e) => return Err(StateError::io(path, e)),
    }
    if state.version > STATE_VERSION {
        return Err(StateError::NewerVersion {
            path: path.to_path_buf(),
            version: state.version,
        });
    }
    let mut bytes = serde_json::to_vec_pretty(state).map_err(|e| StateError::Encode {
        path: path.to_path_buf(),
        source: e,
    })?;
    bytes.push(b'\n');
    write(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, UNIX_EPOCH};

    /// The example of SPEC §3, byte for byte.
    const SPEC_EXAMPLE: &str = r#"{
  "version": 1,
  "backend": {"backend_type": "BtrfsLoop", "selection_method": "auto-detect",
              "selected_at": "2026-11-24T15:07:42Z"},
  "paths": {"backend": "BtrfsLoop", "mount_path": "/mnt/btrfs-workspace",
            "data_root": "/mnt/btrfs-workspace", "snapshots_root": "/mnt/btrfs-workspace/snapshots",
            "loop_img": {"img_path": "/var/lib/ws-ckpt/btrfs-data.img",
                         "img_size_bytes": 32212254720, "last_loop_device": "/dev/loop1"}},
  "workspaces": [{"ws_id": "ws-4612d8", "workspace_path": "/tmp/perf/wsA",
                  "registered_at": "2026-11-24T15:07:42Z", "origin_backend": "BtrfsLoop"}]
}
"#;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_000_000)
    }

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn load_ok(path: &Path) -> StateFile {
        match load_state(path, now()).unwrap() {
            StateLoad::Loaded(s) => s,
            other => panic!("expected Loaded, got {other:?}"),
        }
    }

    #[test]
    fn spec_example_loads_and_round_trips_with_same_field_names() {
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("state.json");
        fs::write(&p, SPEC_EXAMPLE).unwrap();
        let s = load_ok(&p);
        assert_eq!(s.version, 1);
        assert_eq!(s.backend.backend_type, BackendType::BtrfsLoop);
        assert_eq!(s.backend.selection_method, SelectionMethod::AutoDetect);
        assert_eq!(s.backend.selected_at, "2026-11-24T15:07:42Z");
        assert_eq!(s.paths.backend, BackendType::BtrfsLoop);
        assert_eq!(
            s.paths.snapshots_root,
            Path::new("/mnt/btrfs-workspace/snapshots")
        );
        let img = s.paths.loop_img.as_ref().unwrap();
        assert_eq!(img.img_size_bytes, 32_212_254_720);
        assert_eq!(
            img.last_loop_device.as_deref(),
            Some(Path::new("/dev/loop1"))
        );
        assert_eq!(
            s.workspace("ws-4612d8").unwrap().workspace_path,
            Path::new("/tmp/perf/wsA")
        );
        assert_eq!(
            s.workspace_by_path(Path::new("/tmp/perf/wsA"))
                .unwrap()
                .ws_id,
            "ws-4612d8"
        );
        assert!(s.workspace("ws-000000").is_none());
        assert!(s.pending.is_empty() && s.last_clean_stop.is_none());
        assert!(s.extra.is_empty() && s.workspaces[0].owner_uid.is_none());

        save_state(&p, &s).unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.ends_with("}\n"), "trailing newline: {text:?}");
        assert!(
            text.contains("\n  \"version\": 1"),
            "pretty-printed: {text}"
        );
        // Same JSON value as the original: same field names, nothing added, nothing lost.
        let original: Value = serde_json::from_str(SPEC_EXAMPLE).unwrap();
        let written: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(original, written);
        // Field order of the 0.3 format is kept.
        let keys: Vec<&String> = written.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["version", "backend", "paths", "workspaces"]);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_ok(&p), s);
        assert_eq!(dir_names(td.path()), ["state.json"]);
    }

    #[test]
    fn unknown_fields_survive_everywhere() {
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("state.json");
        let mut v: Value = serde_json::from_str(SPEC_EXAMPLE).unwrap();
        v["future_top"] = json!({"a": [1, 2]});
        v["backend"]["future_backend"] = json!("x");
        v["paths"]["future_paths"] = json!(7);
        v["paths"]["loop_img"]["future_img"] = json!(null);
        v["workspaces"][0]["future_ws"] = json!({"phase": "copying"});
        v["workspaces"][0]["owner_uid"] = json!(1000);
        v["pending"] = json!([{"op": "rollback", "ws_id": "ws-4612d8"}]);
        v["last_clean_stop"] = json!("2026-11-24T16:00:00Z");
        fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();

        let mut s = load_ok(&p);
        assert_eq!(s.extra["future_top"], json!({"a": [1, 2]}));
        assert_eq!(s.workspaces[0].owner_uid, Some(1000));
        assert_eq!(s.pending.len(), 1);
        // A change elsewhere must not drop them.
        s.workspace_mut("ws-4612d8").unwrap().registered_at = "2026-11-25T00:00:00Z".into();
        save_state(&p, &s).unwrap();
        let mut written: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(
            written["workspaces"][0]["registered_at"],
            json!("2026-11-25T00:00:00Z")
        );
        written["workspaces"][0]["registered_at"] = v["workspaces"][0]["registered_at"].clone();
        assert_eq!(written, v);
    }

    #[test]
    fn btrfs_base_paths_have_no_loop_img() {
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("sub/state.json");
        let mut s = StateFile::new(
            BackendIdentity {
                backend_type: BackendType::BtrfsBase,
                selection_method: SelectionMethod::ConfigOverride,
                selected_at: "2026-11-24T15:07:42Z".into(),
                extra: Map::new(),
            },
            BackendPaths {
                backend: BackendType::BtrfsBase,
                mount_path: "/data".into(),
                data_root: "/data/ws-ckpt-data".into(),
                snapshots_root: "/data/ws-ckpt-data/snapshots".into(),
                loop_img: None,
                extra: Map::new(),
            },
        );
        s.workspaces.push(WorkspaceEntry {
            ws_id: "ws-1a2b3c".into(),
            workspace_path: "/home/alice/p".into(),
            registered_at: "2026-11-24T15:07:42Z".into(),
            origin_backend: BackendType::BtrfsBase,
            owner_uid: Some(1000),
            parent: None,
            others_search: None,
            extra: Map::new(),
        });
        save_state(&p, &s).unwrap();
        let v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert!(v["paths"].get("loop_img").is_none());
        assert!(v.get("pending").is_none() && v.get("last_unclean_shutdown").is_none());
        assert_eq!(v["backend"]["backend_type"], json!("BtrfsBase"));
        assert_eq!(v["backend"]["selection_method"], json!("config-override"));
        assert_eq!(v["workspaces"][0]["owner_uid"], json!(1000));
        assert_eq!(load_ok(&p), s);
        // The 0.3 form of a base state (no loop_img, no workspaces key) loads too.
        fs::write(
            &p,
            r#"{"version":1,"backend":{"backend_type":"BtrfsBase","selection_method":"config","selected_at":"t"},
               "paths":{"backend":"BtrfsBase","mount_path":"/d","data_root":"/d/w","snapshots_root":"/d/w/snapshots"}}"#,
        )
        .unwrap();
        let s = load_ok(&p);
        assert!(s.paths.loop_img.is_none() && s.workspaces.is_empty());
        assert_eq!(SelectionMethod::AutoDetect.to_string(), "auto-detect");
        assert_eq!(BackendType::BtrfsLoop.to_string(), "btrfs-loop");
    }

    #[test]
    fn newer_version_is_never_overwritten() {
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("state.json");
        let mut v: Value = serde_json::from_str(SPEC_EXAMPLE).unwrap();
        v["version"] = json!(2);
        v["backend"] = json!("a shape we do not know");
        let original = serde_json::to_vec(&v).unwrap();
        fs::write(&p, &original).unwrap();

        match load_state(&p, now()).unwrap() {
            StateLoad::NewerVersion { version } => assert_eq!(version, 2),
            other => panic!("expected NewerVersion, got {other:?}"),
        }
        assert_eq!(fs::read(&p).unwrap(), original);

        fs::write(&p, SPEC_EXAMPLE).unwrap();
        let s = load_ok(&p);
        fs::write(&p, &original).unwrap();
        let err = save_state(&p, &s).unwrap_err();
        assert!(matches!(err, StateError::NewerVersion { version: 2, .. }));
        let msg = err.to_string();
        assert!(msg.contains("written by a newer ws-ckpt"), "{msg}");
        assert!(msg.contains("state.json"), "{msg}");
        assert_eq!(fs::read(&p).unwrap(), original);
        assert_eq!(dir_names(td.path()), ["state.json"]);

        // Huge versions saturate instead of failing.
        fs::write(&p, r#"{"version": 99999999999}"#).unwrap();
        assert!(matches!(
            load_state(&p, now()).unwrap(),
            StateLoad::NewerVersion { version: u32::MAX }
        ));
    }

    #[test]
    fn corrupt_files_are_moved_aside_with_their_bytes() {
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("state.json");
        assert!(matches!(load_state(&p, now()).unwrap(), StateLoad::Missing));

        let stamp = crate::time::format_rfc3339(now()).replace(['-', ':'], "");
        let cases: [&[u8]; 6] = [
            b"{\"version\": 1, \"backend\": ",   // torn JSON
            b"",                                 // empty
            br#"{"version": "1"}"#,              // version not an integer
            br#"{"version": 1.5}"#,              // version not an integer
            br#"[1, 2]"#,                        // not an object
            br#"{"version": 1, "backend": {}}"#, // valid JSON, wrong shape
        ];
        for (i, bytes) in cases.iter().enumerate() {
            fs::write(&p, bytes).unwrap();
            match load_state(&p, now()).unwrap() {
                StateLoad::Corrupt { moved_to, error } => {
                    let suffix = if i == 0 {
                        String::new()
                    } else {
                        format!("-{}", i + 1)
                    };
                    let expected = td
                        .path()
                        .join(format!("state.json.corrupt-{stamp}{suffix}"));
                    assert_eq!(moved_to, expected, "case {i}");
                    assert_eq!(&fs::read(&moved_to).unwrap(), bytes, "case {i}");
                    assert!(!error.is_empty());
                }
                other => panic!("case {i}: expected Corrupt, got {other:?}"),
            }
            assert!(!p.exists(), "case {i}");
            assert!(matches!(load_state(&p, now()).unwrap(), StateLoad::Missing));
        }
        assert_eq!(dir_names(td.path()).len(), cases.len());
    }

    #[test]
    fn unreadable_path_is_an_error_naming_it() {
        let td = tempfile::tempdir().unwrap();
        // A directory where the file should be: cannot be read, must not be moved.
        let p = td.path().join("state.json");
        fs::create_dir(&p).unwrap();
        let err = load_state(&p, now()).unwrap_err();
        assert!(err.to_string().contains("state.json"), "{err}");
        assert!(p.is_dir());
    }

    #[test]
    fn a_parent_is_the_same_across_a_new_device_number_only_by_its_filesystem_id() {
        let rec = ParentRecord {
            dev: 0x700,
            ino: 42,
            uid: 1000,
            fsid: Some(7),
        };
        let moved = ParentRecord { dev: 0x701, ..rec };
        assert!(rec.matches(&rec));
        assert!(rec.matches(&moved), "same filesystem ID, new st_dev");
        assert!(!rec.matches(&ParentRecord { ino: 43, ..moved }));
        assert!(!rec.matches(&ParentRecord {
            fsid: Some(8),
            ..moved
        }));
        let unknown = ParentRecord { fsid: None, ..rec };
        assert!(!unknown.matches(&moved), "no ID recorded: st_dev decides");
        let id = crate::tree::Identity { dev: 0x700, ino: 9 };
        assert_eq!(
            rec.rebase(&moved, id),
            crate::tree::Identity { dev: 0x701, ino: 9 }
        );
        let elsewhere = crate::tree::Identity { dev: 0x900, ino: 9 };
        assert_eq!(rec.rebase(&moved, elsewhere), elsewhere);
    }
}
