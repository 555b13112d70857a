//! The proxier: events in, synced kernel state out.
//!
//! It owns the [`ChangeTracker`], feeds batches to a [`Dataplane`] when the
//! [`SyncRunner`] says so, gives failed batches back to the tracker, and keeps
//! health and metrics current. The daemon, the conformance runner and the
//! benchmarks all drive backends through it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{Instrument, debug, error, info_span, warn};

use crate::dataplane::{Dataplane, SyncOutcome, SyncRequest};
use crate::health::ProxyHealth;
use crate::metrics::{BackendLabel, DriftLabels, IpFamilyLabel, KindLabel, NoLocalEndpointsLabels, ProxyMetrics};
use crate::model::IpFamily;
use crate::plan::Route;
use crate::runner::{SyncResult, SyncRunner, SyncTrigger};
use crate::snapshot::Snapshot;
use crate::tracker::{ApplyReport, ChangeTracker, ProxyEvent};

/// The state of the last successful sync, published on a watch channel.
#[derive(Clone, Debug, Default)]
pub struct SyncedState {
    /// Tracker generation the kernel now reflects.
    pub generation: u64,
    /// Successful syncs so far.
    pub syncs: u64,
    pub snapshot: Option<Arc<Snapshot>>,
    pub outcome: SyncOutcome,
}

/// Events in, synced kernel state out.
#[derive(Debug)]
pub struct Proxier {
    tracker: Mutex<ChangeTracker>,
    dataplane: Arc<dyn Dataplane>,
    health: ProxyHealth,
    metrics: Option<ProxyMetrics>,
    trigger: SyncTrigger,
    synced: watch::Sender<SyncedState>,
    /// A batch was cut and its sync has not finished (read and written
    /// under the tracker lock, so [`Proxier::converged`] is consistent).
    in_flight: std::sync::atomic::AtomicBool,
    /// When the pending-change gauges were last computed from a source
    /// event (see [`Proxier::handle`]).
    gauges_at: Mutex<Option<Instant>>,
    /// `kubeproxy_sync_proxy_rules_no_local_endpoints_total`, kept per
    /// Service and updated for the Services a sync changed only: walking
    /// every plan on every sync made a one-endpoint change cost 0.37 µs per
    /// Service (3.7 ms at 10,000; `cargo bench -p proxy-core --bench core -- proxier`).
    no_local: Mutex<NoLocalCounts>,
}

/// Services with a Local traffic policy and no local endpoint, per
/// (policy, family), with each Service's share.
#[derive(Debug, Default)]
struct NoLocalCounts {
    per_service: HashMap<crate::model::ServiceName, Vec<(&'static str, IpFamily)>>,
    totals: HashMap<(&'static str, IpFamily), i64>,
}

impl NoLocalCounts {
    fn update(&mut self, name: &crate::model::ServiceName, plan: Option<&crate::plan::ServicePlan>) {
        if let Some(old) = self.per_service.remove(name) {
            for key in old {
                *self.totals.entry(key).or_default() -= 1;
            }
        }
        let Some(plan) = plan else { return };
        let mut share = Vec::new();
        for port in &plan.ports {
            if plan.service.internal_policy_local() && *port.internal() == Route::Drop {
                share.push(("internal", port.family));
            }
            if port.external_policy_local && *port.external() == Route::Drop {
                share.push(("external", port.family));
            }
        }
        for key in &share {
            *self.totals.entry(*key).or_default() += 1;
        }
        if !share.is_empty() {
            self.per_service.insert(name.clone(), share);
        }
    }
}

/// Source events refresh the pending-change gauges at most this often;
/// every sync refreshes them too. Counting is O(pending changes), so doing
/// it per event made an initial list of N objects cost O(N²) (minutes at
/// 10,000 Services, found by `switchyard-bench`).
const GAUGE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

impl Proxier {
    pub fn new(
        tracker: ChangeTracker,
        dataplane: Arc<dyn Dataplane>,
        health: ProxyHealth,
        metrics: Option<ProxyMetrics>,
        trigger: SyncTrigger,
    ) -> Self {
        // Health follows the backend too (weakly: health handles outlive the proxier).
        let weak = Arc::downgrade(&dataplane);
        health.watch_backend(move || weak.upgrade().map(|d| d.health()).unwrap_or_default());
        Proxier {
            tracker: Mutex::new(tracker),
            dataplane,
            health,
            metrics,
            trigger,
            synced: watch::Sender::new(SyncedState::default()),
            in_flight: std::sync::atomic::AtomicBool::new(false),
            gauges_at: Mutex::new(None),
            no_local: Mutex::new(NoLocalCounts::default()),
        }
    }

    fn tracker(&self) -> MutexGuard<'_, ChangeTracker> {
        // The tracker's methods do not leave it half-updated on panic paths
        // that matter here (they only panic on allocation failure).
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dataplane(&self) -> &Arc<dyn Dataplane> {
        &self.dataplane
    }

    pub fn health(&self) -> &ProxyHealth {
        &self.health
    }

    fn families(&self) -> Vec<IpFamily> {
        self.tracker().config().planner.families.iter().collect()
    }

    /// Publishes the tracker's pending-change counts and size.
    fn update_gauges(&self, t: &ChangeTracker) {
        if let Some(m) = &self.metrics {
            let (services, endpoints) = t.pending_counts();
            m.service_changes_pending.set(services as i64);
            m.endpoint_changes_pending.set(endpoints as i64);
            m.services.set(t.service_count() as i64);
        }
    }

    /// Applies a source event; asks for a sync when the desired state changed.
    pub fn handle(&self, event: ProxyEvent) -> ApplyReport {
        let (report, node_deleting) = {
            let mut t = self.tracker();
            let report = t.apply(event);
            let due = {
                let mut at = self.gauges_at.lock().unwrap_or_else(|e| e.into_inner());
                let due = at.is_none_or(|last| last.elapsed() >= GAUGE_INTERVAL);
                if due {
                    *at = Some(Instant::now());
                }
                due
            };
            if due {
                self.update_gauges(&t);
            }
            (report, t.node().is_some_and(|n| n.deleting))
        };
        self.health.set_node_deleting(node_deleting);
        if let Some(m) = &self.metrics {
            for e in &report.errors {
                m.invalid_objects.get_or_create(&KindLabel { kind: e.kind.into() }).inc();
            }
        }
        if report.changed {
            self.health.queued(self.families(), Instant::now());
            if let Some(m) = &self.metrics {
                for f in self.families() {
                    m.last_queued_timestamp.get_or_create(&IpFamilyLabel::of(f)).set(unix_now());
                }
            }
        }
        // The last InitDone usually changes nothing, but the syncs its
        // objects asked for were skipped while a list was incomplete.
        if report.changed || report.became_synced {
            self.trigger.request();
        }
        report
    }

    /// Whether every source finished its initial list.
    pub fn is_synced(&self) -> bool {
        self.tracker().is_synced()
    }

    /// Every change accepted so far is programmed: the initial lists are
    /// complete, nothing is pending and no sync is in flight. A sync barrier
    /// for tools and tests ("is what I just fed in the kernel yet?").
    pub fn converged(&self) -> bool {
        let t = self.tracker();
        t.is_synced() && !t.has_pending() && !self.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The current desired state.
    pub fn desired(&self) -> Arc<Snapshot> {
        self.tracker().snapshot()
    }

    /// Watches successful syncs (tests wait on it for convergence).
    pub fn subscribe(&self) -> watch::Receiver<SyncedState> {
        self.synced.subscribe()
    }

    /// The tracker generation the kernel reflects now.
    pub fn synced_generation(&self) -> u64 {
        self.synced.borrow().generation
    }

    /// One sync attempt.
    pub async fn sync_once(&self, full: bool) -> SyncResult {
        let batch = {
            let mut t = self.tracker();
            if !t.is_synced() {
                debug!(waiting_for = ?t.unsynced(), "initial lists incomplete; not syncing yet");
                return SyncResult::Skipped;
            }
            if !full && !t.has_pending() {
                // The events that asked for this sync cancelled out (a
                // Service created and deleted at once); their gauge refresh
                // may have been throttled away, and no batch will refresh it.
                self.update_gauges(&t);
                return SyncResult::Skipped;
            }
            self.in_flight.store(true, std::sync::atomic::Ordering::SeqCst);
            let batch = t.take_batch();
            self.update_gauges(&t);
            batch
        };
        let full = full || batch.full_required;
        let changed = Arc::new(batch.changed.clone());
        let request = SyncRequest { snapshot: batch.snapshot.clone(), changed: changed.clone(), full };
        let (service_changes, endpoint_changes) = batch.change_counts();
        let span = info_span!(
            "sync",
            backend = self.dataplane.mode(),
            full,
            services = batch.snapshot.len(),
            changed = batch.changed.len(),
            generation = batch.snapshot.generation,
        );
        let start = Instant::now();
        let result = self.dataplane.sync(request).instrument(span.clone()).await;
        let elapsed = start.elapsed();
        match result {
            Ok(outcome) => {
                let did_full = full || outcome.full;
                let snapshot = batch.snapshot.clone();
                let (commit, still_pending) = {
                    let mut t = self.tracker();
                    let report = t.commit(batch);
                    self.update_gauges(&t);
                    self.in_flight.store(false, std::sync::atomic::Ordering::SeqCst);
                    (report, t.oldest_pending())
                };
                self.health.updated(self.families(), still_pending);
                if !outcome.repairs.is_empty() {
                    span.in_scope(|| {
                        warn!(repairs = ?outcome.repairs, "the kernel differed from what was programmed (changed by someone else); repaired")
                    });
                }
                if let Some(m) = &self.metrics {
                    for (kind, n) in &outcome.repairs {
                        let labels = DriftLabels { backend: self.dataplane.mode().to_string(), kind: kind.clone() };
                        m.drift_repairs.get_or_create(&labels).inc_by(*n);
                    }
                    // One sync programs every family: each family's proxier
                    // in kube-proxy would have recorded this one.
                    for f in self.families() {
                        let family = IpFamilyLabel::of(f);
                        m.sync_duration.get_or_create(&family).observe(elapsed.as_secs_f64());
                        let kind = if did_full { &m.sync_full_duration } else { &m.sync_partial_duration };
                        kind.get_or_create(&family).observe(elapsed.as_secs_f64());
                        m.last_sync_timestamp.get_or_create(&family).set(unix_now());
                        for d in &commit.trigger_to_programmed {
                            m.network_programming_duration.get_or_create(&family).observe(d.as_secs_f64());
                        }
                    }
                    m.service_changes_total.inc_by(service_changes as u64);
                    m.endpoint_changes_total.inc_by(endpoint_changes as u64);
                    for d in &commit.queued_to_programmed {
                        m.queue_to_programmed.observe(d.as_secs_f64());
                    }
                    self.record_no_local_endpoints(m, &snapshot, &changed);
                }
                span.in_scope(|| {
                    debug!(
                        elapsed_ms = elapsed.as_secs_f64() * 1e3,
                        did_full,
                        objects = ?outcome.objects,
                        "synced"
                    )
                });
                self.synced.send_modify(|s| {
                    s.generation = snapshot.generation;
                    s.syncs += 1;
                    s.snapshot = Some(snapshot);
                    s.outcome = outcome;
                });
                SyncResult::Synced { full: did_full }
            }
            Err(e) => {
                {
                    let mut t = self.tracker();
                    t.restore(batch);
                    self.update_gauges(&t);
                    self.in_flight.store(false, std::sync::atomic::Ordering::SeqCst);
                }
                if let Some(m) = &self.metrics {
                    m.sync_failures.get_or_create(&BackendLabel { backend: self.dataplane.mode().to_string() }).inc();
                }
                self.health.sync_failed(full, ErrorChain(&e).to_string());
                span.in_scope(
                    || error!(error = %ErrorChain(&e), "sync failed; previous state stays in place, retrying"),
                );
                SyncResult::Failed
            }
        }
    }

    /// Updates the no-local-endpoints gauges for the Services this sync changed.
    fn record_no_local_endpoints(
        &self,
        m: &ProxyMetrics,
        snapshot: &Snapshot,
        changed: &std::collections::BTreeSet<crate::model::ServiceName>,
    ) {
        let mut counts = self.no_local.lock().unwrap_or_else(|e| e.into_inner());
        for name in changed {
            counts.update(name, snapshot.service(name).map(|p| &**p));
        }
        for policy in ["internal", "external"] {
            for family in IpFamily::ALL {
                let labels = NoLocalEndpointsLabels {
                    traffic_policy: policy.to_string(),
                    ip_family: family.as_str().to_string(),
                };
                m.no_local_endpoints
                    .get_or_create(&labels)
                    .set(counts.totals.get(&(policy, family)).copied().unwrap_or(0));
            }
        }
    }

    /// Runs the sync loop until `shutdown`.
    pub async fn run(self: Arc<Self>, runner: SyncRunner, shutdown: impl Future<Output = ()>) {
        let this = self.clone();
        runner
            .run(
                move |full| {
                    let this = this.clone();
                    async move { this.sync_once(full).await }
                },
                shutdown,
            )
            .await;
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Displays an error with its whole source chain, once, at the edge.
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
