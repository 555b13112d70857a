//! Real packets through the eBPF dataplane: see `common` for the lab.

mod common;

use std::net::IpAddr;

use common::*;
use proxy_core::Dataplane;
use proxy_core::testing::{ServiceBuilder, endpoint};

/// Not a test of its own: the host-network client `host_probe` re-executes
/// this binary to run (a no-op in an ordinary run).
#[test]
fn host_client() {
    host_client_main();
}

#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_follow_the_plans() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED packets_follow_the_plans: {reason}");
        return;
    }
    let mut lab = Lab::new();
    lab.serve("p1");
    lab.serve("p2");
    let dp = dataplane(&lab);
    let snap = world();
    dp.sync(request(snap.clone(), true)).await.expect("first sync");

    let node_ip: IpAddr = NODE_IP.parse().expect("ip");
    let p1_ip: IpAddr = "10.244.1.5".parse().expect("ip");
    let p2_ip: IpAddr = "10.244.2.5".parse().expect("ip");
    let (ext, p1, p2) = (lab.netns("ext"), lab.netns("p1"), lab.netns("p2"));

    // ClusterIP from a pod: DNAT, source kept.
    assert_eq!(tcp_probe(&p2, "10.96.0.10:80"), Seen::Reply("p1".into(), p2_ip), "pod -> ClusterIP");
    // NodePort from outside: DNAT + SNAT to the node (policy Cluster).
    assert_eq!(tcp_probe(&ext, "192.168.0.10:30080"), Seen::Reply("p1".into(), node_ip), "outside -> NodePort");
    // ClusterIP from outside the cluster CIDR: masqueraded.
    assert_eq!(tcp_probe(&ext, "10.96.0.10:80"), Seen::Reply("p1".into(), node_ip), "outside -> ClusterIP");
    // UDP ClusterIP.
    assert_eq!(udp_probe(&p1, "10.96.0.53:53"), Seen::Reply("p2".into(), p1_ip), "UDP");
    // No endpoints: refused at once (TCP RST, ICMP port unreachable).
    assert_eq!(tcp_probe(&p1, "10.96.0.40:80"), Seen::Refused, "reject TCP");
    assert_eq!(udp_probe(&ext, "10.96.0.40:53"), Seen::Refused, "reject UDP");
    // Hairpin: p1 reaches itself through its Service, masqueraded.
    assert_eq!(tcp_probe(&p1, "10.96.0.10:80"), Seen::Reply("p1".into(), node_ip), "hairpin");
    // Random spread over both endpoints; affinity sticks to one.
    assert_eq!(pods_hit(&lab, "ext", "10.96.0.20:80", 24).len(), 2, "spread");
    assert_eq!(pods_hit(&lab, "ext", "10.96.0.30:80", 12).len(), 1, "affinity");
    // Host-network client in the cgroup: socket LB; its source (the pod
    // gateway 10.244.1.1, chosen by routing) is masqueraded at egress, as
    // flow() says for node traffic to a ClusterIP.
    assert_eq!(host_probe(&lab, "10.96.0.10:80"), Seen::Reply("p1".into(), node_ip), "host -> ClusterIP");
    assert_eq!(host_probe(&lab, "10.96.0.40:80"), Seen::Refused, "host -> empty Service");

    // inspect() reads the kernel and equals what the plans say.
    let diff = snap.expected_state().diff(&dp.inspect().await.expect("inspect"));
    assert!(diff.is_empty(), "{diff:?}");

    // One client port reaches p1 through the Service, then directly, then
    // through the Service again: p1 holds the first connection in
    // TIME_WAIT, so the datapath moves the later connections' source port
    // (never a challenge ACK, a retransmitted SYN, or a SYN-ACK
    // reverse-NATed to the old frontend).
    for to in ["10.96.0.10:80", "10.244.1.5:8080", "10.96.0.10:80", "10.244.1.5:8080"] {
        assert_eq!(tcp_probe_from(&p2, to, 45001), Seen::Reply("p1".into(), p2_ip), "port 45001 -> {to}");
    }

    // A UDP flow keeps its backend until that endpoint goes away; then its
    // conntrack entries go and the same flow reaches the new endpoint.
    assert_eq!(udp_probe_from(&p1, "10.96.0.53:53", 40053), Seen::Reply("p2".into(), p1_ip), "UDP flow");
    let dns_moved = snapshot(
        vec![
            ServiceBuilder::new("default", "web", "10.96.0.10").node_port("", 80, "TCP", 30080).build(),
            ServiceBuilder::new("default", "dns", "10.96.0.53").port("", 53, "UDP").build(),
            ServiceBuilder::new("default", "empty", "10.96.0.40").port("", 80, "TCP").port("u", 53, "UDP").build(),
            ServiceBuilder::new("default", "both", "10.96.0.20").port("", 80, "TCP").build(),
            ServiceBuilder::new("default", "sticky", "10.96.0.30").port("", 80, "TCP").affinity(Some(60)).build(),
        ],
        vec![
            slice("web-1", "web", 8080, "TCP", vec![endpoint("10.244.1.5").node("node-a")]),
            slice("dns-1", "dns", 5353, "UDP", vec![endpoint("10.244.1.5").node("node-a")]),
            slice(
                "both-1",
                "both",
                8080,
                "TCP",
                vec![endpoint("10.244.1.5").node("node-a"), endpoint("10.244.2.5").node("node-a")],
            ),
            slice(
                "sticky-1",
                "sticky",
                8080,
                "TCP",
                vec![endpoint("10.244.1.5").node("node-a"), endpoint("10.244.2.5").node("node-a")],
            ),
        ],
    );
    let req = changes(&snap, dns_moved.clone());
    assert_eq!(req.changed.len(), 1, "only dns changed: {:?}", req.changed);
    dp.sync(req).await.expect("partial sync (UDP endpoint replaced)");
    assert_eq!(
        udp_probe_from(&p1, "10.96.0.53:53", 40053),
        Seen::Reply("p1".into(), node_ip),
        "UDP flow after the change"
    );
    let diff = dns_moved.expected_state().diff(&dp.inspect().await.expect("inspect"));
    assert!(diff.is_empty(), "after a partial sync: {diff:?}");

    // A one-endpoint change: web moves to p2 (and the other Services go).
    let moved = snapshot(
        vec![ServiceBuilder::new("default", "web", "10.96.0.10").node_port("", 80, "TCP", 30080).build()],
        vec![slice("web-1", "web", 8080, "TCP", vec![endpoint("10.244.2.5").node("node-a")])],
    );
    dp.sync(changes(&dns_moved, moved.clone())).await.expect("partial sync");
    assert_eq!(tcp_probe(&ext, "10.96.0.10:80"), Seen::Reply("p2".into(), node_ip), "after endpoint change");
    let gone = tcp_probe(&p1, "10.96.0.20:80");
    assert!(!matches!(gone, Seen::Reply(..)), "deleted Service is still translated: {gone:?}");

    // Restart: a new process adopts the pins; routing never stopped.
    drop(dp);
    assert_eq!(tcp_probe(&ext, "10.96.0.10:80"), Seen::Reply("p2".into(), node_ip), "after the daemon is gone");
    let dp = dataplane(&lab);
    let diff = moved.expected_state().diff(&dp.inspect().await.expect("inspect"));
    assert!(diff.is_empty(), "adopted state: {diff:?}");
    dp.sync(request(snap.clone(), true)).await.expect("sync after restart");
    assert_eq!(tcp_probe(&ext, "10.96.0.10:80"), Seen::Reply("p1".into(), node_ip), "after restart");

    // Cleanup removes every pin and detaches everything.
    dp.cleanup().await.expect("cleanup");
    assert!(!lab.pin.exists(), "pins left at {}", lab.pin.display());
    // Unpinning releases a link from a kernel work queue (on a loaded
    // machine that can take a while): wait with the usual patience.
    eventually("nothing translated after cleanup", || {
        let after = tcp_probe(&p2, "10.96.0.10:80");
        (!matches!(after, Seen::Reply(..)), after)
    })
    .await;
    dp.cleanup().await.expect("cleanup is idempotent");
}
