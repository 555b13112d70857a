//! The change tracker: coalesces Service, EndpointSlice and Node events into
//! the desired state, and remembers what changed since the last successful sync.
//!
//! Semantics follow kube-proxy's `ServiceChangeTracker` and
//! `EndpointsChangeTracker`: per key, the tracker keeps the value at the last
//! successful sync (`previous`) and the latest value; A→B→C is A→C and A→B→A
//! is nothing. Slices of a Service are merged and endpoints de-duplicated by
//! the planner's [`ServiceEndpoints::merge`]. Nothing is programmed until every
//! resource has finished its initial list ([`ChangeTracker::is_synced`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tracing::{debug, warn};

use crate::contest::Claims;
use crate::convert::{
    self, Conversion, ConversionError, ConvertContext, Problem, endpoint_slice_from_k8s, node_from_k8s,
    service_from_k8s,
};
use crate::model::{EndpointSliceInfo, NodeInfo, ServiceInfo, ServiceName, SliceName};
use crate::planner::{PlannerConfig, ServiceEndpoints, plan_service};
use crate::snapshot::Snapshot;

/// One event from a watch, shaped like kube-runtime's raw watcher events: a
/// (re)list is bracketed by `Init` and `InitDone`, and objects missing from a
/// relist are deleted when it completes.
#[derive(Clone, Debug)]
pub enum ResourceEvent<K> {
    /// A (re)list starts.
    Init,
    /// An object of the (re)list.
    InitApply(K),
    /// The (re)list is complete; everything not listed is gone.
    InitDone,
    /// An object was added or modified.
    Apply(K),
    /// An object was deleted.
    Delete(K),
}

/// What sources feed into the tracker.
#[derive(Clone, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "an event is moved once from its source into the tracker; boxing would add an allocation per event"
)]
pub enum ProxyEvent {
    Service(ResourceEvent<Service>),
    EndpointSlice(ResourceEvent<EndpointSlice>),
    Node(ResourceEvent<Node>),
}

/// Which resource an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Services,
    EndpointSlices,
    Node,
}

/// Static configuration of a tracker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackerConfig {
    pub planner: PlannerConfig,
    /// `service.kubernetes.io/service-proxy-name` value that selects us.
    pub service_proxy_name: Option<String>,
    /// Wait for the Node's initial list too (kube-proxy waits for its Node to
    /// learn its topology labels). Sources without Nodes turn it off.
    pub wait_for_node: bool,
}

impl TrackerConfig {
    pub fn new(planner: PlannerConfig) -> Self {
        TrackerConfig { planner, service_proxy_name: None, wait_for_node: true }
    }

    fn convert_context(&self) -> ConvertContext {
        ConvertContext { families: self.planner.families, service_proxy_name: self.service_proxy_name.clone() }
    }
}

/// The annotation the EndpointSlice controller sets to the time of the
/// change that triggered the slice update (kube-proxy's latency origin).
pub const ANNOTATION_LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// A change not yet programmed.
#[derive(Clone, Debug)]
struct Pending<V> {
    /// The value at the last successful sync.
    previous: Option<V>,
    /// When the first change since then was queued.
    first_queued: Instant,
    /// The earliest `last-change-trigger-time` among the changes (slices only).
    trigger_time: Option<SystemTime>,
}

/// One key's pending change in a batch, with the value it had when the batch was cut.
type Drained<K, V> = HashMap<K, Pending<V>>;

/// The changes not yet programmed, for one resource.
#[derive(Debug)]
struct PendingMap<K, V> {
    entries: HashMap<K, Pending<V>>,
}

impl<K: Eq + Hash + Clone, V: PartialEq + Clone> PendingMap<K, V> {
    fn new() -> Self {
        PendingMap { entries: HashMap::new() }
    }

    /// Records that `key` moves from `old` to `new`; drops the entry when it
    /// returns to where it was at the last sync.
    fn record(&mut self, key: &K, old: Option<&V>, new: Option<&V>, now: Instant, trigger: Option<SystemTime>) {
        let entry = self.entries.entry(key.clone()).or_insert_with(|| Pending {
            previous: old.cloned(),
            first_queued: now,
            trigger_time: None,
        });
        entry.trigger_time = min_time(entry.trigger_time, trigger);
        if entry.previous.as_ref() == new {
            self.entries.remove(key);
        }
    }

    /// Puts a failed batch's entries back, keeping the older previous value
    /// and the earlier timestamps, then drops what returned to its previous value.
    fn restore(&mut self, drained: Drained<K, V>, current: impl Fn(&K) -> Option<V>) {
        for (key, old) in drained {
            let merged = match self.entries.remove(&key) {
                Some(newer) => Pending {
                    previous: old.previous,
                    first_queued: old.first_queued.min(newer.first_queued),
                    trigger_time: min_time(old.trigger_time, newer.trigger_time),
                },
                None => old,
            };
            if merged.previous != current(&key) {
                self.entries.insert(key, merged);
            }
        }
    }
}

fn min_time(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[derive(Debug)]
struct InitGate<K> {
    synced: bool,
    /// Keys seen since `Init`, while a (re)list is in progress.
    relisting: Option<HashSet<K>>,
}

impl<K> Default for InitGate<K> {
    fn default() -> Self {
        InitGate { synced: false, relisting: None }
    }
}

/// What [`ChangeTracker::apply`] did with one event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Whether the desired state changed.
    pub changed: bool,
    /// This event completed the last initial list: the first sync may run
    /// now, even when the event itself changed nothing (its objects arrived
    /// earlier, while syncs were still held back).
    pub became_synced: bool,
    /// Fields or objects that were skipped (already logged).
    pub errors: Vec<ConversionError>,
}

/// A cut of pending changes handed to one sync. Give it back with
/// [`ChangeTracker::commit`] on success or [`ChangeTracker::restore`] on failure.
#[derive(Debug)]
pub struct SyncBatch {
    pub snapshot: Arc<Snapshot>,
    /// Services whose plan differs from the last successfully synced one
    /// (including Services that are gone).
    pub changed: BTreeSet<ServiceName>,
    /// Something outside single Services changed (the Node): render everything.
    pub full_required: bool,
    services: Drained<ServiceName, Arc<ServiceInfo>>,
    slices: Drained<SliceName, Arc<EndpointSliceInfo>>,
    node: Option<Pending<Arc<NodeInfo>>>,
    /// Services whose contested frontends changed because of another Service.
    recontested: BTreeSet<ServiceName>,
}

impl SyncBatch {
    /// Number of Service changes and of EndpointSlice changes in this batch.
    pub fn change_counts(&self) -> (usize, usize) {
        (self.services.len(), self.slices.len())
    }
}

/// Latencies of the changes a successful sync programmed.
#[derive(Debug, Default)]
pub struct CommitReport {
    /// From first queued to programmed, one per changed Service or slice.
    pub queued_to_programmed: Vec<std::time::Duration>,
    /// From the EndpointSlice controller's trigger time to programmed
    /// (`kubeproxy_network_programming_duration_seconds`).
    pub trigger_to_programmed: Vec<std::time::Duration>,
}

/// The tracker. Not thread-safe by itself; the sync loop keeps it behind a mutex.
#[derive(Debug)]
pub struct ChangeTracker {
    config: TrackerConfig,
    ctx: ConvertContext,
    generation: u64,
    services: HashMap<ServiceName, Arc<ServiceInfo>>,
    slices: HashMap<SliceName, Arc<EndpointSliceInfo>>,
    /// Each Service's slices. A plain Vec: most Services have one slice, and
    /// a BTreeMap leaf costs ~450 bytes however few entries it holds.
    slices_by_service: HashMap<ServiceName, Vec<Arc<EndpointSliceInfo>>>,
    node: Option<Arc<NodeInfo>>,
    pending_services: PendingMap<ServiceName, Arc<ServiceInfo>>,
    pending_slices: PendingMap<SliceName, Arc<EndpointSliceInfo>>,
    pending_node: Option<Pending<Arc<NodeInfo>>>,
    /// Services whose plan must be recomputed before the next snapshot.
    dirty: HashSet<ServiceName>,
    plans: imbl::OrdMap<ServiceName, Arc<crate::plan::ServicePlan>>,
    /// Services whose plan has a healthCheckNodePort (see [`Snapshot::health_check_port_plans`]).
    health_checked: imbl::OrdSet<ServiceName>,
    /// Who claims which frontend, to decide contested ones ([`crate::contest`]).
    claims: Claims,
    /// Services whose plan changed only because another Service took or let
    /// go of a frontend they claim: part of the next batch's change set.
    recontested: BTreeSet<ServiceName>,
    /// Plans as of the last successful sync.
    synced_plans: imbl::OrdMap<ServiceName, Arc<crate::plan::ServicePlan>>,
    gates: (InitGate<ServiceName>, InitGate<SliceName>, InitGate<()>),
    /// Namespaces, port names, node names and zones, shared by every object
    /// that names them.
    strings: Interner,
}

/// Shares the few distinct strings that thousands of objects repeat
/// (namespaces, port names, node names, zones): one allocation each instead
/// of one per object. Entries are never removed; what it holds is bounded
/// by the cluster's namespaces, nodes, zones and port names, never by its
/// Services. Object names are unique, so they are not interned.
#[derive(Debug, Default)]
struct Interner {
    set: HashSet<Arc<str>>,
}

impl Interner {
    fn share(&mut self, s: &mut Arc<str>) {
        match self.set.get(&**s) {
            Some(shared) => *s = shared.clone(),
            None => {
                self.set.insert(s.clone());
            }
        }
    }

    fn service(&mut self, svc: &mut ServiceInfo) {
        self.share(&mut svc.name.namespace);
        for port in &mut svc.ports {
            self.share(&mut port.name);
        }
    }

    fn slice(&mut self, slice: &mut EndpointSliceInfo) {
        self.share(&mut slice.name.namespace);
        self.share(&mut slice.service.namespace);
        for port in &mut slice.ports {
            self.share(&mut port.name);
        }
        for ep in &mut slice.endpoints {
            // Freshly converted, so not shared yet.
            let Some(ep) = Arc::get_mut(ep) else { continue };
            for s in ep.node_name.iter_mut().chain(ep.zone.iter_mut()) {
                self.share(s);
            }
            if let Some(h) = ep.hints.as_deref_mut() {
                for s in h.zones.iter_mut().chain(h.nodes.iter_mut()) {
                    self.share(s);
                }
            }
        }
    }
}

impl ChangeTracker {
    pub fn new(config: TrackerConfig) -> Self {
        ChangeTracker {
            ctx: config.convert_context(),
            config,
            generation: 0,
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
            node: None,
            pending_services: PendingMap::new(),
            pending_slices: PendingMap::new(),
            pending_node: None,
            dirty: HashSet::new(),
            plans: imbl::OrdMap::new(),
            health_checked: imbl::OrdSet::new(),
            claims: Claims::default(),
            recontested: BTreeSet::new(),
            synced_plans: imbl::OrdMap::new(),
            gates: Default::default(),
            strings: Interner::default(),
        }
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// Every resource finished its initial list: programming may start.
    pub fn is_synced(&self) -> bool {
        self.gates.0.synced && self.gates.1.synced && (self.gates.2.synced || !self.config.wait_for_node)
    }

    /// Which resources have not finished their initial list.
    pub fn unsynced(&self) -> Vec<Resource> {
        let mut out = Vec::new();
        if !self.gates.0.synced {
            out.push(Resource::Services);
        }
        if !self.gates.1.synced {
            out.push(Resource::EndpointSlices);
        }
        if self.config.wait_for_node && !self.gates.2.synced {
            out.push(Resource::Node);
        }
        out
    }

    /// Whether anything changed since the last successful sync.
    pub fn has_pending(&self) -> bool {
        !self.pending_services.entries.is_empty()
            || !self.pending_slices.entries.is_empty()
            || self.pending_node.is_some()
    }

    /// (pending Service changes, Services with pending endpoint changes), as
    /// kube-proxy's `..._service_changes_pending` / `..._endpoint_changes_pending`.
    pub fn pending_counts(&self) -> (usize, usize) {
        let endpoint_services: HashSet<&ServiceName> = self
            .pending_slices
            .entries
            .iter()
            .filter_map(|(k, p)| self.slices.get(k).or(p.previous.as_ref()).map(|s| &s.service))
            .collect();
        (self.pending_services.entries.len(), endpoint_services.len())
    }

    /// The oldest queue time among pending changes.
    pub fn oldest_pending(&self) -> Option<Instant> {
        let s = self.pending_services.entries.values().map(|p| p.first_queued);
        let e = self.pending_slices.entries.values().map(|p| p.first_queued);
        s.chain(e).chain(self.pending_node.as_ref().map(|p| p.first_queued)).min()
    }

    pub fn node(&self) -> Option<&Arc<NodeInfo>> {
        self.node.as_ref()
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    pub fn slice_count(&self) -> usize {
        self.slices.len()
    }

    /// Applies one event. Never fails: bad objects are skipped, logged and reported.
    pub fn apply(&mut self, event: ProxyEvent) -> ApplyReport {
        let now = Instant::now();
        let mut report = ApplyReport::default();
        let was_synced = self.is_synced();
        match event {
            ProxyEvent::Service(ev) => self.apply_service(ev, now, &mut report),
            ProxyEvent::EndpointSlice(ev) => self.apply_slice(ev, now, &mut report),
            ProxyEvent::Node(ev) => self.apply_node(ev, now, &mut report),
        }
        for e in &report.errors {
            if matches!(e.problem, Problem::FamilyNotServed(_)) {
                debug!(error = %e, "skipped a field of a family this proxy does not serve");
            } else {
                warn!(error = %e, "skipped invalid input");
            }
        }
        if report.changed {
            self.generation += 1;
        }
        report.became_synced = !was_synced && self.is_synced();
        report
    }

    fn apply_service(&mut self, ev: ResourceEvent<Service>, now: Instant, report: &mut ApplyReport) {
        match ev {
            ResourceEvent::Init => self.gates.0.relisting = Some(HashSet::new()),
            ResourceEvent::InitDone => {
                if let Some(seen) = self.gates.0.relisting.take() {
                    let gone: Vec<ServiceName> = self.services.keys().filter(|k| !seen.contains(*k)).cloned().collect();
                    for key in gone {
                        report.changed |= self.set_service(&key, None, now);
                    }
                }
                self.gates.0.synced = true;
            }
            ResourceEvent::InitApply(svc) | ResourceEvent::Apply(svc) => {
                let key = match convert::service_key(&svc) {
                    Ok(k) => k,
                    Err(e) => return report.errors.push(e),
                };
                if let Some(seen) = self.gates.0.relisting.as_mut() {
                    seen.insert(key.clone());
                }
                match service_from_k8s(&svc, &self.ctx) {
                    Ok(Conversion::Accepted { mut value, warnings }) => {
                        report.errors.extend(warnings);
                        self.strings.service(&mut value);
                        report.changed |= self.set_service(&key, Some(Arc::new(value)), now);
                    }
                    Ok(Conversion::Excluded(why)) => {
                        debug!(service = %key, reason = %why, "not proxied");
                        report.changed |= self.set_service(&key, None, now);
                    }
                    // An unusable update keeps what was programmed before.
                    Err(e) => report.errors.push(e),
                }
            }
            ResourceEvent::Delete(svc) => match convert::service_key(&svc) {
                Ok(key) => report.changed |= self.set_service(&key, None, now),
                Err(e) => report.errors.push(e),
            },
        }
    }

    fn set_service(&mut self, key: &ServiceName, value: Option<Arc<ServiceInfo>>, now: Instant) -> bool {
        let old = match &value {
            Some(v) => self.services.insert(key.clone(), v.clone()),
            None => self.services.remove(key),
        };
        if old == value {
            return false;
        }
        self.pending_services.record(key, old.as_ref(), value.as_ref(), now, None);
        self.dirty.insert(key.clone());
        true
    }

    fn apply_slice(&mut self, ev: ResourceEvent<EndpointSlice>, now: Instant, report: &mut ApplyReport) {
        match ev {
            ResourceEvent::Init => self.gates.1.relisting = Some(HashSet::new()),
            ResourceEvent::InitDone => {
                if let Some(seen) = self.gates.1.relisting.take() {
                    let gone: Vec<SliceName> = self.slices.keys().filter(|k| !seen.contains(*k)).cloned().collect();
                    for key in gone {
                        report.changed |= self.set_slice(&key, None, now, None);
                    }
                }
                self.gates.1.synced = true;
            }
            ResourceEvent::InitApply(slice) | ResourceEvent::Apply(slice) => {
                let key = match convert::slice_key(&slice) {
                    Ok(k) => k,
                    Err(e) => return report.errors.push(e),
                };
                if let Some(seen) = self.gates.1.relisting.as_mut() {
                    seen.insert(key.clone());
                }
                let trigger = trigger_time(&slice.metadata);
                match endpoint_slice_from_k8s(&slice, &self.ctx) {
                    Ok(Conversion::Accepted { mut value, warnings }) => {
                        report.errors.extend(warnings);
                        self.strings.slice(&mut value);
                        report.changed |= self.set_slice(&key, Some(Arc::new(value)), now, trigger);
                    }
                    Ok(Conversion::Excluded(why)) => {
                        debug!(endpoint_slice = %key, reason = %why, "not proxied");
                        report.changed |= self.set_slice(&key, None, now, trigger);
                    }
                    Err(e) => report.errors.push(e),
                }
            }
            ResourceEvent::Delete(slice) => match convert::slice_key(&slice) {
                Ok(key) => report.changed |= self.set_slice(&key, None, now, None),
                Err(e) => report.errors.push(e),
            },
        }
    }

    fn set_slice(
        &mut self,
        key: &SliceName,
        value: Option<Arc<EndpointSliceInfo>>,
        now: Instant,
        trigger: Option<SystemTime>,
    ) -> bool {
        let old = match &value {
            Some(v) => self.slices.insert(key.clone(), v.clone()),
            None => self.slices.remove(key),
        };
        if old == value {
            return false;
        }
        if let Some(old) = &old {
            self.dirty.insert(old.service.clone());
            if let Some(of_service) = self.slices_by_service.get_mut(&old.service) {
                of_service.retain(|s| s.name != *key);
                if of_service.is_empty() {
                    self.slices_by_service.remove(&old.service);
                }
            }
        }
        if let Some(new) = &value {
            self.dirty.insert(new.service.clone());
            let of_service = self.slices_by_service.entry(new.service.clone()).or_insert_with(|| Vec::with_capacity(1));
            of_service.push(new.clone());
        }
        self.pending_slices.record(key, old.as_ref(), value.as_ref(), now, trigger);
        true
    }

    fn apply_node(&mut self, ev: ResourceEvent<Node>, now: Instant, report: &mut ApplyReport) {
        let value = match ev {
            ResourceEvent::Init => {
                self.gates.2.relisting = Some(HashSet::new());
                return;
            }
            ResourceEvent::InitDone => {
                self.gates.2.synced = true;
                match self.gates.2.relisting.take() {
                    // A (re)list that named our Node: it is what the list said.
                    Some(seen) if !seen.is_empty() => return,
                    // A (re)list without our Node: it is gone.
                    Some(_) => None,
                    // An InitDone without Init ended no list: nothing is known
                    // gone (as for Services and slices).
                    None => return,
                }
            }
            ResourceEvent::InitApply(node) | ResourceEvent::Apply(node) => {
                match node_from_k8s(&node, &self.ctx) {
                    Ok(Conversion::Accepted { value, warnings }) => {
                        report.errors.extend(warnings);
                        if *value.name != *self.config.planner.node_name {
                            // Not ours: neither an update nor a sign that ours is listed.
                            debug!(node = %value.name, "ignoring a Node other than ours");
                            return;
                        }
                        if let Some(seen) = self.gates.2.relisting.as_mut() {
                            seen.insert(());
                        }
                        Some(Arc::new(value))
                    }
                    Ok(Conversion::Excluded(_)) => return,
                    Err(e) => return report.errors.push(e),
                }
            }
            ResourceEvent::Delete(node) => {
                // Only our Node's deletion removes our topology (a source
                // that lists every Node, such as a manifest directory, may
                // delete others).
                if node.metadata.name.as_deref() != Some(&*self.config.planner.node_name) {
                    debug!(node = ?node.metadata.name, "ignoring the deletion of a Node other than ours");
                    return;
                }
                None
            }
        };
        if self.node == value {
            return;
        }
        let old = std::mem::replace(&mut self.node, value);
        let zone_changed = old.as_deref().and_then(NodeInfo::zone) != self.node.as_deref().and_then(NodeInfo::zone);
        match &mut self.pending_node {
            Some(p) if p.previous == self.node => self.pending_node = None,
            Some(_) => {}
            None => self.pending_node = Some(Pending { previous: old, first_queued: now, trigger_time: None }),
        }
        if zone_changed {
            self.dirty.extend(self.services.keys().cloned());
        }
        report.changed = true;
    }

    /// Recomputes the plans of dirty Services, and the contested frontends
    /// of every other Service that claims a frontend they claimed or claim.
    fn replan(&mut self) {
        let mut contenders = BTreeSet::new();
        for name in std::mem::take(&mut self.dirty) {
            let old = self.plans.get(&name).cloned();
            match self.services.get(&name) {
                None => {
                    contenders.extend(self.claims.update(old.as_deref(), None));
                    self.plans.remove(&name);
                    self.health_checked.remove(&name);
                }
                Some(service) => {
                    let endpoints = ServiceEndpoints::merge(
                        self.slices_by_service.get(&name).into_iter().flat_map(|v| v.iter().map(|s| &**s)),
                        &self.config.planner.node_name,
                    );
                    let mut plan = plan_service(service, &endpoints, self.node.as_deref(), &self.config.planner);
                    contenders.extend(self.claims.update(old.as_deref(), Some(&plan)));
                    self.claims.apply(&mut plan);
                    if crate::snapshot::has_health_check(&plan) {
                        self.health_checked.insert(name.clone());
                    } else {
                        self.health_checked.remove(&name);
                    }
                    if old.is_none_or(|old| *old != plan) {
                        self.plans.insert(name, Arc::new(plan));
                    }
                }
            }
        }
        // Services whose frontends another Service took or let go: the same
        // plan with another contested set.
        for name in contenders {
            if let Some(plan) = self.plans.get(&name) {
                let mut plan = (**plan).clone();
                if self.claims.apply(&mut plan) {
                    self.plans.insert(name.clone(), Arc::new(plan));
                    self.recontested.insert(name);
                }
            }
        }
    }

    /// The current desired state, without cutting a batch.
    pub fn snapshot(&mut self) -> Arc<Snapshot> {
        self.replan();
        Arc::new(Snapshot {
            generation: self.generation,
            node: self.node.clone(),
            config: Arc::new(self.config.planner.clone()),
            plans: self.plans.clone(),
            health_checked: self.health_checked.clone(),
        })
    }

    /// Cuts a batch: the desired state plus everything pending, which is
    /// removed from the tracker until [`commit`](Self::commit) or
    /// [`restore`](Self::restore).
    pub fn take_batch(&mut self) -> SyncBatch {
        let snapshot = self.snapshot();
        let services = std::mem::take(&mut self.pending_services.entries);
        let slices = std::mem::take(&mut self.pending_slices.entries);
        let node = self.pending_node.take();

        // Candidates are the Services touched by pending changes; keep those
        // whose plan really differs from what was last programmed.
        let recontested = std::mem::take(&mut self.recontested);
        let mut candidates: BTreeSet<ServiceName> = services.keys().cloned().collect();
        candidates.extend(recontested.iter().cloned());
        for (key, p) in &slices {
            candidates.extend(p.previous.iter().map(|s| s.service.clone()));
            candidates.extend(self.slices.get(key).map(|s| s.service.clone()));
        }
        if node.is_some() {
            // The Node's zone feeds every plan (topology hints).
            candidates.extend(snapshot.plans.keys().cloned());
            candidates.extend(self.synced_plans.keys().cloned());
        }
        let changed = candidates
            .into_iter()
            .filter(|name| match (self.synced_plans.get(name), snapshot.plans.get(name)) {
                (None, None) => false,
                (Some(a), Some(b)) => !Arc::ptr_eq(a, b) && a != b,
                _ => true,
            })
            .collect();
        SyncBatch { snapshot, changed, full_required: node.is_some(), services, slices, node, recontested }
    }

    /// The batch was programmed: its plans become the synced state.
    pub fn commit(&mut self, batch: SyncBatch) -> CommitReport {
        let now = Instant::now();
        let wall = SystemTime::now();
        self.synced_plans = batch.snapshot.plans.clone();
        let mut report = CommitReport::default();
        let queued =
            batch.services.values().map(|p| p.first_queued).chain(batch.slices.values().map(|p| p.first_queued));
        report.queued_to_programmed = queued.map(|t| now.saturating_duration_since(t)).collect();
        report.trigger_to_programmed =
            batch.slices.values().filter_map(|p| p.trigger_time).filter_map(|t| wall.duration_since(t).ok()).collect();
        report
    }

    /// The batch failed: its changes become pending again (nothing is lost).
    pub fn restore(&mut self, batch: SyncBatch) {
        self.recontested.extend(batch.recontested);
        let services = &self.services;
        self.pending_services.restore(batch.services, |k| services.get(k).cloned());
        let slices = &self.slices;
        self.pending_slices.restore(batch.slices, |k| slices.get(k).cloned());
        if let Some(old) = batch.node {
            match &mut self.pending_node {
                Some(newer) => {
                    newer.previous = old.previous;
                    newer.first_queued = newer.first_queued.min(old.first_queued);
                }
                None => self.pending_node = Some(old),
            }
            if self.pending_node.as_ref().is_some_and(|p| p.previous == self.node) {
                self.pending_node = None;
            }
        }
    }
}

fn trigger_time(meta: &ObjectMeta) -> Option<SystemTime> {
    let raw = meta.annotations.as_ref()?.get(ANNOTATION_LAST_CHANGE_TRIGGER_TIME)?;
    parse_rfc3339(raw)
}

fn parse_rfc3339(raw: &str) -> Option<SystemTime> {
    raw.parse::<jiff::Timestamp>().ok().map(SystemTime::from)
}

#[cfg(test)]
mod time_tests {
    use super::parse_rfc3339;
    use std::time::{Duration, SystemTime};

    #[test]
    fn parses_api_server_timestamps() {
        let t = parse_rfc3339("2024-01-02T03:04:05Z").unwrap();
        assert_eq!(t.duration_since(SystemTime::UNIX_EPOCH).unwrap(), Duration::from_secs(1_704_164_645));
        let t = parse_rfc3339("1970-01-01T00:00:01.5Z").unwrap();
        assert_eq!(t.duration_since(SystemTime::UNIX_EPOCH).unwrap(), Duration::from_millis(1500));
        assert!(parse_rfc3339("2024-13-02T03:04:05Z").is_none());
        assert!(parse_rfc3339("yesterday").is_none());
    }
}
