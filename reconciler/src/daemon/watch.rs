//! The daemon's triggers: filesystem watches (config file, `config.d`, snapshot directories,
//! the loop image's directory), the mount table (`poll()` on `/proc/self/mountinfo`) and
//! signals (SIGHUP, SIGTERM, SIGINT). Each only sends an [`Event`] into the loop's channel.
//!
//! Nothing here acts on what an event says (house style 10): events are filtered for
//! relevance, then become "reconcile now". The loop decides everything.
//!
//! The watches are inotify's, each directory with the mask of what matters there (see
//! [`WatchSet::mask_of`]): never `IN_OPEN` or `IN_ACCESS`, so that a command reading the
//! config, or the daemon opening a snapshot directory, wakes nothing; no `IN_CREATE` in
//! snapshot directories (every checkpoint creates an entry there); no writes in the image's
//! directory (the state directory, where every request appends to the audit log).

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use crate::locks::relock;

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
    /// The inotify instance could not be created.
    #[error("cannot create the inotify watcher: {0}; check fs.inotify.max_user_instances")]
    Watcher(#[source] std::io::Error),
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

/// What happened to a path, as one inotify event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// An entry was created.
    Created,
    /// An entry was deleted, or the watched directory itself (or its filesystem went away).
    Deleted,
    /// An entry was renamed out of or into the directory, or the directory itself was.
    Renamed,
    /// A file was written (modified, or closed after writing).
    Written,
}

/// One filesystem event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsEvent {
    /// `path` (an entry of a watched directory, or the directory itself) changed.
    Changed(PathBuf, Change),
    /// The kernel's event queue overflowed: events were lost.
    Overflow,
}

/// Changes in the config file's directory and in `config.d`.
const CONFIG_MASK: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MODIFY)
    .union(AddWatchFlags::IN_CLOSE_WRITE)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF);
/// Removals in a snapshot directory (its own checkpoints create entries: not watched).
const SNAPSHOT_MASK: AddWatchFlags = AddWatchFlags::IN_DELETE
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF);
/// Entries appearing or vanishing in the image's directory (not its writes).
const IMAGE_MASK: AddWatchFlags = SNAPSHOT_MASK.union(AddWatchFlags::IN_CREATE);

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
        if let Some(p) = self.config_dir() {
            d.insert(p.to_path_buf());
        }
        d.insert(self.dropin_dir.clone());
        d.extend(self.snapshot_dirs.iter().cloned());
        if let Some(p) = self.image_dir() {
            d.insert(p.to_path_buf());
        }
        d
    }

    fn config_dir(&self) -> Option<&Path> {
        self.config_file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
    }

    fn image_dir(&self) -> Option<&Path> {
        self.image
            .as_deref()
            .and_then(Path::parent)
            .filter(|p| !p.as_os_str().is_empty())
    }

    /// The events watched in `dir`: those of every role it has (one of [`WatchSet::dirs`]).
    pub fn mask_of(&self, dir: &Path) -> AddWatchFlags {
        let mut mask = AddWatchFlags::empty();
        if self.config_dir() == Some(dir) || self.dropin_dir == dir {
            mask |= CONFIG_MASK;
        }
        if self.snapshot_dirs.contains(dir) {
            mask |= SNAPSHOT_MASK;
        }
        if self.image_dir() == Some(dir) {
            mask |= IMAGE_MASK;
        }
        mask
    }

    /// Why this event should trigger a pass, or `None` when it is irrelevant.
    pub fn relevance(&self, ev: &FsEvent) -> Option<&'static str> {
        let (p, change) = match ev {
            FsEvent::Overflow => return Some("watch queue overflow"),
            FsEvent::Changed(p, change) => (p, *change),
        };
        let removal = matches!(change, Change::Deleted | Change::Renamed);
        let appear_vanish = removal || change == Change::Created;
        if *p == self.config_file || *p == self.dropin_dir {
            return Some("config changed");
        }
        if p.parent() == Some(self.dropin_dir.as_path()) && is_dropin_name(p) {
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
        None
    }
}

fn is_dropin_name(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| !n.starts_with('.') && n.ends_with(".toml"))
}

/// The event `ev` of the watch on `dir` (`None`: nothing this module looks at).
fn fs_event(dir: &Path, ev: &InotifyEvent) -> Option<FsEvent> {
    use AddWatchFlags as F;
    let m = ev.mask;
    if m.contains(F::IN_Q_OVERFLOW) {
        return Some(FsEvent::Overflow);
    }
    let change = if m.contains(F::IN_CREATE) {
        Change::Created
    } else if m.intersects(F::IN_DELETE | F::IN_DELETE_SELF | F::IN_UNMOUNT) {
        Change::Deleted
    } else if m.intersects(F::IN_MOVED_FROM | F::IN_MOVED_TO | F::IN_MOVE_SELF) {
        Change::Renamed
    } else if m.intersects(F::IN_MODIFY | F::IN_CLOSE_WRITE) {
        Change::Written
    } else {
        return None;
    };
    let path = match &ev.name {
        Some(name) => dir.join(name),
        None => dir.to_path_buf(),
    };
    Some(FsEvent::Changed(path, change))
}

/// What the watcher thread reads: the paths of the watches, and what matters.
#[derive(Default)]
struct Targets {
    dirs: HashMap<WatchDescriptor, PathBuf>,
    set: WatchSet,
}

/// One watched directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Watched {
    /// Its (device, inode) when the watch was added.
    id: (u64, u64),
    mask: AddWatchFlags,
    wd: WatchDescriptor,
}

/// The inotify watches, re-registered after every pass (directories may appear, and a
/// remount replaces a directory by another inode), and the thread reading their events.
/// Dropping it ends the thread.
pub struct Watches {
    inotify: Arc<Inotify>,
    targets: Arc<Mutex<Targets>>,
    watched: BTreeMap<PathBuf, Watched>,
    /// The write end of a pipe the thread polls: closed (dropped) with this, it ends the
    /// thread.
    _stop: OwnedFd,
}

impl Watches {
    /// Create the watcher; relevant events become [`Event::Tick`] on `tx`.
    pub fn new(tx: Sender<Event>) -> Result<Watches, WatchError> {
        let inotify = Arc::new(
            Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
                .map_err(|e| WatchError::Watcher(e.into()))?,
        );
        let (stop_rx, stop_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| WatchError::Watcher(e.into()))?;
        let targets = Arc::new(Mutex::new(Targets::default()));
        let (ino, tg) = (Arc::clone(&inotify), Arc::clone(&targets));
        std::thread::Builder::new()
            .name("ws-ckpt-watch".into())
            .spawn(move || read_events(&ino, &tg, &stop_rx, &tx))
            .map_err(|source| WatchError::Thread {
                name: "watch",
                source,
            })?;
        Ok(Watches {
            inotify,
            targets,
            watched: BTreeMap::new(),
            _stop: stop_tx,
        })
    }

    /// Make the watched directories match `want`: add new or replaced ones (or change what
    /// is watched in them), drop vanished ones. Failures are logged (the periodic pass still
    /// covers those paths).
    pub fn update(&mut self, want: WatchSet) {
        let dirs = want.dirs();
        let mut targets = relock(&self.targets);
        let mut next = BTreeMap::new();
        for dir in dirs {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            if !meta.is_dir() {
                continue;
            }
            let id = (meta.dev(), meta.ino());
            let mask = want.mask_of(&dir);
            if let Some(w) = self
                .watched
                .get(&dir)
                .filter(|w| w.id == id && w.mask == mask)
            {
                next.insert(dir, *w);
                continue;
            }
            match self
                .inotify
                .add_watch(&dir, mask | AddWatchFlags::IN_ONLYDIR)
            {
                Ok(wd) => {
                    tracing::debug!(dir = %dir.display(), "watching");
                    targets.dirs.insert(wd, dir.clone());
                    next.insert(dir, Watched { id, mask, wd });
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; changes there are seen at the next periodic pass")
                }
            }
        }
        // A watch no directory uses any more (vanished, or replaced by another inode).
        for w in self.watched.values() {
            if !next.values().any(|n: &Watched| n.wd == w.wd) {
                let _ = self.inotify.rm_watch(w.wd);
                targets.dirs.remove(&w.wd);
            }
        }
        targets.set = want;
        self.watched = next;
    }

    /// True when `want` is the set given last ([`Watches::update`] would only re-check the
    /// directories' identities, which every reconcile pass does).
    pub fn has_set(&self, want: &WatchSet) -> bool {
        relock(&self.targets).set == *want
    }

    /// Directories currently watched.
    pub fn watched(&self) -> Vec<PathBuf> {
        self.watched.keys().cloned().collect()
    }
}

/// The watcher thread: waits for events (or for `stop` to close), keeps the relevant ones,
/// and sends one [`Event::Tick`] per batch read. Ends when `stop` closes or the loop is gone.
fn read_events(ino: &Inotify, targets: &Mutex<Targets>, stop: &OwnedFd, tx: &Sender<Event>) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: ino.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        match crate::sys::poll(&mut fds, -1) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot wait for filesystem events; changes are seen at the next periodic pass");
                return;
            }
        }
        if fds[1].revents != 0 {
            return;
        }
        let events = match ino.read_events() {
            Ok(events) => events,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read filesystem events; running a full pass");
                let _ = tx.send(Event::Tick("watch error"));
                return;
            }
        };
        let mut why = None;
        {
            let mut t = relock(targets);
            for ev in &events {
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    t.dirs.remove(&ev.wd);
                    continue;
                }
                let fs = match ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    true => Some(FsEvent::Overflow),
                    false => t.dirs.get(&ev.wd).and_then(|dir| fs_event(dir, ev)),
                };
                if let Some(w) = fs.as_ref().and_then(|fs| t.set.relevance(fs)) {
                    tracing::debug!(reason = w, event = ?fs, "watch event");
                    why.get_or_insert(w);
                }
            }
        }
        if let Some(w) = why {
            if tx.send(Event::Tick(w)).is_err() {
                return;
            }
        }
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
    use std::sync::mpsc;
    use std::time::Duration;

    fn ev(change: Change, path: &str) -> FsEvent {
        FsEvent::Changed(PathBuf::from(path), change)
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
    fn each_directory_watches_what_matters_there_and_never_opens() {
        use AddWatchFlags as F;
        let s = set();
        let config = s.mask_of(Path::new("/etc/w"));
        assert!(config.contains(F::IN_CLOSE_WRITE | F::IN_MOVED_TO | F::IN_CREATE));
        assert_eq!(s.mask_of(Path::new("/etc/w/config.d")), config);
        let snaps = s.mask_of(Path::new("/mnt/s/ws-1"));
        assert!(snaps.contains(F::IN_DELETE | F::IN_MOVED_FROM | F::IN_DELETE_SELF));
        assert!(!snaps.intersects(F::IN_CREATE | F::IN_MODIFY | F::IN_CLOSE_WRITE));
        let image = s.mask_of(Path::new("/var/lib/w"));
        assert!(image.contains(F::IN_CREATE | F::IN_DELETE | F::IN_MOVED_TO));
        assert!(!image.intersects(F::IN_MODIFY | F::IN_CLOSE_WRITE));
        for dir in s.dirs() {
            let m = s.mask_of(&dir);
            assert!(!m.is_empty(), "{}", dir.display());
            assert!(
                !m.intersects(F::IN_OPEN | F::IN_ACCESS | F::IN_CLOSE_NOWRITE | F::IN_ATTRIB),
                "{}",
                dir.display()
            );
        }
        // A directory with two roles watches both.
        let shared = WatchSet {
            image: Some("/etc/w/img".into()),
            ..set()
        };
        assert_eq!(shared.mask_of(Path::new("/etc/w")), config | IMAGE_MASK);
    }

    #[test]
    fn config_events_are_relevant_other_files_not() {
        let s = set();
        assert_eq!(
            s.relevance(&ev(Change::Written, "/etc/w/config.toml")),
            Some("config changed")
        );
        assert_eq!(
            s.relevance(&ev(Change::Created, "/etc/w/config.d/50-x.toml")),
            Some("config changed")
        );
        assert_eq!(
            s.relevance(&ev(Change::Created, "/etc/w/config.d")),
            Some("config changed")
        );
        assert_eq!(
            s.relevance(&ev(Change::Written, "/etc/w/config.d/.50-x.toml.swp")),
            None
        );
        assert_eq!(
            s.relevance(&ev(Change::Written, "/etc/w/config.d/notes.txt")),
            None
        );
        assert_eq!(s.relevance(&ev(Change::Written, "/etc/w/other.toml")), None);
    }

    #[test]
    fn only_removals_in_snapshot_dirs_matter() {
        let s = set();
        assert_eq!(
            s.relevance(&ev(Change::Deleted, "/mnt/s/ws-1/c1")),
            Some("snapshot removed")
        );
        assert_eq!(
            s.relevance(&ev(Change::Renamed, "/mnt/s/ws-1/c1")),
            Some("snapshot removed")
        );
        assert_eq!(
            s.relevance(&ev(Change::Deleted, "/mnt/s/ws-1")),
            Some("snapshot removed")
        );
        // Our own checkpoints create entries: no pass for those.
        assert_eq!(s.relevance(&ev(Change::Created, "/mnt/s/ws-1/c2")), None);
        assert_eq!(s.relevance(&ev(Change::Deleted, "/mnt/other/c1")), None);
    }

    #[test]
    fn image_appearing_matters_but_not_its_writes() {
        let s = set();
        assert_eq!(
            s.relevance(&ev(Change::Created, "/var/lib/w/img")),
            Some("image appeared or vanished")
        );
        assert_eq!(
            s.relevance(&ev(Change::Renamed, "/var/lib/w/img")),
            Some("image appeared or vanished")
        );
        assert_eq!(s.relevance(&ev(Change::Written, "/var/lib/w/img")), None);
        assert_eq!(
            s.relevance(&ev(Change::Created, "/var/lib/w/state.json.tmp")),
            None
        );
    }

    #[test]
    fn overflow_is_always_relevant() {
        assert_eq!(
            set().relevance(&FsEvent::Overflow),
            Some("watch queue overflow")
        );
    }

    #[test]
    fn inotify_events_become_changes_of_the_watched_paths() {
        use AddWatchFlags as F;
        let dir = Path::new("/mnt/s/ws-1");
        let wd = {
            let ino = Inotify::init(InitFlags::IN_CLOEXEC).unwrap();
            let tmp = tempfile::tempdir().unwrap();
            ino.add_watch(tmp.path(), F::IN_CREATE).unwrap()
        };
        let raw = |mask: AddWatchFlags, name: Option<&str>| InotifyEvent {
            wd,
            mask,
            cookie: 0,
            name: name.map(Into::into),
        };
        let cases = [
            (
                F::IN_CREATE | F::IN_ISDIR,
                Some("c1"),
                Some(ev(Change::Created, "/mnt/s/ws-1/c1")),
            ),
            (
                F::IN_DELETE | F::IN_ISDIR,
                Some("c1"),
                Some(ev(Change::Deleted, "/mnt/s/ws-1/c1")),
            ),
            (
                F::IN_MOVED_FROM,
                Some("c1"),
                Some(ev(Change::Renamed, "/mnt/s/ws-1/c1")),
            ),
            (
                F::IN_DELETE_SELF,
                None,
                Some(ev(Change::Deleted, "/mnt/s/ws-1")),
            ),
            (
                F::IN_MOVE_SELF,
                None,
                Some(ev(Change::Renamed, "/mnt/s/ws-1")),
            ),
            (
                F::IN_UNMOUNT,
                None,
                Some(ev(Change::Deleted, "/mnt/s/ws-1")),
            ),
            (
                F::IN_CLOSE_WRITE,
                Some("f"),
                Some(ev(Change::Written, "/mnt/s/ws-1/f")),
            ),
            (F::IN_Q_OVERFLOW, None, Some(FsEvent::Overflow)),
            (F::IN_OPEN, Some("f"), None),
            (F::IN_IGNORED, None, None),
        ];
        for (mask, name, want) in cases {
            assert_eq!(fs_event(dir, &raw(mask, name)), want, "{mask:?}");
        }
    }

    /// The masks registered on the watches of this process's inotify descriptors, from
    /// `/proc/self/fdinfo` (`inotify wd:… mask:<hex> …`).
    fn registered_masks(ino: &Inotify) -> Vec<u32> {
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", ino.as_fd().as_raw_fd()))
                .unwrap();
        info.lines()
            .filter(|l| l.starts_with("inotify "))
            .map(|l| {
                let hex = l.split(" mask:").nth(1).unwrap().split(' ').next().unwrap();
                u32::from_str_radix(hex, 16).unwrap()
            })
            .collect()
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
        // Reading the config registers nothing to wake for.
        for mask in registered_masks(&w.inotify) {
            let mask = AddWatchFlags::from_bits_truncate(mask);
            assert!(!mask.intersects(AddWatchFlags::IN_OPEN | AddWatchFlags::IN_ACCESS));
        }
    }

    #[test]
    fn snapshot_directories_wake_the_loop_for_removals_only() {
        let root = tempfile::tempdir().unwrap();
        let snaps = root.path().join("snapshots");
        std::fs::create_dir(&snaps).unwrap();
        let (tx, rx) = mpsc::channel();
        let mut w = Watches::new(tx).unwrap();
        w.update(WatchSet {
            config_file: root.path().join("etc/config.toml"),
            dropin_dir: root.path().join("etc/config.d"),
            snapshot_dirs: [snaps.clone()].into_iter().collect(),
            image: None,
        });
        assert_eq!(w.watched(), vec![snaps.clone()]);
        assert_eq!(registered_masks(&w.inotify), vec![SNAPSHOT_MASK.bits()]);
        // A checkpoint's new entry, and reading the directory: nothing.
        std::fs::create_dir(snaps.join("c1")).unwrap();
        std::fs::read_dir(&snaps).unwrap().for_each(drop);
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        std::fs::remove_dir(snaps.join("c1")).unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            Event::Tick("snapshot removed")
        );
        // Dropping the watches ends the thread: the loop's sender goes with it.
        drop(w);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                _ if std::time::Instant::now() > deadline => panic!("the watch thread did not end"),
                _ => {}
            }
        }
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
