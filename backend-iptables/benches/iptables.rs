//! Render and restore times, and new-connection latency, at scale.
//!
//! ```text
//! cargo bench -p backend-iptables --bench iptables -- [--sizes 1000,10000,50000] [--endpoints 10]
//!     [--variant nft|legacy|both] [--latency 1,30000 (0: none)] [--no-restore]
//! ```
//! Render figures need nothing; restore and latency figures need root and
//! run in throwaway namespaces (`swy-ipt-<pid>-<n>-*`), deleted at the end.
//! Not a test: it prints figures and asserts nothing about time.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]
#![allow(clippy::unwrap_used, reason = "a benchmark with broken setup should stop")]

#[path = "../tests/common/lab.rs"]
mod lab;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_iptables::exec::Executor;
use backend_iptables::restore::Table;
use backend_iptables::{Error, IptablesDataplane, Settings, Variant};
use proxy_core::{FamilySet, IpFamily, NetNamespace, ServiceName, SyncRequest};

use proxy_core::testing::scale::{cluster_ips, masquerade, plans, probe_index, request, snapshot};

/// Programs nothing; remembers payload sizes.
#[derive(Debug, Default)]
struct NullExecutor(std::sync::Mutex<Vec<usize>>);

impl Executor for NullExecutor {
    fn restore(&self, _: IpFamily, payload: &str) -> Result<(), Error> {
        let mut sizes = self.0.lock().unwrap();
        if let Some(dir) = std::env::var_os("SWY_DUMP") {
            std::fs::write(std::path::Path::new(&dir).join(format!("payload-{}.txt", sizes.len())), payload).unwrap();
        }
        sizes.push(payload.len());
        Ok(())
    }
    fn save(&self, _: IpFamily, _: Table) -> Result<String, Error> {
        Ok(String::new())
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Args {
    sizes: Vec<usize>,
    endpoints: usize,
    variants: Vec<Variant>,
    latency: Vec<usize>,
    restore: bool,
}

fn args() -> Args {
    let mut a = Args {
        sizes: vec![1000, 10_000, 50_000],
        endpoints: 10,
        variants: vec![Variant::Nft],
        latency: vec![1, 30_000],
        restore: true,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let list = |s: &str| s.split(',').filter_map(|x| x.parse().ok()).collect::<Vec<usize>>();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--sizes" => a.sizes = list(&v),
            "--endpoints" => a.endpoints = v.parse().unwrap_or(10),
            "--latency" => a.latency = list(&v),
            "--variant" => {
                a.variants = match v.as_str() {
                    "legacy" => vec![Variant::Legacy],
                    "both" => vec![Variant::Nft, Variant::Legacy],
                    _ => vec![Variant::Nft],
                }
            }
            "--no-restore" => {
                a.restore = false;
                i += 1;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn render_figures(n: usize, eps: usize) {
    let exec = Arc::new(NullExecutor::default());
    let dp = IptablesDataplane::with_executor(Settings::new(NetNamespace::current()), exec.clone());
    let snap = snapshot(n, eps, 0);
    let req = request(snap, &[], true);
    let t = Instant::now();
    dp.sync_blocking(&req).unwrap();
    let full = t.elapsed();
    let mut partial = Vec::new();
    let rounds: u64 = std::env::var("SWY_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    for g in 1..=rounds {
        // Built (and later dropped) outside the timing: in the daemon,
        // snapshots share their plans and cost nothing to make or drop.
        let req = request(snapshot(n, eps, g), &["svc-1"], false);
        let t = Instant::now();
        dp.sync_blocking(&req).unwrap();
        partial.push(t.elapsed());
    }
    let sizes = exec.0.lock().unwrap().clone();
    println!(
        "render  {n:>6} Services x {eps} endpoints: full {:>9} ({:.1} MB)   partial {:>8} ({} bytes)",
        ms(full),
        sizes[0] as f64 / 1e6,
        ms(median(partial)),
        sizes.last().unwrap()
    );
}

/// A backend on the lab's node namespace, with the tree shape from `SWY_LEAF` (default 64).
fn lab_dataplane(lab: &lab::Lab, variant: Variant) -> IptablesDataplane {
    let mut s = Settings::new(lab.ns("node"));
    s.node_ips = vec!["192.168.0.2".parse().unwrap()];
    s.cluster_cidrs = masquerade().cluster_cidrs;
    s.leaf_max = std::env::var("SWY_LEAF").ok().and_then(|v| v.parse().ok()).unwrap_or(s.leaf_max);
    s.conntrack = true;
    s.sysctls = true;
    let exec = Arc::new(backend_iptables::SystemExecutor { netns: lab.ns("node"), variant });
    IptablesDataplane::with_executor(s, exec)
}

fn restore_figures(n: usize, eps: usize, variant: Variant) {
    let lab = lab::Lab::new();
    let dp = lab_dataplane(&lab, variant);
    let req = request(snapshot(n, eps, 0), &[], true);
    let t = Instant::now();
    dp.sync_blocking(&req).unwrap();
    let full = t.elapsed();
    let mut partial = Vec::new();
    for g in 1..=5 {
        let req = request(snapshot(n, eps, g), &["svc-1"], false);
        let t = Instant::now();
        let out = dp.sync_blocking(&req).unwrap();
        assert!(!out.full);
        partial.push(t.elapsed());
    }
    // A periodic resync (a full request: the kernel is the witness) with
    // nothing changed and no drift: re-render, read back, compare.
    let req = request(snapshot(n, eps, 5), &[], true);
    let periodic = median(
        (0..5)
            .map(|_| {
                let t = Instant::now();
                let out = dp.sync_blocking(&req).unwrap();
                assert!(out.repairs.is_empty(), "no drift: {:?}", out.repairs);
                t.elapsed()
            })
            .collect(),
    );
    let chains = lab.save(variant).lines().filter(|l| l.starts_with(":SWITCHYARD-")).count();
    let rules = lab.save(variant).lines().filter(|l| l.starts_with("-A SWITCHYARD-")).count();
    println!(
        "restore {n:>6} Services x {eps} endpoints, iptables-{variant}: full sync {:>9}   one endpoint changed {:>8}   periodic resync {:>8}   ({chains} chains, {rules} rules)",
        ms(full),
        ms(median(partial)),
        ms(periodic)
    );
    let exec = backend_iptables::SystemExecutor { netns: lab.ns("node"), variant };
    let save = median(
        (0..3)
            .map(|_| {
                let t = Instant::now();
                backend_iptables::cleanup::read(&exec, IpFamily::V4).unwrap();
                t.elapsed()
            })
            .collect(),
    );
    println!(
        "witness {n:>6} Services x {eps} endpoints, iptables-{variant}: iptables-save nat+filter and parse {:>8}",
        ms(save)
    );
    repair_figures(&lab, &dp, &req, variant);
    kernel_floor(&lab, variant);
    let t = Instant::now();
    let tracer_state = dp.inspect_blocking().unwrap();
    println!("inspect {n:>6} Services: {} frontends read back in {}", tracer_state.frontends.len(), ms(t.elapsed()));
}

/// A periodic full sync that finds and repairs drift: our nat PREROUTING
/// jump deleted, one leaf of the ClusterIP tree flushed.
fn repair_figures(lab: &lab::Lab, dp: &IptablesDataplane, req: &SyncRequest, variant: Variant) {
    let exec = backend_iptables::SystemExecutor { netns: lab.ns("node"), variant };
    let saved = backend_iptables::cleanup::read(&exec, IpFamily::V4).unwrap();
    let leaf = saved
        .table(Table::Nat)
        .unwrap()
        .chains
        .iter()
        .filter(|(name, c)| name.starts_with("SWITCHYARD-DST-") && c.rules.iter().any(|r| r.contains("DNAT")))
        .map(|(name, _)| name.clone())
        .next_back()
        .unwrap();
    let hook = backend_iptables::render::hooks()
        .into_iter()
        .find(|h| h.table == Table::Nat && h.chain == "PREROUTING")
        .unwrap();
    // Someone else commits something unrelated: on nf_tables the generation
    // moves, so the periodic sync reads both tables back and compares.
    let mut runs = Vec::new();
    for i in 0..3 {
        exec.restore(IpFamily::V4, &format!("*mangle\n:SOMEONE-ELSE-{i} - [0:0]\nCOMMIT\n")).unwrap();
        let t = Instant::now();
        let out = dp.sync_blocking(req).unwrap();
        runs.push(t.elapsed());
        assert!(out.repairs.is_empty(), "{:?}", out.repairs);
    }
    println!(
        "read    periodic full sync after someone else's commit (no drift), iptables-{variant}: {:>8}",
        ms(median(runs))
    );
    let mut runs = Vec::new();
    for _ in 0..3 {
        if exec.restore(IpFamily::V4, &format!("*nat\n-D PREROUTING {}\n-F {leaf}\nCOMMIT\n", hook.rule)).is_err() {
            println!("repair  iptables-{variant}: the previous round's drift was not repaired");
            return;
        }
        let t = Instant::now();
        let out = dp.sync_blocking(req).unwrap();
        runs.push(t.elapsed());
        println!("        repairs {:?}", out.repairs);
    }
    println!(
        "repair  periodic full sync after a deleted PREROUTING jump and a flushed leaf, iptables-{variant}: {:>8}",
        ms(median(runs))
    );
}

/// What the kernel alone charges for any change to the loaded table: one
/// commit that adds a rule (with a verdict) and removes it again. On
/// nf_tables that makes the kernel re-validate every rule reachable from the
/// table's base chains, once per hook it is reachable from, so it is also
/// measured with the nat OUTPUT hook taken out (node-originated traffic
/// unserved: a lower bound, not a layout).
fn kernel_floor(lab: &lab::Lab, variant: Variant) {
    let exec = backend_iptables::SystemExecutor { netns: lab.ns("node"), variant };
    let probe = "*nat\n-A SWITCHYARD-CANARY -j RETURN\n-D SWITCHYARD-CANARY -j RETURN\nCOMMIT\n";
    let commit = || {
        let runs: Vec<Duration> = (0..7)
            .map(|_| {
                let t = Instant::now();
                exec.restore(IpFamily::V4, probe).unwrap();
                t.elapsed()
            })
            .collect();
        median(runs)
    };
    let with_output = commit();
    let hook =
        backend_iptables::render::hooks().into_iter().find(|h| h.table == Table::Nat && h.chain == "OUTPUT").unwrap();
    exec.restore(IpFamily::V4, &format!("*nat\n-D OUTPUT {}\nCOMMIT\n", hook.rule)).unwrap();
    let without_output = commit();
    exec.restore(IpFamily::V4, &format!("*nat\n-I OUTPUT 1 {}\nCOMMIT\n", hook.rule)).unwrap();
    println!(
        "floor   one-rule commit into the same nat table, iptables-{variant}: {:>8}   (without the nat OUTPUT hook: {})",
        ms(with_output),
        ms(without_output)
    );
}

fn latency_figures(n: usize, variant: Variant) {
    let lab = lab::Lab::new();
    lab.echo("pod1", &[8080], &[]);
    let dp = lab_dataplane(&lab, variant);
    dp.sync_blocking(&request(snapshot(n, 2, 0), &[], true)).unwrap();
    let vip = SocketAddr::new(cluster_ips(n)[probe_index(n)], 80);
    let samples: Vec<Duration> = lab.in_ns("client", move || {
        let mut out = Vec::new();
        for i in 0..5000 {
            let t = Instant::now();
            let s = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).unwrap();
            let d = t.elapsed();
            drop(s);
            if i >= 1000 {
                out.push(d);
            }
        }
        out
    });
    let mut s = samples;
    s.sort();
    let p = |q: f64| s[((s.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e6;
    println!(
        "connect {n:>6} Services, iptables-{variant}: p50 {:.1} µs   p90 {:.1} µs   p99 {:.1} µs",
        p(0.5),
        p(0.9),
        p(0.99)
    );
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    }
    let a = args();
    if std::env::var_os("SWY_PROFILE").is_some() {
        profile_desired(10_000, 10);
        return;
    }
    for &n in &a.sizes {
        render_figures(n, a.endpoints);
    }
    if !testkit::is_root() {
        println!("SKIPPED restore and latency figures: need root");
        return;
    }
    for &variant in &a.variants {
        if a.restore {
            for &n in &a.sizes {
                restore_figures(n, a.endpoints, variant);
            }
        }
        for &n in a.latency.iter().filter(|n| **n > 0) {
            latency_figures(n, variant);
        }
    }
    let _ = FamilySet::V4;
}

#[allow(dead_code, reason = "profiling aid")]
fn profile_desired(n: usize, eps: usize) {
    use backend_iptables::render::{RenderConfig, desired, render_service};
    let mut cfg = RenderConfig::new(IpFamily::V4);
    cfg.masquerade = masquerade();
    cfg.leaf_max = std::env::var("SWY_LEAF").ok().and_then(|v| v.parse().ok()).unwrap_or(cfg.leaf_max);
    let services: std::collections::BTreeMap<ServiceName, _> =
        plans(n, eps, 0).into_iter().map(|p| (p.name().clone(), render_service(&Arc::new(p), &cfg))).collect();
    for _ in 0..3 {
        let t = Instant::now();
        let mut trees = backend_iptables::trees::Trees::default();
        for (name, r) in &services {
            trees.update(name, None, Some(r));
        }
        trees.refresh(&cfg, &services);
        let d = desired(&cfg, &services, &trees);
        let t1 = t.elapsed();
        let w = backend_iptables::sync::written(&d);
        let t2 = t.elapsed();
        let (p, _) = backend_iptables::sync::partial_payload(&w, &d, true);
        let t3 = t.elapsed();
        println!(
            "desired {} ({} chains), written {}, partial {} ({} bytes)",
            ms(t1),
            d.len(),
            ms(t2 - t1),
            ms(t3 - t2),
            p.render().len()
        );
    }
}
