//! Lab tests: build a real namespace lab (root only) and check its wiring
//! with direct probes, before any proxy is involved.

#![allow(clippy::print_stderr, reason = "tests say on stderr why they skip, and print the report")]

use std::net::SocketAddr;

use conformance::agent::{AgentRequest, AgentResponse, EchoPorts, Outcome, Proto};
use conformance::{Lab, LabConfig};

fn config() -> LabConfig {
    let mut ports = EchoPorts::default();
    ports.insert(Proto::Tcp, 8080);
    ports.insert(Proto::Udp, 8080);
    LabConfig { agent_exe: env!("CARGO_BIN_EXE_switchyard-conformance").into(), ports }
}

async fn probe(lab: &Lab, from: &str, proto: Proto, dst: &str) -> Vec<Outcome> {
    let dst: SocketAddr = dst.parse().expect("address");
    let req = AgentRequest::Probe { proto, dst, src_ip: None, src_port: None, count: 2, timeout_ms: 800 };
    match lab.agent(from).expect("agent").request(&req).await.expect("answer") {
        AgentResponse::Attempts { attempts } => attempts.into_iter().map(|a| a.outcome).collect(),
        other => panic!("unexpected answer {other:?}"),
    }
}

fn replied(outcomes: &[Outcome], host: &str, peer_ip: &str) -> bool {
    outcomes
        .iter()
        .all(|o| matches!(o, Outcome::Reply { host: h, peer } if h == host && peer.ip().to_string() == peer_ip))
}

#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread")]
async fn the_lab_is_wired_like_a_cluster_and_torn_down() {
    let lab = Lab::create(config()).await.expect("lab");
    let prefix = lab.info().prefix.clone();
    assert!(prefix.starts_with(&format!("swy-lab-{}-", std::process::id())));
    // Pod to pod on one node, and across nodes through the pod-CIDR routes.
    let o = probe(&lab, "client1", Proto::Tcp, "10.244.1.10:8080").await;
    assert!(replied(&o, "a1", "10.244.1.100"), "{o:?}");
    let o = probe(&lab, "client2", Proto::Udp, "10.244.1.11:8080").await;
    assert!(replied(&o, "a2", "10.244.2.100"), "{o:?}");
    let o = probe(&lab, "client1", Proto::Tcp, "10.244.2.12:8080").await;
    assert!(replied(&o, "b3", "10.244.1.100"), "{o:?}");
    // The external client reaches both node1 addresses; node hosts reach pods.
    let o = probe(&lab, "external", Proto::Tcp, "172.18.0.11:8080").await;
    assert!(replied(&o, "node1", "198.51.100.100"), "{o:?}");
    let o = probe(&lab, "external", Proto::Tcp, "192.0.2.11:8080").await;
    assert!(replied(&o, "node1", "198.51.100.100"), "{o:?}");
    let o = probe(&lab, "node2", Proto::Tcp, "10.244.1.12:8080").await;
    assert!(replied(&o, "a3", "172.18.0.12"), "{o:?}");
    // A closed port is refused at once.
    let o = probe(&lab, "client1", Proto::Tcp, "10.244.1.10:9").await;
    assert!(o.iter().all(|x| *x == Outcome::Refused), "{o:?}");
    if lab.info().ipv6 {
        let o = probe(&lab, "client2", Proto::Tcp, "[fd00:10:244:1::10]:8080").await;
        assert!(replied(&o, "a1", "fd00:10:244:2::100"), "{o:?}");
        let o = probe(&lab, "external", Proto::Tcp, "[fd00:172:18::11]:8080").await;
        assert!(replied(&o, "node1", "fd00:198:51:100::100"), "{o:?}");
    }
    let cgroup = lab.cgroup().map(|p| p.to_path_buf());
    let agent_pid = lab.agent("a1").expect("agent").pid().expect("pid");
    lab.teardown().await;
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert!(cgroup.is_none_or(|c| !c.exists()), "cgroup left behind");
    assert!(
        !std::path::Path::new(&format!("/proc/{agent_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{agent_pid}/stat")).unwrap_or_default().contains(") Z"),
        "agent still running"
    );
}

#[testkit::needs_root]
#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_lab_tears_it_down() {
    let lab = Lab::create(config()).await.expect("lab");
    let prefix = lab.info().prefix.clone();
    drop(lab);
    let left = std::fs::read_dir("/run/netns")
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)).count())
        .unwrap_or(0);
    assert_eq!(left, 0);
}
