//! Snapshots for unit tests.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proxy_core::testing::{EndpointBuilder, ServiceBuilder, SliceBuilder, endpoint, initial_list};
use proxy_core::{ChangeTracker, MasqueradeConfig, PlannerConfig, Snapshot, TrackerConfig};

pub const NODE: &str = "node-a";
pub const NODE_IP: &str = "192.168.0.10";

pub fn masq() -> MasqueradeConfig {
    MasqueradeConfig { all: false, cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")] }
}

pub fn snapshot(services: Vec<Service>, slices: Vec<EndpointSlice>, masq: MasqueradeConfig) -> Arc<Snapshot> {
    let mut planner = PlannerConfig::new(NODE);
    planner.masquerade = masq;
    let mut cfg = TrackerConfig::new(planner);
    cfg.wait_for_node = false;
    let mut tracker = ChangeTracker::new(cfg);
    for ev in initial_list(services, slices, None) {
        tracker.apply(ev);
    }
    tracker.snapshot()
}

pub fn slice_of(name: &str, service: &str, port: i32, proto: &str, eps: Vec<EndpointBuilder>) -> EndpointSlice {
    slice(name, service, port, proto, eps)
}

fn slice(name: &str, service: &str, port: i32, proto: &str, eps: Vec<EndpointBuilder>) -> EndpointSlice {
    let mut s = SliceBuilder::new("default", name, service).port("", port, proto);
    for ep in eps {
        s = s.endpoint(ep);
    }
    s.build()
}

/// One Service of every shape the planner distinguishes.
pub fn sample_snapshot() -> Arc<Snapshot> {
    let local = |ip: &str| endpoint(ip).node(NODE);
    let remote = |ip: &str| endpoint(ip).node("node-b");
    let services = vec![
        ServiceBuilder::new("default", "web", "10.96.0.10").port("", 80, "TCP").build(),
        ServiceBuilder::new("default", "dns", "10.96.0.53").port("", 53, "UDP").affinity(Some(60)).build(),
        ServiceBuilder::new("default", "np-local", "10.96.0.20")
            .node_port("", 80, "TCP", 30080)
            .external_traffic_policy("Local")
            .external_ips(&["192.168.0.100"])
            .build(),
        ServiceBuilder::new("default", "np-nolocal", "10.96.0.21")
            .node_port("", 80, "TCP", 30081)
            .external_traffic_policy("Local")
            .build(),
        ServiceBuilder::new("default", "lb", "10.96.0.30")
            .node_port("", 443, "TCP", 30443)
            .load_balancer_ip("198.51.100.7", None)
            .source_ranges(&["203.0.113.0/24"])
            .build(),
        ServiceBuilder::new("default", "empty", "10.96.0.40").node_port("", 80, "TCP", 30040).build(),
        ServiceBuilder::new("default", "term", "10.96.0.50").port("", 80, "TCP").build(),
        ServiceBuilder::new("default", "itp-local", "10.96.0.60")
            .port("", 80, "TCP")
            .internal_traffic_policy("Local")
            .build(),
    ];
    let slices = vec![
        slice("web-1", "web", 8080, "TCP", vec![local("10.244.1.5"), remote("10.244.2.5")]),
        slice("dns-1", "dns", 5353, "UDP", vec![local("10.244.1.6"), remote("10.244.2.6")]),
        slice("np-local-1", "np-local", 8080, "TCP", vec![local("10.244.1.7"), remote("10.244.2.7")]),
        slice("np-nolocal-1", "np-nolocal", 8080, "TCP", vec![remote("10.244.2.8")]),
        slice("lb-1", "lb", 8443, "TCP", vec![local("10.244.1.9")]),
        slice(
            "term-1",
            "term",
            8080,
            "TCP",
            vec![local("10.244.1.10").ready(false).terminating(), remote("10.244.2.10").ready(false)],
        ),
        slice("itp-local-1", "itp-local", 8080, "TCP", vec![remote("10.244.2.11")]),
    ];
    snapshot(services, slices, masq())
}
