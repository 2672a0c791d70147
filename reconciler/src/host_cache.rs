//! Reuse of the host observation between the daemon's requests. Every operation resolves
//! its storage from the mount table, the loop devices and the image (some thirty system
//! calls, more than the rest of a checkpoint together). The daemon reuses the last
//! observation while the mount table is unchanged — the kernel flags `/proc/self/mountinfo`
//! on every mount or unmount, and one `poll` with no timeout tells — and the config is the
//! same, for at most [`REUSE_FOR`] (loop devices and image files change without a mount).
//! A command that owns its engine observes every time (it makes one request).

use crate::config::Config;
use crate::locks::relock;
use crate::model::Observed;
use crate::sys::mountinfo::{mount_table_changed, MOUNTINFO_PATH};
use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest an observation is reused.
pub const REUSE_FOR: Duration = Duration::from_secs(1);

/// The last host observation and what it is valid for (see the module documentation).
#[derive(Debug)]
pub struct HostCache {
    reuse_for: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    enabled: bool,
    /// Open before the observation it guards was made, so no change in between is missed.
    mountinfo: Option<File>,
    last: Option<Last>,
}

#[derive(Debug)]
struct Last {
    config: Arc<Config>,
    at: Instant,
    obs: Arc<Observed>,
}

impl Default for HostCache {
    fn default() -> HostCache {
        HostCache::new(REUSE_FOR)
    }
}

impl HostCache {
    /// A cache reusing an observation for at most `reuse_for`; off until
    /// [`HostCache::set_enabled`].
    pub fn new(reuse_for: Duration) -> HostCache {
        HostCache {
            reuse_for,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Reuse observations (the daemon) or not (the default; turning it off forgets the last).
    pub fn set_enabled(&self, on: bool) {
        let mut g = relock(&self.inner);
        g.enabled = on;
        if !on {
            g.mountinfo = None;
            g.last = None;
        }
    }

    /// The host observation for `config`: the last one when still valid, else `observe()`
    /// (kept for reuse unless it failed to read the mount table).
    pub fn get(&self, config: &Arc<Config>, observe: impl FnOnce() -> Observed) -> Arc<Observed> {
        let mut g = relock(&self.inner);
        if !g.enabled {
            return Arc::new(observe());
        }
        let changed = match &g.mountinfo {
            // An error: it cannot be told, so it changed.
            Some(f) => mount_table_changed(f, 0).unwrap_or(true),
            None => true,
        };
        if !changed {
            if let Some(last) = &g.last {
                if Arc::ptr_eq(&last.config, config) && last.at.elapsed() < self.reuse_for {
                    return Arc::clone(&last.obs);
                }
            }
        }
        g.last = None;
        if changed {
            g.mountinfo = File::open(MOUNTINFO_PATH).ok();
        }
        let at = Instant::now();
        let obs = Arc::new(observe());
        if g.mountinfo.is_some() && obs.storage_error.is_none() {
            g.last = Some(Last {
                config: Arc::clone(config),
                at,
                obs: Arc::clone(&obs),
            });
        }
        obs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn a_config() -> Arc<Config> {
        Arc::new(Config::defaults(std::path::Path::new(
            "/etc/ws-ckpt/config.toml",
        )))
    }

    fn count<'a>(n: &'a Cell<usize>) -> impl FnOnce() -> Observed + 'a {
        move || {
            n.set(n.get() + 1);
            Observed::default()
        }
    }

    #[test]
    fn off_observes_every_time() {
        let cache = HostCache::default();
        let config = a_config();
        let n = Cell::new(0);
        cache.get(&config, count(&n));
        cache.get(&config, count(&n));
        assert_eq!(n.get(), 2);
    }

    #[test]
    fn on_reuses_for_the_same_config_only() {
        let cache = HostCache::new(Duration::from_secs(3600));
        cache.set_enabled(true);
        let config = a_config();
        let n = Cell::new(0);
        cache.get(&config, count(&n));
        cache.get(&config, count(&n));
        assert_eq!(n.get(), 1, "reused while nothing changed");
        let reloaded = a_config();
        cache.get(&reloaded, count(&n));
        assert_eq!(n.get(), 2, "a reloaded config observes anew");
        cache.set_enabled(false);
        cache.set_enabled(true);
        cache.get(&reloaded, count(&n));
        assert_eq!(n.get(), 3, "turning it off forgets");
    }

    #[test]
    fn never_reused_past_its_age_or_after_a_failed_read() {
        let cache = HostCache::new(Duration::ZERO);
        cache.set_enabled(true);
        let config = a_config();
        let n = Cell::new(0);
        cache.get(&config, count(&n));
        cache.get(&config, count(&n));
        assert_eq!(n.get(), 2);

        let cache = HostCache::new(Duration::from_secs(3600));
        cache.set_enabled(true);
        let failed = || Observed {
            storage_error: Some("cannot read the mount table".into()),
            ..Observed::default()
        };
        cache.get(&config, failed);
        cache.get(&config, count(&n));
        assert_eq!(n.get(), 3, "a failed observation is not kept");
    }
}
