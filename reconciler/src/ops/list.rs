//! `list` (SPEC §5.5): the recorded snapshots, oldest first, of the workspaces a caller may
//! use, optionally one page at a time (`--limit`/`--cursor`, as ws-ckpt 0.5.0). The result
//! is grouped by workspace; [`ListResult::items`] is the flat form the CLI prints as JSON,
//! upstream's array of `{"id", "workspace", "meta": {…}}` with our fields added inside each
//! item (docs/compat.md §4.3).

use crate::api::{Addressed, Caller};
use crate::engine::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::state::{SnapshotEntry, WorkspaceEntry, WorkspaceIndex};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest `--limit`.
pub const MAX_PAGE: u32 = 10_000;
/// Page size when only `--cursor` is given.
pub(super) const DEFAULT_PAGE: u32 = 1_000;

/// Result of `list` (stable JSON; the request path's reply, which the CLI reads back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListResult {
    /// Workspaces the caller may use, in the order recorded (when paging: only those with a
    /// snapshot on this page, or the one named).
    pub workspaces: Vec<ListWorkspace>,
    /// Paged requests only: the cursor of the next page, `null` on the last one (read back,
    /// both are `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<Option<String>>,
}

/// One workspace in a [`ListResult`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListWorkspace {
    /// Workspace ID.
    pub ws_id: String,
    /// Workspace path.
    pub path: PathBuf,
    /// Why the workspace cannot be used right now (storage unavailable, detached, blocked);
    /// absent when it is usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Snapshots, oldest first (newest last).
    pub snapshots: Vec<ListSnapshot>,
}

/// One snapshot in a [`ListWorkspace`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListSnapshot {
    /// Snapshot ID.
    pub id: String,
    /// Creation time (RFC 3339, UTC).
    pub created_at: Timestamp,
    /// Message.
    pub message: Option<String>,
    /// Free-form JSON metadata.
    pub metadata: Option<serde_json::Value>,
    /// Never deleted by retention or cleanup.
    pub pinned: bool,
    /// Its subvolume is gone (shown as MISSING).
    pub missing: bool,
    /// The read-only subvolume holding it (absent when the backend cannot be reached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_path: Option<PathBuf>,
    /// Lineage: the snapshot the workspace descended from when this one was taken.
    #[serde(default)]
    pub parent_id: Option<String>,
    /// Lineage: the snapshots taken from this one (`__live__`: the live workspace).
    #[serde(default)]
    pub child_ids: Vec<String>,
    /// The live workspace descends from this snapshot (`rollback -n 1` goes back to it).
    #[serde(default)]
    pub head: bool,
}

/// One item of `list --format json`: upstream's shape, our fields added inside. It borrows
/// from the [`ListResult`] it is printed from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListItem<'a> {
    /// Snapshot ID.
    pub id: &'a str,
    /// The workspace's path.
    pub workspace: &'a Path,
    /// The workspace's ID (ours).
    pub ws_id: &'a str,
    /// Upstream's metadata block.
    pub meta: ListMeta<'a>,
    /// The read-only subvolume holding the snapshot (ours).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_path: Option<&'a Path>,
    /// The live workspace descends from it (ours).
    pub head: bool,
    /// Why its workspace cannot be used right now (ours; absent when it can).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<&'a str>,
}

/// `meta` of a [`ListItem`], as upstream names it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListMeta<'a> {
    /// Message.
    pub message: Option<&'a str>,
    /// Metadata.
    pub metadata: Option<&'a serde_json::Value>,
    /// Pinned.
    pub pinned: bool,
    /// Creation time (RFC 3339, UTC).
    pub created_at: &'a Timestamp,
    /// Its subvolume is gone.
    pub missing: bool,
    /// Lineage parent.
    pub parent_id: Option<&'a str>,
    /// Lineage children.
    pub child_ids: &'a [String],
}

/// One page of `list --format json` (`--limit`/`--cursor`), as ws-ckpt 0.5.0 prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListPageItems<'a> {
    /// The page's snapshots as upstream items, in list order.
    pub snapshots: Vec<ListItem<'a>>,
    /// The cursor of the next page; `null` on the last one.
    pub next_cursor: Option<&'a str>,
}

impl ListResult {
    /// The result as one page of items (what a paged `list --format json` prints).
    pub fn page_items(&self) -> ListPageItems<'_> {
        ListPageItems {
            snapshots: self.items(),
            next_cursor: self.next_cursor.as_ref().and_then(|c| c.as_deref()),
        }
    }

    /// Every snapshot as an upstream item, in list order.
    pub fn items(&self) -> Vec<ListItem<'_>> {
        let mut out: Vec<((u64, &str, &str), ListItem<'_>)> = Vec::new();
        for w in &self.workspaces {
            for s in &w.snapshots {
                out.push((
                    (nanos(s.created_at.time()), w.ws_id.as_str(), s.id.as_str()),
                    ListItem {
                        id: &s.id,
                        workspace: &w.path,
                        ws_id: &w.ws_id,
                        meta: ListMeta {
                            message: s.message.as_deref(),
                            metadata: s.metadata.as_ref(),
                            pinned: s.pinned,
                            created_at: &s.created_at,
                            missing: s.missing,
                            parent_id: s.parent_id.as_deref(),
                            child_ids: &s.child_ids,
                        },
                        snapshot_path: s.snapshot_path.as_deref(),
                        head: s.head,
                        problem: w.problem.as_deref(),
                    },
                ));
            }
        }
        // The same order as `SortKey` (creation time, workspace, ID).
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.into_iter().map(|(_, i)| i).collect()
    }
}

/// The order of a list: creation time, then workspace, then ID (a total order, so that a
/// cursor names a position exactly).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct SortKey(u64, String, String);

impl SortKey {
    fn of(created: &Timestamp, ws_id: &str, id: &str) -> SortKey {
        SortKey(nanos(created.time()), ws_id.to_string(), id.to_string())
    }
}

fn nanos(t: Option<SystemTime>) -> u64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What a cursor remembers: the scope it was issued for, the last item returned, and the
/// newest creation time of the first page (later snapshots are not part of this listing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    v: u32,
    scope: String,
    after: SortKey,
    until: u64,
}

impl Cursor {
    fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        json.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn decode(text: &str, scope: &str) -> Result<Cursor> {
        let bad = |why: &str| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("list cursor is not valid: {why}"),
            )
            .hint("pass the next_cursor of the previous page unchanged, with the same -w, or start again without --cursor")
        };
        if !text.len().is_multiple_of(2) || text.len() > 8192 {
            return Err(bad("not a cursor issued by ws-ckpt list"));
        }
        let bytes: Option<Vec<u8>> = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
            .collect();
        let c: Cursor = bytes
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| bad("not a cursor issued by ws-ckpt list"))?;
        if c.v != 1 {
            return Err(bad("written by another version"));
        }
        if c.scope != scope {
            return Err(bad("it was issued for another workspace selection"));
        }
        Ok(c)
    }
}

/// `--limit` / `--cursor` of a list request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    /// At most this many snapshots.
    pub limit: Option<u32>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

impl ListPage {
    fn is_paged(&self) -> bool {
        self.limit.is_some() || self.cursor.is_some()
    }
}

impl Engine {
    /// `ws-ckpt list` (SPEC §5.5): recorded snapshots, oldest first, of the workspaces the
    /// caller may use. A snapshot is MISSING when marked so or when its subvolume is gone.
    /// With a workspace named by its path, a workspace that is detached or unusable is an
    /// error (SPEC §4 rule 5; by ws_id its snapshots stay listable); otherwise the problem is
    /// reported per workspace in `problem`.
    pub fn list(
        &self,
        caller: &Caller,
        workspace: Option<&Addressed>,
        page: &ListPage,
    ) -> Result<ListResult> {
        let (sources, cursor, scope) = self.list_sources(caller, workspace, page)?;
        let out: Vec<ListWorkspace> = sources.iter().map(Source::to_owned).collect();
        if !page.is_paged() {
            return Ok(ListResult {
                workspaces: out,
                next_cursor: None,
            });
        }
        Ok(paginate(
            out,
            cursor,
            page.limit.unwrap_or(DEFAULT_PAGE),
            &scope,
            workspace.is_some(),
        ))
    }

    /// [`Engine::list`] as the compact JSON text of its [`ListResult`] (the request path's
    /// reply). An unpaged list is written straight from the indexes: no copy of any entry.
    pub fn list_json(
        &self,
        caller: &Caller,
        workspace: Option<&Addressed>,
        page: &ListPage,
    ) -> Result<String> {
        if page.is_paged() {
            return serde_json::to_string(&self.list(caller, workspace, page)?)
                .map_err(encode_error);
        }
        let (sources, _, _) = self.list_sources(caller, workspace, page)?;
        let count: usize = sources.iter().map(|s| s.order.len()).sum();
        // About what an entry without message or metadata takes, so that the buffer rarely
        // grows (each growth copies everything written so far).
        let mut out = Vec::with_capacity(256 + count * 320);
        write_list(&sources, &mut out).map_err(encode_error)?;
        // Only UTF-8 was written (strings, and serde_json's output).
        String::from_utf8(out).map_err(|e| Error::new(ErrorCode::Io, e.to_string()))
    }

    /// What `ws-ckpt list --format json` prints for this list, newline included: the
    /// pretty JSON of [`ListResult::items`] (or, paged, of [`ListResult::page_items`]), the
    /// bytes `serde_json::to_writer_pretty` gives for them (a test checks it). The daemon
    /// writes it so that the CLI only copies it to its output: a list of thousands of
    /// snapshots is not sent as one shape, read back and re-indented as another.
    pub fn list_output_json(
        &self,
        caller: &Caller,
        workspace: Option<&Addressed>,
        page: &ListPage,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        if page.is_paged() {
            let listed = self.list(caller, workspace, page)?;
            serde_json::to_writer_pretty(&mut out, &listed.page_items()).map_err(encode_error)?;
        } else {
            let (sources, _, _) = self.list_sources(caller, workspace, page)?;
            let count: usize = sources.iter().map(|s| s.order.len()).sum();
            // About what an item without message or metadata takes.
            out.reserve(64 + count * 560);
            write_items_pretty(&sources, &mut out).map_err(encode_error)?;
        }
        out.push(b'\n');
        Ok(out)
    }

    /// What a list reads: the workspaces (each with its index and what is found of its
    /// snapshots), the decoded cursor and the cursor's scope.
    fn list_sources(
        &self,
        caller: &Caller,
        workspace: Option<&Addressed>,
        page: &ListPage,
    ) -> Result<(Vec<Source>, Option<Cursor>, String)> {
        if let Some(n) = page.limit {
            if n == 0 || n > MAX_PAGE {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    format!("--limit {n} is out of range: use 1 to {MAX_PAGE}"),
                ));
            }
        }
        let scope = workspace
            .map(|w| w.ws_id().to_string())
            .unwrap_or("*".into());
        let cursor = page
            .cursor
            .as_deref()
            .map(|c| Cursor::decode(c, &scope))
            .transpose()?;
        let (entries, storage) = match workspace {
            Some(w) => {
                let res = self.storage_for(Some(&w.entry))?;
                self.check_path_addressed(w, &res)?;
                (vec![w.entry.clone()], Ok(res))
            }
            None => {
                let config = self.config();
                let all: Vec<WorkspaceEntry> = self
                    .store
                    .read()
                    .state
                    .iter()
                    .flat_map(|s| s.workspaces.iter())
                    .filter(|w| crate::auth::may_use(&config, caller, w))
                    .cloned()
                    .collect();
                (all, self.light_resolution())
            }
        };
        let mut out = Vec::with_capacity(entries.len());
        for w in entries {
            let problem = match &storage {
                Err(_) if workspace.is_none() => {
                    self.storage_for(Some(&w)).err().map(|e| e.message)
                }
                Err(e) => Some(e.message.clone()),
                Ok(res) => self.attached_subvol(&w, res).err().map(|e| e.message),
            };
            // Shared with the store, not copied: the index is read after the lock is released.
            let index = self.store.read().indexes.get(&w.ws_id).cloned();
            let snap_dir = storage.as_ref().ok().map(|r| r.snap_dir(&w.ws_id));
            // One listing of the snapshot directory, not a lookup per snapshot; when it
            // cannot be read, nothing is reported MISSING for it.
            let present: Option<Present> = match (&snap_dir, &index) {
                (Some(dir), Some(i)) if !i.snapshots.is_empty() => self
                    .sys()
                    .list_dirs(dir)
                    .ok()
                    .map(|names| names.into_iter().collect()),
                _ => None,
            };
            let order = match &index {
                Some(i) => list_order(i),
                None => Vec::new(),
            };
            out.push(Source {
                entry: w,
                problem,
                index,
                snap_dir,
                present,
                order,
            });
        }
        Ok((out, cursor, scope))
    }
}

/// The positions of `index`'s snapshots in list order: by creation time, entries with equal
/// times in their recorded order (which is creation order, so usually nothing moves).
fn list_order(index: &WorkspaceIndex) -> Vec<usize> {
    let entries: Vec<&SnapshotEntry> = index.snapshots.values().collect();
    let mut order: Vec<usize> = (0..entries.len()).collect();
    let sorted = entries
        .windows(2)
        .all(|w| w[0].created_at.time() <= w[1].created_at.time());
    if !sorted {
        // Stable: equal times keep their recorded order.
        order.sort_by_key(|&i| entries[i].created_at.time());
    }
    order
}

/// The names found in a snapshot directory. Hashed with FNV-1a: they are the daemon's own
/// directory entries, looked up once each, and a list of 10 000 snapshots should not spend
/// its time in SipHash.
type Present = HashSet<String, BuildHasherDefault<Fnv>>;

/// The FNV-1a hash (64 bits).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// One listed workspace, read before its snapshots are written out.
struct Source {
    entry: WorkspaceEntry,
    problem: Option<String>,
    index: Option<Arc<WorkspaceIndex>>,
    /// Its snapshot directory (`None` when the backend cannot be reached).
    snap_dir: Option<PathBuf>,
    /// The names in the snapshot directory (`None`: not read; nothing is MISSING).
    present: Option<Present>,
    /// [`list_order`] of the index.
    order: Vec<usize>,
}

impl Source {
    /// Its snapshots in list order.
    fn snapshots(&self) -> impl Iterator<Item = SnapshotView<'_>> {
        let head = self.index.as_ref().and_then(|i| i.head());
        self.order.iter().filter_map(move |&pos| {
            let (id, e) = self.index.as_ref()?.snapshots.get_index(pos)?;
            let gone = self
                .present
                .as_ref()
                .is_some_and(|p| !p.contains(id.as_str()));
            Some(SnapshotView {
                id,
                created_at: &e.created_at,
                message: e.message(),
                metadata: e.metadata(),
                pinned: e.pinned,
                missing: e.missing || gone,
                snapshot_path: self.snap_dir.as_deref().map(|dir| SnapshotPath { dir, id }),
                parent_id: e.parent_id(),
                entry: e,
                head: head == Some(id.as_str()),
            })
        })
    }

    fn to_owned(&self) -> ListWorkspace {
        ListWorkspace {
            ws_id: self.entry.ws_id.clone(),
            path: self.entry.workspace_path.clone(),
            problem: self.problem.clone(),
            snapshots: self.snapshots().map(|s| s.to_owned()).collect(),
        }
    }
}

/// The JSON of the unpaged [`ListResult`] of `sources`, written straight into `out`: the
/// bytes `serde_json::to_string` gives for the owned result (a test checks it), without
/// building that result or going through serde for each field. A list of 10 000 snapshots
/// spends most of its time here; strings that need no escaping (all IDs, times and paths
/// ws-ckpt makes) are copied as they are.
fn write_list(sources: &[Source], out: &mut Vec<u8>) -> serde_json::Result<()> {
    out.extend_from_slice(b"{\"workspaces\":[");
    for (i, src) in sources.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"ws_id\":");
        put_str(out, &[&src.entry.ws_id])?;
        out.extend_from_slice(b",\"path\":");
        serde_json::to_writer(&mut *out, &src.entry.workspace_path)?;
        if let Some(p) = &src.problem {
            out.extend_from_slice(b",\"problem\":");
            put_str(out, &[p])?;
        }
        out.extend_from_slice(b",\"snapshots\":[");
        for (j, snap) in src.snapshots().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            snap.write(out)?;
        }
        out.extend_from_slice(b"]}");
    }
    out.extend_from_slice(b"]}");
    Ok(())
}

/// The error of a list that cannot be written as JSON.
fn encode_error(e: serde_json::Error) -> Error {
    Error::new(ErrorCode::Io, format!("cannot encode the list: {e}"))
}

/// The pretty JSON of the [`ListResult::items`] of the unpaged list of `sources`, written
/// straight into `out` as `serde_json::to_writer_pretty` writes them (two spaces per level),
/// without building the result or the items.
fn write_items_pretty(sources: &[Source], out: &mut Vec<u8>) -> serde_json::Result<()> {
    /// What every item of one workspace shares, written once.
    struct Shared {
        workspace: Vec<u8>,
        ws_id: Vec<u8>,
        problem: Option<Vec<u8>>,
    }
    let mut shared = Vec::with_capacity(sources.len());
    let mut views: Vec<(u64, usize, SnapshotView<'_>)> = Vec::new();
    for (si, src) in sources.iter().enumerate() {
        let mut workspace = Vec::new();
        serde_json::to_writer(&mut workspace, &src.entry.workspace_path)?;
        let mut ws_id = Vec::new();
        put_str(&mut ws_id, &[&src.entry.ws_id])?;
        let problem = match &src.problem {
            Some(p) => {
                let mut text = Vec::new();
                put_str(&mut text, &[p])?;
                Some(text)
            }
            None => None,
        };
        shared.push(Shared {
            workspace,
            ws_id,
            problem,
        });
        views.extend(src.snapshots().map(|v| (nanos(v.created_at.time()), si, v)));
    }
    // The order of `ListResult::items`: creation time, workspace, ID.
    views.sort_by(|a, b| {
        (a.0, &sources[a.1].entry.ws_id, a.2.id).cmp(&(b.0, &sources[b.1].entry.ws_id, b.2.id))
    });
    if views.is_empty() {
        out.extend_from_slice(b"[]");
        return Ok(());
    }
    out.push(b'[');
    for (i, (_, si, v)) in views.iter().enumerate() {
        let w = &shared[*si];
        out.extend_from_slice(if i == 0 { b"\n  {" } else { b",\n  {" });
        out.extend_from_slice(b"\n    \"id\": ");
        put_str(out, &[v.id])?;
        out.extend_from_slice(b",\n    \"workspace\": ");
        out.extend_from_slice(&w.workspace);
        out.extend_from_slice(b",\n    \"ws_id\": ");
        out.extend_from_slice(&w.ws_id);
        out.extend_from_slice(b",\n    \"meta\": {");
        put_opt_str(out, b"\n      \"message\": ", v.message)?;
        out.extend_from_slice(b",\n      \"metadata\": ");
        match &v.metadata {
            Some(m) => put_pretty_at(out, m, 3)?,
            None => out.extend_from_slice(b"null"),
        }
        put_bool(out, b",\n      \"pinned\": ", v.pinned);
        out.extend_from_slice(b",\n      \"created_at\": ");
        v.created_at.with_text(|t| put_str(out, &[t]))?;
        put_bool(out, b",\n      \"missing\": ", v.missing);
        put_opt_str(out, b",\n      \"parent_id\": ", v.parent_id)?;
        out.extend_from_slice(b",\n      \"child_ids\": [");
        let mut children = 0;
        for c in v.entry.child_ids_iter() {
            out.extend_from_slice(if children == 0 {
                b"\n        "
            } else {
                b",\n        "
            });
            put_str(out, &[c])?;
            children += 1;
        }
        out.extend_from_slice(if children == 0 { b"]" } else { b"\n      ]" });
        out.extend_from_slice(b"\n    }");
        if let Some(p) = &v.snapshot_path {
            out.extend_from_slice(b",\n    \"snapshot_path\": ");
            p.write(out)?;
        }
        put_bool(out, b",\n    \"head\": ", v.head);
        if let Some(p) = &w.problem {
            out.extend_from_slice(b",\n    \"problem\": ");
            out.extend_from_slice(p);
        }
        out.extend_from_slice(b"\n  }");
    }
    out.extend_from_slice(b"\n]");
    Ok(())
}

/// `v` pretty-printed as it is when nested `depth` levels deep: its own pretty text with every
/// line after the first indented by `depth` levels (a string never holds a raw newline).
fn put_pretty_at(out: &mut Vec<u8>, v: &serde_json::Value, depth: usize) -> serde_json::Result<()> {
    let text = serde_json::to_vec_pretty(v)?;
    let mut lines = text.split(|b| *b == b'\n');
    if let Some(first) = lines.next() {
        out.extend_from_slice(first);
    }
    for line in lines {
        out.push(b'\n');
        out.resize(out.len() + 2 * depth, b' ');
        out.extend_from_slice(line);
    }
    Ok(())
}

/// The JSON string of `parts` joined: copied as they are when none holds a byte JSON
/// escapes (a control character, `"` or a backslash), else through serde_json.
fn put_str(out: &mut Vec<u8>, parts: &[&str]) -> serde_json::Result<()> {
    let plain = parts.iter().all(|p| {
        // No early exit: the loop over the bytes vectorizes.
        !p.bytes().fold(false, |esc, b| {
            esc | (b < 0x20) | (b == b'"') | (b == b'\\')
        })
    });
    if plain {
        out.push(b'"');
        for p in parts {
            out.extend_from_slice(p.as_bytes());
        }
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(&mut *out, &parts.concat())
    }
}

/// `"key":value` of an optional string (`null` when absent), after a comma.
fn put_opt_str(out: &mut Vec<u8>, key: &[u8], v: Option<&str>) -> serde_json::Result<()> {
    out.extend_from_slice(key);
    match v {
        Some(v) => put_str(out, &[v]),
        None => {
            out.extend_from_slice(b"null");
            Ok(())
        }
    }
}

/// `"key":true|false`, after a comma.
fn put_bool(out: &mut Vec<u8>, key: &[u8], v: bool) {
    out.extend_from_slice(key);
    out.extend_from_slice(if v { b"true" } else { b"false" });
}

/// A [`ListSnapshot`], borrowed: the same fields in the same order.
struct SnapshotView<'a> {
    id: &'a str,
    created_at: &'a Timestamp,
    message: Option<&'a str>,
    metadata: Option<serde_json::Value>,
    pinned: bool,
    missing: bool,
    snapshot_path: Option<SnapshotPath<'a>>,
    parent_id: Option<&'a str>,
    /// Its entry, for `child_ids`.
    entry: &'a SnapshotEntry,
    head: bool,
}

impl SnapshotView<'_> {
    /// Its JSON object, as the derived `Serialize` of [`ListSnapshot`] writes it.
    fn write(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        out.extend_from_slice(b"{\"id\":");
        put_str(out, &[self.id])?;
        out.extend_from_slice(b",\"created_at\":");
        self.created_at.with_text(|t| put_str(out, &[t]))?;
        put_opt_str(out, b",\"message\":", self.message)?;
        out.extend_from_slice(b",\"metadata\":");
        match &self.metadata {
            Some(v) => serde_json::to_writer(&mut *out, v)?,
            None => out.extend_from_slice(b"null"),
        }
        put_bool(out, b",\"pinned\":", self.pinned);
        put_bool(out, b",\"missing\":", self.missing);
        if let Some(p) = &self.snapshot_path {
            out.extend_from_slice(b",\"snapshot_path\":");
            p.write(out)?;
        }
        put_opt_str(out, b",\"parent_id\":", self.parent_id)?;
        out.extend_from_slice(b",\"child_ids\":[");
        for (i, c) in self.entry.child_ids_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            put_str(out, &[c])?;
        }
        out.extend_from_slice(b"]");
        put_bool(out, b",\"head\":", self.head);
        out.push(b'}');
        Ok(())
    }

    fn to_owned(&self) -> ListSnapshot {
        ListSnapshot {
            id: self.id.to_string(),
            created_at: self.created_at.clone(),
            message: self.message.map(str::to_string),
            metadata: self.metadata.clone(),
            pinned: self.pinned,
            missing: self.missing,
            snapshot_path: self.snapshot_path.as_ref().map(|p| p.dir.join(p.id)),
            parent_id: self.parent_id.map(str::to_string),
            child_ids: self.entry.child_ids_iter().map(str::to_string).collect(),
            head: self.head,
        }
    }
}

/// `<dir>/<id>`, serialized as the joined path would be, without building it.
struct SnapshotPath<'a> {
    dir: &'a Path,
    id: &'a str,
}

impl SnapshotPath<'_> {
    /// Its JSON string: `dir` joined with the ID as `Path::join` does.
    fn write(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        match self.dir.to_str() {
            // What `Path::join` gives for an ID (one normal component, never absolute).
            Some(d) if d.ends_with('/') => put_str(out, &[d, self.id]),
            Some(d) => put_str(out, &[d, "/", self.id]),
            None => serde_json::to_writer(&mut *out, &self.dir.join(self.id)),
        }
    }
}

/// One page of `all` (every listed workspace with all its snapshots): the `limit` items after
/// `cursor` in list order, none created after the first page's newest.
fn paginate(
    all: Vec<ListWorkspace>,
    cursor: Option<Cursor>,
    limit: u32,
    scope: &str,
    keep_empty: bool,
) -> ListResult {
    let until = match &cursor {
        Some(c) => c.until,
        None => all
            .iter()
            .flat_map(|w| w.snapshots.iter())
            .map(|s| nanos(s.created_at.time()))
            .max()
            .unwrap_or(0),
    };
    let mut keys: Vec<(SortKey, usize, usize)> = Vec::new();
    for (wi, w) in all.iter().enumerate() {
        for (si, s) in w.snapshots.iter().enumerate() {
            let k = SortKey::of(&s.created_at, &w.ws_id, &s.id);
            let after = cursor.as_ref().is_none_or(|c| k > c.after);
            if after && k.0 <= until {
                keys.push((k, wi, si));
            }
        }
    }
    keys.sort();
    let more = keys.len() > limit as usize;
    keys.truncate(limit as usize);
    let next = match (more, keys.last()) {
        (true, Some((k, _, _))) => Some(
            Cursor {
                v: 1,
                scope: scope.to_string(),
                after: k.clone(),
                until,
            }
            .encode(),
        ),
        _ => None,
    };
    let mut chosen: Vec<Vec<usize>> = vec![Vec::new(); all.len()];
    for (_, wi, si) in &keys {
        chosen[*wi].push(*si);
    }
    let workspaces = all
        .into_iter()
        .zip(chosen)
        .filter(|(_, c)| keep_empty || !c.is_empty())
        .map(|(mut w, c)| {
            let mut picked: Vec<ListSnapshot> = Vec::with_capacity(c.len());
            let mut snaps: Vec<Option<ListSnapshot>> = w.snapshots.into_iter().map(Some).collect();
            for si in c {
                if let Some(s) = snaps[si].take() {
                    picked.push(s);
                }
            }
            w.snapshots = picked;
            w
        })
        .collect();
    ListResult {
        workspaces,
        next_cursor: Some(next),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(id: &str, snaps: &[(&str, u64)]) -> ListWorkspace {
        ListWorkspace {
            ws_id: id.into(),
            path: format!("/w/{id}").into(),
            problem: None,
            snapshots: snaps
                .iter()
                .map(|(s, t)| ListSnapshot {
                    id: (*s).into(),
                    created_at: Timestamp::nanos(UNIX_EPOCH + std::time::Duration::from_secs(*t)),
                    message: None,
                    metadata: None,
                    pinned: false,
                    missing: false,
                    snapshot_path: None,
                    parent_id: None,
                    child_ids: Vec::new(),
                    head: false,
                })
                .collect(),
        }
    }

    fn ids(r: &ListResult) -> Vec<String> {
        r.items().into_iter().map(|i| i.id.to_string()).collect()
    }

    #[test]
    fn pages_cover_everything_once_in_order_and_stop_at_the_first_pages_newest() {
        let all = vec![
            ws("ws-a", &[("a1", 1), ("a3", 3)]),
            ws("ws-b", &[("b2", 2), ("b4", 4)]),
        ];
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = paginate(all.clone(), cursor, 3, "*", false);
            seen.extend(ids(&page));
            match page.next_cursor.unwrap() {
                Some(c) => cursor = Some(Cursor::decode(&c, "*").unwrap()),
                None => break,
            }
        }
        assert_eq!(seen, ["a1", "b2", "a3", "b4"]);
        // A snapshot newer than the first page's newest is not part of the listing.
        let first = paginate(all.clone(), None, 2, "*", false);
        let c =
            Cursor::decode(first.next_cursor.clone().unwrap().as_deref().unwrap(), "*").unwrap();
        let mut grown = all;
        grown[0].snapshots.extend(ws("x", &[("a9", 9)]).snapshots);
        assert_eq!(ids(&paginate(grown, Some(c), 10, "*", false)), ["a3", "b4"]);
    }

    #[test]
    fn cursors_are_checked() {
        for bad in ["not-a-cursor", "zz", "7b7d", ""] {
            let e = Cursor::decode(bad, "*").unwrap_err();
            assert!(
                e.message.contains("list cursor is not valid"),
                "{bad}: {}",
                e.message
            );
        }
        let c = Cursor {
            v: 1,
            scope: "ws-a".into(),
            after: SortKey(1, "ws-a".into(), "a1".into()),
            until: 5,
        };
        assert_eq!(Cursor::decode(&c.encode(), "ws-a").unwrap(), c);
        assert!(Cursor::decode(&c.encode(), "*").is_err());
    }

    /// A workspace entry and an index of `snaps` (ID, seconds) taken in that order through
    /// the lineage, with a message, metadata and a pin on some.
    fn source(
        ws_id: &str,
        snaps: &[(&str, u64)],
        present: Option<&[&str]>,
        problem: Option<&str>,
    ) -> Source {
        let mut index = WorkspaceIndex::new(format!("/w/{ws_id} \"q\"").into());
        for (i, (id, t)) in snaps.iter().enumerate() {
            let mut e = SnapshotEntry::new(Timestamp::nanos(
                UNIX_EPOCH + std::time::Duration::from_secs(*t),
            ));
            if i % 2 == 0 {
                e.set_message(Some(format!("step {i}\twith é and \u{1b}")));
                e.set_metadata(Some(
                    serde_json::json!({"tool": "edit", "n": [i, 1.5], "o": {}}),
                ));
            }
            e.pinned = i % 3 == 0;
            e.missing = i == 1;
            let op = crate::state::lineage::checkpoint(&index, id, e);
            index.apply(&op);
        }
        let entry = WorkspaceEntry {
            ws_id: ws_id.into(),
            workspace_path: index.workspace_path.clone(),
            registered_at: String::new(),
            origin_backend: crate::state::BackendType::BtrfsLoop,
            owner_uid: None,
            parent: None,
            others_search: None,
            extra: Default::default(),
        };
        let order = list_order(&index);
        Source {
            entry,
            problem: problem.map(str::to_string),
            index: Some(Arc::new(index)),
            snap_dir: present.map(|_| PathBuf::from(format!("/mnt/snapshots/{ws_id}"))),
            present: present.map(|p| p.iter().map(|s| s.to_string()).collect()),
            order,
        }
    }

    /// Four workspaces covering what a list holds: snapshots out of time order (equal times
    /// in recorded order) and one not in its directory (MISSING); a workspace whose
    /// snapshots interleave in time with the first's (equal times order by workspace, then
    /// ID), with a problem needing escapes and no snapshot directory; an empty one; escaped
    /// IDs and a directory ending in a slash.
    fn fixture() -> [Source; 4] {
        [
            source(
                "ws-a",
                &[("a3", 3), ("a1", 1), ("a2", 2), ("a2b", 2), ("a0", 0)],
                Some(&["a3", "a2", "a2b", "a0", "stray"]),
                None,
            ),
            source(
                "ws-b",
                &[("b2", 2), ("b1", 1), ("b0", 0), ("a9", 0)],
                None,
                Some("the backend is \"not\" mounted"),
            ),
            source("ws-c", &[], Some(&[]), None),
            Source {
                snap_dir: Some("/mnt/sn\"aps\\/".into()),
                ..source(
                    "ws-d",
                    &[("d\"1", 1), ("d\u{7f}2", 2)],
                    Some(&["d\"1"]),
                    None,
                )
            },
        ]
    }

    #[test]
    fn the_written_list_is_the_list_result_serialized() {
        let sources = fixture();
        let mut written = Vec::new();
        write_list(&sources, &mut written).unwrap();
        let owned = ListResult {
            workspaces: sources.iter().map(Source::to_owned).collect(),
            next_cursor: None,
        };
        let a1 = &owned.workspaces[0].snapshots[1];
        assert_eq!(a1.id, "a1");
        assert!(a1.missing, "not in the directory");
        assert_eq!(
            owned.workspaces[0]
                .snapshots
                .iter()
                .map(|s| s.id.as_str())
                .collect::<Vec<_>>(),
            ["a0", "a1", "a2", "a2b", "a3"]
        );
        assert!(owned.workspaces[0].snapshots.iter().any(|s| s.head));
        assert_eq!(
            String::from_utf8(written).unwrap(),
            serde_json::to_string(&owned).unwrap()
        );
    }

    #[test]
    fn the_written_output_is_the_items_pretty_printed() {
        let sources = fixture();
        let owned = ListResult {
            workspaces: sources.iter().map(Source::to_owned).collect(),
            next_cursor: None,
        };
        let items = owned.items();
        // What the fixture covers: metadata (nested, an empty object), children, missing,
        // no snapshot path, a problem.
        assert!(items.iter().any(|i| i.meta.metadata.is_some()));
        assert!(items.iter().any(|i| !i.meta.child_ids.is_empty()));
        assert!(items.iter().any(|i| i.meta.missing));
        assert!(items.iter().any(|i| i.snapshot_path.is_none()));
        assert!(items.iter().any(|i| i.problem.is_some()));
        let mut written = Vec::new();
        write_items_pretty(&sources, &mut written).unwrap();
        assert_eq!(
            String::from_utf8(written).unwrap(),
            String::from_utf8(serde_json::to_vec_pretty(&items).unwrap()).unwrap()
        );
        let mut empty = Vec::new();
        write_items_pretty(&sources[2..3], &mut empty).unwrap();
        assert_eq!(empty, b"[]");
        let mut nested = Vec::new();
        let v = serde_json::json!({"a": [1, {"b": []}], "c": {}});
        put_pretty_at(&mut nested, &v, 1).unwrap();
        let wrapped = serde_json::to_string_pretty(&[&v]).unwrap();
        assert_eq!(
            format!("[\n  {}\n]", String::from_utf8(nested).unwrap()),
            wrapped
        );
    }

    #[test]
    fn items_are_upstreams_shape_oldest_first_across_workspaces() {
        let r = ListResult {
            workspaces: vec![ws("ws-b", &[("b2", 2)]), ws("ws-a", &[("a1", 1)])],
            next_cursor: None,
        };
        let v = serde_json::to_value(r.items()).unwrap();
        assert_eq!(v[0]["id"], "a1");
        assert_eq!(v[0]["workspace"], "/w/ws-a");
        assert_eq!(v[1]["meta"]["pinned"], false);
        assert!(v[1]["meta"]["created_at"].is_string());
        assert!(serde_json::to_value(&r)
            .unwrap()
            .get("next_cursor")
            .is_none());
    }
}
