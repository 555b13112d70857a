//! Proxy health, as kube-proxy's `/healthz` defines it.
//!
//! Healthy while starting up and while every queued change is applied within
//! the health timeout (2 × sync-period); unhealthy when a change has waited
//! longer, when the node is being deleted (so load balancers drain it), while
//! the backend reports itself down (an out-of-process plugin being
//! restarted, an eBPF datapath it could not re-attach), or while the
//! dataplane is known broken: a full sync (a retry, a periodic repair) failed
//! and no sync has succeeded since.
//!
//! Ready (`/readyz`) after the first successful sync. Until then the reason
//! is kept: the initial lists are incomplete, or a source cannot produce a
//! complete, valid view (a malformed manifest, a list the API refuses), which
//! it reports with [`ProxyHealth::set_source_problem`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::dataplane::DataplaneHealth;
use crate::model::IpFamily;

/// Asks the backend whether it is up (see [`ProxyHealth::watch_backend`]).
type BackendCheck = Arc<dyn Fn() -> DataplaneHealth + Send + Sync>;

#[derive(Debug, Default)]
struct State {
    /// Per family: the oldest change queued and not yet applied.
    oldest_pending: BTreeMap<IpFamily, Instant>,
    /// Per family: the last successful sync.
    last_updated: BTreeMap<IpFamily, SystemTime>,
    node_deleting: bool,
    synced_once: bool,
    /// The error of the last sync, when it was full and failed: the kernel
    /// is known to differ from the plans and the repair did not work.
    sync_failing: Option<String>,
    /// Per source: why it cannot deliver a complete, valid view now.
    source_problems: BTreeMap<String, String>,
}

/// What `/healthz` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthStatus {
    /// `/healthz`: the proxy is healthy and the node is not leaving.
    pub healthy: bool,
    /// The proxy alone, whatever the node's eligibility: `/livez`'s sense
    /// and the health-check node ports' `serviceProxyHealthy` (kube-proxy's
    /// `Health().Healthy`, which leaves node eligibility to `/healthz`).
    pub proxy_healthy: bool,
    /// The last successful sync (any family), if there was one.
    pub last_updated: Option<SystemTime>,
    pub node_deleting: bool,
    /// Why the backend is down, when it is.
    pub backend_down: Option<String>,
    /// The error of a failed full sync, while no sync has succeeded since.
    pub sync_failing: Option<String>,
    /// Per family that synced at least once: its last successful sync and
    /// whether it is on time (kube-proxy's `status`).
    pub families: BTreeMap<IpFamily, (SystemTime, bool)>,
}

/// Shared health state; clone freely.
#[derive(Clone)]
pub struct ProxyHealth {
    timeout: Duration,
    state: Arc<Mutex<State>>,
    backend: Arc<Mutex<Option<BackendCheck>>>,
}

impl std::fmt::Debug for ProxyHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHealth")
            .field("timeout", &self.timeout)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl ProxyHealth {
    /// `timeout` is how long a queued change may wait (kube-proxy: 2 × sync-period).
    pub fn new(timeout: Duration) -> Self {
        ProxyHealth { timeout, state: Arc::new(Mutex::new(State::default())), backend: Arc::new(Mutex::new(None)) }
    }

    /// Makes [`status`](Self::status) consult the backend: unhealthy while
    /// `check` reports it down. The [`crate::Proxier`] installs its dataplane's
    /// [`crate::Dataplane::health`] here.
    pub fn watch_backend(&self, check: impl Fn() -> DataplaneHealth + Send + Sync + 'static) {
        *self.backend.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(check));
    }

    /// The backend's reason for being down, if it is.
    pub fn backend_down(&self) -> Option<String> {
        let check = self.backend.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match check.map(|c| c()) {
            Some(DataplaneHealth::Down { reason }) => Some(reason),
            _ => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave it inconsistent (plain
        // stores), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A change was queued for these families (keeps the oldest time).
    pub fn queued(&self, families: impl IntoIterator<Item = IpFamily>, at: Instant) {
        let mut s = self.lock();
        for f in families {
            s.oldest_pending.entry(f).or_insert(at);
        }
    }

    /// A sync succeeded. `still_pending` is the oldest change that arrived
    /// after the batch was cut, if any.
    pub fn updated(&self, families: impl IntoIterator<Item = IpFamily>, still_pending: Option<Instant>) {
        let mut s = self.lock();
        let now = SystemTime::now();
        for f in families {
            s.last_updated.insert(f, now);
            match still_pending {
                Some(t) => {
                    s.oldest_pending.insert(f, t);
                }
                None => {
                    s.oldest_pending.remove(&f);
                }
            }
        }
        s.synced_once = true;
        s.sync_failing = None;
    }

    /// A sync failed. A failed full sync (the first, a retry, a periodic
    /// repair) means the dataplane is known broken until a sync succeeds; a
    /// failed partial one is retried in full first.
    pub fn sync_failed(&self, full: bool, error: String) {
        if full {
            self.lock().sync_failing = Some(error);
        }
    }

    /// A source reports why it cannot deliver a complete, valid view
    /// (`Some`), or that it can again (`None`). Shown by `/readyz` and `/healthz`.
    pub fn set_source_problem(&self, source: &str, problem: Option<String>) {
        let mut s = self.lock();
        match problem {
            Some(p) => {
                s.source_problems.insert(source.to_string(), p);
            }
            None => {
                s.source_problems.remove(source);
            }
        }
    }

    /// What sources report now, by source.
    pub fn source_problems(&self) -> BTreeMap<String, String> {
        self.lock().source_problems.clone()
    }

    /// Why the proxy is not ready yet, or `None` once it is.
    pub fn not_ready_reason(&self) -> Option<String> {
        let s = self.lock();
        if s.synced_once {
            return None;
        }
        if s.source_problems.is_empty() {
            return Some("no successful sync yet".into());
        }
        let problems: Vec<String> = s.source_problems.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        Some(format!("no successful sync yet; {}", problems.join("; ")))
    }

    pub fn set_node_deleting(&self, deleting: bool) {
        self.lock().node_deleting = deleting;
    }

    /// At least one sync succeeded (`/readyz`).
    pub fn ready(&self) -> bool {
        self.lock().synced_once
    }

    /// A queued change has waited longer than the timeout (`/livez` fails
    /// only for this; `/healthz` also fails while the node is being deleted).
    pub fn late(&self, now: Instant) -> bool {
        let s = self.lock();
        s.oldest_pending.values().any(|t| now.saturating_duration_since(*t) >= self.timeout)
    }

    pub fn status(&self, now: Instant) -> HealthStatus {
        // Asked before taking the state lock: the check is the backend's code.
        let backend_down = self.backend_down();
        let s = self.lock();
        let late = s.oldest_pending.values().any(|t| now.saturating_duration_since(*t) >= self.timeout);
        HealthStatus {
            healthy: !late && !s.node_deleting && backend_down.is_none() && s.sync_failing.is_none(),
            proxy_healthy: !late && backend_down.is_none() && s.sync_failing.is_none(),
            last_updated: s.last_updated.values().max().copied(),
            node_deleting: s.node_deleting,
            backend_down,
            sync_failing: s.sync_failing.clone(),
            families: s
                .last_updated
                .iter()
                .map(|(f, t)| {
                    let late =
                        s.oldest_pending.get(f).is_some_and(|p| now.saturating_duration_since(*p) >= self.timeout);
                    (*f, (*t, !late))
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_until_a_queued_change_is_late() {
        let h = ProxyHealth::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(h.status(t0).healthy, "healthy while starting up");
        h.queued([IpFamily::V4], t0);
        assert!(h.status(t0 + Duration::from_secs(59)).healthy);
        assert!(!h.status(t0 + Duration::from_secs(60)).healthy);
        h.updated([IpFamily::V4], None);
        assert!(h.status(t0 + Duration::from_secs(600)).healthy);
        assert!(h.ready());
    }

    #[test]
    fn later_queue_times_do_not_hide_an_older_one() {
        let h = ProxyHealth::new(Duration::from_secs(10));
        let t0 = Instant::now();
        h.queued([IpFamily::V4], t0);
        h.queued([IpFamily::V4], t0 + Duration::from_secs(9));
        assert!(!h.status(t0 + Duration::from_secs(10)).healthy);
    }

    #[test]
    fn a_backend_that_is_down_makes_it_unhealthy() {
        let h = ProxyHealth::new(Duration::from_secs(10));
        let down = Arc::new(Mutex::new(true));
        let flag = down.clone();
        h.watch_backend(move || {
            if *flag.lock().unwrap_or_else(|e| e.into_inner()) {
                DataplaneHealth::Down { reason: "plugin exited".into() }
            } else {
                DataplaneHealth::Up
            }
        });
        let st = h.status(Instant::now());
        assert!(!st.healthy);
        assert_eq!(st.backend_down.as_deref(), Some("plugin exited"));
        assert!(!h.late(Instant::now()), "a backend restart is not lateness (/livez stays ok)");
        *down.lock().unwrap_or_else(|e| e.into_inner()) = false;
        assert!(h.status(Instant::now()).healthy);
    }

    #[test]
    fn a_failed_full_sync_is_unhealthy_until_a_sync_succeeds() {
        let h = ProxyHealth::new(Duration::from_secs(10));
        h.sync_failed(false, "iptables-restore: exit 1".into());
        assert!(h.status(Instant::now()).healthy, "a failed partial sync is retried in full first");
        h.sync_failed(true, "iptables-restore: exit 1".into());
        let st = h.status(Instant::now());
        assert!(!st.healthy);
        assert_eq!(st.sync_failing.as_deref(), Some("iptables-restore: exit 1"));
        h.updated([IpFamily::V4], None);
        assert!(h.status(Instant::now()).healthy);
    }

    #[test]
    fn not_ready_names_what_the_sources_report() {
        let h = ProxyHealth::new(Duration::from_secs(10));
        assert_eq!(h.not_ready_reason().as_deref(), Some("no successful sync yet"));
        h.set_source_problem("file", Some("/m/a.yaml: not valid YAML".into()));
        let why = h.not_ready_reason().unwrap_or_default();
        assert!(why.contains("file: /m/a.yaml: not valid YAML"), "{why}");
        h.set_source_problem("file", None);
        h.updated([IpFamily::V4], None);
        assert_eq!(h.not_ready_reason(), None);
    }

    #[test]
    fn node_deletion_makes_it_unhealthy() {
        let h = ProxyHealth::new(Duration::from_secs(10));
        h.set_node_deleting(true);
        let st = h.status(Instant::now());
        assert!(!st.healthy && st.node_deleting);
        assert!(!h.late(Instant::now()), "deletion is not lateness (/livez stays ok)");
    }
}
