//! One snapshot of a workspace index ([`SnapshotEntry`]): `snapshots.<id>` of `index.json` and
//! `entry` of a journal line, in the JSON form of ws-ckpt 0.3 / upstream 0.5.0
//! (`{"message", "metadata", "pinned", "created_at", "missing", …}`, then every other field
//! in the order it was read: the lineage fields `parent_id` and `child_ids`, and fields this
//! version does not know, written back unchanged).
//!
//! An index holds one entry per snapshot and the daemon holds every index, so the entry is
//! compact in memory (48 bytes, and for an entry without message, metadata or unknown fields
//! at most one allocation, for its lineage): the creation time is a [`Timestamp`] that renders
//! its text again, the lineage is one string, message and metadata (as compact JSON text) live
//! in a box that adopted snapshots do not have, and what even fewer entries have (fields this
//! version does not know, odd lineage values, metadata whose text would not read back) in a
//! box inside that one. What it writes is byte for byte what it read (or what a
//! `#[derive(Serialize)]` of the plain fields wrote before); the unit tests check that against
//! such a reference type.
//!
//! Data only: this module must not decide what goes into an entry (see `state::lineage` for
//! the lineage rules).

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::time::Timestamp;

/// Name of the lineage parent field (`state::lineage`).
pub(super) const PARENT: &str = "parent_id";
/// Name of the lineage children field (`state::lineage`).
pub(super) const CHILDREN: &str = "child_ids";

/// `parent_id` is present.
const HAS_PARENT: u8 = 1;
/// `parent_id` is a string (not `null`).
const PARENT_STR: u8 = 2;
/// `child_ids` is present.
const HAS_CHILDREN: u8 = 4;
/// `child_ids` comes before `parent_id`.
const CHILDREN_FIRST: u8 = 8;
/// Separates the parent and each child in [`SnapshotEntry::lineage`] (IDs are never control
/// characters; a lineage value holding one makes the entry keep its fields as JSON values).
const SEP: char = '\n';

/// One snapshot of a workspace.
#[derive(Clone, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// Creation time (RFC 3339, parsed once when read).
    pub created_at: Timestamp,
    /// Rare parts: message, metadata, and the fields after `missing` when they are not only
    /// well-formed lineage fields. `None` when there are none.
    rare: Option<Box<Rare>>,
    /// The lineage when `rare` holds no fields: the parent ID (empty unless
    /// [`PARENT_STR`]), then [`SEP`] and a child ID for each child. `None` when empty.
    lineage: Option<Box<str>>,
    /// Which lineage fields are present, and in which order ([`HAS_PARENT`]…); 0 when
    /// `rare` holds the fields.
    flags: u8,
    /// Pinned snapshots are never removed by retention.
    pub pinned: bool,
    /// The snapshot subvolume was found gone (shown as MISSING).
    pub missing: bool,
}

#[derive(Clone, PartialEq, Eq, Default)]
struct Rare {
    message: Option<Box<str>>,
    /// The metadata as compact JSON text (parsed again when it is asked for or written).
    metadata: Option<Box<str>>,
    odd: Option<Box<Odd>>,
}

/// What even fewer entries have.
#[derive(Clone, PartialEq, Eq, Default)]
struct Odd {
    /// The metadata when its compact text would not read back as the same value (a float
    /// the parser rounds differently, nesting deeper than the parser allows); `Rare::metadata`
    /// is `None` then.
    metadata: Option<Value>,
    /// Every field after `missing`, in order, when they cannot be held compactly (a field
    /// this version does not know, a lineage value that is not an ID or a list of IDs).
    fields: Option<Map<String, Value>>,
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.message.is_none() && self.metadata.is_none() && self.odd.is_none()
    }

    fn odd_mut(&mut self) -> &mut Odd {
        self.odd.get_or_insert_with(Box::default)
    }

    /// Hold `v` as the metadata (`null` is none: both are written as `null`).
    fn set_metadata(&mut self, v: Option<Value>) {
        self.metadata = None;
        if let Some(odd) = self.odd.as_mut() {
            odd.metadata = None;
        }
        match v {
            None | Some(Value::Null) => {}
            Some(v) => {
                let text = v.to_string();
                let (floats, depth) = shape(&v);
                let reads_back = depth <= TEXT_MAX_DEPTH
                    && (!floats || serde_json::from_str::<Value>(&text).ok().as_ref() == Some(&v));
                if reads_back {
                    self.metadata = Some(text.into_boxed_str());
                } else {
                    self.odd_mut().metadata = Some(v);
                }
            }
        }
        if self
            .odd
            .as_ref()
            .is_some_and(|o| o.metadata.is_none() && o.fields.is_none())
        {
            self.odd = None;
        }
    }

    fn metadata(&self) -> Result<Option<Value>, serde_json::Error> {
        if let Some(t) = &self.metadata {
            return serde_json::from_str(t).map(Some);
        }
        Ok(self.odd.as_ref().and_then(|o| o.metadata.clone()))
    }
}

/// Nesting of metadata up to which its compact text always parses again (serde_json stops at
/// 128 levels).
const TEXT_MAX_DEPTH: usize = 100;

/// Whether `v` holds a float, and its nesting depth.
fn shape(v: &Value) -> (bool, usize) {
    let nested = |it: &mut dyn Iterator<Item = &Value>| {
        it.map(shape)
            .fold((false, 1), |(f, d), (cf, cd)| (f || cf, d.max(cd + 1)))
    };
    match v {
        Value::Number(n) => (n.is_f64(), 1),
        Value::Array(a) => nested(&mut a.iter()),
        Value::Object(o) => nested(&mut o.values()),
        _ => (false, 1),
    }
}

/// The metadata of an entry as it is written: its value, or `null`.
struct MetadataOut<'a>(Option<&'a Rare>);

impl Serialize for MetadataOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some(r) = self.0 else {
            return s.serialize_none();
        };
        if let Some(v) = r.odd.as_ref().and_then(|o| o.metadata.as_ref()) {
            return v.serialize(s);
        }
        match r.metadata() {
            Ok(Some(v)) => v.serialize(s),
            Ok(None) => s.serialize_none(),
            Err(e) => Err(serde::ser::Error::custom(e)),
        }
    }
}

/// Whether `v` is a lineage value held compactly: `parent_id` a string or `null`,
/// `child_ids` an array of strings, none holding [`SEP`].
fn compact_value(key: &str, v: &Value) -> bool {
    let id = |v: &Value| v.as_str().is_some_and(|s| !s.contains(SEP));
    match key {
        PARENT => v.is_null() || id(v),
        CHILDREN => v.as_array().is_some_and(|a| a.iter().all(id)),
        _ => false,
    }
}

impl SnapshotEntry {
    /// An unpinned entry without message or metadata.
    pub fn new(created_at: Timestamp) -> Self {
        SnapshotEntry {
            created_at,
            rare: None,
            lineage: None,
            flags: 0,
            pinned: false,
            missing: false,
        }
    }

    /// The checkpoint message (`-m`).
    pub fn message(&self) -> Option<&str> {
        self.rare.as_ref()?.message.as_deref()
    }

    /// Set the checkpoint message.
    pub fn set_message(&mut self, message: Option<String>) {
        self.rare_mut().message = message.map(String::into_boxed_str);
        self.tidy();
    }

    /// Caller-supplied JSON metadata (`--metadata`), decoded.
    pub fn metadata(&self) -> Option<Value> {
        // Text is only kept when it parses back (`Rare::set_metadata`).
        self.rare.as_ref()?.metadata().ok().flatten()
    }

    /// Set the metadata (`null` is the same as none: both are written as `null`).
    pub fn set_metadata(&mut self, metadata: Option<Value>) {
        self.rare_mut().set_metadata(metadata);
        self.tidy();
    }

    /// The fields after `missing` (lineage and fields this version does not know), in
    /// their order, as JSON values.
    pub fn extra_fields(&self) -> Map<String, Value> {
        if let Some(f) = self.fields() {
            return f.clone();
        }
        let mut out = Map::new();
        for key in self.compact_order() {
            out.insert(key.to_string(), self.compact_value(key));
        }
        out
    }

    /// The snapshot the live workspace descended from when this one was taken (`parent_id`).
    pub fn parent_id(&self) -> Option<&str> {
        if let Some(f) = self.fields() {
            return f.get(PARENT).and_then(Value::as_str);
        }
        (self.flags & PARENT_STR != 0).then(|| self.compact_parts().0)
    }

    /// The snapshots taken from this one (`child_ids`, with `state::lineage::LIVE_CHILD`
    /// when it is the head).
    pub fn child_ids(&self) -> Vec<&str> {
        self.child_ids_iter().collect()
    }

    /// [`SnapshotEntry::child_ids`], without collecting them.
    pub fn child_ids_iter(&self) -> impl Iterator<Item = &str> {
        let (listed, compact) = match self.fields() {
            Some(f) => (
                f.get(CHILDREN)
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str)),
                None,
            ),
            None => (
                None,
                (self.flags & HAS_CHILDREN != 0).then(|| self.compact_parts().1),
            ),
        };
        listed
            .into_iter()
            .flatten()
            .chain(compact.into_iter().flatten())
    }

    /// Whether the lineage field `key` ([`PARENT`] or [`CHILDREN`]) is present.
    pub(super) fn has_field(&self, key: &str) -> bool {
        if let Some(f) = self.fields() {
            return f.contains_key(key);
        }
        match key {
            PARENT => self.flags & HAS_PARENT != 0,
            CHILDREN => self.flags & HAS_CHILDREN != 0,
            _ => false,
        }
    }

    /// Set `parent_id` to `parent` (`null` for `None`); a present field keeps its place, a
    /// new one goes last.
    pub(super) fn put_parent(&mut self, parent: Option<&str>) {
        if self.fields().is_none() && parent.is_none_or(|p| !p.contains(SEP)) {
            let children: Vec<&str> = self.child_ids();
            let mut flags = self.flags | HAS_PARENT;
            if self.flags & HAS_PARENT == 0 && self.flags & HAS_CHILDREN != 0 {
                flags |= CHILDREN_FIRST;
            }
            flags = if parent.is_some() {
                flags | PARENT_STR
            } else {
                flags & !PARENT_STR
            };
            let lineage = join(parent.unwrap_or(""), &children);
            self.lineage = lineage;
            self.flags = flags;
            return;
        }
        let v = parent.map_or(Value::Null, Value::from);
        self.put_field(PARENT, v);
    }

    /// Set `child_ids` to `children`; a present field keeps its place, a new one goes last.
    pub(super) fn put_children(&mut self, children: &[String]) {
        if self.fields().is_none() && children.iter().all(|c| !c.contains(SEP)) {
            let parent = self.compact_parts().0;
            let children: Vec<&str> = children.iter().map(String::as_str).collect();
            let lineage = join(parent, &children);
            let mut flags = self.flags | HAS_CHILDREN;
            if self.flags & HAS_CHILDREN == 0 {
                flags &= !CHILDREN_FIRST;
            }
            self.lineage = lineage;
            self.flags = flags;
            return;
        }
        let v = Value::Array(children.iter().map(|c| Value::from(c.as_str())).collect());
        self.put_field(CHILDREN, v);
    }

    /// Insert `key` = `v` into the fields as JSON values (converting to that form first),
    /// then go back to the compact form when the result allows it.
    fn put_field(&mut self, key: &str, v: Value) {
        let mut fields = self.take_fields();
        fields.insert(key.to_string(), v);
        self.set_fields(fields);
    }

    /// The fields after `missing` as JSON values, removed from the entry.
    fn take_fields(&mut self) -> Map<String, Value> {
        let taken = self
            .rare
            .as_mut()
            .and_then(|r| r.odd.as_mut())
            .and_then(|o| o.fields.take());
        let fields = taken.unwrap_or_else(|| self.extra_fields());
        self.tidy_odd();
        self.lineage = None;
        self.flags = 0;
        fields
    }

    /// Hold `fields` (the fields after `missing`, in order): compactly when they are only
    /// well-formed lineage fields, as JSON values otherwise.
    fn set_fields(&mut self, fields: Map<String, Value>) {
        self.lineage = None;
        self.flags = 0;
        if !fields.iter().all(|(k, v)| compact_value(k, v)) {
            self.rare_mut().odd_mut().fields = Some(fields);
            return;
        }
        if let Some(o) = self.rare.as_mut().and_then(|r| r.odd.as_mut()) {
            o.fields = None;
        }
        self.tidy_odd();
        let parent = fields.get(PARENT);
        let children: Vec<&str> = fields
            .get(CHILDREN)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut flags = 0;
        if let Some(p) = parent {
            flags |= HAS_PARENT;
            if p.is_string() {
                flags |= PARENT_STR;
            }
        }
        if fields.contains_key(CHILDREN) {
            flags |= HAS_CHILDREN;
            if parent.is_some() && fields.keys().next().map(String::as_str) == Some(CHILDREN) {
                flags |= CHILDREN_FIRST;
            }
        }
        self.lineage = join(parent.and_then(Value::as_str).unwrap_or(""), &children);
        self.flags = flags;
    }

    fn fields(&self) -> Option<&Map<String, Value>> {
        self.rare.as_ref()?.odd.as_ref()?.fields.as_ref()
    }

    /// The compact lineage: the parent text (empty unless [`PARENT_STR`]) and the children.
    fn compact_parts(&self) -> (&str, std::iter::Skip<std::str::Split<'_, char>>) {
        let text = self.lineage.as_deref().unwrap_or("");
        let parent = text.split(SEP).next().unwrap_or("");
        (parent, text.split(SEP).skip(1))
    }

    /// The compact lineage fields present, in their order.
    fn compact_order(&self) -> impl Iterator<Item = &'static str> {
        let (p, c) = (self.flags & HAS_PARENT != 0, self.flags & HAS_CHILDREN != 0);
        let order = if self.flags & CHILDREN_FIRST != 0 {
            [(c, CHILDREN), (p, PARENT)]
        } else {
            [(p, PARENT), (c, CHILDREN)]
        };
        order.into_iter().filter(|(on, _)| *on).map(|(_, k)| k)
    }

    /// The compact lineage field `key` as a JSON value.
    fn compact_value(&self, key: &str) -> Value {
        if key == PARENT {
            self.parent_id().map_or(Value::Null, Value::from)
        } else {
            Value::Array(self.child_ids().into_iter().map(Value::from).collect())
        }
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Drop the odd box when it holds nothing, then the rare box (one form for one content).
    fn tidy_odd(&mut self) {
        if let Some(r) = self.rare.as_mut() {
            if r.odd
                .as_ref()
                .is_some_and(|o| o.metadata.is_none() && o.fields.is_none())
            {
                r.odd = None;
            }
        }
        self.tidy();
    }

    /// Drop the rare box when it holds nothing (one form for one content).
    fn tidy(&mut self) {
        if self.rare.as_ref().is_some_and(|r| r.is_empty()) {
            self.rare = None;
        }
    }
}

/// The compact lineage text of `parent` and `children` (`None` when empty).
fn join(parent: &str, children: &[&str]) -> Option<Box<str>> {
    let mut s =
        String::with_capacity(parent.len() + children.iter().map(|c| c.len() + 1).sum::<usize>());
    s.push_str(parent);
    for c in children {
        s.push(SEP);
        s.push_str(c);
    }
    (!s.is_empty()).then(|| s.into_boxed_str())
}

impl fmt::Debug for SnapshotEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotEntry")
            .field("message", &self.message())
            .field("metadata", &self.metadata())
            .field("pinned", &self.pinned)
            .field("created_at", &self.created_at)
            .field("missing", &self.missing)
            .field("extra", &self.extra_fields())
            .finish()
    }
}

/// `child_ids` of a compact entry, written as a JSON array.
struct Children<'a>(&'a SnapshotEntry);

impl Serialize for Children<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ids = self.0.child_ids();
        let mut seq = s.serialize_seq(Some(ids.len()))?;
        for id in ids {
            seq.serialize_element(id)?;
        }
        seq.end()
    }
}

impl Serialize for SnapshotEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("message", &self.message())?;
        m.serialize_entry("metadata", &MetadataOut(self.rare.as_deref()))?;
        m.serialize_entry("pinned", &self.pinned)?;
        m.serialize_entry("created_at", &self.created_at)?;
        m.serialize_entry("missing", &self.missing)?;
        if let Some(fields) = self.fields() {
            for (k, v) in fields {
                m.serialize_entry(k, v)?;
            }
        } else {
            for key in self.compact_order() {
                if key == PARENT {
                    m.serialize_entry(PARENT, &self.parent_id())?;
                } else {
                    m.serialize_entry(CHILDREN, &Children(self))?;
                }
            }
        }
        m.end()
    }
}

/// A field name of an entry.
enum Key {
    Message,
    Metadata,
    Pinned,
    CreatedAt,
    Missing,
    Other(String),
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                Ok(match s {
                    "message" => Key::Message,
                    "metadata" => Key::Metadata,
                    "pinned" => Key::Pinned,
                    "created_at" => Key::CreatedAt,
                    "missing" => Key::Missing,
                    other => Key::Other(other.to_string()),
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'de> Deserialize<'de> for SnapshotEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SnapshotEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("struct SnapshotEntry")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SnapshotEntry, A::Error> {
                fn once<T, E: de::Error>(slot: &Option<T>, name: &'static str) -> Result<(), E> {
                    match slot {
                        Some(_) => Err(E::duplicate_field(name)),
                        None => Ok(()),
                    }
                }
                let mut message: Option<Option<String>> = None;
                let mut metadata: Option<Option<Value>> = None;
                let mut pinned: Option<bool> = None;
                let mut created_at: Option<Timestamp> = None;
                let mut missing: Option<bool> = None;
                let mut fields = Map::new();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Message => {
                            once(&message, "message")?;
                            message = Some(map.next_value()?);
                        }
                        Key::Metadata => {
                            once(&metadata, "metadata")?;
                            metadata = Some(map.next_value()?);
                        }
                        Key::Pinned => {
                            once(&pinned, "pinned")?;
                            pinned = Some(map.next_value()?);
                        }
                        Key::CreatedAt => {
                            once(&created_at, "created_at")?;
                            created_at = Some(map.next_value()?);
                        }
                        Key::Missing => {
                            once(&missing, "missing")?;
                            missing = Some(map.next_value()?);
                        }
                        Key::Other(name) => {
                            fields.insert(name, map.next_value()?);
                        }
                    }
                }
                let created_at =
                    created_at.ok_or_else(|| de::Error::missing_field("created_at"))?;
                let mut e = SnapshotEntry::new(created_at);
                e.pinned = pinned.unwrap_or(false);
                e.missing = missing.unwrap_or(false);
                let mut rare = Rare {
                    message: message.flatten().map(String::into_boxed_str),
                    ..Rare::default()
                };
                rare.set_metadata(metadata.flatten());
                if !rare.is_empty() {
                    e.rare = Some(Box::new(rare));
                }
                if !fields.is_empty() {
                    e.set_fields(fields);
                }
                Ok(e)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests;
