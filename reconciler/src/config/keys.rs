//! The reference documentation of every configuration key, for `ws-ckpt.toml(5)` and
//! `config show` readers.
//!
//! What it does: [`accepted_keys`] lists every key the parser accepts, read from the serde
//! field lists of the raw config types (a recording [`serde::Deserializer`] walks them), so a
//! key added to the parser shows up here by itself; [`DOCS`] describes each key and
//! [`documented`] joins the two with the defaults taken from [`Config::defaults`]. A unit test
//! fails when a key is accepted but undocumented, or documented but not accepted, so the man
//! page cannot drift from the parser.
//!
//! What it must not do: parse or validate config files (that is [`super`]'s job), or hold
//! a default value of its own: defaults come from the code that applies them.

use std::path::Path;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::raw::RawFile;
use super::{Config, DEFAULT_CONFIG_PATH};

/// The documentation of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDoc {
    /// Dotted key: `daemon.state_dir`, `backend.btrfs-loop.image`, `workspace.path`;
    /// top-level keys (the ws-ckpt 0.2/0.3 aliases) have no dot.
    pub key: &'static str,
    /// What the value is, in TOML terms (`string (absolute path)`, `integer`, `duration`…).
    pub value: &'static str,
    /// What it does, what is accepted, and how it interacts with other keys.
    pub text: &'static str,
}

/// One table of the config file, for the section headings of the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionDoc {
    /// Dotted table name (`daemon`, `backend.btrfs-loop`, `workspace`), or `""` for the
    /// top level.
    pub name: &'static str,
    /// How it is written in TOML (`[daemon]`, `[[workspace]]`).
    pub header: &'static str,
    /// What the table is for.
    pub text: &'static str,
}

/// A key as the reference prints it: its documentation, section and default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentedKey {
    /// The key's documentation; `None` when [`DOCS`] lacks it (a unit test forbids that).
    pub doc: Option<KeyDoc>,
    /// The dotted key.
    pub key: String,
    /// The table it belongs to (`""` = top level).
    pub section: String,
    /// The key's name inside its table.
    pub name: String,
    /// The built-in default as TOML (`"/var/lib/ws-ckpt"`, `20`), when the key has one.
    pub default: Option<String>,
}

/// The tables of the config file, in file order.
pub const SECTIONS: &[SectionDoc] = &[
    SectionDoc {
        name: "daemon",
        header: "[daemon]",
        text: "Where ws-ckpt keeps its state and socket, and how the daemon runs.",
    },
    SectionDoc {
        name: "backend",
        header: "[backend]",
        text: "Which storage holds the workspaces.",
    },
    SectionDoc {
        name: "backend.btrfs-loop",
        header: "[backend.btrfs-loop]",
        text: "A btrfs filesystem in a sparse image file on a loop device, created, attached, mounted and grown by ws-ckpt.",
    },
    SectionDoc {
        name: "backend.btrfs-base",
        header: "[backend.btrfs-base]",
        text: "An already mounted btrfs filesystem; ws-ckpt keeps its data in <btrfs_mount>/ws-ckpt-data.",
    },
    SectionDoc {
        name: "retention",
        header: "[retention]",
        text: "Defaults for every workspace: which snapshots the retention pass and `ws-ckpt cleanup` delete. Pinned snapshots and the newest snapshot are never deleted.",
    },
    SectionDoc {
        name: "access",
        header: "[access]",
        text: "What non-root callers of the daemon's socket may do besides operating on workspaces they own or are allowed on.",
    },
    SectionDoc {
        name: "workspace",
        header: "[[workspace]]",
        text: "One table per workspace. `ws-ckpt init PATH` writes one into config.d/50-<ws_id>.toml; `ws-ckpt release PATH` sets state = \"absent\" in the file that declares it. The same path declared in two files must be declared identically.",
    },
    SectionDoc {
        name: "",
        header: "top-level keys",
        text: "Accepted for configs written for ws-ckpt 0.2/0.3. When a file sets both an alias and the new key, the new key wins.",
    },
];

/// The documentation of every key the parser accepts (a unit test checks both directions).
pub const DOCS: &[KeyDoc] = &[
    KeyDoc {
        key: "daemon.state_dir",
        value: "string (absolute path)",
        text: "Holds state.json, the per-workspace indexes (indexes/<ws_id>/), daemon.lock and audit.jsonl, and the loop image unless backend.btrfs-loop.image says otherwise. The systemd unit's StateDirectory= is /var/lib/ws-ckpt; another value needs the directory to exist or be creatable by root.",
    },
    KeyDoc {
        key: "daemon.runtime_dir",
        value: "string (absolute path)",
        text: "Holds the daemon's socket ws-ckpt.sock (mode 0666; callers are authorized by their uid). Every command looks for the daemon there.",
    },
    KeyDoc {
        key: "daemon.reconcile_interval",
        value: "duration",
        text: "How often the daemon runs a full reconcile pass besides the passes triggered by config changes, mount changes, snapshot deletions, SIGHUP and `ws-ckpt apply`/`reload`. \"0\" runs passes only on those events.",
    },
    KeyDoc {
        key: "daemon.log_level",
        value: "string",
        text: "The daemon's log level: error, warn, info, debug or trace. The environment variable WS_CKPT_LOG overrides it (an EnvFilter directive).",
    },
    KeyDoc {
        key: "backend.type",
        value: "string",
        text: "auto, btrfs-loop or btrfs-base. auto keeps the backend recorded in state.json; without state it is detected once (btrfs-base when a suitable btrfs filesystem is mounted, else btrfs-loop) and recorded. An explicit type that differs from the recorded one while workspaces exist on the old backend is a backend-conflict finding: nothing is moved or created.",
    },
    KeyDoc {
        key: "backend.btrfs-loop.image",
        value: "string (absolute path)",
        text: "The sparse image file holding the btrfs filesystem. Default: btrfs-data.img in daemon.state_dir.",
    },
    KeyDoc {
        key: "backend.btrfs-loop.mount",
        value: "string (absolute path)",
        text: "Where the image is mounted; workspace subvolumes live there and snapshots under <mount>/snapshots.",
    },
    KeyDoc {
        key: "backend.btrfs-loop.img_size",
        value: "integer (GiB, at least 1)",
        text: "Absolute cap on the image size. The image is created at min(img_size, img_max_percent of the filesystem holding it), or at that percentage of the free space when the target exceeds it. A larger value later grows the image online; a smaller one is reported (image-shrink-refused) and never applied.",
    },
    KeyDoc {
        key: "backend.btrfs-loop.img_max_percent",
        value: "integer (1 to 100)",
        text: "Cap on the image size as a percentage of the size of the filesystem holding the image; the smaller of the two caps wins.",
    },
    KeyDoc {
        key: "backend.btrfs-loop.legacy_image",
        value: "string (absolute path)",
        text: "Where ws-ckpt 0.2 and older kept the image. An image found there (and none at image) is moved to image by the migrate-image-path action; when both exist the old one is left alone and reported.",
    },
    KeyDoc {
        key: "backend.btrfs-base.btrfs_mount",
        value: "string (absolute path)",
        text: "The mount point of the btrfs filesystem to use. When unset, the first writable btrfs mount that is not backed by a loop device and not a subvolume-only mount is used.",
    },
    KeyDoc {
        key: "retention.auto_cleanup",
        value: "boolean",
        text: "Run the retention pass automatically every retention.interval. Without it, snapshots are only deleted by `ws-ckpt cleanup` and `ws-ckpt delete`.",
    },
    KeyDoc {
        key: "retention.keep",
        value: "integer (count, at least 1) or duration string (age)",
        text: "What the retention pass and `ws-ckpt cleanup` keep: an integer keeps that many newest unpinned snapshots per workspace; an age such as \"30d\" deletes unpinned snapshots older than that.",
    },
    KeyDoc {
        key: "retention.interval",
        value: "duration (not 0)",
        text: "How often the automatic retention pass runs (when auto_cleanup is true).",
    },
    KeyDoc {
        key: "retention.max_snapshots",
        value: "integer (1 to 1000000; default 100000)",
        text: "Most snapshots one workspace may hold. A checkpoint beyond it is refused with an error naming max_snapshots; delete or clean up snapshots (or raise the limit) to take more.",
    },
    KeyDoc {
        key: "access.user_init",
        value: "boolean",
        text: "Let a non-root caller `ws-ckpt init` (or checkpoint) a directory it owns, which declares it in config.d. When false only root declares workspaces.",
    },
    KeyDoc {
        key: "workspace.path",
        value: "string (absolute path, required)",
        text: "The workspace directory. It must exist when the workspace is initialized; afterwards it is a symlink to the workspace's subvolume. Written without a trailing slash, `.` or `..`.",
    },
    KeyDoc {
        key: "workspace.id",
        value: "string",
        text: "The workspace ID, matching [A-Za-z0-9][A-Za-z0-9._-]{0,63}. Default: ws- followed by the first 6 hex digits of the SHA-256 of the path (with -2, -3… on collision). Two workspaces cannot share an id.",
    },
    KeyDoc {
        key: "workspace.keep",
        value: "integer or duration string",
        text: "Overrides retention.keep for this workspace.",
    },
    KeyDoc {
        key: "workspace.auto_cleanup",
        value: "boolean",
        text: "Overrides retention.auto_cleanup for this workspace.",
    },
    KeyDoc {
        key: "workspace.max_snapshots",
        value: "integer (1 to 1000000)",
        text: "Overrides retention.max_snapshots for this workspace.",
    },
    KeyDoc {
        key: "workspace.allow_users",
        value: "array of strings (user names)",
        text: "Users who may checkpoint, roll back, list, delete, clean up and diff this workspace through the daemon, besides its owner and root.",
    },
    KeyDoc {
        key: "workspace.allow_groups",
        value: "array of strings (group names)",
        text: "Groups whose members have the same rights as allow_users.",
    },
    KeyDoc {
        key: "workspace.state",
        value: "string",
        text: "present (the default) keeps it a workspace; absent releases it: the data goes back to a plain directory at the path (verified before the subvolume and snapshots are deleted). A workspace removed from every file without state = \"absent\" is undeclared: reported, never released except by `ws-ckpt apply --prune`.",
    },
    KeyDoc {
        key: "auto_cleanup",
        value: "boolean",
        text: "Alias of retention.auto_cleanup (ws-ckpt 0.2/0.3).",
    },
    KeyDoc {
        key: "auto_cleanup_keep",
        value: "integer (at least 1)",
        text: "Alias of retention.keep, as a count (ws-ckpt 0.2/0.3).",
    },
    KeyDoc {
        key: "auto_cleanup_interval_secs",
        value: "integer (seconds, at least 1)",
        text: "Alias of retention.interval in seconds (ws-ckpt 0.2/0.3).",
    },
    KeyDoc {
        key: "health_check_interval_secs",
        value: "integer (seconds)",
        text: "Alias of daemon.reconcile_interval in seconds; 0 = only on events (ws-ckpt 0.2/0.3).",
    },
];

/// Every key the parser accepts, as dotted names in the order the raw types declare them
/// (tables first-level order: daemon, backend, retention, access, workspace, then the
/// top-level aliases). Read from the serde derive of the raw types, not from a list.
pub fn accepted_keys() -> Vec<String> {
    walk_raw().0.keys
}

/// Every table the parser accepts, as dotted names (`daemon`, `backend.btrfs-loop`,
/// `workspace`), from the same walk as [`accepted_keys`].
pub fn accepted_tables() -> Vec<String> {
    walk_raw().0.tables
}

/// Walk the raw types. The recording deserializer feeds every field a value, so the walk
/// only fails when a raw type gains a kind of value the walker cannot describe; the key is
/// still recorded and the unit test reports the error.
fn walk_raw() -> (Walk, Result<(), WalkError>) {
    let mut walk = Walk::default();
    let result = <RawFile as serde::Deserialize>::deserialize(Walker {
        path: String::new(),
        walk: &mut walk,
    })
    .map(drop);
    (walk, result)
}

/// [`accepted_keys`] with their documentation and defaults, in the parser's order.
pub fn documented() -> Vec<DocumentedKey> {
    let defaults = defaults_table();
    accepted_keys()
        .into_iter()
        .map(|key| {
            let (section, name) = match key.rsplit_once('.') {
                Some((s, n)) => (s.to_string(), n.to_string()),
                None => (String::new(), key.clone()),
            };
            DocumentedKey {
                doc: DOCS.iter().find(|d| d.key == key).copied(),
                default: default_of(&defaults, &key),
                section,
                name,
                key,
            }
        })
        .collect()
}

/// The built-in defaults as the TOML table `config show` prints for an empty config.
fn defaults_table() -> toml::Table {
    Config::defaults(Path::new(DEFAULT_CONFIG_PATH))
        .to_canonical_toml()
        .parse()
        .unwrap_or_default()
}

/// The default of a dotted key as TOML text, or `None` (workspace keys and the aliases fall
/// back to other keys; `btrfs_mount` is detected).
fn default_of(defaults: &toml::Table, key: &str) -> Option<String> {
    let mut parts = Vec::new();
    let mut rest = key;
    // Table names contain no dots except as separators; `btrfs-loop` is one part.
    while let Some((head, tail)) = rest.split_once('.') {
        parts.push(head);
        rest = tail;
    }
    parts.push(rest);
    if parts.len() < 2 {
        return None;
    }
    let mut value = defaults.get(parts[0])?;
    for p in &parts[1..] {
        value = value.as_table()?.get(*p)?;
    }
    match value {
        toml::Value::Table(_) | toml::Value::Array(_) => None,
        v => Some(v.to_string()),
    }
}

/// What the walk found.
#[derive(Default)]
struct Walk {
    keys: Vec<String>,
    tables: Vec<String>,
}

impl Walk {
    fn key(&mut self, path: &str) {
        if !path.is_empty() && !self.keys.iter().any(|k| k == path) {
            self.keys.push(path.to_string());
        }
    }
}

/// The walker's error type (it only exists to satisfy serde; a walk does not fail).
#[derive(Debug)]
struct WalkError(String);

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WalkError {}

impl de::Error for WalkError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        WalkError(msg.to_string())
    }
}

/// A deserializer that answers every request with a minimal value and records, for every
/// struct it is asked for, its fields: a field holding a struct is a table, any other a key.
/// `toml::Spanned` (a private struct name starting with `$__`) is looked through.
struct Walker<'w> {
    path: String,
    walk: &'w mut Walk,
}

impl<'w> Walker<'w> {
    fn child(&mut self, field: &str) -> Walker<'_> {
        let path = if self.path.is_empty() {
            field.to_string()
        } else {
            format!("{}.{field}", self.path)
        };
        Walker {
            path,
            walk: &mut *self.walk,
        }
    }

    fn leaf(self) {
        self.walk.key(&self.path);
    }
}

macro_rules! leaf {
    ($($method:ident => $visit:ident($($value:expr)?)),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, WalkError> {
            self.leaf();
            visitor.$visit($($value)?)
        })*
    };
}

impl<'de> Deserializer<'de> for Walker<'_> {
    type Error = WalkError;

    leaf! {
        deserialize_any => visit_bool(false),
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i8(0),
        deserialize_i16 => visit_i16(0),
        deserialize_i32 => visit_i32(0),
        deserialize_i64 => visit_i64(0),
        deserialize_u8 => visit_u8(0),
        deserialize_u16 => visit_u16(0),
        deserialize_u32 => visit_u32(0),
        deserialize_u64 => visit_u64(0),
        deserialize_f32 => visit_f32(0.0),
        deserialize_f64 => visit_f64(0.0),
        deserialize_char => visit_char('x'),
        deserialize_str => visit_borrowed_str(""),
        deserialize_string => visit_borrowed_str(""),
        deserialize_bytes => visit_borrowed_bytes(b""),
        deserialize_byte_buf => visit_borrowed_bytes(b""),
        deserialize_unit => visit_unit(),
        deserialize_identifier => visit_borrowed_str(""),
        deserialize_ignored_any => visit_unit(),
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, WalkError> {
        visitor.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, WalkError> {
        self.leaf();
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, WalkError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, WalkError> {
        visitor.visit_seq(OneElement { walker: Some(self) })
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, WalkError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, WalkError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, WalkError> {
        // A free-form table: a key of its own (no raw type has one today).
        self.leaf();
        visitor.visit_map(de::value::MapDeserializer::<
            std::iter::Empty<((), ())>,
            WalkError,
        >::new(std::iter::empty()))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, WalkError> {
        let wrapper = name.starts_with("$__");
        if !wrapper && !self.path.is_empty() && !self.walk.tables.contains(&self.path) {
            self.walk.tables.push(self.path.clone());
        }
        visitor.visit_map(Fields {
            walker: self,
            fields,
            next: 0,
            wrapper,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, WalkError> {
        let path = self.path.clone();
        self.leaf();
        Err(WalkError(format!(
            "{path}: an enum in a raw config type; the key walk cannot describe it"
        )))
    }
}

/// A sequence of exactly one element (an array of tables documents its tables once).
struct OneElement<'w> {
    walker: Option<Walker<'w>>,
}

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = WalkError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, WalkError> {
        match self.walker.take() {
            Some(w) => seed.deserialize(w).map(Some),
            None => Ok(None),
        }
    }
}

/// The fields of one struct, each with a walker for its value.
struct Fields<'w> {
    walker: Walker<'w>,
    fields: &'static [&'static str],
    next: usize,
    wrapper: bool,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = WalkError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, WalkError> {
        let Some(field) = self.fields.get(self.next) else {
            return Ok(None);
        };
        seed.deserialize(de::value::BorrowedStrDeserializer::new(field))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, WalkError> {
        let field = self.fields[self.next];
        self.next += 1;
        if self.wrapper {
            // A span wrapper: the value field is the wrapped value at the same path; the
            // others (start, end) are numbers that are not config keys.
            if field.ends_with("value") {
                let walker = Walker {
                    path: self.walker.path.clone(),
                    walk: &mut *self.walker.walk,
                };
                return seed.deserialize(walker);
            }
            return seed.deserialize(de::value::U64Deserializer::<WalkError>::new(0));
        }
        seed.deserialize(self.walker.child(field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_accepted_key_is_documented_and_every_documented_key_is_accepted() {
        let accepted = accepted_keys();
        let undocumented: Vec<&String> = accepted
            .iter()
            .filter(|k| !DOCS.iter().any(|d| d.key == k.as_str()))
            .collect();
        assert!(
            undocumented.is_empty(),
            "config keys the parser accepts but reconciler/src/config/keys.rs DOCS does not describe: {undocumented:?}"
        );
        let stale: Vec<&str> = DOCS
            .iter()
            .map(|d| d.key)
            .filter(|k| !accepted.iter().any(|a| a == k))
            .collect();
        assert!(
            stale.is_empty(),
            "DOCS describes keys the parser does not accept: {stale:?}"
        );
        let mut seen = std::collections::HashSet::new();
        for d in DOCS {
            assert!(seen.insert(d.key), "{} is documented twice", d.key);
            assert!(!d.text.is_empty() && !d.value.is_empty(), "{}", d.key);
        }
    }

    #[test]
    fn the_walk_finds_known_keys_tables_and_renamed_fields() {
        let (walk, result) = walk_raw();
        result.expect("the walk of the raw config types failed");
        let keys = walk.keys;
        eprintln!("{keys:?}");
        for k in [
            "daemon.state_dir",
            "backend.type",
            "backend.btrfs-loop.img_size",
            "backend.btrfs-base.btrfs_mount",
            "workspace.path",
            "workspace.allow_groups",
            "health_check_interval_secs",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} not in {keys:?}");
        }
        assert!(
            !keys.iter().any(|k| k.contains("$__")),
            "span wrappers leaked into the keys: {keys:?}"
        );
        // Tables are not keys.
        for t in ["daemon", "backend", "backend.btrfs-loop", "workspace"] {
            assert!(!keys.iter().any(|k| k == t), "{t} listed as a key");
        }
        assert_eq!(
            accepted_tables(),
            [
                "daemon",
                "backend",
                "backend.btrfs-loop",
                "backend.btrfs-base",
                "retention",
                "access",
                "workspace"
            ]
        );
    }

    #[test]
    fn every_table_has_a_section_and_every_key_a_known_section() {
        let tables = accepted_tables();
        for t in &tables {
            assert!(
                SECTIONS.iter().any(|s| s.name == t),
                "table [{t}] has no SectionDoc"
            );
        }
        for k in documented() {
            assert!(
                SECTIONS.iter().any(|s| s.name == k.section),
                "{}: section {:?} undocumented",
                k.key,
                k.section
            );
        }
    }

    #[test]
    fn defaults_come_from_the_code() {
        let by_key = |k: &str| {
            documented()
                .into_iter()
                .find(|d| d.key == k)
                .unwrap_or_else(|| panic!("{k}"))
        };
        assert_eq!(
            by_key("daemon.state_dir").default.as_deref(),
            Some("\"/var/lib/ws-ckpt\"")
        );
        assert_eq!(by_key("retention.keep").default.as_deref(), Some("20"));
        assert_eq!(
            by_key("backend.btrfs-loop.img_size").default.as_deref(),
            Some("30")
        );
        assert_eq!(by_key("backend.type").default.as_deref(), Some("\"auto\""));
        assert_eq!(by_key("workspace.path").default, None);
        assert_eq!(by_key("auto_cleanup").default, None);
        assert_eq!(by_key("backend.btrfs-base.btrfs_mount").default, None);
        // Every documented default parses back as a config value.
        for k in documented() {
            if let Some(d) = &k.default {
                let text = if k.section.is_empty() {
                    format!("{} = {d}\n", k.name)
                } else {
                    format!("[{}]\n{} = {d}\n", k.section, k.name)
                };
                Config::from_sources(
                    Path::new("/c.toml"),
                    &[(std::path::PathBuf::from("/c.toml"), text.clone())],
                )
                .unwrap_or_else(|e| panic!("default of {} does not parse: {e}\n{text}", k.key));
            }
        }
    }
}
