//! Reconciliation against [`FakeIpvs`]: what operations a plan turns into.

use std::sync::Arc;

use proxy_core::testing::{ServiceBuilder, SliceBuilder, endpoint, initial_list};
use proxy_core::{ChangeTracker, PlannerConfig, TrackerConfig};

use super::*;
use crate::fake::FakeIpvs;
use crate::message::SVC_F_PERSISTENT;

const NODE: &str = "node-a";

fn snapshot(
    services: Vec<k8s_openapi::api::core::v1::Service>,
    slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice>,
) -> Arc<Snapshot> {
    let mut config = TrackerConfig::new(PlannerConfig::new(NODE));
    config.wait_for_node = false;
    let mut tracker = ChangeTracker::new(config);
    for e in initial_list(services, slices, None) {
        tracker.apply(e);
    }
    tracker.snapshot()
}

fn web(eps: &[&str]) -> (k8s_openapi::api::core::v1::Service, k8s_openapi::api::discovery::v1::EndpointSlice) {
    let svc = ServiceBuilder::new("default", "web", "10.96.0.10").port("http", 80, "TCP").build();
    let mut slice = SliceBuilder::new("default", "web-1", "web").port("http", 8080, "TCP");
    for e in eps {
        slice = slice.endpoint(endpoint(e).node(NODE));
    }
    (svc, slice.build())
}

const NODE_IPS: &[IpAddr] = &[IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 1, 10))];

fn inputs() -> Inputs<'static> {
    static ALL: NodePortAddresses = NodePortAddresses::All;
    static MASQ: MasqueradeConfig = MasqueradeConfig { all: false, cluster_cidrs: Vec::new() };
    Inputs {
        masquerade: &MASQ,
        families: FamilySet::V4,
        scheduler: "rr",
        node_addresses: NODE_IPS,
        nodeport_addresses: &ALL,
        primary_ips: NODE_IPS,
    }
}

fn owner(d: &Desired) -> Ownership {
    Ownership { vips: d.vips(), node_addresses: NODE_IPS.iter().copied().collect(), node_port_range: (30000, 32767) }
}

fn key(addr: &str, port: u16, protocol: Protocol) -> ServiceKey {
    ServiceKey { protocol, addr: addr.parse().unwrap(), port }
}

fn full(ipvs: &mut FakeIpvs, d: &Desired, draining: &mut Draining, now: Instant) -> Stats {
    reconcile(ipvs, d, None, &owner(d), draining, Duration::from_secs(15), now).unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn creates_then_converges_to_no_operations() {
    let (svc, slice) = web(&["10.244.1.5", "10.244.1.6"]);
    let d = desired(&snapshot(vec![svc], vec![slice]), &inputs());
    assert_eq!(d.vips(), BTreeSet::from(["10.96.0.10".parse().unwrap()]));
    let mut ipvs = FakeIpvs::new();
    let mut draining = Draining::default();
    let now = Instant::now();
    let stats = full(&mut ipvs, &d, &mut draining, now);
    assert_eq!((stats.services_added, stats.dests_added), (1, 2));
    let k = key("10.96.0.10", 80, Protocol::Tcp);
    assert!(matches!(&ipvs.log[0], Request::NewService(vs) if vs.key == k && vs.scheduler == "rr" && vs.flags == 0));
    let (_, dests) = &ipvs.services[&k];
    assert_eq!(dests.keys().copied().collect::<Vec<_>>(), vec![sa("10.244.1.5:8080"), sa("10.244.1.6:8080")]);
    // A second full sync has nothing to do.
    assert_eq!(full(&mut ipvs, &d, &mut draining, now).requests, 0);
}

#[test]
fn leaving_endpoint_drains_at_weight_zero_then_goes() {
    let (svc, slice) = web(&["10.244.1.5", "10.244.1.6"]);
    let d = desired(&snapshot(vec![svc.clone()], vec![slice]), &inputs());
    let mut ipvs = FakeIpvs::new();
    let mut draining = Draining::default();
    let t0 = Instant::now();
    full(&mut ipvs, &d, &mut draining, t0);
    let k = key("10.96.0.10", 80, Protocol::Tcp);
    ipvs.set_conns(&k, sa("10.244.1.6:8080"), 1, 0);

    let (_, slice) = web(&["10.244.1.5"]);
    let d2 = desired(&snapshot(vec![svc], vec![slice]), &inputs());
    ipvs.log.clear();
    let s = full(&mut ipvs, &d2, &mut draining, t0);
    assert_eq!(s.dests_drained, 1);
    assert!(matches!(&ipvs.log[..], [Request::SetDest(_, rs)] if rs.weight == 0 && rs.port == 8080));
    // Still connected, within the grace period: nothing happens.
    ipvs.log.clear();
    assert_eq!(full(&mut ipvs, &d2, &mut draining, t0 + Duration::from_secs(5)).requests, 0);
    // The connection closed: the real server goes.
    ipvs.set_conns(&k, sa("10.244.1.6:8080"), 0, 0);
    let s = full(&mut ipvs, &d2, &mut draining, t0 + Duration::from_secs(6));
    assert_eq!(s.dests_deleted, 1);
    assert_eq!(ipvs.services[&k].1.len(), 1);
    assert!(draining.since.is_empty());
}

#[test]
fn grace_period_ends_draining_even_with_connections() {
    let (svc, slice) = web(&["10.244.1.5", "10.244.1.6"]);
    let d = desired(&snapshot(vec![svc.clone()], vec![slice]), &inputs());
    let mut ipvs = FakeIpvs::new();
    let mut draining = Draining::default();
    let t0 = Instant::now();
    full(&mut ipvs, &d, &mut draining, t0);
    let k = key("10.96.0.10", 80, Protocol::Tcp);
    ipvs.set_conns(&k, sa("10.244.1.6:8080"), 3, 0);
    let (_, slice) = web(&["10.244.1.5"]);
    let d2 = desired(&snapshot(vec![svc], vec![slice]), &inputs());
    full(&mut ipvs, &d2, &mut draining, t0);
    let s = full(&mut ipvs, &d2, &mut draining, t0 + Duration::from_secs(16));
    assert_eq!(s.dests_deleted, 1);
}

#[test]
fn returning_endpoint_gets_its_weight_back() {
    let (svc, slice) = web(&["10.244.1.5", "10.244.1.6"]);
    let snap = snapshot(vec![svc.clone()], vec![slice]);
    let d = desired(&snap, &inputs());
    let mut ipvs = FakeIpvs::new();
    let mut draining = Draining::default();
    let t0 = Instant::now();
    full(&mut ipvs, &d, &mut draining, t0);
    let k = key("10.96.0.10", 80, Protocol::Tcp);
    ipvs.set_conns(&k, sa("10.244.1.6:8080"), 1, 0);
    let (_, one) = web(&["10.244.1.5"]);
    full(&mut ipvs, &desired(&snapshot(vec![svc], vec![one]), &inputs()), &mut draining, t0);
    ipvs.log.clear();
    full(&mut ipvs, &d, &mut draining, t0);
    assert!(matches!(&ipvs.log[..], [Request::SetDest(_, rs)] if rs.weight == WEIGHT));
    assert!(draining.since.is_empty());
}

#[test]
fn udp_real_servers_are_deleted_at_once() {
    let svc = ServiceBuilder::new("default", "dns", "10.96.0.53").port("dns", 53, "UDP").build();
    let slice = |eps: &[&str]| {
        let mut s = SliceBuilder::new("default", "dns-1", "dns").port("dns", 53, "UDP");
        for e in eps {
            s = s.endpoint(endpoint(e));
        }
        s.build()
    };
    let mut ipvs = FakeIpvs::new();
    let mut draining = Draining::default();
    let now = Instant::now();
    full(
        &mut ipvs,
        &desired(&snapshot(vec![svc.clone()], vec![slice(&["10.244.1.5", "10.244.1.6"])]), &inputs()),
        &mut draining,
        now,
    );
    ipvs.set_conns(&key("10.96.0.53", 53, Protocol::Udp), sa("10.244.1.6:53"), 0, 4);
    let s =
        full(&mut ipvs, &desired(&snapshot(vec![svc], vec![slice(&["10.244.1.5"])]), &inputs()), &mut draining, now);
    assert_eq!(s.dests_deleted, 1);
}

#[test]
fn deleted_service_goes_but_foreign_virtual_servers_stay() {
    let (svc, slice) = web(&["10.244.1.5"]);
    let d = desired(&snapshot(vec![svc], vec![slice]), &inputs());
    let mut ipvs = FakeIpvs::new();
    // Someone else's virtual server on an address that is not ours.
    let foreign = VirtualServer {
        key: key("172.16.0.1", 80, Protocol::Tcp),
        scheduler: "wlc".into(),
        flags: 0,
        timeout: 0,
        netmask: u32::MAX,
    };
    ipvs.services.insert(foreign.key, (foreign.clone(), BTreeMap::new()));
    let mut draining = Draining::default();
    let now = Instant::now();
    full(&mut ipvs, &d, &mut draining, now);
    let empty = desired(&snapshot(vec![], vec![]), &inputs());
    // Ownership comes from switchyard0's addresses, which still hold the VIP at this point.
    let s = reconcile(&mut ipvs, &empty, None, &owner(&d), &mut draining, Duration::from_secs(15), now).unwrap();
    assert_eq!(s.services_deleted, 1);
    assert_eq!(ipvs.services.keys().copied().collect::<Vec<_>>(), vec![foreign.key]);
}

#[test]
fn affinity_and_scheduler_changes_update_the_virtual_server() {
    let (svc, slice) = web(&["10.244.1.5"]);
    let mut ipvs = FakeIpvs::new();
    let mut draining = Draining::default();
    let now = Instant::now();
    full(&mut ipvs, &desired(&snapshot(vec![svc], vec![slice.clone()]), &inputs()), &mut draining, now);
    let sticky = ServiceBuilder::new("default", "web", "10.96.0.10").port("http", 80, "TCP").affinity(Some(60)).build();
    let mut i = inputs();
    i.scheduler = "mh";
    ipvs.log.clear();
    full(&mut ipvs, &desired(&snapshot(vec![sticky], vec![slice]), &i), &mut draining, now);
    match &ipvs.log[..] {
        [Request::SetService(vs)] => {
            assert_eq!(
                (vs.flags, vs.timeout, vs.netmask, vs.scheduler.as_str()),
                (SVC_F_PERSISTENT, 60, u32::MAX, "mh")
            );
        }
        other => panic!("expected one SetService, got {other:?}"),
    }
}

#[test]
fn node_ports_live_on_selected_node_addresses() {
    let svc = ServiceBuilder::new("default", "np", "10.96.0.20").node_port("", 80, "TCP", 30080).build();
    let slice =
        SliceBuilder::new("default", "np-1", "np").port("", 8080, "TCP").endpoint(endpoint("10.244.1.5")).build();
    let d = desired(&snapshot(vec![svc], vec![slice]), &inputs());
    let np = key("192.168.1.10", 30080, Protocol::Tcp);
    assert!(d.services.contains_key(&np));
    assert_eq!(d.services[&np].frontend.kind, FrontendKind::NodePort);
    assert!(!d.vips().contains(&np.addr), "node addresses are not put on switchyard0");
    assert!(d.sets()[&(SetKind::NodePort, IpFamily::V4)].contains(&Member::ip_port(np.addr, Protocol::Tcp, 30080)));
    let o = owner(&d);
    assert!(o.owns(&np));
    assert!(!o.owns(&key("192.168.1.10", 22, Protocol::Tcp)));
    // --nodeport-addresses that select nothing: no NodePort virtual server.
    let none = NodePortAddresses::Cidrs(vec!["10.0.0.0/8".parse().unwrap()]);
    let mut i = inputs();
    i.nodeport_addresses = &none;
    let svc = ServiceBuilder::new("default", "np", "10.96.0.20").node_port("", 80, "TCP", 30080).build();
    assert!(!desired(&snapshot(vec![svc], vec![]), &i).services.contains_key(&np));
}

#[test]
fn partial_sync_touches_only_the_given_virtual_servers() {
    let (svc, slice) = web(&["10.244.1.5"]);
    let other = ServiceBuilder::new("default", "other", "10.96.0.30").port("", 80, "TCP").build();
    let d = desired(&snapshot(vec![svc, other], vec![slice]), &inputs());
    let mut ipvs = FakeIpvs::new();
    let mut draining = Draining::default();
    let now = Instant::now();
    full(&mut ipvs, &d, &mut draining, now);
    // Drift in "other" (a stray real server) is left to the next full sync.
    let other_key = key("10.96.0.30", 80, Protocol::Tcp);
    ipvs.services
        .get_mut(&other_key)
        .unwrap()
        .1
        .insert(sa("1.2.3.4:80"), RealServer::nat("1.2.3.4".parse().unwrap(), 80, 1));
    let web_keys = d.keys_of(&ServiceName::new("default", "web"));
    let s = reconcile(&mut ipvs, &d, Some(&web_keys), &owner(&d), &mut draining, Duration::from_secs(15), now).unwrap();
    assert_eq!(s.requests, 0);
    assert_eq!(full(&mut ipvs, &d, &mut draining, now).dests_deleted, 1);
}

#[test]
fn empty_verdicts_and_source_ranges_become_set_members() {
    let local = ServiceBuilder::new("default", "lb", "10.96.0.40")
        .port("", 80, "TCP")
        .load_balancer_ip("203.0.113.7", None)
        .external_traffic_policy("Local")
        .source_ranges(&["198.51.100.0/24"])
        .build();
    // Its only endpoint is on another node: outside traffic must be dropped.
    let slice = SliceBuilder::new("default", "lb-1", "lb")
        .port("", 8080, "TCP")
        .endpoint(endpoint("10.244.2.5").node("node-b"))
        .build();
    let d = desired(&snapshot(vec![local], vec![slice]), &inputs());
    let lb = Member::ip_port("203.0.113.7".parse().unwrap(), Protocol::Tcp, 80);
    assert!(d.sets()[&(SetKind::Drop, IpFamily::V4)].contains(&lb));
    assert!(d.sets()[&(SetKind::MasqNode, IpFamily::V4)].contains(&lb));
    assert!(d.sets()[&(SetKind::LbFirewall, IpFamily::V4)].contains(&lb));
    assert!(d.sets()[&(SetKind::LbSource, IpFamily::V4)].contains(&Member::ip_port_net(
        "203.0.113.7".parse().unwrap(),
        Protocol::Tcp,
        80,
        "198.51.100.0/24".parse().unwrap()
    )));
    assert!(d.services[&key("203.0.113.7", 80, Protocol::Tcp)].dests.is_empty());
    // The ClusterIP still reaches the remote endpoint.
    assert_eq!(d.services[&key("10.96.0.40", 80, Protocol::Tcp)].dests.len(), 1);
}

#[test]
fn incremental_updates_equal_a_fresh_build() {
    let all = |eps: &[&str], extra: bool| {
        let (web, slice) = web(eps);
        // Two Services sharing one externalIP: its address must outlive either.
        let a =
            ServiceBuilder::new("default", "a", "10.96.0.50").port("", 80, "TCP").external_ips(&["192.0.2.1"]).build();
        let b =
            ServiceBuilder::new("default", "b", "10.96.0.51").port("", 81, "TCP").external_ips(&["192.0.2.1"]).build();
        let mut services = vec![web, a];
        if extra {
            services.push(b);
        }
        snapshot(services, vec![slice])
    };
    let before = all(&["10.244.1.5", "10.244.1.6"], true);
    let after = all(&["10.244.1.7"], false);
    let mut d = desired(&before, &inputs());
    let names = [ServiceName::new("default", "web"), ServiceName::new("default", "b")];
    let change = d.update_all(names.iter(), &after, &inputs());
    let fresh = desired(&after, &inputs());
    assert_eq!(d.services, fresh.services);
    assert_eq!(d.vips(), fresh.vips());
    assert_eq!(d.sets(), fresh.sets());
    // The shared externalIP stays (Service a still has it); b's ClusterIP goes.
    assert!(change.vips_removed.contains(&"10.96.0.51".parse().unwrap()));
    assert!(!change.vips_removed.contains(&"192.0.2.1".parse().unwrap()));
    assert!(change.keys.contains(&key("192.0.2.1", 81, Protocol::Tcp)));
    let script = change.sets_script();
    assert!(script.contains("add SWITCHYARD-LOOPBACK 10.244.1.7,tcp:8080,10.244.1.7"), "{script}");
    assert!(script.contains("del SWITCHYARD-LOOPBACK 10.244.1.5,tcp:8080,10.244.1.5"), "{script}");
    assert!(!script.contains("SWITCHYARD-VIPS 192.0.2.1"), "{script}");
}

/// A contested externalIP changes hands in a partial sync: the older Service
/// is deleted and the younger (first by name) takes over. The younger's
/// new claim must not meet the older's old one.
#[test]
fn a_contested_frontend_changes_hands_in_a_partial_sync() {
    let svc = |name: &str, cip: &str, created: i64| {
        ServiceBuilder::new("default", name, cip)
            .port("", 80, "TCP")
            .external_ips(&["192.0.2.9"])
            .created(created)
            .build()
    };
    let (young, old) = (svc("a-new", "10.96.0.91", 2_000), svc("b-old", "10.96.0.92", 1_000));
    let before = snapshot(vec![young.clone(), old], vec![]);
    let after = snapshot(vec![young], vec![]);
    let mut d = desired(&before, &inputs());
    let eip = key("192.0.2.9", 80, Protocol::Tcp);
    assert_eq!(d.services[&eip].service, ServiceName::new("default", "b-old"), "the older Service serves it");
    let names = [ServiceName::new("default", "a-new"), ServiceName::new("default", "b-old")];
    let change = d.update_all(names.iter(), &after, &inputs());
    assert!(change.conflicts.is_empty(), "{:?}", change.conflicts);
    assert_eq!(d.services[&eip].service, ServiceName::new("default", "a-new"), "the younger took over");
    assert_eq!(d.services, desired(&after, &inputs()).services);
}

/// Issue 18: a full sync repairs what someone else did to our virtual
/// servers (`ipvsadm -D`, `-d`, `-e`, `-A` on our VIP) and counts it as drift
/// against the previous desired state; changes of the plans are not drift.
#[test]
fn drift_against_the_previous_state_is_counted() {
    let (svc, slice) = web(&["10.244.1.5", "10.244.1.6"]);
    let d = desired(&snapshot(vec![svc], vec![slice]), &inputs());
    let mut ipvs = FakeIpvs::new();
    let mut draining = Draining::default();
    let now = Instant::now();
    let grace = Duration::from_secs(15);
    full(&mut ipvs, &d, &mut draining, now);
    let k = key("10.96.0.10", 80, Protocol::Tcp);
    let mut witness = |ipvs: &mut FakeIpvs, previous: &Desired, d: &Desired| {
        let s = reconcile_with(ipvs, d, Some(previous), None, &owner(d), &mut draining, grace, now).unwrap();
        (s.repaired_services, s.repaired_dests)
    };
    // Nothing changed.
    assert_eq!(witness(&mut ipvs, &d, &d), (0, 0));
    // `ipvsadm -D -t 10.96.0.10:80`: the virtual server comes back with its real servers.
    ipvs.execute(&[Request::DelService(k)]).unwrap();
    assert_eq!(witness(&mut ipvs, &d, &d), (1, 0));
    assert_eq!(ipvs.services[&k].1.len(), 2);
    // `ipvsadm -d` of one real server, `ipvsadm -e -w 5` of the other.
    ipvs.execute(&[
        Request::DelDest(k, "10.244.1.5".parse().unwrap(), 8080),
        Request::SetDest(k, RealServer::nat("10.244.1.6".parse().unwrap(), 8080, 5)),
    ])
    .unwrap();
    assert_eq!(witness(&mut ipvs, &d, &d), (0, 2));
    // A real server someone added to our virtual server, and a scheduler change.
    let mut vs = ipvs.services[&k].0.clone();
    vs.scheduler = "wlc".into();
    ipvs.execute(&[
        Request::NewDest(k, RealServer::nat("10.244.9.9".parse().unwrap(), 8080, 1)),
        Request::SetService(vs),
    ])
    .unwrap();
    assert_eq!(witness(&mut ipvs, &d, &d), (1, 1));
    // A virtual server someone created on our VIP.
    let foreign = key("10.96.0.10", 81, Protocol::Tcp);
    let mut other = ipvs.services[&k].0.clone();
    other.key = foreign;
    ipvs.execute(&[Request::NewService(other)]).unwrap();
    assert_eq!(witness(&mut ipvs, &d, &d), (1, 0));
    assert!(!ipvs.services.contains_key(&foreign));
    assert_eq!(witness(&mut ipvs, &d, &d), (0, 0));
    // A plan change is not drift: an endpoint leaves, the Service's port changes.
    let (svc, slice) = web(&["10.244.1.5"]);
    let d2 = desired(&snapshot(vec![svc], vec![slice]), &inputs());
    assert_eq!(witness(&mut ipvs, &d, &d2), (0, 0));
    let svc = ServiceBuilder::new("default", "web", "10.96.0.10").port("http", 8080, "TCP").build();
    let (_, slice) = web(&["10.244.1.5"]);
    let d3 = desired(&snapshot(vec![svc], vec![slice]), &inputs());
    assert_eq!(witness(&mut ipvs, &d2, &d3), (0, 0));
}

/// Each frontend is in the masquerade set of its flow table's cells, and
/// the hairpin set is the table's: nothing here decides either.
#[test]
fn masquerade_and_hairpin_sets_follow_the_flow_table() {
    let svc = ServiceBuilder::new("default", "web", "10.96.0.60")
        .port("", 80, "TCP")
        .load_balancer_ip("203.0.113.8", None)
        .external_traffic_policy("Local")
        .build();
    let slice = SliceBuilder::new("default", "web-1", "web")
        .port("", 8080, "TCP")
        .endpoint(endpoint("10.244.1.5").node(NODE))
        .endpoint(endpoint("10.244.2.5").node("node-b"))
        .build();
    let snap = snapshot(vec![svc], vec![slice]);
    let masq = MasqueradeConfig { all: false, cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()] };
    let d = desired(&snap, &Inputs { masquerade: &masq, ..inputs() });
    let member = |ip: &str| Member::ip_port(ip.parse().unwrap(), Protocol::Tcp, 80);
    let sets = d.sets();
    assert!(sets[&(SetKind::MasqNotPod, IpFamily::V4)].contains(&member("10.96.0.60")));
    assert!(sets[&(SetKind::MasqNode, IpFamily::V4)].contains(&member("203.0.113.8")));
    assert!(sets.get(&(SetKind::MasqAll, IpFamily::V4)).is_none_or(|s| s.is_empty()));
    // Pods keep their source at the LB with policy Local, so the remote
    // endpoint may be sent back to itself: it is in the hairpin set too.
    let table = snap.port_plans().next().unwrap().flow_table(&masq);
    let want: BTreeSet<Member> =
        table.hairpin.iter().map(|e| Member::ip_port_ip(e.ip(), Protocol::Tcp, e.port(), e.ip())).collect();
    assert_eq!(want.len(), 2);
    assert_eq!(sets[&(SetKind::Loopback, IpFamily::V4)], want);

    let all = MasqueradeConfig { all: true, cluster_cidrs: vec![] };
    let d = desired(&snap, &Inputs { masquerade: &all, ..inputs() });
    assert!(d.sets()[&(SetKind::MasqAll, IpFamily::V4)].contains(&member("10.96.0.60")));
}
