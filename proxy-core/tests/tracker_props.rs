//! Property tests of the tracker: any interleaving of events, batch cuts,
//! successful and failed syncs coalesces to the state the final objects
//! describe, and a backend that applies only the change sets converges to it.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proptest::prelude::*;
use proxy_core::testing::{ServiceBuilder, SliceBuilder, endpoint, initial_list, node};
use proxy_core::tracker::Resource;
use proxy_core::*;

const NODE: &str = "node-1";
const SERVICES: usize = 3;
const SLICES: usize = 4;

fn service(i: usize, variant: u8) -> Service {
    let b = ServiceBuilder::new("ns", &format!("s{i}"), &format!("10.96.0.{}", i + 1));
    match variant % 3 {
        0 => b.port("http", 80, "TCP").build(),
        1 => b.port("http", 81, "TCP").port("dns", 53, "UDP").build(),
        _ => b.node_port("http", 80, "TCP", 30000 + i as i32).external_traffic_policy("Local").build(),
    }
}

/// Slices 0 and 1 belong to s0, slice 2 to s1; slice 3 moves between s1 and s2.
fn slice(j: usize, variant: u8) -> EndpointSlice {
    let owner = match j {
        0 | 1 => 0,
        2 => 1,
        _ => 1 + usize::from(variant.is_multiple_of(2)),
    };
    let base = SliceBuilder::new("ns", &format!("k{j}"), &format!("s{owner}"))
        .port("http", 8080 + i32::from(variant % 2), "TCP")
        .port("dns", 53, "UDP");
    let pool = [
        endpoint("10.0.0.1").node(NODE).zone_hints(&["a"]),
        endpoint("10.0.0.2").node("node-2").zone_hints(&["b"]),
        endpoint("10.0.0.3").node(NODE).terminating(),
        endpoint("10.0.0.1").node("node-2"),
    ];
    pool.into_iter().enumerate().filter(|(k, _)| variant & (1 << k) != 0).fold(base, |s, (_, e)| s.endpoint(e)).build()
}

fn our_node(zone: u8) -> Node {
    node(NODE, "192.168.0.1", Some(if zone.is_multiple_of(2) { "a" } else { "b" }))
}

#[derive(Clone, Debug)]
enum Op {
    SetService(usize, u8),
    DeleteService(usize),
    SetSlice(usize, u8),
    DeleteSlice(usize),
    SetZone(u8),
    /// Cut a batch (if none is in flight).
    Cut,
    /// Finish the in-flight batch, successfully or not.
    Finish(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..SERVICES, any::<u8>()).prop_map(|(i, v)| Op::SetService(i, v)),
        (0..SERVICES).prop_map(Op::DeleteService),
        (0..SLICES, any::<u8>()).prop_map(|(j, v)| Op::SetSlice(j, v)),
        (0..SLICES).prop_map(Op::DeleteSlice),
        any::<u8>().prop_map(Op::SetZone),
        Just(Op::Cut),
        any::<bool>().prop_map(Op::Finish),
    ]
}

type Kernel = BTreeMap<ServiceName, Arc<ServicePlan>>;

/// A backend that programs only what the change set names.
fn apply_partial(kernel: &mut Kernel, batch: &SyncBatch) {
    for name in &batch.changed {
        match batch.snapshot.service(name) {
            Some(plan) => kernel.insert(name.clone(), plan.clone()),
            None => kernel.remove(name),
        };
    }
}

fn plans(snapshot: &Snapshot) -> Kernel {
    snapshot.services().map(|p| (p.name().clone(), p.clone())).collect()
}

fn fresh_tracker() -> ChangeTracker {
    ChangeTracker::new(TrackerConfig::new(PlannerConfig::new(NODE)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_interleaving_converges_to_the_final_objects(
        initial_services in proptest::collection::vec(proptest::option::of(any::<u8>()), SERVICES),
        initial_slices in proptest::collection::vec(proptest::option::of(any::<u8>()), SLICES),
        ops in proptest::collection::vec(op(), 0..60),
    ) {
        let mut services: Vec<Option<u8>> = initial_services.clone();
        let mut slices: Vec<Option<u8>> = initial_slices.clone();
        let mut zone = 0u8;

        let objects = |services: &[Option<u8>], slices: &[Option<u8>]| {
            let s = services.iter().enumerate().filter_map(|(i, v)| v.map(|v| service(i, v))).collect();
            let k = slices.iter().enumerate().filter_map(|(j, v)| v.map(|v| slice(j, v))).collect();
            (s, k)
        };

        let mut t = fresh_tracker();
        let (s, k) = objects(&services, &slices);
        for ev in initial_list(s, k, Some(our_node(zone))) {
            t.apply(ev);
        }
        let mut kernel = Kernel::new();
        let first = t.take_batch();
        // The first sync is full: it programs everything.
        kernel = plans(&first.snapshot).into_iter().chain(std::mem::take(&mut kernel)).collect();
        t.commit(first);

        let mut in_flight: Option<SyncBatch> = None;
        for op in ops {
            match op {
                Op::SetService(i, v) => {
                    services[i] = Some(v);
                    t.apply(ProxyEvent::Service(ResourceEvent::Apply(service(i, v))));
                }
                Op::DeleteService(i) => {
                    services[i] = None;
                    t.apply(ProxyEvent::Service(ResourceEvent::Delete(service(i, 0))));
                }
                Op::SetSlice(j, v) => {
                    slices[j] = Some(v);
                    t.apply(ProxyEvent::EndpointSlice(ResourceEvent::Apply(slice(j, v))));
                }
                Op::DeleteSlice(j) => {
                    slices[j] = None;
                    t.apply(ProxyEvent::EndpointSlice(ResourceEvent::Delete(slice(j, 0))));
                }
                Op::SetZone(z) => {
                    zone = z;
                    t.apply(ProxyEvent::Node(ResourceEvent::Apply(our_node(z))));
                }
                Op::Cut => {
                    if in_flight.is_none() {
                        in_flight = Some(t.take_batch());
                    }
                }
                Op::Finish(ok) => {
                    if let Some(b) = in_flight.take() {
                        if ok {
                            apply_partial(&mut kernel, &b);
                            t.commit(b);
                        } else {
                            t.restore(b);
                        }
                    }
                }
            }
        }
        if let Some(b) = in_flight.take() {
            apply_partial(&mut kernel, &b);
            t.commit(b);
        }
        let last = t.take_batch();
        apply_partial(&mut kernel, &last);
        let final_plans = plans(&last.snapshot);
        t.commit(last);

        // Coalescing: the state equals what the final objects alone describe.
        let mut fresh = fresh_tracker();
        let (s, k) = objects(&services, &slices);
        for ev in initial_list(s, k, Some(our_node(zone))) {
            fresh.apply(ev);
        }
        prop_assert_eq!(&plans(&fresh.snapshot()), &final_plans);
        // Completeness: applying only change sets reproduced it.
        prop_assert_eq!(&kernel, &final_plans);
        prop_assert!(!t.has_pending());
    }
}

// ---------------------------------------------------------------------------
// Valid and invalid events, relists and stray brackets.
//
// The invariant: the tracker's desired state is a function of the *valid*
// objects alone. A model replays the events with kube-proxy's rules (an
// object the tracker cannot use as a whole changes nothing; a (re)list
// deletes what it did not name; a stray `InitDone` deletes nothing), and
// at the end the tracker's snapshot must equal the snapshot of a fresh
// tracker given only the model's objects as one initial list. Along the
// way: an invalid event changes nothing at all (nothing it could name is
// removed), and a commit with nothing queued since its cut leaves no
// pending change.

/// A Service update, valid or not.
#[derive(Clone, Debug)]
enum SvcInput {
    Valid(u8),
    /// Usable, with bad fields the conversion skips (a port out of range,
    /// an unknown protocol): the rest is programmed.
    BadFields(u8),
    /// Unusable as a whole: the ClusterIP is not an IP.
    BadClusterIp,
    /// Unusable as a whole: an unknown type.
    UnknownType,
    /// No name: not even a key.
    NoName,
}

impl SvcInput {
    /// Whether the tracker may use it (possibly minus some fields).
    fn usable(&self) -> bool {
        matches!(self, SvcInput::Valid(_) | SvcInput::BadFields(_))
    }
}

fn svc_input(i: usize, input: &SvcInput) -> Service {
    let name = format!("s{i}");
    let ip = format!("10.96.0.{}", i + 1);
    match input {
        SvcInput::Valid(v) => service(i, *v),
        SvcInput::BadFields(v) => ServiceBuilder::new("ns", &name, &ip)
            .port("http", 80 + i32::from(v % 2), "TCP")
            .port("huge", 70000, "TCP")
            .port("zero", 0, "TCP")
            .port("weird", 82, "CARRIER-PIGEON")
            .build(),
        SvcInput::BadClusterIp => ServiceBuilder::new("ns", &name, "10.96.0.999").port("http", 80, "TCP").build(),
        SvcInput::UnknownType => {
            ServiceBuilder::new("ns", &name, &ip).type_("Teleport").port("http", 80, "TCP").build()
        }
        SvcInput::NoName => ServiceBuilder::new("ns", "", &ip).port("http", 80, "TCP").build(),
    }
}

fn svc_input_strategy() -> impl Strategy<Value = SvcInput> {
    prop_oneof![
        3 => any::<u8>().prop_map(SvcInput::Valid),
        1 => any::<u8>().prop_map(SvcInput::BadFields),
        1 => Just(SvcInput::BadClusterIp),
        1 => Just(SvcInput::UnknownType),
        1 => Just(SvcInput::NoName),
    ]
}

/// An EndpointSlice update, valid or not.
#[derive(Clone, Debug)]
enum SliceInput {
    Valid(u8),
    /// Usable: bad endpoint addresses and ports are skipped.
    BadFields(u8),
    /// Usable, and not proxied: without the service-name label the slice
    /// belongs to no Service (a valid update that removes it).
    NoServiceLabel,
    /// No name: not even a key.
    NoName,
}

impl SliceInput {
    fn usable(&self) -> bool {
        !matches!(self, SliceInput::NoName)
    }
}

fn slice_input(j: usize, input: &SliceInput) -> EndpointSlice {
    match input {
        SliceInput::Valid(v) => slice(j, *v),
        SliceInput::BadFields(v) => SliceBuilder::new("ns", &format!("k{j}"), &format!("s{}", j % SERVICES))
            .port("http", 8080 + i32::from(v % 2), "TCP")
            .port("huge", 70000, "TCP")
            .port("odd", 53, "CARRIER-PIGEON")
            .endpoint(endpoint("10.0.0.999").node(NODE))
            .endpoint(endpoint("10.0.0.7").node(NODE))
            .build(),
        SliceInput::NoServiceLabel => {
            let mut s = slice(j, 0);
            s.metadata.labels = None;
            s
        }
        SliceInput::NoName => {
            let mut s = slice(j, 0);
            s.metadata.name = None;
            s
        }
    }
}

fn slice_input_strategy() -> impl Strategy<Value = SliceInput> {
    prop_oneof![
        3 => any::<u8>().prop_map(SliceInput::Valid),
        1 => any::<u8>().prop_map(SliceInput::BadFields),
        1 => Just(SliceInput::NoServiceLabel),
        1 => Just(SliceInput::NoName),
    ]
}

/// A Node update, ours or not, valid or not.
#[derive(Clone, Debug)]
enum NodeInput {
    Ours(u8),
    /// Ours, with an address that is not an IP (skipped).
    OursBadAddress(u8),
    /// Another node: not ours, ignored.
    Other(u8),
    /// No name: unusable.
    NoName,
}

fn node_input(input: &NodeInput) -> Node {
    match input {
        NodeInput::Ours(z) => our_node(*z),
        NodeInput::OursBadAddress(z) => {
            let mut n = our_node(*z);
            if let Some(a) = n.status.as_mut().and_then(|s| s.addresses.as_mut()) {
                a[0].address = "192.168.0.999".into();
            }
            n
        }
        NodeInput::Other(z) => node("node-2", "192.168.0.2", Some(if z % 2 == 0 { "a" } else { "b" })),
        NodeInput::NoName => node("", "192.168.0.1", Some("a")),
    }
}

fn node_input_strategy() -> impl Strategy<Value = NodeInput> {
    prop_oneof![
        2 => any::<u8>().prop_map(NodeInput::Ours),
        1 => any::<u8>().prop_map(NodeInput::OursBadAddress),
        1 => any::<u8>().prop_map(NodeInput::Other),
        1 => Just(NodeInput::NoName),
    ]
}

#[derive(Clone, Debug)]
enum Ev {
    /// `Apply`, or `InitApply` when the bool says so.
    Service(usize, SvcInput, bool),
    DeleteService(usize),
    Slice(usize, SliceInput, bool),
    DeleteSlice(usize),
    Node(NodeInput, bool),
    /// Delete our Node (true) or another one.
    DeleteNode(bool),
    Init(Resource),
    /// Also without a preceding `Init`.
    InitDone(Resource),
    Cut,
    Finish(bool),
}

fn resource() -> impl Strategy<Value = Resource> {
    prop_oneof![Just(Resource::Services), Just(Resource::EndpointSlices), Just(Resource::Node)]
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        4 => (0..SERVICES, svc_input_strategy(), any::<bool>()).prop_map(|(i, v, init)| Ev::Service(i, v, init)),
        1 => (0..SERVICES).prop_map(Ev::DeleteService),
        4 => (0..SLICES, slice_input_strategy(), any::<bool>()).prop_map(|(j, v, init)| Ev::Slice(j, v, init)),
        1 => (0..SLICES).prop_map(Ev::DeleteSlice),
        2 => (node_input_strategy(), any::<bool>()).prop_map(|(n, init)| Ev::Node(n, init)),
        1 => any::<bool>().prop_map(Ev::DeleteNode),
        2 => resource().prop_map(Ev::Init),
        2 => resource().prop_map(Ev::InitDone),
        2 => Just(Ev::Cut),
        2 => any::<bool>().prop_map(Ev::Finish),
    ]
}

/// What the valid events describe, replayed by kube-proxy's rules.
#[derive(Debug, Default)]
struct Model {
    services: BTreeMap<usize, Service>,
    slices: BTreeMap<usize, EndpointSlice>,
    node: Option<Node>,
    /// Keys named since `Init`, while a (re)list runs.
    relisting_services: Option<std::collections::BTreeSet<usize>>,
    relisting_slices: Option<std::collections::BTreeSet<usize>>,
    /// Whether our Node was named since `Init`.
    relisting_node: Option<bool>,
}

impl Model {
    fn service(&mut self, i: usize, input: &SvcInput, obj: Service) {
        if matches!(input, SvcInput::NoName) {
            return;
        }
        if let Some(seen) = self.relisting_services.as_mut() {
            seen.insert(i);
        }
        if input.usable() {
            self.services.insert(i, obj);
        }
    }

    fn slice(&mut self, j: usize, input: &SliceInput, obj: EndpointSlice) {
        if !input.usable() {
            return;
        }
        if let Some(seen) = self.relisting_slices.as_mut() {
            seen.insert(j);
        }
        if matches!(input, SliceInput::NoServiceLabel) {
            self.slices.remove(&j);
        } else {
            self.slices.insert(j, obj);
        }
    }

    fn node(&mut self, input: &NodeInput, obj: Node) {
        if let NodeInput::Ours(_) | NodeInput::OursBadAddress(_) = input {
            if let Some(seen) = self.relisting_node.as_mut() {
                *seen = true;
            }
            self.node = Some(obj);
        }
    }

    fn init(&mut self, r: Resource) {
        match r {
            Resource::Services => self.relisting_services = Some(Default::default()),
            Resource::EndpointSlices => self.relisting_slices = Some(Default::default()),
            Resource::Node => self.relisting_node = Some(false),
        }
    }

    /// A (re)list ends: what it did not name is gone. Without `Init`, nothing is.
    fn init_done(&mut self, r: Resource) {
        match r {
            Resource::Services => {
                if let Some(seen) = self.relisting_services.take() {
                    self.services.retain(|i, _| seen.contains(i));
                }
            }
            Resource::EndpointSlices => {
                if let Some(seen) = self.relisting_slices.take() {
                    self.slices.retain(|j, _| seen.contains(j));
                }
            }
            Resource::Node => {
                if self.relisting_node.take() == Some(false) {
                    self.node = None;
                }
            }
        }
    }
}

fn event(ev: &Ev) -> Option<ProxyEvent> {
    fn wrap<K>(init: bool, k: K) -> ResourceEvent<K> {
        if init { ResourceEvent::InitApply(k) } else { ResourceEvent::Apply(k) }
    }
    Some(match ev {
        Ev::Service(i, input, init) => ProxyEvent::Service(wrap(*init, svc_input(*i, input))),
        Ev::DeleteService(i) => ProxyEvent::Service(ResourceEvent::Delete(service(*i, 0))),
        Ev::Slice(j, input, init) => ProxyEvent::EndpointSlice(wrap(*init, slice_input(*j, input))),
        Ev::DeleteSlice(j) => ProxyEvent::EndpointSlice(ResourceEvent::Delete(slice(*j, 0))),
        Ev::Node(input, init) => ProxyEvent::Node(wrap(*init, node_input(input))),
        Ev::DeleteNode(ours) => {
            let n = if *ours { our_node(0) } else { node_input(&NodeInput::Other(0)) };
            ProxyEvent::Node(ResourceEvent::Delete(n))
        }
        Ev::Init(r) => bracket(*r, true),
        Ev::InitDone(r) => bracket(*r, false),
        Ev::Cut | Ev::Finish(_) => return None,
    })
}

fn bracket(r: Resource, init: bool) -> ProxyEvent {
    match (r, init) {
        (Resource::Services, true) => ProxyEvent::Service(ResourceEvent::Init),
        (Resource::Services, false) => ProxyEvent::Service(ResourceEvent::InitDone),
        (Resource::EndpointSlices, true) => ProxyEvent::EndpointSlice(ResourceEvent::Init),
        (Resource::EndpointSlices, false) => ProxyEvent::EndpointSlice(ResourceEvent::InitDone),
        (Resource::Node, true) => ProxyEvent::Node(ResourceEvent::Init),
        (Resource::Node, false) => ProxyEvent::Node(ResourceEvent::InitDone),
    }
}

/// Whether the tracker must ignore this event entirely.
fn invalid(ev: &Ev) -> bool {
    match ev {
        Ev::Service(_, input, _) => !input.usable(),
        Ev::Slice(_, input, _) => !input.usable(),
        Ev::Node(input, _) => matches!(input, NodeInput::NoName | NodeInput::Other(_)),
        Ev::DeleteNode(ours) => !ours,
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn valid_and_invalid_events_leave_the_state_the_valid_objects_describe(
        events in proptest::collection::vec(ev(), 0..80),
    ) {
        let mut t = fresh_tracker();
        let mut model = Model::default();
        let mut kernel = Kernel::new();
        let mut in_flight: Option<SyncBatch> = None;
        // Whether an event reached the tracker since the in-flight batch was cut.
        let mut since_cut = false;
        let mut first_sync_done = false;

        for ev in &events {
            match ev {
                Ev::Cut => {
                    // The Proxier cuts only once the initial lists are done.
                    if in_flight.is_none() && t.is_synced() {
                        in_flight = Some(t.take_batch());
                        since_cut = false;
                    }
                }
                Ev::Finish(ok) => {
                    if let Some(b) = in_flight.take() {
                        if *ok {
                            if first_sync_done {
                                apply_partial(&mut kernel, &b);
                            } else {
                                // The first sync is full.
                                kernel = plans(&b.snapshot);
                                first_sync_done = true;
                            }
                            t.commit(b);
                            if !since_cut {
                                prop_assert!(!t.has_pending(), "pending after a commit with nothing queued since its cut");
                                prop_assert_eq!(t.pending_counts(), (0, 0));
                            }
                        } else {
                            t.restore(b);
                        }
                    }
                }
                other => {
                    let Some(event) = event(other) else { continue };
                    let before = plans(&t.snapshot());
                    let before_node = t.node().cloned();
                    let report = t.apply(event);
                    since_cut = true;
                    if invalid(other) {
                        prop_assert!(!report.changed, "{other:?} changed the state");
                        prop_assert_eq!(&plans(&t.snapshot()), &before, "{:?} changed a plan", other);
                        prop_assert_eq!(t.node().cloned(), before_node, "{:?} changed the Node", other);
                    }
                    match other {
                        Ev::Service(i, input, _) => model.service(*i, input, svc_input(*i, input)),
                        Ev::DeleteService(i) => { model.services.remove(i); }
                        Ev::Slice(j, input, _) => model.slice(*j, input, slice_input(*j, input)),
                        Ev::DeleteSlice(j) => { model.slices.remove(j); }
                        Ev::Node(input, _) => model.node(input, node_input(input)),
                        Ev::DeleteNode(true) => model.node = None,
                        Ev::DeleteNode(false) => {}
                        Ev::Init(r) => model.init(*r),
                        Ev::InitDone(r) => model.init_done(*r),
                        Ev::Cut | Ev::Finish(_) => {}
                    }
                }
            }
        }

        // End every (re)list still running, and complete the initial lists
        // (a stray InitDone: deletes nothing).
        for r in [Resource::Services, Resource::EndpointSlices, Resource::Node] {
            let running = match r {
                Resource::Services => model.relisting_services.is_some(),
                Resource::EndpointSlices => model.relisting_slices.is_some(),
                Resource::Node => model.relisting_node.is_some(),
            };
            if running || t.unsynced().contains(&r) {
                t.apply(bracket(r, false));
                model.init_done(r);
            }
        }
        prop_assert!(t.is_synced());
        if let Some(b) = in_flight.take() {
            if first_sync_done { apply_partial(&mut kernel, &b); } else { kernel = plans(&b.snapshot); first_sync_done = true; }
            t.commit(b);
        }
        let last = t.take_batch();
        if first_sync_done { apply_partial(&mut kernel, &last); } else { kernel = plans(&last.snapshot); }
        let final_plans = plans(&last.snapshot);
        t.commit(last);
        prop_assert!(!t.has_pending());
        prop_assert_eq!(t.pending_counts(), (0, 0));

        let mut fresh = fresh_tracker();
        let services = model.services.values().cloned().collect();
        let slices = model.slices.values().cloned().collect();
        for ev in initial_list(services, slices, model.node.clone()) {
            fresh.apply(ev);
        }
        prop_assert_eq!(&plans(&fresh.snapshot()), &final_plans, "the state differs from what the valid objects describe");
        prop_assert_eq!(fresh.node().cloned(), t.node().cloned(), "the Node differs");
        prop_assert_eq!(&kernel, &final_plans, "applying the change sets did not reproduce the state");
    }
}
