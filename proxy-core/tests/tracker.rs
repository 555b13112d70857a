//! The change tracker: coalescing, the initial-list gate, slice merging,
//! relists, bad input, and batches that succeed or fail.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proxy_core::testing::{ServiceBuilder, SliceBuilder, endpoint, initial_list, node};
use proxy_core::tracker::ANNOTATION_LAST_CHANGE_TRIGGER_TIME;
use proxy_core::*;

const NODE: &str = "node-1";

fn tracker() -> ChangeTracker {
    ChangeTracker::new(TrackerConfig::new(PlannerConfig::new(NODE)))
}

fn synced(services: Vec<Service>, slices: Vec<EndpointSlice>) -> ChangeTracker {
    let mut t = tracker();
    for ev in initial_list(services, slices, Some(node(NODE, "192.168.0.1", Some("a")))) {
        t.apply(ev);
    }
    let b = t.take_batch();
    t.commit(b);
    assert!(!t.has_pending());
    t
}

fn svc(name: &str, ip: &str) -> Service {
    ServiceBuilder::new("ns", name, ip).port("http", 80, "TCP").build()
}

fn slice(name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
    ips.iter()
        .fold(SliceBuilder::new("ns", name, service).port("http", 8080, "TCP"), |s, ip| s.endpoint(endpoint(ip)))
        .build()
}

fn apply_svc(t: &mut ChangeTracker, s: Service) -> bool {
    t.apply(ProxyEvent::Service(ResourceEvent::Apply(s))).changed
}

fn apply_slice(t: &mut ChangeTracker, s: EndpointSlice) -> bool {
    t.apply(ProxyEvent::EndpointSlice(ResourceEvent::Apply(s))).changed
}

fn name(n: &str) -> ServiceName {
    ServiceName::new("ns", n)
}

/// The endpoints ClusterIP traffic of `service`'s first port reaches.
fn endpoints_of(t: &mut ChangeTracker, service: &str) -> BTreeSet<String> {
    let snap = t.snapshot();
    let plan = snap.service(&name(service)).expect("service planned");
    plan.ports[0].internal().endpoints().iter().map(|e| e.addr().to_string()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn nothing_is_programmed_before_every_initial_list_is_done() {
    let mut t = tracker();
    assert!(!t.is_synced());
    t.apply(ProxyEvent::Service(ResourceEvent::Init));
    t.apply(ProxyEvent::Service(ResourceEvent::InitApply(svc("a", "10.96.0.1"))));
    t.apply(ProxyEvent::Service(ResourceEvent::InitDone));
    assert!(!t.is_synced(), "slices still listing");
    t.apply(ProxyEvent::EndpointSlice(ResourceEvent::Init));
    t.apply(ProxyEvent::EndpointSlice(ResourceEvent::InitDone));
    assert_eq!(t.unsynced(), vec![tracker::Resource::Node]);
    t.apply(ProxyEvent::Node(ResourceEvent::Init));
    t.apply(ProxyEvent::Node(ResourceEvent::InitDone));
    assert!(t.is_synced(), "a missing Node does not block once its list is done");

    let mut cfg = TrackerConfig::new(PlannerConfig::new(NODE));
    cfg.wait_for_node = false;
    let mut t = ChangeTracker::new(cfg);
    for ev in initial_list(vec![], vec![], None).into_iter().take(4) {
        t.apply(ev);
    }
    assert!(t.is_synced(), "without a Node source only Services and slices gate");
}

#[test]
fn a_to_b_to_c_is_a_to_c_and_a_to_b_to_a_is_nothing() {
    let mut t = synced(vec![svc("a", "10.96.0.1")], vec![slice("a-1", "a", &["10.0.0.1"])]);
    let orig = slice("a-1", "a", &["10.0.0.1"]);
    assert!(apply_slice(&mut t, slice("a-1", "a", &["10.0.0.2"])));
    assert!(apply_slice(&mut t, orig.clone()));
    assert!(!t.has_pending(), "returned to where it started");
    let b = t.take_batch();
    assert!(b.changed.is_empty());
    t.commit(b);

    assert!(apply_slice(&mut t, slice("a-1", "a", &["10.0.0.2"])));
    assert!(apply_slice(&mut t, slice("a-1", "a", &["10.0.0.3"])));
    assert_eq!(t.pending_counts(), (0, 1));
    let b = t.take_batch();
    assert_eq!(b.changed, BTreeSet::from([name("a")]));
    assert_eq!(b.change_counts(), (0, 1), "two updates of one slice are one change");
    t.commit(b);
    assert_eq!(endpoints_of(&mut t, "a"), set(&["10.0.0.3:8080"]));

    // Service A→B→A.
    let changed = ServiceBuilder::new("ns", "a", "10.96.0.1").port("http", 81, "TCP").build();
    assert!(apply_svc(&mut t, changed));
    assert!(apply_svc(&mut t, svc("a", "10.96.0.1")));
    assert!(!t.has_pending());
    // An identical re-apply is not a change at all.
    assert!(!apply_svc(&mut t, svc("a", "10.96.0.1")));
}

#[test]
fn irrelevant_fields_do_not_count_as_changes() {
    let mut t = synced(vec![svc("a", "10.96.0.1")], vec![]);
    let mut s = svc("a", "10.96.0.1");
    s.metadata.annotations = Some([("x".to_string(), "y".to_string())].into());
    s.metadata.resource_version = Some("42".into());
    s.spec.as_mut().unwrap().selector = Some([("app".to_string(), "web".to_string())].into());
    assert!(!apply_svc(&mut t, s));
    assert!(!t.has_pending());
}

#[test]
fn the_change_set_holds_only_services_whose_plan_changed() {
    let mut t = synced(
        vec![svc("a", "10.96.0.1"), svc("b", "10.96.0.2"), svc("c", "10.96.0.3")],
        vec![slice("a-1", "a", &["10.0.0.1"]), slice("b-1", "b", &["10.0.0.2"])],
    );
    apply_slice(&mut t, slice("a-1", "a", &["10.0.0.9"]));
    // Splitting b's slice into two with the same endpoints changes no plan.
    apply_slice(&mut t, slice("b-1", "b", &[]));
    apply_slice(&mut t, slice("b-2", "b", &["10.0.0.2"]));
    t.apply(ProxyEvent::Service(ResourceEvent::Delete(svc("c", "10.96.0.3"))));
    let b = t.take_batch();
    assert_eq!(b.changed, BTreeSet::from([name("a"), name("c")]));
    assert!(b.snapshot.service(&name("c")).is_none());
    assert!(!b.full_required);
    t.commit(b);
}

#[test]
fn a_failed_batch_loses_nothing() {
    let mut t = synced(vec![svc("a", "10.96.0.1")], vec![slice("a-1", "a", &["10.0.0.1"])]);
    apply_slice(&mut t, slice("a-1", "a", &["10.0.0.2"]));
    let b = t.take_batch();
    assert!(!t.has_pending(), "the batch holds the change while it is in flight");
    t.restore(b);
    assert!(t.has_pending());
    let b = t.take_batch();
    assert_eq!(b.changed, BTreeSet::from([name("a")]));
    t.commit(b);
    assert!(!t.has_pending());
}

#[test]
fn a_change_reverted_while_its_batch_failed_is_nothing() {
    let mut t = synced(vec![svc("a", "10.96.0.1")], vec![slice("a-1", "a", &["10.0.0.1"])]);
    apply_slice(&mut t, slice("a-1", "a", &["10.0.0.2"]));
    let b = t.take_batch();
    apply_slice(&mut t, slice("a-1", "a", &["10.0.0.1"]));
    t.restore(b);
    assert!(!t.has_pending(), "the kernel still has the original, which is current again");
}

#[test]
fn a_change_reverted_while_its_batch_succeeded_is_programmed_next() {
    let mut t = synced(vec![svc("a", "10.96.0.1")], vec![slice("a-1", "a", &["10.0.0.1"])]);
    apply_slice(&mut t, slice("a-1", "a", &["10.0.0.2"]));
    let b = t.take_batch();
    apply_slice(&mut t, slice("a-1", "a", &["10.0.0.1"]));
    t.commit(b);
    assert!(t.has_pending());
    let b = t.take_batch();
    assert_eq!(b.changed, BTreeSet::from([name("a")]));
    assert_eq!(
        b.snapshot.service(&name("a")).unwrap().ports[0].internal().endpoints()[0].addr().to_string(),
        "10.0.0.1:8080"
    );
}

#[test]
fn slices_arriving_before_their_service_are_used_when_it_arrives() {
    let mut t = synced(vec![], vec![]);
    apply_slice(&mut t, slice("a-1", "a", &["10.0.0.1"]));
    assert!(t.snapshot().service(&name("a")).is_none());
    apply_svc(&mut t, svc("a", "10.96.0.1"));
    assert_eq!(endpoints_of(&mut t, "a"), set(&["10.0.0.1:8080"]));
    // A deleted Service keeps its slices for when it comes back.
    t.apply(ProxyEvent::Service(ResourceEvent::Delete(svc("a", "10.96.0.1"))));
    assert!(t.snapshot().service(&name("a")).is_none());
    apply_svc(&mut t, svc("a", "10.96.0.1"));
    assert_eq!(endpoints_of(&mut t, "a"), set(&["10.0.0.1:8080"]));
}

#[test]
fn a_relist_deletes_what_vanished() {
    let mut t = synced(
        vec![svc("a", "10.96.0.1"), svc("b", "10.96.0.2")],
        vec![slice("a-1", "a", &["10.0.0.1"]), slice("b-1", "b", &["10.0.0.2"])],
    );
    // The watch expired (410) and relisted: b and its slice are gone.
    t.apply(ProxyEvent::Service(ResourceEvent::Init));
    t.apply(ProxyEvent::Service(ResourceEvent::InitApply(svc("a", "10.96.0.1"))));
    t.apply(ProxyEvent::Service(ResourceEvent::InitDone));
    t.apply(ProxyEvent::EndpointSlice(ResourceEvent::Init));
    t.apply(ProxyEvent::EndpointSlice(ResourceEvent::InitApply(slice("a-1", "a", &["10.0.0.1"]))));
    t.apply(ProxyEvent::EndpointSlice(ResourceEvent::InitDone));
    let b = t.take_batch();
    assert_eq!(b.changed, BTreeSet::from([name("b")]));
    assert_eq!(b.snapshot.len(), 1);
    assert_eq!(t.slice_count(), 1);
}

#[test]
fn an_invalid_update_keeps_the_previous_value() {
    let mut t = synced(vec![svc("a", "10.96.0.1")], vec![slice("a-1", "a", &["10.0.0.1"])]);
    let bad = ServiceBuilder::new("ns", "a", "not-an-ip").port("http", 80, "TCP").build();
    let report = t.apply(ProxyEvent::Service(ResourceEvent::Apply(bad)));
    assert!(!report.changed);
    assert_eq!(report.errors.len(), 1);
    assert_eq!(report.errors[0].object, "ns/a");
    assert_eq!(endpoints_of(&mut t, "a"), set(&["10.0.0.1:8080"]));

    // A partially bad object applies what is good and reports the rest.
    let partial = ServiceBuilder::new("ns", "a", "10.96.0.1").port("http", 80, "TCP").port("x", 99999, "TCP").build();
    let report = t.apply(ProxyEvent::Service(ResourceEvent::Apply(partial)));
    assert!(!report.changed, "the bad port is skipped, the rest is unchanged");
    assert_eq!(report.errors[0].field, "spec.ports[1].port");
}

#[test]
fn a_service_moving_to_another_proxy_is_removed() {
    let mut t = synced(vec![svc("a", "10.96.0.1")], vec![]);
    let relabelled = ServiceBuilder::new("ns", "a", "10.96.0.1")
        .port("http", 80, "TCP")
        .label(convert::LABEL_SERVICE_PROXY_NAME, "other")
        .build();
    assert!(apply_svc(&mut t, relabelled));
    assert!(t.snapshot().service(&name("a")).is_none());
}

#[test]
fn a_zone_change_on_our_node_replans_everything() {
    let hinted = SliceBuilder::new("ns", "a-1", "a")
        .port("http", 8080, "TCP")
        .endpoint(endpoint("10.0.0.1").zone_hints(&["a"]))
        .endpoint(endpoint("10.0.0.2").zone_hints(&["b"]))
        .build();
    let mut t = synced(vec![svc("a", "10.96.0.1")], vec![hinted]);
    assert_eq!(endpoints_of(&mut t, "a"), set(&["10.0.0.1:8080"]));
    t.apply(ProxyEvent::Node(ResourceEvent::Apply(node(NODE, "192.168.0.1", Some("b")))));
    let b = t.take_batch();
    assert!(b.full_required);
    assert_eq!(b.changed, BTreeSet::from([name("a")]));
    t.commit(b);
    assert_eq!(endpoints_of(&mut t, "a"), set(&["10.0.0.2:8080"]));
    // Another node's object is ignored.
    let report = t.apply(ProxyEvent::Node(ResourceEvent::Apply(node("node-9", "192.168.0.9", Some("c")))));
    assert!(!report.changed);
}

#[test]
fn commit_reports_latencies_from_queue_and_trigger_time() {
    let mut t = synced(vec![svc("a", "10.96.0.1")], vec![]);
    let s = SliceBuilder::new("ns", "a-1", "a")
        .port("http", 8080, "TCP")
        .endpoint(endpoint("10.0.0.1"))
        .annotation(ANNOTATION_LAST_CHANGE_TRIGGER_TIME, "2020-01-01T00:00:00Z")
        .build();
    apply_slice(&mut t, s);
    let b = t.take_batch();
    let r = t.commit(b);
    assert_eq!(r.queued_to_programmed.len(), 1);
    assert_eq!(r.trigger_to_programmed.len(), 1);
    assert!(r.trigger_to_programmed[0] > Duration::from_secs(365 * 86400), "measured from 2020");
}

// The cases of kube-proxy's endpointslicecache / endpoints change tracker tests.

#[test]
fn upstream_named_port_rename() {
    let mut t = synced(
        vec![ServiceBuilder::new("ns", "a", "10.96.0.1").port("p80", 80, "TCP").build()],
        vec![SliceBuilder::new("ns", "a-1", "a").port("p80", 8080, "TCP").endpoint(endpoint("10.0.0.1")).build()],
    );
    assert_eq!(endpoints_of(&mut t, "a"), set(&["10.0.0.1:8080"]));
    // The Service renames its port; the slice still uses the old name: no endpoints.
    apply_svc(&mut t, ServiceBuilder::new("ns", "a", "10.96.0.1").port("p8080", 80, "TCP").build());
    assert!(endpoints_of(&mut t, "a").is_empty());
    assert_eq!(*t.snapshot().service(&name("a")).unwrap().ports[0].internal(), Route::Reject);
    // The controller catches up.
    apply_slice(
        &mut t,
        SliceBuilder::new("ns", "a-1", "a").port("p8080", 8080, "TCP").endpoint(endpoint("10.0.0.1")).build(),
    );
    assert_eq!(endpoints_of(&mut t, "a"), set(&["10.0.0.1:8080"]));
}

#[test]
fn upstream_port_renumbering() {
    let mut t = synced(vec![svc("a", "10.96.0.1")], vec![slice("a-1", "a", &["10.0.0.1"])]);
    apply_slice(
        &mut t,
        SliceBuilder::new("ns", "a-1", "a").port("http", 9090, "TCP").endpoint(endpoint("10.0.0.1")).build(),
    );
    assert_eq!(endpoints_of(&mut t, "a"), set(&["10.0.0.1:9090"]));
}

#[test]
fn upstream_slices_split_and_merged() {
    let mut t = synced(vec![svc("a", "10.96.0.1")], vec![slice("a-1", "a", &["10.0.0.1", "10.0.0.2", "10.0.0.3"])]);
    apply_slice(&mut t, slice("a-1", "a", &["10.0.0.1"]));
    apply_slice(&mut t, slice("a-2", "a", &["10.0.0.2", "10.0.0.3"]));
    assert_eq!(endpoints_of(&mut t, "a"), set(&["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]));
    let b = t.take_batch();
    assert!(b.changed.is_empty(), "split without endpoint changes is not a plan change");
    t.commit(b);
    // Merge back, with a duplicate in flight (both slices list 10.0.0.2 for a moment).
    apply_slice(&mut t, slice("a-1", "a", &["10.0.0.1", "10.0.0.2", "10.0.0.3"]));
    assert_eq!(endpoints_of(&mut t, "a").len(), 3, "duplicates across slices are kept once");
    t.apply(ProxyEvent::EndpointSlice(ResourceEvent::Delete(slice("a-2", "a", &[]))));
    assert_eq!(endpoints_of(&mut t, "a").len(), 3);
}

#[test]
fn upstream_local_and_remote_endpoints() {
    let s = SliceBuilder::new("ns", "a-1", "a")
        .port("http", 8080, "TCP")
        .endpoint(endpoint("10.0.0.1").node(NODE))
        .endpoint(endpoint("10.0.0.2").node("node-2"))
        .build();
    let mut t = synced(
        vec![
            ServiceBuilder::new("ns", "a", "10.96.0.1")
                .port("http", 80, "TCP")
                .internal_traffic_policy("Local")
                .build(),
        ],
        vec![s],
    );
    assert_eq!(endpoints_of(&mut t, "a"), set(&["10.0.0.1:8080"]));
    let snap = t.snapshot();
    let eps = snap.service(&name("a")).unwrap().ports[0].internal();
    assert!(eps.endpoints().iter().all(|e| e.is_local));
}

#[test]
fn upstream_protocol_mismatch_and_multiple_ports() {
    let s = SliceBuilder::new("ns", "a-1", "a")
        .port("dns", 53, "UDP")
        .port("dns-tcp", 53, "TCP")
        .endpoint(endpoint("10.0.0.1"))
        .build();
    let service = ServiceBuilder::new("ns", "a", "10.96.0.1").port("dns", 53, "UDP").port("dns-tcp", 53, "TCP").build();
    let mut t = synced(vec![service], vec![s]);
    let snap = t.snapshot();
    let plan = snap.service(&name("a")).unwrap();
    assert_eq!(plan.ports.len(), 2);
    for p in &plan.ports {
        assert_eq!(p.internal().endpoints().len(), 1, "{:?}", p.name);
        assert_eq!(p.internal().endpoints()[0].port, 53);
    }
    // A slice port whose protocol differs from the Service's does not match.
    apply_slice(
        &mut t,
        SliceBuilder::new("ns", "a-1", "a").port("dns", 53, "TCP").endpoint(endpoint("10.0.0.1")).build(),
    );
    let snap = t.snapshot();
    assert_eq!(*snap.service(&name("a")).unwrap().ports[0].internal(), Route::Reject);
}

/// The snapshot's index of healthCheckNodePorts follows plan changes (the
/// health-check servers read it instead of walking every plan).
#[test]
fn health_check_index_follows_plans() {
    let lb = |policy: &str, hc: Option<i32>| {
        let b = ServiceBuilder::new("ns", "lb", "10.96.0.5")
            .type_("LoadBalancer")
            .node_port("http", 80, "TCP", 30080)
            .external_traffic_policy(policy);
        match hc {
            Some(p) => b.health_check_node_port(p).build(),
            None => b.build(),
        }
    };
    let ports = |t: &mut ChangeTracker| -> Vec<Option<u16>> {
        t.snapshot().health_check_port_plans().map(|p| p.health_check_node_port).collect()
    };
    let mut t = synced(vec![lb("Local", Some(32000)), svc("plain", "10.96.0.6")], vec![]);
    assert_eq!(ports(&mut t), vec![Some(32000)]);
    t.apply(ProxyEvent::Service(ResourceEvent::Apply(lb("Local", Some(32001)))));
    assert_eq!(ports(&mut t), vec![Some(32001)]);
    t.apply(ProxyEvent::Service(ResourceEvent::Apply(lb("Cluster", None))));
    assert_eq!(ports(&mut t), Vec::<Option<u16>>::new(), "Cluster policy has no health check");
    t.apply(ProxyEvent::Service(ResourceEvent::Apply(lb("Local", Some(32002)))));
    t.apply(ProxyEvent::Service(ResourceEvent::Delete(lb("Local", Some(32002)))));
    assert_eq!(ports(&mut t), Vec::<Option<u16>>::new(), "deleted");
}

/// Only our Node counts: another Node's deletion, or a relist that names
/// only other Nodes, says nothing about ours until the list ends without
/// it; a stray InitDone (no Init) ended no list and deletes nothing.
/// Found by `tracker_props::valid_and_invalid_events_leave_the_state_the_valid_objects_describe`.
#[test]
fn only_our_node_and_only_a_real_relist_remove_our_node() {
    let ours = node(NODE, "192.168.0.1", Some("a"));
    let other = node("node-2", "192.168.0.2", Some("b"));
    let mut t = tracker();
    for ev in initial_list(vec![], vec![], Some(ours.clone())) {
        t.apply(ev);
    }
    assert!(t.node().is_some());

    // Another node's deletion (a manifest directory lists every Node).
    let report = t.apply(ProxyEvent::Node(ResourceEvent::Delete(other.clone())));
    assert!(!report.changed && t.node().is_some(), "deleting node-2 removed ours");

    // A stray InitDone.
    let report = t.apply(ProxyEvent::Node(ResourceEvent::InitDone));
    assert!(!report.changed && t.node().is_some(), "an InitDone without Init removed our Node");

    // A relist with only another Node: ours is gone when it ends.
    t.apply(ProxyEvent::Node(ResourceEvent::Init));
    t.apply(ProxyEvent::Node(ResourceEvent::InitApply(other)));
    assert!(t.node().is_some(), "not before the list ends");
    let report = t.apply(ProxyEvent::Node(ResourceEvent::InitDone));
    assert!(report.changed && t.node().is_none(), "a relist without our Node kept it");

    // Our own deletion still removes it.
    t.apply(ProxyEvent::Node(ResourceEvent::Apply(ours.clone())));
    assert!(t.node().is_some());
    assert!(t.apply(ProxyEvent::Node(ResourceEvent::Delete(ours))).changed);
    assert!(t.node().is_none());
}
