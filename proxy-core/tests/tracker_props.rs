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
