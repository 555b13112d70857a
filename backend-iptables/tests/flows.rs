//! The packet-flow table: every frontend of every Service in the catalog,
//! from every class of source, traced through the rendered rules and compared
//! with `ServicePortPlan::flow` — the same table the conformance lab plays
//! with real packets. No root needed: the rules go to the fake iptables.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions panic on broken fixtures")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use backend_iptables::parse::Ruleset;
use backend_iptables::trace::{Host, Outcome, Packet, Tracer, Verdict};
use common::*;
use proxy_core::{FamilySet, FrontendKind, IpFamily, Protocol, Route, ServicePortPlan, Snapshot, SourceClass};

struct Source {
    ip: IpAddr,
    from_node: bool,
}

fn sources(family: IpFamily, p: &ServicePortPlan) -> Vec<Source> {
    let s = |ip: &str, from_node| Source { ip: ip.parse().unwrap(), from_node };
    let mut out = match family {
        IpFamily::V4 => vec![
            s("10.180.0.200", false), // a pod on this node
            s("10.180.1.200", false), // a pod on node-2
            s(NODE_IP, true),         // the node itself
            s("127.0.0.1", true),     // the node, over loopback
            s("192.168.0.3", false),  // another node's host network
            s("203.0.113.9", false),  // outside, inside sourceRanges
            s("198.51.100.9", false), // outside, outside sourceRanges
        ],
        IpFamily::V6 => vec![
            s("fd00:10::200", false),
            s("fd00:10:0:1::200", false),
            s(NODE_IP6, true),
            s("fd00:1::3", false),
            s("2001:db8::9", false),
        ],
    };
    // Hairpin: each endpoint reaching its own Service (whether it is
    // masqueraded is the core's hairpin set, checked by `masquerades_to`).
    let mut local = BTreeSet::new();
    for (_, r) in p.routes() {
        local.extend(r.endpoints().iter().map(|e| e.ip()));
    }
    out.extend(local.into_iter().map(|ip| Source { ip, from_node: false }));
    out
}

/// Checks traced outcomes against the planner's decision; returns what differs.
fn compare(
    outcomes: &[Outcome],
    p: &ServicePortPlan,
    kind: FrontendKind,
    src: IpAddr,
    class: SourceClass,
    snapshot: &Snapshot,
) -> Result<(), String> {
    let flow = p.flow(kind, src, class, snapshot.masquerade());
    match &flow.route {
        Route::Forward(eps) => {
            let want: BTreeMap<SocketAddr, &proxy_core::Endpoint> = eps.iter().map(|e| (e.addr(), e)).collect();
            let mut prob: BTreeMap<SocketAddr, f64> = BTreeMap::new();
            for o in outcomes {
                let Some(dnat) = o.dnat.filter(|_| o.verdict == Verdict::Accept) else {
                    return Err(format!("expected endpoints {:?}, got {o:?}", want.keys()));
                };
                let Some(ep) = want.get(&dnat) else {
                    return Err(format!("reached {dnat}, not an endpoint of {:?}", want.keys()));
                };
                let masq = flow.masquerades_to(src, ep);
                if o.masquerade != masq {
                    return Err(format!("to {dnat}: masquerade {} but the plan says {masq}", o.masquerade));
                }
                *prob.entry(dnat).or_default() += o.probability;
            }
            let n = want.len() as f64;
            for ep in want.keys() {
                let p = prob.get(ep).copied().unwrap_or(0.0);
                if (p - 1.0 / n).abs() > 1e-6 {
                    return Err(format!("{ep} reached with probability {p}, want {}", 1.0 / n));
                }
            }
        }
        Route::Reject | Route::Drop => {
            let v = if flow.route == Route::Reject { Verdict::Reject } else { Verdict::Drop };
            if outcomes.is_empty() || outcomes.iter().any(|o| o.verdict != v || o.dnat.is_some()) {
                return Err(format!("expected {v:?}, got {outcomes:?}"));
            }
        }
    }
    Ok(())
}

fn run_table(
    families: FamilySet,
    catalog: (Vec<proxy_core::testing::ServiceBuilder>, Vec<proxy_core::testing::SliceBuilder>),
    leaf_max: usize,
) -> usize {
    let (services, slices) = catalog;
    let mut t = tracker(planner(families, masquerade()), services, slices);
    let snapshot = t.snapshot();
    let fake = std::sync::Arc::new(backend_iptables::fake::FakeIptables::new());
    let mut s = settings(families);
    s.leaf_max = leaf_max;
    let dp = backend_iptables::IptablesDataplane::with_executor(s, fake.clone());
    dp.sync_blocking(&request(snapshot.clone(), &[], true)).expect("sync");
    let mut checked = 0;
    let mut failures = Vec::new();
    for family in families.iter() {
        let rs: Ruleset = fake.ruleset(family);
        let host = Host::new(node_addresses());
        let tracer = Tracer::new(&rs, &host);
        let node_ip: IpAddr = if family == IpFamily::V4 { NODE_IP.parse().unwrap() } else { NODE_IP6.parse().unwrap() };
        for p in snapshot.port_plans().filter(|p| p.family == family) {
            for fe in p.frontends() {
                for src in sources(family, p) {
                    let dst = fe.ip.unwrap_or(if src.ip.is_loopback() { src.ip } else { node_ip });
                    if fe.kind != FrontendKind::NodePort && src.ip.is_loopback() {
                        continue;
                    }
                    let class = snapshot.classify_source(src.ip, &node_addresses());
                    let packet =
                        Packet { src: src.ip, dst, protocol: fe.protocol, dport: fe.port, from_node: src.from_node };
                    let outcomes = tracer.trace(&packet, &BTreeSet::new()).expect("trace");
                    if let Err(e) = compare(&outcomes, p, fe.kind, src.ip, class, &snapshot) {
                        failures.push(format!("{} {fe} from {} ({class:?}): {e}", p.name, src.ip));
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} flows differ from the plan:\n{}",
        failures.len(),
        failures.join("\n")
    );
    checked
}

#[test]
fn every_flow_matches_the_plan_ipv4() {
    let n = run_table(FamilySet::V4, catalog(), 64);
    assert!(n >= 200, "only {n} flows checked");
}

/// The same with tiny leaves, so every frontend sits deep in the dispatch trees.
#[test]
fn every_flow_matches_the_plan_through_deep_trees() {
    run_table(FamilySet::V4, catalog(), 2);
    run_table(FamilySet::DUAL, catalog_v6(), 1);
}

#[test]
fn every_flow_matches_the_plan_dual_stack() {
    let n = run_table(FamilySet::DUAL, catalog_v6(), 64);
    assert!(n >= 50, "only {n} flows checked");
}

/// The same flows with --masquerade-all, and with local-traffic detection off.
#[test]
fn every_flow_matches_with_other_masquerade_settings() {
    for masq in [
        proxy_core::MasqueradeConfig { all: true, cluster_cidrs: masquerade().cluster_cidrs },
        proxy_core::MasqueradeConfig::default(),
    ] {
        let (services, slices) = catalog();
        let mut t = tracker(planner(FamilySet::V4, masq.clone()), services, slices);
        let snapshot = t.snapshot();
        let (dp, fake) = fake_dataplane(FamilySet::V4);
        dp.sync_blocking(&request(snapshot.clone(), &[], true)).unwrap();
        let rs = fake.ruleset(IpFamily::V4);
        let host = Host::new(node_addresses());
        let tracer = Tracer::new(&rs, &host);
        for p in snapshot.port_plans() {
            for fe in p.frontends() {
                for src in sources(IpFamily::V4, p).into_iter().filter(|s| !s.ip.is_loopback()) {
                    let dst = fe.ip.unwrap_or(NODE_IP.parse().unwrap());
                    let class = snapshot.classify_source(src.ip, &node_addresses());
                    let packet =
                        Packet { src: src.ip, dst, protocol: fe.protocol, dport: fe.port, from_node: src.from_node };
                    let outcomes = tracer.trace(&packet, &BTreeSet::new()).unwrap();
                    compare(&outcomes, p, fe.kind, src.ip, class, &snapshot)
                        .unwrap_or_else(|e| panic!("{masq:?} {} {fe} from {}: {e}", p.name, src.ip));
                }
            }
        }
    }
}

/// Expected results written out, for people reading the table (and to pin
/// the planner's semantics as this backend understands them).
#[test]
fn literal_flow_table() {
    let (services, slices) = catalog();
    let mut t = tracker(planner(FamilySet::V4, masquerade()), services, slices);
    let snapshot = t.snapshot();
    let (dp, fake) = fake_dataplane(FamilySet::V4);
    dp.sync_blocking(&request(snapshot, &[], true)).unwrap();
    let rs = fake.ruleset(IpFamily::V4);
    let host = Host::new(node_addresses());
    let tracer = Tracer::new(&rs, &host);
    use Protocol::*;
    // (source, from node, protocol, destination, port) -> endpoints | REJECT | DROP, masquerade
    let table: &[(&str, bool, Protocol, &str, u16, &str, bool)] = &[
        ("10.180.0.200", false, Tcp, "172.30.0.41", 80, "10.180.0.1:8080 10.180.1.1:8080", false),
        ("203.0.113.9", false, Tcp, "172.30.0.41", 80, "10.180.0.1:8080 10.180.1.1:8080", true),
        ("192.168.0.2", true, Tcp, "172.30.0.41", 80, "10.180.0.1:8080 10.180.1.1:8080", true),
        ("10.180.0.200", false, Tcp, "172.30.0.42", 80, "REJECT", false),
        ("203.0.113.9", false, Tcp, "192.168.0.2", 3001, "10.180.0.3:8080 10.180.1.3:8080", true),
        ("127.0.0.1", true, Tcp, "127.0.0.1", 3001, "10.180.0.3:8080 10.180.1.3:8080", true),
        ("203.0.113.9", false, Tcp, "5.6.7.8", 80, "10.180.0.4:8080", false),
        ("203.0.113.9", false, Tcp, "192.168.0.2", 3002, "10.180.0.4:8080", false),
        ("10.180.1.200", false, Tcp, "5.6.7.8", 80, "10.180.0.4:8080 10.180.1.4:8080", false),
        ("203.0.113.9", false, Tcp, "5.6.7.9", 80, "DROP", false),
        ("10.180.0.200", false, Tcp, "5.6.7.9", 80, "10.180.1.5:8080 10.180.1.6:8080", false),
        ("192.168.0.2", true, Tcp, "5.6.7.9", 80, "10.180.1.5:8080 10.180.1.6:8080", true),
        ("203.0.113.9", false, Tcp, "5.6.7.10", 80, "10.180.1.7:8080", true),
        ("198.51.100.9", false, Tcp, "5.6.7.10", 80, "DROP", false),
        ("192.168.0.2", true, Tcp, "5.6.7.10", 80, "10.180.1.7:8080", true),
        ("198.51.100.9", false, Tcp, "192.168.0.2", 3004, "10.180.1.7:8080", true),
        ("203.0.113.9", false, Tcp, "5.6.7.11", 80, "REJECT", false),
        ("198.51.100.9", false, Tcp, "5.6.7.11", 80, "DROP", false),
        ("203.0.113.9", false, Tcp, "192.168.99.11", 80, "10.180.0.8:8080 10.180.1.8:8080", true),
        ("10.180.0.200", false, Tcp, "172.30.0.50", 80, "10.180.0.11:8080", false),
        ("10.180.0.200", false, Tcp, "172.30.0.51", 80, "DROP", false),
        ("10.180.0.200", false, Udp, "172.30.0.52", 53, "10.180.0.13:5353 10.180.1.13:5353", false),
        ("10.180.0.200", false, Sctp, "172.30.0.53", 9999, "10.180.1.14:9999", false),
        ("10.180.0.200", false, Tcp, "172.30.0.54", 80, "10.180.0.15:8081 10.180.1.15:8080", false),
        ("10.180.0.200", false, Tcp, "172.30.0.55", 80, "10.180.1.16:8080", false),
        ("203.0.113.9", false, Tcp, "192.168.99.12", 80, "DROP", false),
        ("10.180.0.200", false, Tcp, "192.168.99.12", 80, "10.180.1.17:8080", false),
        ("203.0.113.9", false, Udp, "192.168.0.2", 3005, "REJECT", false),
        ("203.0.113.9", false, Tcp, "172.30.0.41", 81, "NONE", false),
    ];
    for &(src, from_node, protocol, dst, port, want, masq) in table {
        let packet = Packet { src: src.parse().unwrap(), dst: dst.parse().unwrap(), protocol, dport: port, from_node };
        let outcomes = tracer.trace(&packet, &BTreeSet::new()).unwrap();
        let what = match want {
            "REJECT" => outcomes.iter().all(|o| o.verdict == Verdict::Reject && o.dnat.is_none()),
            "DROP" => outcomes.iter().all(|o| o.verdict == Verdict::Drop && o.dnat.is_none()),
            "NONE" => outcomes.iter().all(|o| o.verdict == Verdict::Accept && o.dnat.is_none() && !o.masquerade),
            eps => {
                let want: BTreeSet<SocketAddr> = eps.split(' ').map(|e| e.parse().unwrap()).collect();
                let got: BTreeSet<SocketAddr> = outcomes.iter().filter_map(|o| o.dnat).collect();
                got == want && outcomes.iter().all(|o| o.verdict == Verdict::Accept && o.masquerade == masq)
            }
        };
        assert!(what, "{src} -> {dst}:{port}/{protocol}: want {want} (masquerade {masq}), got {outcomes:#?}");
    }
    // Hairpin: a pod reaching itself through its Service is masqueraded, others are not.
    let packet = Packet {
        src: "10.180.0.1".parse().unwrap(),
        dst: "172.30.0.41".parse().unwrap(),
        protocol: Tcp,
        dport: 80,
        from_node: false,
    };
    for o in tracer.trace(&packet, &BTreeSet::new()).unwrap() {
        let hairpin = o.dnat == Some("10.180.0.1:8080".parse().unwrap());
        assert_eq!(o.masquerade, hairpin, "{o:?}");
    }
}

/// ClientIP affinity: the second connection of a client lands where the first did.
#[test]
fn affinity_sticks() {
    let (services, slices) = catalog();
    let mut t = tracker(planner(FamilySet::V4, masquerade()), services, slices);
    let (dp, fake) = fake_dataplane(FamilySet::V4);
    dp.sync_blocking(&request(t.snapshot(), &[], true)).unwrap();
    let rs = fake.ruleset(IpFamily::V4);
    let host = Host::new(node_addresses());
    let tracer = Tracer::new(&rs, &host);
    let packet = Packet {
        src: "10.180.1.200".parse().unwrap(),
        dst: "172.30.0.49".parse().unwrap(),
        protocol: Protocol::Tcp,
        dport: 80,
        from_node: false,
    };
    let first = tracer.trace(&packet, &BTreeSet::new()).unwrap();
    assert_eq!(first.len(), 3);
    for o in first {
        assert_eq!(o.affinity_seconds, Some(600));
        let again = tracer.trace(&packet, &o.recent_set).unwrap();
        assert_eq!(again.len(), 1, "{again:?}");
        assert_eq!(again[0].dnat, o.dnat);
        assert!((again[0].probability - 1.0).abs() < 1e-9);
    }
}
