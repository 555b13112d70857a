//! Shared fixtures: one documented address plan for every test.
//!
//! | what | IPv4 | IPv6 |
//! |---|---|---|
//! | cluster CIDR (pods) | 10.0.0.0/8 | fd00:10::/48 |
//! | pods on this node (node-1) | 10.180.0.0/24 | fd00:10:0:0::/64 |
//! | pods on node-2 | 10.180.1.0/24 | fd00:10:0:1::/64 |
//! | Service CIDR | 172.30.0.0/16 | fd00:30::/108 |
//! | this node's address | 192.168.0.2 | fd00:1::2 |
//! | another node's address | 192.168.0.3 | fd00:1::3 |
//! | externalIPs | 192.168.99.0/24 | fd00:99::/64 |
//! | load-balancer IPs | 5.6.7.0/24 | fd00:5::/64 |
//! | clients outside the cluster | 203.0.113.0/24 (sourceRanges allow 203.0.113.0/25), 198.51.100.9 | 2001:db8::/32 |

#![allow(dead_code, reason = "each test binary uses a different part")]
#![allow(clippy::unwrap_used, reason = "fixtures panic when broken")]

pub mod lab;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use backend_iptables::{IptablesDataplane, Settings, fake::FakeIptables};
use proxy_core::testing::{EndpointBuilder, ServiceBuilder, SliceBuilder, endpoint, initial_list, node};
use proxy_core::{
    ChangeTracker, FamilySet, MasqueradeConfig, NetNamespace, PlannerConfig, ProxyEvent, ResourceEvent, ServiceName,
    Snapshot, SyncRequest, TrackerConfig,
};

pub const NODE: &str = "node-1";
pub const NODE_IP: &str = "192.168.0.2";
pub const NODE_IP6: &str = "fd00:1::2";

pub fn masquerade() -> MasqueradeConfig {
    MasqueradeConfig { all: false, cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap(), "fd00:10::/48".parse().unwrap()] }
}

pub fn planner(families: FamilySet, masq: MasqueradeConfig) -> PlannerConfig {
    let mut p = PlannerConfig::new(NODE);
    p.families = families;
    p.masquerade = masq;
    p
}

pub fn settings(families: FamilySet) -> Settings {
    let mut s = Settings::new(NetNamespace::current());
    s.families = families;
    s.node_ips = vec![NODE_IP.parse().unwrap(), NODE_IP6.parse().unwrap()];
    s.cluster_cidrs = masquerade().cluster_cidrs;
    s
}

pub fn node_addresses() -> Vec<IpAddr> {
    vec![NODE_IP.parse().unwrap(), NODE_IP6.parse().unwrap()]
}

/// A tracker fed with the objects' initial list.
pub fn tracker(
    config: PlannerConfig,
    services: Vec<proxy_core::testing::ServiceBuilder>,
    slices: Vec<SliceBuilder>,
) -> ChangeTracker {
    let mut t = ChangeTracker::new(TrackerConfig::new(config));
    let events = initial_list(
        services.into_iter().map(ServiceBuilder::build).collect(),
        slices.into_iter().map(SliceBuilder::build).collect(),
        Some(node(NODE, NODE_IP, None)),
    );
    for e in events {
        t.apply(e);
    }
    t
}

pub fn apply_slice(t: &mut ChangeTracker, slice: SliceBuilder) {
    t.apply(ProxyEvent::EndpointSlice(ResourceEvent::Apply(slice.build())));
}

pub fn apply_service(t: &mut ChangeTracker, svc: ServiceBuilder) {
    t.apply(ProxyEvent::Service(ResourceEvent::Apply(svc.build())));
}

pub fn request(snapshot: Arc<Snapshot>, changed: &[&str], full: bool) -> SyncRequest {
    let changed: BTreeSet<ServiceName> = changed
        .iter()
        .map(|s| {
            let (ns, name) = s.split_once('/').unwrap();
            ServiceName::new(ns, name)
        })
        .collect();
    SyncRequest { snapshot, changed: Arc::new(changed), full }
}

pub fn fake_dataplane(families: FamilySet) -> (IptablesDataplane, Arc<FakeIptables>) {
    let fake = Arc::new(FakeIptables::new());
    (IptablesDataplane::with_executor(settings(families), fake.clone()), fake)
}

fn local(ip: &str) -> EndpointBuilder {
    endpoint(ip).node(NODE)
}

fn remote(ip: &str) -> EndpointBuilder {
    endpoint(ip).node("node-2")
}

fn slice(ns: &str, name: &str, svc: &str, port: (&str, i32, &str), eps: Vec<EndpointBuilder>) -> SliceBuilder {
    let mut s = SliceBuilder::new(ns, name, svc).port(port.0, port.1, port.2);
    for e in eps {
        s = s.endpoint(e);
    }
    s
}

/// The Services of the flow table: one per behaviour, IPv4.
pub fn catalog() -> (Vec<ServiceBuilder>, Vec<SliceBuilder>) {
    let svc = ServiceBuilder::new;
    let services = vec![
        // Plain ClusterIP, one local and one remote endpoint.
        svc("ns1", "basic", "172.30.0.41").port("http", 80, "TCP"),
        // No endpoints: REJECT.
        svc("ns1", "noeps", "172.30.0.42").port("http", 80, "TCP"),
        // NodePort, externalTrafficPolicy Cluster.
        svc("ns1", "nodeport", "172.30.0.43").node_port("http", 80, "TCP", 3001),
        // LoadBalancer, externalTrafficPolicy Local, with local endpoints.
        svc("ns1", "lb-local", "172.30.0.44")
            .node_port("http", 80, "TCP", 3002)
            .load_balancer_ip("5.6.7.8", None)
            .external_traffic_policy("Local")
            .health_check_node_port(30000),
        // LoadBalancer, externalTrafficPolicy Local, no local endpoint: outside traffic dropped.
        svc("ns1", "lb-remote", "172.30.0.45")
            .node_port("http", 80, "TCP", 3003)
            .load_balancer_ip("5.6.7.9", None)
            .external_traffic_policy("Local")
            .health_check_node_port(30001),
        // loadBalancerSourceRanges.
        svc("ns1", "ranges", "172.30.0.46")
            .node_port("http", 80, "TCP", 3004)
            .load_balancer_ip("5.6.7.10", None)
            .source_ranges(&["203.0.113.0/25"]),
        // loadBalancerSourceRanges, no endpoints.
        svc("ns1", "ranges-noeps", "172.30.0.47")
            .port("http", 80, "TCP")
            .load_balancer_ip("5.6.7.11", None)
            .source_ranges(&["203.0.113.0/25"]),
        // externalIPs.
        svc("ns1", "extip", "172.30.0.48").port("http", 80, "TCP").external_ips(&["192.168.99.11"]),
        // sessionAffinity ClientIP.
        svc("ns1", "affinity", "172.30.0.49").port("http", 80, "TCP").affinity(Some(600)),
        // internalTrafficPolicy Local.
        svc("ns1", "itp-local", "172.30.0.50").port("http", 80, "TCP").internal_traffic_policy("Local"),
        // internalTrafficPolicy Local without local endpoints: DROP.
        svc("ns1", "itp-none", "172.30.0.51").port("http", 80, "TCP").internal_traffic_policy("Local"),
        // UDP and SCTP.
        svc("ns2", "dns", "172.30.0.52").port("dns", 53, "UDP").port("dns-tcp", 53, "TCP"),
        svc("ns2", "sctp", "172.30.0.53").port("", 9999, "SCTP"),
        // Several ports, target ports resolved per endpoint by name.
        svc("ns2", "multi", "172.30.0.54").port("http", 80, "TCP").port("metrics", 9100, "TCP"),
        // Only terminating endpoints: the fallback uses them.
        svc("ns2", "terminating", "172.30.0.55").port("http", 80, "TCP"),
        // externalIPs with externalTrafficPolicy Local, no local endpoint.
        svc("ns2", "extip-local", "172.30.0.56")
            .port("http", 80, "TCP")
            .external_ips(&["192.168.99.12"])
            .external_traffic_policy("Local"),
        // NodePort without endpoints: REJECT on the node port too.
        svc("ns2", "np-noeps", "172.30.0.57").node_port("http", 80, "UDP", 3005),
        // A Service with many endpoints (spreading).
        svc("ns2", "wide", "172.30.0.58").port("http", 80, "TCP"),
        // Hostile names must not break the rules.
        svc("ns-evil", "quote-\"x", "172.30.0.59").port("p\"0 -j ACCEPT", 80, "TCP"),
    ];
    let slices = vec![
        slice("ns1", "basic-1", "basic", ("http", 8080, "TCP"), vec![local("10.180.0.1"), remote("10.180.1.1")]),
        slice("ns1", "nodeport-1", "nodeport", ("http", 8080, "TCP"), vec![local("10.180.0.3"), remote("10.180.1.3")]),
        slice("ns1", "lb-local-1", "lb-local", ("http", 8080, "TCP"), vec![local("10.180.0.4"), remote("10.180.1.4")]),
        slice(
            "ns1",
            "lb-remote-1",
            "lb-remote",
            ("http", 8080, "TCP"),
            vec![remote("10.180.1.5"), remote("10.180.1.6")],
        ),
        slice("ns1", "ranges-1", "ranges", ("http", 8080, "TCP"), vec![remote("10.180.1.7")]),
        slice("ns1", "extip-1", "extip", ("http", 8080, "TCP"), vec![local("10.180.0.8"), remote("10.180.1.8")]),
        slice(
            "ns1",
            "affinity-1",
            "affinity",
            ("http", 8080, "TCP"),
            vec![local("10.180.0.9"), remote("10.180.1.9"), remote("10.180.1.10")],
        ),
        slice(
            "ns1",
            "itp-local-1",
            "itp-local",
            ("http", 8080, "TCP"),
            vec![local("10.180.0.11"), remote("10.180.1.11")],
        ),
        slice("ns1", "itp-none-1", "itp-none", ("http", 8080, "TCP"), vec![remote("10.180.1.12")]),
        slice("ns2", "dns-1", "dns", ("dns", 5353, "UDP"), vec![local("10.180.0.13"), remote("10.180.1.13")]),
        slice("ns2", "dns-2", "dns", ("dns-tcp", 5353, "TCP"), vec![local("10.180.0.13"), remote("10.180.1.13")]),
        slice("ns2", "sctp-1", "sctp", ("", 9999, "SCTP"), vec![remote("10.180.1.14")]),
        // Two slices with different target ports for the same port name.
        slice("ns2", "multi-a", "multi", ("http", 8080, "TCP"), vec![remote("10.180.1.15")]),
        slice("ns2", "multi-b", "multi", ("http", 8081, "TCP"), vec![local("10.180.0.15")]),
        slice("ns2", "multi-m", "multi", ("metrics", 9100, "TCP"), vec![remote("10.180.1.15"), local("10.180.0.15")]),
        slice(
            "ns2",
            "terminating-1",
            "terminating",
            ("http", 8080, "TCP"),
            vec![remote("10.180.1.16").terminating(), local("10.180.0.16").terminating().serving(false)],
        ),
        slice("ns2", "extip-local-1", "extip-local", ("http", 8080, "TCP"), vec![remote("10.180.1.17")]),
        slice(
            "ns2",
            "wide-1",
            "wide",
            ("http", 8080, "TCP"),
            (1..=7)
                .map(|i| {
                    if i % 2 == 0 {
                        local(&format!("10.180.0.{}", 100 + i))
                    } else {
                        remote(&format!("10.180.1.{}", 100 + i))
                    }
                })
                .collect(),
        ),
        slice("ns-evil", "evil-1", "quote-\"x", ("p\"0 -j ACCEPT", 80, "TCP"), vec![remote("10.180.1.18")]),
    ];
    (services, slices)
}

/// Dual-stack Services for the IPv6 side.
pub fn catalog_v6() -> (Vec<ServiceBuilder>, Vec<SliceBuilder>) {
    let services = vec![
        ServiceBuilder::new("v6", "dual", "172.30.1.1")
            .cluster_ips(&["172.30.1.1", "fd00:30::1"])
            .node_port("http", 80, "TCP", 3101),
        ServiceBuilder::new("v6", "lb6", "fd00:30::2")
            .cluster_ips(&["fd00:30::2"])
            .node_port("http", 80, "TCP", 3102)
            .load_balancer_ip("fd00:5::8", None)
            .external_traffic_policy("Local")
            .health_check_node_port(30100)
            .affinity(Some(100)),
        ServiceBuilder::new("v6", "none6", "fd00:30::3").cluster_ips(&["fd00:30::3"]).port("dns", 53, "UDP"),
    ];
    let slices = vec![
        slice("v6", "dual-4", "dual", ("http", 8080, "TCP"), vec![local("10.180.0.60"), remote("10.180.1.60")]),
        slice("v6", "dual-6", "dual", ("http", 8080, "TCP"), vec![local("fd00:10::60"), remote("fd00:10:0:1::60")])
            .address_type("IPv6"),
        slice("v6", "lb6-6", "lb6", ("http", 8080, "TCP"), vec![local("fd00:10::61"), remote("fd00:10:0:1::61")])
            .address_type("IPv6"),
    ];
    (services, slices)
}
