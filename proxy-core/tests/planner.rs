//! The planner: kube-proxy's endpoint categorization and the flow decisions.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proxy_core::convert::{Conversion, ConvertContext, endpoint_slice_from_k8s, service_from_k8s};
use proxy_core::planner::{TopologyMode, categorize, plan_service, topology_mode};
use proxy_core::testing::{EndpointBuilder, ServiceBuilder, SliceBuilder, endpoint, node};
use proxy_core::*;

const NODE: &str = "node-1";

fn cfg() -> PlannerConfig {
    let mut c = PlannerConfig::new(NODE);
    c.masquerade.cluster_cidrs = vec!["10.0.0.0/16".parse().unwrap()];
    c
}

fn plan(svc: Service, slices: Vec<EndpointSlice>, zone: Option<&str>) -> ServicePlan {
    plan_with(svc, slices, zone, &cfg())
}

fn plan_with(svc: Service, slices: Vec<EndpointSlice>, zone: Option<&str>, cfg: &PlannerConfig) -> ServicePlan {
    let ctx = ConvertContext { families: cfg.families, service_proxy_name: None };
    let Conversion::Accepted { value: info, .. } = service_from_k8s(&svc, &ctx).unwrap() else { panic!() };
    let slices: Vec<EndpointSliceInfo> = slices
        .iter()
        .map(|s| match endpoint_slice_from_k8s(s, &ctx).unwrap() {
            Conversion::Accepted { value, .. } => value,
            Conversion::Excluded(e) => panic!("{e}"),
        })
        .collect();
    let eps = ServiceEndpoints::merge(&slices, NODE);
    let node = node(NODE, "192.168.0.1", zone);
    let Conversion::Accepted { value: node, .. } = proxy_core::convert::node_from_k8s(&node, &ctx).unwrap() else {
        panic!()
    };
    plan_service(&Arc::new(info), &eps, Some(&node), cfg)
}

fn addrs(route: &Route) -> BTreeSet<String> {
    route.endpoints().iter().map(|e| e.addr().to_string()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn web(eps: Vec<EndpointBuilder>) -> EndpointSlice {
    eps.into_iter()
        .fold(SliceBuilder::new("ns", "web-1", "web").port("http", 8080, "TCP"), |s, e| s.endpoint(e))
        .build()
}

fn svc() -> ServiceBuilder {
    ServiceBuilder::new("ns", "web", "10.96.0.10").node_port("http", 80, "TCP", 30080)
}

#[test]
fn ready_endpoints_are_used_and_terminating_ones_only_as_fallback() {
    let p = plan(svc().build(), vec![web(vec![endpoint("10.0.1.1"), endpoint("10.0.1.2").terminating()])], None);
    assert_eq!(addrs(p.ports[0].internal()), set(&["10.0.1.1:8080"]));

    let p = plan(
        svc().build(),
        vec![web(vec![
            endpoint("10.0.1.1").terminating(),
            endpoint("10.0.1.2").terminating().serving(false),
            endpoint("10.0.1.3").ready(false),
        ])],
        None,
    );
    assert_eq!(addrs(p.ports[0].internal()), set(&["10.0.1.1:8080"]), "only serving-terminating endpoints");
    assert!(p.ports[0].has_endpoints);
}

#[test]
fn no_endpoints_rejects_and_missing_local_ones_drop() {
    let p = plan(svc().build(), vec![], None);
    assert_eq!(*p.ports[0].internal(), Route::Reject);
    assert_eq!(*p.ports[0].external(), Route::Reject);

    let not_serving = web(vec![endpoint("10.0.1.1").ready(false).serving(false)]);
    assert_eq!(*plan(svc().build(), vec![not_serving], None).ports[0].internal(), Route::Reject);

    let remote_only = || web(vec![endpoint("10.0.2.1").node("node-2")]);
    let p = plan(svc().external_traffic_policy("Local").build(), vec![remote_only()], None);
    assert_eq!(*p.ports[0].external(), Route::Drop, "Local policy with endpoints elsewhere drops");
    assert_eq!(addrs(p.ports[0].external_from_cluster()), set(&["10.0.2.1:8080"]));
    assert_eq!(addrs(p.ports[0].internal()), set(&["10.0.2.1:8080"]));

    let p = plan(svc().internal_traffic_policy("Local").build(), vec![remote_only()], None);
    assert_eq!(*p.ports[0].internal(), Route::Drop);
    assert_eq!(addrs(p.ports[0].external()), set(&["10.0.2.1:8080"]));
}

#[test]
fn local_policy_prefers_local_ready_then_local_terminating() {
    let eps = vec![
        endpoint("10.0.1.1").node(NODE),
        endpoint("10.0.1.2").node(NODE).terminating(),
        endpoint("10.0.2.1").node("node-2"),
    ];
    let p = plan(svc().external_traffic_policy("Local").build(), vec![web(eps)], None);
    assert_eq!(addrs(p.ports[0].external()), set(&["10.0.1.1:8080"]));
    assert_eq!(addrs(p.ports[0].internal()), set(&["10.0.1.1:8080", "10.0.2.1:8080"]));
    assert_eq!(p.ports[0].local_ready_endpoints, 1);

    let eps = vec![endpoint("10.0.1.2").node(NODE).terminating(), endpoint("10.0.2.1").node("node-2")];
    let p = plan(svc().external_traffic_policy("Local").build(), vec![web(eps)], None);
    assert_eq!(addrs(p.ports[0].external()), set(&["10.0.1.2:8080"]), "local terminating fallback");
    assert_eq!(addrs(p.ports[0].internal()), set(&["10.0.2.1:8080"]), "cluster set keeps ready only");
    assert_eq!(p.ports[0].local_ready_endpoints, 0);
}

#[test]
fn topology_hints_used_only_when_every_ready_endpoint_has_one() {
    let hinted = || {
        vec![
            endpoint("10.0.1.1").zone("a").zone_hints(&["a"]),
            endpoint("10.0.1.2").zone("b").zone_hints(&["b"]),
            endpoint("10.0.1.3").terminating(), // not ready: ignored by the check
        ]
    };
    let p = plan(svc().build(), vec![web(hinted())], Some("a"));
    assert_eq!(addrs(p.ports[0].internal()), set(&["10.0.1.1:8080"]));

    let mut partial = hinted();
    partial.push(endpoint("10.0.1.4").zone("c"));
    let p = plan(svc().build(), vec![web(partial)], Some("a"));
    assert_eq!(addrs(p.ports[0].internal()).len(), 3, "one ready endpoint lacks a hint: hints ignored");

    let p = plan(svc().build(), vec![web(hinted())], Some("z"));
    assert_eq!(addrs(p.ports[0].internal()).len(), 2, "no endpoint for our zone: hints ignored");

    let p = plan(svc().build(), vec![web(hinted())], None);
    assert_eq!(addrs(p.ports[0].internal()).len(), 2, "node without zone label: hints ignored");
}

#[test]
fn node_hints_need_prefer_same_node() {
    let eps = || {
        vec![
            endpoint("10.0.1.1").zone_hints(&["a"]).node_hints(&[NODE]),
            endpoint("10.0.1.2").zone_hints(&["a"]).node_hints(&["node-2"]),
            endpoint("10.0.1.3").zone_hints(&["b"]).node_hints(&["node-3"]),
        ]
    };
    let p = plan(svc().traffic_distribution("PreferSameNode").build(), vec![web(eps())], Some("a"));
    assert_eq!(addrs(p.ports[0].internal()), set(&["10.0.1.1:8080"]));
    let p = plan(svc().traffic_distribution("PreferClose").build(), vec![web(eps())], Some("a"));
    assert_eq!(addrs(p.ports[0].internal()), set(&["10.0.1.1:8080", "10.0.1.2:8080"]), "zone hints instead");
}

#[test]
fn topology_mode_is_none_without_ready_endpoints() {
    let e = Endpoint {
        info: Arc::new(EndpointInfo {
            address: "10.0.0.1".parse().unwrap(),
            ready: false,
            serving: true,
            terminating: true,
            node_name: None,
            zone: None,
            hints: Some(Box::new(proxy_core::model::EndpointHints {
                zones: vec!["a".into()].into(),
                nodes: [].into(),
            })),
        }),
        port: 80,
        is_local: false,
    };
    assert_eq!(topology_mode(std::slice::from_ref(&e), None, NODE, Some("a")), TopologyMode::None);
    let c = categorize(&[e], None, NODE, Some("a"));
    assert_eq!(c.cluster.len(), 1);
    assert!(c.has_any);
}

#[test]
fn frontends_per_family_with_proxy_mode_lbs_excluded() {
    let s = svc()
        .cluster_ips(&["10.96.0.10", "fd00::10"])
        .external_ips(&["203.0.113.1", "2001:db8::1"])
        .load_balancer_ip("192.0.2.1", None)
        .load_balancer_ip("192.0.2.2", Some("Proxy"))
        .source_ranges(&["198.51.100.0/24", "2001:db8:1::/48"])
        .build();
    let mut c = cfg();
    c.families = FamilySet::DUAL;
    let p = plan_with(s, vec![], None, &c);
    assert_eq!(p.ports.len(), 2);
    let v4 = &p.ports[0];
    assert_eq!(v4.family, IpFamily::V4);
    let kinds: Vec<_> = v4.frontends().map(|f| (f.kind, f.ip)).collect();
    let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
    assert_eq!(
        kinds,
        vec![
            (FrontendKind::ClusterIP, ip("10.96.0.10")),
            (FrontendKind::ExternalIP, ip("203.0.113.1")),
            (FrontendKind::LoadBalancer, ip("192.0.2.1")),
            (FrontendKind::NodePort, None),
        ]
    );
    assert_eq!(v4.source_ranges, vec!["198.51.100.0/24".parse().unwrap()]);
    let v6 = &p.ports[1];
    assert_eq!(v6.cluster_ip, ip("fd00::10"));
    // One node port per family, told apart by the family (a node port has no address).
    let snap = Snapshot::from_plans(c.clone(), None, [p.clone()]);
    let node_ports: Vec<_> =
        snap.expected_state().frontends.into_keys().filter(|f| f.kind == FrontendKind::NodePort).collect();
    assert_eq!(node_ports.len(), 2, "{node_ports:?}");
    assert_eq!(node_ports.iter().map(|f| f.family).collect::<Vec<_>>(), vec![IpFamily::V4, IpFamily::V6]);
    assert_eq!(node_ports[1].to_string(), "nodeport6:30080/tcp");
    assert_eq!(v6.external_ips, vec!["2001:db8::1".parse::<IpAddr>().unwrap()]);
    assert!(v6.load_balancer_ips.is_empty());
}

#[test]
fn endpoints_are_merged_across_slices_and_deduplicated() {
    let a = SliceBuilder::new("ns", "web-a", "web")
        .port("http", 8080, "TCP")
        .endpoint(endpoint("10.0.1.1"))
        .endpoint(endpoint("10.0.1.2").node("node-2"))
        .build();
    let b = SliceBuilder::new("ns", "web-b", "web")
        .port("http", 8080, "TCP")
        .endpoint(endpoint("10.0.1.2").node(NODE)) // duplicate: the local copy wins
        .endpoint(endpoint("10.0.1.3"))
        .build();
    let p = plan(svc().external_traffic_policy("Local").build(), vec![a, b], None);
    assert_eq!(addrs(p.ports[0].internal()), set(&["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080"]));
    assert_eq!(addrs(p.ports[0].external()), set(&["10.0.1.2:8080"]));
}

#[test]
fn named_ports_resolve_per_endpoint_slice() {
    // Two slices give the same port name different numbers (a rolling update
    // that renumbered the container port): each endpoint keeps its own.
    let old =
        SliceBuilder::new("ns", "web-old", "web").port("http", 8080, "TCP").endpoint(endpoint("10.0.1.1")).build();
    let new =
        SliceBuilder::new("ns", "web-new", "web").port("http", 9090, "TCP").endpoint(endpoint("10.0.1.2")).build();
    let other =
        SliceBuilder::new("ns", "web-x", "web").port("metrics", 9100, "TCP").endpoint(endpoint("10.0.1.3")).build();
    let p = plan(svc().build(), vec![old, new, other], None);
    assert_eq!(addrs(p.ports[0].internal()), set(&["10.0.1.1:8080", "10.0.1.2:9090"]));
}

#[test]
fn masquerade_truth_table() {
    let pod: IpAddr = "10.0.5.5".parse().unwrap();
    let node: IpAddr = "192.168.0.1".parse().unwrap();
    let ext: IpAddr = "172.16.0.9".parse().unwrap();
    let eps = || web(vec![endpoint("10.0.1.1").node(NODE), endpoint("10.0.2.1").node("node-2")]);
    let cluster = plan(svc().load_balancer_ip("192.0.2.1", None).build(), vec![eps()], None);
    let local =
        plan(svc().load_balancer_ip("192.0.2.1", None).external_traffic_policy("Local").build(), vec![eps()], None);
    let masq = cfg().masquerade;
    let all = MasqueradeConfig { all: true, ..masq.clone() };
    let none = MasqueradeConfig::default();
    use FrontendKind::*;
    use SourceClass as S;
    // (plan, masq config, frontend, source, class) -> masquerade?
    let cases = [
        (&cluster, &masq, ClusterIP, pod, S::Pod, false),
        (&cluster, &masq, ClusterIP, node, S::Node, true),
        (&cluster, &masq, ClusterIP, ext, S::External, true),
        (&cluster, &none, ClusterIP, ext, S::External, false),
        (&cluster, &all, ClusterIP, pod, S::Pod, true),
        (&cluster, &masq, NodePort, pod, S::Pod, true),
        (&cluster, &masq, NodePort, ext, S::External, true),
        (&cluster, &masq, LoadBalancer, ext, S::External, true),
        (&local, &masq, NodePort, ext, S::External, false),
        (&local, &masq, LoadBalancer, ext, S::External, false),
        (&local, &masq, LoadBalancer, pod, S::Pod, false),
        (&local, &masq, LoadBalancer, node, S::Node, true),
        (&local, &masq, ClusterIP, pod, S::Pod, false),
    ];
    for (i, (p, m, kind, src, class, want)) in cases.iter().enumerate() {
        let flow = p.ports[0].flow(*kind, *src, *class, m);
        assert_eq!(flow.masquerade, *want, "case {i}: {kind:?} from {class:?}");
    }
    // Local policy: outside traffic reaches local endpoints only; pods and the node reach all.
    let from_ext = local.ports[0].flow(LoadBalancer, ext, S::External, &masq);
    assert_eq!(addrs(&from_ext.route), set(&["10.0.1.1:8080"]));
    let from_pod = local.ports[0].flow(LoadBalancer, pod, S::Pod, &masq);
    assert_eq!(addrs(&from_pod.route), set(&["10.0.1.1:8080", "10.0.2.1:8080"]));
    // Hairpin: a pod reaching itself is masqueraded even when the flow is not.
    let hairpin_src: IpAddr = "10.0.1.1".parse().unwrap();
    let flow = cluster.ports[0].flow(ClusterIP, hairpin_src, S::Pod, &masq);
    let ep = &flow.route.endpoints()[0];
    assert!(!flow.masquerade && flow.masquerades_to(hairpin_src, ep));
}

#[test]
fn source_ranges_filter_lb_traffic_but_not_the_node() {
    let p = plan(
        svc().load_balancer_ip("192.0.2.1", None).source_ranges(&["198.51.100.0/24"]).build(),
        vec![web(vec![endpoint("10.0.1.1")])],
        None,
    );
    let m = cfg().masquerade;
    let allowed: IpAddr = "198.51.100.7".parse().unwrap();
    let denied: IpAddr = "203.0.113.7".parse().unwrap();
    let port = &p.ports[0];
    assert!(matches!(
        port.flow(FrontendKind::LoadBalancer, allowed, SourceClass::External, &m).route,
        Route::Forward(_)
    ));
    assert_eq!(port.flow(FrontendKind::LoadBalancer, denied, SourceClass::External, &m).route, Route::Drop);
    assert!(matches!(port.flow(FrontendKind::LoadBalancer, denied, SourceClass::Node, &m).route, Route::Forward(_)));
    assert!(
        matches!(port.flow(FrontendKind::NodePort, denied, SourceClass::External, &m).route, Route::Forward(_)),
        "source ranges apply to load-balancer IPs only"
    );
}

#[test]
fn expected_state_lists_every_frontend() {
    let eps = web(vec![endpoint("10.0.1.1").node(NODE), endpoint("10.0.2.1").node("node-2")]);
    let p = plan(
        svc().load_balancer_ip("192.0.2.1", None).external_traffic_policy("Local").affinity(Some(30)).build(),
        vec![eps],
        None,
    );
    let snap = Snapshot::from_plans(cfg(), None, [p]);
    let state = snap.expected_state();
    assert_eq!(state.frontends.len(), 3);
    let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
    let lb =
        state.frontends.iter().find(|(f, _)| f.kind == FrontendKind::LoadBalancer).map(|(_, p)| p.clone()).unwrap();
    assert_eq!(lb.endpoints, BTreeSet::from([sa("10.0.1.1:8080")]));
    assert_eq!(lb.cluster_endpoints, Some(BTreeSet::from([sa("10.0.1.1:8080"), sa("10.0.2.1:8080")])));
    assert_eq!(lb.affinity_timeout_seconds, Some(30));
    assert!(state.diff(&state).is_empty());
    let mut other = state.clone();
    other.frontends.values_mut().next().unwrap().endpoints.clear();
    assert_eq!(state.diff(&other).len(), 1);
    // A datapath hooked nowhere differs from the plans, whatever its maps hold.
    let mut detached = state.clone();
    detached.unattached.push("tc ingress on eth0".into());
    assert_eq!(
        state.diff(&detached),
        vec![proxy_core::StateDifference::Unattached { hook: "tc ingress on eth0".into() }]
    );
    let json = serde_json::to_value(&state).unwrap();
    assert!(json.get("unattached").is_none(), "omitted when empty: {json}");
    let back: proxy_core::ProgrammedState = serde_json::from_value(json).unwrap();
    assert_eq!(back, state, "older readers and writers agree");
    let json = serde_json::to_string(&state).unwrap();
    let back: ProgrammedState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
}
