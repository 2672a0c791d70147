//! What a loaded workspace index costs in memory (issue 9: the daemon holds every index, and
//! its RSS at 100 workspaces × 1 000 snapshots must stay at most 30 MiB): a counting global
//! allocator measures the heap an index of 1 000 snapshots keeps after `IndexStore::load`,
//! and the peak while loading it, for the entries adoption writes (creation time only) and
//! the ones checkpoints write (lineage, message, metadata).
//!
//! Its own test binary, with one test, so that no other test allocates meanwhile. Bytes are
//! counted as glibc's malloc uses them (16-byte chunks with an 8-byte header, 32 at least),
//! which is what the daemon's RSS sees.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ws_ckpt::state::{IndexLoad, IndexOp, IndexStore, SnapshotEntry, WorkspaceIndex};
use ws_ckpt::time::Timestamp;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// Bytes of heap a malloc of `size` takes with glibc.
fn chunk(size: usize) -> usize {
    ((size + 8 + 15) & !15).max(32)
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are only
// statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(chunk(l.size()), Ordering::Relaxed) + chunk(l.size());
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(chunk(l.size()), Ordering::Relaxed);
        // SAFETY: `p` was allocated by `System` with `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let live = LIVE.fetch_add(chunk(new), Ordering::Relaxed) + chunk(new);
        PEAK.fetch_max(live, Ordering::Relaxed);
        LIVE.fetch_sub(chunk(l.size()), Ordering::Relaxed);
        // SAFETY: `p` was allocated by `System` with `l`.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const N: usize = 1000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_000_000)
}

/// Bytes kept by the index loaded from `store`, and the peak above the start while loading.
fn load_cost(store: &IndexStore, ws: &str) -> (WorkspaceIndex, usize, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let idx = match store.load(ws, now()).unwrap() {
        IndexLoad::Loaded(i) => i,
        other => panic!("{other:?}"),
    };
    let kept = LIVE.load(Ordering::Relaxed) - before;
    let peak = PEAK.load(Ordering::Relaxed) - before;
    (idx, kept, peak)
}

#[test]
fn a_loaded_index_costs_little_per_snapshot() {
    let td = tempfile::tempdir().unwrap();
    let store = IndexStore::new(td.path());

    // What adoption and the fleet benchmark write: an ID and a creation time.
    let mut adopted = WorkspaceIndex::new("/srv/ws/adopted".into());
    for i in 0..N {
        let at = now() + Duration::from_micros(i as u64 * 1_001);
        adopted.snapshots.insert(
            format!("bulk-{i:06}"),
            SnapshotEntry::new(Timestamp::nanos(at)),
        );
    }
    store.write_full("ws-aaaaaa", &adopted).unwrap();

    // What checkpoints write: a lineage chain, a message and metadata on each.
    let mut made = WorkspaceIndex::new("/srv/ws/made".into());
    for i in 0..N {
        let at = now() + Duration::from_millis(i as u64 * 1_001);
        let id = ws_ckpt::ids::generate_snapshot_id(at, |_| false);
        let mut e = SnapshotEntry::new(Timestamp::nanos(at));
        e.set_message(Some(format!("turn {i}")));
        e.set_metadata(Some(serde_json::json!({"auto": true, "type": "turn_end"})));
        made.apply(&IndexOp::Checkpoint { id, entry: e });
    }
    store.write_full("ws-bbbbbb", &made).unwrap();
    let file = std::fs::metadata(store.dir("ws-bbbbbb").join("index.json"))
        .unwrap()
        .len() as usize;

    let (a, a_kept, a_peak) = load_cost(&store, "ws-aaaaaa");
    assert_eq!(a, adopted);
    let (m, m_kept, m_peak) = load_cost(&store, "ws-bbbbbb");
    assert_eq!(m, made);
    eprintln!(
        "per snapshot: adopted {} B kept, {} B peak; checkpoints {} B kept, {} B peak \
         (index.json {} B/snapshot); SnapshotEntry {} B inline",
        a_kept / N,
        a_peak / N,
        m_kept / N,
        m_peak / N,
        file / N,
        std::mem::size_of::<SnapshotEntry>()
    );
    // Before the compact entry (ws-ckpt 0.4.0) these were about 350 and 900 bytes.
    assert!(a_kept / N <= 150, "adopted: {} B per snapshot", a_kept / N);
    assert!(
        m_kept / N <= 320,
        "checkpoints: {} B per snapshot",
        m_kept / N
    );
    // Loading holds the file and the entries being built, not a JSON tree of it.
    assert!(
        m_peak <= m_kept + 2 * file + 64 * 1024,
        "peak {m_peak} B for {m_kept} B kept from a {file} B file"
    );
}
