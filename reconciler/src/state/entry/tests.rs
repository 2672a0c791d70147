//! Unit tests of `state::entry`: the compact entry reads and writes exactly what the plain
//! derived type it replaced ([`Reference`], the entry of ws-ckpt 0.4.0) reads and writes, for
//! entries with and without message, metadata, lineage and unknown fields, and odd timestamps.

use super::*;
use serde_json::json;
use std::collections::BTreeMap;

/// The entry as ws-ckpt 0.4.0 declared it (its `Timestamp` kept the text as read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reference {
    message: Option<String>,
    metadata: Option<Value>,
    #[serde(default)]
    pinned: bool,
    created_at: String,
    #[serde(default)]
    missing: bool,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl Reference {
    /// `state::lineage`'s `set_parent_id` of 0.4.0.
    fn set_parent_id(&mut self, parent: Option<&str>) {
        match parent {
            Some(p) => {
                self.extra.insert(PARENT.into(), Value::from(p));
            }
            None => {
                if self.extra.contains_key(PARENT) {
                    self.extra.insert(PARENT.into(), Value::Null);
                }
            }
        }
    }

    /// `state::lineage`'s `set_child_ids` of 0.4.0.
    fn set_child_ids(&mut self, children: &[String]) {
        if children.is_empty() && !self.extra.contains_key(CHILDREN) {
            return;
        }
        self.extra.insert(
            CHILDREN.into(),
            Value::Array(children.iter().map(|c| Value::from(c.as_str())).collect()),
        );
    }

    fn parent_id(&self) -> Option<&str> {
        self.extra.get(PARENT).and_then(Value::as_str)
    }

    fn child_ids(&self) -> Vec<&str> {
        self.extra
            .get(CHILDREN)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }
}

/// Same-position lineage changes on both types (as `state::lineage` makes them).
fn set_parent(e: &mut SnapshotEntry, parent: Option<&str>) {
    match parent {
        Some(p) => e.put_parent(Some(p)),
        None if e.has_field(PARENT) => e.put_parent(None),
        None => {}
    }
}

fn set_children(e: &mut SnapshotEntry, children: &[String]) {
    if children.is_empty() && !e.has_field(CHILDREN) {
        return;
    }
    e.put_children(children);
}

/// Every way the two types write an entry: alone, compact and pretty, and nested as in
/// `index.json` (pretty) and in a journal line (compact).
fn writes<T: Serialize>(e: &T) -> Vec<String> {
    #[derive(Serialize)]
    struct Line<'a, T> {
        op: &'static str,
        id: &'static str,
        entry: &'a T,
    }
    let nested = BTreeMap::from([("snapshots", BTreeMap::from([("c1", e)]))]);
    let line = Line {
        op: "put",
        id: "c1",
        entry: e,
    };
    vec![
        serde_json::to_string(e).unwrap(),
        serde_json::to_string_pretty(e).unwrap(),
        serde_json::to_string_pretty(&nested).unwrap(),
        serde_json::to_string(&line).unwrap(),
    ]
}

/// Entries as they are found in files: ours, 0.3's, 0.5.0's, hand-edited ones.
const ENTRIES: &[&str] = &[
    r#"{"message": null, "metadata": null, "pinned": false, "created_at": "2026-11-24T15:07:42Z", "missing": false}"#,
    r#"{"message": null, "metadata": null, "created_at": "2026-11-24T15:09:00Z"}"#,
    r#"{"created_at": "2026-11-24T15:09:00.123456789Z"}"#,
    r#"{"created_at": "2026-11-24T15:09:00Z", "pinned": true, "missing": true, "message": "m"}"#,
    r#"{"message": "agent step \"quoted\"\n\t\u00e9 \ud83d\ude00 \u0001", "metadata": {"tool": "edit", "auto": true}, "pinned": true, "created_at": "2026-07-01T10:00:01.000000001Z", "missing": false}"#,
    r#"{"message": "", "metadata": "", "created_at": "2026-07-01T10:00:01Z"}"#,
    r#"{"metadata": {"z": 1, "a": [1, 2.5, -0.0, 1e300, 5e-324, 0.1, 0.30000000000000004, 1.2345678901234567e-100, 1.7976931348623157e308], "m": {"y": null, "x": {}}, "e": [], "big": 18446744073709551615, "neg": -9223372036854775808, "f": 3.0}, "created_at": "2026-07-01T10:00:01Z"}"#,
    r#"{"metadata": 0, "created_at": "2026-07-01T10:00:01Z"}"#,
    r#"{"metadata": [[[[{"deep": [[[["x"]]]]}]]]], "created_at": "2026-07-01T10:00:01Z"}"#,
    r#"{"metadata": {"k": "caf\u00e9 \u2028 \\ /"}, "created_at": "2026-07-01T10:00:01Z"}"#,
    // Lineage as 0.5.0 and this version write it.
    r#"{"message": null, "metadata": null, "pinned": false, "created_at": "2026-11-24T15:07:42.5Z", "missing": false, "parent_id": null, "child_ids": ["__live__"]}"#,
    r#"{"created_at": "2026-11-24T15:07:42Z", "parent_id": "20261124-150742-001", "child_ids": ["a", "b-2", "__live__"]}"#,
    r#"{"created_at": "2026-11-24T15:07:42Z", "child_ids": [], "parent_id": "p"}"#,
    r#"{"created_at": "2026-11-24T15:07:42Z", "child_ids": ["c"]}"#,
    r#"{"created_at": "2026-11-24T15:07:42Z", "parent_id": ""}"#,
    r#"{"created_at": "2026-11-24T15:07:42Z", "parent_id": "", "child_ids": [""]}"#,
    r#"{"created_at": "2026-11-24T15:07:42Z", "child_ids": ["", "", "x"]}"#,
    r#"{"created_at": "2026-11-24T15:07:42Z", "parent_id": null}"#,
    // Unknown fields, before, between and after the lineage fields.
    r#"{"created_at": "2026-11-24T15:07:42Z", "future": 1, "missing": false}"#,
    r#"{"future": {"a": [1, {"b": null}]}, "created_at": "2026-11-24T15:07:42Z", "parent_id": "p", "later": "x"}"#,
    r#"{"created_at": "2026-11-24T15:07:42Z", "child_ids": ["c"], "zz": true, "parent_id": null}"#,
    r#"{"created_at": "2026-11-24T15:07:42Z", "x": 1, "x": 2, "y": 3}"#,
    r#"{"created_at": "2026-11-24T15:07:42Z", "parent_id": "a", "parent_id": "b"}"#,
    // Lineage values this version does not hold as IDs.
    r#"{"created_at": "2026-11-24T15:07:42Z", "parent_id": 5}"#,
    r#"{"created_at": "2026-11-24T15:07:42Z", "parent_id": "a\nb", "child_ids": ["c"]}"#,
    r#"{"created_at": "2026-11-24T15:07:42Z", "child_ids": "c"}"#,
    r#"{"created_at": "2026-11-24T15:07:42Z", "child_ids": [1, "a", null]}"#,
    r#"{"created_at": "2026-11-24T15:07:42Z", "child_ids": ["a\n"]}"#,
    r#"{"created_at": "2026-11-24T15:07:42Z", "child_ids": {"a": 1}, "parent_id": []}"#,
    // Timestamps in every form found in files.
    r#"{"created_at": "2026-11-24T15:07:42.1Z"}"#,
    r#"{"created_at": "2026-11-24T15:07:42.12Z"}"#,
    r#"{"created_at": "2026-11-24T15:07:42.123Z"}"#,
    r#"{"created_at": "2026-11-24T15:07:42.1234Z"}"#,
    r#"{"created_at": "2026-11-24T15:07:42.12345Z"}"#,
    r#"{"created_at": "2026-11-24T15:07:42.123456Z"}"#,
    r#"{"created_at": "2026-11-24T15:07:42.1234567Z"}"#,
    r#"{"created_at": "2026-11-24T15:07:42.12345678Z"}"#,
    r#"{"created_at": "2026-11-24T15:07:42.1234567891Z"}"#,
    r#"{"created_at": "2026-11-24T15:07:42.000000000Z"}"#,
    r#"{"created_at": "2026-11-24T15:07:42.0Z"}"#,
    r#"{"created_at": "2026-11-24T15:07:42+00:00"}"#,
    r#"{"created_at": "2026-11-24T15:07:42.123456+00:00"}"#,
    r#"{"created_at": "2026-11-24T15:07:42.5+05:00"}"#,
    r#"{"created_at": "2026-11-24T15:07:42"}"#,
    r#"{"created_at": "2026-11-24T15:07:42.120"}"#,
    r#"{"created_at": "2026-11-24 15:07:42Z"}"#,
    r#"{"created_at": "2026-11-24t15:07:42z"}"#,
    r#"{"created_at": "2026-11-24T15:07:42ZZ"}"#,
    r#"{"created_at": "2026-11-24T15:07:60Z"}"#,
    r#"{"created_at": "2026-11-24T24:00:00Z"}"#,
    r#"{"created_at": "2026-02-29T00:00:00Z"}"#,
    r#"{"created_at": "2024-02-29T23:59:59Z"}"#,
    r#"{"created_at": "1970-01-01T00:00:00Z"}"#,
    r#"{"created_at": "1969-12-31T23:59:59Z"}"#,
    r#"{"created_at": "9999-12-31T23:59:59.999999999Z"}"#,
    r#"{"created_at": "2026-11-24T15:07:42.Z"}"#,
    r#"{"created_at": "yesterday"}"#,
    r#"{"created_at": ""}"#,
    r#"{"created_at": "\u0032026-11-24T15:07:42Z"}"#,
];

/// Inputs both types refuse.
const BAD: &[&str] = &[
    r#"{"message": null}"#,
    r#"{"created_at": 5}"#,
    r#"{"created_at": null}"#,
    r#"{"created_at": "2026-11-24T15:07:42Z", "pinned": null}"#,
    r#"{"created_at": "2026-11-24T15:07:42Z", "missing": "no"}"#,
    r#"{"created_at": "2026-11-24T15:07:42Z", "message": 5}"#,
    r#"{"created_at": "2026-11-24T15:07:42Z", "message": "a", "message": "b"}"#,
    r#"{"created_at": "2026-11-24T15:07:42Z", "created_at": "2026-11-24T15:07:42Z"}"#,
    r#"["m", null, false, "2026-11-24T15:07:42Z", false]"#,
    r#""2026-11-24T15:07:42Z""#,
    r#"null"#,
];

#[test]
fn every_entry_reads_and_writes_exactly_as_the_plain_type_did() {
    for text in ENTRIES {
        let r: Reference = serde_json::from_str(text).expect(text);
        let e: SnapshotEntry = serde_json::from_str(text).expect(text);
        assert_eq!(writes(&e), writes(&r), "{text}");
        // The accessors see what the plain fields held.
        assert_eq!(e.message(), r.message.as_deref(), "{text}");
        assert_eq!(e.metadata(), r.metadata.clone(), "{text}");
        assert_eq!((e.pinned, e.missing), (r.pinned, r.missing), "{text}");
        assert_eq!(e.created_at.as_str(), r.created_at.as_str(), "{text}");
        assert_eq!(
            e.created_at.time(),
            crate::time::parse_rfc3339(&r.created_at),
            "{text}"
        );
        assert_eq!(e.parent_id(), r.parent_id(), "{text}");
        assert_eq!(e.child_ids(), r.child_ids(), "{text}");
        assert_eq!(e.extra_fields(), r.extra, "{text}");
        // What it wrote reads back as the same entry, which writes the same again.
        let again: SnapshotEntry = serde_json::from_str(&writes(&e)[1]).unwrap();
        assert_eq!(again, e, "{text}");
        assert_eq!(writes(&again), writes(&e), "{text}");
    }
}

#[test]
fn what_the_plain_type_refused_is_refused() {
    for text in BAD {
        assert!(serde_json::from_str::<Reference>(text).is_err(), "{text}");
        assert!(
            serde_json::from_str::<SnapshotEntry>(text).is_err(),
            "{text}"
        );
    }
    let e = serde_json::from_str::<SnapshotEntry>(BAD[0]).unwrap_err();
    assert!(e.to_string().contains("missing field `created_at`"), "{e}");
    let e = serde_json::from_str::<SnapshotEntry>(BAD[6]).unwrap_err();
    assert!(e.to_string().contains("duplicate field `message`"), "{e}");
}

#[test]
fn lineage_changes_write_what_the_plain_type_wrote() {
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    type Step = (
        Option<Option<&'static str>>,
        Option<&'static [&'static str]>,
    );
    // (parent change, children change), applied in turn.
    let steps: &[Step] = &[
        (Some(Some("p1")), None),
        (None, Some(&["c1"])),
        (Some(None), None),
        (None, Some(&[])),
        (None, Some(&["c1", "__live__", "c2"])),
        (Some(Some("p\n2")), None),
        (Some(Some("p3")), None),
        (None, Some(&["x\ny"])),
        (None, Some(&["c3"])),
        (Some(None), Some(&[])),
    ];
    for text in ENTRIES {
        let mut r: Reference = serde_json::from_str(text).unwrap();
        let mut e: SnapshotEntry = serde_json::from_str(text).unwrap();
        for (i, (parent, children)) in steps.iter().enumerate() {
            if let Some(p) = parent {
                r.set_parent_id(*p);
                set_parent(&mut e, *p);
            }
            if let Some(c) = children {
                r.set_child_ids(&ids(c));
                set_children(&mut e, &ids(c));
            }
            assert_eq!(writes(&e), writes(&r), "{text} step {i}");
            assert_eq!(e.parent_id(), r.parent_id(), "{text} step {i}");
            assert_eq!(e.child_ids(), r.child_ids(), "{text} step {i}");
            // One content, one form: equal to the entry read from what it writes.
            let read: SnapshotEntry = serde_json::from_str(&writes(&e)[0]).unwrap();
            assert_eq!(read, e, "{text} step {i}");
        }
    }
}

#[test]
fn message_and_metadata_changes_write_what_the_plain_type_wrote() {
    for text in ENTRIES {
        let mut r: Reference = serde_json::from_str(text).unwrap();
        let mut e: SnapshotEntry = serde_json::from_str(text).unwrap();
        let changes: [(Option<&str>, Option<Value>); 4] = [
            (Some("new message"), Some(json!({"turn": 3, "f": 0.1}))),
            (None, Some(json!([1e-7, {"k": "v"}]))),
            (Some(""), None),
            (None, None),
        ];
        for (i, (m, md)) in changes.into_iter().enumerate() {
            r.message = m.map(str::to_string);
            r.metadata = md.clone();
            e.set_message(m.map(str::to_string));
            e.set_metadata(md);
            assert_eq!(writes(&e), writes(&r), "{text} change {i}");
            let read: SnapshotEntry = serde_json::from_str(&writes(&e)[0]).unwrap();
            assert_eq!(read, e, "{text} change {i}");
        }
        // Back to no message nor metadata: nothing of them is kept.
        if e.fields().is_none() {
            assert!(e.rare.is_none(), "{text}");
        }
    }
}

#[test]
fn metadata_that_would_not_read_back_from_its_text_is_kept_as_a_value() {
    // Deeper than serde_json reads back (it stops at 128 levels): built, not parsed.
    let mut deep = json!(1);
    for _ in 0..150 {
        deep = json!([deep]);
    }
    let mut e = SnapshotEntry::new(Timestamp::parse("2026-07-01T10:00:01Z"));
    e.set_metadata(Some(deep.clone()));
    assert_eq!(e.metadata(), Some(deep.clone()));
    let r = e.rare.as_ref().unwrap();
    assert!(r.metadata.is_none() && r.odd.as_ref().unwrap().metadata.is_some());
    // Written as the value itself.
    let mut plain = serde_json::Serializer::new(Vec::new());
    let mut out = serde_json::Serializer::new(Vec::new());
    // (serde_json writes any depth; only reading is limited.)
    Reference {
        message: None,
        metadata: Some(deep),
        pinned: false,
        created_at: "2026-07-01T10:00:01Z".into(),
        missing: false,
        extra: Map::new(),
    }
    .serialize(&mut plain)
    .unwrap();
    e.serialize(&mut out).unwrap();
    assert_eq!(out.into_inner(), plain.into_inner());
    // Metadata `null` is none, written as `null` either way.
    e.set_metadata(Some(Value::Null));
    assert_eq!((e.metadata(), e.rare.is_none()), (None, true));
}

#[test]
fn an_entry_is_small() {
    assert_eq!(std::mem::size_of::<SnapshotEntry>(), 48);
    assert_eq!(std::mem::size_of::<Timestamp>(), 16);
    assert!(std::mem::size_of::<Rare>() <= 40);
    // An entry with a creation time only allocates nothing.
    let e: SnapshotEntry =
        serde_json::from_str(r#"{"created_at": "2026-11-24T15:07:42.123456789Z"}"#).unwrap();
    assert!(e.rare.is_none() && e.lineage.is_none());
    // A lineage chain link is one string.
    let e: SnapshotEntry = serde_json::from_str(
        r#"{"created_at": "2026-11-24T15:07:42Z", "parent_id": "a", "child_ids": ["b"]}"#,
    )
    .unwrap();
    assert!(e.rare.is_none());
    assert_eq!(e.lineage.as_deref(), Some("a\nb"));
}

#[test]
fn debug_shows_the_fields() {
    let mut e = SnapshotEntry::new(Timestamp::parse("2026-11-24T15:07:42Z"));
    e.set_message(Some("m".into()));
    e.put_parent(Some("p"));
    let d = format!("{e:?}");
    assert!(
        d.contains("\"m\"") && d.contains("2026-11-24T15:07:42Z") && d.contains("parent_id"),
        "{d}"
    );
}
