//! Change notification for the file source: inotify through the `notify`
//! crate, with polling as the fallback.
//!
//! Every event wakes a sweep (see [`super::scan`]); the sweep, not the
//! event, decides what changed, so lost or coalesced events cost nothing
//! but latency, and an inotify queue overflow is just one more sweep. Two
//! kinds of events are ignored: opens and closes without writing, which our
//! own reads cause (notify reports both).
//!
//! Writers that write a file in place (truncate, then write) are followed:
//! a file modified and not yet closed is "busy" and read once its writer
//! closes it (`IN_CLOSE_WRITE`), or once it has been quiet for
//! [`WRITE_GRACE`] (a writer that keeps its descriptor open). Writing a
//! temporary file and renaming it over, as kubectl, editors and ConfigMap
//! mounts do, needs none of this.
//!
//! When inotify cannot be had (`fs.inotify.max_user_instances` or
//! `max_user_watches` exhausted, a file system without it), the watcher
//! falls back to polling: the source sweeps every poll interval, which only
//! stats files.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::Notify;
use tracing::{debug, warn};

/// How long a file modified and not yet closed is left to its writer.
pub const WRITE_GRACE: Duration = Duration::from_secs(1);

/// What the watcher tells the source: wake up, and which files are being written.
#[derive(Debug, Default)]
pub struct Activity {
    pub wake: Notify,
    /// Files modified and not closed yet, with the time of the last modification.
    writing: Mutex<HashMap<PathBuf, Instant>>,
    /// An error the watcher reported (logged by the source loop).
    failure: Mutex<Option<String>>,
}

impl Activity {
    fn on_event(&self, res: notify::Result<notify::Event>) {
        match res {
            Ok(ev) => match ev.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                    let mut w = self.writing.lock().unwrap_or_else(|e| e.into_inner());
                    for p in &ev.paths {
                        w.remove(p);
                    }
                }
                // Opens and read-only closes: our own reads among them.
                EventKind::Access(_) => return,
                EventKind::Modify(ModifyKind::Data(_)) => {
                    let now = Instant::now();
                    let mut w = self.writing.lock().unwrap_or_else(|e| e.into_inner());
                    for p in ev.paths {
                        w.insert(p, now);
                    }
                }
                _ => {}
            },
            Err(e) => {
                *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
            }
        }
        self.wake.notify_one();
    }

    /// How much longer `path` is left to its writer, if it is being written.
    pub fn busy(&self, path: &Path) -> Option<Duration> {
        let mut w = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let since = *w.get(path)?;
        match WRITE_GRACE.checked_sub(since.elapsed()) {
            Some(left) if !left.is_zero() => Some(left),
            _ => {
                w.remove(path);
                None
            }
        }
    }

    pub fn take_failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The inotify watcher, or why the source polls instead.
pub struct Watcher {
    inner: Option<notify::RecommendedWatcher>,
    watched: BTreeSet<PathBuf>,
    /// Why the source polls (`None` while inotify works).
    polling: Option<String>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").field("watched", &self.watched).field("polling", &self.polling).finish()
    }
}

impl Watcher {
    /// Starts inotify; falls back to polling when it cannot.
    pub fn start(activity: Arc<Activity>) -> Watcher {
        let handler = move |res: notify::Result<notify::Event>| activity.on_event(res);
        match notify::recommended_watcher(handler) {
            Ok(w) => Watcher { inner: Some(w), watched: BTreeSet::new(), polling: None },
            Err(e) => Self::polling(format!("inotify is unavailable: {e}")),
        }
    }

    /// A watcher that only polls.
    pub fn polling(reason: String) -> Watcher {
        Watcher { inner: None, watched: BTreeSet::new(), polling: Some(reason) }
    }

    /// Why the source polls, or `None` while inotify works.
    pub fn polling_reason(&self) -> Option<&str> {
        self.polling.as_deref()
    }

    /// inotify watches every one of `dirs`: no need to poll.
    pub fn covers(&self, dirs: &BTreeSet<PathBuf>) -> bool {
        self.inner.is_some() && self.watched == *dirs
    }

    /// Watches exactly `dirs` (non-recursively). A directory that does not
    /// exist (yet) is skipped; any other failure means polling from now on.
    /// Returns whether a watch was added: what changed there before it was
    /// in place was not reported, so the caller sweeps again.
    pub fn follow(&mut self, dirs: &BTreeSet<PathBuf>) -> bool {
        let Some(inner) = self.inner.as_mut() else { return false };
        let mut added = false;
        for gone in self.watched.difference(dirs).cloned().collect::<Vec<_>>() {
            // It may be gone already (a ConfigMap's previous data directory).
            let _ = inner.unwatch(&gone);
            self.watched.remove(&gone);
        }
        for dir in dirs.difference(&self.watched).cloned().collect::<Vec<_>>() {
            match inner.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    debug!(dir = %dir.display(), "watching");
                    self.watched.insert(dir);
                    added = true;
                }
                Err(e) if missing(&e) => {}
                Err(e) => {
                    let reason = format!("cannot watch {}: {e}", dir.display());
                    warn!(reason = %reason, "inotify failed; polling instead");
                    self.inner = None;
                    self.watched.clear();
                    self.polling = Some(reason);
                    return true;
                }
            }
        }
        added
    }
}

fn missing(e: &notify::Error) -> bool {
    match &e.kind {
        notify::ErrorKind::PathNotFound => true,
        notify::ErrorKind::Io(io) => io.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}
