//! JSON output from the result text as it came (from the daemon or the in-process engine),
//! without decoding it into values: strings and numbers are copied as they are while the
//! structure is re-indented as `serde_json::to_writer_pretty` does. The result text is
//! written by serde_json, whose compact and pretty forms escape strings and write numbers
//! alike, so the output is byte for byte what decoding the text and pretty-printing the value
//! gives (tests below).
//!
//! `list` is reshaped on the way (its reply is grouped by workspace; the output is
//! upstream's flat array), still copying every value from the reply's text. That is only
//! needed for a daemon of an earlier version: today's daemon prints the list itself. A reply not of
//! the expected shape makes [`list_items`] return `None`, and the caller takes the decoding
//! path, which reports the problem.

use std::borrow::Cow;
use std::time::UNIX_EPOCH;

/// serde_json's nesting limit: a deeper text is not one it wrote.
const MAX_DEPTH: usize = 128;

/// A reader of one JSON text: checks it and cuts it into the spans of its values.
struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn new(s: &'a [u8]) -> Scanner<'a> {
        Scanner { s, i: 0 }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace (not consumed).
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.i += 1)
    }

    /// One value: its text (checked). Containers nest at most [`MAX_DEPTH`] deep.
    fn value(&mut self, depth: usize) -> Option<&'a [u8]> {
        let start = {
            self.ws();
            self.i
        };
        match self.peek()? {
            b'{' => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                self.object(|_, sc| sc.value(depth + 1).map(drop))?;
            }
            b'[' => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                self.array(|sc| sc.value(depth + 1).map(drop))?;
            }
            b'"' => {
                self.string()?;
            }
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            _ => self.number()?,
        }
        Some(&self.s[start..self.i])
    }

    /// An object: `field` is called with each key's text (quotes included) and must read
    /// the value.
    fn object(
        &mut self,
        mut field: impl FnMut(&'a [u8], &mut Scanner<'a>) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            if self.peek()? != b'"' {
                return None;
            }
            let key = self.string()?;
            self.eat(b':')?;
            field(key, self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array: `item` is called for each element and must read it.
    fn array(&mut self, mut item: impl FnMut(&mut Scanner<'a>) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            item(self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string token, quotes included: escapes are checked, control characters refused.
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        if self.s.get(start) != Some(&b'"') {
            return None;
        }
        let mut i = start + 1;
        loop {
            i += memchr::memchr2(b'"', b'\\', self.s.get(i..)?)?;
            if self.s[i] == b'"' {
                break;
            }
            match self.s.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' => {
                    let hex = self.s.get(i + 2..i + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    i += 6;
                }
                _ => return None,
            }
        }
        // Not short-circuiting, so that it runs a vector at a time.
        if self.s[start + 1..i]
            .iter()
            .fold(false, |c, &b| c | (b < 0x20))
        {
            return None;
        }
        self.i = i + 1;
        Some(&self.s[start..self.i])
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.s.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Option<()> {
        if self.s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.s.get(self.i)? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            if !self.s.get(self.i)?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.s.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.s.get(self.i) {
                self.i += 1;
            }
            if !self.s.get(self.i)?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
    }

    /// Nothing but whitespace is left.
    fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }
}

fn indent(out: &mut Vec<u8>, depth: usize) {
    for _ in 0..depth {
        out.extend_from_slice(b"  ");
    }
}

/// Append a checked JSON value's text (compact or not) to `out` as
/// `serde_json::to_writer_pretty` writes the value, `depth` levels deep.
fn write_pretty(text: &[u8], depth: usize, out: &mut Vec<u8>) {
    let mut sc = Scanner::new(text);
    let mut depth = depth;
    while let Some(b) = sc.peek() {
        match b {
            b'{' | b'[' => {
                sc.i += 1;
                let close = if b == b'{' { b'}' } else { b']' };
                if sc.peek() == Some(close) {
                    sc.i += 1;
                    out.extend_from_slice(if b == b'{' { b"{}" } else { b"[]" });
                } else {
                    out.push(b);
                    depth += 1;
                    out.push(b'\n');
                    indent(out, depth);
                }
            }
            b'}' | b']' => {
                sc.i += 1;
                depth = depth.saturating_sub(1);
                out.push(b'\n');
                indent(out, depth);
                out.push(b);
            }
            b',' => {
                sc.i += 1;
                out.extend_from_slice(b",\n");
                indent(out, depth);
            }
            b':' => {
                sc.i += 1;
                out.extend_from_slice(b": ");
            }
            b'"' => match sc.string() {
                Some(t) => out.extend_from_slice(t),
                None => return,
            },
            _ => {
                // A number or literal: up to the next delimiter.
                let start = sc.i;
                while sc.s.get(sc.i).is_some_and(|c| {
                    !matches!(c, b',' | b']' | b'}' | b' ' | b'\n' | b'\r' | b'\t')
                }) {
                    sc.i += 1;
                }
                out.extend_from_slice(&sc.s[start..sc.i]);
            }
        }
    }
}

/// The text of exactly one JSON value (surrounding whitespace allowed), checked.
fn checked(text: &[u8]) -> Option<&[u8]> {
    std::str::from_utf8(text).ok()?;
    let mut sc = Scanner::new(text);
    let v = sc.value(0)?;
    sc.at_end().then_some(v)
}

/// A JSON text re-printed as `serde_json::to_writer_pretty` prints its value; `None` when
/// it is not valid JSON.
pub(crate) fn pretty(text: &[u8]) -> Option<Vec<u8>> {
    let v = checked(text)?;
    let mut out = Vec::with_capacity(v.len() * 2 + 16);
    write_pretty(v, 0, &mut out);
    Some(out)
}

/// A string token's value (decoded only when it holds an escape).
fn str_value(token: &[u8]) -> Option<Cow<'_, str>> {
    let inner = token.get(1..token.len().checked_sub(1)?)?;
    if !inner.contains(&b'\\') {
        return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
    }
    serde_json::from_slice::<String>(token).ok().map(Cow::Owned)
}

fn is_string(v: &[u8]) -> bool {
    v.first() == Some(&b'"')
}

fn is_bool(v: &[u8]) -> bool {
    matches!(v, b"true" | b"false")
}

/// One snapshot of a `list` reply: the text of each field it prints.
struct Item<'a> {
    /// Index of its workspace in [`Ws`]s.
    ws: usize,
    /// Creation time (ns since the epoch, 0 when unreadable), workspace ID, ID: the order of
    /// `ListResult::items`.
    key: (u64, Cow<'a, str>, Cow<'a, str>),
    id: &'a [u8],
    created_at: &'a [u8],
    message: &'a [u8],
    metadata: &'a [u8],
    pinned: &'a [u8],
    missing: &'a [u8],
    snapshot_path: Option<&'a [u8]>,
    parent_id: &'a [u8],
    child_ids: &'a [u8],
    head: &'a [u8],
}

/// One workspace of a `list` reply.
struct Ws<'a> {
    ws_id: &'a [u8],
    path: &'a [u8],
    problem: Option<&'a [u8]>,
}

/// Read a `ListResult` reply: its workspaces, its snapshots and its `next_cursor`
/// (`null` when absent).
fn read_list(text: &[u8]) -> Option<(Vec<Ws<'_>>, Vec<Item<'_>>, &[u8])> {
    std::str::from_utf8(text).ok()?;
    let mut sc = Scanner::new(text);
    let mut wss: Vec<Ws<'_>> = Vec::new();
    // About one snapshot per 200 bytes of reply: rarely grown (and unused room is never
    // touched).
    let mut items: Vec<Item<'_>> = Vec::with_capacity(text.len() / 200 + 1);
    let mut next: &[u8] = b"null";
    let mut seen_workspaces = false;
    sc.object(|key, sc| match key {
        br#""workspaces""# => {
            seen_workspaces = true;
            sc.array(|sc| read_workspace(sc, &mut wss, &mut items))
        }
        br#""next_cursor""# => {
            let v = sc.value(1)?;
            (is_string(v) || v == b"null").then(|| next = v)
        }
        _ => sc.value(1).map(drop),
    })?;
    (seen_workspaces && sc.at_end()).then_some((wss, items, next))
}

/// One `ListWorkspace` with its snapshots.
fn read_workspace<'a>(
    sc: &mut Scanner<'a>,
    wss: &mut Vec<Ws<'a>>,
    items: &mut Vec<Item<'a>>,
) -> Option<()> {
    let ws = wss.len();
    let first = items.len();
    let (mut ws_id, mut path, mut problem, mut snapshots) = (None, None, None, false);
    sc.object(|key, sc| {
        match key {
            br#""ws_id""# => ws_id = Some(sc.value(2).filter(|v| is_string(v))?),
            br#""path""# => path = Some(sc.value(2).filter(|v| is_string(v))?),
            br#""problem""# => {
                let v = sc.value(2).filter(|v| is_string(v) || *v == b"null")?;
                problem = is_string(v).then_some(v);
            }
            br#""snapshots""# => {
                snapshots = true;
                sc.array(|sc| read_snapshot(sc, ws, items))?;
            }
            _ => {
                sc.value(2)?;
            }
        }
        Some(())
    })?;
    let ws_id = ws_id?;
    path?;
    if !snapshots {
        return None;
    }
    let ws_key = str_value(ws_id)?;
    for item in &mut items[first..] {
        item.key.1 = ws_key.clone();
    }
    wss.push(Ws {
        ws_id,
        path: path?,
        problem,
    });
    Some(())
}

/// One `ListSnapshot`: every field this version writes, of its type (`parent_id`,
/// `child_ids` and `head` may be absent, as they are read with defaults).
fn read_snapshot<'a>(sc: &mut Scanner<'a>, ws: usize, items: &mut Vec<Item<'a>>) -> Option<()> {
    let mut f: [Option<&'a [u8]>; 10] = [None; 10];
    sc.object(|key, sc| {
        let slot = match key {
            br#""id""# => 0,
            br#""created_at""# => 1,
            br#""message""# => 2,
            br#""metadata""# => 3,
            br#""pinned""# => 4,
            br#""missing""# => 5,
            br#""snapshot_path""# => 6,
            br#""parent_id""# => 7,
            br#""child_ids""# => 8,
            br#""head""# => 9,
            _ => {
                sc.value(3)?;
                return Some(());
            }
        };
        let v = sc.value(3)?;
        let ok = match slot {
            0 | 1 => is_string(v),
            2 | 6 | 7 => is_string(v) || v == b"null",
            4 | 5 | 9 => is_bool(v),
            8 => {
                let mut strings = true;
                let mut inner = Scanner::new(v);
                inner.array(|s| {
                    s.ws();
                    strings &= s.string().is_some();
                    strings.then_some(())
                })?;
                strings
            }
            _ => true,
        };
        ok.then(|| f[slot] = Some(v))
    })?;
    let id = f[0]?;
    let created_at = f[1]?;
    let created_text = str_value(created_at)?;
    let nanos = ws_ckpt::time::parse_rfc3339(&created_text)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    items.push(Item {
        ws,
        key: (nanos, Cow::Borrowed(""), str_value(id)?),
        id,
        created_at,
        message: f[2]?,
        metadata: f[3]?,
        pinned: f[4]?,
        missing: f[5]?,
        snapshot_path: f[6].filter(|v| *v != b"null"),
        parent_id: f[7].unwrap_or(b"null"),
        child_ids: f[8].unwrap_or(b"[]"),
        head: f[9].unwrap_or(b"false"),
    });
    Some(())
}

/// Write `"key": ` at the start of an object's field, `depth` levels deep.
fn key(out: &mut Vec<u8>, depth: usize, first: bool, key: &[u8]) {
    out.extend_from_slice(if first { b"\n" } else { b",\n" });
    indent(out, depth);
    out.extend_from_slice(key);
    out.extend_from_slice(b": ");
}

/// One `ListItem` whose object is `depth` levels deep.
fn write_item(out: &mut Vec<u8>, depth: usize, item: &Item<'_>, ws: &Ws<'_>) {
    let d = depth + 1;
    out.push(b'{');
    key(out, d, true, br#""id""#);
    out.extend_from_slice(item.id);
    key(out, d, false, br#""workspace""#);
    out.extend_from_slice(ws.path);
    key(out, d, false, br#""ws_id""#);
    out.extend_from_slice(ws.ws_id);
    key(out, d, false, br#""meta""#);
    out.push(b'{');
    let m = d + 1;
    key(out, m, true, br#""message""#);
    out.extend_from_slice(item.message);
    key(out, m, false, br#""metadata""#);
    write_pretty(item.metadata, m, out);
    key(out, m, false, br#""pinned""#);
    out.extend_from_slice(item.pinned);
    key(out, m, false, br#""created_at""#);
    out.extend_from_slice(item.created_at);
    key(out, m, false, br#""missing""#);
    out.extend_from_slice(item.missing);
    key(out, m, false, br#""parent_id""#);
    out.extend_from_slice(item.parent_id);
    key(out, m, false, br#""child_ids""#);
    write_pretty(item.child_ids, m, out);
    out.push(b'\n');
    indent(out, d);
    out.push(b'}');
    if let Some(p) = item.snapshot_path {
        key(out, d, false, br#""snapshot_path""#);
        out.extend_from_slice(p);
    }
    key(out, d, false, br#""head""#);
    out.extend_from_slice(item.head);
    if let Some(p) = ws.problem {
        key(out, d, false, br#""problem""#);
        out.extend_from_slice(p);
    }
    out.push(b'\n');
    indent(out, depth);
    out.push(b'}');
}

/// A `list` reply read for its `list --format json` output (see [`list_output`]).
pub(crate) struct ListOutput<'a> {
    wss: Vec<Ws<'a>>,
    items: Vec<Item<'a>>,
    next: &'a [u8],
    paged: bool,
}

/// The `list --format json` output of a `ListResult` reply's text: the `ListItem` array, or
/// with `paged` the page object (`snapshots`, `next_cursor`). `None` when the text is not a
/// `ListResult` of the shape this version writes. Everything is checked here: writing it
/// out can only fail to write.
pub(crate) fn list_output(text: &[u8], paged: bool) -> Option<ListOutput<'_>> {
    let (wss, mut items, next) = read_list(text)?;
    // The order of `ListResult::items` (stable); usually it is already the reply's.
    if !items.windows(2).all(|w| w[0].key <= w[1].key) {
        items.sort_by(|a, b| a.key.cmp(&b.key));
    }
    Some(ListOutput {
        wss,
        items,
        next,
        paged,
    })
}

impl ListOutput<'_> {
    /// Write it pretty-printed, with a final newline, in pieces of about 64 KiB (thousands
    /// of items are not built as one buffer first).
    pub(crate) fn write_to(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        const PIECE: usize = 64 * 1024;
        let mut out = Vec::with_capacity(PIECE + 4096);
        let depth = match self.paged {
            false => 0,
            true => {
                out.push(b'{');
                key(&mut out, 1, true, br#""snapshots""#);
                1
            }
        };
        if self.items.is_empty() {
            out.extend_from_slice(b"[]");
        } else {
            out.push(b'[');
            for (i, item) in self.items.iter().enumerate() {
                out.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
                indent(&mut out, depth + 1);
                write_item(&mut out, depth + 1, item, &self.wss[item.ws]);
                if out.len() >= PIECE {
                    w.write_all(&out)?;
                    out.clear();
                }
            }
            out.push(b'\n');
            indent(&mut out, depth);
            out.push(b']');
        }
        if self.paged {
            key(&mut out, 1, false, br#""next_cursor""#);
            out.extend_from_slice(self.next);
            out.extend_from_slice(b"\n}");
        }
        out.push(b'\n');
        w.write_all(&out)?;
        w.flush()
    }
}

/// [`list_output`] written into one buffer, without the final newline.
#[cfg(test)]
fn list_items(text: &[u8], paged: bool) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    list_output(text, paged)?.write_to(&mut out).ok()?;
    out.pop();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn serde_pretty(v: &Value) -> Vec<u8> {
        serde_json::to_vec_pretty(v).unwrap()
    }

    #[test]
    fn pretty_is_serde_jsons_pretty_print_of_the_value() {
        let values = [
            json!(null),
            json!(true),
            json!(0),
            json!(-12),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1.5),
            json!(-0.0),
            json!(1e-7),
            json!(1.2345678901234567e300),
            json!(""),
            json!("plain"),
            json!("quote \" backslash \\ slash / newline \n tab \t bell \u{7} del \u{7f} é 日本 \u{1f600}"),
            json!([]),
            json!({}),
            json!([[], {}, [[]], {"a": {}}]),
            json!({"z": 1, "a": [1, 2, {"k": null}], "m": {"nested": {"deep": [true, false]}}}),
            json!({"key \"quoted\"": "v", "": ""}),
        ];
        for v in values {
            let compact = serde_json::to_vec(&v).unwrap();
            assert_eq!(
                String::from_utf8(pretty(&compact).unwrap()).unwrap(),
                String::from_utf8(serde_pretty(&v)).unwrap(),
                "{v}"
            );
            // Already pretty text comes out the same too.
            assert_eq!(pretty(&serde_pretty(&v)).unwrap(), serde_pretty(&v), "{v}");
        }
    }

    #[test]
    fn invalid_text_is_refused() {
        for bad in [
            &b""[..],
            b"{",
            b"[1,]",
            b"{\"a\"1}",
            b"{\"a\":1,}",
            b"\"unterminated",
            b"\"ctrl \x01\"",
            b"\"bad \\x escape\"",
            b"\"short \\u12\"",
            b"01",
            b"1.",
            b"1e",
            b"-",
            b"tru",
            b"nulls",
            b"1 2",
            b"\"\xff\"",
        ] {
            assert!(pretty(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(pretty(deep.as_bytes()).is_none());
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(pretty(ok.as_bytes()).is_some());
    }

    /// What the CLI printed before this module: the decoded `ListResult`'s items.
    fn typed(compact: &[u8], paged: bool) -> Vec<u8> {
        let listed: ws_ckpt::ops::ListResult = serde_json::from_slice(compact).unwrap();
        let items = listed.items();
        let v = match paged {
            false => serde_json::to_value(&items).unwrap(),
            true => json!({
                "snapshots": items,
                "next_cursor": listed.next_cursor.as_ref().and_then(|c| c.as_deref()),
            }),
        };
        serde_pretty(&v)
    }

    fn snapshot(id: &str, created: &str, extra: Value) -> Value {
        let mut s = json!({
            "id": id,
            "created_at": created,
            "message": null,
            "metadata": null,
            "pinned": false,
            "missing": false,
            "snapshot_path": format!("/mnt/snapshots/ws/{id}"),
            "parent_id": null,
            "child_ids": [],
            "head": false,
        });
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        s
    }

    #[test]
    fn list_items_are_what_decoding_the_result_prints() {
        let result = json!({
            "workspaces": [
                {
                    "ws_id": "ws-bbbbbb",
                    "path": "/home/b/\"quoted\" dir",
                    "problem": "the backend is not mounted\nat all",
                    "snapshots": [
                        snapshot("b2", "2026-11-24T15:07:44.000000002Z", json!({
                            "message": "tab\there é",
                            "metadata": {"tool": "edit", "n": [1, 2.5, {"x": null}], "e": {}},
                            "pinned": true,
                            "parent_id": "b1",
                            "child_ids": ["b3", "__live__"],
                            "head": true,
                        })),
                        snapshot("b1", "2026-11-24T15:07:42Z", json!({"missing": true})),
                        snapshot("same-time-z", "2026-11-24T15:07:43Z", json!({})),
                        snapshot("same-time-a", "2026-11-24T15:07:43Z", json!({})),
                        snapshot("bad-time", "yesterday", json!({})),
                    ],
                },
                {
                    "ws_id": "ws-aaaaaa",
                    "path": "/home/a/p",
                    "snapshots": [
                        snapshot("a1", "2026-11-24T15:07:43Z", json!({})),
                        {
                            "id": "old \u{1b} daemon",
                            "created_at": "2026-11-24T15:07:41Z",
                            "message": "no lineage fields, no path",
                            "metadata": [],
                            "pinned": false,
                            "missing": false,
                        },
                    ],
                },
                {"ws_id": "ws-cccccc", "path": "/home/c", "snapshots": []},
            ],
        });
        let compact = serde_json::to_vec(&result).unwrap();
        for paged in [false, true] {
            assert_eq!(
                String::from_utf8(list_items(&compact, paged).unwrap()).unwrap(),
                String::from_utf8(typed(&compact, paged)).unwrap(),
                "paged: {paged}"
            );
        }
        let mut page = result.clone();
        page["next_cursor"] = json!("7b2276223a317d");
        let compact = serde_json::to_vec(&page).unwrap();
        assert_eq!(list_items(&compact, true).unwrap(), typed(&compact, true));
        // The pretty form of the same reply reads the same.
        let spaced = serde_json::to_vec_pretty(&page).unwrap();
        assert_eq!(list_items(&spaced, true).unwrap(), typed(&compact, true));
        let empty = br#"{"workspaces":[]}"#;
        assert_eq!(list_items(empty, false).unwrap(), b"[]");
        assert_eq!(list_items(empty, true).unwrap(), typed(empty, true));
    }

    #[test]
    fn a_list_of_another_shape_is_left_to_the_decoding_path() {
        for other in [
            json!({}),
            json!({"workspaces": {}}),
            json!({"workspaces": [{"ws_id": "w", "path": "/p"}]}),
            json!({"workspaces": [{"ws_id": 1, "path": "/p", "snapshots": []}]}),
            json!({"workspaces": [{"ws_id": "w", "path": "/p", "snapshots": [{"id": "x"}]}]}),
            json!({"workspaces": [{"ws_id": "w", "path": "/p", "snapshots": [
                snapshot("x", "2026-11-24T15:07:41Z", json!({"pinned": "yes"}))
            ]}]}),
            json!({"workspaces": [{"ws_id": "w", "path": "/p", "snapshots": [
                snapshot("x", "2026-11-24T15:07:41Z", json!({"child_ids": [1]}))
            ]}]}),
        ] {
            let compact = serde_json::to_vec(&other).unwrap();
            assert!(list_items(&compact, false).is_none(), "{other}");
        }
    }
}
