//! Lab benchmarks (root; ignored by default, run with
//! `cargo test -p backend-ebpf --release --test bench -- --ignored --nocapture`):
//! connection rate and request latency through a ClusterIP at 1, 1k and 10k
//! Services next to the pod IP directly, and the sync time of a one-endpoint
//! change at 10k Services. Prints one line per figure.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use proxy_core::Dataplane;
use proxy_core::testing::{ServiceBuilder, endpoint};

fn services(n: usize, last_ep: &str) -> Arc<proxy_core::Snapshot> {
    let mut svcs = Vec::with_capacity(n);
    let mut slices = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("s{i}");
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        svcs.push(ServiceBuilder::new("default", &name, &ip).port("", 80, "TCP").build());
        let ep = if i + 1 == n { last_ep } else { "10.244.2.5" };
        slices.push(slice(&format!("{name}-1"), &name, 8080, "TCP", vec![endpoint(ep).node("node-a")]));
    }
    snapshot(svcs, slices)
}

/// Sequential connect + read of the echo reply, `n` times: (conn/s, p50, p99).
fn measure(lab: &Lab, to: &str, n: usize) -> (f64, Duration, Duration) {
    let to: std::net::SocketAddr = to.parse().expect("addr");
    let mut lat = lab
        .netns("p2")
        .run(move || {
            (0..n)
                .map(|_| {
                    let t = Instant::now();
                    let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connect");
                    let mut out = String::new();
                    std::io::Read::read_to_string(&mut s, &mut out).expect("read");
                    t.elapsed()
                })
                .collect::<Vec<_>>()
        })
        .expect("netns");
    let total: Duration = lat.iter().sum();
    lat.sort();
    (n as f64 / total.as_secs_f64(), lat[n / 2], lat[n * 99 / 100])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly as root"]
async fn clusterip_connections_and_updates() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED bench: {reason}");
        return;
    }
    let mut lab = Lab::new();
    lab.serve("p1");
    lab.serve("p2");
    let dp = dataplane(&lab);
    let n_conn = 2000;
    let (rate, p50, p99) = measure(&lab, "10.244.1.5:8080", n_conn);
    println!("direct pod IP: {rate:.0} conn/s, p50 {p50:?}, p99 {p99:?}");
    for n in [1usize, 1000, 10000] {
        let t = Instant::now();
        dp.sync(request(services(n, "10.244.1.5"), true)).await.expect("sync");
        let load = t.elapsed();
        let last = format!("10.96.{}.{}:80", (n - 1) / 250, (n - 1) % 250 + 1);
        let (rate, p50, p99) = measure(&lab, &last, n_conn);
        println!("ebpf {n} Services: load {load:?}; ClusterIP {rate:.0} conn/s, p50 {p50:?}, p99 {p99:?}");
    }
    // One endpoint of the last Service changes (partial sync, as the runner does).
    let mut times = Vec::new();
    for round in 0..5 {
        let ep = if round % 2 == 0 { "10.244.2.5" } else { "10.244.1.5" };
        let snap = services(10000, ep);
        let t = Instant::now();
        dp.sync(request(snap, false)).await.expect("partial sync");
        times.push(t.elapsed());
    }
    times.sort();
    println!("ebpf 10000 Services: one-endpoint change, sync median {:?} (of 5)", times[2]);
    dp.cleanup().await.expect("cleanup");
}
