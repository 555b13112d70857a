//! The file source: Kubernetes manifests on disk, watched for changes.
//!
//! `--source file:PATH` names a YAML/JSON file or a directory of them
//! (`.yaml`, `.yml`, `.json`; hidden entries skipped, symlinks followed, so
//! a mounted ConfigMap works). Every file may hold any number of documents
//! and `List`s. Services, EndpointSlices (discovery.k8s.io/v1) and Nodes are
//! read; other kinds are ignored.
//!
//! - **Never an incomplete view.** The first state delivered is complete:
//!   while any manifest has a problem (YAML syntax, a document that is not a
//!   valid object, an unreadable or empty file, a duplicate object, no
//!   manifest at all), nothing is delivered, so the tracker never becomes
//!   synced and nothing is programmed: the kernel keeps what an earlier run
//!   left. The reason is on `/readyz` and in `switchyard_manifest_errors`,
//!   and every change is retried. The first clean load is delivered as the
//!   initial list (`Init`, `InitApply`…, `InitDone`).
//! - **Then only differences**, as ordinary `Apply`/`Delete` events for
//!   the objects that changed. The rules of what a change means (a broken
//!   or empty file keeps what it held, a deleted file deletes, duplicates
//!   keep the first holder) are in [`catalog`].
//! - **Cheap when idle.** Changes are noticed through inotify ([`watch`]),
//!   polling when it is unavailable; a sweep stats files and reads only
//!   those whose stamp moved ([`scan`]).
//! - **Latency metric.** An EndpointSlice delivered because its file
//!   changed carries the file's mtime as its
//!   `endpoints.kubernetes.io/last-change-trigger-time` (unless it carries a
//!   more recent one), so `kubeproxy_network_programming_duration_seconds`
//!   measures from the write to the kernel. The model ignores annotations,
//!   so the stamp never makes a change by itself.

pub mod catalog;
pub mod parse;
pub mod scan;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proxy_core::health::ProxyHealth;
use proxy_core::tracker::ANNOTATION_LAST_CHANGE_TRIGGER_TIME;
use proxy_core::{ProxyEvent, ResourceEvent};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use self::catalog::Change;
pub use self::parse::{Kind, ManifestError, Object, ObjectKey};
use self::scan::Disk;
use self::watch::{Activity, Watcher};

/// `(namespace, name)` of an object.
type Key = (String, String);

/// Objects read from manifests, by kind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Manifests {
    pub services: BTreeMap<Key, Service>,
    pub slices: BTreeMap<Key, EndpointSlice>,
    pub nodes: BTreeMap<String, Node>,
}

impl Manifests {
    fn from_objects(objects: Vec<(ObjectKey, Arc<Object>)>) -> Manifests {
        let mut m = Manifests::default();
        for (key, obj) in objects {
            match &*obj {
                Object::Service(s) => {
                    m.services.insert((key.namespace, key.name), s.clone());
                }
                Object::EndpointSlice(s) => {
                    m.slices.insert((key.namespace, key.name), s.clone());
                }
                Object::Node(n) => {
                    m.nodes.insert(key.name, n.clone());
                }
            }
        }
        m
    }

    /// The relist events for these objects.
    pub fn events(&self) -> Vec<ProxyEvent> {
        let mut out = vec![ProxyEvent::Service(ResourceEvent::Init)];
        out.extend(self.services.values().map(|s| ProxyEvent::Service(ResourceEvent::InitApply(s.clone()))));
        out.push(ProxyEvent::Service(ResourceEvent::InitDone));
        out.push(ProxyEvent::EndpointSlice(ResourceEvent::Init));
        out.extend(self.slices.values().map(|s| ProxyEvent::EndpointSlice(ResourceEvent::InitApply(s.clone()))));
        out.push(ProxyEvent::EndpointSlice(ResourceEvent::InitDone));
        out.push(ProxyEvent::Node(ResourceEvent::Init));
        out.extend(self.nodes.values().map(|n| ProxyEvent::Node(ResourceEvent::InitApply(n.clone()))));
        out.push(ProxyEvent::Node(ResourceEvent::InitDone));
        out
    }
}

/// What a directory without any manifest is told on a first load: the
/// daemon never starts from nothing (a mount not populated yet, a wrong
/// path), as it never starts from an empty file.
const NO_MANIFESTS: &str = "no manifest files (.yaml, .yml, .json) here; nothing is programmed until there is one \
     (write `{apiVersion: v1, kind: List, items: []}` to start with no Services)";

/// What one load did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Events were delivered.
    pub changed: bool,
    pub files: usize,
    pub services: usize,
    pub slices: usize,
    /// Every problem of what is on disk now.
    pub errors: Vec<ManifestError>,
}

/// How the source learns of changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WatchMode {
    /// inotify, polling when it is unavailable (the default).
    #[default]
    Notify,
    /// Polling only: a sweep every poll interval.
    Poll,
}

#[derive(Debug)]
struct State {
    disk: Disk,
    /// When the initial list was delivered; `None` until a clean load.
    delivered_at: Option<SystemTime>,
    /// The problems last reported (each is logged once).
    reported: Vec<ManifestError>,
}

/// The file source.
pub struct FileSource {
    path: PathBuf,
    poll_interval: Duration,
    sink: EventSink,
    state: Mutex<State>,
    error_gauge: Option<prometheus_client::metrics::gauge::Gauge>,
    health: Option<ProxyHealth>,
    node: Option<String>,
    watch: WatchMode,
}

use super::EventSink;

impl fmt::Debug for FileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSource")
            .field("path", &self.path)
            .field("poll_interval", &self.poll_interval)
            .field("watch", &self.watch)
            .finish_non_exhaustive()
    }
}

/// Asks a running file source to load now; the reply comes after the events were delivered.
pub type ReloadRequest = oneshot::Sender<LoadReport>;

/// A safety sweep runs this many poll intervals apart while inotify works
/// (10 s by default): it catches what inotify cannot report (a symlink
/// target outside the watched directories, a network file system changed
/// by another host). It only stats files.
const SAFETY_SWEEP_POLLS: u32 = 40;

impl FileSource {
    pub fn new(path: PathBuf, poll_interval: Duration, sink: EventSink) -> FileSource {
        FileSource {
            state: Mutex::new(State { disk: Disk::new(path.clone()), delivered_at: None, reported: Vec::new() }),
            path,
            poll_interval,
            sink,
            error_gauge: None,
            health: None,
            node: None,
            watch: WatchMode::default(),
        }
    }

    /// Reports the number of manifest problems in `gauge` (`switchyard_manifest_errors`).
    pub fn with_error_gauge(mut self, gauge: prometheus_client::metrics::gauge::Gauge) -> FileSource {
        self.error_gauge = Some(gauge);
        self
    }

    /// Reports manifest problems as the `file` source's problem (`/readyz`, `/healthz`).
    pub fn with_status(mut self, health: ProxyHealth) -> FileSource {
        self.health = Some(health);
        self
    }

    /// Delivers only this Node (the tracker reads only its own; a deleted
    /// Node of another name must not look like ours going away).
    pub fn for_node(mut self, name: &str) -> FileSource {
        self.node = Some(name.to_string());
        self
    }

    /// How often to sweep without inotify (`filePollInterval`); with it, a
    /// safety sweep runs every 40 of these.
    pub fn with_poll_interval(mut self, interval: Duration) -> FileSource {
        self.poll_interval = interval;
        self
    }

    pub fn with_watch(mut self, watch: WatchMode) -> FileSource {
        self.watch = watch;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sweeps now: reads what changed and delivers it (the initial list
    /// after the first clean load, differences after that).
    pub fn load(&self) -> LoadReport {
        self.sweep(&|_| None).0
    }

    fn sweep(&self, busy: &dyn Fn(&Path) -> Option<Duration>) -> (LoadReport, scan::SweepOutcome, SweepInfo) {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *guard;
        let outcome = st.disk.sweep(busy);
        let errors = problems(&st.disk, st.delivered_at.is_none());
        self.report_problems(st, &errors);

        let mut events = Vec::new();
        match st.delivered_at {
            None if errors.is_empty() => {
                st.disk.catalog.take_changes();
                events = relist(st.disk.catalog.objects(), self.node.as_deref());
                st.delivered_at = Some(SystemTime::now());
                info!(
                    path = %self.path.display(),
                    files = st.disk.listed,
                    services = st.disk.catalog.count(Kind::Service),
                    endpoint_slices = st.disk.catalog.count(Kind::EndpointSlice),
                    nodes = st.disk.catalog.count(Kind::Node),
                    "loaded manifests; delivering the initial state"
                );
            }
            None => {
                // Held back until every problem is fixed; the catalog keeps
                // the current objects, so the fix delivers all of them.
                st.disk.catalog.take_changes();
            }
            Some(since) => {
                let changes = st.disk.catalog.take_changes();
                for change in &changes {
                    if let Some(ev) = self.event(change, &st.disk, since) {
                        events.push(ev);
                    }
                }
                if !changes.is_empty() {
                    debug!(changes = changes.len(), parsed = outcome.parsed, "manifests changed");
                }
            }
        }
        let report = LoadReport {
            changed: !events.is_empty(),
            files: st.disk.listed,
            services: st.disk.catalog.count(Kind::Service),
            slices: st.disk.catalog.count(Kind::EndpointSlice),
            errors,
        };
        // Delivered under the lock: events of two sweeps never interleave.
        for ev in events {
            (self.sink)(ev);
        }
        let info = SweepInfo { watch_dirs: st.disk.watch_dirs(), path_error: st.disk.path_error.is_some() };
        (report, outcome, info)
    }

    /// Logs problems that are new, and keeps the gauge and the health current.
    fn report_problems(&self, st: &mut State, errors: &[ManifestError]) {
        if let Some(g) = &self.error_gauge {
            g.set(i64::try_from(errors.len()).unwrap_or(i64::MAX));
        }
        if st.reported == errors {
            return;
        }
        for e in errors.iter().filter(|e| !st.reported.contains(e)) {
            warn!(error = %e, "manifest problem");
        }
        if errors.is_empty() {
            info!("every manifest problem is fixed");
        } else if st.delivered_at.is_none() {
            warn!(
                problems = errors.len(),
                "manifests have problems: nothing is programmed until they are fixed (the kernel keeps what it holds)"
            );
        }
        if let Some(h) = &self.health {
            h.set_source_problem("file", summary(errors));
        }
        st.reported = errors.to_vec();
    }

    /// The event for one change, or `None` when it is not delivered (another Node).
    fn event(&self, change: &Change, disk: &Disk, since: SystemTime) -> Option<ProxyEvent> {
        if change.key.kind == Kind::Node && self.node.as_ref().is_some_and(|n| *n != change.key.name) {
            return None;
        }
        let (obj, delete) = match (&change.new, &change.old) {
            (Some(new), _) => (new, false),
            (None, Some(old)) => (old, true),
            (None, None) => return None,
        };
        fn ev<K>(k: K, delete: bool) -> ResourceEvent<K> {
            if delete { ResourceEvent::Delete(k) } else { ResourceEvent::Apply(k) }
        }
        Some(match &**obj {
            Object::Service(s) => ProxyEvent::Service(ev(s.clone(), delete)),
            Object::Node(n) => ProxyEvent::Node(ev(n.clone(), delete)),
            Object::EndpointSlice(s) => {
                let mut s = s.clone();
                if !delete {
                    let mtime = change.file.as_deref().and_then(|f| disk.mtime(f));
                    stamp_trigger_time(&mut s, mtime, since);
                }
                ProxyEvent::EndpointSlice(ev(s, delete))
            }
        })
    }

    /// Sweeps now, then on every change (or every poll interval without
    /// inotify), and whenever asked through `reloads`, until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        mut reloads: mpsc::Receiver<ReloadRequest>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let activity = Arc::new(Activity::default());
        let mut watcher = match self.watch {
            WatchMode::Notify => Watcher::start(activity.clone()),
            WatchMode::Poll => Watcher::polling("polling was asked for".into()),
        };
        if let Some(why) = watcher.polling_reason() {
            warn!(reason = why, interval = ?self.poll_interval, "polling the manifests");
        }
        let mut replies: Vec<ReloadRequest> = Vec::new();
        let mut reloads_open = true;
        loop {
            if let Some(e) = activity.take_failure() {
                warn!(error = %e, "the file watcher reported an error; sweeping");
            }
            // An asked-for reload reads whatever changed, busy or not: the
            // caller says it is done writing.
            let explicit = !replies.is_empty();
            let (this, act) = (self.clone(), activity.clone());
            let swept = tokio::task::spawn_blocking(move || {
                if explicit { this.sweep(&|_| None) } else { this.sweep(&|p| act.busy(p)) }
            })
            .await;
            let Ok((report, outcome, info)) = swept else {
                warn!("a manifest sweep panicked; retrying");
                tokio::time::sleep(self.poll_interval).await;
                continue;
            };
            for r in replies.drain(..) {
                let _ = r.send(report.clone());
            }
            let was_polling = watcher.polling_reason().is_some();
            let dirs = info.watch_dirs;
            let added = watcher.follow(&dirs);
            if !was_polling && let Some(why) = watcher.polling_reason() {
                warn!(reason = why, interval = ?self.poll_interval, "polling the manifests");
            }
            let mut wait = if watcher.covers(&dirs) && !info.path_error {
                self.poll_interval * SAFETY_SWEEP_POLLS
            } else {
                self.poll_interval
            };
            if let Some(r) = outcome.retry_after {
                wait = wait.min(r);
            }
            if added {
                // Changes made before the new watch was in place went unreported.
                wait = Duration::ZERO;
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = activity.wake.notified() => {
                    // Let a burst of events (a ConfigMap swap, a copy) settle into one sweep.
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(scan::SETTLE) => {}
                    }
                }
                _ = tokio::time::sleep(wait) => {}
                req = reloads.recv(), if reloads_open => match req {
                    Some(r) => replies.push(r),
                    None => reloads_open = false,
                },
            }
            while let Ok(r) = reloads.try_recv() {
                replies.push(r);
            }
        }
    }
}

/// The initial list of every resource (`Init`, `InitApply`…, `InitDone`),
/// each object cloned once; only `node` of the Nodes, when given.
fn relist(objects: Vec<(ObjectKey, Arc<Object>)>, node: Option<&str>) -> Vec<ProxyEvent> {
    let mut services = vec![ProxyEvent::Service(ResourceEvent::Init)];
    let mut slices = vec![ProxyEvent::EndpointSlice(ResourceEvent::Init)];
    let mut nodes = vec![ProxyEvent::Node(ResourceEvent::Init)];
    for (key, obj) in objects {
        match &*obj {
            Object::Service(s) => services.push(ProxyEvent::Service(ResourceEvent::InitApply(s.clone()))),
            Object::EndpointSlice(s) => slices.push(ProxyEvent::EndpointSlice(ResourceEvent::InitApply(s.clone()))),
            Object::Node(n) if node.is_none_or(|want| want == key.name) => {
                nodes.push(ProxyEvent::Node(ResourceEvent::InitApply(n.clone())));
            }
            Object::Node(_) => {}
        }
    }
    services.push(ProxyEvent::Service(ResourceEvent::InitDone));
    slices.push(ProxyEvent::EndpointSlice(ResourceEvent::InitDone));
    nodes.push(ProxyEvent::Node(ResourceEvent::InitDone));
    services.into_iter().chain(slices).chain(nodes).collect()
}

/// What the run loop needs from a sweep.
#[derive(Debug)]
struct SweepInfo {
    watch_dirs: BTreeSet<PathBuf>,
    path_error: bool,
}

/// Every problem of what is on disk now.
fn problems(disk: &Disk, first_load: bool) -> Vec<ManifestError> {
    let mut errors: Vec<ManifestError> = disk.path_error.iter().cloned().collect();
    errors.extend(disk.catalog.errors());
    if first_load && disk.path_error.is_none() && disk.listed == 0 {
        errors.push(ManifestError::file(disk.root(), NO_MANIFESTS));
    }
    errors
}

/// The source problem `/readyz` and `/healthz` show: the first problem, and how many more.
fn summary(errors: &[ManifestError]) -> Option<String> {
    let first = errors.first()?;
    Some(match errors.len() {
        1 => first.to_string(),
        n => format!("{first} (and {} more manifest problems)", n - 1),
    })
}

/// Sets the slice's trigger time to the file's mtime, unless it carries one
/// from after the source started (an older one was copied from a cluster
/// along with the object, and would measure the wrong change).
fn stamp_trigger_time(slice: &mut EndpointSlice, mtime: Option<SystemTime>, since: SystemTime) {
    let Some(mtime) = mtime.filter(|t| *t >= since) else { return };
    let annotations = slice.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let current = annotations
        .get(ANNOTATION_LAST_CHANGE_TRIGGER_TIME)
        .and_then(|v| v.parse::<jiff::Timestamp>().ok())
        .map(SystemTime::from);
    if current.is_some_and(|t| t >= since) {
        return;
    }
    if let Ok(ts) = jiff::Timestamp::try_from(mtime) {
        annotations.insert(ANNOTATION_LAST_CHANGE_TRIGGER_TIME.to_string(), ts.to_string());
    }
}

/// Parses one file's text, as the source does (the fuzz target's entry):
/// its good objects, and its problems (an empty file is one).
pub fn parse_file(path: &Path, text: &str) -> (Manifests, Vec<ManifestError>) {
    let parsed = parse::parse(path, text.as_bytes());
    let mut errors = parsed.errors;
    if parsed.documents == 0 {
        errors.push(ManifestError {
            file: path.to_path_buf(),
            document: None,
            object: None,
            message: parse::EMPTY_FILE.into(),
        });
    }
    let objects = parsed.objects.into_iter().map(|(k, held)| (k, held.object)).collect();
    (Manifests::from_objects(objects), errors)
}

/// Reads the manifests once (for `inspect` and start-up): the objects as
/// the daemon's first load would deliver them, and every problem (with
/// problems, the daemon delivers nothing).
pub fn read_once(path: &Path) -> (Manifests, Vec<ManifestError>) {
    let mut disk = Disk::new(path.to_path_buf());
    disk.sweep(&|_| None);
    let errors = problems(&disk, true);
    (Manifests::from_objects(disk.catalog.objects()), errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trigger_time_is_the_files_mtime_unless_a_newer_one_is_set() {
        let since = SystemTime::now() - Duration::from_secs(60);
        let written = since + Duration::from_secs(30);
        let at = |s: &EndpointSlice| {
            s.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_LAST_CHANGE_TRIGGER_TIME)).cloned()
        };
        let want = jiff::Timestamp::try_from(written).unwrap().to_string();

        let mut s = EndpointSlice::default();
        stamp_trigger_time(&mut s, Some(written), since);
        assert_eq!(at(&s), Some(want.clone()));

        // Copied from a cluster long ago: replaced.
        let mut s = EndpointSlice::default();
        s.metadata.annotations =
            Some([(ANNOTATION_LAST_CHANGE_TRIGGER_TIME.to_string(), "2020-01-01T00:00:00Z".to_string())].into());
        stamp_trigger_time(&mut s, Some(written), since);
        assert_eq!(at(&s), Some(want));

        // Set by the writer, after the start: kept.
        let mine = jiff::Timestamp::try_from(since + Duration::from_secs(40)).unwrap().to_string();
        s.metadata.annotations = Some([(ANNOTATION_LAST_CHANGE_TRIGGER_TIME.to_string(), mine.clone())].into());
        stamp_trigger_time(&mut s, Some(written), since);
        assert_eq!(at(&s), Some(mine));

        // A file older than the start (moved in with its mtime): no sample.
        let mut s = EndpointSlice::default();
        stamp_trigger_time(&mut s, Some(since - Duration::from_secs(1)), since);
        assert_eq!(at(&s), None);
    }

    #[test]
    fn the_model_ignores_the_trigger_time_annotation() {
        // Stamping must never make a change by itself.
        use proxy_core::convert::{Conversion, ConvertContext, endpoint_slice_from_k8s};
        let plain = proxy_core::testing::SliceBuilder::new("default", "web-1", "web")
            .port("http", 8080, "TCP")
            .endpoint(proxy_core::testing::endpoint("10.0.1.1"))
            .build();
        let mut stamped = plain.clone();
        stamp_trigger_time(&mut stamped, Some(SystemTime::now()), SystemTime::UNIX_EPOCH);
        assert_ne!(plain, stamped);
        let ctx = ConvertContext { families: proxy_core::FamilySet::V4, service_proxy_name: None };
        let conv = |s: &EndpointSlice| match endpoint_slice_from_k8s(s, &ctx) {
            Ok(Conversion::Accepted { value, .. }) => value,
            other => panic!("not accepted: {other:?}"),
        };
        assert_eq!(conv(&plain), conv(&stamped));
    }
}
