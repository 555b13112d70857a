//! Real packets in throwaway network namespaces (root only; ignored otherwise: see `testkit::needs_root`).
//!
//! Topology, one set of namespaces per test, names `swy-ipt-<pid>-<n>-<role>`:
//!
//! ```text
//!   client (192.168.0.100) ── node (192.168.0.2 | 10.180.0.1 | 10.180.1.1) ── pod1 (10.180.0.10)
//!                                                                        └── pod2 (10.180.1.10)
//! ```
//! The node namespace is where the backend programs iptables; pods run a
//! TCP/UDP echo that answers with its name and the peer address it saw.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions panic on broken fixtures")]

mod common;

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use backend_iptables::{IptablesDataplane, Variant};
use common::lab::Lab;
use common::*;
use proxy_core::testing::{ServiceBuilder, SliceBuilder, endpoint};
use proxy_core::{ChangeTracker, FamilySet, IpFamily};

fn services() -> (Vec<ServiceBuilder>, Vec<SliceBuilder>) {
    let svcs = vec![
        ServiceBuilder::new("lab", "web", "172.30.0.10").node_port("http", 80, "TCP", 30080).port("dns", 53, "UDP"),
        ServiceBuilder::new("lab", "empty", "172.30.0.11").port("http", 80, "TCP"),
    ];
    let slices = vec![
        SliceBuilder::new("lab", "web-http", "web")
            .port("http", 8080, "TCP")
            .endpoint(endpoint("10.180.0.10").node(NODE))
            .endpoint(endpoint("10.180.1.10").node("node-2")),
        SliceBuilder::new("lab", "web-dns", "web")
            .port("dns", 5353, "UDP")
            .endpoint(endpoint("10.180.0.10").node(NODE)),
    ];
    (svcs, slices)
}

fn tracker_for_lab() -> ChangeTracker {
    let (svcs, slices) = services();
    tracker(planner(FamilySet::V4, masquerade()), svcs, slices)
}

async fn real_packets(variant: Variant) {
    let lab = Lab::new();
    lab.echo("pod1", &[8080], &[5353]);
    lab.echo("pod2", &[8080], &[5353]);
    let dp = lab.dataplane(variant, masquerade());
    let mut t = tracker_for_lab();
    let snapshot = t.snapshot();
    use proxy_core::Dataplane;
    assert_eq!(dp.variant(), variant);
    let outcome = dp.sync(request(snapshot.clone(), &[], true)).await.unwrap();
    assert!(outcome.full);

    let vip: SocketAddr = "172.30.0.10:80".parse().unwrap();
    // From outside: both endpoints, source masqueraded (not a cluster source).
    let mut seen = std::collections::BTreeSet::new();
    testkit::eventually_sync("both endpoints answer the client", || {
        let answer = lab.tcp("client", vip).ok()?;
        let (pod, peer) = answer.split_once(' ')?;
        assert!(peer.starts_with("10.180."), "client traffic to a ClusterIP is masqueraded, endpoint saw {peer}");
        seen.insert(pod.to_string());
        (seen.len() == 2).then_some(())
    })
    .await;
    // From a pod: source preserved, except hairpin (pod1 to itself) which is masqueraded.
    let mut seen = std::collections::BTreeSet::new();
    testkit::eventually_sync("pod1 reaches both endpoints", || {
        let answer = lab.tcp("pod1", vip).ok()?;
        let (pod, peer) = answer.split_once(' ')?;
        match pod {
            "pod2" => assert_eq!(peer, "10.180.0.10", "pod to pod keeps the source"),
            _ => assert_eq!(peer, "10.180.0.1", "hairpin is masqueraded"),
        }
        seen.insert(pod.to_string());
        (seen.len() == 2).then_some(())
    })
    .await;
    // From the node itself, and through the node port.
    assert!(lab.tcp("node", vip).unwrap().starts_with("pod"));
    assert!(lab.tcp("client", "192.168.0.2:30080".parse().unwrap()).unwrap().starts_with("pod"));
    // No endpoints: refused at once, not a timeout.
    let err = lab.tcp("client", "172.30.0.11:80".parse().unwrap()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    let err = lab.tcp("node", "172.30.0.11:80".parse().unwrap()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    // UDP.
    let answer = lab.in_ns("client", || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(b"hi", "172.30.0.10:53").unwrap();
        let mut buf = [0u8; 128];
        let (n, _) = s.recv_from(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    assert!(answer.starts_with("pod1"), "{answer}");
    // The kernel reads back as the plans say.
    let found = dp.inspect().await.unwrap();
    let diff = snapshot.expected_state().diff(&found);
    assert!(diff.is_empty(), "{diff:?}");
    // The kernel holds the rules as we wrote them, text for text (so a
    // partial sync's `-D` and our diffs see what we meant).
    let saved = backend_iptables::parse::Ruleset::parse_save(&lab.save(variant)).unwrap();
    let fake = std::sync::Arc::new(backend_iptables::fake::FakeIptables::new());
    let mut s = settings(FamilySet::V4);
    s.node_ips = vec!["192.168.0.2".parse().unwrap()];
    IptablesDataplane::with_executor(s, fake.clone()).sync_blocking(&request(snapshot, &[], true)).unwrap();
    let rendered = fake.ruleset(IpFamily::V4);
    for (table, t) in &rendered.tables {
        for (chain, c) in t.chains.iter().filter(|(n, _)| backend_iptables::names::is_ours(n)) {
            assert_eq!(saved.table(*table).unwrap().rules(chain), c.rules.as_slice(), "{table} {chain}");
        }
    }
}

#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_packets_nft() {
    real_packets(Variant::Nft).await;
}

#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_packets_legacy() {
    real_packets(Variant::Legacy).await;
}

#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_sync_canary_and_stale_udp() {
    use proxy_core::Dataplane;
    let variant = Variant::Nft;
    let lab = Lab::new();
    lab.echo("pod1", &[8080], &[5353]);
    lab.echo("pod2", &[8080], &[5353]);
    let dp = lab.dataplane(variant, masquerade());
    let mut t = tracker_for_lab();
    dp.sync(request(t.snapshot(), &[], true)).await.unwrap();

    // A UDP client keeps one socket; its flow is pinned to pod1 by conntrack.
    let client = lab.in_ns("client", || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    });
    let ask = |s: &UdpSocket| -> String {
        s.send_to(b"hi", "172.30.0.10:53").unwrap();
        let mut buf = [0u8; 128];
        match s.recv_from(&mut buf) {
            Ok((n, _)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => format!("error {e}"),
        }
    };
    assert!(ask(&client).starts_with("pod1"));

    // Partial sync: the UDP port moves to pod2, the TCP one loses pod2.
    apply_slice(
        &mut t,
        SliceBuilder::new("lab", "web-dns", "web")
            .port("dns", 5353, "UDP")
            .endpoint(endpoint("10.180.1.10").node("node-2")),
    );
    apply_slice(
        &mut t,
        SliceBuilder::new("lab", "web-http", "web")
            .port("http", 8080, "TCP")
            .endpoint(endpoint("10.180.0.10").node(NODE)),
    );
    let outcome = dp.sync(request(t.snapshot(), &["lab/web"], false)).await.unwrap();
    assert!(!outcome.full, "an endpoint change is a partial sync");
    // The stale entry was deleted: the same socket now reaches pod2.
    let answer = ask(&client);
    assert!(answer.starts_with("pod2"), "stale UDP conntrack entry survived: {answer}");
    for _ in 0..10 {
        assert!(lab.tcp("client", "172.30.0.10:80".parse().unwrap()).unwrap().starts_with("pod1"));
    }

    // An admin flushes the nat table: the next periodic sync notices and repairs.
    lab.iptables(variant, &["-t", "nat", "-F"]);
    assert!(lab.tcp("client", "172.30.0.10:80".parse().unwrap()).is_err());
    let outcome = dp.sync(request(t.snapshot(), &[], true)).await.unwrap();
    assert!(outcome.full, "the canary forces a full sync");
    assert!(lab.tcp("client", "172.30.0.10:80".parse().unwrap()).unwrap().starts_with("pod1"));
}

#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_from_leftovers_and_cleans_up() {
    use proxy_core::Dataplane;
    for variant in [Variant::Nft, Variant::Legacy] {
        let lab = Lab::new();
        lab.echo("pod1", &[8080], &[]);
        lab.echo("pod2", &[8080], &[]);
        // Someone else's rules, and leftovers of an older switchyard.
        let leftovers = "*nat\n:KUBE-SERVICES - [0:0]\n:SWITCHYARD-OLD-SVC - [0:0]\n:SWITCHYARD-SERVICES - [0:0]\n\
            -A PREROUTING -j KUBE-SERVICES\n-A PREROUTING -j SWITCHYARD-OLD-SVC\n-A OUTPUT -j SWITCHYARD-SERVICES\n\
            -A SWITCHYARD-OLD-SVC -p tcp -j DNAT --to-destination 10.180.1.10:8080\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n";
        let out = lab
            .ns("node")
            .command(variant.binary(IpFamily::V4, backend_iptables::exec::Tool::Restore))
            .unwrap()
            .arg("--noflush")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(leftovers.as_bytes())?;
                c.wait()
            })
            .unwrap();
        assert!(out.success());
        let dp = lab.dataplane(variant, masquerade());
        let mut t = tracker_for_lab();
        let snapshot = t.snapshot();
        dp.sync(request(snapshot.clone(), &[], true)).await.unwrap();
        let saved = lab.save(variant);
        assert!(!saved.contains("SWITCHYARD-OLD-SVC"), "{saved}");
        assert!(saved.contains("-A PREROUTING -j KUBE-SERVICES"), "foreign rules stay: {saved}");
        assert_eq!(
            saved.matches("-j SWITCHYARD-SERVICES").count(),
            2,
            "one hook each in PREROUTING and OUTPUT: {saved}"
        );
        assert!(dp.inspect().await.unwrap().frontends.len() >= 3);
        // The leftover DNAT (everything to pod2) is gone: the Service without endpoints refuses.
        let err = lab.tcp("client", "172.30.0.11:80".parse().unwrap()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);

        // Cleanup from a fresh process (a new backend on the same namespace).
        let fresh = lab.dataplane(variant, masquerade());
        fresh.cleanup().await.unwrap();
        let saved = lab.save(variant);
        assert!(!saved.contains("SWITCHYARD"), "{saved}");
        assert!(saved.contains("-A PREROUTING -j KUBE-SERVICES"), "{saved}");
        assert!(fresh.inspect().await.unwrap().frontends.is_empty());
        fresh.cleanup().await.unwrap();
    }
}

#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_packets_ipv6() {
    use proxy_core::Dataplane;
    let lab = Lab::new();
    lab.echo("pod1", &[8080], &[]);
    lab.echo("pod2", &[8080], &[]);
    let svcs = vec![
        ServiceBuilder::new("lab", "web6", "172.30.0.20")
            .cluster_ips(&["172.30.0.20", "fd00:30::20"])
            .node_port("http", 80, "TCP", 30081),
        ServiceBuilder::new("lab", "empty6", "fd00:30::21").cluster_ips(&["fd00:30::21"]).port("http", 80, "TCP"),
    ];
    let slices = vec![
        SliceBuilder::new("lab", "web6-4", "web6")
            .port("http", 8080, "TCP")
            .endpoint(endpoint("10.180.0.10").node(NODE)),
        SliceBuilder::new("lab", "web6-6", "web6")
            .address_type("IPv6")
            .port("http", 8080, "TCP")
            .endpoint(endpoint("fd00:180::10").node(NODE))
            .endpoint(endpoint("fd00:181::10").node("node-2")),
    ];
    let mut t = tracker(planner(FamilySet::DUAL, masquerade()), svcs, slices);
    let snapshot = t.snapshot();
    let dp = lab.dataplane_for(Variant::Nft, masquerade(), FamilySet::DUAL);
    dp.sync(request(snapshot.clone(), &[], true)).await.unwrap();
    let vip: SocketAddr = "[fd00:30::20]:80".parse().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    testkit::eventually_sync("both IPv6 endpoints answer", || {
        let answer = lab.tcp("client", vip).ok()?;
        seen.insert(answer.split(' ').next()?.to_string());
        (seen.len() == 2).then_some(())
    })
    .await;
    // Pods, the node itself and node-port clients; the IPv4 ClusterIP of the same Service.
    assert!(lab.tcp("pod1", vip).unwrap().starts_with("pod"));
    assert!(lab.tcp("node", vip).unwrap().starts_with("pod"));
    assert!(lab.tcp("client", "[fd00:1::2]:30081".parse().unwrap()).unwrap().starts_with("pod"));
    assert!(lab.tcp("client", "172.30.0.20:80".parse().unwrap()).unwrap().starts_with("pod1"));
    let err = lab.tcp("client", "[fd00:30::21]:80".parse().unwrap()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    let diff = snapshot.expected_state().diff(&dp.inspect().await.unwrap());
    assert!(diff.is_empty(), "{diff:?}");
    dp.cleanup().await.unwrap();
    assert!(!lab.save(Variant::Nft).contains("SWITCHYARD"));
}

/// The full request of every sync period, for the same snapshot.
fn periodic(snapshot: &std::sync::Arc<proxy_core::Snapshot>) -> proxy_core::SyncRequest {
    request(snapshot.clone(), &[], true)
}

fn repairs(pairs: &[(&str, u64)]) -> std::collections::BTreeMap<String, u64> {
    pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

fn saved(lab: &Lab, variant: Variant) -> backend_iptables::parse::Ruleset {
    backend_iptables::parse::Ruleset::parse_save(&lab.save(variant)).unwrap()
}

/// `iptables -t nat <op> <chain> [index] <rule>` with the rule as iptables-save prints it.
fn nat_rule_op(lab: &Lab, variant: Variant, op: &str, chain: &str, index: Option<usize>, rule: &str) {
    let words = backend_iptables::parse::tokenize(rule).unwrap();
    let index = index.map(|i| i.to_string());
    let mut args = vec!["-t", "nat", op, chain];
    args.extend(index.as_deref());
    args.extend(words.iter().map(String::as_str));
    lab.iptables(variant, &args);
}

/// Finding 8 of issue 18: tampering that spares the canary (a deleted hook,
/// a flushed or deleted Service chain, a changed DNAT rule) used to stay
/// broken until the hourly full sync. Every full request now compares the
/// kernel with what we wrote, repairs the difference and reports it.
async fn full_sync_repairs_tampering(variant: Variant) {
    use backend_iptables::restore::Table;
    use proxy_core::Dataplane;
    let lab = Lab::new();
    lab.echo("pod1", &[8080], &[5353]);
    lab.echo("pod2", &[8080], &[5353]);
    let dp = lab.dataplane(variant, masquerade());
    let mut t = tracker_for_lab();
    let snapshot = t.snapshot();
    dp.sync(periodic(&snapshot)).await.unwrap();
    let vip: SocketAddr = "172.30.0.10:80".parse().unwrap();
    let node_port: SocketAddr = "192.168.0.2:30080".parse().unwrap();
    let out = dp.sync(periodic(&snapshot)).await.unwrap();
    assert!(out.repairs.is_empty(), "no drift, nothing repaired: {:?}", out.repairs);

    // Our jump from nat PREROUTING deleted: no Service reachable from outside.
    let hook = backend_iptables::render::hooks()
        .into_iter()
        .find(|h| h.table == Table::Nat && h.chain == "PREROUTING")
        .unwrap();
    nat_rule_op(&lab, variant, "-D", "PREROUTING", None, &hook.rule);
    let out = dp.sync(periodic(&snapshot)).await.unwrap();
    assert_eq!(out.repairs, repairs(&[("hook jump", 1)]), "{variant}");
    assert!(lab.tcp("client", vip).unwrap().starts_with("pod"));

    // A Service chain flushed (`iptables -t nat -F SWITCHYARD-SVC-...`).
    let rs = saved(&lab, variant);
    let nat = rs.table(Table::Nat).unwrap();
    let (svc, rules) = nat
        .chains
        .iter()
        .find(|(name, c)| name.starts_with("SWITCHYARD-SVC-") && c.rules.iter().any(|r| r.contains("DNAT")))
        .map(|(name, c)| (name.clone(), c.rules.len()))
        .unwrap();
    lab.iptables(variant, &["-t", "nat", "-F", &svc]);
    let out = dp.sync(periodic(&snapshot)).await.unwrap();
    assert_eq!(out.repairs, repairs(&[("rule", rules as u64)]), "{variant}");
    assert!(lab.tcp("client", node_port).unwrap().starts_with("pod"));

    // The same Service chain deleted, with the jumps into it.
    let rs = saved(&lab, variant);
    let jumps: Vec<(String, String)> = rs
        .table(Table::Nat)
        .unwrap()
        .chains
        .iter()
        .flat_map(|(name, c)| c.rules.iter().map(move |r| (name.clone(), r.clone())))
        .filter(|(_, r)| r.ends_with(&format!("-j {svc}")))
        .collect();
    assert!(!jumps.is_empty());
    for (chain, rule) in &jumps {
        nat_rule_op(&lab, variant, "-D", chain, None, rule);
    }
    lab.iptables(variant, &["-t", "nat", "-F", &svc]);
    lab.iptables(variant, &["-t", "nat", "-X", &svc]);
    let out = dp.sync(periodic(&snapshot)).await.unwrap();
    assert_eq!(out.repairs, repairs(&[("chain", 1), ("rule", jumps.len() as u64)]), "{variant}");
    assert!(lab.tcp("client", node_port).unwrap().starts_with("pod"));

    // One DNAT rule changed: pod2's endpoint now goes to pod1.
    let rs = saved(&lab, variant);
    let (leaf, index, rule) = rs
        .table(Table::Nat)
        .unwrap()
        .chains
        .iter()
        .filter(|(name, _)| backend_iptables::names::is_ours(name))
        .find_map(|(name, c)| {
            c.rules.iter().position(|r| r.contains("--to-destination 10.180.1.10:8080")).map(|i| (name, i, &c.rules[i]))
        })
        .unwrap();
    let changed = rule.replace("10.180.1.10:8080", "10.180.0.10:8080");
    nat_rule_op(&lab, variant, "-R", leaf, Some(index + 1), &changed);
    assert!(saved(&lab, variant).table(Table::Nat).unwrap().rules(leaf).contains(&changed));
    let out = dp.sync(periodic(&snapshot)).await.unwrap();
    assert_eq!(out.repairs, repairs(&[("rule", 1)]), "{variant}");
    let mut seen = std::collections::BTreeSet::new();
    testkit::eventually_sync("both endpoints answer again", || {
        seen.insert(lab.tcp("client", vip).ok()?.split(' ').next()?.to_string());
        (seen.len() == 2).then_some(())
    })
    .await;
    // The kernel holds exactly what we wrote, so the next sync finds nothing.
    let out = dp.sync(periodic(&snapshot)).await.unwrap();
    assert!(out.repairs.is_empty(), "{:?}", out.repairs);
    let diff = snapshot.expected_state().diff(&dp.inspect().await.unwrap());
    assert!(diff.is_empty(), "{diff:?}");

    // Partial syncs still work after the repairs.
    apply_slice(
        &mut t,
        SliceBuilder::new("lab", "web-http", "web")
            .port("http", 8080, "TCP")
            .endpoint(endpoint("10.180.0.10").node(NODE)),
    );
    let out = dp.sync(request(t.snapshot(), &["lab/web"], false)).await.unwrap();
    assert!(!out.full && out.repairs.is_empty(), "{out:?}");
    for _ in 0..5 {
        assert!(lab.tcp("client", vip).unwrap().starts_with("pod1"));
    }
}

#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_repairs_tampering_nft() {
    full_sync_repairs_tampering(Variant::Nft).await;
}

#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_repairs_tampering_legacy() {
    full_sync_repairs_tampering(Variant::Legacy).await;
}

/// Every rule shape we write reads back from the kernel as we wrote it, so
/// a periodic full sync of an untouched kernel reports no repair (and, on
/// nf_tables, commits nothing): no false drift, every sync period.
#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_false_drift_for_any_rule_shape() {
    use proxy_core::Dataplane;
    for variant in [Variant::Nft, Variant::Legacy] {
        for (families, (services, slices)) in [(FamilySet::V4, catalog()), (FamilySet::DUAL, catalog_v6())] {
            let lab = Lab::new();
            let dp = lab.dataplane_for(variant, masquerade(), families);
            let mut t = tracker(planner(families, masquerade()), services, slices);
            let snapshot = t.snapshot();
            dp.sync(periodic(&snapshot)).await.unwrap();
            // Someone else commits elsewhere: on nf_tables the generation
            // moves, so the next full sync reads the tables back.
            lab.iptables(variant, &["-t", "mangle", "-N", "SOMEONE-ELSE"]);
            let out = dp.sync(periodic(&snapshot)).await.unwrap();
            assert!(out.repairs.is_empty(), "{variant} {families:?}: {:?}", out.repairs);
            // iptables-save's `# Generated ... on <time>` lines change with the clock.
            let rules = |text: String| text.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n");
            let before = rules(lab.save(variant));
            let out = dp.sync(periodic(&snapshot)).await.unwrap();
            assert!(out.repairs.is_empty(), "{variant} {families:?}: {:?}", out.repairs);
            assert_eq!(rules(lab.save(variant)), before);
        }
    }
}

fn route_localnet(lab: &Lab) -> String {
    lab.in_ns("node", || std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/route_localnet").unwrap())
        .trim()
        .to_string()
}

fn set_route_localnet(lab: &Lab, value: &str) {
    lab.in_ns("node", || std::fs::write("/proc/sys/net/ipv4/conf/all/route_localnet", value).unwrap());
}

/// Finding 9 of issue 18 (route_localnet): the backend sets it for localhost
/// node ports; cleanup from a fresh process (a new backend value, as
/// `switchyard --cleanup` or another mode's start-up makes) puts back what
/// was there if we changed it, and leaves a value we did not change alone.
#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_localnet_is_restored_on_cleanup() {
    use proxy_core::Dataplane;
    for before in ["0", "1"] {
        let lab = Lab::new();
        set_route_localnet(&lab, before);
        let dp = lab.dataplane(Variant::Nft, masquerade());
        let snapshot = tracker_for_lab().snapshot();
        dp.sync(periodic(&snapshot)).await.unwrap();
        assert_eq!(route_localnet(&lab), "1", "localhost node ports need it");
        if before == "0" {
            // Reset behind our back: the next full sync sets it again and says so.
            set_route_localnet(&lab, "0");
            let out = dp.sync(periodic(&snapshot)).await.unwrap();
            assert_eq!(out.repairs, repairs(&[("sysctl", 1)]));
            assert_eq!(route_localnet(&lab), "1");
        }
        // A restart (another backend value) does not take our own 1 for the original.
        let restarted = lab.dataplane(Variant::Nft, masquerade());
        restarted.sync(periodic(&snapshot)).await.unwrap();
        // Cleanup from a fresh process.
        lab.dataplane(Variant::Nft, masquerade()).cleanup().await.unwrap();
        assert_eq!(route_localnet(&lab), before, "cleanup restores the value found before");
        assert!(!lab.save(Variant::Nft).contains("SWITCHYARD"));
        lab.dataplane(Variant::Nft, masquerade()).cleanup().await.unwrap();
        assert_eq!(route_localnet(&lab), before);
    }
}
