//! Lab benchmarks (root; ignored by default):
//!
//! ```text
//! cargo test -p backend-ebpf --release --test bench -- --ignored --nocapture
//! ```
//!
//! In the datapath lab (see `common`): a client pod reaches a server pod on
//! the same node directly (the physical limit), and through the ClusterIP
//! of the last of 1, 1,000 and 10,000 Services (one endpoint each)
//! programmed by ebpf and then by iptables (the reference backend, in the
//! same namespaces, after the ebpf cleanup). Per point: the full sync of
//! the Services, sequential connections (connect + read the reply), and
//! request latency (1-byte round trips on one open connection); then the
//! sync of a one-endpoint change at 10,000 Services (a partial sync naming
//! that Service, as the proxier sends it). One line per figure.
//!
//! `new_interface_attach_delay`: how long a new interface (a veth, as a
//! CNI plugin creates for a pod) waits for the TC programs, with no sync:
//! from before `ip link add` is started until the kernel lists our program
//! on its ingress hook.
//!
//! Every measurement talks to its own server port: connections that met
//! the server's TIME_WAIT sockets of an earlier measurement made before
//! the backend was loaded would cost a SYN retransmit (no proxy can know
//! flows it never saw; see the README).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use proxy_core::testing::ServiceBuilder;
use proxy_core::{BackendContext, Dataplane, ServiceName, Snapshot, SyncRequest};

const CONNECTIONS: usize = 2000;
const ROUND_TRIPS: usize = 5000;

fn services(n: usize, last_ep: &str, http: i32) -> Arc<Snapshot> {
    let mut svcs = Vec::with_capacity(n);
    let mut slices = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("s{i}");
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        svcs.push(ServiceBuilder::new("default", &name, &ip).port("http", 80, "TCP").port("rr", 81, "TCP").build());
        let ep = if i + 1 == n { last_ep } else { "10.244.2.5" };
        let s = common::SliceBuilderExt::two_ports(&format!("{name}-1"), &name, ep, http);
        slices.push(s);
    }
    snapshot(svcs, slices)
}

fn last(n: usize, port: u16) -> String {
    format!("10.96.{}.{}:{port}", (n - 1) / 250, (n - 1) % 250 + 1)
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// Sequential connect + read of the reply: (conn/s, p50, p99, failures).
fn connections(lab: &Lab, to: &str) -> (f64, Duration, Duration, usize) {
    let to: SocketAddr = to.parse().expect("addr");
    let (mut lat, failed) = lab
        .netns("p2")
        .run(move || {
            let mut lat = Vec::with_capacity(CONNECTIONS);
            let mut failed = 0;
            let start = Instant::now();
            for _ in 0..CONNECTIONS {
                let t = Instant::now();
                let ok = TcpStream::connect_timeout(&to, Duration::from_secs(2)).is_ok_and(|mut s| {
                    let mut out = String::new();
                    s.read_to_string(&mut out).is_ok() && !out.is_empty()
                });
                if ok {
                    lat.push(t.elapsed());
                } else {
                    failed += 1;
                }
            }
            let rate = CONNECTIONS as f64 / start.elapsed().as_secs_f64();
            ((lat, rate), failed)
        })
        .expect("netns");
    let rate = lat.1;
    lat.0.sort();
    (rate, pct(&lat.0, 50), pct(&lat.0, 99), failed)
}

/// 1-byte round trips on one connection: (p50, p99).
fn round_trips(lab: &Lab, to: &str) -> (Duration, Duration) {
    let to: SocketAddr = to.parse().expect("addr");
    let mut lat = lab
        .netns("p2")
        .run(move || {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connect rr");
            s.set_nodelay(true).expect("nodelay");
            let mut b = [0u8; 1];
            (0..ROUND_TRIPS)
                .map(|_| {
                    let t = Instant::now();
                    s.write_all(b"x").expect("write");
                    s.read_exact(&mut b).expect("read");
                    t.elapsed()
                })
                .collect::<Vec<_>>()
        })
        .expect("netns");
    lat.sort();
    (pct(&lat, 50), pct(&lat, 99))
}

fn report(label: &str, load: Option<Duration>, lab: &Lab, conn_to: &str, rr_to: &str) {
    let (rate, p50, p99, failed) = connections(lab, conn_to);
    let (r50, r99) = round_trips(lab, rr_to);
    let load = load.map_or_else(|| "-".to_string(), |d| format!("{d:.2?}"));
    println!(
        "BENCH {label:<22} load {load:>9} | connections {rate:>6.0}/s p50 {p50:>9.1?} p99 {p99:>9.1?} failed {failed} | request p50 {r50:>8.1?} p99 {r99:>8.1?}"
    );
}

fn one_endpoint_change(n: usize, round: usize, http: i32) -> SyncRequest {
    let ep = if round.is_multiple_of(2) { "10.244.2.5" } else { "10.244.1.5" };
    let changed = ServiceName { namespace: "default".into(), name: format!("s{}", n - 1).into() };
    SyncRequest { snapshot: services(n, ep, http), changed: Arc::new([changed].into_iter().collect()), full: false }
}

/// Each measurement's own server port on p1 (see `Lab::serve_tcp`).
async fn run_backend(lab: &Lab, label: &str, dp: Arc<dyn Dataplane>, ports: [u16; 3]) {
    for (n, port) in [1usize, 1000, 10000].into_iter().zip(ports) {
        let t = Instant::now();
        dp.sync(request(services(n, "10.244.1.5", port.into()), true)).await.expect("sync");
        let load = t.elapsed();
        report(&format!("{label} {n} Services"), Some(load), lab, &last(n, 80), &last(n, 81));
    }
    let mut times = Vec::new();
    for round in 0..7 {
        let req = one_endpoint_change(10000, round, ports[2].into());
        // The proxier keeps its snapshot: freeing it is not the sync's cost.
        let keep = req.snapshot.clone();
        let t = Instant::now();
        dp.sync(req).await.expect("partial sync");
        times.push(t.elapsed());
        drop(keep);
    }
    times.sort();
    println!(
        "BENCH {label:<22} one-endpoint change at 10000 Services: sync median {:.2?} (min {:.2?}, max {:.2?}, of 7)",
        times[3], times[0], times[6]
    );
    dp.cleanup().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly as root"]
async fn clusterip_connections_and_updates() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED bench: {reason}");
        return;
    }
    let mut lab = Lab::new();
    for port in 9000..=9006 {
        lab.serve_tcp("p1", port);
    }
    lab.serve_rr("p1");
    report("pod IP directly", None, &lab, "10.244.1.5:9000", "10.244.1.5:8081");

    run_backend(&lab, "ebpf", Arc::new(dataplane(&lab)), [9001, 9002, 9003]).await;

    let mut ctx = BackendContext::new("node-a", lab.netns("node"));
    ctx.node_ips = vec![NODE_IP.parse().expect("ip")];
    ctx.masquerade =
        proxy_core::MasqueradeConfig { all: false, cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")] };
    let factory = backend_iptables::factory();
    match factory.probe(&ctx).await {
        Ok(()) => {
            let dp = factory.build(&ctx).await.expect("iptables backend");
            run_backend(&lab, "iptables", dp, [9004, 9005, 9006]).await;
        }
        Err(e) => eprintln!("SKIPPED iptables column: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly as root"]
async fn new_interface_attach_delay() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED bench: {reason}");
        return;
    }
    const N: usize = 31;
    let lab = Lab::new();
    let dp = dataplane(&lab);
    dp.sync(request(world(), true)).await.expect("first sync");
    let node = lab.ns("node");
    let tcx = backend_ebpf::client::use_tcx();
    let hook = aya::programs::TcAttachType::Ingress;
    let (mut delays, mut ip_cmd) = lab
        .netns("node")
        .run(move || {
            let index = |dev: &str| nix::net::if_::if_nametoindex(dev).ok();
            let ours = backend_ebpf::client::tc_attached_ids(index("vp1").expect("vp1"), hook, tcx).expect("query");
            let (mut delays, mut ip_cmd) = (Vec::new(), Vec::new());
            for i in 0..N {
                let (dev, peer) = (format!("vx{i}"), format!("vy{i}"));
                let t0 = Instant::now();
                sh(&["ip", "-n", &node, "link", "add", &dev, "type", "veth", "peer", "name", &peer]);
                ip_cmd.push(t0.elapsed());
                let deadline = t0 + patience();
                loop {
                    let ids = index(&dev).and_then(|i| backend_ebpf::client::tc_attached_ids(i, hook, tcx).ok());
                    if ids.is_some_and(|ids| ids.iter().any(|id| ours.contains(id))) {
                        delays.push(t0.elapsed());
                        break;
                    }
                    assert!(Instant::now() < deadline, "{dev} was not attached within {:?}", patience());
                    std::thread::yield_now();
                }
                sh(&["ip", "-n", &node, "link", "del", &dev]);
            }
            (delays, ip_cmd)
        })
        .expect("enter node namespace");
    delays.sort();
    ip_cmd.sort();
    println!(
        "new interface -> TC program attached, no sync ({N} veths): median {:?}, p90 {:?}, max {:?} \
         (of which `ip link add` itself: median {:?})",
        pct(&delays, 50),
        pct(&delays, 90),
        delays[N - 1],
        pct(&ip_cmd, 50)
    );
}
