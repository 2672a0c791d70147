//! The daemon's triggers: filesystem watches (config file, `config.d`, snapshot directories,
//! the loop image's directory), the mount table (`poll()` on `/proc/self/mountinfo`) and
//! signals (SIGHUP, SIGTERM, SIGINT). Each only sends an [`Event`] into the loop's channel.
//!
//! Nothing here acts on what an event says (house style 10): events are filtered for
//! relevance, then become "reconcile now". The loop decides everything.

use notify::event::{EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

/// What the loop receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Run a full pass; the text says why (for logs only).
    Tick(&'static str),
    /// SIGHUP: re-read the config (done by every pass anyway), then a pass.
    Reload,
    /// SIGTERM/SIGINT: stop gracefully.
    Shutdown,
}

/// Errors setting up a trigger.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The inotify watcher could not be created.
    #[error("cannot create the inotify watcher: {0}; check fs.inotify.max_user_instances")]
    Watcher(#[source] notify::Error),
    /// `/proc/self/mountinfo` could not be opened.
    #[error("cannot open /proc/self/mountinfo to watch mount changes: {0}; is /proc mounted?")]
    MountInfo(#[source] std::io::Error),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// A thread could not be started.
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        /// Thread name.
        name: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Which paths matter. Directories are watched; events are kept only when they concern
/// these paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchSet {
    /// The main config file (its directory is watched).
    pub config_file: PathBuf,
    /// `config.d` (watched; `*.toml` entries matter).
    pub dropin_dir: PathBuf,
    /// `<snapshots_root>` and every `<snapshots_root>/<ws_id>`: removals matter.
    pub snapshot_dirs: BTreeSet<PathBuf>,
    /// The loop image (its directory is watched): appearing, vanishing or renamed matters.
    pub image: Option<PathBuf>,
}

impl WatchSet {
    /// Directories to watch, in a stable order.
    pub fn dirs(&self) -> BTreeSet<PathBuf> {
        let mut d = BTreeSet::new();
        if let Some(p) = self
            .config_file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            d.insert(p.to_path_buf());
        }
        d.insert(self.dropin_dir.clone());
        d.extend(self.snapshot_dirs.iter().cloned());
        if let Some(p) = self
            .image
            .as_ref()
            .and_then(|i| i.parent())
            .filter(|p| !p.as_os_str().is_empty())
        {
            d.insert(p.to_path_buf());
        }
        d
    }

    /// Why this event should trigger a pass, or `None` when it is irrelevant.
    pub fn relevance(&self, ev: &notify::Event) -> Option<&'static str> {
        if ev.need_rescan() {
            return Some("watch queue overflow");
        }
        if matches!(ev.kind, EventKind::Access(_)) {
            return None;
        }
        let removal = matches!(
            ev.kind,
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
        );
        let appear_vanish = removal || matches!(ev.kind, EventKind::Create(_));
        let content = !matches!(ev.kind, EventKind::Modify(ModifyKind::Metadata(_)));
        for p in &ev.paths {
            if content && (*p == self.config_file || *p == self.dropin_dir) {
                return Some("config changed");
            }
            if content && p.parent() == Some(self.dropin_dir.as_path()) && is_dropin_name(p) {
                return Some("config changed");
            }
            if removal
                && (self.snapshot_dirs.contains(p)
                    || p.parent().is_some_and(|d| self.snapshot_dirs.contains(d)))
            {
                return Some("snapshot removed");
            }
            if appear_vanish && self.image.as_deref() == Some(p.as_path()) {
                return Some("image appeared or vanished");
            }
        }
        None
    }
}

fn is_dropin_name(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| !n.starts_with('.') && n.ends_with(".toml"))
}

/// The inotify watches, re-registered after every pass (directories may appear, and a
/// remount replaces a directory by another inode).
pub struct Watches {
    watcher: notify::RecommendedWatcher,
    watched: BTreeMap<PathBuf, (u64, u64)>,
    set: Arc<Mutex<WatchSet>>,
}

impl Watches {
    /// Create the watcher; relevant events become [`Event::Tick`] on `tx`.
    pub fn new(tx: Sender<Event>) -> Result<Watches, WatchError> {
        let set = Arc::new(Mutex::new(WatchSet::default()));
        let filter = Arc::clone(&set);
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let why = match res {
                Ok(ev) => {
                    let set = filter.lock().unwrap_or_else(|p| p.into_inner());
                    let why = set.relevance(&ev);
                    if let Some(w) = why {
                        tracing::debug!(reason = w, paths = ?ev.paths, kind = ?ev.kind, "watch event");
                    }
                    why
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch error; running a full pass");
                    Some("watch error")
                }
            };
            if let Some(w) = why {
                let _ = tx.send(Event::Tick(w));
            }
        })
        .map_err(WatchError::Watcher)?;
        Ok(Watches {
            watcher,
            watched: BTreeMap::new(),
            set,
        })
    }

    /// Make the watched directories match `want`: add new or replaced ones, drop vanished
    /// ones. Failures are logged (the periodic pass still covers those paths).
    pub fn update(&mut self, want: WatchSet) {
        let dirs = want.dirs();
        *self.set.lock().unwrap_or_else(|p| p.into_inner()) = want;
        let mut next = BTreeMap::new();
        for dir in dirs {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            if !meta.is_dir() {
                continue;
            }
            let id = (meta.dev(), meta.ino());
            if self.watched.get(&dir) == Some(&id) {
                next.insert(dir, id);
                continue;
            }
            if self.watched.contains_key(&dir) {
                let _ = self.watcher.unwatch(&dir);
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::debug!(dir = %dir.display(), "watching");
                    next.insert(dir, id);
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; changes there are seen at the next periodic pass")
                }
            }
        }
        for dir in self.watched.keys() {
            if !next.contains_key(dir) {
                let _ = self.watcher.unwatch(dir);
            }
        }
        self.watched = next;
    }

    /// True when `want` is the set given last ([`Watches::update`] would only re-check the
    /// directories' identities, which every reconcile pass does).
    pub fn has_set(&self, want: &WatchSet) -> bool {
        *self.set.lock().unwrap_or_else(|p| p.into_inner()) == *want
    }

    /// Directories currently watched.
    pub fn watched(&self) -> Vec<PathBuf> {
        self.watched.keys().cloned().collect()
    }
}

/// Start a thread that sends [`Event::Tick`] whenever this mount namespace's mount table
/// changes (the kernel flags `/proc/self/mountinfo` with POLLPRI/POLLERR). It sleeps in
/// `poll()` between changes.
pub fn spawn_mount_watcher(tx: Sender<Event>) -> Result<(), WatchError> {
    let file = std::fs::File::open(crate::sys::mountinfo::MOUNTINFO_PATH)
        .map_err(WatchError::MountInfo)?;
    std::thread::Builder::new()
        .name("ws-ckpt-mounts".into())
        .spawn(move || loop {
            match crate::sys::mountinfo::mount_table_changed(&file, -1) {
                Ok(false) => {}
                Ok(true) => {
                    if tx.send(Event::Tick("mount table changed")).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the mount table; mount changes are seen at the next periodic pass");
                    return;
                }
            }
        })
        .map_err(|source| WatchError::Thread { name: "mount watcher", source })?;
    Ok(())
}

/// Install handlers for SIGHUP (→ [`Event::Reload`]) and SIGTERM/SIGINT (→ [`Event::Shutdown`])
/// and start the thread that forwards them.
pub fn spawn_signal_thread(tx: Sender<Event>) -> Result<(), WatchError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT])
        .map_err(WatchError::Signals)?;
    std::thread::Builder::new()
        .name("ws-ckpt-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let ev = if sig == SIGHUP {
                    Event::Reload
                } else {
                    Event::Shutdown
                };
                tracing::info!(signal = sig, "signal received");
                if tx.send(ev).is_err() {
                    return;
                }
            }
        })
        .map_err(|source| WatchError::Thread {
            name: "signal",
            source,
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, DataChange, MetadataKind, RemoveKind, RenameMode};
    use std::sync::mpsc;
    use std::time::Duration;

    fn ev(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    fn set() -> WatchSet {
        WatchSet {
            config_file: "/etc/w/config.toml".into(),
            dropin_dir: "/etc/w/config.d".into(),
            snapshot_dirs: ["/mnt/s", "/mnt/s/ws-1"]
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            image: Some("/var/lib/w/img".into()),
        }
    }

    #[test]
    fn dirs_cover_every_watched_place() {
        let d: Vec<PathBuf> = set().dirs().into_iter().collect();
        assert_eq!(
            d,
            [
                "/etc/w",
                "/etc/w/config.d",
                "/mnt/s",
                "/mnt/s/ws-1",
                "/var/lib/w"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn config_events_are_relevant_other_files_not() {
        let s = set();
        let data = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert_eq!(
            s.relevance(&ev(data, "/etc/w/config.toml")),
            Some("config changed")
        );
        assert_eq!(
            s.relevance(&ev(
                EventKind::Create(CreateKind::File),
                "/etc/w/config.d/50-x.toml"
            )),
            Some("config changed")
        );
        assert_eq!(
            s.relevance(&ev(
                EventKind::Create(CreateKind::Folder),
                "/etc/w/config.d"
            )),
            Some("config changed")
        );
        assert_eq!(
            s.relevance(&ev(data, "/etc/w/config.d/.50-x.toml.swp")),
            None
        );
        assert_eq!(s.relevance(&ev(data, "/etc/w/config.d/notes.txt")), None);
        assert_eq!(s.relevance(&ev(data, "/etc/w/other.toml")), None);
        assert_eq!(
            s.relevance(&ev(
                EventKind::Access(AccessKind::Any),
                "/etc/w/config.toml"
            )),
            None
        );
        assert_eq!(
            s.relevance(&ev(
                EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
                "/etc/w/config.toml"
            )),
            None
        );
    }

    #[test]
    fn only_removals_in_snapshot_dirs_matter() {
        let s = set();
        assert_eq!(
            s.relevance(&ev(EventKind::Remove(RemoveKind::Folder), "/mnt/s/ws-1/c1")),
            Some("snapshot removed")
        );
        assert_eq!(
            s.relevance(&ev(
                EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                "/mnt/s/ws-1/c1"
            )),
            Some("snapshot removed")
        );
        assert_eq!(
            s.relevance(&ev(EventKind::Remove(RemoveKind::Folder), "/mnt/s/ws-1")),
            Some("snapshot removed")
        );
        // Our own checkpoints create entries: no pass for those.
        assert_eq!(
            s.relevance(&ev(EventKind::Create(CreateKind::Folder), "/mnt/s/ws-1/c2")),
            None
        );
        assert_eq!(
            s.relevance(&ev(EventKind::Remove(RemoveKind::Folder), "/mnt/other/c1")),
            None
        );
    }

    #[test]
    fn image_appearing_matters_but_not_its_writes() {
        let s = set();
        assert_eq!(
            s.relevance(&ev(EventKind::Create(CreateKind::File), "/var/lib/w/img")),
            Some("image appeared or vanished")
        );
        assert_eq!(
            s.relevance(&ev(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "/var/lib/w/img"
            )),
            Some("image appeared or vanished")
        );
        assert_eq!(
            s.relevance(&ev(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                "/var/lib/w/img"
            )),
            None
        );
        assert_eq!(
            s.relevance(&ev(
                EventKind::Create(CreateKind::File),
                "/var/lib/w/state.json.tmp"
            )),
            None
        );
    }

    #[test]
    fn rescan_is_always_relevant() {
        let e = notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert_eq!(set().relevance(&e), Some("watch queue overflow"));
    }

    #[test]
    fn real_watch_delivers_dropin_creation_and_follows_new_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.toml");
        let dropin = dir.path().join("config.d");
        let (tx, rx) = mpsc::channel();
        let mut w = Watches::new(tx).unwrap();
        let want = WatchSet {
            config_file: cfg.clone(),
            dropin_dir: dropin.clone(),
            ..Default::default()
        };
        w.update(want.clone());
        assert_eq!(
            w.watched(),
            vec![dir.path().to_path_buf()],
            "config.d does not exist yet"
        );
        std::fs::create_dir(&dropin).unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            Event::Tick("config changed")
        );
        w.update(want);
        assert_eq!(w.watched().len(), 2);
        while rx.recv_timeout(Duration::from_millis(200)).is_ok() {}
        std::fs::write(dropin.join("ignored.txt"), "x").unwrap();
        std::fs::write(dropin.join("50-ws.toml"), "x").unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            Event::Tick("config changed")
        );
    }

    #[test]
    fn mount_watcher_starts_and_stays_quiet_without_changes() {
        let (tx, rx) = mpsc::channel();
        spawn_mount_watcher(tx).unwrap();
        // Other tests on this machine may mount things; only check that a quiet period does
        // not produce a busy stream of events.
        let mut n = 0;
        while rx.recv_timeout(Duration::from_millis(300)).is_ok() {
            n += 1;
            if n > 50 {
                panic!("mount watcher is busy-looping");
            }
        }
    }
}
