//! The IPVS dataplane against a real kernel, in network namespaces made here.
//!
//! Needs root (`#[testkit::needs_root]`: ignored without it) and a kernel
//! with IPVS. On a host without IPVS the tests skip loudly; inside `cargo xtask vm test` (`SWITCHYARD_VM=1`) a missing feature
//! is a failure. Each test has its own namespaces (`swy-ipvs-<pid>-<n>`),
//! deleted on every path by a guard.

#![allow(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "an integration test: a panic is a failure, a skip prints its reason"
)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use backend_ipvs::client::{Ipvs, NetlinkIpvs};
use backend_ipvs::message::ServiceKey;
use proxy_core::testing::{ServiceBuilder, SliceBuilder, endpoint, initial_list};
use proxy_core::{
    BackendContext, ChangeTracker, DataplaneError, NetNamespace, PlannerConfig, Protocol, ServiceName, Snapshot,
    SyncRequest, TrackerConfig,
};
use testkit::plan;

/// A network namespace of the test (a [`testkit::Netns`]: `swy-ipvs-<pid>-<n>`), deleted when dropped.
struct Netns {
    name: String,
    guard: testkit::Netns,
}

impl Netns {
    fn new() -> Netns {
        let guard = testkit::Netns::for_test("ipvs");
        Netns { name: guard.name().to_string(), guard }
    }

    fn handle(&self) -> NetNamespace {
        NetNamespace::named(&self.name)
    }

    fn exec(&self, cmd: &str) -> String {
        sh(&format!("ip netns exec {} {cmd}", self.name))
    }
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_vm() -> bool {
    std::env::var_os("SWITCHYARD_VM").is_some()
}

/// Whether IPVS can be tested here; prints why not (and fails inside the VM).
fn ipvs_available(ns: &Netns) -> bool {
    let probe = ns.handle().run(NetlinkIpvs::connect).expect("enter namespace");
    match probe {
        Ok(_) => true,
        Err(e) if in_vm() => panic!("inside the VM IPVS must work: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: {e} (run `cargo xtask vm test` to test on a kernel with IPVS)");
            false
        }
    }
}

fn snapshot(
    services: Vec<k8s_openapi::api::core::v1::Service>,
    slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice>,
) -> Arc<Snapshot> {
    let mut config = TrackerConfig::new(PlannerConfig::new("node-a"));
    config.wait_for_node = false;
    let mut tracker = ChangeTracker::new(config);
    for e in initial_list(services, slices, None) {
        tracker.apply(e);
    }
    tracker.snapshot()
}

fn request(snapshot: Arc<Snapshot>, full: bool, changed: &[ServiceName]) -> SyncRequest {
    SyncRequest { snapshot, changed: Arc::new(changed.iter().cloned().collect()), full }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[testkit::needs_root]
#[test]
fn probe_reports_unavailable_cleanly_without_ipvs() {
    let ns = Netns::new();
    let ctx = BackendContext::new("node-a", ns.handle());
    let result = rt().block_on(backend_ipvs::factory().probe(&ctx));
    match result {
        Ok(()) => eprintln!("IPVS is available here; the unavailable path is covered on hosts without it"),
        Err(DataplaneError::Unavailable { mode, reason }) => {
            assert_eq!(mode, "ipvs");
            assert!(reason.contains("IPVS unavailable"), "{reason}");
            assert!(!in_vm(), "the VM kernel must have IPVS");
        }
        Err(e) => panic!("unexpected probe error: {e}"),
    }
}

fn web_objects(
    endpoints: &[&str],
) -> (Vec<k8s_openapi::api::core::v1::Service>, Vec<k8s_openapi::api::discovery::v1::EndpointSlice>) {
    let svc = ServiceBuilder::new("default", "web", "10.96.0.10")
        .port("http", 80, "TCP")
        .port("dns", 53, "UDP")
        .external_ips(&["192.0.2.10"])
        .affinity(Some(60))
        .build();
    let np = ServiceBuilder::new("default", "np", "10.96.0.20").node_port("", 80, "SCTP", 30080).build();
    let mut slice = SliceBuilder::new("default", "web-1", "web").port("http", 8080, "TCP").port("dns", 5353, "UDP");
    for e in endpoints {
        slice = slice.endpoint(endpoint(e).node("node-a"));
    }
    (vec![svc, np], vec![slice.build()])
}

#[testkit::needs_root]
#[test]
fn sync_inspect_partial_and_cleanup() {
    let ns = Netns::new();
    if !ipvs_available(&ns) {
        return;
    }
    // A node address for the NodePort.
    ns.exec("ip link add eth0 type dummy");
    ns.exec("ip addr add 192.168.1.10/24 dev eth0");
    ns.exec("ip link set eth0 up");
    let ctx = BackendContext::new("node-a", ns.handle());
    let rt = rt();
    let dp = rt.block_on(backend_ipvs::factory().build(&ctx)).unwrap();

    let (services, slices) = web_objects(&["10.244.1.5", "10.244.1.6"]);
    let snap = snapshot(services.clone(), slices);
    let outcome = rt.block_on(dp.sync(request(snap.clone(), true, &[]))).unwrap();
    assert_eq!(outcome.objects["virtual servers"], 6, "{outcome:?}");
    let found = rt.block_on(dp.inspect()).unwrap();
    let diff = snap.expected_state().diff(&found);
    assert!(diff.is_empty(), "inspect differs from the plan: {diff:#?}");
    // The kernel objects, as the CLI tools show them.
    // /proc shows the persistence timeout in jiffies; inspect() (netlink) checked the seconds.
    let ipvs = ns.exec("cat /proc/net/ip_vs");
    assert!(ipvs.contains("TCP  0A60000A:0050 rr  persistent"), "{ipvs}");
    assert!(ns.exec("ip addr show switchyard0").contains("10.96.0.10/32"));

    // One endpoint leaves (a partial sync): it is deleted (no connections).
    let (_, slices) = web_objects(&["10.244.1.5"]);
    let snap2 = snapshot(services.clone(), slices);
    rt.block_on(dp.sync(request(snap2.clone(), false, &[ServiceName::new("default", "web")]))).unwrap();
    let diff = snap2.expected_state().diff(&rt.block_on(dp.inspect()).unwrap());
    assert!(diff.is_empty(), "after the partial sync: {diff:#?}");

    // A full sync with nothing changed touches nothing.
    rt.block_on(dp.sync(request(snap2.clone(), true, &[]))).unwrap();

    // Cleanup from a fresh backend leaves nothing of ours.
    let fresh = rt.block_on(backend_ipvs::factory().build(&ctx)).unwrap();
    rt.block_on(fresh.cleanup()).unwrap();
    let left = ns.handle().run(|| NetlinkIpvs::connect().unwrap().services().unwrap()).unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert!(
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "ip", "link", "show", "switchyard0"])
            .output()
            .unwrap()
            .status
            .code()
            != Some(0)
    );
    assert!(!ns.exec("iptables-save").contains("SWITCHYARD-IPVS"));
    assert!(!ns.exec("ipset list -n").contains("SWITCHYARD"));
    // And cleanup twice is fine.
    rt.block_on(fresh.cleanup()).unwrap();
}

#[testkit::needs_root]
#[test]
fn foreign_virtual_servers_are_left_alone() {
    let ns = Netns::new();
    if !ipvs_available(&ns) {
        return;
    }
    let foreign = ServiceKey { protocol: Protocol::Tcp, addr: "172.16.0.1".parse().unwrap(), port: 80 };
    ns.handle()
        .run(move || {
            let mut c = NetlinkIpvs::connect().unwrap();
            c.execute(&[backend_ipvs::message::Request::NewService(backend_ipvs::message::VirtualServer {
                key: foreign,
                scheduler: "wlc".into(),
                flags: 0,
                timeout: 0,
                netmask: u32::MAX,
            })])
            .unwrap();
        })
        .unwrap();
    let ctx = BackendContext::new("node-a", ns.handle());
    let rt = rt();
    let dp = rt.block_on(backend_ipvs::factory().build(&ctx)).unwrap();
    let (services, slices) = web_objects(&["10.244.1.5"]);
    rt.block_on(dp.sync(request(snapshot(services, slices), true, &[]))).unwrap();
    rt.block_on(dp.cleanup()).unwrap();
    let left = ns.handle().run(|| NetlinkIpvs::connect().unwrap().services().unwrap()).unwrap();
    assert_eq!(left.iter().map(|v| v.key).collect::<Vec<_>>(), vec![foreign]);
}

/// Real packets: a client on the node reaches a pod through the ClusterIP,
/// and an established connection survives the endpoint leaving (weight 0).
#[testkit::needs_root]
#[test]
fn tcp_through_a_cluster_ip_and_graceful_termination() {
    let node = Netns::new();
    if !ipvs_available(&node) {
        return;
    }
    let pod = Netns::new();
    // testkit's star plan: the pod 10.244.1.5 behind the node's 10.244.1.1.
    let (gw, ip) = (plan::cidr(plan::pod_gateway(1), 24), plan::cidr(plan::pod_ip(1), 24));
    plan::spoke(&node.guard, "vpod", &pod.guard, &gw, &ip).unwrap();
    plan::forward(&node.guard).unwrap();

    // An echo server in the pod: answers with the client address it saw.
    let listener = pod.handle().run(|| TcpListener::bind("10.244.1.5:8080")).unwrap().unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, peer) = listener.accept().unwrap();
            s.write_all(format!("{peer}\n").as_bytes()).unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        }
    });

    let svc = ServiceBuilder::new("default", "web", "10.96.0.10").port("", 80, "TCP").build();
    let slice = |eps: &[&str]| {
        let mut s = SliceBuilder::new("default", "web-1", "web").port("", 8080, "TCP");
        for e in eps {
            s = s.endpoint(endpoint(e).node("node-a"));
        }
        s.build()
    };
    let ctx = BackendContext::new("node-a", node.handle());
    let rt = rt();
    let dp = rt.block_on(backend_ipvs::factory().build(&ctx)).unwrap();
    rt.block_on(dp.sync(request(snapshot(vec![svc.clone()], vec![slice(&["10.244.1.5"])]), true, &[]))).unwrap();

    let connect = || {
        node.handle()
            .run(|| {
                let mut s = TcpStream::connect_timeout(
                    &"10.96.0.10:80".parse::<SocketAddr>().unwrap(),
                    Duration::from_secs(5),
                )?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut line = [0u8; 64];
                let n = s.read(&mut line)?;
                Ok::<_, std::io::Error>((s, String::from_utf8_lossy(&line[..n]).trim().to_string()))
            })
            .unwrap()
            .expect("connect through the ClusterIP")
    };
    let (established, seen) = connect();
    // Node traffic whose source would be the VIP is masqueraded to the node's address.
    assert!(seen.starts_with("10.244.1.1:"), "pod saw {seen}");

    // The endpoint leaves while the connection is open: weight 0, connection kept.
    rt.block_on(dp.sync(request(
        snapshot(vec![svc.clone()], vec![slice(&[])]),
        false,
        &[ServiceName::new("default", "web")],
    )))
    .unwrap();
    let ipvs = node.exec("cat /proc/net/ip_vs");
    assert!(ipvs.contains("0AF40105:1F90      Masq    0"), "draining real server at weight 0: {ipvs}");
    let mut established = established;
    established.write_all(b"still here").expect("established connection survives");
    drop(established);
    let (_, seen) = connect_after_endpoint_returns(&rt, &dp, &svc, slice(&["10.244.1.5"]), &node);
    assert!(seen.starts_with("10.244.1.1:"));
    server.join().unwrap();
    rt.block_on(dp.cleanup()).unwrap();
}

fn connect_after_endpoint_returns(
    rt: &tokio::runtime::Runtime,
    dp: &Arc<dyn proxy_core::Dataplane>,
    svc: &k8s_openapi::api::core::v1::Service,
    slice: k8s_openapi::api::discovery::v1::EndpointSlice,
    node: &Netns,
) -> (TcpStream, String) {
    rt.block_on(dp.sync(request(
        snapshot(vec![svc.clone()], vec![slice]),
        false,
        &[ServiceName::new("default", "web")],
    )))
    .unwrap();
    node.handle()
        .run(|| {
            let mut s =
                TcpStream::connect_timeout(&"10.96.0.10:80".parse::<SocketAddr>().unwrap(), Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut line = [0u8; 64];
            let n = s.read(&mut line)?;
            Ok::<_, std::io::Error>((s, String::from_utf8_lossy(&line[..n]).trim().to_string()))
        })
        .unwrap()
        .expect("connect after the endpoint returned")
}

/// The helper rules (needs iptables and ipset, not IPVS: runs on the host
/// too): what `rules_script` writes reads back from the kernel as written, so
/// a full sync rewrites nothing; a flushed helper chain, a deleted jump and a
/// flushed set are found and put right.
#[testkit::needs_root]
#[test]
fn helper_rules_and_sets_are_compared_and_repaired() {
    use backend_ipvs::rules::{self, Member, RulesRepair, SetKind, Sets};
    use proxy_core::{IpFamily, MasqueradeConfig};
    let ns = Netns::new();
    let here = ns.handle();
    let families = [IpFamily::V4, IpFamily::V6];
    let masq = MasqueradeConfig {
        all: false,
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap(), "fd00:10::/64".parse().unwrap()],
    };
    let mut want = Sets::new();
    let members: BTreeSet<Member> =
        (1..=3).map(|i| Member::ip_port(format!("10.96.0.{i}").parse().unwrap(), Protocol::Tcp, 80)).collect();
    want.insert((SetKind::ClusterIp, IpFamily::V4), members.clone());
    rules::apply_sets(&here, &rules::reconcile_sets_script(&Sets::new(), &want, &families)).unwrap();
    // The plain binaries: what `ns.exec("iptables…")` below reads and changes.
    let writer = rules::RuleWriter { variant: backend_iptables::exec::Variant::Plain, mark: 0x4000 };
    let first = rules::reconcile_rules(&here, &families, &masq, &writer).unwrap();
    assert_eq!((first.chains, first.jumps), (10, 8), "a first sync writes everything: {first:?}");
    let written = ns.exec("iptables-save");
    // Nothing changed: nothing differs, nothing is written.
    assert_eq!(rules::reconcile_rules(&here, &families, &masq, &writer).unwrap(), RulesRepair::default());

    // Someone flushes a helper chain and deletes our jump from nat PREROUTING.
    let postrouting = written.lines().filter(|l| l.starts_with("-A SWITCHYARD-IPVS-POSTROUTING ")).count();
    ns.exec("iptables -t nat -F SWITCHYARD-IPVS-POSTROUTING");
    ns.exec("iptables -t nat -D PREROUTING -m comment --comment 'switchyard ipvs' -j SWITCHYARD-IPVS-SERVICES");
    let repair = rules::reconcile_rules(&here, &families, &masq, &writer).unwrap();
    assert_eq!(repair, RulesRepair { chains: 0, rules: postrouting, jumps: 1 });
    assert_eq!(table_lines(&ns.exec("iptables-save"), "nat"), table_lines(&written, "nat"));

    // Someone flushes a set: the members that were ours are missing.
    ns.exec("ipset flush SWITCHYARD-CLUSTER-IP");
    let have = rules::read_all_sets(&here).unwrap();
    let (missing_sets, lost) = rules::set_drift(&have, &want, &want, &families);
    assert!(missing_sets.is_empty());
    assert_eq!(lost, 3);
    rules::apply_sets(&here, &rules::reconcile_sets_script(&have, &want, &families)).unwrap();
    assert_eq!(rules::read_all_sets(&here).unwrap()[&(SetKind::ClusterIp, IpFamily::V4)], members);
    rules::cleanup(&here, &families).unwrap();
}

/// One table of an iptables-save output, without its comment lines.
fn table_lines(save: &str, table: &str) -> Vec<String> {
    let mut keep = false;
    let mut out = Vec::new();
    for line in save.lines().filter(|l| !l.starts_with('#')) {
        if line.starts_with('*') {
            keep = line == format!("*{table}");
        }
        if keep {
            out.push(line.to_string());
        }
    }
    out
}

/// Issue 18 for IPVS: every full sync takes the kernel as witness. Whatever
/// someone else deletes or changes (switchyard0 deleted or set down, one of
/// our virtual or real servers deleted, a set flushed, a helper chain
/// flushed, a jump deleted, a sysctl reset) is put right by the next full
/// sync and reported in `repairs` by kind; cleanup from a fresh process puts
/// the sysctls back.
#[testkit::needs_root]
#[test]
fn full_sync_repairs_what_someone_else_broke() {
    let ns = Netns::new();
    if !ipvs_available(&ns) {
        return;
    }
    ns.exec("ip link add eth0 type dummy");
    ns.exec("ip addr add 192.168.1.10/24 dev eth0");
    ns.exec("ip link set eth0 up");
    let sysctl = |name: &str| ns.exec(&format!("cat /proc/sys/net/ipv4/vs/{name}")).trim().to_string();
    let before = sysctl("expire_nodest_conn");
    let ctx = BackendContext::new("node-a", ns.handle());
    let rt = rt();
    let dp = rt.block_on(backend_ipvs::factory().build(&ctx)).unwrap();
    let (services, slices) = web_objects(&["10.244.1.5", "10.244.1.6"]);
    let snap = snapshot(services, slices);
    rt.block_on(dp.sync(request(snap.clone(), true, &[]))).unwrap();
    assert_eq!(sysctl("expire_nodest_conn"), "1");
    let full_sync = || {
        let out = rt.block_on(dp.sync(request(snap.clone(), true, &[]))).unwrap();
        let diff = snap.expected_state().diff(&rt.block_on(dp.inspect()).unwrap());
        assert!(diff.is_empty(), "after the repair: {diff:#?}");
        out.repairs.into_iter().collect::<Vec<(String, u64)>>()
    };
    let kinds = |pairs: &[(&str, u64)]| pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect::<Vec<_>>();
    assert_eq!(full_sync(), kinds(&[]), "nothing changed, nothing repaired");

    // `ip link del switchyard0`: the interface and its VIPs (ClusterIPs, the externalIP) come back.
    let vips = ns.exec("ip -o addr show dev switchyard0").lines().filter(|l| l.contains(" inet ")).count();
    assert_eq!(vips, 3);
    ns.exec("ip link del switchyard0");
    assert_eq!(full_sync(), kinds(&[("address", vips as u64), ("interface", 1)]));
    // `ip link set switchyard0 down`.
    ns.exec("ip link set switchyard0 down");
    assert_eq!(full_sync(), kinds(&[("interface", 1)]));
    assert!(ns.exec("ip link show switchyard0").contains(",UP"));
    // `ipvsadm -D -t 10.96.0.10:80` and `ipvsadm -d -t 10.96.0.10:53 -r 10.244.1.5:5353` (UDP).
    let tcp = ServiceKey { protocol: Protocol::Tcp, addr: "10.96.0.10".parse().unwrap(), port: 80 };
    let udp = ServiceKey { protocol: Protocol::Udp, addr: "10.96.0.10".parse().unwrap(), port: 53 };
    ns.handle()
        .run(move || {
            NetlinkIpvs::connect()
                .unwrap()
                .execute(&[
                    backend_ipvs::message::Request::DelService(tcp),
                    backend_ipvs::message::Request::DelDest(udp, "10.244.1.5".parse().unwrap(), 5353),
                ])
                .unwrap()
        })
        .unwrap();
    assert_eq!(full_sync(), kinds(&[("real server", 1), ("virtual server", 1)]));
    // `ipset flush SWITCHYARD-CLUSTER-IP` (web's 2 ports, np's ClusterIP).
    let members = ns
        .exec("ipset list SWITCHYARD-CLUSTER-IP")
        .lines()
        .skip_while(|l| !l.starts_with("Members:"))
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count();
    assert_eq!(members, 3);
    ns.exec("ipset flush SWITCHYARD-CLUSTER-IP");
    assert_eq!(full_sync(), kinds(&[("ipset member", members as u64)]));
    // A helper chain flushed, a jump deleted.
    let rules =
        ns.exec("iptables-save -t nat").lines().filter(|l| l.starts_with("-A SWITCHYARD-IPVS-POSTROUTING ")).count();
    ns.exec("iptables -t nat -F SWITCHYARD-IPVS-POSTROUTING");
    ns.exec("iptables -t filter -D INPUT -m comment --comment 'switchyard ipvs' -j SWITCHYARD-IPVS-FILTER");
    assert_eq!(full_sync(), kinds(&[("hook jump", 1), ("rule", rules as u64)]));
    // A sysctl reset.
    ns.exec("sh -c 'echo 0 > /proc/sys/net/ipv4/vs/expire_nodest_conn'");
    assert_eq!(full_sync(), kinds(&[("sysctl", 1)]));
    assert_eq!(full_sync(), kinds(&[]), "all put right");

    // A partial sync still works after the repairs.
    let (services, slices) = web_objects(&["10.244.1.5"]);
    let snap2 = snapshot(services, slices);
    let out = rt.block_on(dp.sync(request(snap2.clone(), false, &[ServiceName::new("default", "web")]))).unwrap();
    assert!(out.repairs.is_empty());
    let diff = snap2.expected_state().diff(&rt.block_on(dp.inspect()).unwrap());
    assert!(diff.is_empty(), "after the partial sync: {diff:#?}");

    // Cleanup from a fresh process writes back the values found before.
    let fresh = rt.block_on(backend_ipvs::factory().build(&ctx)).unwrap();
    rt.block_on(fresh.cleanup()).unwrap();
    assert_eq!(sysctl("expire_nodest_conn"), before);
}

/// kube-proxy's ipvs-mode state as it leaves it (kube-ipvs0 with a
/// ClusterIP, a virtual server there and a NodePort one on a node address,
/// a `KUBE-*` ipset) is removed by `remove_other_proxy`; a virtual server
/// on neither, and a set of another name, stay.
#[testkit::needs_root]
#[test]
fn another_proxys_ipvs_state_is_removed_and_nothing_else() {
    let ns = Netns::new();
    if !ipvs_available(&ns) {
        return;
    }
    ns.exec("ip link add kube-ipvs0 type dummy");
    ns.exec("ip addr add 10.96.0.10/32 dev kube-ipvs0");
    // The node's own address (lo's do not count as node addresses).
    ns.exec("ip link add node0 type dummy");
    ns.exec("ip addr add 192.168.50.1/24 dev node0");
    ns.exec("ip link set node0 up");
    ns.exec("ipset create KUBE-CLUSTER-IP hash:ip,port");
    ns.exec("ipset create OTHER-SET hash:ip");
    let key = |addr: &str, port| ServiceKey { protocol: Protocol::Tcp, addr: addr.parse().unwrap(), port };
    let (cluster_ip, node_port, foreign) = (key("10.96.0.10", 80), key("192.168.50.1", 30080), key("172.16.0.1", 80));
    ns.handle()
        .run(move || {
            let mut c = NetlinkIpvs::connect().unwrap();
            let vs = |key| {
                backend_ipvs::message::Request::NewService(backend_ipvs::message::VirtualServer {
                    key,
                    scheduler: "rr".into(),
                    flags: 0,
                    timeout: 0,
                    netmask: u32::MAX,
                })
            };
            c.execute(&[vs(cluster_ip), vs(node_port), vs(foreign)]).unwrap();
        })
        .unwrap();
    let removed = ns
        .handle()
        .run(|| {
            backend_ipvs::cleanup::remove_other_proxy("kube-ipvs0", true, (30000, 32767), &|n: &str| {
                n.starts_with("KUBE-")
            })
        })
        .unwrap()
        .unwrap();
    assert_eq!(
        (removed.link, removed.virtual_servers, removed.sets.clone()),
        (true, 2, vec!["KUBE-CLUSTER-IP".into()])
    );
    let left = ns.handle().run(|| NetlinkIpvs::connect().unwrap().services().unwrap()).unwrap();
    assert_eq!(left.iter().map(|v| v.key).collect::<Vec<_>>(), vec![foreign]);
    assert!(!ns.exec("ip -o link show").contains("kube-ipvs0"));
    assert_eq!(ns.exec("ipset list -n").trim(), "OTHER-SET");
}
