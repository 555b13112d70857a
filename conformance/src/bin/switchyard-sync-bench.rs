//! `switchyard-sync-bench`: how long a backend's sync takes at scale.
//!
//! For each backend and size: N ClusterIP Services × M endpoints, then
//! 1. `full`: the first full sync into an empty node namespace,
//! 2. `one-endpoint`: a partial sync after one endpoint of one Service changed,
//! 3. `resync`: a full sync with nothing changed (the periodic resync).
//!
//! Runs in a namespace it creates (`swy-bench-<pid>-<n>`) and deletes; run it
//! as root, on a kernel with the backends' features (`cargo xtask vm bench`).
//! Prints one line per measurement: `backend services endpoints phase seconds`.

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line tool")]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use proxy_core::testing::{ServiceBuilder, SliceBuilder, endpoint};
use proxy_core::{
    BackendContext, ChangeTracker, NetNamespace, PlannerConfig, ProxyEvent, ResourceEvent, ServiceName, SyncRequest,
    TrackerConfig,
};

fn ip(i: usize, base: u8) -> String {
    Ipv4Addr::new(10, base + (i >> 16) as u8, (i >> 8) as u8, i as u8).to_string()
}

fn slice(i: usize, endpoints: usize, generation: usize) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    let mut s = SliceBuilder::new("bench", &format!("svc-{i}-1"), &format!("svc-{i}")).port("", 8080, "TCP");
    for j in 0..endpoints {
        // The last endpoint moves when `generation` changes.
        let k = i * endpoints + j + if j + 1 == endpoints { generation * 1_000_000 } else { 0 };
        s = s.endpoint(endpoint(&ip(k, 64)).node("node-a"));
    }
    s.build()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut backends = Vec::new();
    let mut sizes = Vec::new();
    let mut endpoints = 10;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--backend", Some(b)) => backends.push(b.clone()),
            ("--services", Some(n)) => sizes.extend(n.split(',').filter_map(|s| s.parse::<usize>().ok())),
            ("--endpoints", Some(n)) => endpoints = n.parse().unwrap_or(10),
            _ => {
                eprintln!("usage: switchyard-sync-bench --backend MODE... --services N[,N...] [--endpoints M]");
                return ExitCode::from(2);
            }
        }
    }
    let registry = conformance::default_registry();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("backend services endpoints phase seconds");
    let mut failed = false;
    for mode in &backends {
        for &services in &sizes {
            if let Err(e) = rt.block_on(run(&registry, mode, services, endpoints)) {
                eprintln!("{mode} {services}: {e}");
                failed = true;
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

async fn run(
    registry: &proxy_core::Registry,
    mode: &str,
    services: usize,
    endpoints: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    // Deleted when the guard drops, whatever happens below.
    let netns = testkit::Netns::unique("bench")?;
    let ctx = BackendContext::new("node-a", NetNamespace::named(netns.name()));
    let factory = registry.get(mode)?;
    factory.probe(&ctx).await?;
    let dp = factory.build(&ctx).await?;

    let mut config = TrackerConfig::new(PlannerConfig::new("node-a"));
    config.wait_for_node = false;
    let mut tracker = ChangeTracker::new(config);
    let svcs = (0..services)
        .map(|i| ServiceBuilder::new("bench", &format!("svc-{i}"), &ip(i, 96)).port("", 80, "TCP").build());
    let slices = (0..services).map(|i| slice(i, endpoints, 0));
    for e in proxy_core::testing::initial_list(svcs.collect(), slices.collect(), None) {
        tracker.apply(e);
    }
    let snapshot = tracker.snapshot();
    let report = |phase: &str, secs: f64| println!("{mode} {services} {endpoints} {phase} {secs:.3}");

    let t = Instant::now();
    dp.sync(SyncRequest { snapshot: snapshot.clone(), changed: Arc::new(BTreeSet::new()), full: true }).await?;
    report("full", t.elapsed().as_secs_f64());

    let last = services - 1;
    tracker.apply(ProxyEvent::EndpointSlice(ResourceEvent::Apply(slice(last, endpoints, 1))));
    let snapshot = tracker.snapshot();
    let changed = Arc::new(BTreeSet::from([ServiceName::new("bench", &format!("svc-{last}"))]));
    let t = Instant::now();
    dp.sync(SyncRequest { snapshot: snapshot.clone(), changed, full: false }).await?;
    report("one-endpoint", t.elapsed().as_secs_f64());

    let t = Instant::now();
    dp.sync(SyncRequest { snapshot, changed: Arc::new(BTreeSet::new()), full: true }).await?;
    report("resync", t.elapsed().as_secs_f64());

    dp.cleanup().await?;
    Ok(())
}
