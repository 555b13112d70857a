//! The flow table and the decisions only the planner makes: contested
//! frontends (the oldest Service serves them) and the hairpin set.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::collections::BTreeSet;
use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proxy_core::testing::{ServiceBuilder, SliceBuilder, endpoint, initial_list, node};
use proxy_core::*;

const NODE: &str = "node-1";

fn synced(services: Vec<Service>, slices: Vec<EndpointSlice>) -> ChangeTracker {
    let mut t = ChangeTracker::new(TrackerConfig::new(PlannerConfig::new(NODE)));
    for ev in initial_list(services, slices, Some(node(NODE, "192.168.0.1", None))) {
        t.apply(ev);
    }
    let b = t.take_batch();
    t.commit(b);
    t
}

fn name(n: &str) -> ServiceName {
    ServiceName::new("ns", n)
}

fn ext(name: &str, cip: &str, created: i64) -> Service {
    ServiceBuilder::new("ns", name, cip).port("http", 80, "TCP").external_ips(&["203.0.113.1"]).created(created).build()
}

fn slice(service: &str, ip: &str) -> EndpointSlice {
    SliceBuilder::new("ns", &format!("{service}-1"), service)
        .port("http", 8080, "TCP")
        .endpoint(endpoint(ip).node(NODE))
        .build()
}

/// The frontends a Service's first port serves.
fn served(snap: &Snapshot, service: &str) -> BTreeSet<String> {
    snap.service(&name(service)).unwrap().ports[0].frontends().map(|f| f.to_string()).collect()
}

#[test]
fn the_oldest_service_serves_a_contested_frontend() {
    // "a" sorts first but was created later.
    let mut t = synced(
        vec![ext("a", "10.96.0.1", 2000), ext("b", "10.96.0.2", 1000)],
        vec![slice("a", "10.0.0.1"), slice("b", "10.0.0.2")],
    );
    let snap = t.snapshot();
    assert_eq!(served(&snap, "b"), BTreeSet::from(["10.96.0.2:80/tcp".into(), "203.0.113.1:80/tcp".into()]));
    assert_eq!(served(&snap, "a"), BTreeSet::from(["10.96.0.1:80/tcp".to_string()]));
    let a = &snap.service(&name("a")).unwrap().ports[0];
    assert_eq!(a.contested.len(), 1);
    // Exactly one row for the address in all flow tables, and it is b's.
    let rows: Vec<_> = snap
        .flow_tables()
        .flat_map(|(p, t)| t.frontends.iter().map(move |f| (p.name.service.clone(), f.frontend)).collect::<Vec<_>>())
        .filter(|(_, f)| f.ip == Some("203.0.113.1".parse().unwrap()))
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, name("b"));
    // The expected state agrees.
    let state = snap.expected_state();
    let fe = state.frontends.iter().find(|(f, _)| f.ip == Some("203.0.113.1".parse().unwrap())).unwrap();
    assert_eq!(fe.1.service.as_deref(), Some("ns/b:http"));

    // The winner goes: "a" takes over, and the batch says "a" changed
    // although nothing of "a" itself did.
    t.apply(ProxyEvent::Service(ResourceEvent::Delete(ext("b", "10.96.0.2", 1000))));
    let batch = t.take_batch();
    assert!(batch.changed.contains(&name("a")), "{:?}", batch.changed);
    assert!(served(&batch.snapshot, "a").contains("203.0.113.1:80/tcp"));
    t.commit(batch);

    // A newer claimant does not take it back.
    t.apply(ProxyEvent::Service(ResourceEvent::Apply(ext("c", "10.96.0.3", 3000))));
    let batch = t.take_batch();
    assert!(served(&batch.snapshot, "a").contains("203.0.113.1:80/tcp"));
    assert!(!served(&batch.snapshot, "c").contains("203.0.113.1:80/tcp"));
}

/// Without timestamps (manifests on disk) the order is namespace/name, and
/// a Service with a timestamp precedes one without.
#[test]
fn contested_frontends_without_timestamps_go_by_name() {
    let plain = |n: &str, cip: &str| {
        ServiceBuilder::new("ns", n, cip).port("http", 80, "TCP").external_ips(&["203.0.113.1"]).build()
    };
    let mut t = synced(vec![plain("b", "10.96.0.2"), plain("a", "10.96.0.1")], vec![]);
    let snap = t.snapshot();
    assert!(served(&snap, "a").contains("203.0.113.1:80/tcp"));
    assert!(!served(&snap, "b").contains("203.0.113.1:80/tcp"));
    let mut t = synced(vec![plain("a", "10.96.0.1"), ext("b", "10.96.0.2", 5)], vec![]);
    assert!(served(&t.snapshot(), "b").contains("203.0.113.1:80/tcp"));
}

fn hairpin(svc: Service, eps: &[(&str, Option<&str>)]) -> BTreeSet<SocketAddr> {
    let slice = eps
        .iter()
        .fold(SliceBuilder::new("ns", "w-1", "w").port("http", 8080, "TCP"), |s, (ip, node)| match node {
            Some(n) => s.endpoint(endpoint(ip).node(n)),
            None => s.endpoint(endpoint(ip)),
        })
        .build();
    let mut t = synced(vec![svc], vec![slice]);
    let snap = t.snapshot();
    let masq = MasqueradeConfig { all: false, cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()] };
    let table = snap.service(&name("w")).unwrap().ports[0].flow_table(&masq);
    table.hairpin.into_iter().collect()
}

fn addrs(a: &[&str]) -> BTreeSet<SocketAddr> {
    a.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn the_hairpin_set() {
    let eps = [("10.0.1.1", Some(NODE)), ("10.0.2.1", Some("node-2")), ("10.0.3.1", None)];
    // Local endpoints and endpoints of unknown node: remote pods' ClusterIP
    // and policy-Cluster traffic is proxied (or masqueraded) elsewhere.
    let cluster = ServiceBuilder::new("ns", "w", "10.96.0.9").node_port("http", 80, "TCP", 30080).type_("NodePort");
    assert_eq!(hairpin(cluster.clone().build(), &eps), addrs(&["10.0.1.1:8080", "10.0.3.1:8080"]));
    // Policy Local: pods anywhere keep their source at the node port and
    // reach every endpoint, so a remote one can be sent back to itself.
    let local = cluster.external_traffic_policy("Local").build();
    assert_eq!(hairpin(local, &eps), addrs(&["10.0.1.1:8080", "10.0.2.1:8080", "10.0.3.1:8080"]));
}

/// Every cell of every table is `flow_for_class`, routes are named, and
/// the route a cell names is the one `flow()` forwards to.
#[test]
fn tables_are_the_planners_decisions() {
    let svc = ServiceBuilder::new("ns", "w", "10.96.0.9")
        .type_("LoadBalancer")
        .node_port("http", 80, "TCP", 30080)
        .load_balancer_ip("203.0.113.5", None)
        .source_ranges(&["198.51.100.0/24"])
        .external_traffic_policy("Local")
        .build();
    let slice = SliceBuilder::new("ns", "w-1", "w")
        .port("http", 8080, "TCP")
        .endpoint(endpoint("10.0.1.1").node(NODE))
        .endpoint(endpoint("10.0.2.1").node("node-2"))
        .build();
    let mut t = synced(vec![svc], vec![slice]);
    let snap = t.snapshot();
    let masq = MasqueradeConfig { all: false, cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()] };
    let plan = &snap.service(&name("w")).unwrap().ports[0];
    let table = plan.flow_table(&masq);
    assert_eq!(table.routes.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![RouteId::Cluster, RouteId::Local]);
    assert_eq!(table.frontends.len(), 3);
    for f in &table.frontends {
        for (class, cell) in f.classes() {
            assert_eq!(*cell, plan.flow_for_class(f.frontend.kind, class, &masq));
            let flow = plan.flow(f.frontend.kind, "198.51.100.7".parse().unwrap(), class, &masq);
            assert_eq!(&flow.route, table.route(cell.route), "{} {class:?}", f.frontend);
        }
    }
    let lb = table.frontends.iter().find(|f| f.frontend.kind == FrontendKind::LoadBalancer).unwrap();
    assert!(lb.external.source_ranges && lb.pod.source_ranges && !lb.node.source_ranges);
    assert_eq!(lb.external.route, RouteId::Local);
    assert_eq!(lb.pod.route, RouteId::Cluster);
    assert_eq!(lb.masquerade_set(), MasqueradeSet { pod: false, node: true, external: false });
}

/// The core names the stale UDP flows after a change: a port that lost an
/// endpoint, for each of its frontends, with the endpoints still allowed.
#[test]
fn stale_udp_flows_are_the_cores_answer() {
    use proxy_core::stale::{FrontendMatch, stale_udp};
    let svc = ServiceBuilder::new("ns", "dns", "10.96.0.10").port("dns", 53, "UDP").build();
    let with = |ips: &[&str]| {
        let slice = ips
            .iter()
            .fold(SliceBuilder::new("ns", "dns-1", "dns").port("dns", 53, "UDP"), |s, ip| s.endpoint(endpoint(ip)))
            .build();
        let mut t = synced(vec![svc.clone()], vec![slice]);
        t.snapshot().service(&name("dns")).unwrap().clone()
    };
    let (two, one) = (with(&["10.0.0.1", "10.0.0.2"]), with(&["10.0.0.1"]));
    let stale = stale_udp(IpFamily::V4, Some(&two), Some(&one), false);
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert_eq!(stale[0].frontend, FrontendMatch::Address("10.96.0.10:53".parse().unwrap()));
    assert!(stale[0].matches("10.96.0.10:53".parse().unwrap(), "10.0.0.2:53".parse().unwrap()));
    assert!(!stale[0].matches("10.96.0.10:53".parse().unwrap(), "10.0.0.1:53".parse().unwrap()));
    // Gaining an endpoint strands nothing, unless it is the first one.
    assert!(stale_udp(IpFamily::V4, Some(&one), Some(&two), false).is_empty());
    let none = with(&[]);
    assert_eq!(stale_udp(IpFamily::V4, Some(&none), Some(&one), false).len(), 1);
}

/// A backend that keeps the snapshot of its last sync asks the core once
/// per sync: partial requests look at the changed Services, full ones at
/// every Service whose plan differs, and without an old snapshot every UDP
/// port is checked.
#[test]
fn stale_udp_of_a_sync() {
    use proxy_core::stale::{StaleIndex, stale_udp_of_sync};
    let svc = ServiceBuilder::new("ns", "dns", "10.96.0.10").port("dns", 53, "UDP").build();
    let web = ServiceBuilder::new("ns", "web", "10.96.0.11").port("http", 80, "TCP").build();
    let snap = |ips: &[&str]| {
        let slice = ips
            .iter()
            .fold(SliceBuilder::new("ns", "dns-1", "dns").port("dns", 53, "UDP"), |s, ip| s.endpoint(endpoint(ip)))
            .build();
        synced(vec![svc.clone(), web.clone()], vec![slice]).snapshot()
    };
    let (two, one) = (snap(&["10.0.0.1", "10.0.0.2"]), snap(&["10.0.0.1"]));
    let request = |full: bool, changed: &[&str]| SyncRequest {
        snapshot: one.clone(),
        changed: std::sync::Arc::new(changed.iter().map(|n| name(n)).collect()),
        full,
    };
    let index = |work: std::collections::BTreeMap<IpFamily, Vec<_>>| StaleIndex::new(work.values().flatten());
    let (dst, gone, kept) =
        ("10.96.0.10:53".parse().unwrap(), "10.0.0.2:53".parse().unwrap(), "10.0.0.1:53".parse().unwrap());

    let partial = index(stale_udp_of_sync(IpFamily::ALL, Some(&two), &request(false, &["dns"]), false));
    assert!(partial.matches(dst, gone) && !partial.matches(dst, kept));
    // A partial request that does not name the Service checks nothing.
    assert!(index(stale_udp_of_sync(IpFamily::ALL, Some(&two), &request(false, &["web"]), false)).is_empty());
    // A full one compares every Service.
    let full = index(stale_udp_of_sync(IpFamily::ALL, Some(&two), &request(true, &[]), false));
    assert!(full.matches(dst, gone) && !full.matches(dst, kept));
    // Nothing changed: nothing to check.
    assert!(index(stale_udp_of_sync(IpFamily::ALL, Some(&one), &request(true, &[]), false)).is_empty());
    // No old snapshot (a start): every UDP port is checked against its endpoints now.
    let start = index(stale_udp_of_sync(IpFamily::ALL, None, &request(false, &[]), true));
    assert!(start.matches(dst, gone) && start.matches(dst, dst) && !start.matches(dst, kept));
}
